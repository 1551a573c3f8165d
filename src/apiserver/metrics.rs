//! Prometheus metrics: request count and latency by verb, resource and code. Labels are bounded:
//! verbs come from a fixed set, resources from the declared ones, codes are HTTP codes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::time::Duration;

/// Labels of the request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// k8s verb, or `other`.
    pub verb: String,
    /// Declared resource, or empty for non-resource paths and unknown resources.
    pub resource: String,
    /// HTTP status code.
    pub code: String,
}

const VERBS: [&str; 15] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "head",
    "post",
    "put",
    "options",
    "connect",
    "trace",
    "proxy",
];

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// The registry and the request metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    resources: std::sync::RwLock<HashSet<String>>,
}

impl Metrics {
    /// Declares the resources after a configuration reload.
    pub fn set_resources(&self, resources: impl IntoIterator<Item = String>) {
        if let Ok(mut r) = self.resources.write() {
            *r = resources.into_iter().collect();
        }
    }

    /// Metrics for a server declaring `resources`.
    pub fn new(resources: impl IntoIterator<Item = String>) -> Self {
        let mut registry = Registry::with_prefix("apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register("request", "Requests by verb, resource and HTTP code", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Request latency by verb, resource and HTTP code",
            latency.clone(),
        );
        crate::apiserver::admission::metrics::register(&mut registry);
        Metrics {
            registry,
            requests,
            latency,
            resources: std::sync::RwLock::new(resources.into_iter().collect()),
        }
    }

    /// Records one finished request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let labels = RequestLabels {
            verb: if VERBS.contains(&verb) { verb } else { "other" }.to_string(),
            resource: if self.resources.read().is_ok_and(|r| r.contains(resource)) {
                resource
            } else {
                ""
            }
            .to_string(),
            code: code.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
