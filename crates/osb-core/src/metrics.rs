//! Prometheus metrics: requests by route and status, latency, operations in flight. Brokers
//! register their own gauges on the same registry.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    upkeep_failures: IntCounterVec,
    upkeep_passed: IntGauge,
    upkeep_took: Gauge,
    orphans: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "osb_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("osb_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            &["route", "method"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "osb_operations_in_flight",
            "Backend operations this replica is running",
        )
        .expect("valid metric");
        let upkeep_failures = IntCounterVec::new(
            Opts::new(
                "osb_upkeep_failures_total",
                "Upkeep work that failed (error) or hung (timeout): an instance's, a pass's first look, the orphan count, keeping the figures, a pass that could not start; passes that ran out of time (out_of_time)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upkeep_passed = IntGauge::new(
            "osb_upkeep_last_pass_timestamp_seconds",
            "When this replica last finished an upkeep pass (Unix time); 0 before the first",
        )
        .expect("valid metric");
        let upkeep_took = Gauge::new(
            "osb_upkeep_pass_duration_seconds",
            "How long this replica's last finished upkeep pass took, the orphan count included",
        )
        .expect("valid metric");
        let orphans = IntGauge::new(
            "osb_orphaned_backend_objects",
            "Backend objects that no instance or binding claims, as of the last upkeep pass",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(upkeep_failures.clone()),
            Box::new(upkeep_passed.clone()),
            Box::new(upkeep_took.clone()),
            Box::new(orphans.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            requests,
            latency,
            in_flight,
            upkeep_failures,
            upkeep_passed,
            upkeep_took,
            orphans,
        }
    }

    /// The registry, for a broker's own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a request. Every label must come from a closed set (route patterns of the
    /// configuration, [`method_label`]), or unauthenticated callers could grow the label set
    /// without bound.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    /// Shows the state store's statement, commit and deadlock retry counts (those of the first
    /// store, should one `Metrics` serve several).
    pub fn watch_store(&self, counters: &crate::store::StoreCounters) {
        for counter in [
            &counters.statements,
            &counters.commits,
            &counters.deadlock_retries,
        ] {
            if let Err(e) = self.registry.register(Box::new(counter.clone())) {
                tracing::warn!(error = %e, "state store counters not shown");
            }
        }
    }

    /// `reason` is one of "error", "timeout", "out_of_time".
    pub fn upkeep_failed(&self, reason: &'static str) {
        self.upkeep_failures.with_label_values(&[reason]).inc();
    }

    /// Marks a finished upkeep pass, which `took` so long: an alert on this timestamp's age
    /// catches an upkeep that stalls without failing anything.
    pub fn upkeep_passed(&self, took: std::time::Duration) {
        self.upkeep_passed.set(crate::store::now_ms() / 1000);
        self.upkeep_took.set(took.as_secs_f64());
    }

    pub fn set_orphans(&self, count: usize) {
        self.orphans.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn operation_started(&self) {
        self.in_flight.inc();
    }

    pub fn operation_ended(&self) {
        self.in_flight.dec();
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A request method as a metric label: the methods HTTP defines, anything else "other".
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_requests_by_route_and_status() {
        let m = Metrics::new();
        m.observe_request("/v2/catalog", "GET", 200, 0.01);
        let text = m.render();
        assert!(
            text.contains(
                "osb_http_requests_total{method=\"GET\",route=\"/v2/catalog\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("osb_operations_in_flight 0"));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("FOO"), "other");
        assert_eq!(method_label("get"), "other");
    }
}
