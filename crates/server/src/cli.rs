//! The `keygate` command line: run the service, migrate the database, and manage keys
//! directly in the database, with the service's own configuration, so an operator can
//! bootstrap or break glass without the master key.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keygate_core::api_key::check_lifetime;
use keygate_core::{Actor, ApiKeyId, Credits, KeyHash, KeyPatch, KeyStore, RateLimit};
use keygate_storage::blnk::BlnkSource;
use keygate_storage::{Database, PoolOptions};
use secrecy::ExposeSecret;

use crate::import;
use crate::keys::views::{parse_timestamp, spec_within};
use crate::keys::{KeyView, Update, issue_key, update_key};
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
    /// Create, list, update and revoke keys directly in the database.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Bring keys from another system, keeping their secrets.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Move a Blnk deployment's keys (its `api_keys` table), keeping ids, owners, scopes,
    /// expiry, revocation and times, so its clients keep their keys. Blnk kept only
    /// bcrypt hashes: each key is checked with bcrypt the first time a client presents it,
    /// and from then on found by its blake3 digest. Running it again skips what is there.
    Blnk {
        /// Blnk's PostgreSQL, as a `postgres://` URL (or in KEYGATE_IMPORT_FROM, which
        /// keeps its password out of the process list).
        #[arg(long, env = "KEYGATE_IMPORT_FROM", hide_env_values = true)]
        from: String,
        /// The schema holding Blnk's `api_keys`.
        #[arg(long, default_value = "blnk")]
        schema: String,
        /// Validate and count, storing nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
    /// Change a key's name, expiry, rate limit or credits, and print it as JSON; running
    /// services follow within `auth.change_poll_ms`.
    Update(UpdateArgs),
    /// Import keys with their secrets from JSON lines (FILE, or `-` for stdin), one
    /// object a line: `key`, `name`, `owner`, `scopes`, `expires_at`, and optionally
    /// `api_key_id`, `created_at`, `ratelimit`, `credits`. Each line is validated as
    /// `POST /api-keys` validates; refused lines are reported with their number and store
    /// nothing. Prints a summary; running services find the keys without a restart.
    Import {
        /// The file to read, or `-` for standard input.
        file: String,
        /// Validate and count, storing nothing.
        #[arg(long)]
        dry_run: bool,
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
    #[command(flatten)]
    metering: MeteringArgs,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The key's id (`api_key_...`).
    id: String,
    /// The key's owner.
    #[arg(long)]
    owner: String,
    /// A new name.
    #[arg(long)]
    name: Option<String>,
    /// A new expiry, as an RFC 3339 time.
    #[arg(long)]
    expires_at: Option<String>,
    #[command(flatten)]
    metering: MeteringArgs,
}

/// A key's rate limit and credits on the command line.
#[derive(Debug, Args)]
struct MeteringArgs {
    /// At most LIMIT requests per WINDOW, such as `100/1m`, `10/s` or `5000/1h`
    /// (`none` removes a rate limit).
    #[arg(long, value_name = "LIMIT/WINDOW")]
    rate_limit: Option<String>,
    /// Credits, one spent by each admitted request (`none` removes them).
    #[arg(long, value_name = "N")]
    credits: Option<String>,
    /// Sets the credits back every day or month: `1000/daily` or `1000/monthly`.
    #[arg(long, value_name = "AMOUNT/INTERVAL", requires = "credits")]
    refill: Option<String>,
}

impl MeteringArgs {
    /// The rate limit given: `None` if absent, `Some(None)` for `none`.
    fn ratelimit(&self) -> Result<Option<Option<RateLimit>>, String> {
        self.rate_limit
            .as_deref()
            .map(|text| {
                RateLimit::parse_short(text).map_err(|e| format!("--rate-limit: {}", e.message))
            })
            .transpose()
    }

    /// The credits given: `None` if absent, `Some(None)` for `none`.
    fn credits(&self) -> Result<Option<Option<Credits>>, String> {
        let Some(text) = self.credits.as_deref() else {
            return Ok(None);
        };
        if text.trim().eq_ignore_ascii_case("none") {
            if self.refill.is_some() {
                return Err("--refill needs credits, not none".into());
            }
            return Ok(Some(None));
        }
        let remaining: i64 = text
            .trim()
            .parse()
            .map_err(|_| format!("--credits {text:?} is not a whole number (or none)"))?;
        Credits::from_short(remaining, self.refill.as_deref())
            .map(|credits| Some(Some(credits)))
            .map_err(|e| format!("--{}: {}", e.field.replace('.', "-"), e.message))
    }
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
        Command::Import(ImportCommand::Blnk {
            from,
            schema,
            dry_run,
        }) => import_blnk(&settings, &from, &schema, dry_run),
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
            let mut spec = spec_within(
                &args.name,
                &args.owner,
                &args.scopes,
                expires_at,
                now,
                max_days,
            )
            .map_err(|e| e.to_string())?;
            spec.ratelimit = args.metering.ratelimit()?.flatten();
            spec.credits = args.metering.credits()?.flatten();
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
        KeysCommand::Update(args) => update(settings, &database, &args),
        KeysCommand::Import { file, dry_run } => import_keys(settings, &*database, &file, dry_run),
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

fn import_keys(
    settings: &Settings,
    database: &dyn KeyStore,
    file: &str,
    dry_run: bool,
) -> Result<(), String> {
    let input: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let opened = File::open(file).map_err(|e| format!("{file}: {e}"))?;
        Box::new(BufReader::with_capacity(1 << 20, opened))
    };
    let spinner = Spinner::new("lines");
    let started = std::time::Instant::now();
    let summary = import::import(
        input,
        database,
        &import::Rules {
            now: Utc::now(),
            max_days: settings.auth.max_key_lifetime_days,
            dry_run,
            reserved: &reserved_hashes(settings),
        },
        |line, reason| spinner.say(&format!("line {line}: {reason}")),
        |read| spinner.at(read),
    );
    spinner.finish();
    report(summary?, started, "line(s)")
}

fn import_blnk(settings: &Settings, from: &str, schema: &str, dry_run: bool) -> Result<(), String> {
    let database = open(settings)?;
    let mut source = BlnkSource::connect(from, schema).map_err(|e| e.to_string())?;
    let total = source.count().map_err(|e| e.to_string())?;
    let spinner = Spinner::new("keys");
    let started = std::time::Instant::now();
    let summary = import::blnk::import(
        &mut source,
        &*database,
        Utc::now(),
        dry_run,
        |id, reason| spinner.say(&format!("{id}: {reason}")),
        |read| spinner.at(read),
    );
    spinner.finish();
    let summary = summary?;
    eprintln!(
        "keygate: {total} key(s) in {schema}.api_keys; each is checked with bcrypt once, when a client first presents it"
    );
    report(summary, started, "key(s)")
}

/// Prints an import's summary as JSON; an error if anything was refused.
fn report(summary: import::Summary, started: std::time::Instant, what: &str) -> Result<(), String> {
    let seconds = started.elapsed().as_secs_f64();
    let mut json = import::summary_json(&summary);
    json["seconds"] = serde_json::json!((seconds * 1000.0).round() / 1000.0);
    print_json(&json)?;
    if summary.refused > 0 {
        return Err(format!(
            "{} {what} refused; nothing of them was stored",
            summary.refused
        ));
    }
    Ok(())
}

/// A spinner with a count on a terminal; nothing where output is read by a program,
/// where messages go to standard error as lines.
struct Spinner(Option<ProgressBar>);

impl Spinner {
    fn new(unit: &str) -> Self {
        Spinner(std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {{pos}} {unit} read ({{per_sec}}) {{elapsed}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        }))
    }

    fn say(&self, message: &str) {
        match &self.0 {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    fn at(&self, read: usize) {
        if let Some(bar) = &self.0 {
            bar.set_position(read as u64);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The digests no imported key may have: the master key's (configured, or kept in its
/// file) and the metrics token's.
fn reserved_hashes(settings: &Settings) -> Vec<KeyHash> {
    let kept = std::fs::read_to_string(crate::master_key_path(settings)).ok();
    let configured = settings
        .server
        .secret_key
        .iter()
        .chain(&settings.server.metrics_token)
        .map(|secret| KeyHash::of(secret.expose_secret()));
    configured
        .chain(kept.map(|text| KeyHash::of(text.trim())))
        .collect()
}

fn update(settings: &Settings, database: &Database, args: &UpdateArgs) -> Result<(), String> {
    let now = Utc::now();
    let expires_at = args
        .expires_at
        .as_deref()
        .map(|at| parse_timestamp("--expires-at", at))
        .transpose()
        .map_err(|e| e.to_string())?;
    let patch = KeyPatch::with_metering::<&str>(
        args.name.as_deref(),
        None,
        expires_at,
        args.metering.ratelimit()?,
        args.metering.credits()?,
        now,
    )
    .map_err(|e| {
        if e.field == "body" {
            "give at least one of --name, --expires-at, --rate-limit and --credits".to_owned()
        } else {
            e.to_string()
        }
    })?;
    if let Some(at) = patch.expires_at {
        check_lifetime(at, now, settings.auth.max_key_lifetime_days).map_err(|e| e.to_string())?;
    }
    let id = ApiKeyId::new(args.id.clone());
    let key = database
        .get(&id, &args.owner)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("owner {:?} has no key {:?}", args.owner, args.id))?;
    if key.is_revoked() {
        return Err(format!("key {:?} is revoked", args.id));
    }
    let updated =
        match update_key(database, &key, &patch, Actor::Cli, now).map_err(|e| e.to_string())? {
            Update::Unchanged => key,
            Update::Changed(updated) => *updated,
            Update::LostRace => {
                return Err("the key changed meanwhile (or was rotated); try again".into());
            }
        };
    print_json(&KeyView::new(&updated, &updated.hint))
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
