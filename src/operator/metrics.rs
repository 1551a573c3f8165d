//! Prometheus metrics of the operator, served on the admin port at `/metrics`.

use crate::operator::error::Error;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplyLabels {
    kind: String,
    change: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    namespace: String,
    name: String,
    certificate: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    applies: Family<ApplyLabels, Counter>,
    requests: Family<VerbLabels, Histogram>,
    cert_expiry: Family<CertLabels, Gauge>,
    // not_after per certificate; the gauge is computed from it at scrape time, so it counts down.
    not_after: Mutex<BTreeMap<(String, String, String), i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("eao");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let failures = Family::<ErrorLabels, Counter>::default();
        registry.register("reconcile_errors", "Failed reconciles by category", failures.clone());
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register("reconcile_duration_seconds", "Duration of reconciles", duration.clone());
        let applies = Family::<ApplyLabels, Counter>::default();
        registry.register("applies", "Server-side applies by kind and outcome", applies.clone());
        // Requests one reconcile sends, by verb: 0 writes for an unchanged object.
        let requests = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
        });
        registry.register(
            "reconcile_api_requests",
            "API requests sent by one reconcile, by verb (Events excluded)",
            requests.clone(),
        );
        let cert_expiry = Family::<CertLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until a certificate expires",
            cert_expiry.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            applies,
            requests,
            cert_expiry,
            not_after: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, err: Option<&Error>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(e) = err {
            self.failures
                .get_or_create(&ErrorLabels {
                    category: e.category().to_string(),
                })
                .inc();
        }
    }

    /// Records the requests of one reconcile.
    pub fn observe_requests(&self, counts: &crate::operator::requests::RequestCounts) {
        for (verb, n) in counts.snapshot() {
            self.requests
                .get_or_create(&VerbLabels { verb: verb.to_string() })
                .observe(n as f64);
        }
    }

    /// Records one apply; `change` is `created`, `updated` or `unchanged`.
    pub fn count_apply(&self, kind: &str, change: &str) {
        self.applies
            .get_or_create(&ApplyLabels {
                kind: kind.to_string(),
                change: change.to_string(),
            })
            .inc();
    }

    /// Remembers when a certificate expires.
    pub fn set_cert_expiry(&self, namespace: &str, name: &str, certificate: &str, not_after: i64) {
        if let Ok(mut m) = self.not_after.lock() {
            m.insert((namespace.into(), name.into(), certificate.into()), not_after);
        }
    }

    /// Forgets the certificates of a deleted object.
    pub fn forget_cert_expiry(&self, namespace: &str, name: &str) {
        if let Ok(mut m) = self.not_after.lock() {
            m.retain(|(ns, n, cert), _| {
                let keep = !(ns == namespace && n == name);
                if !keep {
                    self.cert_expiry.remove(&CertLabels {
                        namespace: ns.clone(),
                        name: n.clone(),
                        certificate: cert.clone(),
                    });
                }
                keep
            });
        }
    }

    /// Text exposition at `now` (Unix seconds).
    pub fn encode(&self, now: i64) -> String {
        if let Ok(m) = self.not_after.lock() {
            for ((namespace, name, certificate), not_after) in m.iter() {
                self.cert_expiry
                    .get_or_create(&CertLabels {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        certificate: certificate.clone(),
                    })
                    .set(not_after - now);
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_gauge_counts_down_and_is_forgotten() {
        let m = Metrics::default();
        m.set_cert_expiry("ns", "a", "serving", 1_000);
        let text = m.encode(400);
        assert!(
            text.contains(r#"eao_certificate_expiry_seconds{namespace="ns",name="a",certificate="serving"} 600"#),
            "{text}"
        );
        assert!(m.encode(900).contains("certificate=\"serving\"} 100"));
        m.forget_cert_expiry("ns", "a");
        assert!(!m.encode(900).contains("name=\"a\""));
    }

    #[test]
    fn errors_are_counted_by_category() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3), Some(&Error::MissingField("x")));
        let text = m.encode(0);
        assert!(
            text.contains(r#"eao_reconcile_errors_total{category="invalid_object"} 1"#),
            "{text}"
        );
        assert!(text.contains("eao_reconciles_total 1"), "{text}");
    }
}
