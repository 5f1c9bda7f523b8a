//! Brute-force throttling: failed authentications are counted per client address, and
//! an address over its budget is refused without a database lookup until it cools down.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, X_FORWARDED_FOR};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use quick_cache::sync::Cache;

use crate::settings::ThrottleSettings;

/// How many addresses' failures are tracked before quiet ones are forgotten early.
const MAX_TRACKED: usize = 100_000;

/// The address a client's failures count against: an IPv6 client by its /64, since one
/// host commonly holds a whole /64 and could otherwise guess from 2^64 budgets.
fn budget_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ))
        }
        v4 => v4,
    }
}

/// Counts failures per client and remembers who is refused until when.
pub struct Throttle {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    refused_until: Cache<IpAddr, Instant>,
    /// Whether any address was ever refused: until one is, no request looks it up.
    any_refused: AtomicBool,
    trusted_proxies: Vec<IpNet>,
    /// When this throttle was made, and the last second (since then) its size was checked.
    started: Instant,
    tidied_second: AtomicU64,
}

impl Throttle {
    /// A throttle with `settings`' budget; a budget of 0 turns throttling off.
    pub fn new(settings: &ThrottleSettings) -> Self {
        let trusted_proxies = settings
            .trusted_proxies
            .iter()
            .copied()
            .map(crate::settings::canonical_network)
            .collect();
        let limiter = NonZeroU32::new(settings.failures_per_minute).map(|rate| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Throttle {
            started: Instant::now(),
            tidied_second: AtomicU64::new(u64::MAX),
            limiter,
            // Held until evicted by newer refusals; an expired refusal refuses nothing.
            refused_until: Cache::new(MAX_TRACKED),
            any_refused: AtomicBool::new(false),
            trusted_proxies,
        }
    }

    /// Whether `address` is a trusted proxy (IPv4-mapped addresses as IPv4).
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.is_trusted(address.to_canonical())
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }

    /// The client a request comes from: its peer, unless the peer is a trusted proxy, in
    /// which case the nearest untrusted address of `X-Forwarded-For`.
    /// Addresses are compared in their canonical form: an IPv4 peer seen by a socket
    /// listening on `::` as `::ffff:a.b.c.d` is `a.b.c.d`.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(budget_of(peer));
        }
        // From the nearest hop outwards: each trusted proxy vouches for the hop before
        // it. A hop that cannot be read, or a chain of trusted proxies only, vouches for
        // nothing further (what lies beyond is the client's own text): the peer it is.
        let hops: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>().map(|hop| hop.to_canonical()) {
                Ok(hop) if self.is_trusted(hop) => continue,
                Ok(hop) => return Some(budget_of(hop)),
                Err(_) => break,
            }
        }
        Some(budget_of(peer))
    }

    /// How long `client` must still wait, if it is refused now.
    pub fn refused(&self, client: Option<IpAddr>) -> Option<Duration> {
        if !self.any_refused.load(Ordering::Acquire) {
            return None;
        }
        let until = self.refused_until.get(&client?)?;
        until
            .checked_duration_since(Instant::now())
            .filter(|wait| !wait.is_zero())
    }

    /// Counts a failed authentication from `client`; past the budget, how long it must
    /// wait before it is heard again.
    pub fn failed(&self, client: Option<IpAddr>) -> Option<Duration> {
        let (limiter, client) = (self.limiter.as_ref()?, client?);
        // The table's size is looked at most once a second: counting it locks every
        // shard, and this runs on every failure, which is what a flood is made of.
        let second = self.started.elapsed().as_secs();
        if self.tidied_second.load(Ordering::Relaxed) != second
            && self.tidied_second.swap(second, Ordering::Relaxed) != second
            && limiter.len() > MAX_TRACKED
        {
            limiter.retain_recent();
        }
        let refusal = limiter.check_key(&client).err()?;
        let wait = refusal.wait_time_from(DefaultClock::default().now());
        self.refused_until.insert(client, Instant::now() + wait);
        self.any_refused.store(true, Ordering::Release);
        Some(wait)
    }

    /// Forgets the state of addresses that have been quiet, so memory stays bounded.
    pub fn tidy(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn throttle(per_minute: u32, trusted: &[&str]) -> Throttle {
        Throttle::new(&ThrottleSettings {
            failures_per_minute: per_minute,
            burst: per_minute,
            trusted_proxies: trusted
                .iter()
                .flat_map(|text| crate::settings::parse_networks(text).expect("valid networks"))
                .collect(),
        })
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let throttle = throttle(20, &["127.0.0.1", "10.0.0.0/8"]);
        let headers = forwarded("198.51.100.1, 203.0.113.9, 10.1.2.3");
        assert_eq!(
            throttle.client(Some(ip("192.0.2.1")), &headers),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            throttle.client(Some(ip("127.0.0.1")), &headers),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            throttle.client(Some(ip("127.0.0.1")), &HeaderMap::new()),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            throttle.client(Some(ip("127.0.0.1")), &forwarded("garbage")),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            throttle.client(Some(ip("127.0.0.1")), &forwarded("198.51.100.1, 10.1.2.3")),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            throttle.client(
                Some(ip("127.0.0.1")),
                &forwarded("198.51.100.1, junk, 10.1.2.3")
            ),
            Some(ip("127.0.0.1")),
            "past a hop that cannot be read, nothing is vouched for"
        );
        assert_eq!(
            throttle.client(Some(ip("127.0.0.1")), &forwarded("10.9.9.9, 10.1.2.3")),
            Some(ip("127.0.0.1")),
            "trusted hops only: the peer, not the client's leftmost text"
        );
        assert_eq!(throttle.client(None, &headers), None);
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_selves() {
        let throttle = throttle(20, &["127.0.0.1", "::ffff:10.0.0.0/104"]);
        let headers = forwarded("::ffff:203.0.113.9, ::ffff:10.1.2.3");
        assert_eq!(
            throttle.client(Some(ip("::ffff:127.0.0.1")), &headers),
            Some(ip("203.0.113.9")),
            "a mapped peer is the trusted proxy, and mapped hops are plain IPv4"
        );
        assert_eq!(
            throttle.client(Some(ip("::ffff:192.0.2.1")), &headers),
            Some(ip("192.0.2.1"))
        );
        let guesser = Some(ip("192.0.2.1"));
        throttle.failed(Some(ip("::ffff:192.0.2.1").to_canonical()));
        assert_eq!(throttle.refused(guesser), None);
    }

    #[test]
    fn an_address_over_its_budget_is_refused_and_others_are_not() {
        let throttle = throttle(3, &[]);
        let guesser = Some(ip("192.0.2.1"));
        for _ in 0..3 {
            assert_eq!(throttle.failed(guesser), None);
        }
        assert_eq!(throttle.refused(guesser), None);
        let wait = throttle.failed(guesser).expect("over budget");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(throttle.refused(guesser).is_some());
        assert_eq!(throttle.refused(Some(ip("192.0.2.2"))), None);
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        let throttle = throttle(2, &[]);
        let headers = HeaderMap::new();
        let first = throttle.client(Some(ip("2001:db8:1:2::1")), &headers);
        let same_host = throttle.client(Some(ip("2001:db8:1:2:ffff::9")), &headers);
        let other = throttle.client(Some(ip("2001:db8:1:3::1")), &headers);
        assert_eq!(first, same_host);
        assert_ne!(first, other);
        for _ in 0..2 {
            assert_eq!(throttle.failed(first), None);
        }
        assert!(
            throttle.failed(same_host).is_some(),
            "one budget for the /64"
        );
        assert_eq!(throttle.refused(other), None);
    }

    #[test]
    fn a_zero_budget_turns_throttling_off() {
        let throttle = throttle(0, &[]);
        for _ in 0..100 {
            assert_eq!(throttle.failed(Some(ip("192.0.2.1"))), None);
        }
    }
}
