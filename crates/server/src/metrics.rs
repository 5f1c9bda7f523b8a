//! Prometheus metrics, all named `keygate_*`, served at `GET /metrics` to the master key
//! or to the bearer of `server.metrics_token`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use thread_local::ThreadLocal;

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use keygate_guard::presented_key;

/// The service's counters, histograms and gauges.
pub struct Metrics {
    registry: Registry,
    /// Requests, their latency, authentication decisions and key cache hits.
    requests: Arc<RequestTallies>,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    /// `keygate_metering_decisions_total` by outcome, resolved once: this is counted on
    /// every request of a metered key.
    metering: [IntCounter; 3],
    redis_fallback: IntGauge,
    /// `keygate_legacy_checks_total`: matched, then mismatched.
    legacy_checks: [IntCounter; 2],
}

/// The outcomes of `keygate_metering_decisions_total`, in the order of `Metrics::metering`.
const METERING_OUTCOMES: [&str; 3] = ["allowed", "rate_limited", "usage_exceeded"];

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = Arc::new(RequestTallies::new()?);
        let pool_connections =
            IntGauge::new("keygate_db_pool_connections", "Open database connections")?;
        let pool_idle = IntGauge::new(
            "keygate_db_pool_idle_connections",
            "Idle database connections",
        )?;
        let cache_entries =
            IntGauge::new("keygate_key_cache_entries", "Verified keys held in memory")?;
        let cache_bytes = IntGauge::new(
            "keygate_key_cache_bytes",
            "Approximate bytes the keys held in memory take (bounded by auth.cache_max_bytes)",
        )?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        let metering = IntCounterVec::new(
            Opts::new(
                "keygate_metering_decisions_total",
                "Requests of keys with a rate limit or credits, by outcome: allowed, rate_limited or usage_exceeded",
            ),
            &["outcome"],
        )?;
        let redis_fallback = IntGauge::new(
            "keygate_metering_redis_fallback",
            "1 while rate limits are counted in this process because Redis cannot be reached",
        )?;
        let legacy_checks = IntCounterVec::new(
            Opts::new(
                "keygate_legacy_checks_total",
                "bcrypt checks of presented keys against imported (Blnk) hashes, by outcome: matched or mismatched; each key is checked so only until its first use",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(legacy_checks.clone()))?;
        registry.register(Box::new(metering.clone()))?;
        registry.register(Box::new(redis_fallback.clone()))?;
        registry.register(Box::new(SharedCollector(requests.clone())))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(pool_idle.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            pool_connections,
            pool_idle,
            cache_entries,
            cache_bytes,
            metering: METERING_OUTCOMES.map(|outcome| metering.with_label_values(&[outcome])),
            redis_fallback,
            legacy_checks: ["matched", "mismatched"]
                .map(|outcome| legacy_checks.with_label_values(&[outcome])),
        })
    }

    /// Counts one answered request. `method` is one of [`method_label`]'s, `route` a
    /// route template or `unmatched`: a fixed set. Prometheus keeps each label set's
    /// series once resolved.
    pub fn request(
        &self,
        method: &'static str,
        route: impl Into<Cow<'static, str>>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.requests.record(method, route.into(), status, elapsed);
    }

    /// Counts one authentication decision: `ok`, or the refusal's error code.
    pub fn auth_decision(&self, outcome: &'static str) {
        *self.requests.mine().auth.entry(outcome).or_default() += 1;
    }

    /// Counts a verification answered from memory, or one that read the database.
    pub fn cache(&self, hit: bool) {
        self.requests.mine().cache[usize::from(!hit)] += 1;
    }

    /// The metrics as Prometheus text, with the pool's state (open and idle connections)
    /// and the key cache's (entries and bytes) as of now.
    fn render(
        &self,
        pool: Option<(u32, u32)>,
        cache: (u64, u64),
    ) -> Result<String, prometheus::Error> {
        if let Some((connections, idle)) = pool {
            self.pool_connections.set(i64::from(connections));
            self.pool_idle.set(i64::from(idle));
        }
        let (entries, bytes) = cache;
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

impl keygate_guard::Observer for Metrics {
    fn auth_decision(&self, outcome: &'static str) {
        Metrics::auth_decision(self, outcome);
    }

    fn cache(&self, hit: bool) {
        Metrics::cache(self, hit);
    }

    fn metering_decision(&self, outcome: &'static str) {
        if let Some(at) = METERING_OUTCOMES.iter().position(|known| *known == outcome) {
            self.metering[at].inc();
        }
    }

    fn redis_fallback(&self, falling_back: bool) {
        self.redis_fallback.set(i64::from(falling_back));
    }

    fn legacy_check(&self, matched: bool) {
        self.legacy_checks[usize::from(!matched)].inc();
    }
}

/// A request method as a metric label: one of the standard methods, or `other`, so a
/// client inventing methods cannot grow the metrics without bound.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// `GET /metrics`: for the master key (X-Blnk-Key or Bearer) or the metrics token.
/// Nothing else is looked up, so it tells an API key from a wrong one no more than any
/// other text, and every wrong key counts against the client's brute-force budget.
#[utoipa::path(get, path = "/metrics", tag = "service", operation_id = "metrics",
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        (status = 401, description = "AUTH_MISSING_API_KEY, or AUTH_METRICS_TOKEN_REQUIRED for any other key (API keys included)", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED: too many wrong keys from this address", body = ErrorBody),
    ))]
pub async fn serve(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let peer = request.peer_addr().map(|address| address.ip());
    let guard = state.guard();
    let client = guard.throttle().client(peer, request.headers());
    guard.admit_operator(client, presented_key(request.headers())?)?;
    let text = state
        .metrics()
        .render(guard.store().pool_state(), guard.cache_size())
        .map_err(|error| {
            tracing::error!(%error, "could not render metrics");
            ApiError::INTERNAL
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// The upper bounds of `keygate_http_request_duration_seconds`' buckets.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// One series of answered requests: method, route template and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Series {
    method: &'static str,
    /// Borrowed where the route is fixed (gRPC's), so that counting allocates nothing.
    route: Cow<'static, str>,
    status: u16,
}

/// What a thread counted for one series.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    count: u64,
    seconds: f64,
    /// Requests by the first bucket that holds their duration (the last: above them all).
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
}

/// What every request counts: `keygate_http_requests_total`,
/// `keygate_http_request_duration_seconds`, `keygate_auth_decisions_total` and
/// `keygate_key_cache_{hits,misses}_total`, tallied by each thread for itself and added
/// up when scraped. A counter shared by all workers is memory every core writes on every
/// request: on two cores that cost more than the counting itself.
struct RequestTallies {
    threads: ThreadLocal<Mutex<ThreadTallies>>,
    requests: Desc,
    latency: Desc,
    auth: Desc,
    cache_hits: Desc,
    cache_misses: Desc,
}

/// What one thread counted.
#[derive(Debug, Default)]
struct ThreadTallies {
    requests: HashMap<Series, Tally, foldhash::fast::RandomState>,
    /// Authentication decisions by outcome (`ok` or an error code: a fixed set).
    auth: HashMap<&'static str, u64, foldhash::fast::RandomState>,
    /// Verifications answered from memory, then those that read the database.
    cache: [u64; 2],
}

impl RequestTallies {
    fn new() -> Result<Self, prometheus::Error> {
        let labels = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect();
        Ok(RequestTallies {
            threads: ThreadLocal::new(),
            requests: Desc::new(
                "keygate_http_requests_total".into(),
                "HTTP requests answered, by route and status".into(),
                labels(&["method", "route", "status"]),
                HashMap::new(),
            )?,
            latency: Desc::new(
                "keygate_http_request_duration_seconds".into(),
                "Time to answer HTTP requests, by route".into(),
                labels(&["method", "route"]),
                HashMap::new(),
            )?,
            auth: Desc::new(
                "keygate_auth_decisions_total".into(),
                "Authentication decisions, by outcome code".into(),
                labels(&["outcome"]),
                HashMap::new(),
            )?,
            cache_hits: Desc::new(
                "keygate_key_cache_hits_total".into(),
                "Key verifications answered from memory".into(),
                vec![],
                HashMap::new(),
            )?,
            cache_misses: Desc::new(
                "keygate_key_cache_misses_total".into(),
                "Key verifications that read the database".into(),
                vec![],
                HashMap::new(),
            )?,
        })
    }

    /// This thread's tallies, locked (by no one else but a scrape).
    fn mine(&self) -> std::sync::MutexGuard<'_, ThreadTallies> {
        self.threads
            .get_or_default()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(
        &self,
        method: &'static str,
        route: Cow<'static, str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let series = Series {
            method,
            route,
            status: status.as_u16(),
        };
        let mut tallies = self.mine();
        let tally = tallies.requests.entry(series).or_default();
        tally.count += 1;
        tally.seconds += seconds;
        tally.buckets[bucket] += 1;
    }

    /// Every thread's tallies added up.
    fn totals(&self) -> ThreadTallies {
        let mut totals = ThreadTallies::default();
        for thread in self.threads.iter() {
            totals.add(&thread.lock().unwrap_or_else(PoisonError::into_inner));
        }
        totals
    }
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.count += other.count;
        self.seconds += other.seconds;
        for (sum, add) in self.buckets.iter_mut().zip(other.buckets) {
            *sum += add;
        }
    }
}

impl ThreadTallies {
    fn add(&mut self, other: &ThreadTallies) {
        for (series, tally) in &other.requests {
            self.requests.entry(series.clone()).or_default().add(tally);
        }
        for (outcome, count) in &other.auth {
            *self.auth.entry(outcome).or_default() += count;
        }
        for (sum, add) in self.cache.iter_mut().zip(other.cache) {
            *sum += add;
        }
    }
}

/// A counter sample with `labels`: exact up to 2^53.
#[allow(clippy::cast_precision_loss)]
fn counter(labels: Vec<LabelPair>, value: u64) -> proto::Metric {
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    let mut metric = proto::Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// The registry takes collectors by value: this shares [`RequestTallies`] with [`Metrics`].
struct SharedCollector(Arc<RequestTallies>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&Desc> {
        let tallies = &self.0;
        vec![
            &tallies.requests,
            &tallies.latency,
            &tallies.auth,
            &tallies.cache_hits,
            &tallies.cache_misses,
        ]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let ThreadTallies {
            requests: totals,
            auth,
            cache,
        } = self.0.totals();
        let mut counters = Vec::with_capacity(totals.len());
        let mut by_route: HashMap<(&'static str, &str), Tally> = HashMap::new();
        for (series, tally) in &totals {
            counters.push(counter(
                vec![
                    label("method", series.method),
                    label("route", &series.route),
                    label("status", &series.status.to_string()),
                ],
                tally.count,
            ));
            by_route
                .entry((series.method, &*series.route))
                .or_default()
                .add(tally);
        }
        let histograms = by_route
            .into_iter()
            .map(|((method, route), tally)| {
                let mut cumulative = 0;
                let buckets = LATENCY_BUCKETS
                    .iter()
                    .zip(tally.buckets)
                    .map(|(bound, count)| {
                        cumulative += count;
                        let mut bucket = proto::Bucket::default();
                        bucket.set_cumulative_count(cumulative);
                        bucket.set_upper_bound(*bound);
                        bucket
                    })
                    .collect();
                let mut histogram = proto::Histogram::default();
                histogram.set_sample_count(tally.count);
                histogram.set_sample_sum(tally.seconds);
                histogram.set_bucket(buckets);
                let mut metric =
                    proto::Metric::from_label(vec![label("method", method), label("route", route)]);
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let decisions = auth
            .into_iter()
            .map(|(outcome, count)| counter(vec![label("outcome", outcome)], count))
            .collect();
        vec![
            family(&self.0.requests, MetricType::COUNTER, counters),
            family(&self.0.latency, MetricType::HISTOGRAM, histograms),
            family(&self.0.auth, MetricType::COUNTER, decisions),
            family(
                &self.0.cache_hits,
                MetricType::COUNTER,
                vec![counter(vec![], cache[0])],
            ),
            family(
                &self.0.cache_misses,
                MetricType::COUNTER,
                vec![counter(vec![], cache[1])],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample named exactly `name` in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn requests_tallied_on_many_threads_are_scraped_as_their_sum() {
        let metrics = Metrics::new().expect("metrics");
        std::thread::scope(|scope| {
            for thread in 0..4_u64 {
                let metrics = &metrics;
                scope.spawn(move || {
                    for _ in 0..250 {
                        // 0.2 ms: in the bucket of 0.00025 s.
                        let elapsed = Duration::from_micros(200);
                        metrics.request("GET", "/forward-auth", StatusCode::OK, elapsed);
                    }
                    let refused = if thread == 0 {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::UNAUTHORIZED
                    };
                    metrics.request("GET", "/forward-auth", refused, Duration::from_secs(2));
                    for _ in 0..10 {
                        metrics.auth_decision("ok");
                        metrics.cache(true);
                    }
                    metrics.auth_decision("AUTH_INVALID_API_KEY");
                    metrics.cache(false);
                });
            }
        });
        let text = metrics.render(None, (0, 0)).expect("rendered");
        let series = |labels: &str| sample(&text, labels);
        let route = r#"method="GET",route="/forward-auth""#;
        assert_eq!(
            series(&format!(
                r#"keygate_http_requests_total{{{route},status="200"}}"#
            )),
            Some(1000.0),
            "{text}"
        );
        assert_eq!(
            series(&format!(
                r#"keygate_http_requests_total{{{route},status="401"}}"#
            )),
            Some(3.0)
        );
        assert_eq!(
            series(&format!(
                r#"keygate_http_requests_total{{{route},status="403"}}"#
            )),
            Some(1.0)
        );
        let histogram = "keygate_http_request_duration_seconds";
        assert_eq!(
            series(&format!("{histogram}_count{{{route}}}")),
            Some(1004.0)
        );
        let sum = series(&format!("{histogram}_sum{{{route}}}")).expect("a sum");
        assert!((sum - (1000.0 * 0.0002 + 4.0 * 2.0)).abs() < 1e-6, "{sum}");
        let bucket = |le: &str| series(&format!(r#"{histogram}_bucket{{{route},le="{le}"}}"#));
        assert_eq!(bucket("0.0001"), Some(0.0));
        assert_eq!(bucket("0.00025"), Some(1000.0));
        assert_eq!(bucket("1"), Some(1000.0));
        assert_eq!(bucket("5"), Some(1004.0));
        assert_eq!(bucket("+Inf"), Some(1004.0));
        assert_eq!(
            series(r#"keygate_auth_decisions_total{outcome="ok"}"#),
            Some(40.0)
        );
        assert_eq!(
            series(r#"keygate_auth_decisions_total{outcome="AUTH_INVALID_API_KEY"}"#),
            Some(4.0)
        );
        assert_eq!(series("keygate_key_cache_hits_total"), Some(40.0));
        assert_eq!(series("keygate_key_cache_misses_total"), Some(4.0));
    }
}
