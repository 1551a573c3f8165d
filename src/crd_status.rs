//! The status of an `ExtensionApiServer`, written by the operator; part of [`super`] (crd.rs).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionApiServerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `AggregationLayerReady`, `CertificatesReady`, `DeploymentAvailable`,
    /// `APIServiceAvailable`, `StorageDurable` (bundled server) and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Every version of `spec.versions`, comma-separated (the `Versions` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
    /// Names of the APIServices registered for this server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_services: Vec<String>,
    /// The certificates in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificatesStatus>,
}

/// Certificates in use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesStatus {
    /// The CA that signs the serving certificate and is published as `caBundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateInfo>,
    /// The serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<CertificateInfo>,
    /// Every CA in the published `caBundle` (two during a CA rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundle: Vec<CertificateInfo>,
    /// When the serving certificate will next be renewed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_serving_renewal: Option<String>,
    /// When the next CA rotation will start (RFC 3339); none with `caSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ca_rotation: Option<String>,
    /// The CA rotation in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
}

/// A CA rotation in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// `PublishingNewCA` (both CAs published, the old one still signs) or `Overlap` (the new
    /// CA signs; the old one stays until every replica serves the new certificate).
    pub phase: String,
    /// When the phase began (RFC 3339).
    pub since: String,
    /// Why the rotation began.
    pub reason: String,
}

/// Identity and lifetime of a certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 fingerprint of the DER certificate, hex.
    pub sha256_fingerprint: String,
}
