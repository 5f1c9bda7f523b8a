//! The `keygate` command line: run the service, migrate the database, and manage keys
//! directly in the database, with the service's own configuration, so an operator can
//! bootstrap or break glass without the master key.

use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Parser, Subcommand};
use keygate_core::{Actor, ApiKeyId, KeyStore};
use keygate_storage::{Database, PoolOptions};

use crate::keys::views::{parse_timestamp, spec_within};
use crate::keys::{KeyView, issue_key};
use crate::settings::Settings;

/// keygate: fine-grained API keys, compatible with Blnk.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Create or update the database schema, then exit.
    Migrate,
    /// Print the OpenAPI description of the HTTP API.
    Openapi,
    /// Exit 0 if the service on the configured port answers `/health` (for container
    /// health checks).
    Health,
    /// Create, list and revoke keys directly in the database.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it as JSON (the only time its secret is shown).
    Create(CreateArgs),
    /// Print an owner's keys as a JSON array, newest first.
    List {
        /// Whose keys.
        #[arg(long)]
        owner: String,
    },
    /// Revoke a key; running services refuse it within `auth.change_poll_ms`.
    Revoke {
        /// The key's id (`api_key_...`).
        id: String,
        /// The key's owner.
        #[arg(long)]
        owner: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Who the key belongs to.
    #[arg(long)]
    owner: String,
    /// A name to recognise it by.
    #[arg(long)]
    name: String,
    /// A scope such as `ledgers:read`; repeat for more.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// How long the key lives: `30d`, `12h`, `90m` or `3600s`.
    #[arg(
        long,
        conflicts_with = "expires_at",
        required_unless_present = "expires_at"
    )]
    expires_in: Option<String>,
    /// When the key expires, as an RFC 3339 time.
    #[arg(long)]
    expires_at: Option<String>,
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("keygate: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(settings.log.format);
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => actix_web::rt::System::new()
            .block_on(async {
                let served = crate::serve(settings).await;
                // Dropping the runtime would wait for a storage call stuck on a frozen
                // database; everything worth finishing (requests, usage) has finished.
                if served.is_ok() {
                    std::process::exit(0);
                }
                served
            })
            .map_err(|error| error.to_string()),
        Command::Migrate => {
            open(&settings).map(|_| eprintln!("keygate: the database is up to date"))
        }
        Command::Health => health(&settings),
        Command::Openapi => {
            print!("{}", crate::openapi::document());
            Ok(())
        }
        Command::Keys(command) => keys(&settings, command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keygate: {error}");
            ExitCode::FAILURE
        }
    }
}

fn open(settings: &Settings) -> Result<Arc<Database>, String> {
    let url = settings.database.url.clone();
    let options = PoolOptions {
        max_size: 2,
        connection_timeout: settings.database.pool_timeout(),
        min_idle: 1,
    };
    settings
        .resources
        .install()
        .map_err(|e| format!("resources: {e}"))?;
    Database::connect(&url, &options)
        .map(Arc::new)
        .map_err(|e| format!("database: {e}"))
}

fn keys(settings: &Settings, command: KeysCommand) -> Result<(), String> {
    let database = open(settings)?;
    match command {
        KeysCommand::Create(args) => {
            let now = Utc::now();
            let expires_at = expiry(&args, now)?;
            let max_days = settings.auth.max_key_lifetime_days;
            let spec = spec_within(
                &args.name,
                &args.owner,
                &args.scopes,
                expires_at,
                now,
                max_days,
            )
            .map_err(|e| e.to_string())?;
            let (key, plain) =
                issue_key(&*database, spec, &Actor::Cli, now).map_err(|e| e.to_string())?;
            print_json(&KeyView::new(&key, plain.expose()))
        }
        KeysCommand::List { owner } => {
            let keys = database.list_by_owner(&owner).map_err(|e| e.to_string())?;
            let views: Vec<KeyView<'_>> = keys
                .iter()
                .map(|key| KeyView::new(key, &key.hint))
                .collect();
            print_json(&views)
        }
        KeysCommand::Revoke { id, owner } => {
            let revoked = database
                .revoke(&ApiKeyId::new(id.clone()), &owner, Utc::now(), &Actor::Cli)
                .map_err(|e| e.to_string())?;
            match revoked {
                Some(key) => print_json(&KeyView::new(&key, &key.hint)),
                None => Err(format!("owner {owner:?} has no key {id:?}")),
            }
        }
    }
}

fn expiry(args: &CreateArgs, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Some(at) = &args.expires_at {
        return parse_timestamp("--expires-at", at).map_err(|error| error.to_string());
    }
    let text = args.expires_in.as_deref().unwrap_or_default();
    let bad = || format!("--expires-in {text:?} is not a duration such as 30d, 12h, 90m or 3600s");
    // The unit is the last character, whatever its width: `split_at` on a byte index
    // would panic inside a multibyte one.
    let unit_start = text
        .char_indices()
        .last()
        .map(|(at, _)| at)
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_start);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "d" => Duration::try_days(number),
        "h" => Duration::try_hours(number),
        "m" => Duration::try_minutes(number),
        "s" => Duration::try_seconds(number),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_add_signed(duration).ok_or_else(bad)
}

fn health(settings: &Settings) -> Result<(), String> {
    use std::io::{Read, Write};
    let host = match settings.server.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        host => host,
    };
    let port = settings.server.port;
    let mut stream =
        std::net::TcpStream::connect((host, port)).map_err(|e| format!("{host}:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "unhealthy: {}",
            response.lines().next().unwrap_or("no answer")
        ))
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}
