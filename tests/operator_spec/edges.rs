//! Where the operator's `escalate` (chart value rbac.userRoles) must not reach: user roles for a
//! group that something else serves too, and `spec.rules` the operator does not hold.

use crate::cluster::{text, Cluster, Harness};
use serde_json::json;

const NS: &str = "spec-test";

/// A CRD of the own image's group appears (kube-apiserver registers a local APIService for
/// it): the operator removes the widgets user roles, which would otherwise cover the CRD's
/// resources too (RBAC rules are per group), and says why.
pub async fn a_crd_of_the_group_removes_the_user_roles(c: &Cluster) {
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.widgets.example.com"},
        "spec": {"group": "widgets.example.com", "scope": "Namespaced",
                 "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
                 "versions": [{"name": "v2", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    c.kubectl_ok_in(&["apply", "-f", "-"], Some(&crd.to_string()));
    c.eventually("kube-apiserver registers v2.widgets.example.com", || {
        c.try_json(&["get", "apiservice", "v2.widgets.example.com"]).map(|_| ())
    })
    .await;
    // Any change wakes the operator (a foreign APIService is not one of its watched children).
    c.kubectl_ok(&["annotate", "eas", "widgets", "-n", NS, "example.com/poke=1"]);
    let view = format!("aggregation.dev:{NS}:widgets:view");
    c.eventually("the widgets user roles are removed, with a Warning Event", || {
        let ev = c.try_json(&["get", "events", "-n", NS, "--field-selector", "reason=UserRolesSkipped"])?;
        let said = ev["items"].as_array()?.iter().any(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("widgets.example.com") && m.contains("v2.widgets.example.com"))
        });
        (said && c.try_json(&["get", "clusterrole", &view]).is_none()).then_some(())
    })
    .await;
    c.kubectl_ok(&["delete", "crd", "gizmos.widgets.example.com"]);
}

/// `spec.rules` beyond the operator's permissions: `escalate` lets it write the server's
/// ClusterRole, but without `bind` Kubernetes refuses the binding, so the server's
/// ServiceAccount never gets the rules.
pub async fn spec_rules_stay_unbound(c: &Cluster) {
    let eas = json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
        "metadata": {"name": "ruled", "namespace": NS},
        "spec": {"group": "ruled.example.com", "versions": [{"name": "v1"}],
                 "server": {"storage": {"embedded": {"ephemeral": true}}},
                 "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}});
    c.kubectl_ok_in(&["apply", "-f", "-"], Some(&eas.to_string()));
    let logs = || c.operator.as_ref().map(|o| o.log_tail(200)).unwrap_or_default();
    c.eventually("the operator reports the refused binding", || {
        let l = logs();
        (l.contains("clusterrolebindings") && l.contains("forbidden") && l.contains("ruled")).then_some(())
    })
    .await;
    let name = format!("aggregation.dev:{NS}:ruled");
    assert!(
        c.try_json(&["get", "clusterrolebinding", &name]).is_none(),
        "the rules were bound"
    );
    let out = c.kubectl(&[
        "auth",
        "can-i",
        "list",
        "nodes",
        "--as",
        &format!("system:serviceaccount:{NS}:ruled"),
    ]);
    assert_eq!(text(&out.stdout).trim(), "no");
    c.kubectl_ok(&["delete", "eas", "ruled", "-n", NS, "--timeout=150s"]);
}
