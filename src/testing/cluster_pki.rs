//! The PKI of a test control plane, written as files kube-apiserver and kube-controller-manager
//! read. Two distinct CAs, as the aggregation layer requires: reusing the cluster CA for the
//! front proxy would let any client certificate act as the front proxy.

use super::netns::Error;
use crate::crd::KeyAlgorithm;
use crate::pki::{self, CertKeyPair, LeafSpec};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lifetime of every certificate: a test run is short, a day leaves room for a slow machine.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Files and PEMs of the control plane's PKI.
#[derive(Debug)]
pub struct Pki {
    /// Cluster CA: signs kube-apiserver's serving certificate and client certificates.
    pub ca: CertKeyPair,
    /// Front-proxy CA: signs the certificate kube-apiserver presents to aggregated servers.
    pub front_proxy_ca: CertKeyPair,
    /// Admin client certificate (`CN=admin, O=system:masters`).
    pub admin: CertKeyPair,
    /// Directory holding the files below.
    pub dir: PathBuf,
}

impl Pki {
    /// `ca.crt` (also what `--client-ca-file` and `--root-ca-file` read).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A path in the PKI directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn write(dir: &Path, name: &str, content: &str) -> Result<(), Error> {
    let path = dir.join(name);
    std::fs::write(&path, content).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

fn leaf(ca: &CertKeyPair, spec: LeafSpec) -> Result<CertKeyPair, Error> {
    Ok(pki::issue_leaf(ca, &spec, LIFETIME, now())?)
}

/// Generates the PKI into `dir` for a kube-apiserver reachable at `addr` (and 127.0.0.1).
pub fn generate(dir: &Path, addr: Ipv4Addr) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir)?;
    let ca = pki::generate_ca("eao-test-cluster-ca", KeyAlgorithm::EcdsaP256, LIFETIME, now())?;
    let front_proxy_ca = pki::generate_ca("eao-test-front-proxy-ca", KeyAlgorithm::EcdsaP256, LIFETIME, now())?;
    let serving = leaf(
        &ca,
        LeafSpec {
            common_name: "kube-apiserver".into(),
            dns_names: [
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .map(String::from)
            .to_vec(),
            // 10.0.0.1: the `kubernetes` Service's ClusterIP in --service-cluster-ip-range.
            ip_addresses: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::V4(addr),
                IpAddr::from([10, 0, 0, 1]),
            ],
            server_auth: true,
            ..Default::default()
        },
    )?;
    let front_proxy_client = leaf(
        &front_proxy_ca,
        LeafSpec {
            common_name: "front-proxy-client".into(),
            client_auth: true,
            ..Default::default()
        },
    )?;
    let admin = leaf(
        &ca,
        LeafSpec {
            common_name: "admin".into(),
            organization: Some("system:masters".into()),
            client_auth: true,
            ..Default::default()
        },
    )?;
    // ServiceAccount token signing key. RSA as kubeadm makes it (rcgen generates RSA through
    // aws-lc-rs); PKCS#8 PEM, which kube-apiserver and kube-controller-manager both read.
    let sa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;

    write(dir, "ca.crt", &ca.cert_pem)?;
    write(dir, "front-proxy-ca.crt", &front_proxy_ca.cert_pem)?;
    write(dir, "apiserver.crt", &serving.cert_pem)?;
    write(dir, "apiserver.key", &serving.key_pem)?;
    write(dir, "front-proxy-client.crt", &front_proxy_client.cert_pem)?;
    write(dir, "front-proxy-client.key", &front_proxy_client.key_pem)?;
    write(dir, "sa.key", &sa.serialize_pem())?;
    write(dir, "sa.pub", &sa.public_key_pem())?;
    Ok(Pki {
        ca,
        front_proxy_ca,
        admin,
        dir: dir.to_path_buf(),
    })
}
