//! Certificates: generating the CA and the serving certificate, and reading back what a
//! Secret holds so the operator can decide whether anything must be reissued.
//!
//! Everything here is pure (no client, no clock of its own): `now` is passed in, so the
//! renewal rules can be tested against any instant.

use crate::crd::KeyAlgorithm;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, RsaKeySize, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::time::Duration;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Default lifetime of a generated CA: 5 years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Default lifetime of a serving certificate: 90 days.
pub const DEFAULT_SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates are back-dated by this much so a node whose clock is slightly behind accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not build or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM or DER blob could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertKeyPair {
    // Never print key material, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKeyPair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What the operator needs to know about an existing certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256_hex: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
    /// The key algorithm, when it is one we generate.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// DER SubjectPublicKeyInfo, to match against a private key.
    pub spki_der: Vec<u8>,
    /// Subject common name.
    pub common_name: Option<String>,
}

impl CertFacts {
    /// RFC 3339 form of `not_after`.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// When the certificate should be renewed: when a third of its lifetime remains.
    pub fn renew_at(&self) -> i64 {
        self.renew_at_with(None)
    }

    /// When the certificate should be renewed: `renew_before` its end, or when a third of its
    /// lifetime remains if that is not set.
    pub fn renew_at_with(&self, renew_before: Option<Duration>) -> i64 {
        match renew_before {
            Some(d) => self.not_after - d.as_secs() as i64,
            None => self.not_after - (self.not_after - self.not_before) / 3,
        }
    }
}

/// Formats Unix seconds as RFC 3339 (UTC, second precision).
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, PkiError> {
    Ok(match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?,
        KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)?,
    })
}

/// A positive 128-bit serial derived from the fresh key and the issuing instant, so two
/// certificates never share one (RFC 5280 asks for unique, positive serials of at most 20 bytes).
fn serial_for(key: &KeyPair, now_unix: i64, label: &str) -> SerialNumber {
    let mut h = Sha256::new();
    h.update(key.subject_public_key_info());
    h.update(now_unix.to_be_bytes());
    h.update(label.as_bytes());
    let digest = h.finalize();
    let mut bytes = digest[..16].to_vec();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the DER length is stable
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, now_unix: i64, lifetime: Duration) -> Result<(), PkiError> {
    let start = now_unix - CLOCK_SKEW.as_secs() as i64;
    let end = now_unix + lifetime.as_secs() as i64;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(start).map_err(|e| PkiError::Parse(e.to_string()))?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(end).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(())
}

/// Generates a self-signed CA that may sign leaf certificates only (path length 0).
pub fn generate_ca(
    common_name: &str,
    alg: KeyAlgorithm,
    lifetime: Duration,
    now_unix: i64,
) -> Result<CertKeyPair, PkiError> {
    let key = generate_key(alg)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "extension-apiserver-operator");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial_for(&key, now_unix, common_name));
    validity(&mut params, now_unix, lifetime)?;
    let cert = params.self_signed(&key)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a TLS server certificate for `dns_names` (the first is also the CN), signed by `ca`.
pub fn issue_serving(
    ca: &CertKeyPair,
    dns_names: &[String],
    alg: KeyAlgorithm,
    lifetime: Duration,
    now_unix: i64,
) -> Result<CertKeyPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = generate_key(alg)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    params.subject_alt_names = dns_names
        .iter()
        .map(|n| Ok(SanType::DnsName(n.as_str().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match alg {
        // RSA key transport needs keyEncipherment; ECDSA only signs.
        KeyAlgorithm::EcdsaP256 => vec![KeyUsagePurpose::DigitalSignature],
        _ => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial_for(&key, now_unix, &dns_names.join(",")));
    validity(&mut params, now_unix, lifetime)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a leaf certificate issued by [`issue_leaf`] says about its subject and use.
#[derive(Clone, Debug, Default)]
pub struct LeafSpec {
    /// Subject CN (the user name of a client certificate).
    pub common_name: String,
    /// Subject O (the group of a client certificate). rcgen keeps one value per attribute
    /// type, so one group only.
    pub organization: Option<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Adds the serverAuth extended key usage.
    pub server_auth: bool,
    /// Adds the clientAuth extended key usage.
    pub client_auth: bool,
}

/// Issues a leaf certificate (ECDSA P-256) for `spec`, signed by `ca`: client certificates for the
/// front-proxy and client-CA paths, and serving certificates that name IP addresses (standalone
/// mode on localhost, test servers on 127.0.0.1).
pub fn issue_leaf(
    ca: &CertKeyPair,
    spec: &LeafSpec,
    lifetime: Duration,
    now_unix: i64,
) -> Result<CertKeyPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = generate_key(KeyAlgorithm::EcdsaP256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    if let Some(o) = &spec.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    params.distinguished_name = dn;
    let mut sans = Vec::new();
    for n in &spec.dns_names {
        sans.push(SanType::DnsName(n.as_str().try_into()?));
    }
    sans.extend(spec.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.server_auth {
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client_auth {
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial_for(&key, now_unix, &spec.common_name));
    validity(&mut params, now_unix, lifetime)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Decodes every `CERTIFICATE` block of a PEM bundle into DER.
pub fn pem_certs_to_der(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::Parse(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(PkiError::Parse("no CERTIFICATE block in PEM".into()));
    }
    Ok(out)
}

/// Reads the facts of the first certificate in a PEM blob.
pub fn inspect(cert_pem: &str) -> Result<CertFacts, PkiError> {
    let ders = pem_certs_to_der(cert_pem)?;
    inspect_der(&ders[0])
}

/// Reads the facts of a DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertFacts, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                dns_names.push((*n).to_string());
            }
        }
    }
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let spki = cert.public_key();
    let key_algorithm = key_algorithm_of(spki);
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertFacts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial_hex: hex(cert.raw_serial()),
        sha256_hex: hex(&Sha256::digest(der)),
        dns_names,
        is_ca,
        key_algorithm,
        spki_der: spki.raw.to_vec(),
        common_name,
    })
}

fn key_algorithm_of(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<KeyAlgorithm> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed().ok()? {
        PublicKey::EC(point) if point.key_size() == 256 => Some(KeyAlgorithm::EcdsaP256),
        PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(KeyAlgorithm::Rsa2048),
            4096 => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `key_pem` is the private key of the certificate described by `facts`.
pub fn key_matches(facts: &CertFacts, key_pem: &str) -> bool {
    match KeyPair::from_pem(key_pem) {
        Ok(key) => key.subject_public_key_info() == facts.spki_der,
        Err(_) => false,
    }
}

/// Whether the certificate `leaf_der` carries a valid signature by `ca_der`'s key.
pub fn signed_by(leaf_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, leaf)), Ok((_, ca))) = (X509Certificate::from_der(leaf_der), X509Certificate::from_der(ca_der)) else {
        return false;
    };
    leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a certificate must be (re)issued. `None` from the check functions means "keep it".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReissueReason {
    /// Nothing stored yet.
    Missing,
    /// Stored data cannot be parsed or the key does not belong to the certificate.
    Corrupt(String),
    /// A third or less of the lifetime remains, or it has expired.
    Expiring,
    /// The configured key algorithm differs from the certificate's.
    KeyAlgorithmChanged,
    /// The DNS names differ from the service's names.
    NamesChanged,
    /// The serving certificate is not signed by the current CA.
    IssuerChanged,
    /// Asked for with the `aggregation.dev/rotate` annotation.
    Requested,
}

impl std::fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReissueReason::Missing => write!(f, "no certificate stored yet"),
            ReissueReason::Corrupt(e) => write!(f, "stored certificate is unusable: {e}"),
            ReissueReason::Expiring => write!(f, "a third or less of its lifetime remains"),
            ReissueReason::KeyAlgorithmChanged => write!(f, "key algorithm changed"),
            ReissueReason::NamesChanged => write!(f, "DNS names changed"),
            ReissueReason::IssuerChanged => write!(f, "not signed by the current CA"),
            ReissueReason::Requested => write!(f, "requested with aggregation.dev/rotate"),
        }
    }
}

/// Decides whether a stored CA can be kept.
pub fn check_ca(
    stored: Option<&CertKeyPair>,
    alg: KeyAlgorithm,
    renew_before: Option<Duration>,
    now_unix: i64,
) -> Result<CertFacts, ReissueReason> {
    let stored = stored.ok_or(ReissueReason::Missing)?;
    let facts = inspect(&stored.cert_pem).map_err(|e| ReissueReason::Corrupt(e.to_string()))?;
    if !facts.is_ca {
        return Err(ReissueReason::Corrupt("certificate is not a CA".into()));
    }
    if !key_matches(&facts, &stored.key_pem) {
        return Err(ReissueReason::Corrupt(
            "private key does not match the certificate".into(),
        ));
    }
    if facts.key_algorithm != Some(alg) {
        return Err(ReissueReason::KeyAlgorithmChanged);
    }
    if now_unix >= facts.renew_at_with(renew_before) {
        return Err(ReissueReason::Expiring);
    }
    Ok(facts)
}

/// Decides whether a stored serving certificate can be kept, given the current CA.
pub fn check_serving(
    stored: Option<&CertKeyPair>,
    ca_pem: &str,
    dns_names: &[String],
    alg: KeyAlgorithm,
    renew_before: Option<Duration>,
    now_unix: i64,
) -> Result<CertFacts, ReissueReason> {
    let stored = stored.ok_or(ReissueReason::Missing)?;
    let ders = pem_certs_to_der(&stored.cert_pem).map_err(|e| ReissueReason::Corrupt(e.to_string()))?;
    let facts = inspect_der(&ders[0]).map_err(|e| ReissueReason::Corrupt(e.to_string()))?;
    if !key_matches(&facts, &stored.key_pem) {
        return Err(ReissueReason::Corrupt(
            "private key does not match the certificate".into(),
        ));
    }
    if facts.key_algorithm != Some(alg) {
        return Err(ReissueReason::KeyAlgorithmChanged);
    }
    let mut have = facts.dns_names.clone();
    let mut want = dns_names.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return Err(ReissueReason::NamesChanged);
    }
    let ca_ders = pem_certs_to_der(ca_pem).map_err(|e| ReissueReason::Corrupt(e.to_string()))?;
    if !ca_ders.iter().any(|ca| signed_by(&ders[0], ca)) {
        return Err(ReissueReason::IssuerChanged);
    }
    if now_unix >= facts.renew_at_with(renew_before) {
        return Err(ReissueReason::Expiring);
    }
    Ok(facts)
}

/// The DNS names a serving certificate for `service` in `namespace` must carry.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Parses a Go-style duration (`90h`, `2160h`, `1h30m`, `45s`), as Kubernetes writes them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_negative() {
        return Err(format!("duration {s:?} must not be negative"));
    }
    Ok(d.into())
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
