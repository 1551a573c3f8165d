//! Conditions and status, computed only from what was actually read and applied.

use crate::crd::ExtensionApiServerSpec;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;

/// Condition types.
pub mod types {
    /// The cluster's aggregation layer is configured (request-header CA, apiregistration API).
    pub const AGGREGATION_LAYER_READY: &str = "AggregationLayerReady";
    /// CA and serving certificate are valid and stored.
    pub const CERTIFICATES_READY: &str = "CertificatesReady";
    /// Every child object is applied; else the API server's reason for the first that failed.
    pub const CHILDREN_APPLIED: &str = "ChildrenApplied";
    /// The server Deployment is Available.
    pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
    /// Every APIService is Available.
    pub const API_SERVICE_AVAILABLE: &str = "APIServiceAvailable";
    /// The bundled server's data survives its pod (a PersistentVolumeClaim, or etcd). Advisory: False
    /// (reason `Ephemeral`) is a warning and does not make `Ready` false.
    pub const STORAGE_DURABLE: &str = "StorageDurable";
    /// Everything above holds.
    pub const READY: &str = "Ready";
}

/// Condition types that warn without affecting `Ready`.
pub const ADVISORY: &[&str] = &[types::STORAGE_DURABLE];

/// Condition reasons set by the operator itself.
pub mod reasons {
    /// The spec failed validation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Another owner holds an APIService for the same group/version.
    pub const API_SERVICE_CONFLICT: &str = "APIServiceConflict";
    /// `requestheader-client-ca-file` is missing from kube-system/extension-apiserver-authentication.
    pub const REQUEST_HEADER_CA_MISSING: &str = "RequestHeaderCAMissing";
    /// The request-header CA and the client CA share a certificate.
    pub const FRONT_PROXY_CA_REUSED: &str = "FrontProxyCAReused";
    /// `apiregistration.k8s.io/v1` is not served.
    pub const API_REGISTRATION_UNAVAILABLE: &str = "APIRegistrationUnavailable";
    /// The authentication ConfigMap is missing.
    pub const AUTH_CONFIG_MISSING: &str = "AuthenticationConfigMissing";
    /// All is well.
    pub const CONFIGURED: &str = "Configured";
    /// Certificates are valid.
    pub const CERTIFICATES_VALID: &str = "CertificatesValid";
    /// `spec.server.storage.etcd.secretRef` names a missing Secret, or one without
    /// `ca.crt`, `tls.crt` or `tls.key` (reported in `DeploymentAvailable`).
    pub const ETCD_SECRET_INVALID: &str = "EtcdSecretInvalid";
    /// The bundled server's objects live in etcd (`storage.etcd`).
    pub const ETCD: &str = "Etcd";
    /// `spec.certificates.caSecretRef` names a missing or unusable Secret.
    pub const CA_SECRET_INVALID: &str = "CASecretInvalid";
    /// Certificates could not be issued.
    pub const CERTIFICATES_FAILED: &str = "IssueFailed";
    /// Applying children failed.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Every child is applied.
    pub const APPLIED: &str = "Applied";
    /// The APIService waits for the first available server replica.
    pub const WAITING_FOR_SERVER: &str = "WaitingForServer";
    /// Waiting for a dependency.
    pub const WAITING: &str = "Waiting";
    /// Ready.
    pub const READY: &str = "Ready";
    /// The Deployment has not reported yet.
    pub const DEPLOYMENT_PENDING: &str = "DeploymentPending";
    /// The APIService has not reported yet.
    pub const API_SERVICE_PENDING: &str = "APIServicePending";
    /// The bundled server's data lives on a PersistentVolumeClaim.
    pub const PERSISTENT_VOLUME_CLAIM: &str = "PersistentVolumeClaim";
    /// The bundled server's data lives in an `emptyDir` (`storage.embedded.ephemeral: true`).
    pub const EPHEMERAL: &str = "Ephemeral";
}

/// A condition before timestamps are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message that says what to fix.
    pub message: String,
}

impl Cond {
    /// A true condition.
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: "True",
            reason: reason.to_string(),
            message: message.into(),
        }
    }
    /// A false condition.
    pub fn fail(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: "False",
            reason: reason.to_string(),
            message: message.into(),
        }
    }
    /// An unknown condition.
    pub fn unknown(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: "Unknown",
            reason: reason.to_string(),
            message: message.into(),
        }
    }
    /// Whether the status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Turns conditions into API conditions, keeping `lastTransitionTime` of those whose status
/// did not change, so `kubectl wait` and dashboards see real transitions only.
pub fn to_conditions(conds: &[Cond], previous: &[Condition], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    conds
        .iter()
        .map(|c| {
            let last = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status: c.status.to_string(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time: last,
            }
        })
        .collect()
}

/// `Ready` from the other conditions: true only when all of them are. Its reason is the most
/// telling problem: a conflict first (it needs a human), then a failure, then a pending check.
/// Advisory conditions ([`ADVISORY`]) are left out.
pub fn ready(conds: &[Cond]) -> Cond {
    let conds: Vec<&Cond> = conds.iter().filter(|c| !ADVISORY.contains(&c.type_)).collect();
    let worst = conds
        .iter()
        .find(|c| c.reason == reasons::API_SERVICE_CONFLICT)
        .or_else(|| conds.iter().find(|c| c.status == "False"))
        .or_else(|| conds.iter().find(|c| !c.is_true()));
    match worst {
        None => Cond::ok(
            types::READY,
            reasons::READY,
            "the aggregated API is registered and available",
        ),
        Some(c) => Cond::fail(types::READY, &c.reason, format!("{}: {}", c.type_, c.message)),
    }
}

/// `StorageDurable` for the bundled server (none for your own image): True on a
/// PersistentVolumeClaim (the default) and in etcd, False with reason `Ephemeral` on an
/// `emptyDir`.
pub fn storage_durable(spec: &ExtensionApiServerSpec) -> Option<Cond> {
    let server = spec.server.as_ref()?;
    let t = types::STORAGE_DURABLE;
    let storage = server.storage.as_ref();
    let embedded = storage.and_then(|s| s.embedded.as_ref());
    if let Some(etcd) = storage.and_then(|s| s.etcd.as_ref()) {
        let msg = format!("objects are stored in etcd at {}", etcd.endpoints.join(", "));
        return Some(Cond::ok(t, reasons::ETCD, msg));
    }
    Some(if embedded.is_some_and(|e| e.ephemeral) {
        Cond::fail(
            t,
            reasons::EPHEMERAL,
            "storage.embedded.ephemeral is true: the data directory is an emptyDir, and every stored object is lost when the pod is deleted, rescheduled or updated",
        )
    } else {
        Cond::ok(
            t,
            reasons::PERSISTENT_VOLUME_CLAIM,
            "the data directory is a PersistentVolumeClaim and outlives the pod",
        )
    })
}

/// `status.versions`: every version of the spec, comma-separated, for the `Versions` column
/// (kubectl prints only the first result of `.spec.versions[*].name`).
pub fn versions_column(spec: &ExtensionApiServerSpec) -> Option<String> {
    let names: Vec<&str> = spec.versions.iter().map(|v| v.name.as_str()).collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// `DeploymentAvailable` from the Deployment as the API server returned it.
pub fn deployment_available(d: &Deployment) -> Cond {
    let t = types::DEPLOYMENT_AVAILABLE;
    let conds = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    match conds.and_then(|c| c.iter().find(|c| c.type_ == "Available")) {
        Some(c) if c.status == "True" => Cond::ok(
            t,
            c.reason.as_deref().unwrap_or("MinimumReplicasAvailable"),
            c.message.clone().unwrap_or_default(),
        ),
        Some(c) => Cond::fail(
            t,
            c.reason.as_deref().unwrap_or("Unavailable"),
            c.message.clone().unwrap_or_default(),
        ),
        None => Cond::unknown(
            t,
            reasons::DEPLOYMENT_PENDING,
            "the Deployment has not reported availability yet",
        ),
    }
}

/// What an unavailable registered APIService does to the cluster; the operator keeps it
/// registered (as kube-apiserver keeps its own), so the condition must say so.
pub const UNAVAILABLE_IMPACT: &str = "while it is unavailable, API discovery in the whole cluster is incomplete \
     (kubectl and controllers report errors for this group) and no namespace can finish deleting \
     (the namespace controller cannot list this group's resources)";

/// `APIServiceAvailable` while an APIService waits for the first available server replica.
pub fn api_services_waiting(waiting: &[String], deployment: &str) -> Cond {
    Cond::fail(
        types::API_SERVICE_AVAILABLE,
        reasons::WAITING_FOR_SERVER,
        format!(
            "{} registered once Deployment {deployment} has an available replica: an APIService \
             without a server would break API discovery and namespace deletion in the whole cluster",
            waiting.join(", ")
        ),
    )
}

/// `APIServiceAvailable`, mirroring the reason and message of each APIService's `Available`.
pub fn api_services_available(services: &[APIService]) -> Cond {
    let t = types::API_SERVICE_AVAILABLE;
    let mut failing = Vec::new();
    let mut first_reason = None;
    let mut unknown = false;
    for svc in services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let available = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Available"));
        match available {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                first_reason.get_or_insert_with(|| c.reason.clone().unwrap_or_else(|| "Unavailable".into()));
                failing.push(format!("{name}: {}", c.message.clone().unwrap_or_default()));
            }
            None => {
                unknown = true;
                failing.push(format!("{name}: no status yet"));
            }
        }
    }
    match (first_reason, unknown) {
        (Some(reason), _) => Cond::fail(t, &reason, format!("{}; {UNAVAILABLE_IMPACT}", failing.join("; "))),
        (None, true) => Cond::unknown(t, reasons::API_SERVICE_PENDING, failing.join("; ")),
        (None, false) => Cond::ok(t, "Passed", "all APIServices are Available"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{APIServiceCondition, APIServiceStatus};

    fn svc(name: &str, status: &str, reason: &str, msg: &str) -> APIService {
        APIService {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(APIServiceStatus {
                conditions: Some(vec![APIServiceCondition {
                    type_: "Available".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(msg.into()),
                    last_transition_time: None,
                }]),
            }),
        }
    }

    #[test]
    fn api_service_reason_and_message_are_mirrored() {
        let c = api_services_available(&[
            svc("v1.a", "True", "Passed", ""),
            svc(
                "v2.a",
                "False",
                "FailedDiscoveryCheck",
                "failing or missing response from https://x",
            ),
        ]);
        assert_eq!(c.status, "False");
        assert_eq!(c.reason, "FailedDiscoveryCheck");
        assert!(c
            .message
            .starts_with("v2.a: failing or missing response from https://x; "));
        assert!(c.message.contains("no namespace can finish deleting"), "{}", c.message);
        let c = api_services_available(&[svc(
            "v1.a",
            "False",
            "MissingEndpoints",
            "endpoints for service/x have no addresses",
        )]);
        assert_eq!(c.reason, "MissingEndpoints");
        assert!(api_services_available(&[svc("v1.a", "True", "Passed", "")]).is_true());
    }

    #[test]
    fn ready_names_the_first_failing_condition() {
        let r = ready(&[
            Cond::ok(types::CERTIFICATES_READY, "x", ""),
            Cond::fail(types::API_SERVICE_AVAILABLE, "MissingEndpoints", "no pods"),
        ]);
        assert_eq!(r.status, "False");
        assert_eq!(r.reason, "MissingEndpoints");
        assert_eq!(r.message, "APIServiceAvailable: no pods");
        assert!(ready(&[Cond::ok(types::CERTIFICATES_READY, "x", "")]).is_true());
        let r = ready(&[
            Cond::unknown(types::DEPLOYMENT_AVAILABLE, "DeploymentPending", ""),
            Cond::fail(types::API_SERVICE_AVAILABLE, reasons::API_SERVICE_CONFLICT, "taken"),
        ]);
        assert_eq!(r.reason, "APIServiceConflict");
        let r = ready(&[
            Cond::unknown(types::DEPLOYMENT_AVAILABLE, "DeploymentPending", ""),
            Cond::fail(types::API_SERVICE_AVAILABLE, "MissingEndpoints", ""),
        ]);
        assert_eq!(r.reason, "MissingEndpoints");
    }

    #[test]
    fn ephemeral_storage_warns_without_affecting_ready() {
        let mut spec = crate::crd::wardle_spec();
        let durable = storage_durable(&spec).unwrap();
        assert_eq!(
            (durable.type_, durable.status, durable.reason.as_str()),
            ("StorageDurable", "True", "PersistentVolumeClaim")
        );
        spec.server.as_mut().unwrap().storage = Some(crate::crd::ServerStorage {
            embedded: Some(crate::crd::EmbeddedStorage {
                ephemeral: true,
                ..Default::default()
            }),
            etcd: None,
        });
        let warn = storage_durable(&spec).unwrap();
        assert_eq!((warn.status, warn.reason.as_str()), ("False", "Ephemeral"));
        assert!(
            warn.message.contains("lost when the pod is deleted"),
            "{}",
            warn.message
        );
        let r = ready(&[Cond::ok(types::CERTIFICATES_READY, "x", ""), warn]);
        assert!(r.is_true(), "a warning must not make Ready false: {r:?}");
        spec.server.as_mut().unwrap().storage = Some(crate::crd::ServerStorage {
            embedded: None,
            etcd: Some(crate::crd::EtcdStorage {
                endpoints: vec!["https://etcd-0:2379".into(), "https://etcd-1:2379".into()],
                ..Default::default()
            }),
        });
        let etcd = storage_durable(&spec).unwrap();
        assert_eq!((etcd.status, etcd.reason.as_str()), ("True", "Etcd"));
        assert!(
            etcd.message.contains("https://etcd-0:2379, https://etcd-1:2379"),
            "{}",
            etcd.message
        );
        spec.server = None;
        assert_eq!(storage_durable(&spec), None, "own images keep their own storage");
    }

    #[test]
    fn versions_column_lists_every_version() {
        let mut spec = crate::crd::wardle_spec();
        assert_eq!(versions_column(&spec).as_deref(), Some("v1alpha1"));
        let mut v = spec.versions[0].clone();
        v.name = "v1beta1".into();
        spec.versions.push(v);
        assert_eq!(versions_column(&spec).as_deref(), Some("v1alpha1,v1beta1"));
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let t0 = Time(jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(jiff::Timestamp::from_second(2_000).unwrap());
        let first = to_conditions(&[Cond::ok(types::READY, "Ready", "")], &[], Some(1), &t0);
        let same = to_conditions(&[Cond::ok(types::READY, "Ready", "again")], &first, Some(2), &t1);
        assert_eq!(same[0].last_transition_time, t0);
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = to_conditions(&[Cond::fail(types::READY, "X", "")], &same, Some(2), &t1);
        assert_eq!(flipped[0].last_transition_time, t1);
    }
}
