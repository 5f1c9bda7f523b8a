//! The guard's settings: typed, parsed once by whoever embeds the guard (keygate's server
//! fills them from its configuration file and environment).

use std::time::Duration;

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use secrecy::SecretString;

/// How the guard authenticates, caches and throttles.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// When false, no key is checked and every request acts as the master key.
    pub secure: bool,
    /// The master key, which may do everything. Without one (and secure), only API keys
    /// authenticate.
    pub master_key: Option<SecretString>,
    /// A bearer token that may read operator endpoints such as metrics.
    pub operator_token: Option<SecretString>,
    /// The longest a verified key is held in memory before it is read again.
    pub cache_ttl: Duration,
    /// The memory the key cache may use, in bytes (about 400 bytes a key).
    pub cache_max_bytes: u64,
    /// How often the change feed is read.
    pub change_poll: Duration,
    /// How long cached keys are trusted after the last successful read of the feed.
    pub max_staleness: Duration,
    /// How often pending `last_used_at` updates are written, in one batch.
    pub usage_flush: Duration,
    /// How far a key's stored `last_used_at` may lag its latest use: a use is written
    /// only once this long has passed since the one written before it.
    pub last_used_resolution: Duration,
    /// How long a storage call may take, waiting included, before it is a 503.
    pub storage_timeout: Duration,
    /// Storage calls in flight at once (the connection pool's size).
    pub storage_slots: usize,
    /// Brute-force throttling of failed authentications.
    pub throttle: ThrottleSettings,
    /// Per-key rate limits, credits and usage.
    pub metering: MeteringSettings,
}

/// Where per-key rate-limit windows are counted, and how credits and usage are kept.
#[derive(Debug, Clone)]
pub struct MeteringSettings {
    /// Where rate-limit windows are counted.
    pub backend: MeteringBackend,
    /// How long hourly usage is kept (90 days).
    pub usage_retention: Duration,
    /// How often refills that are due are applied to pools no request touched (10 s).
    pub refill_poll: Duration,
    /// How long an unused lease of credits is held before it is given back (5 s).
    pub lease_idle: Duration,
}

/// Where rate-limit windows are counted.
#[derive(Debug, Clone, Default)]
pub enum MeteringBackend {
    /// In this process: each instance counts its own windows.
    #[default]
    Local,
    /// In Redis at this URL, shared by every instance; while Redis cannot be reached,
    /// in this process.
    Redis(SecretString),
}

impl Default for MeteringSettings {
    fn default() -> Self {
        MeteringSettings {
            backend: MeteringBackend::Local,
            usage_retention: Duration::from_secs(90 * 86_400),
            refill_poll: Duration::from_secs(10),
            lease_idle: Duration::from_secs(5),
        }
    }
}

/// Brute-force throttling: failed authentications allowed per client address.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// Failures allowed per client address per minute; 0 turns throttling off.
    pub failures_per_minute: u32,
    /// How many failures may come at once before the rate applies (0: the rate).
    pub burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed, IPv4-mapped ones as IPv4.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for GuardSettings {
    /// Secure, no master key, a 60 s cache of up to 64 MiB, the feed read every 250 ms
    /// and trusted for 10 s, usage written every second, 5 s storage calls on 8 slots,
    /// 20 failures a minute per address.
    fn default() -> Self {
        GuardSettings {
            secure: true,
            master_key: None,
            operator_token: None,
            cache_ttl: Duration::from_secs(60),
            cache_max_bytes: 64 * 1024 * 1024,
            change_poll: Duration::from_millis(250),
            max_staleness: Duration::from_secs(10),
            usage_flush: Duration::from_secs(1),
            last_used_resolution: Duration::from_secs(60),
            storage_timeout: Duration::from_secs(5),
            storage_slots: 8,
            throttle: ThrottleSettings::default(),
            metering: MeteringSettings::default(),
        }
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            failures_per_minute: 20,
            burst: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Addresses or CIDR ranges separated by commas (`10.0.0.0/8, 127.0.0.1`), as networks;
/// an error names the first entry that is neither.
pub fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map(canonical_network)
                .map_err(|_| format!("{entry:?} is not an address or CIDR range"))
        })
        .collect()
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as its IPv4 network
/// (`10.0.0.0/8`); any other network as it is.
pub fn canonical_network(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .addr()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(network, IpNet::V4),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_mapped_ones_become_ipv4() {
        let parsed =
            parse_networks(" 10.0.0.0/8, 127.0.0.1 ,::ffff:192.168.0.0/112,").expect("valid");
        let expected: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1/32", "192.168.0.0/16"]
            .iter()
            .map(|text| text.parse().expect("a network"))
            .collect();
        assert_eq!(parsed, expected);
        let error = parse_networks("10.0.0.0/8, not-an-address").expect_err("refused");
        assert!(error.contains("not-an-address"), "{error}");
    }
}
