//! Prometheus metrics. One [`Metrics`] per gateway, each with its own registry (so tests
//! can run several gateways in one process). Labels come from small fixed sets: route
//! names from the rule file, method class, decision, status class, cache name, kind
//! name, outcome labels defined in code. Never a path, id, email or token.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for request and upstream latency (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Route label for requests no route matched.
pub const NO_ROUTE: &str = "-";
/// Route label for the token endpoint.
pub const TOKEN_ENDPOINT: &str = "token_endpoint";

const METHOD_CLASSES: [&str; 2] = ["read", "write"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Metric handles of one route, so allowed requests skip the label lookup (a hash and
/// a lock) on the hot path.
#[derive(Debug)]
pub struct RouteMetrics {
    name: String,
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
    /// Allowed requests by method class (read, write) x status class (1xx..5xx).
    allowed: [OnceLock<IntCounter>; 10],
}

/// All metrics of one gateway.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    in_flight: IntGauge,
    logins: IntCounterVec,
    tokens_issued: IntCounter,
    token_validations: IntCounterVec,
    api_key_validations: IntCounterVec,
    decisions: IntCounterVec,
    shadow_decisions: IntCounterVec,
    shadow_skipped: IntCounter,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_evictions: IntCounterVec,
    cache_entries: IntGaugeVec,
    owner_query_duration: HistogramVec,
    owner_query_errors: IntCounterVec,
    reloads: IntCounterVec,
    last_reload: Gauge,
    rules_loaded: IntGauge,
    change_feed_errors: IntCounter,
    connections_refused: IntCounter,
    client_connections_refused: IntCounter,
    ready: GaugeVec,
    /// Series hit on every authorized request, resolved once: a labelled lookup hashes
    /// the label values and takes a lock, which showed up in the request-path profile.
    hot: HotCounters,
}

/// The caches whose lookups are counted on the request path, in `HotCounters` order.
const HOT_CACHES: [&str; 3] = ["tokens", "principals", "owners"];

#[derive(Clone)]
struct HotCounters {
    valid_tokens: IntCounter,
    cache_hits: [IntCounter; 3],
    cache_misses: [IntCounter; 3],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric in a fresh registry (with process metrics on Linux).
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let build_info = IntGaugeVec::new(
            Opts::new("flexgate_build_info", "flexgate version; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        r.register(Box::new(build_info)).expect("unique metric");
        let in_flight = IntGauge::new("flexgate_requests_in_flight", "Requests being handled now.")
            .expect("valid metric");
        r.register(Box::new(in_flight.clone()))
            .expect("unique metric");
        let tokens_issued =
            IntCounter::new("flexgate_tokens_issued_total", "Access tokens issued.")
                .expect("valid metric");
        r.register(Box::new(tokens_issued.clone()))
            .expect("unique metric");
        let cache_entries = IntGaugeVec::new(
            Opts::new(
                "flexgate_cache_entries",
                "Entries in each cache (approximate).",
            ),
            &["cache"],
        )
        .expect("valid metric");
        r.register(Box::new(cache_entries.clone()))
            .expect("unique metric");
        let last_reload = Gauge::new(
            "flexgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful rule load.",
        )
        .expect("valid metric");
        r.register(Box::new(last_reload.clone()))
            .expect("unique metric");
        let rules_loaded = IntGauge::new("flexgate_rules_loaded", "Routes in the active rule set.")
            .expect("valid metric");
        r.register(Box::new(rules_loaded.clone()))
            .expect("unique metric");
        let change_feed_errors = IntCounter::new(
            "flexgate_change_feed_errors_total",
            "Failed polls of the identity change feed.",
        )
        .expect("valid metric");
        r.register(Box::new(change_feed_errors.clone()))
            .expect("unique metric");
        let connections_refused = IntCounter::new(
            "flexgate_connections_refused_total",
            "Connections closed at once because max_connections was reached.",
        )
        .expect("valid metric");
        r.register(Box::new(connections_refused.clone()))
            .expect("unique metric");
        let client_connections_refused = IntCounter::new(
            "flexgate_client_connections_refused_total",
            "Connections closed at once because their client held max_connections_per_client.",
        )
        .expect("valid metric");
        r.register(Box::new(client_connections_refused.clone()))
            .expect("unique metric");
        let ready = GaugeVec::new(
            Opts::new(
                "flexgate_ready",
                "1 when the check passes, 0 when it fails.",
            ),
            &["check"],
        )
        .expect("valid metric");
        r.register(Box::new(ready.clone())).expect("unique metric");
        let token_validations = counter(
            &r,
            "flexgate_token_validations_total",
            "Token checks by outcome.",
            &["outcome"],
        );
        let cache_hits = counter(
            &r,
            "flexgate_cache_hits_total",
            "Cache lookups answered from the cache.",
            &["cache"],
        );
        let cache_misses = counter(
            &r,
            "flexgate_cache_misses_total",
            "Cache lookups that had to load.",
            &["cache"],
        );
        let hot = HotCounters {
            valid_tokens: token_validations.with_label_values(&["valid"]),
            cache_hits: HOT_CACHES.map(|c| cache_hits.with_label_values(&[c])),
            cache_misses: HOT_CACHES.map(|c| cache_misses.with_label_values(&[c])),
        };
        let api_key_validations = counter(
            &r,
            "flexgate_api_key_validations_total",
            "API key checks by outcome (valid, malformed, bad_checksum, unknown, revoked, expired, inactive, unavailable).",
            &["outcome"],
        );
        let decisions = counter(
            &r,
            "flexgate_decisions_total",
            "Decision-listener answers by ingress flavour (nginx, traefik, caddy, envoy) and decision.",
            &["flavour", "decision"],
        );
        let shadow_decisions = counter(
            &r,
            "flexgate_shadow_decisions_total",
            "Requests decided by the shadow rules too, by route, enforced decision and shadow decision.",
            &["route", "enforced", "shadow"],
        );
        let shadow_skipped = IntCounter::new(
            "flexgate_shadow_skipped_total",
            "Requests the shadow rules did not decide because too many shadow decisions were running.",
        )
        .expect("valid metric");
        r.register(Box::new(shadow_skipped.clone()))
            .expect("unique metric");
        Metrics {
            hot,
            token_validations,
            api_key_validations,
            decisions,
            shadow_decisions,
            shadow_skipped,
            cache_hits,
            cache_misses,
            requests: counter(
                &r,
                "flexgate_requests_total",
                "Requests by route, method class, decision and status class.",
                &["route", "method", "decision", "status"],
            ),
            request_duration: histogram(
                &r,
                "flexgate_request_duration_seconds",
                "Time from request head to response head.",
                &["route"],
            ),
            upstream_duration: histogram(
                &r,
                "flexgate_upstream_duration_seconds",
                "Time the upstream took to answer.",
                &["route"],
            ),
            logins: counter(
                &r,
                "flexgate_logins_total",
                "Token endpoint requests by outcome.",
                &["outcome"],
            ),
            cache_evictions: counter(
                &r,
                "flexgate_cache_evictions_total",
                "Entries dropped for size or age.",
                &["cache"],
            ),
            owner_query_duration: histogram(
                &r,
                "flexgate_owner_query_duration_seconds",
                "Owner query time by kind.",
                &["kind"],
            ),
            owner_query_errors: counter(
                &r,
                "flexgate_owner_query_errors_total",
                "Failed owner queries by kind.",
                &["kind"],
            ),
            reloads: counter(
                &r,
                "flexgate_config_reloads_total",
                "Rule reloads by result.",
                &["result"],
            ),
            registry: r,
            in_flight,
            tokens_issued,
            cache_entries,
            last_reload,
            rules_loaded,
            change_feed_errors,
            connections_refused,
            client_connections_refused,
            ready,
        }
    }

    /// Handles for one route, resolved lazily (a series appears on first use).
    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            name: name.to_owned(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
            allowed: Default::default(),
        }
    }

    /// Count a finished request. Allowed requests of a matched route use its cached
    /// handles; everything else looks its labels up.
    pub fn request(
        &self,
        handles: Option<&RouteMetrics>,
        route: &str,
        method: &http::Method,
        decision: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let write = usize::from(!method.is_safe());
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        match handles {
            Some(h) if decision == "allow" => {
                h.allowed[write * 5 + class]
                    .get_or_init(|| {
                        self.requests.with_label_values(&[
                            route,
                            METHOD_CLASSES[write],
                            decision,
                            STATUS_CLASSES[class],
                        ])
                    })
                    .inc();
                h.duration
                    .get_or_init(|| self.request_duration.with_label_values(&[route]))
                    .observe(elapsed.as_secs_f64());
            }
            _ => {
                self.requests
                    .with_label_values(&[
                        route,
                        METHOD_CLASSES[write],
                        decision,
                        STATUS_CLASSES[class],
                    ])
                    .inc();
                self.request_duration
                    .with_label_values(&[route])
                    .observe(elapsed.as_secs_f64());
            }
        }
    }

    /// The in-flight gauge, for a guard held around each request.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Record how long the upstream took.
    pub fn upstream(&self, handles: Option<&RouteMetrics>, route: &str, elapsed: Duration) {
        match handles {
            Some(h) => h
                .upstream
                .get_or_init(|| self.upstream_duration.with_label_values(&[&h.name]))
                .observe(elapsed.as_secs_f64()),
            None => self
                .upstream_duration
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64()),
        }
    }

    /// Count a login by outcome (`success`, `bad_credentials`, `throttled`, `invalid`, `error`).
    pub fn login(&self, outcome: &str) {
        self.logins.with_label_values(&[outcome]).inc();
        if outcome == "success" {
            self.tokens_issued.inc();
        }
    }

    /// Count a shadow decision beside the enforced one.
    pub fn shadow_decision(&self, route: &str, enforced: &str, shadow: &str) {
        self.shadow_decisions
            .with_label_values(&[route, enforced, shadow])
            .inc();
    }

    /// Count a request the shadow rules skipped (too many running).
    pub fn shadow_skipped(&self) {
        self.shadow_skipped.inc();
    }

    /// Count a decision-listener answer by flavour and decision (both small fixed sets).
    pub fn decision(&self, flavour: &str, decision: &str) {
        self.decisions.with_label_values(&[flavour, decision]).inc();
    }

    /// Count an API key check by outcome (a small fixed set).
    pub fn api_key_validation(&self, outcome: &str) {
        self.api_key_validations.with_label_values(&[outcome]).inc();
    }

    /// Count a token check by outcome (`valid` or an `AuthError` label).
    pub fn token_validation(&self, outcome: &str) {
        if outcome == "valid" {
            self.hot.valid_tokens.inc();
        } else {
            self.token_validations.with_label_values(&[outcome]).inc();
        }
    }

    /// Count a cache lookup.
    pub fn cache_lookup(&self, cache: &str, hit: bool) {
        if let Some(i) = HOT_CACHES.iter().position(|c| *c == cache) {
            let counters = if hit {
                &self.hot.cache_hits
            } else {
                &self.hot.cache_misses
            };
            counters[i].inc();
        } else if hit {
            self.cache_hits.with_label_values(&[cache]).inc();
        } else {
            self.cache_misses.with_label_values(&[cache]).inc();
        }
    }

    /// Count an eviction.
    pub fn cache_eviction(&self, cache: &str) {
        self.cache_evictions.with_label_values(&[cache]).inc();
    }

    /// Set a cache's entry count (at scrape time).
    pub fn cache_entries(&self, cache: &str, entries: u64) {
        self.cache_entries
            .with_label_values(&[cache])
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Record an owner query.
    pub fn owner_query(&self, kind: &str, elapsed: Duration, ok: bool) {
        self.owner_query_duration
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.owner_query_errors.with_label_values(&[kind]).inc();
        }
    }

    /// Record a reload attempt (`success` or `failure`).
    pub fn reload(&self, success: bool, routes: usize, now_unix: u64) {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
        if success {
            self.last_reload.set(now_unix as f64);
            self.rules_loaded
                .set(i64::try_from(routes).unwrap_or(i64::MAX));
        }
    }

    /// Count a connection closed over a connection limit.
    pub fn connection_refused(&self, limit: crate::proxy::conn_limit::Refused) {
        match limit {
            crate::proxy::conn_limit::Refused::Listener => self.connections_refused.inc(),
            crate::proxy::conn_limit::Refused::Client => self.client_connections_refused.inc(),
        }
    }

    /// Count a failed change-feed poll.
    pub fn change_feed_error(&self) {
        self.change_feed_errors.inc();
    }

    /// Record a readiness check result.
    pub fn ready(&self, check: &str, ok: bool) {
        self.ready
            .with_label_values(&[check])
            .set(if ok { 1.0 } else { 0.0 });
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }

    /// A histogram handle for benchmarks and tests that time things themselves.
    pub fn request_histogram(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_bounded_labels() {
        let m = Metrics::new();
        let route = m.route("asset-read");
        for _ in 0..2 {
            m.request(
                Some(&route),
                "asset-read",
                &http::Method::GET,
                "allow",
                200,
                Duration::from_millis(3),
            );
        }
        m.request(
            Some(&route),
            "asset-read",
            &http::Method::PATCH,
            "forbidden",
            403,
            Duration::from_millis(1),
        );
        m.login("success");
        m.token_validation("expired");
        m.cache_lookup("owners", false);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "flexgate_requests_total{decision=\"allow\",method=\"read\",route=\"asset-read\",status=\"2xx\"} 2"
        ), "{text}");
        assert!(text.contains("flexgate_requests_total{decision=\"forbidden\",method=\"write\",route=\"asset-read\",status=\"4xx\"} 1"));
        assert!(text.contains("flexgate_tokens_issued_total 1"));
        assert!(text.contains("flexgate_build_info{version=\""));
    }
}
