//! Unit tests of [`super`] (pki.rs), kept apart so the module itself stays readable.

use super::*;
use x509_parser::extensions::ParsedExtension;

const NOW: i64 = 1_800_000_000;

fn ca() -> CertKeyPair {
    generate_ca("test-ca", KeyAlgorithm::EcdsaP256, DEFAULT_CA_VALIDITY, NOW).unwrap()
}

fn names() -> Vec<String> {
    service_dns_names("wardle", "wardle-system")
}

#[test]
fn ca_is_a_constrained_signing_ca() {
    let ca = ca();
    let der = &pem_certs_to_der(&ca.cert_pem).unwrap()[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(signed_by(der, der), "a CA is self-signed");
    let facts = inspect(&ca.cert_pem).unwrap();
    assert_eq!(facts.not_after - NOW, DEFAULT_CA_VALIDITY.as_secs() as i64);
    assert_eq!(facts.key_algorithm, Some(KeyAlgorithm::EcdsaP256));
    assert!(key_matches(&facts, &ca.key_pem));
}

#[test]
fn serving_cert_has_service_names_usage_and_validity() {
    let ca = ca();
    let leaf = issue_serving(&ca, &names(), KeyAlgorithm::EcdsaP256, DEFAULT_SERVING_VALIDITY, NOW).unwrap();
    let der = &pem_certs_to_der(&leaf.cert_pem).unwrap()[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let facts = inspect_der(der).unwrap();
    assert_eq!(
        facts.dns_names,
        vec!["wardle.wardle-system.svc", "wardle.wardle-system.svc.cluster.local"]
    );
    assert_eq!(facts.common_name.as_deref(), Some("wardle.wardle-system.svc"));
    assert!(!facts.is_ca);
    assert_eq!(facts.not_before, NOW - CLOCK_SKEW.as_secs() as i64);
    assert_eq!(facts.not_after, NOW + DEFAULT_SERVING_VALIDITY.as_secs() as i64);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let has_aki = cert
        .extensions()
        .iter()
        .any(|e| matches!(e.parsed_extension(), ParsedExtension::AuthorityKeyIdentifier(_)));
    assert!(has_aki);
    let ca_der = &pem_certs_to_der(&ca.cert_pem).unwrap()[0];
    assert!(signed_by(der, ca_der));
    let other = generate_ca("other", KeyAlgorithm::EcdsaP256, DEFAULT_CA_VALIDITY, NOW).unwrap();
    assert!(!signed_by(der, &pem_certs_to_der(&other.cert_pem).unwrap()[0]));
}

#[test]
fn rsa_keys_are_supported() {
    let ca = generate_ca("rsa-ca", KeyAlgorithm::Rsa2048, DEFAULT_CA_VALIDITY, NOW).unwrap();
    let leaf = issue_serving(&ca, &names(), KeyAlgorithm::Rsa2048, DEFAULT_SERVING_VALIDITY, NOW).unwrap();
    let facts = inspect(&leaf.cert_pem).unwrap();
    assert_eq!(facts.key_algorithm, Some(KeyAlgorithm::Rsa2048));
    assert!(key_matches(&facts, &leaf.key_pem));
    let der = &pem_certs_to_der(&leaf.cert_pem).unwrap()[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    assert!(cert.key_usage().unwrap().unwrap().value.key_encipherment());
}

#[test]
fn serials_and_fingerprints_differ_between_issues() {
    let ca = ca();
    let a = inspect(
        &issue_serving(&ca, &names(), KeyAlgorithm::EcdsaP256, DEFAULT_SERVING_VALIDITY, NOW)
            .unwrap()
            .cert_pem,
    )
    .unwrap();
    let b = inspect(
        &issue_serving(&ca, &names(), KeyAlgorithm::EcdsaP256, DEFAULT_SERVING_VALIDITY, NOW)
            .unwrap()
            .cert_pem,
    )
    .unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
    assert_ne!(a.sha256_hex, b.sha256_hex);
    assert_eq!(a.sha256_hex.len(), 64);
}

#[test]
fn renewal_happens_at_two_thirds_of_lifetime() {
    let ca = ca();
    let leaf = issue_serving(&ca, &names(), KeyAlgorithm::EcdsaP256, DEFAULT_SERVING_VALIDITY, NOW).unwrap();
    let facts = inspect(&leaf.cert_pem).unwrap();
    let renew = facts.renew_at();
    let alg = KeyAlgorithm::EcdsaP256;
    assert!(check_serving(Some(&leaf), &ca.cert_pem, &names(), alg, None, renew - 1).is_ok());
    assert_eq!(
        check_serving(Some(&leaf), &ca.cert_pem, &names(), alg, None, renew),
        Err(ReissueReason::Expiring)
    );
    assert!(check_ca(Some(&ca), alg, None, NOW).is_ok());
    let ca_facts = inspect(&ca.cert_pem).unwrap();
    assert_eq!(
        check_ca(Some(&ca), alg, None, ca_facts.renew_at()),
        Err(ReissueReason::Expiring)
    );
}

#[test]
fn reissue_reasons() {
    let ca = ca();
    let alg = KeyAlgorithm::EcdsaP256;
    let leaf = issue_serving(&ca, &names(), alg, DEFAULT_SERVING_VALIDITY, NOW).unwrap();
    assert_eq!(
        check_serving(None, &ca.cert_pem, &names(), alg, None, NOW),
        Err(ReissueReason::Missing)
    );
    let other_names = service_dns_names("other", "wardle-system");
    assert_eq!(
        check_serving(Some(&leaf), &ca.cert_pem, &other_names, alg, None, NOW),
        Err(ReissueReason::NamesChanged)
    );
    assert_eq!(
        check_serving(Some(&leaf), &ca.cert_pem, &names(), KeyAlgorithm::Rsa2048, None, NOW),
        Err(ReissueReason::KeyAlgorithmChanged)
    );
    let other_ca = generate_ca("other", alg, DEFAULT_CA_VALIDITY, NOW).unwrap();
    assert_eq!(
        check_serving(Some(&leaf), &other_ca.cert_pem, &names(), alg, None, NOW),
        Err(ReissueReason::IssuerChanged)
    );
    // A bundle holding both CAs still accepts the leaf.
    let bundle = format!("{}{}", other_ca.cert_pem, ca.cert_pem);
    assert!(check_serving(Some(&leaf), &bundle, &names(), alg, None, NOW).is_ok());
    let swapped = CertKeyPair {
        cert_pem: leaf.cert_pem.clone(),
        key_pem: other_ca.key_pem.clone(),
    };
    assert!(matches!(
        check_serving(Some(&swapped), &ca.cert_pem, &names(), alg, None, NOW),
        Err(ReissueReason::Corrupt(_))
    ));
    let garbage = CertKeyPair {
        cert_pem: "not a pem".into(),
        key_pem: String::new(),
    };
    assert!(matches!(
        check_ca(Some(&garbage), alg, None, NOW),
        Err(ReissueReason::Corrupt(_))
    ));
    assert!(matches!(
        check_ca(Some(&leaf), alg, None, NOW),
        Err(ReissueReason::Corrupt(_))
    ));
}

#[test]
fn go_durations_parse() {
    assert_eq!(parse_duration("2160h").unwrap(), DEFAULT_SERVING_VALIDITY);
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert!(parse_duration("ninety days").is_err());
    assert!(parse_duration("-1h").is_err());
}

#[test]
fn debug_output_hides_private_key() {
    let ca = ca();
    assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
}
