//! Configuration, read once at start-up: defaults < a TOML file < `KEYGATE_*` environment
//! < Blnk's environment names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, ConfigError, Environment, File, FileFormat};
use ipnet::IpNet;
use keygate_guard::GuardSettings;
use keygate_storage::DatabaseUrl;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The environment variable that names a configuration file.
pub const CONFIG_FILE_VAR: &str = "KEYGATE_CONFIG";
/// The configuration file read from the working folder when [`CONFIG_FILE_VAR`] is unset.
pub const DEFAULT_CONFIG_FILE: &str = "keygate.toml";

/// Blnk's environment names, honoured so a Blnk deployment's settings carry over; they
/// take precedence over keygate's own names.
pub const BLNK_ALIASES: [(&str, &str); 4] = [
    ("BLNK_SERVER_SECURE", "server.secure"),
    ("BLNK_SERVER_SECRET_KEY", "server.secret_key"),
    ("BLNK_SERVER_PORT", "server.port"),
    ("BLNK_DATA_SOURCE_DNS", "database.url"),
];

/// All of keygate's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The HTTP server and its authentication.
    pub server: ServerSettings,
    /// Where keys are stored.
    pub database: DatabaseSettings,
    /// The verified-key cache and usage bookkeeping.
    pub auth: AuthSettings,
    /// Brute-force throttling of failed authentications.
    pub throttle: ThrottleSettings,
    /// Per-key rate limits, credits and usage.
    pub metering: MeteringSettings,
    /// Resources beyond Blnk's, to guard other APIs.
    #[serde(default)]
    pub resources: ResourceSettings,
    /// How logs are written.
    #[serde(default)]
    pub log: LogSettings,
}

/// `[metering]`
#[derive(Debug, Clone, Deserialize)]
pub struct MeteringSettings {
    /// Where rate-limit windows are counted: `local` (each instance its own) or `redis`
    /// (shared by every instance through `redis_url`).
    pub backend: MeteringBackendName,
    /// The Redis of the `redis` backend, such as `redis://127.0.0.1:6379`.
    pub redis_url: Option<SecretString>,
    /// How long hourly usage is kept, in days.
    pub usage_retention_days: u32,
    /// How often due refills are applied to pools no request touched, in milliseconds.
    pub refill_poll_ms: u64,
    /// How long an unused lease of credits is held before it is given back, in
    /// milliseconds.
    pub lease_idle_ms: u64,
}

/// `metering.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeteringBackendName {
    /// Each instance counts its own windows.
    #[default]
    Local,
    /// Windows are shared through Redis.
    Redis,
}

/// `[throttle]`
#[derive(Debug, Clone, Deserialize)]
pub struct ThrottleSettings {
    /// Failed authentications allowed per client address per minute; 0 turns it off.
    pub failures_per_minute: u32,
    /// How many failures may come at once before the rate applies.
    pub burst: u32,
    /// Addresses or CIDR ranges of proxies whose `X-Forwarded-For` is believed (a list
    /// in the file, comma-separated text in the environment).
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,
}

/// Reads `throttle.trusted_proxies`, a list or comma-separated text (as the environment
/// gives it), into networks once.
fn networks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Networks {
        Text(String),
        List(Vec<String>),
    }
    let text = match Networks::deserialize(deserializer)? {
        Networks::Text(text) => text,
        Networks::List(items) => items.join(","),
    };
    keygate_guard::settings::parse_networks(&text)
        .map_err(|error| serde::de::Error::custom(format!("throttle.trusted_proxies: {error}")))
}

/// `[resources]`: additions to the built-in (Blnk) resource catalogue.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceSettings {
    /// New resource names, usable in scopes (`reports:read`) and as a path's first segment.
    #[serde(default)]
    pub extra: Vec<String>,
    /// Path segments that stand for a resource: `{ "report-exports" = "reports" }`.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, String>,
}

impl ResourceSettings {
    /// Adds these resources to the process's catalogue.
    pub fn install(&self) -> Result<(), keygate_core::catalogue::CatalogueError> {
        let aliases: Vec<(String, String)> = self.aliases.clone().into_iter().collect();
        keygate_core::catalogue::install(&self.extra, &aliases)
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// When false, requests are not authenticated and act as the master key.
    pub secure: bool,
    /// The master key. When unset (and secure), one is generated into `secret_key_file`.
    pub secret_key: Option<SecretString>,
    /// Where a generated master key is kept; by default beside the SQLite database, or in
    /// the working folder for PostgreSQL.
    pub secret_key_file: Option<PathBuf>,
    /// HTTP worker threads; by default one per core.
    pub workers: Option<usize>,
    /// A bearer token that may read `/metrics` (besides the master key).
    pub metrics_token: Option<SecretString>,
    /// Where Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) is
    /// served, on `host`; off unless set.
    pub grpc_port: Option<u16>,
    /// Whether the web console is served at `/console`.
    pub console: bool,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`, parsed once.
    #[serde(deserialize_with = "database_url")]
    pub url: DatabaseUrl,
    /// Most connections in the pool.
    pub pool_size: u32,
    /// How long a request waits for a connection before answering 503, in milliseconds.
    pub pool_timeout_ms: u64,
}

/// Reads `database.url` as a [`DatabaseUrl`], so that it is parsed (and refused) once.
fn database_url<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<DatabaseUrl, D::Error> {
    let text = String::deserialize(deserializer)?;
    DatabaseUrl::parse(&text)
        .map_err(|error| serde::de::Error::custom(format!("database.url: {error}")))
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogSettings {
    /// How log lines are written to stderr.
    #[serde(default)]
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event, coloured on a terminal.
    #[default]
    Text,
    /// JSON lines, for log collectors.
    Json,
}

/// The furthest `auth.max_key_lifetime_days` may reach: a hundred years.
pub const MAX_KEY_LIFETIME_DAYS: u32 = 36_500;

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// How often the change feed is read, in milliseconds: the bound on how late this
    /// instance sees a key revoked or changed by another instance or the CLI.
    pub change_poll_ms: u64,
    /// The longest a verified key is trusted from memory without being read again, in
    /// milliseconds.
    pub cache_ttl_ms: u64,
    /// How long cached keys are trusted after the last successful read of the change
    /// feed, in milliseconds: past it, keys are read from the database again (503 while
    /// it cannot be reached), so a key revoked elsewhere stops working here as well.
    pub max_staleness_ms: u64,
    /// The memory the key cache may use, in bytes (about 400 bytes a key).
    pub cache_max_bytes: u64,
    /// How often pending `last_used_at` updates are written, in milliseconds.
    pub last_used_flush_ms: u64,
    /// How far a key's `last_used_at` may lag its latest use, in milliseconds (whole
    /// seconds count): a use is written only once this long after the last one written,
    /// so a key costs one row write this often however busy it is.
    pub last_used_resolution_ms: u64,
    /// The furthest in the future a key's `expires_at` may be, in days.
    pub max_key_lifetime_days: u32,
}

impl DatabaseSettings {
    /// The pool timeout as a duration.
    pub fn pool_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_timeout_ms)
    }
}

impl AuthSettings {
    /// The cache lifetime as a duration.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.cache_ttl_ms)
    }

    /// How long cached keys outlive a change feed that cannot be read.
    pub fn max_staleness(&self) -> Duration {
        Duration::from_millis(self.max_staleness_ms)
    }

    /// The change-feed period as a duration.
    pub fn change_poll(&self) -> Duration {
        Duration::from_millis(self.change_poll_ms.max(1))
    }

    /// The usage flush period as a duration.
    pub fn last_used_flush(&self) -> Duration {
        Duration::from_millis(self.last_used_flush_ms.max(1))
    }
}

const DEFAULTS: &str = r#"
[server]
host = "127.0.0.1"
port = 5001
secure = true
console = true

[database]
url = "sqlite://keygate.db"
pool_size = 8
pool_timeout_ms = 5000

[throttle]
failures_per_minute = 20
burst = 20
trusted_proxies = ""

[metering]
backend = "local"
usage_retention_days = 90
refill_poll_ms = 10000
lease_idle_ms = 5000

[auth]
change_poll_ms = 250
cache_ttl_ms = 60000
max_staleness_ms = 10000
cache_max_bytes = 67108864
last_used_flush_ms = 1000
last_used_resolution_ms = 60000
max_key_lifetime_days = 3650
"#;

/// The fewest characters a master key or metrics token may have.
pub const MIN_SECRET_CHARS: usize = 16;
/// Below this many characters a master key is accepted (an existing Blnk deployment's
/// secret must keep working) but warned about.
pub const GOOD_SECRET_CHARS: usize = 32;

/// Checks that `value` lies in `range`, naming `setting` otherwise.
fn in_range<T: PartialOrd + std::fmt::Display>(
    setting: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{setting} = {value} is out of range: it must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

/// Checks a secret's shape, naming `setting` otherwise; never shows the secret.
fn check_secret(setting: &str, secret: &SecretString) -> Result<(), String> {
    let text = secret.expose_secret();
    if text.trim() != text {
        return Err(format!(
            "{setting} starts or ends with whitespace (a stray newline?); it would never match"
        ));
    }
    let chars = text.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(format!(
            "{setting} is {chars} characters long; it must have at least {MIN_SECRET_CHARS} \
             (at least {GOOD_SECRET_CHARS} random ones are recommended)"
        ));
    }
    if text.len() > keygate_guard::MAX_PRESENTED_KEY {
        return Err(format!(
            "{setting} is {} bytes long; the most is {}",
            text.len(),
            keygate_guard::MAX_PRESENTED_KEY
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{setting} contains control characters"));
    }
    Ok(())
}

impl Settings {
    /// The guard's settings, with `master_key` as the master key.
    pub fn guard(&self, master_key: Option<SecretString>) -> GuardSettings {
        GuardSettings {
            secure: self.server.secure,
            master_key,
            operator_token: self.server.metrics_token.clone(),
            cache_ttl: self.auth.cache_ttl(),
            cache_max_bytes: self.auth.cache_max_bytes,
            change_poll: self.auth.change_poll(),
            max_staleness: self.auth.max_staleness(),
            usage_flush: self.auth.last_used_flush(),
            last_used_resolution: Duration::from_millis(self.auth.last_used_resolution_ms),
            storage_timeout: self.database.pool_timeout(),
            storage_slots: usize::try_from(self.database.pool_size).unwrap_or(usize::MAX),
            throttle: keygate_guard::ThrottleSettings {
                failures_per_minute: self.throttle.failures_per_minute,
                burst: self.throttle.burst,
                trusted_proxies: self.throttle.trusted_proxies.clone(),
            },
            metering: keygate_guard::MeteringSettings {
                backend: match (&self.metering.backend, &self.metering.redis_url) {
                    (MeteringBackendName::Redis, Some(url)) => {
                        keygate_guard::MeteringBackend::Redis(url.clone())
                    }
                    _ => keygate_guard::MeteringBackend::Local,
                },
                usage_retention: Duration::from_secs(
                    u64::from(self.metering.usage_retention_days) * 86_400,
                ),
                refill_poll: Duration::from_millis(self.metering.refill_poll_ms),
                lease_idle: Duration::from_millis(self.metering.lease_idle_ms),
            },
        }
    }

    /// Checks every setting against its documented range, in one place, so that a bad
    /// value stops the start with one line naming it instead of failing a request later.
    pub fn validate(&self) -> Result<(), String> {
        let (server, database, auth, throttle) =
            (&self.server, &self.database, &self.auth, &self.throttle);
        if server.host.trim().is_empty() {
            return Err("server.host must not be empty".into());
        }
        if let Some(key) = &server.secret_key {
            check_secret("server.secret_key", key)?;
        }
        if let Some(token) = &server.metrics_token {
            check_secret("server.metrics_token", token)?;
        }
        if let Some(grpc_port) = server.grpc_port
            && grpc_port != 0
            && grpc_port == server.port
        {
            return Err(format!(
                "server.grpc_port = {grpc_port} is server.port too: gRPC needs a port of its own"
            ));
        }
        if let Some(workers) = server.workers {
            in_range("server.workers", workers, 1..=1024)?;
        }
        in_range("database.pool_size", database.pool_size, 1..=1000)?;
        in_range(
            "database.pool_timeout_ms",
            database.pool_timeout_ms,
            10..=600_000,
        )?;
        in_range("auth.change_poll_ms", auth.change_poll_ms, 10..=60_000)?;
        in_range("auth.cache_ttl_ms", auth.cache_ttl_ms, 0..=86_400_000)?;
        // Between two reads of the feed the cache must stay trusted, or every request
        // would go to the database.
        in_range(
            "auth.max_staleness_ms",
            auth.max_staleness_ms,
            auth.change_poll_ms.saturating_mul(2)..=86_400_000,
        )?;
        in_range("auth.cache_max_bytes", auth.cache_max_bytes, 0..=1 << 40)?;
        in_range(
            "auth.last_used_flush_ms",
            auth.last_used_flush_ms,
            10..=3_600_000,
        )?;
        in_range(
            "auth.last_used_resolution_ms",
            auth.last_used_resolution_ms,
            1000..=86_400_000,
        )?;
        in_range(
            "auth.max_key_lifetime_days",
            auth.max_key_lifetime_days,
            1..=MAX_KEY_LIFETIME_DAYS,
        )?;
        in_range(
            "throttle.failures_per_minute",
            throttle.failures_per_minute,
            0..=1_000_000,
        )?;
        in_range("throttle.burst", throttle.burst, 0..=1_000_000)?;
        let metering = &self.metering;
        in_range(
            "metering.usage_retention_days",
            metering.usage_retention_days,
            1..=MAX_KEY_LIFETIME_DAYS,
        )?;
        in_range(
            "metering.refill_poll_ms",
            metering.refill_poll_ms,
            100..=3_600_000,
        )?;
        in_range(
            "metering.lease_idle_ms",
            metering.lease_idle_ms,
            100..=3_600_000,
        )?;
        match (&metering.backend, &metering.redis_url) {
            (MeteringBackendName::Redis, None) => {
                return Err(
                    "metering.backend is \"redis\" but metering.redis_url is not set".into(),
                );
            }
            (_, Some(url)) => {
                let url = url.expose_secret();
                let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
                if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                    // The URL may hold a password: it is not repeated.
                    return Err(
                        "metering.redis_url must start with redis://, rediss://, redis+unix:// or unix://"
                            .into(),
                    );
                }
            }
            (MeteringBackendName::Local, None) => {}
        }
        Ok(())
    }

    /// What is allowed but unwise, to be said once at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(key) = &self.server.secret_key
            && key.expose_secret().chars().count() < GOOD_SECRET_CHARS
        {
            warnings.push(format!(
                "server.secret_key has fewer than {GOOD_SECRET_CHARS} characters; a longer, \
                 random master key is much harder to guess"
            ));
        }
        let catch_all = self
            .throttle
            .trusted_proxies
            .iter()
            .any(|network| network.prefix_len() == 0);
        if catch_all {
            warnings.push(
                "throttle.trusted_proxies includes every address (/0): any client can name \
                 its own address in X-Forwarded-For and so escape its brute-force budget"
                    .to_owned(),
            );
        }
        warnings
    }

    /// The settings from the process environment (and the file it names, if any).
    pub fn from_env() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Self::load(&env)
    }

    /// The settings with nothing configured.
    pub fn defaults() -> Self {
        Self::load(&HashMap::new())
            .unwrap_or_else(|e| unreachable!("the built-in defaults parse: {e}"))
    }

    /// The settings from `env` (an environment's variables) and the file it names.
    pub fn load(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = match env.get(CONFIG_FILE_VAR) {
            Some(path) => File::from(PathBuf::from(path)).required(true),
            None => File::from(PathBuf::from(DEFAULT_CONFIG_FILE)).required(false),
        };
        let keygate_env: HashMap<String, String> = env
            .iter()
            .filter(|(key, _)| key.starts_with("KEYGATE_") && key.as_str() != CONFIG_FILE_VAR)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(file)
            .add_source(
                Environment::with_prefix("KEYGATE")
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(keygate_env)),
            );
        for (variable, key) in BLNK_ALIASES {
            if let Some(value) = env.get(variable) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        // A blank secret is no secret: the master key is then generated, the token unset.
        let blank = |secret: &Option<SecretString>| {
            secret
                .as_ref()
                .is_some_and(|s| s.expose_secret().trim().is_empty())
        };
        if blank(&settings.server.secret_key) {
            settings.server.secret_key = None;
        }
        if blank(&settings.server.metrics_token) {
            settings.server.metrics_token = None;
        }
        settings.validate().map_err(ConfigError::Message)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secret(settings: &Settings) -> Option<&str> {
        settings
            .server
            .secret_key
            .as_ref()
            .map(|key| key.expose_secret())
    }

    #[test]
    fn nothing_configured_is_secure_sqlite_on_5001() {
        let settings = Settings::load(&env(&[])).expect("defaults load");
        assert_eq!(settings.server.host, "127.0.0.1");
        assert_eq!(settings.server.port, 5001);
        assert!(settings.server.secure);
        assert_eq!(secret(&settings), None);
        assert_eq!(
            settings.database.url,
            DatabaseUrl::parse("sqlite://keygate.db").expect("valid")
        );
    }

    #[test]
    fn keygate_variables_set_nested_keys() {
        let settings = Settings::load(&env(&[
            ("KEYGATE_SERVER__PORT", "6001"),
            (
                "KEYGATE_SERVER__SECRET_KEY",
                "a-master-key-of-forty-characters-000000",
            ),
            ("KEYGATE_SERVER__SECURE", "false"),
            ("KEYGATE_DATABASE__URL", "postgres://u@h/db"),
            ("KEYGATE_AUTH__CACHE_TTL_MS", "250"),
            ("KEYGATE_AUTH__CHANGE_POLL_MS", "100"),
        ]))
        .expect("loads");
        assert_eq!(settings.server.port, 6001);
        assert_eq!(
            secret(&settings),
            Some("a-master-key-of-forty-characters-000000")
        );
        assert!(!settings.server.secure);
        assert_eq!(
            settings.database.url,
            DatabaseUrl::parse("postgres://u@h/db").expect("valid")
        );
        assert_eq!(settings.auth.cache_ttl(), Duration::from_millis(250));
        assert_eq!(settings.auth.change_poll(), Duration::from_millis(100));
    }

    #[test]
    fn blnk_names_are_honoured_and_win() {
        let settings = Settings::load(&env(&[
            ("KEYGATE_SERVER__PORT", "6001"),
            ("KEYGATE_SERVER__SECRET_KEY", "keygate-name-0123456789"),
            ("BLNK_SERVER_PORT", "7001"),
            ("BLNK_SERVER_SECRET_KEY", "blnk-name-0123456789"),
            ("BLNK_SERVER_SECURE", "false"),
            ("BLNK_DATA_SOURCE_DNS", "postgres://blnk@db/blnk"),
        ]))
        .expect("loads");
        assert_eq!(settings.server.port, 7001);
        assert_eq!(secret(&settings), Some("blnk-name-0123456789"));
        assert!(!settings.server.secure);
        assert_eq!(
            settings.database.url,
            DatabaseUrl::parse("postgres://blnk@db/blnk").expect("valid")
        );
    }

    #[test]
    fn a_config_file_sits_between_defaults_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("custom.toml");
        std::fs::write(&path, "[server]\nport = 6500\nhost = \"0.0.0.0\"\n").expect("write");
        let path = path.to_string_lossy().into_owned();
        let from_file = Settings::load(&env(&[(CONFIG_FILE_VAR, &path)])).expect("loads");
        assert_eq!(
            (from_file.server.host.as_str(), from_file.server.port),
            ("0.0.0.0", 6500)
        );
        let overridden = Settings::load(&env(&[
            (CONFIG_FILE_VAR, &path),
            ("KEYGATE_SERVER__PORT", "6600"),
        ]))
        .expect("loads");
        assert_eq!(overridden.server.port, 6600);
    }

    #[test]
    fn a_named_config_file_must_exist() {
        assert!(Settings::load(&env(&[(CONFIG_FILE_VAR, "/nonexistent/keygate.toml")])).is_err());
    }

    #[test]
    fn a_blank_secret_key_counts_as_unset() {
        let settings = Settings::load(&env(&[("BLNK_SERVER_SECRET_KEY", "  ")])).expect("loads");
        assert_eq!(secret(&settings), None);
    }

    #[test]
    fn an_overlong_secret_key_is_refused() {
        let long = "k".repeat(513);
        assert!(Settings::load(&env(&[("BLNK_SERVER_SECRET_KEY", &long)])).is_err());
    }

    #[test]
    fn extra_resources_come_from_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "[resources]\nextra = [\"reports\"]\naliases = { \"report-exports\" = \"reports\" }\n",
        )
        .expect("write");
        let settings =
            Settings::load(&env(&[(CONFIG_FILE_VAR, &path.to_string_lossy())])).expect("loads");
        assert_eq!(settings.resources.extra, vec!["reports".to_owned()]);
        assert_eq!(
            settings
                .resources
                .aliases
                .get("report-exports")
                .map(String::as_str),
            Some("reports")
        );
        assert!(Settings::defaults().resources.extra.is_empty());
    }

    fn refusal(pairs: &[(&str, &str)]) -> String {
        match Settings::load(&env(pairs)) {
            Ok(_) => panic!("{pairs:?} is refused"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn every_setting_outside_its_range_is_refused_by_name() {
        let cases = [
            (
                "KEYGATE_AUTH__MAX_KEY_LIFETIME_DAYS",
                "4294967295",
                "auth.max_key_lifetime_days",
            ),
            (
                "KEYGATE_AUTH__MAX_KEY_LIFETIME_DAYS",
                "0",
                "auth.max_key_lifetime_days",
            ),
            (
                "KEYGATE_AUTH__MAX_KEY_LIFETIME_DAYS",
                "36501",
                "auth.max_key_lifetime_days",
            ),
            ("KEYGATE_AUTH__CHANGE_POLL_MS", "0", "auth.change_poll_ms"),
            (
                "KEYGATE_AUTH__CHANGE_POLL_MS",
                "3600000",
                "auth.change_poll_ms",
            ),
            (
                "KEYGATE_AUTH__CACHE_TTL_MS",
                "864000000",
                "auth.cache_ttl_ms",
            ),
            (
                "KEYGATE_AUTH__CACHE_MAX_BYTES",
                "18446744073709551615",
                "auth.cache_max_bytes",
            ),
            (
                "KEYGATE_AUTH__LAST_USED_FLUSH_MS",
                "0",
                "auth.last_used_flush_ms",
            ),
            (
                "KEYGATE_AUTH__LAST_USED_RESOLUTION_MS",
                "999",
                "auth.last_used_resolution_ms",
            ),
            (
                "KEYGATE_AUTH__MAX_STALENESS_MS",
                "100",
                "auth.max_staleness_ms",
            ),
            ("KEYGATE_DATABASE__POOL_SIZE", "0", "database.pool_size"),
            (
                "KEYGATE_DATABASE__POOL_SIZE",
                "100000",
                "database.pool_size",
            ),
            (
                "KEYGATE_DATABASE__POOL_TIMEOUT_MS",
                "0",
                "database.pool_timeout_ms",
            ),
            ("KEYGATE_DATABASE__URL", "mysql://x/y", "database.url"),
            ("KEYGATE_SERVER__WORKERS", "0", "server.workers"),
            ("KEYGATE_SERVER__HOST", " ", "server.host"),
            (
                "KEYGATE_THROTTLE__FAILURES_PER_MINUTE",
                "4000000000",
                "throttle.failures_per_minute",
            ),
            ("KEYGATE_THROTTLE__BURST", "4000000000", "throttle.burst"),
            (
                "KEYGATE_THROTTLE__TRUSTED_PROXIES",
                "10.0.0.0/8, nope",
                "throttle.trusted_proxies",
            ),
            (
                "KEYGATE_SERVER__METRICS_TOKEN",
                "short",
                "server.metrics_token",
            ),
        ];
        for (variable, value, setting) in cases {
            let message = refusal(&[(variable, value)]);
            assert!(message.contains(setting), "{variable}={value}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn weak_or_mistyped_master_keys_are_refused_without_being_shown() {
        for key in [
            "1",
            "fifteen-chars-x",
            "a-long-enough-master-key\n",
            " a-long-enough-master-key",
        ] {
            let message = refusal(&[("BLNK_SERVER_SECRET_KEY", key)]);
            assert!(message.contains("server.secret_key"), "{message}");
            if key.trim().len() >= 8 {
                assert!(
                    !message.contains(key.trim()),
                    "the key is not shown: {message}"
                );
            }
        }
    }

    #[test]
    fn a_short_master_key_is_accepted_with_a_warning_and_a_long_one_without() {
        let short = Settings::load(&env(&[("BLNK_SERVER_SECRET_KEY", "sixteen-chars-ok")]))
            .expect("a Blnk deployment's shorter secret keeps working");
        assert_eq!(short.warnings().len(), 1);
        assert!(short.warnings()[0].contains("server.secret_key"));
        let long = Settings::load(&env(&[(
            "BLNK_SERVER_SECRET_KEY",
            "YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q=",
        )]))
        .expect("accepted");
        assert!(long.warnings().is_empty());
        assert!(Settings::defaults().warnings().is_empty());
        let open = Settings::load(&env(&[("KEYGATE_THROTTLE__TRUSTED_PROXIES", "0.0.0.0/0")]))
            .expect("accepted");
        assert!(open.warnings()[0].contains("throttle.trusted_proxies"));
    }

    #[test]
    fn trusted_proxies_are_networks_from_a_list_or_text() {
        let from_env = Settings::load(&env(&[(
            "KEYGATE_THROTTLE__TRUSTED_PROXIES",
            "10.0.0.0/8, ::ffff:127.0.0.1",
        )]))
        .expect("loads");
        let expected: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().expect("a network"),
            "127.0.0.1/32".parse().expect("a network"),
        ];
        assert_eq!(from_env.throttle.trusted_proxies, expected);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "[throttle]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n",
        )
        .expect("write");
        let from_file =
            Settings::load(&env(&[(CONFIG_FILE_VAR, &path.to_string_lossy())])).expect("loads");
        assert_eq!(from_file.throttle.trusted_proxies, expected);
    }

    #[test]
    fn the_log_format_is_read_once_into_its_type() {
        assert_eq!(Settings::defaults().log.format, LogFormat::Text);
        let json = Settings::load(&env(&[("KEYGATE_LOG__FORMAT", "json")])).expect("loads");
        assert_eq!(json.log.format, LogFormat::Json);
        assert!(Settings::load(&env(&[("KEYGATE_LOG__FORMAT", "xml")])).is_err());
    }

    #[test]
    fn a_bad_value_is_an_error_not_a_default() {
        assert!(Settings::load(&env(&[("BLNK_SERVER_PORT", "not-a-port")])).is_err());
        assert!(Settings::load(&env(&[("KEYGATE_SERVER__SECURE", "maybe")])).is_err());
    }
}
