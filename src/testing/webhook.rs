//! An admission webhook server for tests: HTTPS on a given address with a certificate from a
//! fresh CA, answering each `AdmissionReview` with what a handler decides (optionally after a
//! delay, to exceed a webhook's timeout), and keeping every review it received.

use super::certs::{self, Error};
use crate::pki::{self, CertKeyPair, LeafSpec};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the handler answers to one review: the `response` fields besides `uid` (which is
/// filled in), and how long to wait before answering.
pub struct Answer {
    pub response: Value,
    pub delay: Duration,
}

impl Answer {
    /// Allowed, with nothing else.
    pub fn allow() -> Answer {
        Answer {
            response: json!({"allowed": true}),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&str, &Value) -> Answer + Send + Sync;

/// A running webhook server.
pub struct WebhookServer {
    pub addr: SocketAddr,
    /// The CA that signed the serving certificate (the configurations' `caBundle`).
    pub ca: CertKeyPair,
    /// Every `(path, AdmissionReview request)` received.
    pub received: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookServer {
    /// Serves on `ip` (a free port) with `handler(path, request)` deciding each answer; the
    /// certificate names `ip` and `dns_names` (a Service's `<name>.<namespace>.svc`).
    pub async fn start(
        ip: IpAddr,
        dns_names: &[&str],
        handler: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static,
    ) -> Result<WebhookServer, Error> {
        let ca = certs::ca("webhook-test-ca")?;
        let leaf = pki::issue_leaf(
            &ca,
            &LeafSpec {
                common_name: ip.to_string(),
                ip_addresses: vec![ip],
                dns_names: dns_names.iter().map(|n| n.to_string()).collect(),
                server_auth: true,
                ..Default::default()
            },
            Duration::from_secs(3600),
            certs::now(),
        )?;
        use rustls::pki_types::pem::PemObject;
        let chain = crate::apiserver::tls::parse_certs(leaf.cert_pem.as_bytes())?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::apiserver::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<(String, Value)>>> = Default::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handler, log) = (acceptor.clone(), handler.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(req, handler, log).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(WebhookServer {
            addr,
            ca,
            received,
            task,
        })
    }

    /// `https://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The reviews received on `path` so far.
    pub fn reviews(&self, path: &str) -> Vec<Value> {
        self.received
            .lock()
            .map(|r| r.iter().filter(|(p, _)| p == path).map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }
}

async fn answer(
    req: Request<Incoming>,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<(String, Value)>>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
    let request = review.get("request").cloned().unwrap_or_default();
    if let Ok(mut l) = log.lock() {
        l.push((path.clone(), request.clone()));
    }
    let a = handler(&path, &request);
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let mut response = a.response;
    // A handler may set a uid of its own, to answer as a broken webhook would.
    if response.get("uid").is_none() {
        response["uid"] = request.get("uid").cloned().unwrap_or_default();
    }
    let out = json!({
        "apiVersion": review.get("apiVersion").cloned().unwrap_or_else(|| json!("admission.k8s.io/v1")),
        "kind": "AdmissionReview",
        "response": response,
    });
    let mut r = Response::new(Full::new(Bytes::from(out.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
