//! Pure builders: spec in, Kubernetes objects out. No client, no clock.

use super::names::{api_service_name, Names, CERT_HASH_ANNOTATION, KUBE_SYSTEM};
use super::rotation::CaState;
use crate::crd::{ExtensionApiServer, ImageServer, LogFormat};
use crate::operator::rbac::{bundled_server_rules, AUTH_DELEGATOR, AUTH_READER};
use crate::pki::CertKeyPair;
use crate::serverconfig::{ServerConfig, CERT_DIR, CONFIG_DIR, CONFIG_KEY, DATA_DIR, SERVER_BINARY, SERVER_PORT};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction,
    KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{APIService, APIServiceSpec, ServiceReference};
use k8s_openapi::ByteString;
use kube::Resource;
use std::collections::BTreeMap;

/// Port the Service exposes; the aggregator always dials 443 unless told otherwise.
pub const SERVICE_PORT: i32 = 443;
const CONTAINER_NAME: &str = "apiserver";
const PORT_NAME: &str = "https";

/// The certificates a reconcile decided to use.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA state, written to the CA Secret (which is never mounted).
    pub ca_state: CaState,
    /// The CA certificates to trust, PEM, as published in `caBundle`.
    pub bundle_pem: String,
    /// The serving certificate and key.
    pub serving: CertKeyPair,
    /// SHA-256 of the serving certificate, hex.
    pub serving_sha256: String,
}

/// Everything an `ExtensionApiServer` is reconciled into.
#[derive(Clone, Debug)]
pub struct Children {
    /// Secret with the CA state (certificates, keys, rotation phase); never mounted.
    pub ca_secret: Secret,
    /// `kubernetes.io/tls` Secret mounted into the server.
    pub serving_secret: Secret,
    /// The server's identity.
    pub service_account: ServiceAccount,
    /// Configuration of the bundled server (bundled mode only).
    pub config_map: Option<ConfigMap>,
    /// Data directory claim (bundled mode with `storage.embedded.size`).
    pub data_claim: Option<PersistentVolumeClaim>,
    /// The server pods.
    pub deployment: Deployment,
    /// Port 443 in front of the pods.
    pub service: Service,
    /// The server's own rules.
    pub cluster_role: ClusterRole,
    /// Binds the server's own rules.
    pub cluster_role_binding: ClusterRoleBinding,
    /// Binds `system:auth-delegator` (TokenReview, SubjectAccessReview).
    pub auth_delegator_binding: ClusterRoleBinding,
    /// Binds `extension-apiserver-authentication-reader` in kube-system.
    pub auth_reader_binding: RoleBinding,
    /// One per version.
    pub api_services: Vec<APIService>,
}

/// Inputs of the builders that do not come from the object itself.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Image of the bundled server when the spec names none.
    pub default_server_image: String,
}

fn owner_reference(eas: &ExtensionApiServer) -> Option<OwnerReference> {
    eas.controller_owner_ref(&())
}

fn namespaced_meta(eas: &ExtensionApiServer, names: &Names, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: owner_reference(eas).map(|o| vec![o]),
        ..Default::default()
    }
}

fn cluster_meta(names: &Names, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(names.labels()),
        ..Default::default()
    }
}

fn ca_secret(mut meta: ObjectMeta, state: &CaState) -> Secret {
    meta.annotations = Some(state.to_annotations());
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_string()),
        data: Some(state.to_data()),
        ..Default::default()
    }
}

fn tls_secret(meta: ObjectMeta, pair: &CertKeyPair, bundle_pem: &str) -> Secret {
    let data = BTreeMap::from([
        ("tls.crt".to_string(), ByteString(pair.cert_pem.clone().into_bytes())),
        ("tls.key".to_string(), ByteString(pair.key_pem.clone().into_bytes())),
        ("ca.crt".to_string(), ByteString(bundle_pem.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

fn service_account_subject(names: &Names) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".to_string(),
        name: names.workload.clone(),
        namespace: Some(names.namespace.clone()),
        api_group: None,
    }]
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// Builds every child from the object, its names and its certificates.
pub fn build(eas: &ExtensionApiServer, names: &Names, certs: &Certs, opts: &BuildOptions) -> Children {
    let spec = &eas.spec;
    let bundled = spec.server.is_some();
    let subjects = service_account_subject(names);

    let mut rules = if bundled { bundled_server_rules() } else { Vec::new() };
    rules.extend(spec.rules.iter().cloned());

    let config_map = spec.server.as_ref().map(|_| ConfigMap {
        metadata: namespaced_meta(eas, names, &names.config_map),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            ServerConfig::from_spec(spec).to_yaml(),
        )])),
        ..Default::default()
    });

    Children {
        ca_secret: ca_secret(namespaced_meta(eas, names, &names.ca_secret), &certs.ca_state),
        serving_secret: tls_secret(
            namespaced_meta(eas, names, &names.serving_secret),
            &certs.serving,
            &certs.bundle_pem,
        ),
        service_account: ServiceAccount {
            metadata: namespaced_meta(eas, names, &names.workload),
            ..Default::default()
        },
        config_map,
        data_claim: data_claim(eas, names),
        deployment: deployment(eas, names, certs, opts),
        service: service(eas, names),
        cluster_role: ClusterRole {
            metadata: cluster_meta(names, &names.cluster_role),
            rules: Some(rules),
            ..Default::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: cluster_meta(names, &names.cluster_role),
            role_ref: role_ref("ClusterRole", &names.cluster_role),
            subjects: Some(subjects.clone()),
        },
        auth_delegator_binding: ClusterRoleBinding {
            metadata: cluster_meta(names, &names.auth_delegator_binding),
            role_ref: role_ref("ClusterRole", AUTH_DELEGATOR),
            subjects: Some(subjects.clone()),
        },
        auth_reader_binding: RoleBinding {
            metadata: ObjectMeta {
                namespace: Some(KUBE_SYSTEM.to_string()),
                ..cluster_meta(names, &names.auth_reader_binding)
            },
            role_ref: role_ref("Role", AUTH_READER),
            subjects: Some(subjects),
        },
        api_services: api_services(eas, names, &certs.bundle_pem),
    }
}

/// One APIService per version, pointing at the Service and trusting the CA bundle.
pub fn api_services(eas: &ExtensionApiServer, names: &Names, ca_bundle_pem: &str) -> Vec<APIService> {
    eas.spec
        .versions
        .iter()
        .map(|v| APIService {
            metadata: cluster_meta(names, &api_service_name(&eas.spec.group, &v.name)),
            spec: Some(APIServiceSpec {
                group: Some(eas.spec.group.clone()),
                version: Some(v.name.clone()),
                group_priority_minimum: v.group_priority_minimum,
                version_priority: v.version_priority,
                ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
                // Never skip TLS verification: the caBundle above is how the aggregator trusts the server.
                insecure_skip_tls_verify: None,
                service: Some(ServiceReference {
                    namespace: Some(names.namespace.clone()),
                    name: Some(names.service.clone()),
                    port: Some(SERVICE_PORT),
                }),
            }),
            status: None,
        })
        .collect()
}

fn service(eas: &ExtensionApiServer, names: &Names) -> Service {
    Service {
        metadata: namespaced_meta(eas, names, &names.service),
        spec: Some(ServiceSpec {
            selector: Some(names.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: SERVICE_PORT,
                protocol: Some("TCP".to_string()),
                target_port: Some(IntOrString::String(PORT_NAME.to_string())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's image, command, arguments and port for the chosen mode.
struct ContainerPlan {
    image: String,
    pull_policy: Option<String>,
    command: Option<Vec<String>>,
    args: Vec<String>,
    port: i32,
    readiness_path: String,
    liveness_path: Option<String>,
    env: Option<Vec<k8s_openapi::api::core::v1::EnvVar>>,
    /// Bundled server: reloads certificates itself. Own images: restarted on a new
    /// certificate, unless they say they reload it themselves.
    hot_reloads_certs: bool,
}

fn bundled_plan(eas: &ExtensionApiServer, opts: &BuildOptions) -> ContainerPlan {
    let server = eas.spec.server.clone().unwrap_or_default();
    let log_format = match server.log_format.unwrap_or(LogFormat::Json) {
        LogFormat::Json => "json",
        LogFormat::Plain => "plain",
    };
    ContainerPlan {
        image: server.image.unwrap_or_else(|| opts.default_server_image.clone()),
        pull_policy: None,
        command: Some(vec![SERVER_BINARY.to_string()]),
        args: vec![
            format!("--config={CONFIG_DIR}/{CONFIG_KEY}"),
            format!("--secure-port={SERVER_PORT}"),
            format!("--tls-cert-file={CERT_DIR}/tls.crt"),
            format!("--tls-private-key-file={CERT_DIR}/tls.key"),
            format!("--data-dir={DATA_DIR}"),
            format!("--log-format={log_format}"),
        ],
        port: SERVER_PORT,
        readiness_path: "/readyz".to_string(),
        liveness_path: Some("/livez".to_string()),
        env: None,
        hot_reloads_certs: true,
    }
}

fn image_plan(img: &ImageServer) -> ContainerPlan {
    let mut args = Vec::new();
    if img.pass_tls_flags {
        args.push(format!("--secure-port={}", img.port));
        args.push(format!("--tls-cert-file={CERT_DIR}/tls.crt"));
        args.push(format!("--tls-private-key-file={CERT_DIR}/tls.key"));
    }
    args.extend(img.args.iter().cloned());
    ContainerPlan {
        image: img.image.clone(),
        pull_policy: img.image_pull_policy.map(|p| p.as_str().to_string()),
        command: (!img.command.is_empty()).then(|| img.command.clone()),
        args,
        port: img.port,
        readiness_path: img.readiness_path.clone(),
        liveness_path: None,
        env: (!img.env.is_empty()).then(|| img.env.clone()),
        hot_reloads_certs: !img.restart_on_certificate_change,
    }
}

fn data_claim_size(eas: &ExtensionApiServer) -> Option<Quantity> {
    eas.spec
        .server
        .as_ref()?
        .storage
        .as_ref()?
        .embedded
        .as_ref()?
        .size
        .clone()
}

/// The claim for the bundled server's data directory, when embedded storage has a size.
pub fn data_claim(eas: &ExtensionApiServer, names: &Names) -> Option<PersistentVolumeClaim> {
    let size = data_claim_size(eas)?;
    let class = eas
        .spec
        .server
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .and_then(|s| s.embedded.as_ref())
        .and_then(|e| e.storage_class_name.clone());
    Some(PersistentVolumeClaim {
        metadata: namespaced_meta(eas, names, &names.data_claim),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                limits: None,
            }),
            storage_class_name: class,
            ..Default::default()
        }),
        status: None,
    })
}

/// Never take a serving replica away before its replacement is ready, except where a
/// ReadWriteOnce data volume cannot be attached to two pods: then the old pod must go first.
fn strategy(eas: &ExtensionApiServer) -> DeploymentStrategy {
    if data_claim_size(eas).is_some() {
        return DeploymentStrategy {
            type_: Some("Recreate".to_string()),
            rolling_update: None,
        };
    }
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    }
}

fn https_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(PORT_NAME.to_string()),
            scheme: Some("HTTPS".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn deployment(eas: &ExtensionApiServer, names: &Names, certs: &Certs, opts: &BuildOptions) -> Deployment {
    let bundled = eas.spec.server.is_some();
    let plan = match &eas.spec.image {
        Some(img) if !bundled => image_plan(img),
        _ => bundled_plan(eas, opts),
    };
    let mut volumes = vec![Volume {
        name: "serving-cert".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names.serving_secret.clone()),
            // Only the leaf and its key; the CA Secret is a different object and is never mounted.
            items: Some(vec![
                KeyToPath {
                    key: "tls.crt".into(),
                    path: "tls.crt".into(),
                    mode: None,
                },
                KeyToPath {
                    key: "tls.key".into(),
                    path: "tls.key".into(),
                    mode: None,
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "serving-cert".to_string(),
        mount_path: CERT_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    }];
    if bundled {
        volumes.push(Volume {
            name: "config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "config".to_string(),
            mount_path: CONFIG_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "data".to_string(),
            persistent_volume_claim: data_claim_size(eas).map(|_| PersistentVolumeClaimVolumeSource {
                claim_name: names.data_claim.clone(),
                read_only: None,
            }),
            empty_dir: data_claim_size(eas).is_none().then(EmptyDirVolumeSource::default),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..Default::default()
        });
    }
    // Own images cannot reload certificates; a changed fingerprint in the pod template rolls them.
    let template_annotations = (!plan.hot_reloads_certs)
        .then(|| BTreeMap::from([(CERT_HASH_ANNOTATION.to_string(), certs.serving_sha256.clone())]));

    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(plan.image),
        image_pull_policy: plan.pull_policy,
        command: plan.command,
        args: Some(plan.args),
        env: plan.env,
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: plan.port,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        readiness_probe: Some(https_probe(&plan.readiness_path, 5, 3)),
        liveness_probe: plan.liveness_path.as_deref().map(|p| https_probe(p, 10, 6)),
        resources: eas.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            // The bundled image runs as non-root from a read-only filesystem; own images may not.
            read_only_root_filesystem: bundled.then_some(true),
            run_as_non_root: bundled.then_some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    Deployment {
        metadata: namespaced_meta(eas, names, &names.workload),
        spec: Some(DeploymentSpec {
            replicas: Some(eas.spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            },
            strategy: Some(strategy(eas)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names.labels()),
                    annotations: template_annotations,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.workload.clone()),
                    // The server needs its token for TokenReview and SubjectAccessReview.
                    automount_service_account_token: Some(true),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: bundled.then(bundled_pod_security),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The bundled image's user (distroless `nonroot`). `fsGroup` makes a PersistentVolume's data
/// directory writable by it (volumes are usually root-owned); `OnRootMismatch` skips the
/// recursive chown of a large volume on every start.
fn bundled_pod_security() -> k8s_openapi::api::core::v1::PodSecurityContext {
    const NONROOT: i64 = 65532;
    k8s_openapi::api::core::v1::PodSecurityContext {
        run_as_user: Some(NONROOT),
        run_as_group: Some(NONROOT),
        run_as_non_root: Some(true),
        fs_group: Some(NONROOT),
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiVersion, BundledServer, ExtensionApiServerSpec};
    use crate::pki;

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
            server: Some(BundledServer::default()),
            image: None,
            service_name: Some("wardle-api".into()),
            replicas: Some(2),
            resources: None,
            certificates: None,
            rules: vec![],
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
        assert_eq!(rules.len(), 2, "bundled server rules plus the user's");
        assert_eq!(rules[0].resources, Some(vec!["namespaces".to_string()]));
        assert_eq!(rules[1].resources, Some(vec!["nodes".to_string()]));
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
        let ru = d.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
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
    fn embedded_storage_gets_a_claim_only_with_a_size() {
        let c = certs();
        let mut s = spec();
        s.replicas = None;
        let ch = children(&eas(s.clone()), &c);
        assert!(ch.data_claim.is_none());
        let pod = ch.deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
        let data = pod.volumes.unwrap().into_iter().find(|v| v.name == "data").unwrap();
        assert!(data.empty_dir.is_some(), "without a size the data lives in an emptyDir");
        assert!(pod.containers[0]
            .args
            .as_ref()
            .unwrap()
            .contains(&format!("--data-dir={DATA_DIR}")));

        s.server.as_mut().unwrap().storage = Some(
            serde_json::from_value(serde_json::json!({
                "embedded": {"size": "1Gi", "storageClassName": "fast"}
            }))
            .unwrap(),
        );
        let ch = children(&eas(s), &c);
        let claim = ch.data_claim.unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("wardle-data"));
        assert_eq!(claim.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("1Gi".into())
        );
        let d = ch.deployment.spec.unwrap();
        assert_eq!(
            d.strategy.unwrap().type_.as_deref(),
            Some("Recreate"),
            "a RWO volume cannot surge"
        );
        let pod = d.template.spec.unwrap();
        // The volume is root-owned; fsGroup lets the nonroot server write its data.
        let psc = pod.security_context.clone().unwrap();
        assert_eq!((psc.run_as_user, psc.fs_group), (Some(65532), Some(65532)));
        assert_eq!(psc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
        let data = pod.volumes.unwrap().into_iter().find(|v| v.name == "data").unwrap();
        assert_eq!(data.persistent_volume_claim.unwrap().claim_name, "wardle-data");
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
}
