//! Deciding which certificates to use: keep what is stored unless expiry, names, key
//! algorithm or issuer demand a new one. A reconcile as such never issues a certificate.

use super::build::Certs;
use crate::pki::{self, CertFacts, CertKeyPair, PkiError, ReissueReason};
use crate::validate::CertSettings;
use k8s_openapi::api::core::v1::Secret;

/// The outcome of certificate planning.
#[derive(Clone, Debug)]
pub struct CertPlan {
    /// The certificates to apply.
    pub certs: Certs,
    /// Facts of the CA in use.
    pub ca: CertFacts,
    /// Facts of the serving certificate in use.
    pub serving: CertFacts,
    /// Why a new CA was generated, if one was.
    pub new_ca: Option<ReissueReason>,
    /// Why a new serving certificate was issued, if one was.
    pub new_serving: Option<ReissueReason>,
}

impl CertPlan {
    /// Unix time at which the next renewal is due.
    pub fn next_renewal(&self) -> i64 {
        self.ca.renew_at().min(self.serving.renew_at())
    }
}

/// Reads a certificate and key pair out of a `tls.crt`/`tls.key` Secret.
pub fn pair_from_secret(secret: &Secret) -> Option<CertKeyPair> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(CertKeyPair {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// Plans the CA and serving certificate from what the Secrets hold.
pub fn plan(
    ca_secret: Option<&Secret>,
    serving_secret: Option<&Secret>,
    settings: &CertSettings,
    dns_names: &[String],
    ca_common_name: &str,
    now_unix: i64,
) -> Result<CertPlan, PkiError> {
    let alg = settings.key_algorithm;
    let stored_ca = ca_secret.and_then(pair_from_secret);
    let checked_ca = stored_ca.map(|p| {
        let r = pki::check_ca(Some(&p), alg, now_unix);
        (p, r)
    });
    let (ca, ca_facts, new_ca) = match checked_ca {
        Some((pair, Ok(facts))) => (pair, facts, None),
        other => {
            let reason = match other {
                Some((_, Err(r))) => r,
                _ => ReissueReason::Missing,
            };
            let ca = pki::generate_ca(ca_common_name, alg, settings.ca_validity, now_unix)?;
            let facts = pki::inspect(&ca.cert_pem)?;
            (ca, facts, Some(reason))
        }
    };
    let stored_serving = serving_secret.and_then(pair_from_secret);
    let checked_serving = stored_serving.map(|p| {
        let r = pki::check_serving(Some(&p), &ca.cert_pem, dns_names, alg, now_unix);
        (p, r)
    });
    let (serving, serving_facts, new_serving) = match checked_serving {
        Some((pair, Ok(facts))) => (pair, facts, None),
        other => {
            let reason = match other {
                Some((_, Err(r))) => r,
                _ => ReissueReason::Missing,
            };
            // A serving certificate never outlives its CA.
            let remaining = u64::try_from(ca_facts.not_after - now_unix).unwrap_or(0);
            let lifetime = settings.serving_validity.min(std::time::Duration::from_secs(remaining));
            let leaf = pki::issue_serving(&ca, dns_names, alg, lifetime, now_unix)?;
            let facts = pki::inspect(&leaf.cert_pem)?;
            (leaf, facts, Some(reason))
        }
    };
    Ok(CertPlan {
        certs: Certs {
            serving_sha256: serving_facts.sha256_hex.clone(),
            ca,
            serving,
        },
        ca: ca_facts,
        serving: serving_facts,
        new_ca,
        new_serving,
    })
}
