//! Certificates for tests: fresh CAs and leaves signed by them, short-lived, ECDSA.

use crate::crd::KeyAlgorithm;
use crate::pki::{self, CertKeyPair, LeafSpec};
use std::time::Duration;

/// Errors of the test helpers.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Unix now.
pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A fresh ECDSA CA.
pub fn ca(name: &str) -> Result<CertKeyPair, Error> {
    Ok(pki::generate_ca(
        name,
        KeyAlgorithm::EcdsaP256,
        pki::DEFAULT_CA_VALIDITY,
        now(),
    )?)
}

/// A client certificate `CN=cn[, O=org]` signed by `ca`.
pub fn client_cert(ca: &CertKeyPair, cn: &str, org: Option<&str>) -> Result<CertKeyPair, Error> {
    let spec = LeafSpec {
        common_name: cn.into(),
        organization: org.map(str::to_string),
        client_auth: true,
        ..Default::default()
    };
    Ok(pki::issue_leaf(ca, &spec, Duration::from_secs(3600), now())?)
}

/// A serving certificate for 127.0.0.1 and localhost signed by `ca`.
pub fn serving_cert(ca: &CertKeyPair) -> Result<CertKeyPair, Error> {
    let spec = LeafSpec {
        common_name: "localhost".into(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![[127, 0, 0, 1].into()],
        server_auth: true,
        ..Default::default()
    };
    Ok(pki::issue_leaf(ca, &spec, Duration::from_secs(3600), now())?)
}
