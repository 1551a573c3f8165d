//! The permissions of the operator itself: the one list that the Helm chart's RBAC is
//! generated from (`cargo run --bin crdgen`), so the chart and the code cannot drift.
//! Every rule here names an API the operator actually calls, and why.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// Verbs to manage a kind of child object with server-side apply and delete it on cleanup.
/// `create` is needed because an apply that creates an object is authorized as create.
const MANAGE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

/// The ClusterRole `system:auth-delegator` that every aggregated server is bound to.
pub const AUTH_DELEGATOR: &str = "system:auth-delegator";
/// The Role in kube-system that lets a server read `extension-apiserver-authentication`.
pub const AUTH_READER: &str = "extension-apiserver-authentication-reader";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn named(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|s| s.to_string()).collect()),
        ..rule(groups, resources, verbs)
    }
}

/// Rules the bundled server needs beyond `system:auth-delegator` and the auth reader Role, to
/// run the cluster's admission chain as kube-apiserver does:
/// - namespaces, for namespace-lifecycle admission (refusing creates in a namespace that does
///   not exist or is terminating) and the `namespaceSelector` of webhooks and policies;
/// - the webhook configurations, ValidatingAdmissionPolicies and their bindings;
/// - Services and their EndpointSlices, to reach webhooks given as a Service.
pub fn bundled_server_rules() -> Vec<PolicyRule> {
    vec![
        rule(&[""], &["namespaces"], &["get", "list", "watch"]),
        rule(
            &["admissionregistration.k8s.io"],
            &[
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings",
                "mutatingadmissionpolicies",
                "mutatingadmissionpolicybindings",
            ],
            &["get", "list", "watch"],
        ),
        rule(&[""], &["services"], &["get"]),
        rule(&["discovery.k8s.io"], &["endpointslices"], &["list"]),
    ]
}

/// Cluster-wide rules of the operator.
pub fn operator_cluster_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        // The custom resource: watched, finalizer added and removed, status written.
        rule(
            &["aggregation.dev"],
            &["extensionapiservers"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(
            &["aggregation.dev"],
            &["extensionapiservers/status"],
            &["get", "patch", "update"],
        ),
        // Owner references with blockOwnerDeletion need update on finalizers of the owner.
        rule(&["aggregation.dev"], &["extensionapiservers/finalizers"], &["update"]),
        // Namespaced children: Secrets (CA, serving), ServiceAccount, Service, server ConfigMap.
        rule(&[""], &["secrets", "serviceaccounts", "services", "configmaps"], MANAGE),
        rule(&["apps"], &["deployments"], MANAGE),
        // The bundled server's data directory, when embedded storage has a size.
        rule(&[""], &["persistentvolumeclaims"], MANAGE),
        // The server pods' disruption budget, with more than one replica.
        rule(&["policy"], &["poddisruptionbudgets"], MANAGE),
        // Cluster-scoped children and the kube-system RoleBinding.
        rule(
            &["rbac.authorization.k8s.io"],
            &["clusterroles", "clusterrolebindings", "rolebindings"],
            MANAGE,
        ),
        // Binding the two well-known roles every aggregated server needs, and nothing else.
        named(
            &["rbac.authorization.k8s.io"],
            &["clusterroles"],
            &[AUTH_DELEGATOR],
            &["bind"],
        ),
        named(&["rbac.authorization.k8s.io"], &["roles"], &[AUTH_READER], &["bind"]),
        rule(&["apiregistration.k8s.io"], &["apiservices"], MANAGE),
        // During a CA rotation: find the server replicas, to see which certificate each serves.
        rule(&["discovery.k8s.io"], &["endpointslices"], &["list"]),
        // Events about ExtensionApiServers.
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ];
    // To create a ClusterRole an actor must hold every permission in it (or have `escalate`).
    // The operator holds what the bundled server is granted, so no escalation is needed for it.
    rules.extend(bundled_server_rules());
    rules
}

/// Rules in the operator's own namespace: the leader-election Lease.
pub fn operator_namespace_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "create", "update"],
    )]
}

/// Extra cluster rules, off by default, that let the operator grant servers the
/// user-supplied `spec.rules`: it must then be able to create and bind ClusterRoles holding
/// permissions it does not hold itself. This is a real privilege: whoever can create an
/// ExtensionApiServer can then grant any permission to its server. The chart value
/// `rbac.allowUserRules` switches it on.
pub fn user_rules_escalation() -> Vec<PolicyRule> {
    vec![rule(
        &["rbac.authorization.k8s.io"],
        &["clusterroles"],
        &["escalate", "bind"],
    )]
}

/// Cluster rules that let the operator create the user roles of `spec.userRoles`
/// (`aggregation.dev:<ns>:<name>:view|edit|admin`, aggregated into the built-in `view`, `edit`
/// and `admin`). They grant verbs on each server's own API group, which the operator cannot
/// hold in advance (the groups are chosen in each spec, and RBAC has no per-group wildcard
/// short of `*`), and Kubernetes lets it create a ClusterRole with permissions it does not hold
/// only with `escalate`. No `bind`: the operator never binds these roles, the built-in roles
/// aggregate them. The operator's code bounds what it puts in them: only `spec.group`, never a
/// Kubernetes group (`*.k8s.io`, `*.kubernetes.io`, no dot), and only while no APIService of
/// that group belongs to anything else. The chart value `rbac.userRoles` (default true) grants it.
pub fn user_roles_grant() -> Vec<PolicyRule> {
    vec![rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["escalate"])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wildcards_anywhere() {
        let all = operator_cluster_rules()
            .into_iter()
            .chain(operator_namespace_rules())
            .chain(user_rules_escalation())
            .chain(user_roles_grant());
        for r in all {
            assert!(!r.verbs.iter().any(|v| v == "*"), "{r:?}");
            for list in [&r.api_groups, &r.resources, &r.resource_names] {
                assert!(!list.iter().flatten().any(|v| v.contains('*')), "{r:?}");
            }
        }
    }

    #[test]
    fn user_roles_need_escalate_and_nothing_else() {
        let grant = user_roles_grant();
        assert_eq!(grant.len(), 1);
        assert_eq!(grant[0].verbs, ["escalate"]);
        assert_eq!(grant[0].resources, Some(vec!["clusterroles".to_string()]));
    }

    #[test]
    fn escalate_only_in_the_opt_in_rules() {
        let default = operator_cluster_rules().into_iter().chain(operator_namespace_rules());
        for r in default {
            assert!(!r.verbs.iter().any(|v| v == "escalate"), "{r:?}");
            if r.verbs.iter().any(|v| v == "bind") {
                assert!(
                    r.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                    "bind must be by name: {r:?}"
                );
            }
        }
    }
}
