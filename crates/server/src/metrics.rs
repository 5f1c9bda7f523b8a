//! Prometheus metrics, all named `keygate_*`, served at `GET /metrics` to the master key
//! or to the bearer of `server.metrics_token`.

use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use keygate_guard::presented_key;

/// The service's counters, histograms and gauges.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    auth: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
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
    /// `keygate_auth_decisions_total{outcome="ok"}`, resolved once: counted on every
    /// admitted request.
    auth_ok: IntCounter,
}

/// The outcomes of `keygate_metering_decisions_total`, in the order of `Metrics::metering`.
const METERING_OUTCOMES: [&str; 3] = ["allowed", "rate_limited", "usage_exceeded"];

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "keygate_http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "keygate_http_request_duration_seconds",
                "Time to answer HTTP requests, by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                5.0,
            ]),
            &["method", "route"],
        )?;
        let auth = IntCounterVec::new(
            Opts::new(
                "keygate_auth_decisions_total",
                "Authentication decisions, by outcome code",
            ),
            &["outcome"],
        )?;
        let cache_hits = IntCounter::new(
            "keygate_key_cache_hits_total",
            "Key verifications answered from memory",
        )?;
        let cache_misses = IntCounter::new(
            "keygate_key_cache_misses_total",
            "Key verifications that read the database",
        )?;
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(auth.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(pool_idle.clone()))?;
        let auth_ok = auth.with_label_values(&["ok"]);
        Ok(Metrics {
            registry,
            requests,
            latency,
            auth,
            cache_hits,
            cache_misses,
            pool_connections,
            pool_idle,
            cache_entries,
            cache_bytes,
            metering: METERING_OUTCOMES.map(|outcome| metering.with_label_values(&[outcome])),
            redis_fallback,
            legacy_checks: ["matched", "mismatched"]
                .map(|outcome| legacy_checks.with_label_values(&[outcome])),
            auth_ok,
        })
    }

    /// Counts one answered request. `method` is one of [`method_label`]'s, `route` a
    /// route template or `unmatched`: a fixed set. Prometheus keeps each label set's
    /// series once resolved.
    pub fn request(
        &self,
        method: &'static str,
        route: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one authentication decision: `ok`, or the refusal's error code.
    pub fn auth_decision(&self, outcome: &str) {
        if outcome == "ok" {
            self.auth_ok.inc();
            return;
        }
        self.auth.with_label_values(&[outcome]).inc();
    }

    /// Counts a verification answered from memory, or one that read the database.
    pub fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
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
