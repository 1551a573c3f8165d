//! CA rotation with overlap, as a pure state machine over state kept in the CA Secret.
//!
//! ```text
//!  Stable ──(expiring / forced / key algorithm / new caSecretRef CA)──▶ Publishing
//!    ▲        caBundle = active + next; the leaf is still signed by active
//!    │                           │ every APIService carries `next` (read back), and a short settle time passed
//!    │                           ▼
//!    └──(every ready replica observed serving a leaf of the new CA, and the overlap passed)── Overlap
//!             caBundle = active (new) + previous; the leaf is reissued from the new CA
//! ```
//!
//! Invariants the tests check: a leaf is only ever issued by a CA already in the published
//! bundle, and a CA leaves the bundle only after no replica is observed serving a leaf it signed.
//! The whole state lives in the CA Secret (data and annotations), so a crash at any step resumes.

use crate::operator::reconcile::settings::CertSettings;
use crate::pki::{self, CertFacts, CertKeyPair, PkiError, ReissueReason};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use std::time::Duration;

/// Annotation on the CA Secret: the rotation phase.
pub const PHASE_ANNOTATION: &str = "aggregation.dev/ca-rotation-phase";
/// Annotation on the CA Secret: when the phase began (RFC 3339).
pub const SINCE_ANNOTATION: &str = "aggregation.dev/ca-rotation-since";
/// Annotation on the CA Secret: why the rotation began.
pub const REASON_ANNOTATION: &str = "aggregation.dev/ca-rotation-reason";
/// Time the aggregators (one per kube-apiserver) get to pick up a new caBundle before a leaf
/// of the new CA is served.
pub const PUBLISH_SETTLE: Duration = Duration::from_secs(10);

/// Phase of a CA rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// One CA; no rotation in progress.
    #[default]
    Stable,
    /// The next CA is published next to the active one; nothing is signed by it yet.
    Publishing,
    /// The new CA signs the leaf; the previous one stays published until replicas moved over.
    Overlap,
}

impl Phase {
    /// Name as written in annotations and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "Stable",
            Phase::Publishing => "PublishingNewCA",
            Phase::Overlap => "Overlap",
        }
    }

    fn parse(s: &str) -> Phase {
        match s {
            "PublishingNewCA" => Phase::Publishing,
            "Overlap" => Phase::Overlap,
            _ => Phase::Stable,
        }
    }
}

/// A CA certificate, and its key when the operator holds it (not with `caSecretRef`, whose
/// key stays in the user's Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM key, if stored here.
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_pem", &self.cert_pem)
            .field("has_key", &self.key_pem.is_some())
            .finish()
    }
}

/// The CA state as kept in the CA Secret.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CaState {
    /// The CA that signs the serving certificate.
    pub active: Option<CaMaterial>,
    /// The CA being published before it signs anything (Publishing).
    pub next: Option<CaMaterial>,
    /// The CA that signed the previous leaf, still published (Overlap).
    pub previous: Option<String>,
    /// The phase.
    pub phase: Phase,
    /// Start of the phase, Unix seconds.
    pub since: i64,
    /// Why the rotation began.
    pub reason: String,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

impl CaState {
    /// Reads the state from the CA Secret (or an empty state when there is none).
    pub fn from_secret(secret: Option<&Secret>) -> CaState {
        let Some(secret) = secret else {
            return CaState::default();
        };
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let material = |cert: &str, key: &str| {
            text(data, cert).map(|cert_pem| CaMaterial {
                cert_pem,
                key_pem: text(data, key),
            })
        };
        CaState {
            active: material("ca.crt", "ca.key"),
            next: material("next.crt", "next.key"),
            previous: text(data, "previous.crt"),
            phase: Phase::parse(annotations.get(PHASE_ANNOTATION).map(String::as_str).unwrap_or("")),
            since: annotations
                .get(SINCE_ANNOTATION)
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second())
                .unwrap_or(0),
            reason: annotations.get(REASON_ANNOTATION).cloned().unwrap_or_default(),
        }
    }

    /// Secret data for this state.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
        };
        if let Some(a) = &self.active {
            put("ca.crt", &a.cert_pem);
            if let Some(k) = &a.key_pem {
                put("ca.key", k);
            }
        }
        if let Some(n) = &self.next {
            put("next.crt", &n.cert_pem);
            if let Some(k) = &n.key_pem {
                put("next.key", k);
            }
        }
        if let Some(p) = &self.previous {
            put("previous.crt", p);
        }
        data
    }

    /// Secret annotations for this state.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([(PHASE_ANNOTATION.to_string(), self.phase.as_str().to_string())]);
        if self.phase != Phase::Stable {
            a.insert(SINCE_ANNOTATION.to_string(), pki::rfc3339(self.since));
            a.insert(REASON_ANNOTATION.to_string(), self.reason.clone());
        }
        a
    }

    /// The CA certificates to publish as `caBundle`, active first.
    pub fn bundle(&self) -> Vec<String> {
        let mut b: Vec<String> = self.active.iter().map(|a| a.cert_pem.clone()).collect();
        b.extend(self.next.iter().map(|n| n.cert_pem.clone()));
        b.extend(self.previous.iter().cloned());
        b
    }

    /// The bundle as one PEM string.
    pub fn bundle_pem(&self) -> String {
        self.bundle().concat()
    }
}

/// What a reconcile knows besides the state.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// Now, Unix seconds.
    pub now: i64,
    /// Certificate settings.
    pub settings: &'a CertSettings,
    /// Common name of generated CAs.
    pub common_name: &'a str,
    /// `aggregation.dev/rotate: ca` is set.
    pub force: bool,
    /// The CA from `spec.certificates.caSecretRef`, when set.
    pub external: Option<&'a CertKeyPair>,
    /// Every APIService currently carries the whole bundle of this state (read back from the API).
    pub published: bool,
    /// The `caBundle` our APIServices hold today, if any.
    pub published_bundle: Option<&'a str>,
    /// Every ready replica was observed serving a leaf signed by the active CA.
    pub served_by_active: bool,
}

/// The result of one step.
#[derive(Clone, Debug)]
pub struct Step {
    /// The new state, to be written to the CA Secret.
    pub state: CaState,
    /// Events to publish: (reason, message).
    pub events: Vec<(&'static str, String)>,
    /// Whether `aggregation.dev/rotate: ca` was acted on (and can be cleared).
    pub force_consumed: bool,
    /// When to look again, if sooner than usual.
    pub requeue: Option<Duration>,
    /// A problem the user must fix (for example an unusable `caSecretRef`).
    pub problem: Option<String>,
}

/// Facts of the active CA when it can keep signing. With `caSecretRef` the key lives in the
/// user's Secret, which may already hold the next CA, so only the certificate is checked.
fn usable(active: &CaMaterial, external: bool) -> Option<CertFacts> {
    let facts = pki::inspect(&active.cert_pem).ok()?;
    if !facts.is_ca {
        return None;
    }
    if !external && !active.key_pem.as_deref().is_some_and(|k| pki::key_matches(&facts, k)) {
        return None;
    }
    Some(facts)
}

/// The signing key pair of the active CA: its stored key, or the `caSecretRef` pair when
/// that Secret still holds the active CA.
pub fn signer(state: &CaState, external: Option<&CertKeyPair>) -> Option<CertKeyPair> {
    let a = state.active.as_ref()?;
    match (&a.key_pem, external) {
        (Some(key), _) => Some(CertKeyPair {
            cert_pem: a.cert_pem.clone(),
            key_pem: key.clone(),
        }),
        (None, Some(e)) if e.cert_pem == a.cert_pem => Some(e.clone()),
        _ => None,
    }
}

fn new_ca(inp: &Inputs<'_>) -> Result<CaMaterial, PkiError> {
    match inp.external {
        Some(e) => Ok(CaMaterial {
            cert_pem: e.cert_pem.clone(),
            key_pem: None,
        }),
        None => {
            let ca = pki::generate_ca(
                inp.common_name,
                inp.settings.key_algorithm,
                inp.settings.ca_validity,
                inp.now,
            )?;
            Ok(CaMaterial {
                cert_pem: ca.cert_pem,
                key_pem: Some(ca.key_pem),
            })
        }
    }
}

/// Checks the CA from `caSecretRef`.
pub fn check_external(pair: &CertKeyPair) -> Result<(), String> {
    let facts = pki::inspect(&pair.cert_pem).map_err(|e| format!("tls.crt: {e}"))?;
    if !facts.is_ca {
        return Err("tls.crt is not a CA certificate (basicConstraints CA:TRUE is missing)".into());
    }
    if !pki::key_matches(&facts, &pair.key_pem) {
        return Err("tls.key is not the private key of tls.crt".into());
    }
    Ok(())
}

/// Stable, but the active CA cannot sign any more (none stored, its key lost, or
/// `caSecretRef` removed). Whatever clients trust today stays trusted until replicas move on.
fn start_without_usable_ca(mut state: CaState, inp: &Inputs<'_>, mut out: Step) -> Result<Step, PkiError> {
    let old_cert = state
        .active
        .as_ref()
        .filter(|a| pki::inspect(&a.cert_pem).is_ok_and(|f| f.is_ca))
        .map(|a| a.cert_pem.clone());
    let published = inp.published_bundle.filter(|b| pki::pem_certs_to_der(b).is_ok());
    let new = new_ca(inp)?;
    match (old_cert, published) {
        (Some(old), _) => {
            // The old CA keeps its place (and the leaf it signed keeps being served) until the
            // new one is published: an ordinary rotation, only without a key for the old CA.
            let reason = "the current CA can no longer sign (its key is missing or does not match)";
            state = CaState {
                active: Some(CaMaterial {
                    cert_pem: old,
                    key_pem: None,
                }),
                next: Some(new),
                previous: None,
                phase: Phase::Publishing,
                since: inp.now,
                reason: reason.to_string(),
            };
            out.events
                .push(("CARotationStarted", format!("CA rotation started: {reason}")));
            out.requeue = Some(PUBLISH_SETTLE);
        }
        (None, Some(bundle)) => {
            // The CA Secret is gone but APIServices still trust a bundle: the new CA must sign
            // at once (nothing else can), and the published CAs stay until replicas moved over.
            let reason = "the CA Secret was lost; the previously published CAs stay trusted during the overlap";
            state = CaState {
                active: Some(new),
                next: None,
                previous: Some(bundle.to_string()),
                phase: Phase::Overlap,
                since: inp.now,
                reason: reason.to_string(),
            };
            out.events.push(("CAIssued", format!("using a new CA: {reason}")));
            out.requeue = Some(Duration::from_secs(15));
        }
        (None, None) => {
            state = CaState {
                active: Some(new),
                ..CaState::default()
            };
            out.events
                .push(("CAIssued", "using a new CA: no CA stored yet".to_string()));
        }
    }
    out.force_consumed = inp.force;
    out.state = state;
    Ok(out)
}

/// The key pair of the next CA (Publishing), for the one case where the active CA has no key
/// and no valid serving certificate is left to keep.
pub fn next_signer(state: &CaState, external: Option<&CertKeyPair>) -> Option<CertKeyPair> {
    let n = state.next.as_ref()?;
    match (&n.key_pem, external) {
        (Some(key), _) => Some(CertKeyPair {
            cert_pem: n.cert_pem.clone(),
            key_pem: key.clone(),
        }),
        (None, Some(e)) if e.cert_pem == n.cert_pem => Some(e.clone()),
        _ => None,
    }
}

/// Advances the rotation by at most one phase.
pub fn step(mut state: CaState, inp: &Inputs<'_>) -> Result<Step, PkiError> {
    let mut out = Step {
        state: CaState::default(),
        events: Vec::new(),
        force_consumed: false,
        requeue: None,
        problem: None,
    };
    if let Some(e) = inp.external {
        if let Err(p) = check_external(e) {
            out.problem = Some(format!("spec.certificates.caSecretRef: {p}"));
            out.state = state;
            return Ok(out);
        }
    }
    let alg = inp.settings.key_algorithm;
    let active_facts = state.active.as_ref().and_then(|a| usable(a, inp.external.is_some()));

    match state.phase {
        Phase::Stable => {
            let Some(facts) = active_facts else {
                return start_without_usable_ca(state, inp, out);
            };
            let reason = match inp.external {
                Some(e) if e.cert_pem != state.active.as_ref().map(|a| a.cert_pem.clone()).unwrap_or_default() => {
                    Some("the CA in spec.certificates.caSecretRef changed".to_string())
                }
                Some(_) => None,
                None if inp.force => Some("requested with aggregation.dev/rotate: ca".to_string()),
                None if facts.key_algorithm != Some(alg) => Some("the key algorithm changed".to_string()),
                None if inp.now >= facts.renew_at_with(inp.settings.ca_renew_before) => {
                    Some(ReissueReason::Expiring.to_string())
                }
                None => None,
            };
            if inp.force && inp.external.is_some() {
                out.events.push((
                    "CARotationIgnored",
                    "aggregation.dev/rotate: ca is ignored with spec.certificates.caSecretRef: \
                     change the referenced Secret to rotate"
                        .to_string(),
                ));
                out.force_consumed = true;
            }
            if let Some(reason) = reason {
                state.next = Some(new_ca(inp)?);
                state.phase = Phase::Publishing;
                state.since = inp.now;
                state.reason = reason.clone();
                out.force_consumed = inp.force;
                out.events.push((
                    "CARotationStarted",
                    format!("CA rotation started ({reason}): publishing the new CA next to the current one"),
                ));
                out.requeue = Some(PUBLISH_SETTLE);
            }
        }
        Phase::Publishing | Phase::Overlap if inp.force => {
            // One rotation at a time; the request is answered, not queued.
            out.force_consumed = true;
            out.events.push((
                "CARotationInProgress",
                format!(
                    "aggregation.dev/rotate: ca ignored: a CA rotation is already in phase {}",
                    state.phase.as_str()
                ),
            ));
            out.state = state;
            return Ok(out);
        }
        Phase::Publishing => {
            if state.next.is_none() {
                // Nothing to publish (a hand-edited Secret): settle back.
                state.phase = Phase::Stable;
            } else if inp.published && inp.now - state.since >= PUBLISH_SETTLE.as_secs() as i64 {
                state.previous = state.active.take().map(|a| a.cert_pem);
                state.active = state.next.take();
                state.phase = Phase::Overlap;
                state.since = inp.now;
                out.events.push((
                    "CARotationNewCAActive",
                    "every APIService trusts the new CA; the serving certificate is now issued from it".to_string(),
                ));
                out.requeue = Some(Duration::from_secs(15));
            } else {
                out.requeue = Some(Duration::from_secs(5));
            }
        }
        Phase::Overlap => {
            let overlap = inp.settings.ca_overlap.as_secs() as i64;
            let elapsed = inp.now - state.since;
            if state.previous.is_none() {
                state.phase = Phase::Stable;
            } else if inp.served_by_active && elapsed >= overlap {
                state.previous = None;
                state.phase = Phase::Stable;
                state.reason.clear();
                out.events.push((
                    "CARotationCompleted",
                    "every replica serves a certificate of the new CA; the old CA was removed from caBundle"
                        .to_string(),
                ));
            } else {
                let left = Duration::from_secs((overlap - elapsed).max(0) as u64);
                out.requeue = Some(left.clamp(Duration::from_secs(5), Duration::from_secs(15)));
            }
        }
    }
    out.state = state;
    Ok(out)
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
