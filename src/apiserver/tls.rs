//! TLS: the rustls server configuration, the serving certificate with hot reload, and the
//! in-application client-certificate chain checks.
//!
//! Client certificates are *requested but optional* at the handshake so that bearer-token and
//! anonymous clients can connect. The handshake only proves possession of the key; which CA
//! (request-header or client CA) the chain leads to is decided per request by [`ChainVerifier`],
//! because those CAs come from a ConfigMap that changes at runtime.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Errors of TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// PEM content is unusable.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
}

/// The one crypto provider of the process (aws-lc-rs, as kube and rcgen use).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses every certificate of a PEM bundle.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("invalid certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Builds the serving key from PEM, refusing a key that does not belong to the certificate.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = parse_certs(cert_pem)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(format!("invalid private key PEM: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Pem(format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| TlsError::Pem(format!("private key does not match the certificate: {e}")))?;
    Ok(Arc::new(ck))
}

/// The serving certificate currently in use. New handshakes read it; open connections keep
/// the one they started with.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    /// Starts with `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(ServingCert {
            current: RwLock::new(key),
        })
    }

    /// Replaces the certificate for new connections.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panicking writer; the value is still a whole Arc.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The certificate for the next handshake.
    pub fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Loads the cert/key files; the start-up check and every reload go through here.
pub fn load_files(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, [u8; 32]), TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let digest: [u8; 32] = Sha256::new()
        .chain_update(&cert_pem)
        .chain_update(&key_pem)
        .finalize()
        .into();
    let ck = certified_key(&cert_pem, &key_pem).map_err(|e| match e {
        TlsError::Pem(m) => TlsError::Pem(format!("{} / {}: {m}", cert.display(), key.display())),
        other => other,
    })?;
    Ok((ck, digest))
}

/// Polls the files and swaps the certificate when their content changes. Polling (rather than
/// inotify) follows the symlink swaps kubelet does on mounted Secrets without special cases.
pub async fn watch_files(
    serving: Arc<ServingCert>,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    mut last: [u8; 32],
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Ok(c), Ok(k)) = (std::fs::read(&cert), std::fs::read(&key)) else {
            continue;
        };
        let digest: [u8; 32] = Sha256::new().chain_update(&c).chain_update(&k).finalize().into();
        if digest == last {
            continue;
        }
        match certified_key(&c, &k) {
            Ok(ck) => {
                serving.set(ck);
                last = digest;
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
            }
            // Half-written files during a swap: keep serving the old pair and retry next tick.
            Err(e) => tracing::warn!(error = %e, "serving certificate files changed but are not usable yet"),
        }
    }
}

/// The rustls configuration: h2 and http/1.1, optional client certificates.
pub fn server_config(serving: Arc<ServingCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyClientCert {
        provider: provider.clone(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any client certificate whose holder proves possession of the key; the chain is
/// checked later against the CA that applies (see the module comment).
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go clients then send their certificate whatever CA signed it.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies a presented client chain against one CA bundle, for client-auth use.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ChainVerifier {
    /// A verifier trusting every certificate of the PEM bundle.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(pem)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Pem(format!("unusable CA certificate: {e}")))?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Pem(format!("cannot build client verifier: {e}")))?;
        Ok(ChainVerifier { inner })
    }

    /// Whether `chain` (leaf first) chains to the bundle, is valid now and allows client auth.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        self.inner
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

/// Subject CN and O values of a DER certificate.
pub fn subject_names(der: &[u8]) -> (String, Vec<String>) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return (String::new(), Vec::new());
    };
    // The last CN, as Go's `Subject.CommonName` reads it (the same one kube-apiserver checks).
    let cn = cert
        .subject()
        .iter_common_name()
        .last()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let orgs = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    (cn, orgs)
}

/// Files of a generated self-signed setup in `--cert-dir`.
#[derive(Debug, Clone)]
pub struct GeneratedCerts {
    /// The CA to trust (`kubectl --certificate-authority`).
    pub ca: PathBuf,
    /// Serving certificate.
    pub cert: PathBuf,
    /// Serving key.
    pub key: PathBuf,
}

/// Reuses or generates a CA and a serving certificate for localhost in `dir`, so a local
/// kubectl can trust the server with `certificate-authority: <dir>/ca.crt`.
pub fn ensure_self_signed(dir: &Path) -> Result<GeneratedCerts, TlsError> {
    use crate::crd::KeyAlgorithm;
    use crate::pki;
    let files = GeneratedCerts {
        ca: dir.join("ca.crt"),
        cert: dir.join("apiserver.crt"),
        key: dir.join("apiserver.key"),
    };
    if load_files(&files.cert, &files.key).is_ok() && files.ca.exists() {
        return Ok(files);
    }
    let io = |source, path: &Path| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let now = jiff::Timestamp::now().as_second();
    let ca = pki::generate_ca(
        "extension-apiserver-standalone-ca",
        KeyAlgorithm::EcdsaP256,
        pki::DEFAULT_CA_VALIDITY,
        now,
    )?;
    let spec = pki::LeafSpec {
        common_name: "localhost".into(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
        server_auth: true,
        ..Default::default()
    };
    let leaf = pki::issue_leaf(&ca, &spec, pki::DEFAULT_SERVING_VALIDITY, now)?;
    std::fs::write(&files.ca, &ca.cert_pem).map_err(|e| io(e, &files.ca))?;
    std::fs::write(&files.cert, &leaf.cert_pem).map_err(|e| io(e, &files.cert))?;
    write_private(&files.key, leaf.key_pem.as_bytes()).map_err(|e| io(e, &files.key))?;
    Ok(files)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
