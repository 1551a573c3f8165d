//! Checks of the cluster's aggregation layer (seed doc "Configure the Aggregation Layer"):
//! kube-apiserver publishes its `--requestheader-*` settings in
//! kube-system/extension-apiserver-authentication; without a request-header CA no aggregated
//! server can authenticate the aggregator.

use super::conditions::{reasons, types, Cond};
use super::names::KUBE_SYSTEM;
use crate::pki;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

/// Name of the ConfigMap kube-apiserver publishes.
pub const AUTH_CONFIG_MAP: &str = "extension-apiserver-authentication";

/// Result of the aggregation-layer checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregationCheck {
    /// The `AggregationLayerReady` condition.
    pub condition: Cond,
    /// A warning worth an Event even when the layer works.
    pub warning: Option<String>,
}

/// Checks the authentication ConfigMap (pure).
pub fn check_auth_config(cm: Option<&ConfigMap>) -> AggregationCheck {
    let t = types::AGGREGATION_LAYER_READY;
    let Some(data) = cm.and_then(|c| c.data.as_ref()) else {
        return AggregationCheck {
            condition: Cond::fail(
                t,
                reasons::AUTH_CONFIG_MISSING,
                "kube-system/extension-apiserver-authentication does not exist or is empty: \
                 is kube-apiserver running with --requestheader-client-ca-file?",
            ),
            warning: None,
        };
    };
    let Some(rh_ca) = data
        .get("requestheader-client-ca-file")
        .filter(|s| !s.trim().is_empty())
    else {
        return AggregationCheck {
            condition: Cond::fail(
                t,
                reasons::REQUEST_HEADER_CA_MISSING,
                "requestheader-client-ca-file is missing from kube-system/extension-apiserver-authentication: \
                 start kube-apiserver with --requestheader-client-ca-file, --proxy-client-cert-file and \
                 --proxy-client-key-file so the aggregator can authenticate to extension servers",
            ),
            warning: None,
        };
    };
    let reused = data
        .get("client-ca-file")
        .and_then(|client| {
            let a = pki::pem_certs_to_der(rh_ca).ok()?;
            let b = pki::pem_certs_to_der(client).ok()?;
            Some(a.iter().any(|x| b.contains(x)))
        })
        .unwrap_or(false);
    if reused {
        let msg = "the request-header CA and the client CA share a certificate: any client certificate \
                   from that CA can act as the front proxy; use a separate CA for --requestheader-client-ca-file";
        return AggregationCheck {
            condition: Cond::ok(t, reasons::FRONT_PROXY_CA_REUSED, msg),
            warning: Some(msg.to_string()),
        };
    }
    AggregationCheck {
        condition: Cond::ok(t, reasons::CONFIGURED, "request-header authentication is configured"),
        warning: None,
    }
}

/// Whether `apiregistration.k8s.io/v1` is served: `None` when it is, else the failed check.
pub async fn check_registration(client: &Client) -> Result<Option<AggregationCheck>, kube::Error> {
    match client.list_api_group_resources("apiregistration.k8s.io/v1").await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Some(AggregationCheck {
            condition: Cond::fail(
                types::AGGREGATION_LAYER_READY,
                reasons::API_REGISTRATION_UNAVAILABLE,
                "apiregistration.k8s.io/v1 is not served: enable it in kube-apiserver's --runtime-config",
            ),
            warning: None,
        })),
        Err(e) => Err(e),
    }
}

/// Reads the cluster and runs every check.
pub async fn check(client: &Client) -> Result<AggregationCheck, kube::Error> {
    if let Some(unserved) = check_registration(client).await? {
        return Ok(unserved);
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let cm = cms.get_opt(AUTH_CONFIG_MAP).await?;
    Ok(check_auth_config(cm.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KeyAlgorithm;
    use std::collections::BTreeMap;

    fn cm(entries: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn ca(cn: &str) -> String {
        pki::generate_ca(cn, KeyAlgorithm::EcdsaP256, pki::DEFAULT_CA_VALIDITY, 1_800_000_000)
            .unwrap()
            .cert_pem
    }

    #[test]
    fn missing_request_header_ca() {
        let c = check_auth_config(Some(&cm(&[("client-ca-file", &ca("client"))])));
        assert_eq!(c.condition.status, "False");
        assert_eq!(c.condition.reason, "RequestHeaderCAMissing");
        assert!(c.condition.message.contains("--requestheader-client-ca-file"));
        assert_eq!(check_auth_config(None).condition.reason, "AuthenticationConfigMissing");
    }

    #[test]
    fn shared_ca_is_a_warning() {
        let shared = ca("shared");
        let c = check_auth_config(Some(&cm(&[
            ("requestheader-client-ca-file", &shared),
            ("client-ca-file", &format!("{}{}", ca("other"), shared)),
        ])));
        assert!(c.condition.is_true());
        assert_eq!(c.condition.reason, "FrontProxyCAReused");
        assert!(c.warning.is_some());
    }

    #[test]
    fn separate_cas_are_fine() {
        let c = check_auth_config(Some(&cm(&[
            ("requestheader-client-ca-file", &ca("front-proxy")),
            ("client-ca-file", &ca("client")),
        ])));
        assert_eq!(c.condition.reason, "Configured");
        assert!(c.warning.is_none());
    }
}
