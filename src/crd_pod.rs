//! `spec.pod` (placement and pod settings of the server), `spec.server.storage` (where the
//! bundled server keeps its data) and `spec.userRoles` (aggregated ClusterRoles for users),
//! part of [`super`] (crd.rs), kept apart so each file stays readable.
//!
//! The Kubernetes types come from k8s-openapi, so `kubectl explain extensionapiserver.spec.pod`
//! prints Kubernetes' own descriptions.

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels the operator sets on the server pods itself; `spec.pod.labels` must not name them.
pub const RESERVED_POD_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "aggregation.dev/owner-namespace",
    "aggregation.dev/owner-name",
];
/// Annotations the operator sets on the server pods itself.
pub const RESERVED_POD_ANNOTATIONS: &[&str] = &["aggregation.dev/serving-cert-sha256"];

/// Storage of the bundled server: `embedded` (the default) or `etcd`, not both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.embedded) || !has(self.etcd)")
    .message("spec.server.storage: set either embedded or etcd, not both"))]
pub struct ServerStorage {
    /// Embedded storage: one data directory in the pod, so exactly one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedStorage>,

    /// An etcd cluster you run (the operator does not deploy etcd). The server pods keep no
    /// data of their own, so `spec.replicas` may be more than 1, and no PersistentVolumeClaim
    /// is made. Use an etcd of your own, not the cluster's kube-apiserver etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStorage>,
}

/// Maximum number of etcd endpoints (the schema's `maxItems`, which CEL cost estimation needs).
pub const MAX_ETCD_ENDPOINTS: usize = 16;

/// Storage in an etcd cluster: the server's `--etcd-servers`, `--etcd-prefix` and, with
/// `secretRef`, `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) || !self.endpoints.exists(e, e.startsWith('https://'))")
    .message("spec.server.storage.etcd: https:// endpoints need secretRef, a Secret with ca.crt (to verify etcd), tls.crt and tls.key"))]
pub struct EtcdStorage {
    /// Client URLs of the etcd members, such as `https://etcd-0.etcd.db.svc:2379`: scheme
    /// (`http` or `https`), host and port, no path. At least one. `https://` needs `secretRef`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = Rule::new(r"self.all(e, e.matches('^https?://[^/?#,\\s]+$'))")
        .message("spec.server.storage.etcd.endpoints: each endpoint must be an http:// or https:// URL with a host and port and nothing else, such as https://etcd-0.etcd:2379"))]
    pub endpoints: Vec<String>,

    /// Key prefix of every object the server stores, so several servers can share one etcd.
    /// Must start with `/`. Defaults to `/registry/<spec.group>`. Changing it hides the objects
    /// stored under the old prefix (they are not moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.server.storage.etcd.prefix must start with /, such as /registry/wardle.example.com"))]
    pub prefix: Option<String>,

    /// TLS to etcd: a Secret in this namespace holding, under these fixed key names, `ca.crt`
    /// (the CA that signed the etcd members' certificates), `tls.crt` and `tls.key` (the
    /// client certificate and key the server presents), as cert-manager writes them. Mounted
    /// read-only into the server container only. Required with `https://` endpoints; without
    /// it the server speaks plain `http://` and presents no certificate. A missing Secret, or one
    /// without these keys, is reported in the `DeploymentAvailable` condition with reason
    /// `EtcdSecretInvalid`; the pods do not start until it is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<super::SecretReference>,
}

/// Size of the data directory's PersistentVolumeClaim when `embedded.size` is unset.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// Embedded storage settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.ephemeral) || !self.ephemeral || (!has(self.size) && !has(self.storageClassName))")
    .message("spec.server.storage.embedded: size and storageClassName configure the PersistentVolumeClaim, which ephemeral: true replaces with an emptyDir; set one or the other"))]
pub struct EmbeddedStorage {
    /// Size of the PersistentVolumeClaim holding the data directory. Defaults to `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// StorageClass of the claim; the cluster's default StorageClass when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Keep the data in an `emptyDir` instead of a PersistentVolumeClaim: every object is
    /// LOST when the pod is deleted, rescheduled or updated. For tests and demos only; the
    /// `StorageDurable` condition is then False with reason `Ephemeral`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// Where and how the server pods run, for the bundled server and for your own image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Node labels a node must have to run the server pods (pod `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity and anti-affinity of the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the server pods spread across topology domains such as zones and nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// PriorityClass of the server pods, for example `system-cluster-critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Secrets in this namespace used to pull the server image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Extra labels of the server pods. The operator's own labels (`app.kubernetes.io/name`,
    /// `app.kubernetes.io/instance`, `app.kubernetes.io/managed-by`, `aggregation.dev/owner-*`)
    /// select the pods and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new(
        "!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/instance' in self) && \
         !('app.kubernetes.io/managed-by' in self) && !('aggregation.dev/owner-namespace' in self) && \
         !('aggregation.dev/owner-name' in self)"
    ).message("spec.pod.labels must not set the operator's own labels (app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/managed-by, aggregation.dev/owner-namespace, aggregation.dev/owner-name): they select the server pods"))]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations of the server pods. `aggregation.dev/serving-cert-sha256` is the
    /// operator's own and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("!('aggregation.dev/serving-cert-sha256' in self)")
        .message("spec.pod.annotations must not set aggregation.dev/serving-cert-sha256: the operator sets it to roll the pods on a new certificate"))]
    pub annotations: BTreeMap<String, String>,

    /// Run the server pods in the node's network namespace. The operator then sets
    /// `dnsPolicy: ClusterFirstWithHostNet`, so cluster DNS keeps working. The container port
    /// is then a port on the node. The namespace's Pod Security admission level must allow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,

    /// Extra environment variables of the server container, after the operator's own (and
    /// after `spec.image.env`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// Extra volumes of the server pods (your own image only: the bundled server needs none).
    /// Names must not be `serving-cert`, `config` or `data`, which the operator uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(v, v.name != 'serving-cert' && v.name != 'config' && v.name != 'data')")
        .message("spec.pod.volumes must not be named serving-cert, config or data: the operator uses those names"))]
    pub volumes: Vec<Volume>,

    /// Extra volume mounts of the server container (your own image only), for `volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Vec<VolumeMount>,
}

/// Aggregated ClusterRoles that give users access to the served resources:
/// `aggregation.dev:<namespace>:<name>:view`, `:edit` and `:admin`, labelled
/// `rbac.authorization.k8s.io/aggregate-to-view`, `-edit` and `-admin`, so whoever holds the
/// built-in `view`, `edit` or `admin` ClusterRole (in a namespace or cluster-wide) can use the
/// resources as they use Kubernetes' own. `view` allows get, list and watch; `edit` and `admin`
/// add create, update, patch, delete and deletecollection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserRoles {
    /// Create the roles. Defaults to true.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Resources of `spec.group` the roles cover, as in a PolicyRule (`widgets`,
    /// `widgets/status`; subresources are only read). Defaults, for the bundled server, to its
    /// resources (and their `/status`); for your own image there is no default, so no roles
    /// are created without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 127),
            regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?(/[a-z]([-a-z0-9]*[a-z0-9])?)?$")
        )
    )]
    pub resources: Vec<String>,
}

impl Default for UserRoles {
    fn default() -> Self {
        UserRoles {
            enabled: true,
            resources: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
