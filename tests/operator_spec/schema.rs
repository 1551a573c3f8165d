//! The CRD's schema for the new fields, as the real kube-apiserver applies it: valid specs are
//! admitted (server-side dry run, so the operator of the other test never sees them), invalid
//! ones get a 422 whose causes name the field and say what to fix, and `kubectl explain`
//! prints Kubernetes' own descriptions of `spec.pod`.

use crate::cluster::{Cluster, Harness};
use eao::testing::controlplane::ControlPlane;
use serde_json::{json, Value};

const NS: &str = "schema-test";

fn eas(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn bundled(extra: Value) -> Value {
    let mut spec = json!({"group": "wardle.example.com", "versions": [{"name": "v1alpha1"}],
                          "server": {"resources": [{"kind": "Flunder", "plural": "flunders",
                                                    "versions": [{"name": "v1alpha1"}]}]}});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    spec
}

/// POSTs `obj` with `dryRun=All`; (HTTP code, the Status or object).
async fn dry_run_create(cp: &ControlPlane, obj: &Value) -> (u16, Value) {
    let client = cp.client().await.expect("admin client");
    let req = http::Request::post(format!(
        "/apis/aggregation.dev/v1alpha1/namespaces/{NS}/extensionapiservers?dryRun=All&fieldValidation=Strict"
    ))
    .header("content-type", "application/json")
    .body(kube::client::Body::from(serde_json::to_vec(obj).expect("JSON")))
    .expect("request");
    let resp = client.send(req).await.expect("kube-apiserver answers");
    let code = resp.status().as_u16();
    let body = resp.into_body().collect_bytes().await.expect("body");
    (code, serde_json::from_slice(&body).expect("JSON answer"))
}

/// The (field, type, message) of each cause of a 422.
fn causes(status: &Value) -> Vec<(String, String, String)> {
    status["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("field"), s("reason"), s("message"))
        })
        .collect()
}

fn assert_cause(status: &Value, field: &str, reason: &str, message: &str) {
    let all = causes(status);
    assert!(
        all.iter()
            .any(|(f, r, m)| f == field && r == reason && m.contains(message)),
        "no cause ({field}, {reason}, …{message}…) in {all:#?}\n{status:#}"
    );
}

pub async fn crd_schema_accepts_and_rejects_the_new_fields(cp: &'static ControlPlane) {
    let c = Cluster::new(cp);
    // The README's `kubectl apply -f crds/` (client-side: the whole CRD, 160 KB of JSON with
    // Affinity and Volume, goes into the last-applied annotation, whose limit is 256 KiB).
    let crds = crate::cluster::root().join("crds");
    c.kubectl_ok(&["apply", "--dry-run=server", "-f", crds.to_str().expect("UTF-8 path")]);
    c.kubectl_ok_in(
        &["apply", "-f", "-"],
        Some(&format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"{NS}\"}}}}"
        )),
    );

    // Every new field at once, for the bundled server and for an own image.
    let placement = json!({
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "DoNotSchedule",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "ok"}}}],
        "priorityClassName": "high", "imagePullSecrets": [{"name": "regcred"}],
        "labels": {"team": "api"}, "annotations": {"example.com/note": "x"},
        "hostNetwork": true, "env": [{"name": "A", "value": "1"}],
    });
    let mut good = bundled(json!({"pod": placement, "userRoles": {"enabled": false}}));
    good["server"]["storage"] = json!({"embedded": {"size": "2Gi", "storageClassName": "fast"}});
    let (code, body) = dry_run_create(cp, &eas("ok", good)).await;
    assert_eq!(code, 201, "{body:#}");
    assert_eq!(body["spec"]["pod"]["affinity"], placement["affinity"], "stored as sent");
    let mut own = json!({"group": "widgets.example.com", "versions": [{"name": "v1"}],
                         "image": {"image": "example/widgets:1"},
                         "userRoles": {"resources": ["widgets", "widgets/status"]}});
    own["pod"] = json!({"volumes": [{"name": "plugins", "configMap": {"name": "plugins"}}],
                        "volumeMounts": [{"name": "plugins", "mountPath": "/plugins"}]});
    let (code, body) = dry_run_create(cp, &eas("own", own.clone())).await;
    assert_eq!(code, 201, "{body:#}");
    let mut eph = bundled(json!({}));
    eph["server"]["storage"] = json!({"embedded": {"ephemeral": true}});
    let (code, body) = dry_run_create(cp, &eas("eph", eph)).await;
    assert_eq!(code, 201, "{body:#}");

    // The operator's own labels and annotation, volumes for the bundled server, ephemeral with
    // a size: CEL rules, with the messages from crd.rs.
    let mut bad = bundled(json!({"pod": {
        "labels": {"app.kubernetes.io/instance": "other"},
        "annotations": {"aggregation.dev/serving-cert-sha256": "x"},
        "volumes": [{"name": "extra", "emptyDir": {}}]}}));
    bad["server"]["storage"] = json!({"embedded": {"ephemeral": true, "size": "1Gi"}});
    let (code, status) = dry_run_create(cp, &eas("bad", bad)).await;
    assert_eq!(code, 422, "{status:#}");
    assert_eq!(status["reason"], "Invalid");
    assert_cause(
        &status,
        "spec.pod.labels",
        "FieldValueInvalid",
        "spec.pod.labels must not set the operator's own labels",
    );
    assert_cause(
        &status,
        "spec.pod.annotations",
        "FieldValueInvalid",
        "must not set aggregation.dev/serving-cert-sha256",
    );
    assert_cause(
        &status,
        "spec",
        "FieldValueInvalid",
        "spec.pod.volumes and spec.pod.volumeMounts are for your own image",
    );
    assert_cause(
        &status,
        "spec.server.storage.embedded",
        "FieldValueInvalid",
        "ephemeral: true replaces with an emptyDir",
    );

    // A volume name the operator uses: a CEL rule (checked only when the types are right).
    own["pod"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let (code, status) = dry_run_create(cp, &eas("own-bad", own.clone())).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(
        &status,
        "spec.pod.volumes",
        "FieldValueInvalid",
        "must not be named serving-cert, config or data",
    );
    // Kubernetes' own types are checked by their schemas: a toleration's seconds, a spread
    // constraint without its required fields, a boolean, a resource name.
    own["pod"]["volumes"] = json!([]);
    own["pod"]["tolerations"] = json!([{"key": "k", "tolerationSeconds": "soon"}]);
    own["pod"]["topologySpreadConstraints"] = json!([{"maxSkew": 1}]);
    own["pod"]["hostNetwork"] = json!("yes");
    own["userRoles"] = json!({"resources": ["Widgets"]});
    let (code, status) = dry_run_create(cp, &eas("own-bad", own)).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(
        &status,
        "spec.pod.tolerations[0].tolerationSeconds",
        "FieldValueTypeInvalid",
        "must be of type integer",
    );
    assert_cause(
        &status,
        "spec.pod.topologySpreadConstraints[0].topologyKey",
        "FieldValueRequired",
        "Required value",
    );
    assert_cause(
        &status,
        "spec.pod.hostNetwork",
        "FieldValueTypeInvalid",
        "must be of type boolean",
    );
    assert_cause(
        &status,
        "spec.userRoles.resources[0]",
        "FieldValueInvalid",
        "should match",
    );

    etcd_storage(cp, &c).await;

    // kubectl explain prints the Kubernetes descriptions of the k8s-openapi types.
    let explained = c.kubectl_ok(&["explain", "extensionapiserver.spec.pod"]);
    for field in [
        "affinity",
        "tolerations",
        "topologySpreadConstraints",
        "nodeSelector",
        "priorityClassName",
        "imagePullSecrets",
        "hostNetwork",
        "volumes",
        "volumeMounts",
    ] {
        assert!(explained.contains(field), "{field} missing from:\n{explained}");
    }
    let affinity = c.kubectl_ok(&["explain", "extensionapiserver.spec.pod.affinity.nodeAffinity"]);
    assert!(
        affinity.contains("Describes node affinity scheduling rules for the pod."),
        "{affinity}"
    );
    let storage = c.kubectl_ok(&["explain", "extensionapiserver.spec.server.storage.embedded"]);
    assert!(storage.contains("ephemeral") && storage.contains("`1Gi`"), "{storage}");
    let roles = c.kubectl_ok(&["explain", "extensionapiserver.spec.userRoles"]);
    assert!(roles.contains("aggregate-to-view"), "{roles}");
}

/// `spec.server.storage.etcd` and the replica rule that depends on it.
async fn etcd_storage(cp: &ControlPlane, c: &Cluster) {
    let with = |storage: Value, replicas: i64| {
        let mut spec = bundled(json!({"replicas": replicas}));
        spec["server"]["storage"] = storage;
        spec
    };
    let etcd = json!({"etcd": {"endpoints": ["https://etcd-0.etcd:2379", "http://10.0.0.7:2379"],
                               "prefix": "/registry/wardle", "secretRef": {"name": "etcd-client"}}});
    let (code, body) = dry_run_create(cp, &eas("etcd", with(etcd.clone(), 3))).await;
    assert_eq!(code, 201, "three replicas with etcd: {body:#}");
    assert_eq!(body["spec"]["server"]["storage"], etcd, "stored as sent");

    let (code, status) = dry_run_create(cp, &eas("three", bundled(json!({"replicas": 3})))).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(
        &status,
        "spec",
        "FieldValueInvalid",
        "the bundled server runs more than one replica only with etcd storage: set spec.server.storage.etcd, or set spec.replicas to 1",
    );
    let embedded = json!({"embedded": {"size": "2Gi"}});
    let (code, status) = dry_run_create(cp, &eas("three", with(embedded, 3))).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(&status, "spec", "FieldValueInvalid", "only with etcd storage");

    let both = json!({"embedded": {"ephemeral": true}, "etcd": {"endpoints": ["https://etcd:2379"]}});
    let (code, status) = dry_run_create(cp, &eas("both", with(both, 1))).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(
        &status,
        "spec.server.storage",
        "FieldValueInvalid",
        "set either embedded or etcd, not both",
    );

    for bad in [
        "etcd-0.etcd:2379",
        "https://etcd:2379/v3",
        "https://a:2379,https://b:2379",
    ] {
        let storage = json!({"etcd": {"endpoints": ["https://ok:2379", bad], "prefix": "registry"}});
        let (code, status) = dry_run_create(cp, &eas("bad-endpoint", with(storage, 1))).await;
        assert_eq!(code, 422, "{bad}: {status:#}");
        assert_cause(
            &status,
            "spec.server.storage.etcd.endpoints",
            "FieldValueInvalid",
            "each endpoint must be an http:// or https:// URL",
        );
        assert_cause(
            &status,
            "spec.server.storage.etcd.prefix",
            "FieldValueInvalid",
            "must start with /",
        );
    }
    let no_secret = json!({"etcd": {"endpoints": ["https://etcd:2379"]}});
    let (code, status) = dry_run_create(cp, &eas("no-secret", with(no_secret, 1))).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(
        &status,
        "spec.server.storage.etcd",
        "FieldValueInvalid",
        "https:// endpoints need secretRef",
    );
    let plain = json!({"etcd": {"endpoints": ["http://etcd:2379"]}});
    let (code, body) = dry_run_create(cp, &eas("plain", with(plain, 2))).await;
    assert_eq!(code, 201, "http:// without a Secret: {body:#}");
    let none = json!({"etcd": {"endpoints": []}});
    let (code, status) = dry_run_create(cp, &eas("no-endpoint", with(none, 1))).await;
    assert_eq!(code, 422, "{status:#}");
    assert_cause(
        &status,
        "spec.server.storage.etcd.endpoints",
        "FieldValueInvalid",
        "should have at least 1 items",
    );

    let explained = c.kubectl_ok(&["explain", "extensionapiserver.spec.server.storage.etcd"]);
    for needle in ["endpoints", "prefix", "secretRef", "/registry/<spec.group>", "replicas"] {
        assert!(explained.contains(needle), "{needle} missing from:\n{explained}");
    }
    let secret = c.kubectl_ok(&["explain", "extensionapiserver.spec.server.storage.etcd.secretRef"]);
    for needle in ["ca.crt", "tls.crt", "tls.key", "EtcdSecretInvalid"] {
        assert!(secret.contains(needle), "{needle} missing from:\n{secret}");
    }
}
