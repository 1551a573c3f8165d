//! The authentication configuration kube-apiserver publishes in ConfigMap
//! `kube-system/extension-apiserver-authentication`: loaded at start and then followed with a
//! watch, so a front-proxy CA rotation is picked up within seconds. Readiness is false until
//! the first load.

use crate::apiserver::authn::{AuthConfig, RequestHeaderConfig};
use crate::apiserver::tls::ChainVerifier;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Namespace of the ConfigMap.
pub const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap.
pub const NAME: &str = "extension-apiserver-authentication";

/// Errors of reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A key holds something unusable.
    #[error("key {key}: {message}")]
    Invalid {
        /// The ConfigMap key or flag.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A file named by a flag could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
}

/// The current configuration; `None` until loaded.
#[derive(Debug, Default)]
pub struct AuthState {
    current: RwLock<Option<Arc<AuthConfig>>>,
}

impl AuthState {
    /// A state already holding `cfg` (standalone mode).
    pub fn loaded(cfg: AuthConfig) -> Arc<Self> {
        Arc::new(AuthState {
            current: RwLock::new(Some(Arc::new(cfg))),
        })
    }

    /// The configuration, if loaded.
    pub fn get(&self) -> Option<Arc<AuthConfig>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the configuration.
    pub fn set(&self, cfg: AuthConfig) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(cfg));
    }

    /// Forgets the configuration (its ConfigMap was deleted).
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether a configuration has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.get().is_some()
    }
}

/// Parses a JSON string list as kube-apiserver writes them (`["X-Remote-User"]`).
fn json_list(data: &BTreeMap<String, String>, key: &str) -> Result<Vec<String>, AuthConfigError> {
    match data.get(key).map(|s| s.trim()) {
        None | Some("") | Some("null") => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s).map_err(|e| AuthConfigError::Invalid {
            key: key.into(),
            message: e.to_string(),
        }),
    }
}

fn verifier(key: &str, pem: &str) -> Result<ChainVerifier, AuthConfigError> {
    ChainVerifier::from_pem(pem.as_bytes()).map_err(|e| AuthConfigError::Invalid {
        key: key.into(),
        message: e.to_string(),
    })
}

/// Builds the configuration from the ConfigMap's data.
pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<AuthConfig, AuthConfigError> {
    let client_ca = match data.get("client-ca-file").filter(|s| !s.trim().is_empty()) {
        Some(pem) => Some(verifier("client-ca-file", pem)?),
        None => None,
    };
    let request_header = match data
        .get("requestheader-client-ca-file")
        .filter(|s| !s.trim().is_empty())
    {
        Some(pem) => Some(RequestHeaderConfig {
            verifier: verifier("requestheader-client-ca-file", pem)?,
            allowed_names: json_list(data, "requestheader-allowed-names")?,
            username_headers: json_list(data, "requestheader-username-headers")?,
            uid_headers: json_list(data, "requestheader-uid-headers")?,
            group_headers: json_list(data, "requestheader-group-headers")?,
            extra_prefixes: json_list(data, "requestheader-extra-headers-prefix")?,
        }),
        None => None,
    };
    Ok(AuthConfig {
        request_header,
        client_ca,
    })
}

/// Builds the configuration from standalone flags.
pub fn from_args(args: &crate::apiserver::options::Args) -> Result<AuthConfig, AuthConfigError> {
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| AuthConfigError::Read(p.display().to_string(), e));
    let client_ca = match &args.client_ca_file {
        Some(p) => Some(verifier("--client-ca-file", &read(p)?)?),
        None => None,
    };
    let request_header = match &args.requestheader_client_ca_file {
        Some(p) => Some(RequestHeaderConfig {
            verifier: verifier("--requestheader-client-ca-file", &read(p)?)?,
            allowed_names: args
                .requestheader_allowed_names
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            username_headers: args.requestheader_username_headers.clone(),
            uid_headers: Vec::new(),
            group_headers: args.requestheader_group_headers.clone(),
            extra_prefixes: args.requestheader_extra_headers_prefix.clone(),
        }),
        None => None,
    };
    Ok(AuthConfig {
        request_header,
        client_ca,
    })
}

/// Follows the ConfigMap for as long as the process runs. A bad update is logged and the last
/// good configuration stays in force.
pub async fn follow(client: kube::Client, state: Arc<AuthState>) {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut stream = watcher(api, cfg).boxed();
    // Whether the current (re)list contained the ConfigMap.
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let cm = match event {
            Ok(watcher::Event::Apply(cm)) => cm,
            Ok(watcher::Event::InitApply(cm)) => {
                listed = true;
                cm
            }
            Ok(watcher::Event::Init) => {
                listed = false;
                continue;
            }
            // Deleted (seen live, or missing from a relist): fail closed. A deleted ConfigMap
            // is treated as one that never existed, so a front-proxy CA the cluster removed
            // is no longer trusted; readiness fails until it is back.
            Ok(watcher::Event::Delete(_)) => {
                state.clear();
                tracing::warn!("{NAMESPACE}/{NAME} was deleted; authentication configuration cleared");
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if !listed && state.is_loaded() {
                    state.clear();
                    tracing::warn!("{NAMESPACE}/{NAME} no longer exists; authentication configuration cleared");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching {NAMESPACE}/{NAME} failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match from_configmap_data(&cm.data.unwrap_or_default()) {
            Ok(cfg) => {
                tracing::info!(
                    front_proxy = cfg.request_header.is_some(),
                    client_ca = cfg.client_ca.is_some(),
                    "authentication configuration loaded from {NAMESPACE}/{NAME}"
                );
                state.set(cfg);
            }
            Err(e) => tracing::error!(error = %e, "ignoring unusable {NAMESPACE}/{NAME}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        crate::testing::testkit::ca("t").expect("ca").cert_pem
    }

    #[test]
    fn configmap_keys_are_parsed_like_kube_apiserver_writes_them() {
        let mut d = BTreeMap::new();
        d.insert("requestheader-client-ca-file".to_string(), ca_pem());
        d.insert(
            "requestheader-allowed-names".to_string(),
            r#"["front-proxy-client"]"#.to_string(),
        );
        d.insert(
            "requestheader-username-headers".to_string(),
            r#"["X-Remote-User"]"#.to_string(),
        );
        d.insert(
            "requestheader-group-headers".to_string(),
            r#"["X-Remote-Group"]"#.to_string(),
        );
        d.insert(
            "requestheader-extra-headers-prefix".to_string(),
            r#"["X-Remote-Extra-"]"#.to_string(),
        );
        d.insert("requestheader-uid-headers".to_string(), "null".to_string());
        let cfg = from_configmap_data(&d).expect("valid");
        let rh = cfg.request_header.expect("front proxy configured");
        assert_eq!(rh.allowed_names, ["front-proxy-client"]);
        assert_eq!(rh.username_headers, ["X-Remote-User"]);
        assert!(rh.uid_headers.is_empty());
        assert!(cfg.client_ca.is_none());

        d.insert("requestheader-allowed-names".to_string(), String::new());
        d.insert("client-ca-file".to_string(), ca_pem());
        let cfg = from_configmap_data(&d).expect("valid");
        assert!(
            cfg.request_header.expect("configured").allowed_names.is_empty(),
            "empty allows any CN"
        );
        assert!(cfg.client_ca.is_some());

        d.insert(
            "requestheader-allowed-names".to_string(),
            "front-proxy-client".to_string(),
        );
        assert!(from_configmap_data(&d).is_err(), "not a JSON list");
        d.insert("requestheader-allowed-names".to_string(), "[]".to_string());
        d.insert("client-ca-file".to_string(), "not a pem".to_string());
        assert!(from_configmap_data(&d).is_err());
        assert!(from_configmap_data(&BTreeMap::new())
            .expect("empty")
            .request_header
            .is_none());
    }
}
