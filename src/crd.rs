//! The `ExtensionApiServer` custom resource (`aggregation.dev/v1alpha1`).
//!
//! The whole user-facing schema, read top to bottom like `kubectl explain`; `crdgen` renders
//! it into `crds/` as one document. `spec.pod`, `spec.userRoles` and the bundled server's
//! storage live in `crd_pod.rs`, the status in `crd_status.rs`.
//!
//! Doc comments on these types become the OpenAPI descriptions that
//! `kubectl explain extensionapiserver.spec` prints, so they are written for users.
//! Validation that can be expressed in the schema (patterns, ranges, CEL) lives here,
//! so that a bad spec is refused at admission; [`crate::operator::reconcile::validate`] repeats the checks
//! the schema cannot express and reports them as a condition.

// The derive's printcolumn(...) entries repeat attribute names by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "aggregation.dev";
/// The one served version of the custom resource.
pub const VERSION: &str = "v1alpha1";

/// An aggregated API server, and everything the Kubernetes aggregation layer needs to reach it:
/// CA and serving certificate, Deployment, Service, ServiceAccount, RBAC and one APIService
/// per version.
// kube's `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aggregation.dev",
    version = "v1alpha1",
    kind = "ExtensionApiServer",
    namespaced,
    doc = "An aggregated API server and everything the aggregation layer needs to reach it.",
    status = "ExtensionApiServerStatus",
    shortname = "eas",
    category = "aggregation",
    derive = "PartialEq",
    printcolumn(name = "Group", type_ = "string", json_path = ".spec.group"),
    // kubectl prints only the first result of a JSONPath, so `.spec.versions[*].name` would
    // show one version: the operator writes them all, comma-separated, into status.versions.
    printcolumn(
        name = "Versions",
        type_ = "string",
        description = "Every served version",
        json_path = ".status.versions"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "APIService",
        type_ = "string",
        description = "Whether every APIService is Available",
        json_path = ".status.conditions[?(@.type==\"APIServiceAvailable\")].status"
    ),
    // A string, not a `date`: kubectl prints a `date` as the time since it, which for a future
    // expiry is `<invalid>`.
    printcolumn(
        name = "Cert-Expiry",
        type_ = "string",
        description = "When the serving certificate expires (UTC)",
        json_path = ".status.certificates.serving.notAfter"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.server) != has(self.image)")
    .message("exactly one of spec.server (the bundled server) or spec.image (your own server image) must be set"))]
#[x_kube(validation = Rule::new("!has(self.server) || !has(self.replicas) || self.replicas <= 1 || (has(self.server.storage) && has(self.server.storage.etcd))")
    .message("the bundled server runs more than one replica only with etcd storage: set spec.server.storage.etcd, or set spec.replicas to 1 (embedded storage is one data directory in one pod)"))]
#[x_kube(validation = Rule::new("!has(self.server) || !has(self.pod) || (!has(self.pod.volumes) && !has(self.pod.volumeMounts))")
    .message("spec.pod.volumes and spec.pod.volumeMounts are for your own image (spec.image); the bundled server takes none"))]
#[serde(rename_all = "camelCase")]
pub struct ExtensionApiServerSpec {
    /// API group the server serves, for example `wardle.example.com`. A DNS-1123 subdomain.
    /// It cannot be changed after creation: delete and recreate the object instead.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.group is immutable"))]
    pub group: String,

    /// Versions of the group; the operator registers one APIService `<version>.<group>` per entry.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))")
        .message("spec.versions must not name the same version twice"))]
    pub versions: Vec<ApiVersion>,

    /// Run the bundled `extension-apiserver`, which serves the resources declared here.
    /// Exactly one of `server` and `image` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Box<BundledServer>>,

    /// Run your own aggregated API server image (for example metrics-server).
    /// Exactly one of `server` and `image` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Box<ImageServer>>,

    /// Name of the Service (and the name in the serving certificate, `<serviceName>.<namespace>.svc`).
    /// Defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub service_name: Option<String>,

    /// Number of server pods. Defaults to 1. The bundled server runs more than one only with
    /// `server.storage.etcd`. With more than one, the operator adds a PodDisruptionBudget
    /// (at most one pod evicted at a time) and, unless `pod.affinity` is set, a preferred pod
    /// anti-affinity that spreads the pods over nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,

    /// Compute resources of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Certificate settings. Defaults: ECDSA P-256 keys, a 5-year CA and a 90-day serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Box<CertificatesSpec>>,

    /// Extra RBAC rules granted to the server's ServiceAccount through its ClusterRole,
    /// for what the server itself reads or writes in the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<PolicyRule>,

    /// Placement and pod settings of the server pods: node selector, tolerations, affinity,
    /// topology spread, priority class, pull secrets, extra labels, annotations and env, host
    /// network, and (your own image only) extra volumes and mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Box<PodSettings>>,

    /// User roles: ClusterRoles `aggregation.dev:<namespace>:<name>:view`, `:edit` and `:admin`,
    /// labelled `rbac.authorization.k8s.io/aggregate-to-view` (`-edit`, `-admin`), so whoever
    /// holds the built-in `view`, `edit` or `admin` role can read (view) or also write (edit,
    /// admin) the served resources. On by default for the bundled server; your own image needs
    /// `resources`. Never by default for a Kubernetes API group (`*.k8s.io`, no dot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_roles: Option<UserRoles>,
}

/// One served version of the group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiVersion {
    /// Version name, shaped like `v1`, `v1beta2` or `v2alpha1`.
    #[schemars(
        length(min = 2, max = 63),
        regex(pattern = r"^v[1-9][0-9]*((alpha|beta)[1-9][0-9]*)?$")
    )]
    pub name: String,

    /// APIService `groupPriorityMinimum`: the priority of the group in discovery (higher first).
    /// Between 1 and 20000. Defaults to 1000.
    #[serde(default = "default_group_priority")]
    #[schemars(range(min = 1, max = 20000))]
    pub group_priority_minimum: i32,

    /// APIService `versionPriority`: the order of this version within the group (higher first).
    /// Between 1 and 1000. Defaults to 15.
    #[serde(default = "default_version_priority")]
    #[schemars(range(min = 1, max = 1000))]
    pub version_priority: i32,
}

fn default_group_priority() -> i32 {
    1000
}

fn default_version_priority() -> i32 {
    15
}

/// Settings of the bundled `extension-apiserver`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BundledServer {
    /// Image of the bundled server. Defaults to the image the operator was started with
    /// (`--server-image`), which holds both binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Resources the server serves, declared much like a CustomResourceDefinition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s.plural == r.plural))")
        .message("two resources must not share a plural name"))]
    pub resources: Vec<ServedResource>,

    /// Log format of the server: `plain` or `json`. Defaults to `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Where the server keeps its objects: `embedded` (the default: a data directory on a 1Gi
    /// PersistentVolumeClaim of the default StorageClass, one replica) or `etcd` (an etcd
    /// cluster you run, any number of replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ServerStorage>,
}

#[path = "crd_pod.rs"]
mod pod;
pub use pod::{
    EmbeddedStorage, EtcdStorage, PodSettings, ServerStorage, UserRoles, DEFAULT_STORAGE_SIZE, MAX_ETCD_ENDPOINTS,
    RESERVED_POD_ANNOTATIONS, RESERVED_POD_LABELS,
};

/// Log output format of the bundled server; the same type as its `--log-format` flag.
pub use crate::telemetry::LogFormat;

/// A resource served by the bundled server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServedResource {
    /// Kind in CamelCase, for example `Flunder`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Z][A-Za-z0-9]*$"))]
    pub kind: String,
    /// Lower-case plural used in URLs, for example `flunders`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub plural: String,
    /// Lower-case singular name. Defaults to the lower-cased kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub singular: Option<String>,
    /// Short names for kubectl, for example `fl`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
    /// Categories such as `all`, used by `kubectl get <category>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// `Namespaced` (the default) or `Cluster`.
    #[serde(default)]
    pub scope: ResourceScope,
    /// Per-version schema and printer columns. Every version named here must be in `spec.versions`.
    #[schemars(length(min = 1))]
    pub versions: Vec<ServedResourceVersion>,
    /// Subresources; `status: {}` enables `/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresources: Option<Subresources>,
}

/// Scope of a served resource.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResourceScope {
    /// Objects live in a namespace.
    #[default]
    Namespaced,
    /// Objects are cluster-wide.
    Cluster,
}

/// Schema and printer columns of a resource in one version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServedResourceVersion {
    /// Version name; must be one of `spec.versions[*].name`.
    pub name: String,
    /// OpenAPI v3 schema of the object, as in a CRD's `schema.openAPIV3Schema`.
    #[serde(default, rename = "openAPIV3Schema", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub open_api_v3_schema: Option<serde_json::Value>,
    /// Extra columns for `kubectl get`, as in a CRD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_printer_columns: Vec<PrinterColumn>,
}

/// A column shown by `kubectl get`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean` or `date`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Simple JSONPath into the object, for example `.spec.size`.
    pub json_path: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Printf-style format hint, as in a CRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// 0 shows the column in `kubectl get`; higher only with `-o wide`.
    #[serde(default)]
    pub priority: i32,
}

/// Subresources of a served resource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Subresources {
    /// Enables the `/status` subresource when present (`status: {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "empty_object")]
    pub status: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Settings of your own server image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageServer {
    /// Container image, for example `registry.k8s.io/metrics-server/metrics-server:v0.7.2`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy: `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Entrypoint override; the image's own entrypoint when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments, placed after the TLS flags the operator adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// HTTPS port the server listens on. Defaults to 8443.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Pass `--secure-port`, `--tls-cert-file` and `--tls-private-key-file` (the standard
    /// k8s.io/apiserver flags). Defaults to true; turn it off for images with other flags.
    #[serde(default = "default_true")]
    pub pass_tls_flags: bool,
    /// HTTPS path of the readiness probe. Defaults to `/readyz`.
    #[serde(default = "default_readiness_path")]
    pub readiness_path: String,
    /// Roll the pods (one at a time, never below the desired count) when the serving
    /// certificate changes. Defaults to true; turn it off for servers that reload their
    /// certificate files themselves.
    #[serde(default = "default_true")]
    pub restart_on_certificate_change: bool,
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is missing.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

fn default_port() -> i32 {
    8443
}

fn default_true() -> bool {
    true
}

fn default_readiness_path() -> String {
    "/readyz".to_string()
}

/// Certificate settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesSpec {
    /// Key algorithm of the CA and serving keys: `ECDSAP256` (default), `RSA2048` or `RSA4096`.
    /// Changing it issues new keys (the CA through a rotation with overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Lifetime of the serving certificate, as a Go duration such as `2160h` (90 days, the default).
    /// At least `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("servingValidity must be at least 1h"))]
    pub serving_validity: Option<String>,
    /// Renew the serving certificate this long before it expires. Defaults to a third of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10m')").message("servingRenewBefore must be at least 10m"))]
    pub serving_renew_before: Option<String>,
    /// Lifetime of a generated CA, as a Go duration such as `43800h` (5 years, the default).
    /// It must be longer than `servingValidity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('2h')").message("caValidity must be at least 2h"))]
    pub ca_validity: Option<String>,
    /// Start a CA rotation this long before the CA expires. Defaults to a third of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("caRenewBefore must be at least 1h"))]
    pub ca_renew_before: Option<String>,
    /// During a CA rotation, the minimum time the old CA stays in `caBundle` after the new CA
    /// signs the serving certificate (it also stays until every replica is seen serving the new
    /// certificate). Defaults to `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("caOverlap must not be negative"))]
    pub ca_overlap: Option<String>,
    /// Use your own CA instead of a generated one: a Secret in this namespace with `tls.crt`
    /// (the CA certificate) and `tls.key`. Its key is read when signing and never copied or
    /// mounted. Changing the Secret's certificate rotates with the same overlap as a generated CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretReference>,
}

/// A Secret in the object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Key algorithm of generated keys.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on curve P-256 with SHA-256.
    #[default]
    #[serde(rename = "ECDSAP256")]
    EcdsaP256,
    /// RSA, 2048-bit modulus, PKCS#1 v1.5 with SHA-256.
    #[serde(rename = "RSA2048")]
    Rsa2048,
    /// RSA, 4096-bit modulus, PKCS#1 v1.5 with SHA-256.
    #[serde(rename = "RSA4096")]
    Rsa4096,
}

#[path = "crd_status.rs"]
mod status;
pub use status::{CertificateInfo, CertificatesStatus, ExtensionApiServerStatus, RotationStatus};

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn empty_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object"
    })
}

impl ExtensionApiServer {
    /// Name of the Service and of the serving certificate's DNS name.
    pub fn service_name(&self) -> String {
        self.spec
            .service_name
            .clone()
            .unwrap_or_else(|| kube::ResourceExt::name_any(self))
    }
}

/// The spec of the wardle example (one version, bundled server), shared by tests.
#[cfg(test)]
pub(crate) fn wardle_spec() -> ExtensionApiServerSpec {
    ExtensionApiServerSpec {
        group: "wardle.example.com".into(),
        versions: vec![ApiVersion {
            name: "v1alpha1".into(),
            group_priority_minimum: 1000,
            version_priority: 15,
        }],
        server: Some(Box::default()),
        image: None,
        service_name: None,
        replicas: None,
        resources: None,
        certificates: None,
        rules: vec![],
        pod: None,
        user_roles: None,
    }
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
