//! keygate's HTTP service: Blnk-compatible `/api-keys` endpoints behind an auth guard
//! that accepts the master key or a scoped API key.
//!
//! [`app::app`] builds the actix-web application from an [`AppState`]; [`serve`] is
//! what the `keygate` binary runs: read [`Settings`], find or create the master key,
//! open and migrate the database, then serve until stopped, writing key usage in the
//! background and once more on the way out.

pub mod app;
pub mod assets;
pub mod cli;
pub mod console;
pub mod error;
pub mod gateway;
pub mod import;
pub mod keys;
pub mod logging;
pub mod master_key;
pub mod metrics;
pub mod openapi;
pub mod settings;
pub mod state;
pub mod verify;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{HttpServer, web};
use keygate_core::KeyStore;
use keygate_storage::{Database, PoolOptions};
use secrecy::SecretString;

pub use app::app;
pub use error::ApiError;
pub use keygate_guard as guard;
pub use settings::Settings;
pub use state::AppState;

/// Blocking threads each worker keeps beside the guard's
/// ([`keygate_guard::Guard::blocking_calls`]), for blocking work that holds no slot: the
/// Redis client's name lookups.
const OTHER_BLOCKING: usize = 4;

/// Said at every start with secure mode off, whatever the log level.
pub const INSECURE_WARNING: &str = "SECURE MODE IS OFF: requests are not authenticated and \
    every caller acts as the master key. Never run like this where the port can be reached by \
    others.";

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The master key could not be read or created.
    #[error("master key: {0}")]
    MasterKey(#[from] std::io::Error),
    /// The HTTP server could not listen or stopped with an error.
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] keygate_core::StoreError),
}

/// Opens the configured database, migrating it.
pub async fn open_database(settings: &Settings) -> Result<Arc<Database>, StartError> {
    let url = settings.database.url.clone();
    let options = PoolOptions {
        max_size: settings.database.pool_size,
        connection_timeout: settings.database.pool_timeout(),
        ..PoolOptions::default()
    };
    let database = tokio::task::spawn_blocking(move || Database::connect(&url, &options))
        .await
        .map_err(|e| StartError::Config(format!("opening the database panicked: {e}")))??;
    Ok(Arc::new(database))
}

/// Where the master key is kept when none is configured.
pub fn master_key_path(settings: &Settings) -> std::path::PathBuf {
    settings
        .server
        .secret_key_file
        .clone()
        .unwrap_or_else(|| master_key::default_path(&settings.database.url))
}

/// The master key to use: configured, or kept in (and if need be generated into) its
/// file. `None` when secure mode is off.
pub fn master_key(settings: &Settings) -> Result<Option<SecretString>, StartError> {
    if !settings.server.secure {
        return Ok(None);
    }
    let path = master_key_path(settings);
    let (key, origin) = master_key::resolve(settings.server.secret_key.clone(), &path)?;
    match origin {
        master_key::Origin::Configured => {}
        master_key::Origin::File(path) => {
            tracing::info!(path = %path.display(), "using the master key kept in this file");
        }
        master_key::Origin::Generated(path) => {
            let shown = path.canonicalize().unwrap_or(path);
            eprintln!(
                "keygate: no master key was configured, so one was generated and saved to\n  {}\n\
                 (readable only by you). Authenticate with: -H \"X-Blnk-Key: $(cat {})\"\n\
                 Set server.secret_key (KEYGATE_SERVER__SECRET_KEY) to choose your own.",
                shown.display(),
                shown.display()
            );
        }
    }
    Ok(Some(key))
}

/// The service, built from its settings: the one start-up path that `keygate serve`, the
/// tests, the benchmarks and the fuzz targets share.
pub struct Application {
    state: web::Data<AppState>,
    settings: Settings,
}

impl Application {
    /// Installs the configured resources, finds (or generates) the master key, opens and
    /// migrates the database, and builds the state. Nothing is served yet.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::build_with(settings, |store| store).await
    }

    /// [`Self::build`], with the store seen through `wrap` (tests observe it).
    pub async fn build_with(
        settings: Settings,
        wrap: impl FnOnce(Arc<dyn KeyStore>) -> Arc<dyn KeyStore>,
    ) -> Result<Self, StartError> {
        Self::build_on(settings, wrap, Arc::new(keygate_core::SystemClock)).await
    }

    /// [`Self::build_with`], telling time by `clock` (tests move it forward).
    pub async fn build_on(
        settings: Settings,
        wrap: impl FnOnce(Arc<dyn KeyStore>) -> Arc<dyn KeyStore>,
        clock: Arc<dyn keygate_core::Clock>,
    ) -> Result<Self, StartError> {
        settings
            .resources
            .install()
            .map_err(|e| StartError::Config(format!("resources: {e}")))?;
        let master = master_key(&settings)?;
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        if !settings.server.secure {
            // Straight to stderr as well: a log level that hides warnings must not hide it.
            eprintln!("keygate: {INSECURE_WARNING}");
            tracing::warn!("{INSECURE_WARNING}");
        }
        let database = open_database(&settings).await?;
        tracing::info!(backend = %database.backend(), "database ready");
        let store = wrap(database);
        let state = web::Data::new(
            AppState::with_clock(store, &settings, master.as_ref(), clock)
                .map_err(StartError::Config)?,
        );
        Ok(Application { state, settings })
    }

    /// The state the app serves.
    pub fn state(&self) -> &web::Data<AppState> {
        &self.state
    }

    /// Listens on `server.host`:`server.port` (0: any free port) and serves until
    /// stopped (SIGINT or SIGTERM): finishes requests in flight (for up to 10 s), then
    /// writes pending key usage.
    pub async fn serve(self) -> Result<(), StartError> {
        let Application { state, settings } = self;
        let (host, port) = (settings.server.host.as_str(), settings.server.port);
        let listener = TcpListener::bind((host, port))
            .map_err(|e| StartError::Config(format!("cannot listen on {host}:{port}: {e}")))?;
        let serving = StartError::Serve;
        tracing::info!(address = %listener.local_addr().map_err(serving)?, "keygate listening");
        let background = keygate_guard::Guard::start(state.guard()).await;
        let app_state = state.clone();
        let mut server = HttpServer::new(move || app(app_state.clone()))
            .shutdown_timeout(10)
            // Each worker's blocking pool runs the guard's calls, which hold their slots
            // until their threads are done, and now and then the Redis client's name
            // lookups. At actix-web's default (512 / cores) the pool grew a thread
            // whenever a call came before the last one's thread was idle again, to 56 on
            // two cores, and handed each call to whichever had waited longest: a call
            // then ran on a cold thread, and allocated memory another thread last freed.
            .worker_max_blocking_threads(state.guard().blocking_calls() + OTHER_BLOCKING)
            .listen(listener)
            .map_err(serving)?;
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        let grpc = match settings.server.grpc_port {
            Some(port) => Some(serve_grpc(&state, host, port)?),
            None => None,
        };
        let result = server.run().await;
        if let Some((stop, serving)) = grpc {
            // Stops accepting, lets checks in flight finish.
            let _ = stop.send(());
            match tokio::time::timeout(std::time::Duration::from_secs(5), serving).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%error, "the gRPC server stopped with an error")
                }
                Ok(Err(error)) => tracing::warn!(%error, "the gRPC server task failed"),
                Err(_) => tracing::warn!("gRPC connections still open after 5 s were closed"),
            }
        }
        drop(background);
        state.guard().final_flush().await;
        result.map_err(serving)
    }
}

/// The gRPC server's stop signal, and how it ended.
type GrpcServer = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<Result<(), String>>,
);

/// Starts Envoy's gRPC ext_authz on `host`:`port` (0: any free port), on a runtime of its
/// own with a thread per core, so checks run in parallel beside the HTTP workers.
fn serve_grpc(
    state: &web::Data<AppState>,
    host: &str,
    port: u16,
) -> Result<GrpcServer, StartError> {
    use envoy_types::ext_authz::v3::pb::AuthorizationServer;
    let listener = TcpListener::bind((host, port))
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|e| {
            StartError::Config(format!(
                "cannot listen on {host}:{port} (server.grpc_port): {e}"
            ))
        })?;
    let address = listener.local_addr().map_err(StartError::Serve)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel();
    let checker = gateway::grpc::Checker::new(state.clone());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let serve = move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("keygate-grpc")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let served = runtime.block_on(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(
                    AuthorizationServer::new(checker)
                        .max_decoding_message_size(gateway::grpc::MAX_CHECK_BYTES),
                )
                .serve_with_incoming_shutdown(incoming, async {
                    // The signal that stops the HTTP server stops this one too, at once,
                    // so both drain together; or the HTTP server's end.
                    tokio::select! {
                        _ = stopped => {}
                        () = stop_signal() => {}
                    }
                })
                .await
                .map_err(|e| e.to_string())
        });
        // A storage call still running on a frozen database must not hold the exit.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        served
    };
    std::thread::Builder::new()
        .name("keygate-grpc".into())
        .spawn(move || {
            let _ = done.send(serve());
        })
        .map_err(StartError::Serve)?;
    tracing::info!(%address, "keygate gRPC ext_authz listening");
    Ok((stop, finished))
}

/// SIGTERM or SIGINT (never, where they cannot be listened for).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Runs the service until it is stopped (SIGINT or SIGTERM).
pub async fn serve(settings: Settings) -> Result<(), StartError> {
    Application::build(settings).await?.serve().await
}
