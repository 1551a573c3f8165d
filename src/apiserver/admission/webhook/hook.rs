//! One webhook as configured: the fields of `MutatingWebhook` and `ValidatingWebhook` that
//! admission uses, with kube-apiserver's defaults filled in (its API defaults them on write,
//! but a client of an older API may have stored objects without them).

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, RuleWithOperations, ValidatingWebhook, WebhookClientConfig,
};
use serde_json::Value;
use std::time::Duration;

/// `failurePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// One webhook of a configuration.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The webhook's name (unique within its configuration).
    pub name: String,
    /// The configuration it belongs to.
    pub configuration: String,
    pub mutating: bool,
    pub client: WebhookClientConfig,
    pub rules: Vec<RuleWithOperations>,
    pub failure_policy: FailurePolicy,
    /// `matchPolicy: Equivalent` (the default) rather than `Exact`.
    pub equivalent: bool,
    pub namespace_selector: Option<Value>,
    pub object_selector: Option<Value>,
    /// `sideEffects` is `None` or `NoneOnDryRun`: the webhook may be called for a dry run.
    pub dry_run_safe: bool,
    pub timeout: Duration,
    pub review_versions: Vec<String>,
    /// `reinvocationPolicy: IfNeeded` (mutating webhooks only).
    pub reinvoke: bool,
    pub match_conditions: Vec<MatchCondition>,
}

/// kube's default (and maximum is 30 s).
const DEFAULT_TIMEOUT: i32 = 10;

fn failure_policy(p: Option<&str>) -> FailurePolicy {
    match p {
        Some("Ignore") => FailurePolicy::Ignore,
        _ => FailurePolicy::Fail,
    }
}

fn selector(s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>) -> Option<Value> {
    s.and_then(|s| serde_json::to_value(s).ok())
}

fn timeout(t: Option<i32>) -> Duration {
    Duration::from_secs(t.unwrap_or(DEFAULT_TIMEOUT).clamp(1, 30) as u64)
}

/// The fields both webhook kinds share, read the same way.
macro_rules! hook {
    ($configuration:expr, $w:expr, $mutating:expr, $reinvoke:expr) => {
        Hook {
            name: $w.name.clone(),
            configuration: $configuration.to_string(),
            mutating: $mutating,
            client: $w.client_config.clone(),
            rules: $w.rules.clone().unwrap_or_default(),
            failure_policy: failure_policy($w.failure_policy.as_deref()),
            equivalent: $w.match_policy.as_deref() != Some("Exact"),
            namespace_selector: selector($w.namespace_selector.as_ref()),
            object_selector: selector($w.object_selector.as_ref()),
            dry_run_safe: matches!($w.side_effects.as_str(), "None" | "NoneOnDryRun"),
            timeout: timeout($w.timeout_seconds),
            review_versions: $w.admission_review_versions.clone(),
            reinvoke: $reinvoke,
            match_conditions: $w.match_conditions.clone().unwrap_or_default(),
        }
    };
}

impl Hook {
    pub fn mutating(configuration: &str, w: &MutatingWebhook) -> Hook {
        hook!(
            configuration,
            w,
            true,
            w.reinvocation_policy.as_deref() == Some("IfNeeded")
        )
    }

    pub fn validating(configuration: &str, w: &ValidatingWebhook) -> Hook {
        hook!(configuration, w, false, false)
    }

    /// The AdmissionReview version to send: the first the webhook accepts that kube
    /// supports (`v1`, then `v1beta1`, which has the same shape).
    pub fn review_version(&self) -> Option<&'static str> {
        self.review_versions.iter().find_map(|v| match v.as_str() {
            "v1" => Some("v1"),
            "v1beta1" => Some("v1beta1"),
            _ => None,
        })
    }
}
