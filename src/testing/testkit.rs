//! Test and benchmark support: a TLS HTTP client that can present client certificates and speak
//! HTTP/1.1 or HTTP/2, and a small HTTPS double of kube-apiserver serving the
//! `extension-apiserver-authentication` ConfigMap (list and watch), TokenReview and
//! SubjectAccessReview, recording every request it receives.
//!
//! It lives in the library (not under `tests/`) so the `eas-bench` binary can use it too.

use crate::crd::KeyAlgorithm;
use crate::pki::{self, CertKeyPair, LeafSpec};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// Errors of the test helpers.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Unix now.
pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A fresh ECDSA CA.
pub fn ca(name: &str) -> Result<CertKeyPair, Error> {
    Ok(pki::generate_ca(
        name,
        KeyAlgorithm::EcdsaP256,
        pki::DEFAULT_CA_VALIDITY,
        now(),
    )?)
}

/// A client certificate `CN=cn[, O=org]` signed by `ca`.
pub fn client_cert(ca: &CertKeyPair, cn: &str, org: Option<&str>) -> Result<CertKeyPair, Error> {
    let spec = LeafSpec {
        common_name: cn.into(),
        organization: org.map(str::to_string),
        client_auth: true,
        ..Default::default()
    };
    Ok(pki::issue_leaf(ca, &spec, Duration::from_secs(3600), now())?)
}

/// A serving certificate for 127.0.0.1 and localhost signed by `ca`.
pub fn serving_cert(ca: &CertKeyPair) -> Result<CertKeyPair, Error> {
    let spec = LeafSpec {
        common_name: "localhost".into(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![[127, 0, 0, 1].into()],
        server_auth: true,
        ..Default::default()
    };
    Ok(pki::issue_leaf(ca, &spec, Duration::from_secs(3600), now())?)
}

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

/// What the double received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Body, parsed as JSON when it is JSON.
    pub body: Value,
}

/// Decides a SubjectAccessReview: `(allowed, reason)` from the review's `spec`.
pub type SarPolicy = Arc<dyn Fn(&Value) -> (bool, String) + Send + Sync>;

/// Namespaces the double knows: `None` means every name exists (most tests do not care), a
/// map gives each known namespace and whether it is terminating.
type NamespaceMap = Option<BTreeMap<String, bool>>;

struct DoubleState {
    /// Data, resourceVersion, and whether it was deleted.
    configmap: Mutex<(BTreeMap<String, String>, u64, bool)>,
    events: broadcast::Sender<String>,
    namespaces: Mutex<(NamespaceMap, u64)>,
    ns_events: broadcast::Sender<String>,
    requests: Mutex<Vec<Recorded>>,
    tokens: Mutex<HashMap<String, Value>>,
    sar: Mutex<SarPolicy>,
}

/// The kube-apiserver double.
pub struct KubeDouble {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its CA.
    pub ca: CertKeyPair,
    state: Arc<DoubleState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeDouble {
    /// Starts the double on 127.0.0.1 with `data` as the ConfigMap's data. SARs are allowed
    /// for every user except `system:anonymous` and `deny-*` users until
    /// [`KubeDouble::set_sar_policy`] says otherwise.
    pub async fn start(data: BTreeMap<String, String>) -> Result<Self, Error> {
        let ca = ca("kube-double-ca")?;
        let leaf = serving_cert(&ca)?;
        let ck = crate::apiserver::tls::certified_key(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::apiserver::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(crate::apiserver::tls::ServingCert::new(ck));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(64);
        let (ns_events, _) = broadcast::channel(64);
        let default_policy: SarPolicy = Arc::new(|spec: &Value| {
            let user = spec["user"].as_str().unwrap_or_default();
            (user != "system:anonymous" && !user.starts_with("deny-"), String::new())
        });
        let state = Arc::new(DoubleState {
            configmap: Mutex::new((data, 1, false)),
            events,
            namespaces: Mutex::new((None, 1)),
            ns_events,
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            sar: Mutex::new(default_policy),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(double_handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(KubeDouble { addr, ca, state, task })
    }

    /// Writes a kubeconfig for the double into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf, Error> {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca.cert_pem.as_bytes());
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: service-account-token\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: sa\ncurrent-context: double\n",
            self.addr
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kc)?;
        Ok(path)
    }

    /// Registers a token for TokenReview.
    pub fn add_token(&self, token: &str, username: &str, uid: &str, groups: &[&str]) {
        let user = json!({"username": username, "uid": uid, "groups": groups});
        lock(&self.state.tokens).insert(token.into(), user);
    }

    /// Replaces the SAR policy.
    pub fn set_sar_policy(&self, policy: SarPolicy) {
        *lock(&self.state.sar) = policy;
    }

    /// Replaces the ConfigMap data and notifies watchers.
    pub fn update_configmap(&self, data: BTreeMap<String, String>) {
        self.change_configmap("MODIFIED", |g| {
            g.0 = data;
            g.2 = false;
        });
    }

    /// Applies `change` to the ConfigMap state, bumps its resourceVersion and sends watchers a
    /// `kind` event with the result.
    fn change_configmap(&self, kind: &str, change: impl FnOnce(&mut (BTreeMap<String, String>, u64, bool))) {
        let cm = {
            let mut g = lock(&self.state.configmap);
            change(&mut g);
            g.1 += 1;
            configmap_json(&g.0, g.1)
        };
        let _ = self.state.events.send(json!({"type": kind, "object": cm}).to_string());
    }

    /// From now on only the namespaces set here exist (until then every name does).
    /// `terminating` marks one as being deleted; watchers are told.
    pub fn set_namespace(&self, name: &str, terminating: bool) {
        let ev = {
            let mut g = lock(&self.state.namespaces);
            g.1 += 1;
            let map = g.0.get_or_insert_with(BTreeMap::new);
            let kind = if map.insert(name.into(), terminating).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            json!({"type": kind, "object": namespace_json(name, terminating, g.1)})
        };
        let _ = self.state.ns_events.send(ev.to_string());
    }

    /// Removes a namespace (see [`KubeDouble::set_namespace`]).
    pub fn delete_namespace(&self, name: &str) {
        let ev = {
            let mut g = lock(&self.state.namespaces);
            g.1 += 1;
            let map = g.0.get_or_insert_with(BTreeMap::new);
            map.remove(name)
                .map(|t| json!({"type": "DELETED", "object": namespace_json(name, t, g.1)}))
        };
        if let Some(ev) = ev {
            let _ = self.state.ns_events.send(ev.to_string());
        }
    }

    /// Deletes the ConfigMap: watchers get a DELETED event, lists and gets find nothing.
    pub fn delete_configmap(&self) {
        self.change_configmap("DELETED", |g| g.2 = true);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The SubjectAccessReview specs received so far.
    pub fn sar_specs(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.uri.contains("subjectaccessreviews"))
            .map(|r| r.body["spec"].clone())
            .collect()
    }

    /// Forgets recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configmap_json(data: &BTreeMap<String, String>, rv: u64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": crate::apiserver::authn::source::NAME, "namespace": crate::apiserver::authn::source::NAMESPACE, "resourceVersion": rv.to_string(), "uid": "cm-uid"},
        "data": data,
    })
}

/// A namespace as a metadata-only watch sees it.
fn namespace_json(name: &str, terminating: bool, rv: u64) -> Value {
    let mut meta = json!({"name": name, "uid": format!("ns-{name}"), "resourceVersion": rv.to_string()});
    if terminating {
        meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta})
}

/// A never-ending watch response fed by `rx`.
fn event_stream(rx: broadcast::Receiver<String>) -> Response<DoubleBody> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line + "\n"))), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut r = Response::new(StreamBody::new(stream.boxed()).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

type DoubleBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn json_resp(code: StatusCode, v: &Value) -> Response<DoubleBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn double_handle(st: Arc<DoubleState>, req: Request<Incoming>) -> Response<DoubleBody> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let uri = parts.uri.to_string();
    lock(&st.requests).push(Recorded {
        method: parts.method.to_string(),
        uri: uri.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or_default();
    match (parts.method.as_str(), path) {
        ("GET", "/api/v1/namespaces/kube-system/configmaps")
            if query.split('&').any(|q| q == "watch=true" || q == "watch=1") =>
        {
            event_stream(st.events.subscribe())
        }
        ("GET", "/api/v1/namespaces") if query.split('&').any(|q| q == "watch=true" || q == "watch=1") => {
            event_stream(st.ns_events.subscribe())
        }
        ("GET", "/api/v1/namespaces") => {
            let g = lock(&st.namespaces);
            let items: Vec<Value> = g.0.iter().flatten().map(|(n, t)| namespace_json(n, *t, g.1)).collect();
            let list = json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {"resourceVersion": g.1.to_string()},
                "items": items,
            });
            json_resp(StatusCode::OK, &list)
        }
        ("GET", p) if p.starts_with("/api/v1/namespaces/") && p.matches('/').count() == 4 => {
            let name = p.trim_start_matches("/api/v1/namespaces/");
            let g = lock(&st.namespaces);
            let found = match &g.0 {
                None => Some(false),
                Some(m) => m.get(name).copied(),
            };
            match found {
                Some(t) => json_resp(StatusCode::OK, &namespace_json(name, t, g.1)),
                None => json_resp(
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": format!("namespaces \"{name}\" not found"),
                            "details": {"name": name, "kind": "namespaces"}}),
                ),
            }
        }
        ("GET", "/api/v1/namespaces/kube-system/configmaps") => {
            let g = lock(&st.configmap);
            let items: Vec<Value> = if g.2 {
                Vec::new()
            } else {
                vec![configmap_json(&g.0, g.1)]
            };
            let list = json!({
                "apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": {"resourceVersion": g.1.to_string()},
                "items": items,
            });
            json_resp(StatusCode::OK, &list)
        }
        ("GET", "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication") => {
            let g = lock(&st.configmap);
            json_resp(StatusCode::OK, &configmap_json(&g.0, g.1))
        }
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let user = lock(&st.tokens).get(token).cloned();
            let status = match user {
                Some(u) => json!({"authenticated": true, "user": u}),
                None => json!({"authenticated": false, "error": "invalid token"}),
            };
            let mut out = body.clone();
            out["status"] = status;
            json_resp(StatusCode::CREATED, &out)
        }
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews") => {
            let policy = lock(&st.sar).clone();
            let (allowed, reason) = policy(&body["spec"]);
            let mut out = body.clone();
            out["status"] = json!({"allowed": allowed, "reason": reason});
            json_resp(StatusCode::CREATED, &out)
        }
        _ => json_resp(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        ),
    }
}

/// The ConfigMap data kube-apiserver publishes for a front-proxy CA with `allowed` names and
/// an optional client CA.
pub fn auth_configmap_data(
    front_proxy_ca: &CertKeyPair,
    allowed: &[&str],
    client_ca: Option<&CertKeyPair>,
) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    d.insert("requestheader-client-ca-file".into(), front_proxy_ca.cert_pem.clone());
    d.insert("requestheader-allowed-names".into(), json!(allowed).to_string());
    d.insert("requestheader-username-headers".into(), r#"["X-Remote-User"]"#.into());
    d.insert("requestheader-group-headers".into(), r#"["X-Remote-Group"]"#.into());
    d.insert(
        "requestheader-extra-headers-prefix".into(),
        r#"["X-Remote-Extra-"]"#.into(),
    );
    if let Some(c) = client_ca {
        d.insert("client-ca-file".into(), c.cert_pem.clone());
    }
    d
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
    let port = free_port()?;
    let certs = dir.join("certs");
    let config = Some(dir.join("config.yaml"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| dir.join("missing.yaml"));
    let child = tokio::process::Command::new(binary)
        .args(["--standalone", "--bind-address", "127.0.0.1", "--log-format", "plain"])
        .args(["--secure-port", &port.to_string()])
        .arg("--config")
        .arg(&config)
        .arg("--cert-dir")
        .arg(&certs)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stderr(std::process::Stdio::null())
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
        if std::time::Instant::now() > deadline {
            return Err("standalone server did not come up within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
