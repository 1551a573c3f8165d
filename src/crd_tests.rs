//! Unit tests of [`super`] (crd.rs), kept apart so the module itself stays readable.

use super::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use serde_json::{json, Value};

/// The schema as shipped in `crds/`, so the test checks what users install.
fn shipped_schema() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/",
        "crds/extensionapiservers.aggregation.dev.yaml"
    ))
    .expect("crds/ file exists");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD parses");
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn object(spec: Value) -> Value {
    json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
           "metadata": {"name": "wardle", "namespace": "wardle-system"}, "spec": spec})
}

fn good() -> Value {
    json!({"group": "wardle.example.com", "versions": [{"name": "v1alpha1"}], "server": {}})
}

fn cel_errors(spec: Value, old: Option<Value>) -> Vec<String> {
    let old = old.map(object);
    match Validator::new().validate(&shipped_schema(), &object(spec), old.as_ref()) {
        Ok(()) => vec![],
        Err(errs) => errs.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn a_good_spec_passes_the_shipped_rules() {
    assert_eq!(cel_errors(good(), None), Vec::<String>::new());
    assert_eq!(cel_errors(good(), Some(good())), Vec::<String>::new());
}

#[test]
fn both_or_neither_of_server_and_image_is_rejected() {
    let mut both = good();
    both["image"] = json!({"image": "example/server:1"});
    let errs = cel_errors(both, None);
    assert!(
        errs.iter().any(|e| e.contains("exactly one of spec.server")),
        "{errs:?}"
    );
    let mut neither = good();
    neither.as_object_mut().unwrap().remove("server");
    assert!(cel_errors(neither, None).iter().any(|e| e.contains("exactly one of")));
}

#[test]
fn duplicate_versions_and_plurals_are_rejected() {
    let mut s = good();
    s["versions"] = json!([{"name": "v1"}, {"name": "v1"}]);
    assert!(cel_errors(s, None).iter().any(|e| e.contains("same version twice")));
    let mut s = good();
    let r = json!({"kind": "Flunder", "plural": "flunders", "versions": [{"name": "v1alpha1"}]});
    s["server"]["resources"] = json!([r.clone(), r]);
    assert!(cel_errors(s, None).iter().any(|e| e.contains("share a plural")));
}

#[test]
fn group_is_immutable_and_durations_have_floors() {
    let mut changed = good();
    changed["group"] = json!("other.example.com");
    assert!(cel_errors(changed, Some(good()))
        .iter()
        .any(|e| e.contains("immutable")));
    let mut short = good();
    short["certificates"] = json!({"servingValidity": "30m"});
    assert!(cel_errors(short, None).iter().any(|e| e.contains("at least 1h")));
}

#[test]
fn schema_constrains_names_and_priorities() {
    let schema = shipped_schema();
    let spec = &schema["properties"]["spec"]["properties"];
    assert!(spec["group"]["pattern"].as_str().unwrap().starts_with("^[a-z0-9]"));
    let v = &spec["versions"]["items"]["properties"];
    assert_eq!(v["name"]["pattern"], "^v[1-9][0-9]*((alpha|beta)[1-9][0-9]*)?$");
    assert_eq!(v["groupPriorityMinimum"]["minimum"], 1.0);
    assert_eq!(v["groupPriorityMinimum"]["maximum"], 20000.0);
    assert_eq!(v["versionPriority"]["maximum"], 1000.0);
    assert_eq!(spec["versions"]["minItems"], 1);
}

#[test]
fn printer_columns_and_short_name() {
    use kube::CustomResourceExt;
    let crd = ExtensionApiServer::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["eas".to_string()]));
    let cols: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Group", "Versions", "Ready", "APIService", "Cert-Expiry", "Age"]);
    assert!(crd.spec.versions[0].subresources.as_ref().unwrap().status.is_some());
}

#[test]
fn versions_column_reads_the_status_list() {
    use kube::CustomResourceExt;
    let crd = ExtensionApiServer::crd();
    let col = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .find(|c| c.name == "Versions")
        .unwrap();
    assert_eq!(col.json_path, ".status.versions");
}

#[test]
fn pod_labels_annotations_and_volumes_are_checked() {
    let mut s = good();
    s["pod"] = json!({"labels": {"team": "a"}, "annotations": {"x": "y"}, "nodeSelector": {"a": "b"}});
    assert_eq!(cel_errors(s.clone(), None), Vec::<String>::new());
    s["pod"]["labels"]["app.kubernetes.io/instance"] = json!("other");
    s["pod"]["annotations"]["aggregation.dev/serving-cert-sha256"] = json!("x");
    s["pod"]["volumes"] = json!([{"name": "extra", "emptyDir": {}}]);
    let errs = cel_errors(s, None).join("\n");
    for needle in [
        "spec.pod.labels must not set the operator's own labels",
        "spec.pod.annotations must not set aggregation.dev/serving-cert-sha256",
        "spec.pod.volumes and spec.pod.volumeMounts are for your own image",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in {errs}");
    }
    let mut own = good();
    own.as_object_mut().unwrap().remove("server");
    own["image"] = json!({"image": "example/server:1"});
    own["pod"] = json!({"volumes": [{"name": "extra", "emptyDir": {}}],
                        "volumeMounts": [{"name": "extra", "mountPath": "/x"}]});
    assert_eq!(cel_errors(own.clone(), None), Vec::<String>::new());
    own["pod"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    assert!(cel_errors(own, None)
        .iter()
        .any(|e| e.contains("must not be named serving-cert, config or data")));
}

#[test]
fn ephemeral_storage_takes_no_claim_settings() {
    let mut s = good();
    s["server"]["storage"] = json!({"embedded": {"ephemeral": true}});
    assert_eq!(cel_errors(s.clone(), None), Vec::<String>::new());
    s["server"]["storage"]["embedded"]["size"] = json!("1Gi");
    assert!(cel_errors(s, None)
        .iter()
        .any(|e| e.contains("ephemeral: true replaces")));
}

fn etcd(storage: Value, replicas: Option<i64>) -> Value {
    let mut s = good();
    s["server"]["storage"] = storage;
    if let Some(r) = replicas {
        s["replicas"] = json!(r);
    }
    s
}

#[test]
fn several_replicas_need_etcd_storage() {
    let errs = cel_errors(etcd(json!({"embedded": {}}), Some(3)), None);
    assert!(
        errs.iter()
            .any(|e| e.contains("more than one replica only with etcd storage: set spec.server.storage.etcd")),
        "{errs:?}"
    );
    assert!(
        !cel_errors(good_with_replicas(3), None).is_empty(),
        "no storage at all is embedded"
    );
    let ok = etcd(
        json!({"etcd": {"endpoints": ["https://etcd-0.etcd:2379", "http://10.0.0.7:2379", "https://[fd00::1]:2379"],
                        "prefix": "/registry/wardle", "secretRef": {"name": "etcd-client"}}}),
        Some(3),
    );
    assert_eq!(cel_errors(ok, None), Vec::<String>::new());
}

fn good_with_replicas(r: i64) -> Value {
    let mut s = good();
    s["replicas"] = json!(r);
    s
}

#[test]
fn etcd_storage_is_checked() {
    let both = etcd(
        json!({"embedded": {"ephemeral": true}, "etcd": {"endpoints": ["https://etcd:2379"]}}),
        None,
    );
    assert!(cel_errors(both, None)
        .iter()
        .any(|e| e.contains("set either embedded or etcd, not both")));
    for bad in [
        "etcd:2379",
        "ftp://etcd:2379",
        "https://",
        "https://etcd:2379/v3",
        "https://a:2379,https://b:2379",
        "https://etcd :2379",
    ] {
        let errs = cel_errors(etcd(json!({"etcd": {"endpoints": [bad]}}), None), None);
        assert!(
            errs.iter()
                .any(|e| e.contains("each endpoint must be an http:// or https:// URL")),
            "{bad}: {errs:?}"
        );
        assert!(!crate::operator::reconcile::validate::is_etcd_endpoint(bad), "{bad}");
    }
    let plain = etcd(json!({"etcd": {"endpoints": ["http://etcd:2379"]}}), None);
    assert_eq!(cel_errors(plain, None), Vec::<String>::new(), "http:// needs no Secret");
    let tls = etcd(
        json!({"etcd": {"endpoints": ["http://a:2379", "https://b:2379"]}}),
        None,
    );
    assert!(cel_errors(tls, None)
        .iter()
        .any(|e| e.contains("https:// endpoints need secretRef")));
    let prefix = etcd(
        json!({"etcd": {"endpoints": ["https://etcd:2379"], "prefix": "registry"}}),
        None,
    );
    assert!(cel_errors(prefix, None)
        .iter()
        .any(|e| e.contains("prefix must start with /")));
}
