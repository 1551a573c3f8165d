//! Deciding which certificates to use: keep what is stored unless expiry, names, key
//! algorithm, issuer or a manual request demand a new one. A reconcile as such never issues a
//! certificate. CA changes go through the rotation state machine in [`super::rotation`].

use super::build::Certs;
use super::rotation::{self, CaState, Step};
use crate::operator::reconcile::settings::CertSettings;
use crate::pki::{self, CertFacts, CertKeyPair, PkiError, ReissueReason};
use k8s_openapi::api::core::v1::Secret;
use std::time::Duration;

/// Annotation on an ExtensionApiServer that forces a rotation: `serving` or `ca`.
pub const ROTATE_ANNOTATION: &str = "aggregation.dev/rotate";

/// A manual rotation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force {
    /// Issue a new serving certificate from the current CA.
    Serving,
    /// Rotate the CA (with overlap), then the serving certificate.
    Ca,
}

impl Force {
    /// Parses the annotation value.
    pub fn parse(value: &str) -> Result<Force, String> {
        match value.trim() {
            "serving" => Ok(Force::Serving),
            "ca" => Ok(Force::Ca),
            other => Err(format!(
                "{ROTATE_ANNOTATION}: {other:?} is not a known value; use \"serving\" or \"ca\""
            )),
        }
    }
}

/// What a reconcile knows when planning certificates.
#[derive(Clone, Debug)]
pub struct PlanInputs<'a> {
    /// The CA state Secret, as read.
    pub ca_secret: Option<&'a Secret>,
    /// The serving Secret, as read.
    pub serving_secret: Option<&'a Secret>,
    /// The CA from `caSecretRef`, when set.
    pub external: Option<&'a CertKeyPair>,
    /// Settings.
    pub settings: &'a CertSettings,
    /// DNS names of the serving certificate.
    pub dns_names: &'a [String],
    /// Common name of generated CAs.
    pub ca_common_name: &'a str,
    /// Now, Unix seconds.
    pub now: i64,
    /// A manual rotation request.
    pub force: Option<Force>,
    /// Every APIService carries the stored state's bundle.
    pub published: bool,
    /// The `caBundle` our APIServices hold today, if any.
    pub published_bundle: Option<&'a str>,
    /// Every ready replica serves a leaf of the stored active CA.
    pub served_by_active: bool,
}

/// The outcome of certificate planning.
#[derive(Clone, Debug)]
pub struct CertPlan {
    /// The certificates to apply.
    pub certs: Certs,
    /// Facts of the active CA.
    pub ca: CertFacts,
    /// Facts of every CA in the bundle.
    pub bundle: Vec<CertFacts>,
    /// Facts of the serving certificate in use.
    pub serving: CertFacts,
    /// Why a new serving certificate was issued, if one was.
    pub new_serving: Option<ReissueReason>,
    /// The rotation step taken.
    pub rotation: Step,
    /// A manual request was acted on, so the annotation can be cleared.
    pub force_consumed: bool,
    /// When the serving certificate is due for renewal (Unix seconds).
    pub serving_renewal: i64,
    /// When the CA is due for rotation (Unix seconds); none with `caSecretRef`.
    pub ca_rotation: Option<i64>,
}

impl CertPlan {
    /// How long until something certificate-related must happen, at the latest.
    pub fn next_wakeup(&self, now: i64) -> Duration {
        let due = self.ca_rotation.unwrap_or(i64::MAX).min(self.serving_renewal);
        let until = Duration::from_secs(u64::try_from(due - now).unwrap_or(0).max(1));
        match self.rotation.requeue {
            Some(r) => r.min(until),
            None => until,
        }
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

/// Plans the CA (one rotation step) and the serving certificate.
pub fn plan(inp: &PlanInputs<'_>) -> Result<CertPlan, PkiError> {
    let stored = CaState::from_secret(inp.ca_secret);
    let step = rotation::step(
        stored,
        &rotation::Inputs {
            now: inp.now,
            settings: inp.settings,
            common_name: inp.ca_common_name,
            force: inp.force == Some(Force::Ca),
            external: inp.external,
            published: inp.published,
            published_bundle: inp.published_bundle,
            served_by_active: inp.served_by_active,
        },
    )?;
    let state = step.state.clone();
    let active_pem = state.active.as_ref().map(|a| a.cert_pem.clone()).unwrap_or_default();
    let ca = pki::inspect(&active_pem)?;
    let alg = inp.settings.key_algorithm;
    let stored_serving = inp.serving_secret.and_then(pair_from_secret);
    // Checked against the active CA alone: once a new CA is active the leaf moves to it.
    let checked = match (&stored_serving, inp.force == Some(Force::Serving)) {
        (Some(_), true) => Err(ReissueReason::Requested),
        (Some(p), false) => pki::check_serving(
            Some(p),
            &active_pem,
            inp.dns_names,
            alg,
            inp.settings.serving_renew_before,
            inp.now,
        ),
        (None, _) => Err(ReissueReason::Missing),
    };
    let (serving, serving_facts, new_serving) = match (stored_serving, checked) {
        (Some(pair), Ok(facts)) => (pair, facts, None),
        (stored, result) => {
            let reason = result.err().unwrap_or(ReissueReason::Missing);
            match rotation::signer(&state, inp.external) {
                Some(signer) => {
                    let (leaf, facts) = issue(&signer, inp)?;
                    (leaf, facts, Some(reason))
                }
                // The active CA has no key (mid-rotation): keep serving the current certificate
                // while it is valid; the new CA signs once it is published.
                None => match stored.and_then(|p| pki::inspect(&p.cert_pem).ok().map(|f| (p, f))) {
                    Some((pair, facts)) if facts.not_after > inp.now => (pair, facts, None),
                    _ => {
                        // Nothing valid to keep: only the next CA can sign.
                        let signer = rotation::next_signer(&state, inp.external).ok_or_else(|| {
                            PkiError::Parse(format!(
                                "the serving certificate must be issued ({reason}) but no CA key is available"
                            ))
                        })?;
                        let (leaf, facts) = issue(&signer, inp)?;
                        (leaf, facts, Some(reason))
                    }
                },
            }
        }
    };
    let bundle = state
        .bundle()
        .iter()
        .map(|pem| pki::inspect(pem))
        .collect::<Result<Vec<_>, _>>()?;
    let force_consumed = match inp.force {
        Some(Force::Ca) => step.force_consumed,
        Some(Force::Serving) => new_serving.is_some(),
        None => false,
    };
    let ca_rotation = inp
        .external
        .is_none()
        .then(|| ca.renew_at_with(inp.settings.ca_renew_before));
    Ok(CertPlan {
        certs: Certs {
            bundle_pem: state.bundle_pem(),
            ca_state: state,
            serving_sha256: serving_facts.sha256_hex.clone(),
            serving,
        },
        serving_renewal: serving_facts.renew_at_with(inp.settings.serving_renew_before),
        ca_rotation,
        ca,
        bundle,
        serving: serving_facts,
        new_serving,
        rotation: step,
        force_consumed,
    })
}

fn issue(signer: &CertKeyPair, inp: &PlanInputs<'_>) -> Result<(CertKeyPair, CertFacts), PkiError> {
    let ca = pki::inspect(&signer.cert_pem)?;
    // A serving certificate never outlives its CA.
    let remaining = u64::try_from(ca.not_after - inp.now).unwrap_or(0);
    let lifetime = inp.settings.serving_validity.min(Duration::from_secs(remaining));
    let leaf = pki::issue_serving(signer, inp.dns_names, inp.settings.key_algorithm, lifetime, inp.now)?;
    let facts = pki::inspect(&leaf.cert_pem)?;
    Ok((leaf, facts))
}
