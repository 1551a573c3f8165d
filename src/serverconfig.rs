//! The configuration file of the bundled `extension-apiserver`. The operator renders it into a
//! ConfigMap mounted at [`CONFIG_DIR`]; the server reads it at start and reloads it on change.

use crate::crd::{ExtensionApiServerSpec, ServedResource};
use serde::{Deserialize, Serialize};

/// Key of the config file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the ConfigMap is mounted in the server pod.
pub const CONFIG_DIR: &str = "/etc/extension-apiserver";
/// Where the serving Secret is mounted in the server pod.
pub const CERT_DIR: &str = "/var/run/extension-apiserver/serving-cert";
/// Where the Secret of `storage.etcd.secretRef` (`ca.crt`, `tls.crt`, `tls.key`) is mounted.
pub const ETCD_CERT_DIR: &str = "/var/run/extension-apiserver/etcd-client";
/// Where the server's data directory (embedded storage) is mounted.
pub const DATA_DIR: &str = "/var/lib/extension-apiserver";
/// Absolute path of the bundled server binary in the image.
pub const SERVER_BINARY: &str = "/usr/local/bin/extension-apiserver";
/// The port the bundled server listens on.
pub const SERVER_PORT: i32 = 8443;

/// What the bundled server serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// The API group.
    pub group: String,
    /// Served versions, highest priority first.
    pub versions: Vec<String>,
    /// Declared resources.
    #[serde(default)]
    pub resources: Vec<ServedResource>,
}

impl ServerConfig {
    /// The server configuration for a spec; versions are ordered by priority, highest first,
    /// as discovery lists them.
    pub fn from_spec(spec: &ExtensionApiServerSpec) -> Self {
        let mut versions = spec.versions.clone();
        versions.sort_by(|a, b| b.version_priority.cmp(&a.version_priority).then(a.name.cmp(&b.name)));
        ServerConfig {
            group: spec.group.clone(),
            versions: versions.into_iter().map(|v| v.name).collect(),
            resources: spec.server.as_ref().map(|s| s.resources.clone()).unwrap_or_default(),
        }
    }

    /// YAML form, as stored in the ConfigMap.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| panic!("server config serializes: {e}"))
    }

    /// Parses the YAML form.
    pub fn from_yaml(s: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(s)
    }
}
