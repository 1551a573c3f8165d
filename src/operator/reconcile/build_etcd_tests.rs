//! Unit tests of etcd storage and several replicas in the built children (build_pod.rs,
//! build_replicas.rs): the server's flags, the client-certificate volume, no claim, the
//! PodDisruptionBudget and the default anti-affinity.

use super::*;
use serde_json::{json, Value};

fn etcd_spec(storage: Value, replicas: Option<i32>) -> ExtensionApiServerSpec {
    let mut s = spec();
    s.server.as_mut().unwrap().storage = Some(serde_json::from_value(json!({ "etcd": storage })).unwrap());
    s.replicas = replicas;
    s
}

fn with_tls() -> Value {
    json!({"endpoints": ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"], "secretRef": {"name": "etcd-client"}})
}

fn pod_spec(ch: &Children) -> k8s_openapi::api::core::v1::PodSpec {
    ch.deployment.spec.clone().unwrap().template.spec.unwrap()
}

#[test]
fn etcd_storage_passes_the_etcd_flags_and_mounts_the_secret_only_into_the_server() {
    let ch = children(&eas(etcd_spec(with_tls(), Some(3))), &certs());
    let pod = pod_spec(&ch);
    let args = pod.containers[0].args.clone().unwrap();
    let storage: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("--etcd-") || a.starts_with("--data-dir"))
        .collect();
    assert_eq!(
        storage,
        [
            "--etcd-servers=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379",
            "--etcd-prefix=/registry/wardle.example.com",
            "--etcd-cafile=/var/run/extension-apiserver/etcd-client/ca.crt",
            "--etcd-certfile=/var/run/extension-apiserver/etcd-client/tls.crt",
            "--etcd-keyfile=/var/run/extension-apiserver/etcd-client/tls.key",
        ]
    );
    let volumes = serde_json::to_value(pod.volumes.clone().unwrap()).unwrap();
    let names: Vec<&str> = volumes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["serving-cert", "config", "etcd-client"], "no data volume");
    assert_eq!(
        volumes[2],
        json!({"name": "etcd-client", "secret": {"secretName": "etcd-client", "items": [
            {"key": "ca.crt", "path": "ca.crt"}, {"key": "tls.crt", "path": "tls.crt"},
            {"key": "tls.key", "path": "tls.key"}]}})
    );
    let mounting: Vec<(String, Value)> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .flat_map(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == "etcd-client")
                .map(|m| (c.name.clone(), serde_json::to_value(m).unwrap()))
        })
        .collect();
    assert_eq!(
        mounting,
        [(
            "apiserver".to_string(),
            json!({"name": "etcd-client", "mountPath": "/var/run/extension-apiserver/etcd-client", "readOnly": true})
        )]
    );
    assert!(ch.data_claim.is_none(), "no PersistentVolumeClaim with etcd");
    let d = ch.deployment.spec.unwrap();
    assert_eq!(d.replicas, Some(3));
    assert_eq!(
        serde_json::to_value(d.strategy).unwrap(),
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        "a replacement is ready before an old replica goes"
    );
}

#[test]
fn etcd_without_a_secret_has_no_certificate_flags_and_no_volume() {
    let storage = json!({"endpoints": ["http://etcd:2379"], "prefix": "/eas/wardle"});
    let ch = children(&eas(etcd_spec(storage, None)), &certs());
    let pod = pod_spec(&ch);
    let args = pod.containers[0].args.clone().unwrap();
    assert!(
        args.contains(&"--etcd-servers=http://etcd:2379".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--etcd-prefix=/eas/wardle".to_string()), "{args:?}");
    assert!(
        !args.iter().any(|a| a.contains("file=") && a.starts_with("--etcd")),
        "{args:?}"
    );
    let names: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["serving-cert", "config"]);
    assert!(ch.data_claim.is_none());
}

#[test]
fn a_disruption_budget_only_with_several_replicas() {
    for replicas in [None, Some(0), Some(1)] {
        let ch = children(&eas(etcd_spec(with_tls(), replicas)), &certs());
        assert!(ch.disruption_budget.is_none(), "{replicas:?}");
    }
    let ch = children(&eas(etcd_spec(with_tls(), Some(3))), &certs());
    let pdb = serde_json::to_value(ch.disruption_budget.unwrap()).unwrap();
    assert_eq!(
        pdb["spec"],
        json!({"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
               "selector": {"matchLabels": {"app.kubernetes.io/name": "extension-apiserver",
                                            "app.kubernetes.io/instance": "wardle"}}})
    );
    assert_eq!(pdb["metadata"]["name"], "wardle");
    assert_eq!(pdb["metadata"]["namespace"], "wardle-system");
    assert_eq!(pdb["metadata"]["ownerReferences"][0]["kind"], "ExtensionApiServer");
    assert_eq!(pdb["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        pdb["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "extension-apiserver-operator"
    );
    // Own images with several replicas get one too.
    let mut own = spec();
    own.server = None;
    own.image = Some(serde_json::from_value(json!({"image": "example/server:1"})).unwrap());
    own.replicas = Some(2);
    assert!(children(&eas(own), &certs()).disruption_budget.is_some());
}

#[test]
fn several_replicas_prefer_other_nodes_unless_spec_pod_sets_affinity() {
    let ch = children(&eas(etcd_spec(with_tls(), Some(3))), &certs());
    assert_eq!(
        serde_json::to_value(pod_spec(&ch).affinity).unwrap(),
        json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "extension-apiserver",
                                                                  "app.kubernetes.io/instance": "wardle"}}}}]}})
    );
    let one = children(&eas(etcd_spec(with_tls(), Some(1))), &certs());
    assert_eq!(pod_spec(&one).affinity, None, "one replica has no sibling to avoid");
    let mut mine = etcd_spec(with_tls(), Some(3));
    let node_only = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}});
    mine.pod = Some(serde_json::from_value(json!({"affinity": node_only})).unwrap());
    let ch = children(&eas(mine), &certs());
    assert_eq!(
        serde_json::to_value(pod_spec(&ch).affinity).unwrap(),
        node_only,
        "spec.pod.affinity replaces the default entirely"
    );
}

/// The etcd arguments the operator passes must be ones the bundled server accepts.
#[test]
fn bundled_server_accepts_the_etcd_arguments() {
    use clap::Parser;
    let ch = children(&eas(etcd_spec(with_tls(), Some(3))), &certs());
    let container = &pod_spec(&ch).containers[0];
    let mut argv = container.command.clone().unwrap();
    argv.extend(container.args.clone().unwrap());
    let args = crate::apiserver::options::Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        args.etcd_servers,
        ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"]
    );
    assert_eq!(args.etcd_prefix.as_deref(), Some("/registry/wardle.example.com"));
    let dir = std::path::Path::new(crate::serverconfig::ETCD_CERT_DIR);
    assert_eq!(args.etcd_cafile, Some(dir.join("ca.crt")));
    assert_eq!(args.etcd_certfile, Some(dir.join("tls.crt")));
    assert_eq!(args.etcd_keyfile, Some(dir.join("tls.key")));
}
