//! Test and benchmark support: certificates, a TLS HTTP client that can present client
//! certificates and speak HTTP/1.1 or HTTP/2, raw HTTP/1.1 requests, and a starter for the real
//! `extension-apiserver --standalone` binary. The kube-apiserver double lives in
//! [`super::kube_double`] and is re-exported here.
//!
//! It lives in the library (not under `tests/`) so the `eas-bench` binary can use it too.

use crate::pki::CertKeyPair;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

pub use super::certs::*;
pub use super::kube_double::*;

/// One HTTP connection to a server.
pub enum Conn {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// What a connection learned at the handshake.
pub struct Connected {
    /// The connection.
    pub conn: Conn,
    /// The server's leaf certificate.
    pub server_cert: Vec<u8>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

/// A TLS stream to `addr` trusting `ca_pem`, presenting `identity` when given, offering the
/// ALPN protocols `alpn`.
pub async fn tls_stream(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&CertKeyPair>,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::apiserver::tls::parse_certs(ca_pem.as_bytes())? {
        roots.add(c)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::apiserver::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => {
            let chain = crate::apiserver::tls::parse_certs(id.cert_pem.as_bytes())?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?)
}

/// Opens a TLS connection to `addr` trusting `ca_pem`, presenting `identity` when given,
/// offering only h2 when `h2` is set and only http/1.1 otherwise.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&CertKeyPair>,
    h2: bool,
) -> Result<Connected, Error> {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let tls = tls_stream(addr, ca_pem, identity, &[alpn]).await?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let conn = if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Conn::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Conn::H1(send)
    };
    Ok(Connected {
        conn,
        server_cert,
        alpn,
    })
}

use rustls::pki_types::pem::PemObject;

impl Conn {
    /// Sends a request and returns the response head with the body still streaming.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
        Ok(match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, http::HeaderMap, Bytes), Error> {
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

/// A GET request for `path` with `headers`.
pub fn get(path: &str, headers: &[(&str, &str)]) -> Result<Request<Full<Bytes>>, Error> {
    let mut b = Request::get(path).header("host", "127.0.0.1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(Full::new(Bytes::new()))?)
}

/// Certificates of a server under test, written into a directory.
pub struct ServingFiles {
    /// The CA that signed the serving certificate.
    pub ca: CertKeyPair,
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
}

/// Writes a CA-signed serving certificate for 127.0.0.1 into `dir`.
pub fn write_serving_files(dir: &Path) -> Result<ServingFiles, Error> {
    let ca = ca("serving-ca")?;
    let leaf = serving_cert(&ca)?;
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, leaf.cert_pem)?;
    std::fs::write(&key, leaf.key_pem)?;
    Ok(ServingFiles { ca, cert, key })
}

/// The server's leaf certificate DER from a PEM file (to compare with what a handshake saw).
pub fn leaf_der(pem_path: &Path) -> Result<CertificateDer<'static>, Error> {
    let pem = std::fs::read(pem_path)?;
    crate::apiserver::tls::parse_certs(&pem)?
        .into_iter()
        .next()
        .ok_or_else(|| "no certificate".into())
}

/// Writes `request` on a fresh HTTP/1.1 TLS connection and reads until the server closes it
/// (or `wait` passes). Odd paths and upgrade headers are sent exactly as written.
pub async fn raw_http1(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&CertKeyPair>,
    request: &[u8],
    wait: Duration,
) -> Result<(String, bool), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_stream(addr, ca_pem, identity, &[b"http/1.1"]).await?;
    tls.write_all(request).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(wait, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Ok((String::from_utf8_lossy(&out).into_owned(), closed))
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it right after).
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The real `extension-apiserver --standalone` binary, started by [`start_standalone`].
pub struct Standalone {
    /// Where it listens.
    pub addr: SocketAddr,
    /// PEM of the CA it generated for its serving certificate.
    pub ca: String,
    /// The process (killed when dropped).
    pub child: tokio::process::Child,
}

/// Starts `binary --standalone` on `dir`: certificates in `dir/certs` and data in `dir/data`
/// persist across restarts; `dir/config.yaml`, when present, replaces the embedded example.
/// Returns once a TLS connection succeeds.
pub async fn start_standalone(binary: &Path, dir: &Path) -> Result<Standalone, Error> {
    start_standalone_with(binary, dir, &[]).await
}

/// [`start_standalone`] with more flags (e.g. `--etcd-servers`); its log goes to `dir/server.log`.
pub async fn start_standalone_with(binary: &Path, dir: &Path, flags: &[String]) -> Result<Standalone, Error> {
    let port = free_port()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    let certs = dir.join("certs");
    let config = Some(dir.join("config.yaml"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| dir.join("missing.yaml"));
    let mut child = tokio::process::Command::new(binary)
        .args(["--standalone", "--bind-address", "127.0.0.1", "--log-format", "plain"])
        .args(["--secure-port", &port.to_string()])
        .arg("--config")
        .arg(&config)
        .arg("--cert-dir")
        .arg(&certs)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(flags)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ca) = std::fs::read_to_string(certs.join("ca.crt")) {
            if connect(addr, &ca, None, false).await.is_ok() {
                return Ok(Standalone { addr, ca, child });
            }
        }
        if let Some(status) = child.try_wait()? {
            let log = super::netns::tail(&dir.join("server.log"), 20);
            return Err(format!("server exited ({status}); log:\n{log}").into());
        }
        if std::time::Instant::now() > deadline {
            return Err("standalone server did not come up within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
