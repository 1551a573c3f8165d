//! Builders of [`super`] (build.rs) for several server replicas: a PodDisruptionBudget and a
//! default pod anti-affinity, so that a node drain or a node failure takes at most one replica.
//! With one replica there is neither: a budget would block every drain of its node, and the
//! pod has no sibling to keep away from.

use super::namespaced_meta;
use crate::crd::ExtensionApiServer;
use crate::operator::reconcile::names::Names;
use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Node label the default anti-affinity spreads the replicas over.
pub const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// The desired replica count (`spec.replicas`, 1 when unset).
pub fn replicas(eas: &ExtensionApiServer) -> i32 {
    eas.spec.replicas.unwrap_or(1)
}

/// The PodDisruptionBudget of the server pods, only with more than one replica.
///
/// `maxUnavailable: 1` rather than `minAvailable: replicas - 1`: it allows the same one
/// eviction at a time, but follows the Deployment's scale by itself (a `kubectl scale` does not
/// leave a budget that blocks every eviction, or allows too many). `unhealthyPodEvictionPolicy:
/// AlwaysAllow` lets a drain evict a pod that is not ready anyway (say, crash-looping while
/// etcd is unreachable), which protects no availability and would otherwise block the drain.
pub fn disruption_budget(eas: &ExtensionApiServer, names: &Names) -> Option<PodDisruptionBudget> {
    (replicas(eas) > 1).then(|| PodDisruptionBudget {
        metadata: namespaced_meta(eas, names, &names.workload),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
        }),
        status: None,
    })
}

/// The default affinity of several replicas: each prefers a node without another replica.
/// Preferred, not required, so a cluster with fewer nodes than replicas still runs them all.
/// `spec.pod.affinity`, when set, replaces it entirely.
pub fn spread_over_nodes(names: &Names) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    topology_key: HOSTNAME_TOPOLOGY.to_string(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(names.selector_labels()),
                        match_expressions: None,
                    }),
                    ..Default::default()
                },
            }]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    }
}
