//! A small HTTPS double of kube-apiserver for the bundled server's tests and `eas-bench`:
//! it serves the `extension-apiserver-authentication` ConfigMap (list and watch), namespaces
//! (metadata watch), TokenReview and SubjectAccessReview, no ValidatingAdmissionPolicies (an
//! empty list and a watch that stays open), and records every request.

use super::certs::{ca, serving_cert, Error};
use crate::pki::CertKeyPair;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

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

/// A watch on which nothing ever happens.
fn idle_stream() -> Response<DoubleBody> {
    let stream = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
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
        // No ValidatingAdmissionPolicies or bindings: empty lists and watches that stay open.
        (
            "GET",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
            | "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
        ) => {
            if query.split('&').any(|q| q == "watch=true" || q == "watch=1") {
                idle_stream()
            } else {
                let kind = if path.ends_with("bindings") {
                    "ValidatingAdmissionPolicyBindingList"
                } else {
                    "ValidatingAdmissionPolicyList"
                };
                json_resp(
                    StatusCode::OK,
                    &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                            "metadata": {"resourceVersion": "1"}, "items": []}),
                )
            }
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
