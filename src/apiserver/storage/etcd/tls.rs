//! TLS to etcd (kube-apiserver's `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`): the
//! CA that signed etcd's serving certificate, and optionally a client certificate for etcd's
//! `--client-cert-auth`. rustls with aws-lc-rs, as everywhere else in the project.

use etcd_client::{Certificate, Identity, TlsOptions};

/// PEM material for TLS to etcd.
#[derive(Clone)]
pub struct EtcdTls {
    /// CA bundle that etcd's serving certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Client certificate (chain) and its private key, both PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// The client's TLS options.
    pub(super) fn options(&self) -> TlsOptions {
        let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }
}
