//! Builders of [`super`] (build.rs) for the user roles: aggregated ClusterRoles
//! `aggregation.dev:<ns>:<name>:view|edit|admin` that extend the built-in `view`, `edit` and
//! `admin` roles to the served resources.

use super::cluster_meta;
use crate::crd::ExtensionApiServerSpec;
use crate::operator::reconcile::names::{Names, USER_ROLE_LEVELS};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};

/// Verbs of the `view` role.
pub const VIEW_VERBS: &[&str] = &["get", "list", "watch"];
/// Verbs the `edit` and `admin` roles add (as kube's `edit` does for its own resources).
pub const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
/// Label prefix the built-in roles aggregate by (`-view`, `-edit`, `-admin`).
pub const AGGREGATE_LABEL_PREFIX: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// Whether `group` belongs to Kubernetes itself: no dot (`apps`, `batch`), or under `k8s.io`
/// or `kubernetes.io`. Roles aggregated into everyone's `view`/`edit`/`admin` for such a group
/// could hand out access to built-in APIs (webhooks, RBAC, certificates), so they are never
/// made by default, and asking for them is an invalid spec.
pub fn is_kubernetes_group(group: &str) -> bool {
    !group.contains('.')
        || ["k8s.io", "kubernetes.io"]
            .iter()
            .any(|d| group == *d || group.ends_with(&format!(".{d}")))
}

/// The resources (and subresources) of `spec.group` the user roles cover: `spec.userRoles.resources`,
/// else for the bundled server its resources and their `/status`; none when disabled, and none
/// by default (without `spec.userRoles`) for a Kubernetes group.
pub fn user_role_resources(spec: &ExtensionApiServerSpec) -> Vec<String> {
    if spec.user_roles.is_none() && is_kubernetes_group(&spec.group) {
        return Vec::new();
    }
    let roles = spec.user_roles.clone().unwrap_or_default();
    if !roles.enabled {
        return Vec::new();
    }
    if !roles.resources.is_empty() {
        return roles.resources;
    }
    let Some(server) = &spec.server else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in &server.resources {
        out.push(r.plural.clone());
        if r.subresources.as_ref().is_some_and(|s| s.status.is_some()) {
            out.push(format!("{}/status", r.plural));
        }
    }
    out
}

fn rule(group: &str, resources: Vec<String>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// The user roles: `view` reads every listed resource and subresource; `edit` and `admin`
/// also write the resources themselves (subresources stay read-only, like kube's `/status`).
/// Empty when there is nothing to cover.
pub fn user_roles(spec: &ExtensionApiServerSpec, names: &Names) -> Vec<ClusterRole> {
    let resources = user_role_resources(spec);
    if resources.is_empty() {
        return Vec::new();
    }
    let writable: Vec<String> = resources.iter().filter(|r| !r.contains('/')).cloned().collect();
    USER_ROLE_LEVELS
        .iter()
        .map(|level| {
            let mut rules = vec![rule(&spec.group, resources.clone(), VIEW_VERBS)];
            if *level != "view" && !writable.is_empty() {
                rules.push(rule(&spec.group, writable.clone(), WRITE_VERBS));
            }
            let mut meta = cluster_meta(names, &names.user_role(level));
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(format!("{AGGREGATE_LABEL_PREFIX}{level}"), "true".to_string());
            ClusterRole {
                metadata: meta,
                rules: Some(rules),
                aggregation_rule: None,
            }
        })
        .collect()
}
