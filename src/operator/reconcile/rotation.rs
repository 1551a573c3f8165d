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

use crate::operator::reconcile::validate::CertSettings;
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
mod tests {
    use super::*;
    use crate::crd::KeyAlgorithm;

    const T0: i64 = 1_800_000_000;

    fn settings() -> CertSettings {
        CertSettings::default()
    }

    fn inputs(s: &CertSettings, now: i64) -> Inputs<'_> {
        Inputs {
            now,
            settings: s,
            common_name: "test-ca",
            force: false,
            external: None,
            published: false,
            published_bundle: None,
            served_by_active: false,
        }
    }

    fn leaf_of(state: &CaState, now: i64) -> String {
        let signer = signer(state, None).unwrap();
        pki::issue_serving(
            &signer,
            &["x.y.svc".to_string()],
            KeyAlgorithm::EcdsaP256,
            pki::DEFAULT_SERVING_VALIDITY,
            now,
        )
        .unwrap()
        .cert_pem
    }

    fn trusted(bundle: &[String], leaf_pem: &str) -> bool {
        let leaf = &pki::pem_certs_to_der(leaf_pem).unwrap()[0];
        bundle
            .iter()
            .any(|ca| pki::signed_by(leaf, &pki::pem_certs_to_der(ca).unwrap()[0]))
    }

    #[test]
    fn state_round_trips_through_the_secret() {
        let s = settings();
        let mut state = step(CaState::default(), &inputs(&s, T0)).unwrap().state;
        let mut i = inputs(&s, T0 + 1);
        i.force = true;
        state = step(state, &i).unwrap().state;
        assert_eq!(state.phase, Phase::Publishing);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                annotations: Some(state.to_annotations()),
                ..Default::default()
            },
            data: Some(state.to_data()),
            ..Default::default()
        };
        assert_eq!(CaState::from_secret(Some(&secret)), state);
    }

    /// Drives a full forced rotation with a fake clock and simulated replicas, checking after
    /// every step that every leaf any replica serves is trusted by the published bundle.
    #[test]
    fn forced_rotation_never_drops_a_ca_that_signed_a_served_leaf() {
        let s = settings();
        let mut now = T0;
        let first = step(CaState::default(), &inputs(&s, now)).unwrap();
        assert_eq!(first.events[0].0, "CAIssued");
        let mut state = first.state;
        let mut published: Vec<String> = state.bundle();
        // Two replicas; each picks up the current leaf only some time after it is issued
        // (kubelet's delayed Secret updates): replica i lags i*90 s.
        let mut current_leaf = leaf_of(&state, now);
        let mut issued_at = now;
        let mut served = [current_leaf.clone(), current_leaf.clone()];
        let mut force = true;
        let mut phases = vec![state.phase];
        for _ in 0..200 {
            now += 5;
            for (i, s) in served.iter_mut().enumerate() {
                if now - issued_at >= (i as i64 + 1) * 90 {
                    *s = current_leaf.clone();
                }
            }
            let served_by_active = served.iter().all(|l| {
                let leaf = &pki::pem_certs_to_der(l).unwrap()[0];
                let ca = &pki::pem_certs_to_der(&state.active.as_ref().unwrap().cert_pem).unwrap()[0];
                pki::signed_by(leaf, ca)
            });
            let mut i = inputs(&s, now);
            i.force = force;
            i.published = published == state.bundle();
            i.served_by_active = served_by_active;
            let out = step(state.clone(), &i).unwrap();
            if out.force_consumed {
                force = false;
            }
            state = out.state;
            if *phases.last().unwrap() != state.phase {
                phases.push(state.phase);
            }
            // The operator writes the Secret, then the APIServices: publish this step's bundle.
            published = state.bundle();
            // A leaf is reissued when the active CA no longer signed the current leaf.
            if !trusted(&[state.active.as_ref().unwrap().cert_pem.clone()], &current_leaf) {
                current_leaf = leaf_of(&state, now);
                issued_at = now;
                assert!(
                    trusted(&published, &current_leaf),
                    "a new leaf's CA must already be published"
                );
            }
            for leaf in &served {
                assert!(
                    trusted(&published, leaf),
                    "phase {:?}: a served leaf is not trusted by the published bundle",
                    state.phase
                );
            }
        }
        assert_eq!(
            phases,
            [Phase::Stable, Phase::Publishing, Phase::Overlap, Phase::Stable]
        );
        assert_eq!(state.bundle().len(), 1);
        assert!(state.previous.is_none());
    }

    #[test]
    fn overlap_waits_for_observation_not_just_time() {
        let s = settings();
        let state = step(CaState::default(), &inputs(&s, T0)).unwrap().state;
        let mut i = inputs(&s, T0);
        i.force = true;
        let state = step(state, &i).unwrap().state;
        let mut i = inputs(&s, T0 + 5);
        i.published = true;
        assert_eq!(
            step(state.clone(), &i).unwrap().state.phase,
            Phase::Publishing,
            "settle time first"
        );
        i.now = T0 + 10;
        let overlap = step(state, &i).unwrap().state;
        assert_eq!(overlap.phase, Phase::Overlap);
        // Long after the minimum overlap, but one replica still serves the old leaf.
        let mut i = inputs(&s, T0 + 10 + 3600);
        i.served_by_active = false;
        let out = step(overlap.clone(), &i).unwrap();
        assert_eq!(out.state.phase, Phase::Overlap);
        assert_eq!(out.state.bundle().len(), 2);
        // Observed, but the minimum overlap has not passed.
        let mut i = inputs(&s, T0 + 10 + 60);
        i.served_by_active = true;
        assert_eq!(step(overlap.clone(), &i).unwrap().state.phase, Phase::Overlap);
        i.now = T0 + 10 + 600;
        let done = step(overlap, &i).unwrap();
        assert_eq!(done.state.phase, Phase::Stable);
        assert_eq!(done.events[0].0, "CARotationCompleted");
    }

    #[test]
    fn publishing_waits_until_the_bundle_is_read_back() {
        let s = settings();
        let state = step(CaState::default(), &inputs(&s, T0)).unwrap().state;
        let mut i = inputs(&s, T0);
        i.force = true;
        let publishing = step(state, &i).unwrap().state;
        let i = inputs(&s, T0 + 3600);
        assert_eq!(step(publishing, &i).unwrap().state.phase, Phase::Publishing);
    }

    #[test]
    fn expiry_starts_a_rotation_and_a_fresh_ca_does_not() {
        let s = settings();
        let state = step(CaState::default(), &inputs(&s, T0)).unwrap().state;
        let same = step(state.clone(), &inputs(&s, T0 + 86400)).unwrap();
        assert_eq!(same.state, state, "nothing happens to a fresh CA");
        assert!(same.events.is_empty());
        let facts = pki::inspect(&state.active.as_ref().unwrap().cert_pem).unwrap();
        let out = step(state, &inputs(&s, facts.renew_at())).unwrap();
        assert_eq!(out.state.phase, Phase::Publishing);
        assert!(out.state.reason.contains("third"), "{}", out.state.reason);
    }

    #[test]
    fn external_ca_changes_rotate_with_overlap() {
        let s = settings();
        let user1 = pki::generate_ca("user-1", KeyAlgorithm::EcdsaP256, pki::DEFAULT_CA_VALIDITY, T0).unwrap();
        let user2 = pki::generate_ca("user-2", KeyAlgorithm::EcdsaP256, pki::DEFAULT_CA_VALIDITY, T0).unwrap();
        let mut i = inputs(&s, T0);
        i.external = Some(&user1);
        let state = step(CaState::default(), &i).unwrap().state;
        assert_eq!(state.active.as_ref().unwrap().cert_pem, user1.cert_pem);
        assert!(
            state.active.as_ref().unwrap().key_pem.is_none(),
            "the user's key is not copied"
        );
        assert_eq!(signer(&state, Some(&user1)).unwrap().key_pem, user1.key_pem);
        i.external = Some(&user2);
        let out = step(state, &i).unwrap();
        assert_eq!(out.state.phase, Phase::Publishing);
        assert_eq!(out.state.bundle(), vec![user1.cert_pem.clone(), user2.cert_pem.clone()]);
        assert!(
            signer(&out.state, Some(&user2)).is_none(),
            "nothing is signed before the new CA is published"
        );
        let mut p = inputs(&s, T0 + 10);
        p.external = Some(&user2);
        p.published = true;
        let overlap = step(out.state.clone(), &p).unwrap().state;
        assert_eq!(overlap.phase, Phase::Overlap);
        assert_eq!(signer(&overlap, Some(&user2)).unwrap().key_pem, user2.key_pem);
        let bad = CertKeyPair {
            cert_pem: user1.cert_pem.clone(),
            key_pem: user2.key_pem.clone(),
        };
        i.external = Some(&bad);
        let out = step(out.state, &i).unwrap();
        assert!(out.problem.unwrap().contains("not the private key"));
    }

    #[test]
    fn a_ca_that_lost_its_key_is_rotated_with_overlap() {
        let s = settings();
        let mut state = step(CaState::default(), &inputs(&s, T0)).unwrap().state;
        let old = state.active.as_ref().unwrap().cert_pem.clone();
        state.active.as_mut().unwrap().key_pem = None;
        let out = step(state, &inputs(&s, T0 + 60)).unwrap();
        assert_eq!(out.state.phase, Phase::Publishing, "never an immediate swap");
        assert_eq!(out.state.bundle()[0], old, "the old CA stays published");
        assert_eq!(out.state.bundle().len(), 2);
        assert!(signer(&out.state, None).is_none());
        assert!(next_signer(&out.state, None).is_some());
    }

    #[test]
    fn a_lost_ca_secret_keeps_the_published_bundle_trusted() {
        let s = settings();
        let published = step(CaState::default(), &inputs(&s, T0)).unwrap().state.bundle_pem();
        let mut i = inputs(&s, T0 + 60);
        i.published_bundle = Some(&published);
        let out = step(CaState::default(), &i).unwrap();
        assert_eq!(out.state.phase, Phase::Overlap);
        assert_eq!(out.state.previous.as_deref(), Some(published.as_str()));
        assert!(out.state.bundle_pem().ends_with(&published));
    }

    #[test]
    fn a_request_during_a_rotation_is_answered_once() {
        let s = settings();
        let state = step(CaState::default(), &inputs(&s, T0)).unwrap().state;
        let mut i = inputs(&s, T0);
        i.force = true;
        let publishing = step(state, &i).unwrap().state;
        let again = step(publishing.clone(), &i).unwrap();
        assert!(again.force_consumed);
        assert_eq!(again.state, publishing, "no second rotation is started");
        assert_eq!(again.events[0].0, "CARotationInProgress");
    }
}
