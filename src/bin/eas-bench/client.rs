//! The bench's HTTP/2 client: TLS to any aggregated API server, optionally presenting a
//! front-proxy client certificate, with the `X-Remote-User`/`X-Remote-Group` headers the
//! front proxy (kube-apiserver) would add.

use crate::Error;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

/// One HTTP/2 connection; clones share it (one clone per concurrent stream).
pub type H2 = SendRequest<Full<Bytes>>;

/// Where and as whom to connect.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `host[:port]` for the `:authority` of requests.
    pub authority: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    user: Option<String>,
    groups: Vec<String>,
}

/// PEM material of a client identity.
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Endpoint {
    /// `host` names the server for SNI and certificate verification (an IP or a DNS name).
    pub fn new(
        addr: SocketAddr,
        host: &str,
        ca_pem: &[u8],
        identity: Option<&Identity>,
        user: Option<String>,
        groups: Vec<String>,
    ) -> Result<Endpoint, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in eao::apiserver::tls::parse_certs(ca_pem)? {
            roots.add(c)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(eao::apiserver::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut cfg = match identity {
            Some(id) => {
                let chain = eao::apiserver::tls::parse_certs(&id.cert_pem)?;
                let key = PrivateKeyDer::from_pem_slice(&id.key_pem)?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Endpoint {
            addr,
            authority: if addr.port() == 443 {
                host.to_string()
            } else {
                format!("{host}:{}", addr.port())
            },
            server_name: ServerName::try_from(host.to_string())?,
            tls: Arc::new(cfg),
            user,
            groups,
        })
    }

    /// A new HTTP/2 connection.
    pub async fn connect(&self) -> Result<H2, Error> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("server did not negotiate h2".into());
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            // Watch streams idle for long; larger windows avoid stalls on bursts of events.
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// A request with the identity headers of the front proxy.
    pub fn req(&self, method: Method, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>, Error> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority));
        if let Some(u) = &self.user {
            b = b.header("x-remote-user", u);
        }
        for g in &self.groups {
            b = b.header("x-remote-group", g);
        }
        if !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        Ok(b.body(Full::new(body))?)
    }
}

/// Sends `req` and reads the whole answer.
pub async fn call(h2: &mut H2, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Error> {
    h2.ready().await?;
    let resp = h2.send_request(req).await?;
    let code = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, body))
}

/// The first `"resourceVersion":"N"` of a JSON document: the object's own, or a list's (it
/// precedes the items). Scanning the bytes keeps JSON parsing off the client's hot path, which
/// shares the CPUs with the server under test.
pub fn resource_version(body: &[u8]) -> Option<&str> {
    find_string_field(body, b"\"resourceVersion\":\"")
}

/// The string after the first occurrence of `key` (which ends with the opening quote).
pub fn find_string_field<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let start = body.windows(key.len()).position(|w| w == key)? + key.len();
    let len = body[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}
