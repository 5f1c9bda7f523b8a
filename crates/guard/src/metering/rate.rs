//! Per-key rate limits (GCRA), counted in this process or shared through Redis.
//!
//! A [`RateLimiter`] admits at most `limit` requests per `window` for each key, using the
//! generic cell rate algorithm (GCRA) with a burst of `limit`: a fresh key admits `limit`
//! requests at once, and after that one more request becomes admissible every
//! `window / limit`.
//!
//! [`RateLimiter::local`] counts in this process only. [`RateLimiter::redis`] shares the
//! windows of all processes through Redis, with Redis's own clock, and falls back to counting
//! in this process while Redis is unreachable or slow, so a check never fails and never waits
//! for long.
//!
//! Both backends run the same arithmetic on integer nanoseconds: the emission interval is
//! `window / limit` (rounded down, at least 1 ns) and the burst tolerance is `limit` times
//! that interval. Windows are clamped to 1 ms..=24 h, and a limit above one request per
//! nanosecond of the window counts as one request per nanosecond.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The longest window honoured; longer windows are clamped to it.
const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// The shortest window honoured; shorter windows are clamped to it.
const MIN_WINDOW: Duration = Duration::from_millis(1);
/// How many keys the local state keeps at most.
const MAX_LOCAL_KEYS: usize = 1_000_000;
/// How long a check waits for Redis before it answers from the local state.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How often Redis is probed while the limiter falls back to local counting.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe waits for Redis's answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// After this many failed probes in a row, the Redis connection is built anew.
const PROBE_REBUILD_AFTER: u32 = 10;
/// The prefix of the Redis keys that hold the windows.
const KEY_PREFIX: &str = "keygate:rate:";
/// The Redis key that the probe counts on (outside [`KEY_PREFIX`]).
const PROBE_KEY: &str = "keygate:rate-probe";

/// The GCRA step on Redis, with Redis's clock. It is the same arithmetic as [`gcra`].
///
/// The state is a hash `{s, d}`: the theoretical arrival time (TAT) is `d` nanoseconds after
/// the start of second `s` of Redis's clock. Times are kept relative to the current second so
/// that every number stays exact in Lua's doubles.
///
/// `KEYS[1]`: the key. `ARGV`: emission interval (ns), burst tolerance (ns), cost.
/// Returns {admitted (0 or 1), remaining, reset (ns), retry (ns)}.
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local sec = tonumber(clock[1])
local now = tonumber(clock[2]) * 1000
local tat = 0
local state = redis.call('HMGET', KEYS[1], 's', 'd')
local s, d = tonumber(state[1]), tonumber(state[2])
if s and d then tat = (s - sec) * 1000000000 + d end
local new_tat = math.max(tat, now) + cost * period
local ahead = new_tat - now
if ahead > tau then
  return {0, 0, math.max(tat - now, 0), ahead - tau}
end
redis.call('HSET', KEYS[1], 's', clock[1], 'd', string.format('%d', new_tat))
redis.call('PEXPIRE', KEYS[1], math.ceil(ahead / 1000000) + 1000)
return {1, math.floor((tau - ahead) / period), ahead, 0}
";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// The key's limit: requests admitted per window.
    pub limit: u64,
    /// Requests still admitted right now after this one (0 when refused).
    pub remaining: u64,
    /// How long until the full `limit` is available again.
    pub reset: Duration,
    /// When refused, how long to wait until one more request would be admitted; `None` when
    /// admitted.
    pub retry_after: Option<Duration>,
}

impl RateState {
    /// Whether the request was admitted.
    pub fn admitted(&self) -> bool {
        self.retry_after.is_none()
    }
}

/// A rate limit in the units of the GCRA: nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quota {
    /// The emission interval: one request becomes admissible every `period` ns (>= 1).
    period: u64,
    /// The burst tolerance: `period * limit`, at most the window.
    tau: u64,
}

impl Quota {
    fn new(limit: u64, window: Duration) -> Self {
        let window = window.clamp(MIN_WINDOW, MAX_WINDOW);
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let limit = limit.clamp(1, window_ns);
        let period = window_ns / limit;
        Self {
            period,
            tau: period * limit,
        }
    }

    /// The effective limit (the burst).
    fn limit(self) -> u64 {
        self.tau / self.period
    }

    /// The cost as counted: at least 1, and above the limit only by one (such a request can
    /// never be admitted, and a bounded cost keeps the arithmetic from overflowing).
    fn cost(self, cost: u64) -> u64 {
        cost.clamp(1, self.limit() + 1)
    }
}

/// The result of one GCRA step, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    admitted: bool,
    remaining: u64,
    reset: u64,
    retry: u64,
    /// The TAT to store when admitted.
    new_tat: u64,
}

impl Decision {
    fn state(self, limit: u64) -> RateState {
        RateState {
            limit,
            remaining: if self.admitted {
                self.remaining.min(limit)
            } else {
                0
            },
            reset: Duration::from_nanos(self.reset),
            retry_after: (!self.admitted).then(|| Duration::from_nanos(self.retry.max(1))),
        }
    }
}

/// One GCRA step: a request of `cost` (already bounded by [`Quota::cost`]) arriving at `now`
/// against a key whose theoretical arrival time is `tat`.
fn gcra(tat: u64, now: u64, quota: Quota, cost: u64) -> Decision {
    let new_tat = tat.max(now) + cost * quota.period;
    let ahead = new_tat - now;
    if ahead > quota.tau {
        Decision {
            admitted: false,
            remaining: 0,
            reset: tat.saturating_sub(now),
            retry: ahead - quota.tau,
            new_tat: tat,
        }
    } else {
        Decision {
            admitted: true,
            remaining: (quota.tau - ahead) / quota.period,
            reset: ahead,
            retry: 0,
            new_tat,
        }
    }
}

/// The state of one key in this process: only the theoretical arrival time, which
/// means the same whatever the quota, so a changed limit applies to the window as it
/// stands (changing a limit back and forth never starts a window afresh), and keys of
/// different limits may share one window.
#[derive(Debug)]
struct Slot {
    /// The theoretical arrival time, in ns since [`Local::epoch`].
    tat: AtomicU64,
}

/// Rate limits counted in this process.
struct Local {
    epoch: Instant,
    slots: Cache<String, Arc<Slot>>,
}

impl Local {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            // A slot idle for a window holds nothing a fresh one would not, so slots are
            // simply evicted when the table is full, least used first.
            slots: Cache::new(MAX_LOCAL_KEYS),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
    }

    /// The state of `key`, fresh when the key is new.
    fn slot(&self, key: &str) -> Arc<Slot> {
        self.slots
            .get_or_insert_with(key, || {
                Ok::<_, std::convert::Infallible>(Arc::new(Slot {
                    tat: AtomicU64::new(0),
                }))
            })
            .unwrap_or_else(|never| match never {})
    }

    fn check(&self, key: &str, quota: Quota, cost: u64) -> Decision {
        let slot = self.slot(key);
        let now = self.now();
        let mut tat = slot.tat.load(Ordering::Acquire);
        loop {
            let decision = gcra(tat, now, quota, cost);
            if !decision.admitted {
                return decision;
            }
            match slot.tat.compare_exchange_weak(
                tat,
                decision.new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }

    /// Takes over the shared state of `key` (the full limit is available after `reset` ns),
    /// so that falling back starts from what Redis counted.
    fn mirror(&self, key: &str, reset: u64) {
        let slot = self.slot(key);
        slot.tat.store(self.now() + reset, Ordering::Release);
    }
}

/// Why Redis did not answer a check.
enum Failure {
    Timeout,
    Redis(redis::RedisError),
}

impl Failure {
    /// What went wrong, without anything from the URL.
    fn reason(&self) -> String {
        match self {
            Self::Timeout => format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()),
            Self::Redis(error) if error.is_timeout() => "timed out".to_owned(),
            Self::Redis(error) if error.is_connection_refusal() => "connection refused".to_owned(),
            Self::Redis(error) if error.is_connection_dropped() => "connection dropped".to_owned(),
            Self::Redis(error) => match error.code() {
                Some(code) => format!("server error {code}"),
                None => format!("{:?}", error.kind()),
            },
        }
    }
}

impl From<redis::RedisError> for Failure {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error)
    }
}

/// Rate limits shared through Redis.
struct Remote {
    client: redis::Client,
    /// Built on first use, inside a Tokio runtime.
    connection: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    falling_back: AtomicBool,
    probing: AtomicBool,
    report: Arc<dyn Fn(bool) + Send + Sync>,
}

impl Remote {
    /// The shared connection, built on first use. Must run inside a Tokio runtime.
    fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(connection) = connection.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(CONNECT_TIMEOUT);
        let built = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        *connection = Some(built.clone());
        Ok(built)
    }

    /// Drops the shared connection, so that the next use connects anew.
    fn reset_connection(&self) {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *connection = None;
    }

    async fn check(&self, key: &str, quota: Quota, cost: u64) -> Result<Decision, Failure> {
        let mut connection = self.connection()?;
        let mut invocation = self.script.key(format!("{KEY_PREFIX}{key}"));
        invocation.arg(quota.period).arg(quota.tau).arg(cost);
        let (admitted, remaining, reset, retry): (i64, i64, i64, i64) =
            tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| Failure::Timeout)??;
        let nanos = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(Decision {
            admitted: admitted == 1,
            remaining: nanos(remaining),
            reset: nanos(reset),
            retry: nanos(retry),
            new_tat: 0,
        })
    }

    /// Whether Redis answers a PING in time and runs the rate script (on a key of its own, so
    /// that a server that answers but cannot count, such as a read-only replica, is not taken
    /// as recovered).
    async fn probe(&self) -> bool {
        let Ok(mut connection) = self.connection() else {
            return false;
        };
        let ping = redis::cmd("PING");
        let answer =
            tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<String>(&mut connection));
        if !matches!(answer.await, Ok(Ok(_))) {
            return false;
        }
        let mut invocation = self.script.key(PROBE_KEY);
        invocation.arg(1).arg(1_000_000).arg(1);
        let answer = tokio::time::timeout(
            PROBE_TIMEOUT,
            invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection),
        );
        matches!(answer.await, Ok(Ok(_)))
    }

    /// Switches to local counting after a failure, and makes sure a probe watches for Redis.
    fn fall_back(self: &Arc<Self>, failure: &Failure) {
        if self
            .falling_back
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                reason = %failure.reason(),
                "Redis cannot count rate limits; counting them in this process until it can again"
            );
            (self.report)(true);
        }
        self.ensure_probe();
    }

    /// Starts the probe unless one runs (or no Tokio runtime is at hand).
    fn ensure_probe(self: &Arc<Self>) {
        if self.probing.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let running = ProbeRunning(Arc::downgrade(self));
            runtime.spawn(probe(Arc::downgrade(self), running));
        }
    }

    /// Switches back to Redis once it answers.
    fn recover(&self) {
        if self
            .falling_back
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::info!("Redis counts rate limits again; they are shared through it again");
            (self.report)(false);
        }
    }
}

/// Marks the probe as stopped when it ends, however it ends (also when its runtime shuts
/// down), so that the next check starts another one.
struct ProbeRunning(Weak<Remote>);

impl Drop for ProbeRunning {
    fn drop(&mut self) {
        if let Some(remote) = self.0.upgrade() {
            remote.probing.store(false, Ordering::Release);
        }
    }
}

/// Probes Redis every [`PROBE_INTERVAL`] while the limiter falls back, and switches back when
/// Redis answers. Ends when the limiter is dropped.
async fn probe(remote: Weak<Remote>, running: ProbeRunning) {
    let mut failures: u32 = 0;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        if !remote.falling_back.load(Ordering::Acquire) {
            break;
        }
        if remote.probe().await {
            remote.recover();
            break;
        }
        failures += 1;
        if failures >= PROBE_REBUILD_AFTER {
            failures = 0;
            remote.reset_connection();
        }
    }
    drop(running);
}

/// Per-key rate limiter, shared by all workers.
///
/// Each key is limited to `limit` requests per `window` with the generic cell rate algorithm:
/// a burst of `limit` requests is admitted at once, then one more request becomes admissible
/// every `window / limit`.
pub struct RateLimiter {
    local: Local,
    remote: Option<Arc<Remote>>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field(
                "backend",
                &if self.remote.is_some() {
                    "redis"
                } else {
                    "local"
                },
            )
            .field("falling_back", &self.falling_back())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter that counts in this process only.
    pub fn local() -> Self {
        Self {
            local: Local::new(),
            remote: None,
        }
    }

    /// A limiter that shares its windows with every process using the Redis server at `url`
    /// (for example `redis://127.0.0.1:6379`).
    ///
    /// It neither connects nor waits here: it connects on the first check, and whenever Redis
    /// is unreachable or slow it counts in this process until Redis answers again. `report` is
    /// called with `true` when it starts counting locally and with `false` when it shares
    /// through Redis again.
    ///
    /// # Errors
    ///
    /// Only when `url` cannot be parsed as a Redis URL.
    pub fn redis(url: &str, report: Arc<dyn Fn(bool) + Send + Sync>) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|error| format!("invalid Redis URL: {error}"))?;
        Ok(Self {
            local: Local::new(),
            remote: Some(Arc::new(Remote {
                client,
                connection: Mutex::new(None),
                script: redis::Script::new(SCRIPT),
                falling_back: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                report,
            })),
        })
    }

    /// Checks one request costing `cost` against `limit` requests per `window` for `key`.
    ///
    /// A request whose cost exceeds `limit` is always refused. This never fails: when Redis
    /// does not answer within about 100 ms, the request is counted in this process instead.
    pub async fn check(&self, key: &str, limit: u64, window: Duration, cost: u64) -> RateState {
        let quota = Quota::new(limit, window);
        let cost = quota.cost(cost);
        if let Some(remote) = &self.remote {
            if remote.falling_back.load(Ordering::Acquire) {
                remote.ensure_probe();
            } else if tokio::runtime::Handle::try_current().is_ok() {
                match remote.check(key, quota, cost).await {
                    Ok(decision) => {
                        self.local.mirror(key, decision.reset);
                        return decision.state(limit);
                    }
                    Err(failure) => remote.fall_back(&failure),
                }
            }
        }
        self.local.check(key, quota, cost).state(limit)
    }

    /// Whether the limiter currently counts in this process because Redis does not answer
    /// (always `false` for [`RateLimiter::local`]).
    pub fn falling_back(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|remote| remote.falling_back.load(Ordering::Acquire))
    }

    /// Forgets what this process counted for `key`, for example because its limit changed.
    pub fn forget(&self, key: &str) {
        self.local.slots.remove(key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::AtomicUsize;
    use std::time::SystemTime;

    const SECOND: Duration = Duration::from_secs(1);

    /// A key no other test run uses.
    fn unique(name: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("test_{name}_{}_{nanos}", std::process::id())
    }

    /// Whether `redis-server` can be run; under CI its absence fails the test.
    fn redis_server_available() -> bool {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            keygate_storage::test_support::skip_unless_ci(
                "Redis test: redis-server is missing",
                "apt-get install redis-server",
            );
        }
        found
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn answers_ping(port: u16) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(SECOND));
        let mut reply = [0_u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// A private `redis-server`, killed when dropped.
    struct RedisServer {
        port: u16,
        child: Option<Child>,
    }

    impl RedisServer {
        fn start(port: u16) -> Self {
            let mut server = Self { port, child: None };
            server.restart();
            server
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn restart(&mut self) {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.child = Some(child);
            let started = Instant::now();
            while !answers_ping(self.port) {
                assert!(
                    started.elapsed() < 10 * SECOND,
                    "redis-server did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Records what a limiter reports.
    type Report = Arc<dyn Fn(bool) + Send + Sync>;

    fn recorder() -> (Arc<Mutex<Vec<bool>>>, Report) {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let report = Arc::new(move |falling_back: bool| sink.lock().unwrap().push(falling_back));
        (reports, report)
    }

    fn no_report() -> Report {
        Arc::new(|_| {})
    }

    async fn wait_until(limit: Duration, condition: impl Fn() -> bool) -> bool {
        let started = Instant::now();
        while !condition() {
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    fn is_send_sync<T: Send + Sync>() {}
    fn is_send<T: Send>(_: &T) {}

    #[test]
    fn limiter_and_check_are_thread_safe() {
        is_send_sync::<RateLimiter>();
        let limiter = RateLimiter::local();
        is_send(&limiter.check("k", 1, SECOND, 1));
    }

    #[test]
    fn gcra_arithmetic() {
        // 3 per second: period 333_333_333 ns, tolerance 999_999_999 ns.
        let quota = Quota::new(3, SECOND);
        assert_eq!(quota.period, 333_333_333);
        assert_eq!(quota.tau, 999_999_999);
        assert_eq!(quota.limit(), 3);
        let now = 5_000_000_000;
        let first = gcra(0, now, quota, 1);
        assert!(first.admitted);
        assert_eq!(first.remaining, 2);
        assert_eq!(first.reset, 333_333_333);
        let second = gcra(first.new_tat, now, quota, 2);
        assert!(second.admitted);
        assert_eq!(second.remaining, 0);
        let refused = gcra(second.new_tat, now, quota, 1);
        assert!(!refused.admitted);
        assert_eq!(refused.new_tat, second.new_tat);
        assert_eq!(refused.retry, 333_333_333);
        assert_eq!(refused.reset, 999_999_999);
        // One period later exactly one more is admitted.
        let later = gcra(second.new_tat, now + quota.period, quota, 1);
        assert!(later.admitted);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn quota_bounds() {
        let zero = Quota::new(0, Duration::ZERO);
        assert_eq!((zero.period, zero.limit()), (1_000_000, 1));
        let huge = Quota::new(u64::MAX, Duration::MAX);
        assert_eq!(huge.period, 1);
        assert_eq!(huge.tau, 86_400_000_000_000);
        assert_eq!(huge.cost(u64::MAX), huge.limit() + 1);
        assert_eq!(huge.cost(0), 1);
    }

    #[tokio::test]
    async fn local_burst_is_exact() {
        let limiter = RateLimiter::local();
        let window = 10 * SECOND;
        for expected in (0..10).rev() {
            let state = limiter.check("burst", 10, window, 1).await;
            assert!(state.admitted());
            assert_eq!(state.limit, 10);
            assert_eq!(state.remaining, expected);
            assert!(state.reset <= window);
        }
        let refused = limiter.check("burst", 10, window, 1).await;
        assert!(!refused.admitted());
        assert_eq!(refused.remaining, 0);
        let retry = refused.retry_after.unwrap();
        assert!(
            retry > Duration::from_millis(900) && retry <= SECOND,
            "{retry:?}"
        );
        assert!(refused.reset > Duration::from_millis(9_900) && refused.reset <= window);
        assert!(!limiter.falling_back());
    }

    #[tokio::test]
    async fn local_recovers_one_request_per_period() {
        let limiter = RateLimiter::local();
        // 4 per second: one more every 250 ms.
        for _ in 0..4 {
            assert!(limiter.check("recover", 4, SECOND, 1).await.admitted());
        }
        let refused = limiter.check("recover", 4, SECOND, 1).await;
        let retry = refused.retry_after.unwrap();
        assert!(retry <= Duration::from_millis(250));
        tokio::time::sleep(retry + Duration::from_millis(5)).await;
        let state = limiter.check("recover", 4, SECOND, 1).await;
        assert!(state.admitted());
        assert_eq!(state.remaining, 0);
        assert!(!limiter.check("recover", 4, SECOND, 1).await.admitted());
        // After a whole window the full burst is back.
        tokio::time::sleep(SECOND).await;
        let state = limiter.check("recover", 4, SECOND, 1).await;
        assert_eq!(state.remaining, 3);
    }

    #[tokio::test]
    async fn local_limit_change_keeps_the_window_and_forget_forgets() {
        let limiter = RateLimiter::local();
        let window = 60 * SECOND;
        for _ in 0..5 {
            assert!(limiter.check("change", 5, window, 1).await.admitted());
        }
        assert!(!limiter.check("change", 5, window, 1).await.admitted());
        // A slightly different limit does not start a fresh window: what was spent
        // counts against it.
        assert!(
            !limiter
                .check("change", 5, window + SECOND / 1000, 1)
                .await
                .admitted()
        );
        // The time the spent requests stand for carries over to a new limit.
        let state = limiter.check("change", 10, window, 1).await;
        assert!(!state.admitted(), "{state:?}");

        for _ in 0..10 {
            limiter.check("change", 10, 2 * window, 1).await;
        }
        assert!(!limiter.check("change", 10, 2 * window, 1).await.admitted());
        limiter.forget("change");
        assert_eq!(
            limiter.check("change", 10, 2 * window, 1).await.remaining,
            9
        );
    }

    #[tokio::test]
    async fn local_costs_count() {
        let limiter = RateLimiter::local();
        let state = limiter.check("cost", 10, SECOND, 3).await;
        assert_eq!(state.remaining, 7);
        let refused = limiter.check("cost", 10, SECOND, 8).await;
        assert!(!refused.admitted());
        // Refusals cost nothing.
        assert_eq!(limiter.check("cost", 10, SECOND, 7).await.remaining, 0);
        // Zero costs as one.
        assert!(!limiter.check("cost", 10, SECOND, 0).await.admitted());
    }

    #[tokio::test]
    async fn local_cost_above_limit_is_refused() {
        let limiter = RateLimiter::local();
        for cost in [6, 1_000, u64::MAX] {
            let state = limiter.check("over", 5, 60 * SECOND, cost).await;
            assert!(!state.admitted());
            assert_eq!(state.remaining, 0);
            assert!(state.retry_after.unwrap() <= 60 * SECOND);
        }
        // The refusals left the full burst.
        assert_eq!(limiter.check("over", 5, 60 * SECOND, 5).await.remaining, 0);
    }

    #[tokio::test]
    async fn local_huge_limits_do_not_overflow() {
        let limiter = RateLimiter::local();
        let day = 86_400 * SECOND;
        let state = limiter.check("huge", 1_000_000_000, day, 1).await;
        assert_eq!(state.remaining, 999_999_999);
        let state = limiter.check("huge", 1_000_000_000, day, 999_999_999).await;
        assert!(state.admitted());
        assert_eq!(state.remaining, 0);
        assert!(state.reset <= day);
        let refused = limiter.check("huge", 1_000_000_000, day, u64::MAX).await;
        assert!(!refused.admitted());
        assert!(refused.retry_after.unwrap() <= 2 * day);

        let state = limiter
            .check("max", 1_000_000_000, SECOND, 1_000_000_000)
            .await;
        assert!(state.admitted());
        // One more becomes admissible every nanosecond: a million are not there yet.
        let refused = limiter.check("max", 1_000_000_000, SECOND, 1_000_000).await;
        assert!(!refused.admitted());
        assert!(refused.retry_after.unwrap() <= Duration::from_millis(1));

        for (limit, window, cost) in [
            (u64::MAX, Duration::MAX, u64::MAX),
            (u64::MAX, Duration::ZERO, 1),
            (0, SECOND, 0),
            (1, Duration::MAX, u64::MAX - 1),
        ] {
            let state = limiter.check("extreme", limit, window, cost).await;
            assert!(state.reset <= MAX_WINDOW && state.retry_after.is_none_or(|r| r <= 2 * day));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_counts_exactly_under_contention() {
        let limiter = Arc::new(RateLimiter::local());
        let admitted = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                let admitted = Arc::clone(&admitted);
                tokio::spawn(async move {
                    for _ in 0..1_000 {
                        if limiter
                            .check("contended", 5_000, 3_600 * SECOND, 1)
                            .await
                            .admitted()
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 5_000);
    }

    #[test]
    fn invalid_redis_url_is_an_error() {
        assert!(RateLimiter::redis("definitely not a url", no_report()).is_err());
        assert!(RateLimiter::redis("redis://127.0.0.1:6379", no_report()).is_ok());
    }

    /// A Redis URL for tests: `KEYGATE_TEST_REDIS_URL`, else the Redis on 127.0.0.1:6379 when
    /// it answers, else a private `redis-server` (returned to keep it running).
    fn shared_redis() -> Option<(String, Option<RedisServer>)> {
        if let Ok(url) = std::env::var("KEYGATE_TEST_REDIS_URL") {
            return Some((url, None));
        }
        if answers_ping(6379) {
            return Some(("redis://127.0.0.1:6379".to_owned(), None));
        }
        if !redis_server_available() {
            return None;
        }
        let server = RedisServer::start(free_port());
        Some((server.url(), Some(server)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_instances_share_one_window() {
        let Some((url, _server)) = shared_redis() else {
            return;
        };
        let first = RateLimiter::redis(&url, no_report()).unwrap();
        let second = RateLimiter::redis(&url, no_report()).unwrap();
        let key = unique("shared");
        let window = 20 * SECOND;
        let mut admitted = 0;
        for round in 0..40 {
            for limiter in [&first, &second] {
                let state = limiter.check(&key, 50, window, 1).await;
                if state.admitted() {
                    admitted += 1;
                    assert_eq!(state.remaining, 50 - admitted, "round {round}");
                } else {
                    assert_eq!(state.remaining, 0);
                    let retry = state.retry_after.unwrap();
                    // One more every 400 ms.
                    assert!(retry <= Duration::from_millis(400), "{retry:?}");
                }
            }
        }
        assert_eq!(admitted, 50);
        assert!(!first.falling_back() && !second.falling_back());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_and_local_agree() {
        let Some((url, _server)) = shared_redis() else {
            return;
        };
        let remote = RateLimiter::redis(&url, no_report()).unwrap();
        let local = RateLimiter::local();
        let key = unique("agree");
        let mut used = Vec::new();
        let day = 86_400 * SECOND;
        for (limit, window, costs) in [
            (5, 10 * SECOND, &[1, 2, 6, 1, 1, 1, 1][..]),
            (7, 3 * SECOND, &[1; 9][..]),
            (
                1_000_000_000,
                day,
                &[999_999_000, 1, 5, 2_000, u64::MAX][..],
            ),
        ] {
            let key = format!("{key}_{limit}");
            used.push(format!("{KEY_PREFIX}{key}"));
            let period = window.as_nanos() / u128::from(limit);
            let started = Instant::now();
            for &cost in costs {
                let shared = remote.check(&key, limit, window, cost).await;
                let own = local.check(&key, limit, window, cost).await;
                assert_eq!(shared.admitted(), own.admitted(), "{shared:?} {own:?}");
                // Huge limits have periods of microseconds: allow for the time the checks take.
                let slack = started.elapsed().as_nanos() / period + 1;
                assert!(
                    u128::from(shared.remaining.abs_diff(own.remaining)) <= slack,
                    "{shared:?} {own:?}"
                );
                let near = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_millis(50);
                assert!(near(shared.reset, own.reset), "{shared:?} {own:?}");
                if let (Some(a), Some(b)) = (shared.retry_after, own.retry_after) {
                    assert!(near(a, b), "{shared:?} {own:?}");
                }
            }
        }
        assert!(!remote.falling_back());
        // The day-long windows would linger for a day.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("DEL")
            .arg(&used)
            .query_async(&mut connection)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_falls_back_and_recovers() {
        if !redis_server_available() {
            return;
        }
        let mut server = RedisServer::start(free_port());
        let (reports, report) = recorder();
        let limiter = RateLimiter::redis(&server.url(), report).unwrap();
        let key = unique("fallback");
        // One request per second: the time the checks take does not change what remains.
        let window = 1_000 * SECOND;
        let state = limiter.check(&key, 1_000, window, 1).await;
        assert_eq!(state.remaining, 999);
        assert!(!limiter.falling_back());

        server.kill();
        for expected in (979..999).rev() {
            let started = Instant::now();
            let state = limiter.check(&key, 1_000, window, 1).await;
            assert!(started.elapsed() < Duration::from_millis(200));
            // Local counting goes on from what Redis had counted.
            assert_eq!(state.remaining, expected);
        }
        assert!(limiter.falling_back());
        assert_eq!(*reports.lock().unwrap(), [true]);

        server.restart();
        assert!(wait_until(5 * SECOND, || !limiter.falling_back()).await);
        assert_eq!(*reports.lock().unwrap(), [true, false]);
        // The new server starts empty: the check went to Redis.
        let state = limiter.check(&key, 1_000, window, 1).await;
        assert_eq!(state.remaining, 999);
        assert!(!limiter.falling_back());
    }

    #[test]
    fn redis_down_at_start_counts_locally_until_it_is_up() {
        if !redis_server_available() {
            return;
        }
        let port = free_port();
        let (reports, report) = recorder();
        // Built outside any runtime, with nothing listening yet.
        let limiter = RateLimiter::redis(&format!("redis://127.0.0.1:{port}"), report).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let key = unique("down");
            for expected in (0..3).rev() {
                let started = Instant::now();
                let state = limiter.check(&key, 3, 60 * SECOND, 1).await;
                assert!(started.elapsed() < Duration::from_millis(200));
                assert_eq!(state.remaining, expected);
            }
            assert!(!limiter.check(&key, 3, 60 * SECOND, 1).await.admitted());
            assert!(limiter.falling_back());
            assert_eq!(*reports.lock().unwrap(), [true]);

            let _server = RedisServer::start(port);
            assert!(wait_until(5 * SECOND, || !limiter.falling_back()).await);
            assert_eq!(*reports.lock().unwrap(), [true, false]);
            let state = limiter.check(&key, 3, 60 * SECOND, 1).await;
            assert_eq!(state.remaining, 2);
        });
    }
}
