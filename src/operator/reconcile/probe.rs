//! Observing which serving certificate each server replica presents, so the old CA leaves
//! `caBundle` only once no replica serves a certificate it signed (not on a timer alone).
//!
//! The operator lists the Service's EndpointSlices and performs a TLS handshake with every
//! ready endpoint, the way the aggregator reaches them. The handshake only reads the
//! presented certificate; no request is sent, so accepting any certificate here trusts nothing.

use futures::future::BoxFuture;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// Where to look.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub service: String,
    /// Name of the Service port (its EndpointSlice port has the same name).
    pub port_name: String,
    /// TLS server name, `<service>.<namespace>.svc`.
    pub server_name: String,
}

/// What one endpoint presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `ip:port`.
    pub endpoint: String,
    /// The leaf certificate, DER, or why it could not be read.
    pub leaf: Result<Vec<u8>, String>,
}

/// A way to observe the served certificates; replaced in tests.
pub type LeafProbe =
    Arc<dyn Fn(Client, ProbeTarget) -> BoxFuture<'static, Result<Vec<Observed>, String>> + Send + Sync>;

/// Whether every observed replica serves a leaf signed by `ca_pem` (and at least one was observed).
pub fn all_signed_by(observed: &[Observed], ca_pem: &str) -> bool {
    let Ok(cas) = crate::pki::pem_certs_to_der(ca_pem) else {
        return false;
    };
    !observed.is_empty()
        && observed.iter().all(|o| match &o.leaf {
            Ok(der) => cas.iter().any(|ca| crate::pki::signed_by(der, ca)),
            Err(_) => false,
        })
}

/// The real probe: EndpointSlices and TLS handshakes.
pub fn tls_probe() -> LeafProbe {
    Arc::new(|client, target| Box::pin(probe(client, target)))
}

async fn probe(client: Client, target: ProbeTarget) -> Result<Vec<Observed>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client, &target.namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={}", target.service)))
        .await
        .map_err(|e| format!("cannot list EndpointSlices of {}: {e}", target.service))?;
    let mut endpoints = Vec::new();
    for slice in list.items {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(target.port_name.as_str()))
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for ep in &slice.endpoints {
            // Only ready endpoints receive traffic from the aggregator.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in &ep.addresses {
                let host = if addr.contains(':') {
                    format!("[{addr}]")
                } else {
                    addr.clone()
                };
                endpoints.push(format!("{host}:{port}"));
            }
        }
    }
    let mut observed = Vec::new();
    for endpoint in endpoints {
        let leaf = match tokio::time::timeout(Duration::from_secs(3), handshake(&endpoint, &target.server_name)).await {
            Ok(r) => r,
            Err(_) => Err("TLS handshake timed out".to_string()),
        };
        observed.push(Observed { endpoint, leaf });
    }
    Ok(observed)
}

/// Connects to `endpoint` and returns the leaf certificate it presents.
pub async fn handshake(endpoint: &str, server_name: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ObserveOnly(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {endpoint} failed: {e}"))?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| format!("{endpoint} presented no certificate"))
}

/// Accepts any certificate chain (it is only read, never trusted) but still checks the
/// handshake signatures, so the peer proves it holds the key of the certificate it presents.
#[derive(Debug)]
struct ObserveOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for ObserveOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KeyAlgorithm;
    use crate::pki;

    #[tokio::test]
    async fn handshake_reads_the_presented_leaf() {
        let ca = pki::generate_ca("ca", KeyAlgorithm::EcdsaP256, pki::DEFAULT_CA_VALIDITY, 1_800_000_000).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let leaf = pki::issue_serving(
            &ca,
            &["s.ns.svc".into()],
            KeyAlgorithm::EcdsaP256,
            pki::DEFAULT_SERVING_VALIDITY,
            now,
        )
        .unwrap();
        let der = pki::pem_certs_to_der(&leaf.cert_pem).unwrap().remove(0);
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            x509_parser::pem::parse_x509_pem(leaf.key_pem.as_bytes())
                .unwrap()
                .1
                .contents,
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(der.clone())], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let got = handshake(&addr.to_string(), "s.ns.svc").await.unwrap();
        assert_eq!(got, der);
        let observed = vec![Observed {
            endpoint: addr.to_string(),
            leaf: Ok(got),
        }];
        assert!(all_signed_by(&observed, &ca.cert_pem));
        let other = pki::generate_ca(
            "other",
            KeyAlgorithm::EcdsaP256,
            pki::DEFAULT_CA_VALIDITY,
            1_800_000_000,
        )
        .unwrap();
        assert!(!all_signed_by(&observed, &other.cert_pem));
        assert!(!all_signed_by(&[], &ca.cert_pem), "no replica observed is not proof");
        assert!(handshake("127.0.0.1:1", "s.ns.svc").await.is_err());
    }
}
