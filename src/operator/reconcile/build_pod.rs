//! Builders of [`super`] (build.rs) for the pod around the server container: the bundled
//! server's storage (a PersistentVolumeClaim by default, an `emptyDir` only with
//! `ephemeral: true`, or etcd: flags and its client-certificate Secret, no data volume), the
//! Deployment strategy that goes with it, and `spec.pod`.

use super::namespaced_meta;
use crate::crd::{EtcdStorage, ExtensionApiServer, PodSettings, DEFAULT_STORAGE_SIZE};
use crate::operator::reconcile::names::Names;
use crate::serverconfig::{DATA_DIR, ETCD_CERT_DIR};
use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, SecretVolumeSource, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// DNS policy of a pod on the host network that still resolves cluster names.
pub const HOST_NETWORK_DNS_POLICY: &str = "ClusterFirstWithHostNet";

/// Name of the volume holding the etcd client certificate.
pub const ETCD_VOLUME: &str = "etcd-client";
/// Keys of the `storage.etcd.secretRef` Secret, fixed (as a `kubernetes.io/tls` Secret and
/// cert-manager name them), so there is nothing to configure or misspell.
pub const ETCD_SECRET_KEYS: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// The bundled server's etcd settings, when it stores its objects in etcd.
pub fn etcd(eas: &ExtensionApiServer) -> Option<&EtcdStorage> {
    eas.spec.server.as_ref()?.storage.as_ref()?.etcd.as_ref()
}

/// The etcd key prefix: `storage.etcd.prefix`, or `/registry/<group>` so that servers of
/// different groups can share one etcd.
pub fn etcd_prefix(eas: &ExtensionApiServer, etcd: &EtcdStorage) -> String {
    etcd.prefix
        .clone()
        .unwrap_or_else(|| format!("/registry/{}", eas.spec.group))
}

/// The storage flags of the bundled server: `--data-dir`, or kube-apiserver's etcd flags
/// (the client certificate files only with a `secretRef`).
pub fn storage_args(eas: &ExtensionApiServer) -> Vec<String> {
    let Some(etcd) = etcd(eas) else {
        return vec![format!("--data-dir={DATA_DIR}")];
    };
    let mut args = vec![
        format!("--etcd-servers={}", etcd.endpoints.join(",")),
        format!("--etcd-prefix={}", etcd_prefix(eas, etcd)),
    ];
    if etcd.secret_ref.is_some() {
        args.push(format!("--etcd-cafile={ETCD_CERT_DIR}/ca.crt"));
        args.push(format!("--etcd-certfile={ETCD_CERT_DIR}/tls.crt"));
        args.push(format!("--etcd-keyfile={ETCD_CERT_DIR}/tls.key"));
    }
    args
}

/// The storage volume of the bundled server and its mount in the server container: the data
/// directory, or with etcd only the client-certificate Secret (read-only), if any.
pub fn storage_volume(eas: &ExtensionApiServer, names: &Names) -> Option<(Volume, VolumeMount)> {
    let Some(etcd) = etcd(eas) else {
        let mount = VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..Default::default()
        };
        return Some((data_volume(eas, names), mount));
    };
    let secret = etcd.secret_ref.as_ref()?;
    let volume = Volume {
        name: ETCD_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(
                ETCD_SECRET_KEYS
                    .iter()
                    .map(|k| KeyToPath {
                        key: k.to_string(),
                        path: k.to_string(),
                        mode: None,
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: ETCD_VOLUME.to_string(),
        mount_path: ETCD_CERT_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    Some((volume, mount))
}

/// The size of the data directory's claim: `None` for your own image, for etcd storage and
/// for `ephemeral: true`, else `storage.embedded.size` or [`DEFAULT_STORAGE_SIZE`].
pub fn data_claim_size(eas: &ExtensionApiServer) -> Option<Quantity> {
    let server = eas.spec.server.as_ref()?;
    if etcd(eas).is_some() {
        return None;
    }
    let embedded = server.storage.as_ref().and_then(|s| s.embedded.as_ref());
    if embedded.is_some_and(|e| e.ephemeral) {
        return None;
    }
    Some(
        embedded
            .and_then(|e| e.size.clone())
            .unwrap_or_else(|| Quantity(DEFAULT_STORAGE_SIZE.to_string())),
    )
}

/// The claim for the bundled server's data directory (none with `ephemeral: true`).
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

/// The `data` volume of the bundled server with embedded storage: the claim, or an `emptyDir`
/// with `ephemeral: true`.
fn data_volume(eas: &ExtensionApiServer, names: &Names) -> Volume {
    let durable = data_claim_size(eas).is_some();
    Volume {
        name: "data".to_string(),
        persistent_volume_claim: durable.then(|| PersistentVolumeClaimVolumeSource {
            claim_name: names.data_claim.clone(),
            read_only: None,
        }),
        empty_dir: (!durable).then(EmptyDirVolumeSource::default),
        ..Default::default()
    }
}

/// Never take a serving replica away before its replacement is ready, except where a
/// ReadWriteOnce data volume cannot be attached to two pods: then the old pod must go first.
pub fn strategy(eas: &ExtensionApiServer) -> DeploymentStrategy {
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

/// Pod-template labels and annotations: `spec.pod`'s, then the operator's own, which win (the
/// schema refuses them in `spec.pod` already; an object admitted otherwise still keeps its
/// selector labels).
pub fn template_meta(
    settings: Option<&PodSettings>,
    names: &Names,
    annotations: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    let mut labels = settings.map(|p| p.labels.clone()).unwrap_or_default();
    labels.extend(names.labels());
    let mut all_annotations = settings.map(|p| p.annotations.clone()).unwrap_or_default();
    all_annotations.extend(annotations.unwrap_or_default());
    ObjectMeta {
        labels: Some(labels),
        annotations: (!all_annotations.is_empty()).then_some(all_annotations),
        ..Default::default()
    }
}

/// Applies `spec.pod` to the pod and its container: placement, pull secrets, host network,
/// extra env, and (own images) extra volumes and mounts. The operator's own volumes come first.
pub fn apply_pod_settings(pod: &mut PodSpec, container: &mut Container, settings: Option<&PodSettings>, bundled: bool) {
    let Some(p) = settings else { return };
    fn some_vec<T: Clone>(v: &[T]) -> Option<Vec<T>> {
        (!v.is_empty()).then(|| v.to_vec())
    }
    pod.node_selector = (!p.node_selector.is_empty()).then(|| p.node_selector.clone());
    pod.tolerations = some_vec(&p.tolerations);
    pod.affinity = p.affinity.clone();
    pod.topology_spread_constraints = some_vec(&p.topology_spread_constraints);
    pod.priority_class_name = p.priority_class_name.clone();
    pod.image_pull_secrets = some_vec(&p.image_pull_secrets);
    if p.host_network == Some(true) {
        pod.host_network = Some(true);
        pod.dns_policy = Some(HOST_NETWORK_DNS_POLICY.to_string());
    }
    if !p.env.is_empty() {
        container.env.get_or_insert_with(Vec::new).extend(p.env.iter().cloned());
    }
    // The bundled server takes no extra volumes (the schema refuses them there).
    if !bundled {
        extend(&mut pod.volumes, &p.volumes);
        extend::<VolumeMount>(&mut container.volume_mounts, &p.volume_mounts);
    }
}

fn extend<T: Clone>(target: &mut Option<Vec<T>>, extra: &[T]) {
    if !extra.is_empty() {
        target.get_or_insert_with(Vec::new).extend(extra.iter().cloned());
    }
}
