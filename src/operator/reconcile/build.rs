//! Pure builders: spec in, Kubernetes objects out. No client, no clock.
//!
//! One builder per child object, sharing the names, labels and the container plan. The pod
//! around the container (storage, `spec.pod`) is in `build_pod.rs`, the user roles in
//! `build_roles.rs`, what several replicas add (a PodDisruptionBudget, anti-affinity) in
//! `build_replicas.rs`.

use super::names::{api_service_name, Names, CERT_HASH_ANNOTATION, KUBE_SYSTEM};
use super::rotation::CaState;
use crate::crd::{ExtensionApiServer, ImageServer, LogFormat};
use crate::operator::rbac::{bundled_server_rules, AUTH_DELEGATOR, AUTH_READER};
use crate::pki::CertKeyPair;
use crate::serverconfig::{ServerConfig, CERT_DIR, CONFIG_DIR, CONFIG_KEY, SERVER_BINARY, SERVER_PORT};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, KeyToPath,
    PersistentVolumeClaim, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{APIService, APIServiceSpec, ServiceReference};
use k8s_openapi::ByteString;
use kube::Resource;
use std::collections::BTreeMap;

#[path = "build_pod.rs"]
pub mod pod;
#[path = "build_replicas.rs"]
pub mod replicas;
#[path = "build_roles.rs"]
pub mod roles;
pub use pod::{data_claim, HOST_NETWORK_DNS_POLICY};
pub use roles::{user_role_resources, user_roles};

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
    /// Data directory claim (bundled mode, unless `storage.embedded.ephemeral`).
    pub data_claim: Option<PersistentVolumeClaim>,
    /// The server pods.
    pub deployment: Deployment,
    /// With more than one replica: at most one server pod evicted at a time.
    pub disruption_budget: Option<PodDisruptionBudget>,
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
    /// `view`, `edit` and `admin` roles aggregated into the built-in ones; empty when disabled
    /// or when there are no resources to cover.
    pub user_roles: Vec<ClusterRole>,
}

/// Inputs of the builders that do not come from the object itself.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Image of the bundled server when the spec names none.
    pub default_server_image: String,
    /// Register APIServices before the server has an available replica. Always false in the
    /// operator binary: an APIService without a server breaks discovery and namespace deletion
    /// cluster-wide. True only where no pod can ever run (the end-to-end tests, which have no
    /// kubelet) and the rest of the apply is what is tested.
    pub register_before_available: bool,
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
        disruption_budget: replicas::disruption_budget(eas, names),
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
        user_roles: user_roles(spec, names),
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
    let log_format = server.log_format.unwrap_or(LogFormat::Json).as_str();
    let mut args = vec![
        format!("--config={CONFIG_DIR}/{CONFIG_KEY}"),
        format!("--secure-port={SERVER_PORT}"),
        format!("--tls-cert-file={CERT_DIR}/tls.crt"),
        format!("--tls-private-key-file={CERT_DIR}/tls.key"),
    ];
    args.extend(pod::storage_args(eas));
    args.push(format!("--log-format={log_format}"));
    ContainerPlan {
        image: server.image.unwrap_or_else(|| opts.default_server_image.clone()),
        pull_policy: None,
        command: Some(vec![SERVER_BINARY.to_string()]),
        args,
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
        // Only the server container mounts it (the one container there is): the etcd
        // client key must not reach any other.
        if let Some((volume, mount)) = pod::storage_volume(eas, names) {
            volumes.push(volume);
            mounts.push(mount);
        }
    }
    // Own images cannot reload certificates; a changed fingerprint in the pod template rolls them.
    let template_annotations = (!plan.hot_reloads_certs)
        .then(|| BTreeMap::from([(CERT_HASH_ANNOTATION.to_string(), certs.serving_sha256.clone())]));

    let mut container = Container {
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
    let mut pod_spec = PodSpec {
        service_account_name: Some(names.workload.clone()),
        // The server needs its token for TokenReview and SubjectAccessReview.
        automount_service_account_token: Some(true),
        volumes: Some(volumes),
        security_context: bundled.then(bundled_pod_security),
        ..Default::default()
    };
    let settings = eas.spec.pod.as_deref();
    pod::apply_pod_settings(&mut pod_spec, &mut container, settings, bundled);
    if pod_spec.affinity.is_none() && replicas::replicas(eas) > 1 {
        pod_spec.affinity = Some(replicas::spread_over_nodes(names));
    }
    pod_spec.containers = vec![container];

    Deployment {
        metadata: namespaced_meta(eas, names, &names.workload),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas::replicas(eas)),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            },
            strategy: Some(pod::strategy(eas)),
            template: PodTemplateSpec {
                metadata: Some(pod::template_meta(settings, names, template_annotations)),
                spec: Some(pod_spec),
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
#[path = "build_tests.rs"]
mod tests;
