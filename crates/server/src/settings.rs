//! Configuration, read once at start-up: defaults < a TOML file < `KEYGATE_*` environment
//! < Blnk's environment names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, ConfigError, Environment, File, FileFormat};
use secrecy::SecretString;
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
    /// Resources beyond Blnk's, to guard other APIs.
    #[serde(default)]
    pub resources: ResourceSettings,
}

/// `[throttle]`
#[derive(Debug, Clone, Deserialize)]
pub struct ThrottleSettings {
    /// Failed authentications allowed per client address per minute; 0 turns it off.
    pub failures_per_minute: u32,
    /// How many failures may come at once before the rate applies.
    pub burst: u32,
    /// Addresses or CIDR ranges of proxies whose `X-Forwarded-For` is believed,
    /// separated by commas.
    pub trusted_proxies: String,
}

impl ThrottleSettings {
    /// The trusted proxies, one by one.
    pub fn trusted_proxies(&self) -> impl Iterator<Item = &str> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
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
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub url: String,
    /// Most connections in the pool.
    pub pool_size: u32,
    /// How long a request waits for a connection before answering 503, in milliseconds.
    pub pool_timeout_ms: u64,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// How often the change feed is read, in milliseconds: the bound on how late this
    /// instance sees a key revoked or changed by another instance or the CLI.
    pub change_poll_ms: u64,
    /// The longest a verified key is trusted from memory without being read again, in
    /// milliseconds, even if the change feed cannot be read.
    pub cache_ttl_ms: u64,
    /// The memory the key cache may use, in bytes (about 400 bytes a key).
    pub cache_max_bytes: u64,
    /// How often pending `last_used_at` updates are written, in milliseconds.
    pub last_used_flush_ms: u64,
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

[database]
url = "sqlite://keygate.db"
pool_size = 8
pool_timeout_ms = 5000

[throttle]
failures_per_minute = 20
burst = 20
trusted_proxies = ""

[auth]
change_poll_ms = 250
cache_ttl_ms = 60000
cache_max_bytes = 67108864
last_used_flush_ms = 1000
max_key_lifetime_days = 3650
"#;

impl Settings {
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
        let secret_len = settings
            .server
            .secret_key
            .as_ref()
            .map(|key| secrecy::ExposeSecret::expose_secret(key).trim().len());
        match secret_len {
            Some(0) => settings.server.secret_key = None,
            Some(len) if len > crate::state::MAX_PRESENTED_KEY => {
                return Err(ConfigError::Message(format!(
                    "server.secret_key is {len} bytes long; the most is {}",
                    crate::state::MAX_PRESENTED_KEY
                )));
            }
            _ => {}
        }
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
        assert_eq!(settings.database.url, "sqlite://keygate.db");
    }

    #[test]
    fn keygate_variables_set_nested_keys() {
        let settings = Settings::load(&env(&[
            ("KEYGATE_SERVER__PORT", "6001"),
            ("KEYGATE_SERVER__SECRET_KEY", "12345"),
            ("KEYGATE_SERVER__SECURE", "false"),
            ("KEYGATE_DATABASE__URL", "postgres://u@h/db"),
            ("KEYGATE_AUTH__CACHE_TTL_MS", "250"),
            ("KEYGATE_AUTH__CHANGE_POLL_MS", "100"),
        ]))
        .expect("loads");
        assert_eq!(settings.server.port, 6001);
        assert_eq!(secret(&settings), Some("12345"));
        assert!(!settings.server.secure);
        assert_eq!(settings.database.url, "postgres://u@h/db");
        assert_eq!(settings.auth.cache_ttl(), Duration::from_millis(250));
        assert_eq!(settings.auth.change_poll(), Duration::from_millis(100));
    }

    #[test]
    fn blnk_names_are_honoured_and_win() {
        let settings = Settings::load(&env(&[
            ("KEYGATE_SERVER__PORT", "6001"),
            ("KEYGATE_SERVER__SECRET_KEY", "keygate-name"),
            ("BLNK_SERVER_PORT", "7001"),
            ("BLNK_SERVER_SECRET_KEY", "blnk-name"),
            ("BLNK_SERVER_SECURE", "false"),
            ("BLNK_DATA_SOURCE_DNS", "postgres://blnk@db/blnk"),
        ]))
        .expect("loads");
        assert_eq!(settings.server.port, 7001);
        assert_eq!(secret(&settings), Some("blnk-name"));
        assert!(!settings.server.secure);
        assert_eq!(settings.database.url, "postgres://blnk@db/blnk");
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

    #[test]
    fn a_bad_value_is_an_error_not_a_default() {
        assert!(Settings::load(&env(&[("BLNK_SERVER_PORT", "not-a-port")])).is_err());
        assert!(Settings::load(&env(&[("KEYGATE_SERVER__SECURE", "maybe")])).is_err());
    }
}
