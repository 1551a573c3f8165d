//! Names and labels of the children of an `ExtensionApiServer`.
//!
//! Names are derived only from the owner's namespace and name (and the spec's service name,
//! group and versions), so cleanup can find every child without any stored state.

use crate::crd::ExtensionApiServer;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// `app.kubernetes.io/managed-by` value on every child.
pub const MANAGER: &str = "extension-apiserver-operator";
/// Field manager used for server-side apply.
pub const FIELD_MANAGER: &str = "extension-apiserver-operator";
/// Label naming the owner's namespace, on every child (cluster-scoped ones cannot carry an owner reference).
pub const OWNER_NAMESPACE_LABEL: &str = "aggregation.dev/owner-namespace";
/// Label naming the owner, on every child.
pub const OWNER_NAME_LABEL: &str = "aggregation.dev/owner-name";
/// Finalizer that removes the cluster-scoped children and the kube-system RoleBinding.
pub const FINALIZER: &str = "aggregation.dev/cleanup";
/// Pod-template annotation carrying the serving certificate's fingerprint (own-image mode),
/// so a new certificate rolls the pods.
pub const CERT_HASH_ANNOTATION: &str = "aggregation.dev/serving-cert-sha256";
/// Namespace of the auth reader RoleBinding and of the authentication ConfigMap.
pub const KUBE_SYSTEM: &str = "kube-system";

/// The names of every child of one `ExtensionApiServer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Namespace of the owner and of the namespaced children.
    pub namespace: String,
    /// Name of the owner.
    pub owner: String,
    /// Service (and certificate DNS) name.
    pub service: String,
    /// ServiceAccount and Deployment name.
    pub workload: String,
    /// Secret holding the CA (never mounted).
    pub ca_secret: String,
    /// Secret holding the serving certificate, key and CA certificate (mounted).
    pub serving_secret: String,
    /// ConfigMap of the bundled server.
    pub config_map: String,
    /// PersistentVolumeClaim of the bundled server's data directory.
    pub data_claim: String,
    /// ClusterRole with the server's own rules, and its ClusterRoleBinding.
    pub cluster_role: String,
    /// ClusterRoleBinding to `system:auth-delegator`.
    pub auth_delegator_binding: String,
    /// RoleBinding in kube-system to `extension-apiserver-authentication-reader`.
    pub auth_reader_binding: String,
}

impl Names {
    /// Names for an object.
    pub fn of(eas: &ExtensionApiServer) -> Self {
        let namespace = eas.namespace().unwrap_or_default();
        let owner = eas.name_any();
        let cluster_prefix = format!("aggregation.dev:{namespace}:{owner}");
        Names {
            service: eas.service_name(),
            workload: owner.clone(),
            ca_secret: format!("{owner}-ca"),
            serving_secret: format!("{owner}-serving-cert"),
            config_map: format!("{owner}-config"),
            data_claim: format!("{owner}-data"),
            cluster_role: cluster_prefix.clone(),
            auth_delegator_binding: format!("{cluster_prefix}:auth-delegator"),
            auth_reader_binding: format!("{cluster_prefix}:auth-reader"),
            namespace,
            owner,
        }
    }

    /// Labels on every child; they identify the owner of cluster-scoped children.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.selector_labels();
        l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
        l.insert(OWNER_NAMESPACE_LABEL.into(), self.namespace.clone());
        l.insert(OWNER_NAME_LABEL.into(), self.owner.clone());
        l
    }

    /// Labels selecting the server pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "extension-apiserver".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.owner.clone()),
        ])
    }

    /// Label selector matching every child of this owner.
    pub fn owner_selector(&self) -> String {
        format!(
            "{OWNER_NAMESPACE_LABEL}={},{OWNER_NAME_LABEL}={}",
            self.namespace, self.owner
        )
    }
}

/// Access levels of the user roles, each aggregated into the built-in ClusterRole of that name.
pub const USER_ROLE_LEVELS: [&str; 3] = ["view", "edit", "admin"];

impl Names {
    /// Name of the user role of `level` (`view`, `edit`, `admin`): `aggregation.dev:<ns>:<name>:<level>`.
    pub fn user_role(&self, level: &str) -> String {
        format!("{}:{level}", self.cluster_role)
    }

    /// Whether `name` is one of this owner's user roles.
    pub fn is_user_role(&self, name: &str) -> bool {
        USER_ROLE_LEVELS.iter().any(|l| self.user_role(l) == name)
    }
}

/// The APIService name for a group version.
pub fn api_service_name(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

/// Who owns a labelled child, as `namespace/name`, when it carries our labels.
pub fn labelled_owner(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.get("app.kubernetes.io/managed-by").map(String::as_str) != Some(MANAGER) {
        return None;
    }
    Some(format!(
        "{}/{}",
        labels.get(OWNER_NAMESPACE_LABEL)?,
        labels.get(OWNER_NAME_LABEL)?
    ))
}
