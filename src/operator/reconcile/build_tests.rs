//! Unit tests of [`super`] (build.rs), kept apart so the module itself stays readable.

use super::*;
use crate::crd::{ApiVersion, ExtensionApiServerSpec};
use crate::operator::rbac::bundled_server_rules;
use crate::pki;
use crate::serverconfig::DATA_DIR;

const NOW: i64 = 1_800_000_000;

fn eas(spec: ExtensionApiServerSpec) -> ExtensionApiServer {
    let mut e = ExtensionApiServer::new("wardle", spec);
    e.metadata.namespace = Some("wardle-system".into());
    e.metadata.uid = Some("uid-1".into());
    e
}

fn spec() -> ExtensionApiServerSpec {
    ExtensionApiServerSpec {
        group: "wardle.example.com".into(),
        versions: vec![
            ApiVersion {
                name: "v1alpha1".into(),
                group_priority_minimum: 1000,
                version_priority: 15,
            },
            ApiVersion {
                name: "v1beta1".into(),
                group_priority_minimum: 1000,
                version_priority: 20,
            },
        ],
        server: Some(Box::default()),
        image: None,
        service_name: Some("wardle-api".into()),
        replicas: Some(2),
        resources: None,
        certificates: None,
        rules: vec![],
        pod: None,
        user_roles: None,
    }
}

fn certs() -> Certs {
    let alg = crate::crd::KeyAlgorithm::EcdsaP256;
    let ca = pki::generate_ca("ca", alg, pki::DEFAULT_CA_VALIDITY, NOW).unwrap();
    let names = pki::service_dns_names("wardle-api", "wardle-system");
    let serving = pki::issue_serving(&ca, &names, alg, pki::DEFAULT_SERVING_VALIDITY, NOW).unwrap();
    let serving_sha256 = pki::inspect(&serving.cert_pem).unwrap().sha256_hex;
    let ca_state = CaState {
        active: Some(crate::operator::reconcile::rotation::CaMaterial {
            cert_pem: ca.cert_pem.clone(),
            key_pem: Some(ca.key_pem),
        }),
        ..Default::default()
    };
    Certs {
        bundle_pem: ca_state.bundle_pem(),
        ca_state,
        serving,
        serving_sha256,
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        default_server_image: "example/eao:1".into(),
        register_before_available: false,
    }
}

fn children(e: &ExtensionApiServer, c: &Certs) -> Children {
    build(e, &Names::of(e), c, &opts())
}

#[test]
fn namespaced_children_are_owned_and_cluster_children_are_labelled() {
    let e = eas(spec());
    let ch = children(&e, &certs());
    for meta in [
        &ch.ca_secret.metadata,
        &ch.serving_secret.metadata,
        &ch.service_account.metadata,
        &ch.deployment.metadata,
        &ch.service.metadata,
        &ch.config_map.as_ref().unwrap().metadata,
    ] {
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].kind, "ExtensionApiServer");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("wardle-system"));
    }
    let cluster = [
        &ch.cluster_role.metadata,
        &ch.cluster_role_binding.metadata,
        &ch.auth_delegator_binding.metadata,
        &ch.auth_reader_binding.metadata,
        &ch.api_services[0].metadata,
    ];
    for meta in cluster {
        assert!(
            meta.owner_references.is_none(),
            "cross-namespace owners are invalid: {meta:?}"
        );
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["aggregation.dev/owner-namespace"], "wardle-system");
        assert_eq!(labels["aggregation.dev/owner-name"], "wardle");
    }
    assert_eq!(
        ch.auth_reader_binding.metadata.namespace.as_deref(),
        Some("kube-system")
    );
}

#[test]
fn rbac_binds_the_service_account_to_the_right_roles() {
    let mut s = spec();
    s.rules = vec![k8s_openapi::api::rbac::v1::PolicyRule {
        api_groups: Some(vec!["".into()]),
        resources: Some(vec!["nodes".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    }];
    let ch = children(&eas(s), &certs());
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: "wardle".into(),
        namespace: Some("wardle-system".into()),
        api_group: None,
    };
    assert_eq!(ch.auth_delegator_binding.role_ref.name, "system:auth-delegator");
    assert_eq!(ch.auth_delegator_binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        ch.auth_reader_binding.role_ref.name,
        "extension-apiserver-authentication-reader"
    );
    assert_eq!(ch.auth_reader_binding.role_ref.kind, "Role");
    assert_eq!(
        ch.cluster_role_binding.role_ref.name,
        "aggregation.dev:wardle-system:wardle"
    );
    for subjects in [
        &ch.auth_delegator_binding.subjects,
        &ch.auth_reader_binding.subjects,
        &ch.cluster_role_binding.subjects,
    ] {
        assert_eq!(subjects.as_ref().unwrap(), &vec![subject.clone()]);
    }
    let rules = ch.cluster_role.rules.unwrap();
    let bundled = bundled_server_rules();
    assert_eq!(rules.len(), bundled.len() + 1, "bundled server rules plus the user's");
    assert_eq!(rules[0].resources, Some(vec!["namespaces".to_string()]));
    assert_eq!(rules[..bundled.len()], bundled[..]);
    assert_eq!(rules[bundled.len()].resources, Some(vec!["nodes".to_string()]));
}

#[test]
fn api_services_per_version_with_ca_bundle() {
    let c = certs();
    let ch = children(&eas(spec()), &c);
    let names: Vec<_> = ch
        .api_services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["v1alpha1.wardle.example.com", "v1beta1.wardle.example.com"]);
    let s = ch.api_services[1].spec.as_ref().unwrap();
    assert_eq!(s.version.as_deref(), Some("v1beta1"));
    assert_eq!(s.version_priority, 20);
    assert_eq!(s.group_priority_minimum, 1000);
    assert_eq!(s.ca_bundle.as_ref().unwrap().0, c.bundle_pem.as_bytes());
    assert_eq!(s.insecure_skip_tls_verify, None);
    let svc = s.service.as_ref().unwrap();
    assert_eq!(svc.name.as_deref(), Some("wardle-api"));
    assert_eq!(svc.port, Some(443));
}

#[test]
fn bundled_deployment_mounts_only_the_serving_secret() {
    let c = certs();
    let ch = children(&eas(spec()), &c);
    let d = ch.deployment.spec.unwrap();
    assert_eq!(d.replicas, Some(2));
    // The data directory's claim is ReadWriteOnce (see the storage test below).
    assert_eq!(d.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    let pod = d.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("wardle"));
    let secrets: Vec<_> = pod
        .volumes
        .unwrap()
        .into_iter()
        .filter_map(|v| v.secret.and_then(|s| s.secret_name))
        .collect();
    assert_eq!(secrets, ["wardle-serving-cert"], "the CA Secret is never mounted");
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("example/eao:1"));
    assert_eq!(container.command, Some(vec![SERVER_BINARY.to_string()]));
    let args = container.args.clone().unwrap();
    assert!(args.contains(&format!("--tls-cert-file={CERT_DIR}/tls.crt")));
    assert!(args.contains(&"--config=/etc/extension-apiserver/config.yaml".to_string()));
    let probe = container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    // The bundled server reloads certificates itself: no restart annotation.
    assert!(d.template.metadata.unwrap().annotations.is_none());
    let cfg = ch.config_map.unwrap().data.unwrap();
    let parsed = ServerConfig::from_yaml(&cfg[CONFIG_KEY]).unwrap();
    assert_eq!(parsed.group, "wardle.example.com");
    assert_eq!(parsed.versions, ["v1beta1", "v1alpha1"], "highest priority first");
    assert!(ch.serving_secret.data.unwrap().contains_key("ca.crt"));
    assert!(!ch.ca_secret.metadata.name.unwrap().contains("serving"));
}

#[test]
fn own_image_gets_tls_flags_and_a_restart_annotation() {
    let mut s = spec();
    s.server = None;
    s.image = Some(
        serde_json::from_value(serde_json::json!({
            "image": "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
            "args": ["--kubelet-insecure-tls"], "port": 10250
        }))
        .unwrap(),
    );
    let c = certs();
    let ch = children(&eas(s.clone()), &c);
    assert!(ch.config_map.is_none());
    let d = ch.deployment.spec.unwrap();
    let container = &d.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.args.clone().unwrap(),
        [
            "--secure-port=10250".to_string(),
            format!("--tls-cert-file={CERT_DIR}/tls.crt"),
            format!("--tls-private-key-file={CERT_DIR}/tls.key"),
            "--kubelet-insecure-tls".to_string()
        ]
    );
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 10250);
    assert_eq!(
        d.template.metadata.unwrap().annotations.unwrap()[CERT_HASH_ANNOTATION],
        c.serving_sha256
    );
    s.image.as_mut().unwrap().restart_on_certificate_change = false;
    let ch = children(&eas(s.clone()), &c);
    assert!(ch
        .deployment
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .is_none());
    s.image.as_mut().unwrap().pass_tls_flags = false;
    let ch = children(&eas(s), &c);
    let args = ch.deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone();
    assert_eq!(args, Some(vec!["--kubelet-insecure-tls".to_string()]));
}

#[test]
fn storage_defaults_to_a_1gi_claim_and_only_ephemeral_means_empty_dir() {
    let c = certs();
    let mut s = spec();
    s.replicas = None;
    // Default: a claim of 1Gi of the default StorageClass, mounted as the data directory.
    let ch = children(&eas(s.clone()), &c);
    let claim = ch.data_claim.clone().expect("a claim by default");
    assert_eq!(claim.metadata.name.as_deref(), Some("wardle-data"));
    assert_eq!(claim.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    assert_eq!(
        serde_json::to_value(claim.spec.unwrap()).unwrap(),
        serde_json::json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
        "no storageClassName: the cluster's default StorageClass"
    );
    let d = ch.deployment.spec.clone().unwrap();
    assert_eq!(
        serde_json::to_value(d.strategy.unwrap()).unwrap(),
        serde_json::json!({"type": "Recreate"}),
        "a RWO volume cannot surge"
    );
    let pod = d.template.spec.unwrap();
    let data = pod
        .volumes
        .clone()
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        serde_json::to_value(&data).unwrap(),
        serde_json::json!({"name": "data", "persistentVolumeClaim": {"claimName": "wardle-data"}})
    );
    assert!(pod.containers[0]
        .args
        .as_ref()
        .unwrap()
        .contains(&format!("--data-dir={DATA_DIR}")));
    // The volume is root-owned; fsGroup lets the nonroot server write its data.
    let psc = pod.security_context.clone().unwrap();
    assert_eq!((psc.run_as_user, psc.fs_group), (Some(65532), Some(65532)));
    assert_eq!(psc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));

    // A size and a class.
    s.server.as_mut().unwrap().storage = Some(
        serde_json::from_value(serde_json::json!({
            "embedded": {"size": "5Gi", "storageClassName": "fast"}
        }))
        .unwrap(),
    );
    let claim = children(&eas(s.clone()), &c).data_claim.unwrap();
    assert_eq!(
        serde_json::to_value(claim.spec.unwrap()).unwrap(),
        serde_json::json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                           "storageClassName": "fast"})
    );

    // Only an explicit ephemeral: true gives an emptyDir, and then rolling updates surge.
    s.server.as_mut().unwrap().storage =
        Some(serde_json::from_value(serde_json::json!({"embedded": {"ephemeral": true}})).unwrap());
    let ch = children(&eas(s), &c);
    assert!(ch.data_claim.is_none());
    let d = ch.deployment.spec.unwrap();
    assert_eq!(
        serde_json::to_value(d.strategy.unwrap()).unwrap(),
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let data = d
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        serde_json::to_value(&data).unwrap(),
        serde_json::json!({"name": "data", "emptyDir": {}})
    );
}

/// The arguments the operator passes must be ones the bundled server accepts.
#[test]
fn bundled_server_accepts_the_operator_arguments() {
    use clap::Parser;
    let ch = children(&eas(spec()), &certs());
    let container = &ch.deployment.spec.unwrap().template.spec.unwrap().containers[0];
    let mut argv = container.command.clone().unwrap();
    argv.extend(container.args.clone().unwrap());
    let args = crate::apiserver::options::Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(args.secure_port, SERVER_PORT as u16);
    assert_eq!(args.data_dir(), std::path::PathBuf::from(DATA_DIR));
}

#[test]
fn service_targets_the_named_port() {
    let ch = children(&eas(spec()), &certs());
    let svc = ch.service.spec.unwrap();
    let port = &svc.ports.unwrap()[0];
    assert_eq!(port.port, 443);
    assert_eq!(port.target_port, Some(IntOrString::String("https".into())));
    assert_eq!(ch.service.metadata.name.as_deref(), Some("wardle-api"));
    assert_eq!(svc.selector.unwrap()["app.kubernetes.io/instance"], "wardle");
}

#[path = "build_spec_tests.rs"]
mod spec_tests;

#[path = "build_etcd_tests.rs"]
mod etcd_tests;
