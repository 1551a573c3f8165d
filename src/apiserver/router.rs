//! Routing. Every request goes through the same steps, in this order:
//! refuse upgrades and oversize bodies, authenticate, parse the path (odd paths are refused,
//! never normalised or redirected), authorize, then dispatch to discovery, OpenAPI, health,
//! metrics, or the resource handler (the storage plug-in point, see [`ResourceHandler`]).

use super::authz::Authorizer;
use super::body::{full, Body};
use super::discovery::{self, Discovery, DiscoveryFormat, Doc};
use super::health;
use super::metrics::Metrics;
use super::openapi::OpenApi;
use crate::apiserver::apierrors::Status;
use crate::apiserver::authn::source::AuthState;
use crate::apiserver::authn::{self as auth, TokenAuthenticator, UserInfo};
use crate::apiserver::filters::requestinfo::{query_pairs, RequestInfo};
use crate::crd::{ResourceScope, ServedResource};
use crate::serverconfig::ServerConfig;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Largest accepted request body, as kube-apiserver's default (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What the TLS layer learned about a connection.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// The client's certificate chain, leaf first (not yet verified against any CA).
    pub peer: Option<auth::PeerCerts>,
    /// The client's address.
    pub remote: Option<SocketAddr>,
}

/// A request for a declared resource, after authentication and authorization.
pub struct ResourceRequest {
    /// Parsed attributes.
    pub info: RequestInfo,
    /// The authenticated user.
    pub user: UserInfo,
    /// The declared resource.
    pub resource: ServedResource,
    /// HTTP method.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw query string.
    pub query: String,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Bytes,
    /// Turns true when the server shuts down; watch streams must end then.
    pub shutdown: watch::Receiver<bool>,
}

/// Serves resource requests. Storage (issue 4) implements this; until then [`NoStorage`]
/// answers every request with a 405 Status.
pub trait ResourceHandler: Send + Sync {
    /// Answers one request.
    fn handle(&self, req: ResourceRequest) -> BoxFuture<'_, Response<Body>>;

    /// Why the handler cannot serve now (for `/readyz`), if it cannot.
    fn unhealthy(&self) -> Option<String> {
        None
    }
}

/// The handler used while no storage is plugged in.
pub struct NoStorage;

impl ResourceHandler for NoStorage {
    fn handle(&self, req: ResourceRequest) -> BoxFuture<'_, Response<Body>> {
        Box::pin(async move {
            let resource = if req.info.subresource.is_empty() {
                req.info.resource.clone()
            } else {
                format!("{}/{}", req.info.resource, req.info.subresource)
            };
            Status::method_not_supported(&req.info.api_group, &resource, &req.info.verb).into_response()
        })
    }
}

/// What is served, with the documents derived from it; replaced as a whole when the
/// configuration file changes, so a request sees one consistent version.
pub struct Served {
    /// The configuration.
    pub config: ServerConfig,
    /// Discovery documents.
    pub discovery: Discovery,
    /// OpenAPI documents.
    pub openapi: OpenApi,
}

impl Served {
    /// Builds the documents for `config`.
    pub fn new(config: ServerConfig) -> Arc<Served> {
        Arc::new(Served {
            discovery: Discovery::new(&config),
            openapi: OpenApi::new(&config),
            config,
        })
    }
}

/// Everything a request needs.
pub struct App {
    /// What is served now.
    pub served: std::sync::RwLock<Arc<Served>>,
    /// Concurrency limits of resource requests.
    pub inflight: crate::apiserver::filters::inflight::InFlight,
    /// The failing readiness checks last logged, so a change is logged once.
    pub ready_log: std::sync::Mutex<String>,
    /// Namespace lifecycle: creates need a namespace that exists and is not terminating.
    pub namespaces: Arc<crate::apiserver::admission::namespace_lifecycle::Namespaces>,
    /// Certificate-based authentication configuration.
    pub auth: Arc<AuthState>,
    /// Bearer token authentication.
    pub tokens: TokenAuthenticator,
    /// Authorization.
    pub authz: Authorizer,
    /// Request metrics.
    pub metrics: Metrics,
    /// Resource requests go here.
    pub resources: Arc<dyn ResourceHandler>,
    /// Turns true once shutdown began: readiness goes false while in-flight requests drain,
    /// and long-running handlers (watches) end their streams.
    pub shutdown: watch::Receiver<bool>,
    /// Set when termination was requested but the server still serves during
    /// `--shutdown-delay-duration`: readiness fails so endpoints drop this pod first.
    pub draining: AtomicBool,
}

fn is_health(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz")
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// A JSON document, or 304 when the client already has this ETag.
fn json_doc(doc: &Doc, headers: &HeaderMap, content_type: &'static str, cache_control: &'static str) -> Response<Body> {
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == doc.etag
        });
    let mut r = if matches {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(doc.body.clone()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&doc.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// Media types of `/apis` (the other documents are plain JSON only).
const APIS_TYPES: &str = "application/json, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList, application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

fn not_acceptable(types: &str) -> Response<Body> {
    Status {
        code: StatusCode::NOT_ACCEPTABLE,
        reason: "NotAcceptable",
        message: format!("only the following media types are accepted: {types}"),
        details: None,
    }
    .into_response()
}

fn method_not_allowed() -> Response<Body> {
    Status {
        code: StatusCode::METHOD_NOT_ALLOWED,
        reason: "MethodNotAllowed",
        message: "the server does not allow this method on the requested resource".into(),
        details: None,
    }
    .into_response()
}

/// Whether the request asks for a protocol switch (`Connection: Upgrade` or an `Upgrade` header).
/// Nothing here upgrades, and answering 101 on a proxied connection is CVE-2018-1002105's class.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn close(mut r: Response<Body>, version: http::Version) -> Response<Body> {
    // `Connection` is an HTTP/1 header; HTTP/2 forbids it.
    if version < http::Version::HTTP_2 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

impl App {
    /// The current configuration and documents.
    pub fn served(&self) -> Arc<Served> {
        match self.served.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Serves `next` from now on; in-flight requests finish with what they started with.
    pub fn replace(&self, next: Arc<Served>) {
        self.metrics
            .set_resources(next.config.resources.iter().map(|r| r.plural.clone()));
        match self.served.write() {
            Ok(mut g) => *g = next,
            Err(e) => *e.into_inner() = next,
        }
    }

    /// What `/readyz` needs besides not shutting down; failures are logged when they change.
    fn ready_checks(&self) -> Vec<health::Check<'static>> {
        let checks = self.ready_check_list();
        let failing: Vec<String> = checks
            .iter()
            .filter_map(|(n, why)| why.as_ref().map(|w| format!("{n}: {w}")))
            .collect();
        let summary = failing.join("; ");
        if let Ok(mut last) = self.ready_log.lock() {
            if *last != summary {
                if summary.is_empty() {
                    tracing::info!("ready");
                } else {
                    tracing::warn!(failing = %summary, "not ready");
                }
                *last = summary;
            }
        }
        checks
    }

    fn ready_check_list(&self) -> Vec<health::Check<'static>> {
        let unless = |ok: bool, why: &str| (!ok).then(|| why.to_string());
        vec![
            (
                "authentication-config",
                unless(
                    self.auth.is_loaded(),
                    "extension-apiserver-authentication not loaded yet",
                ),
            ),
            ("namespace-lifecycle", self.namespaces.not_ready()),
            ("storage", self.resources.unhealthy()),
        ]
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || *self.shutdown.borrow()
    }

    /// Answers one request on a connection described by `conn`.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>, conn: &ConnInfo) -> Response<Body> {
        let start = Instant::now();
        // kube-apiserver passes its Audit-Id along; echoing it lets both audit logs be joined.
        let audit_id = req.headers().get("audit-id").cloned();
        let (verb, resource, mut resp) = self.route(req, conn).await;
        if let Some(id) = audit_id {
            resp.headers_mut().insert("audit-id", id);
        }
        self.metrics
            .observe(&verb, &resource, resp.status().as_u16(), start.elapsed());
        resp
    }

    async fn route(&self, req: Request<hyper::body::Incoming>, conn: &ConnInfo) -> (String, String, Response<Body>) {
        let (parts, body) = req.into_parts();
        let method_verb = parts.method.as_str().to_ascii_lowercase();
        let version = parts.version;
        if wants_upgrade(&parts.headers) {
            let s = Status::bad_request("connection upgrades are not supported by this server");
            return (method_verb, String::new(), close(s.into_response(), version));
        }
        let declared_len = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|l| l > MAX_BODY_BYTES as u64) {
            // Refused before reading; the connection is closed so the unread body cannot be
            // taken for the next request.
            return (
                method_verb,
                String::new(),
                close(Status::too_large(MAX_BODY_BYTES).into_response(), version),
            );
        }
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();

        let Some(auth_cfg) = self.auth.get() else {
            if is_health(&path) {
                let (ok, msg) = health::check(&path, &self.ready_checks(), self.is_shutting_down());
                let code = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                return (method_verb, String::new(), text(code, msg));
            }
            let s = Status::unavailable("the server is starting: authentication configuration not loaded yet");
            return (method_verb, String::new(), s.into_response());
        };
        let user = match auth::authenticate(&auth_cfg, &self.tokens, conn.peer.as_ref(), &parts.headers).await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, remote = ?conn.remote, "authentication failed");
                return (method_verb, String::new(), Status::unauthorized().into_response());
            }
        };
        let info = match RequestInfo::parse(parts.method.as_str(), &path, &query) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(error = %e, "refused path");
                return (method_verb, String::new(), Status::not_found_path().into_response());
            }
        };
        let verb = info.verb.clone();
        let res_label = info.resource.clone();
        match self.authz.authorize(&user, &info).await {
            Ok(d) if d.allowed => {}
            Ok(d) => {
                return (
                    verb,
                    res_label,
                    Status::forbidden(&user.name, &info, &d.reason).into_response(),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "authorization failed");
                return (
                    verb,
                    res_label,
                    Status::internal(format!("authorization failed: {e}")).into_response(),
                );
            }
        }
        if info.is_resource_request {
            let resp = self.resource(info, user, parts, body, query).await;
            return (verb, res_label, resp);
        }
        let resp = self.non_resource(&parts.method, &info, &parts.headers, &query);
        (verb, res_label, resp)
    }

    fn non_resource(&self, method: &Method, info: &RequestInfo, headers: &HeaderMap, query: &str) -> Response<Body> {
        let segs: Vec<&str> = info
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let known = matches!(
            segs.as_slice(),
            [] | ["healthz" | "livez" | "readyz" | "version" | "metrics"] | ["apis", ..] | ["openapi", ..]
        );
        if !known {
            return Status::not_found_path().into_response();
        }
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed();
        }
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let served = self.served();
        let d = &served.discovery;
        match segs.as_slice() {
            [p @ ("healthz" | "livez" | "readyz")] => {
                let (ok, msg) = health::check(&format!("/{p}"), &self.ready_checks(), self.is_shutting_down());
                text(
                    if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    },
                    msg,
                )
            }
            ["version"] => {
                let mut r = Response::new(full(version_json()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            ["metrics"] => {
                let mut r = Response::new(full(self.metrics.encode()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                r
            }
            ["apis"] => match discovery::negotiate(accept, true) {
                Some(DiscoveryFormat::Legacy) => {
                    json_doc(&d.group_list, headers, "application/json", "no-cache, private")
                }
                Some(DiscoveryFormat::AggregatedV2) => json_doc(
                    &d.aggregated_v2,
                    headers,
                    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                    "public",
                ),
                Some(DiscoveryFormat::AggregatedV2Beta1) => json_doc(
                    &d.aggregated_v2beta1,
                    headers,
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                    "public",
                ),
                None => not_acceptable(APIS_TYPES),
            },
            ["apis", g] if *g == d.group => match discovery::negotiate(accept, false) {
                Some(_) => json_doc(&d.api_group, headers, "application/json", "no-cache, private"),
                None => not_acceptable("application/json"),
            },
            ["apis", g, v] if *g == d.group => match (d.resource_lists.get(*v), discovery::negotiate(accept, false)) {
                (Some(doc), Some(_)) => json_doc(doc, headers, "application/json", "no-cache, private"),
                (Some(_), None) => not_acceptable("application/json"),
                (None, _) => Status::not_found_path().into_response(),
            },
            ["openapi", ..] if !discovery::accepts_json(accept) => not_acceptable("application/json"),
            ["openapi", "v2"] => json_doc(&served.openapi.v2, headers, "application/json", "no-cache, private"),
            ["openapi", "v3"] => json_doc(
                &served.openapi.v3_index,
                headers,
                "application/json",
                "no-cache, private",
            ),
            ["openapi", "v3", rest @ ..] => match served.openapi.v3.get(&rest.join("/")) {
                Some(doc) => {
                    // A request naming the current hash may be cached for good; any other hash
                    // gets the current document uncached (kube-apiserver redirects; we never do).
                    let hash_matches = query_pairs(query).any(|(k, v)| k == "hash" && format!("\"{v}\"") == doc.etag);
                    let cc = if hash_matches {
                        "public, immutable"
                    } else {
                        "no-cache, private"
                    };
                    json_doc(doc, headers, "application/json", cc)
                }
                None => Status::not_found_path().into_response(),
            },
            _ => Status::not_found_path().into_response(),
        }
    }

    async fn resource(
        &self,
        info: RequestInfo,
        user: UserInfo,
        parts: http::request::Parts,
        body: hyper::body::Incoming,
        query: String,
    ) -> Response<Body> {
        let Some(resource) = self.lookup(&info) else {
            if self.namespaced_without_namespace(&info) {
                return method_not_allowed();
            }
            return Status::not_found_path().into_response();
        };
        let mutating = matches!(
            parts.method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        // Taken before the body is read, so the cap also bounds buffered request bodies.
        let _permit = if info.verb == "watch" {
            None
        } else {
            match self.inflight.admit(mutating) {
                Ok(p) => p,
                Err(r) => return *r,
            }
        };
        let body = if mutating {
            match Limited::new(body, MAX_BODY_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    return close(Status::too_large(MAX_BODY_BYTES).into_response(), parts.version);
                }
                Err(e) => return Status::bad_request(format!("reading the request body failed: {e}")).into_response(),
            }
        } else {
            Bytes::new()
        };
        self.resources
            .handle(ResourceRequest {
                info,
                user,
                resource,
                method: parts.method,
                headers: parts.headers,
                query,
                body,
                shutdown: self.shutdown.clone(),
            })
            .await
    }

    /// A namespaced resource's collection addressed without a namespace by a verb other than
    /// list or watch: 405, as kube-apiserver answers.
    fn namespaced_without_namespace(&self, info: &RequestInfo) -> bool {
        let served = self.served();
        info.namespace.is_empty()
            && info.parts.len() == 1
            && discovery::resources_in(&served.config, &info.api_version)
                .any(|r| r.plural == info.resource && r.scope == ResourceScope::Namespaced)
    }

    /// The declared resource a resource request addresses, if the path has a valid shape for it.
    fn lookup(&self, info: &RequestInfo) -> Option<ServedResource> {
        let served = self.served();
        if info.api_prefix != "apis" || info.api_group != served.config.group {
            return None;
        }
        let r = discovery::resources_in(&served.config, &info.api_version).find(|r| r.plural == info.resource)?;
        let shape_ok = match info.parts.len() {
            1 => true,
            2 => true,
            3 => info.subresource == "status" && discovery::has_status(r),
            _ => false,
        };
        let scope_ok = match r.scope {
            // Namespaced: a name needs a namespace; a collection may be listed across namespaces.
            // (A list's name comes from a `metadata.name` field selector, which is no path.)
            // Across namespaces only list and watch exist (kube registers nothing else there);
            // a create without a namespace would store an object no path can reach.
            ResourceScope::Namespaced => {
                !info.namespace.is_empty() || (info.parts.len() == 1 && matches!(info.verb.as_str(), "list" | "watch"))
            }
            ResourceScope::Cluster => info.namespace.is_empty(),
        };
        (shape_ok && scope_ok).then(|| r.clone())
    }
}

/// `/version`, in the shape of `version.Info`.
fn version_json() -> Bytes {
    let v = env!("CARGO_PKG_VERSION");
    let mut nums = v.split('.');
    let major = nums.next().unwrap_or("0");
    let minor = nums.next().unwrap_or("0");
    let body = serde_json::json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{v}"),
        "gitCommit": option_env!("EAS_GIT_COMMIT").unwrap_or(""),
        "gitTreeState": "",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The architecture as Go names it, so clients parsing `platform` see familiar values.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
