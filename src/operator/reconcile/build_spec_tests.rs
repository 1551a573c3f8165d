//! Unit tests of `spec.pod` and `spec.userRoles` in the built children (build_pod.rs,
//! build_roles.rs): exact object shapes.

use super::*;
use serde_json::{json, Value};

fn pod_settings() -> crate::crd::PodSettings {
    serde_json::from_value(json!({
        "nodeSelector": {"kubernetes.io/os": "linux", "node-role": "api"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "wardle"}}}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "wardle"}}}],
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "regcred"}],
        "labels": {"team": "api"},
        "annotations": {"prometheus.io/scrape": "true"},
        "hostNetwork": true,
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    }))
    .unwrap()
}

fn pod_of(ch: &Children) -> Value {
    serde_json::to_value(ch.deployment.spec.as_ref().unwrap().template.clone()).unwrap()
}

#[test]
fn pod_settings_reach_the_bundled_deployment() {
    let mut s = spec();
    s.pod = Some(Box::new(pod_settings()));
    let ch = children(&eas(s), &certs());
    let t = pod_of(&ch);
    let p = &t["spec"];
    assert_eq!(
        p["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "node-role": "api"})
    );
    assert_eq!(
        p["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}])
    );
    assert_eq!(
        p["affinity"],
        json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "wardle"}}}}]}})
    );
    assert_eq!(
        p["topologySpreadConstraints"],
        json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "wardle"}}}])
    );
    assert_eq!(p["priorityClassName"], "system-cluster-critical");
    assert_eq!(p["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(p["hostNetwork"], true);
    assert_eq!(
        p["dnsPolicy"], "ClusterFirstWithHostNet",
        "cluster DNS on the host network"
    );
    assert_eq!(
        p["containers"][0]["env"],
        json!([{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}])
    );
    // Extra labels and annotations beside the operator's own, which still select the pods.
    assert_eq!(
        t["metadata"]["labels"],
        json!({"team": "api", "app.kubernetes.io/name": "extension-apiserver",
               "app.kubernetes.io/instance": "wardle", "app.kubernetes.io/managed-by": "extension-apiserver-operator",
               "aggregation.dev/owner-namespace": "wardle-system", "aggregation.dev/owner-name": "wardle"})
    );
    assert_eq!(t["metadata"]["annotations"], json!({"prometheus.io/scrape": "true"}));
    let names: Vec<&str> = p["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["serving-cert", "config", "data"]);
}

#[test]
fn without_pod_settings_nothing_changes() {
    let mut s = spec();
    // One replica: several get a default anti-affinity (build_etcd_tests.rs).
    s.replicas = Some(1);
    let t = pod_of(&children(&eas(s), &certs()));
    for field in [
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "priorityClassName",
        "imagePullSecrets",
        "hostNetwork",
        "dnsPolicy",
    ] {
        assert!(t["spec"].get(field).is_none(), "{field}: {}", t["spec"]);
    }
    assert!(t["spec"]["containers"][0].get("env").is_none());
    assert!(t["metadata"].get("annotations").is_none());
}

#[test]
fn the_operator_labels_and_annotation_win_over_spec_pod() {
    let mut s = spec();
    s.server = None;
    s.image = Some(serde_json::from_value(json!({"image": "example/server:1"})).unwrap());
    s.pod = Some(
        serde_json::from_value(json!({
            "labels": {"app.kubernetes.io/instance": "evil"},
            "annotations": {"aggregation.dev/serving-cert-sha256": "stale"},
        }))
        .unwrap(),
    );
    let c = certs();
    let t = pod_of(&children(&eas(s), &c));
    assert_eq!(t["metadata"]["labels"]["app.kubernetes.io/instance"], "wardle");
    assert_eq!(
        t["metadata"]["annotations"]["aggregation.dev/serving-cert-sha256"],
        c.serving_sha256.as_str()
    );
}

#[test]
fn own_image_gets_extra_volumes_mounts_and_env_after_its_own() {
    let mut s = spec();
    s.server = None;
    s.image = Some(
        serde_json::from_value(json!({"image": "example/server:1",
                                      "env": [{"name": "FROM_IMAGE", "value": "1"}]}))
        .unwrap(),
    );
    s.pod = Some(
        serde_json::from_value(json!({
            "env": [{"name": "FROM_POD", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "volumes": [{"name": "plugins", "configMap": {"name": "server-plugins"}},
                        {"name": "scratch", "emptyDir": {"medium": "Memory"}}],
            "volumeMounts": [{"name": "plugins", "mountPath": "/etc/plugins", "readOnly": true},
                             {"name": "scratch", "mountPath": "/tmp"}],
        }))
        .unwrap(),
    );
    let t = pod_of(&children(&eas(s), &certs()));
    let p = &t["spec"];
    assert_eq!(
        p["volumes"],
        json!([
            {"name": "serving-cert", "secret": {"secretName": "wardle-serving-cert",
                                                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}},
            {"name": "plugins", "configMap": {"name": "server-plugins"}},
            {"name": "scratch", "emptyDir": {"medium": "Memory"}},
        ])
    );
    assert_eq!(
        p["containers"][0]["volumeMounts"],
        json!([
            {"name": "serving-cert", "mountPath": CERT_DIR, "readOnly": true},
            {"name": "plugins", "mountPath": "/etc/plugins", "readOnly": true},
            {"name": "scratch", "mountPath": "/tmp"},
        ])
    );
    assert_eq!(
        p["containers"][0]["env"],
        json!([{"name": "FROM_IMAGE", "value": "1"},
               {"name": "FROM_POD", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
}

fn wardle_resources() -> Vec<crate::crd::ServedResource> {
    serde_json::from_value(json!([
        {"kind": "Flunder", "plural": "flunders", "subresources": {"status": {}}, "versions": [{"name": "v1alpha1"}]},
        {"kind": "Fischer", "plural": "fischers", "scope": "Cluster", "versions": [{"name": "v1alpha1"}]},
    ]))
    .unwrap()
}

fn roles_json(ch: &Children) -> Vec<Value> {
    ch.user_roles.iter().map(|r| serde_json::to_value(r).unwrap()).collect()
}

fn labels(level: &str) -> Value {
    json!({"app.kubernetes.io/name": "extension-apiserver", "app.kubernetes.io/instance": "wardle",
           "app.kubernetes.io/managed-by": "extension-apiserver-operator",
           "aggregation.dev/owner-namespace": "wardle-system", "aggregation.dev/owner-name": "wardle",
           format!("rbac.authorization.k8s.io/aggregate-to-{level}"): "true"})
}

#[test]
fn user_roles_cover_the_bundled_resources() {
    let mut s = spec();
    s.server.as_mut().unwrap().resources = wardle_resources();
    let ch = children(&eas(s.clone()), &certs());
    let read = json!({"apiGroups": ["wardle.example.com"],
                      "resources": ["flunders", "flunders/status", "fischers"],
                      "verbs": ["get", "list", "watch"]});
    let write = json!({"apiGroups": ["wardle.example.com"], "resources": ["flunders", "fischers"],
                       "verbs": ["create", "update", "patch", "delete", "deletecollection"]});
    assert_eq!(
        roles_json(&ch),
        [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "aggregation.dev:wardle-system:wardle:view", "labels": labels("view")},
                   "rules": [read]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "aggregation.dev:wardle-system:wardle:edit", "labels": labels("edit")},
                   "rules": [read, write]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "aggregation.dev:wardle-system:wardle:admin", "labels": labels("admin")},
                   "rules": [read, write]}),
        ]
    );
    // Cluster-scoped: no owner reference, cleaned up by the finalizer through the owner labels.
    assert!(ch.user_roles.iter().all(|r| r.metadata.owner_references.is_none()));

    s.user_roles = Some(crate::crd::UserRoles {
        enabled: false,
        resources: vec![],
    });
    assert!(children(&eas(s), &certs()).user_roles.is_empty(), "opted out");
    assert!(
        children(&eas(spec()), &certs()).user_roles.is_empty(),
        "nothing served, nothing to grant"
    );
}

#[test]
fn user_roles_of_an_own_image_come_from_the_spec() {
    let mut s = spec();
    s.server = None;
    s.image = Some(serde_json::from_value(json!({"image": "example/server:1"})).unwrap());
    assert!(
        children(&eas(s.clone()), &certs()).user_roles.is_empty(),
        "no list, no roles"
    );
    s.user_roles = Some(crate::crd::UserRoles {
        enabled: true,
        resources: vec!["widgets".into(), "widgets/scale".into()],
    });
    let roles = roles_json(&children(&eas(s.clone()), &certs()));
    assert_eq!(
        roles[0]["rules"],
        json!([{"apiGroups": ["wardle.example.com"], "resources": ["widgets", "widgets/scale"],
                "verbs": ["get", "list", "watch"]}])
    );
    assert_eq!(
        roles[1]["rules"][1],
        json!({"apiGroups": ["wardle.example.com"], "resources": ["widgets"],
               "verbs": ["create", "update", "patch", "delete", "deletecollection"]}),
        "subresources are only read"
    );
    assert_eq!(
        roles[2]["rules"], roles[1]["rules"],
        "admin = edit, as kube does for CRs"
    );
    // Never by default for Kubernetes' own groups.
    s.group = "metrics.k8s.io".into();
    s.user_roles = None;
    assert!(children(&eas(s), &certs()).user_roles.is_empty());
}
