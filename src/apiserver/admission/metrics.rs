//! Admission metrics, registered with the server's `/metrics` (kube-apiserver's names, with
//! prometheus-client's `_total` suffix on counters).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// One webhook's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub name: String,
    /// `admit` (mutating) or `validating`.
    pub r#type: String,
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub operation: String,
}

/// One policy check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
    pub policy_binding: String,
    /// `allow`, `deny`, `warn` or `audit`; `error` when it could not be evaluated.
    pub enforcement_action: String,
}

type Durations = Family<WebhookLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 5 ms .. ~20 s
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// The admission metric families (shared by every server in the process).
pub struct AdmissionMetrics {
    /// Calls that failed and were let through by `failurePolicy: Ignore`.
    pub fail_open: Family<WebhookLabels, Counter>,
    /// Requests a webhook refused.
    pub rejections: Family<WebhookLabels, Counter>,
    /// Webhook call latency.
    pub durations: Durations,
    /// Policy checks by outcome.
    pub policy_checks: Family<PolicyLabels, Counter>,
}

pub static METRICS: LazyLock<AdmissionMetrics> = LazyLock::new(|| AdmissionMetrics {
    fail_open: Family::default(),
    rejections: Family::default(),
    durations: Family::new_with_constructor(duration_histogram),
    policy_checks: Family::default(),
});

/// Adds the families to a registry with the `apiserver` prefix.
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "admission_webhook_fail_open",
        "Webhook calls that failed and were ignored (failurePolicy: Ignore)",
        m.fail_open.clone(),
    );
    registry.register(
        "admission_webhook_rejection",
        "Requests refused by an admission webhook",
        m.rejections.clone(),
    );
    registry.register(
        "admission_webhook_admission_duration_seconds",
        "Admission webhook call latency",
        m.durations.clone(),
    );
    registry.register(
        "validating_admission_policy_check",
        "ValidatingAdmissionPolicy checks by enforcement action",
        m.policy_checks.clone(),
    );
}

/// Labels for one webhook call.
pub fn webhook(name: &str, mutating: bool, operation: &str) -> WebhookLabels {
    WebhookLabels {
        name: name.to_string(),
        r#type: if mutating { "admit" } else { "validating" }.to_string(),
        operation: operation.to_string(),
    }
}
