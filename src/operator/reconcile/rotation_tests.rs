//! Unit tests of [`super`] (rotation.rs), kept apart so the module itself stays readable.

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
