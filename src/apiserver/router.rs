//! Routing: the server's state ([`App`]), what is served ([`Served`]), and the dispatch at
//! the end of the filter chain (see [`crate::apiserver::filters`], where the steps before it
//! are composed): non-resource paths go to [`crate::apiserver::nonresource`], requests for a
//! declared resource to the [`ResourceHandler`], the storage plug-in point.

use super::authz::Authorizer;
use super::body::Body;
use super::discovery::{self, Discovery};
use super::metrics::Metrics;
use super::openapi::OpenApi;
use crate::apiserver::apierrors::Status;
use crate::apiserver::authn::source::AuthState;
use crate::apiserver::authn::{self as auth, TokenAuthenticator, UserInfo};
use crate::apiserver::body::Early;
use crate::apiserver::request::RequestInfo;
use crate::crd::{ResourceScope, ServedResource};
use crate::serverconfig::ServerConfig;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

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
    /// The declared resource, shared with the configuration it came from (its schemas are
    /// large; a copy per request was a tenth of a GET's time).
    pub resource: Arc<ServedResource>,
    /// HTTP method.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw query string.
    pub query: String,
    /// The body, at most [`MAX_BODY_BYTES`](crate::apiserver::filters::body_limit::MAX_BODY_BYTES).
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

    /// Why writes cannot be admitted yet (admission configuration not read), if so.
    fn admission_not_ready(&self) -> Option<String> {
        None
    }

    /// Why etcd cannot be reached, if the handler stores in etcd and it cannot (`None` for
    /// the embedded store, which has no `etcd` readiness check).
    fn etcd_unreachable(&self) -> Option<Option<String>> {
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
    /// `config.resources`, shared with the requests that address them.
    pub resources: Vec<Arc<ServedResource>>,
}

impl Served {
    /// The resource `plural` of `version`, if declared.
    pub fn resource_in(&self, version: &str, plural: &str) -> Option<Arc<ServedResource>> {
        self.resources
            .iter()
            .find(|r| r.plural == plural && discovery::serves_version(r, version))
            .cloned()
    }

    /// Builds the documents for `config`.
    pub fn new(config: ServerConfig) -> Arc<Served> {
        Arc::new(Served {
            discovery: Discovery::new(&config),
            openapi: OpenApi::new(&config),
            resources: config.resources.iter().cloned().map(Arc::new).collect(),
            config,
        })
    }
}

/// Everything a request needs.
pub struct App {
    /// What is served now.
    pub served: std::sync::RwLock<Arc<Served>>,
    /// Concurrency limits of resource requests.
    pub inflight: crate::apiserver::concurrency::InFlight,
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

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || *self.shutdown.borrow()
    }

    /// Dispatch of a resource request: the declared resource it addresses; 404 when there is
    /// none, 405 for a namespaced collection addressed without a namespace.
    pub(crate) fn lookup(&self, info: &RequestInfo) -> Result<Arc<ServedResource>, Early> {
        if let Some(resource) = self.declared(info) {
            return Ok(resource);
        }
        if let Some(r) = self.unknown_subresource(info) {
            // kube's CRD handler answers a subresource it does not serve as a missing object.
            let s = Status::not_found(&info.api_group, &r.plural, &info.name);
            return Err(Box::new(s.into_response()));
        }
        // Anything else under the group (unknown resources, a namespaced collection written
        // without a namespace) falls through to kube's mux, which answers a plain-text 404.
        Err(Box::new(crate::apiserver::body::text(
            http::StatusCode::NOT_FOUND,
            "404 page not found\n".into(),
        )))
    }

    /// A declared resource addressed with a name and a subresource it does not serve.
    fn unknown_subresource(&self, info: &RequestInfo) -> Option<Arc<ServedResource>> {
        let served = self.served();
        if info.api_prefix != "apis" || info.api_group != served.config.group || info.parts.len() != 3 {
            return None;
        }
        let r = served.resource_in(&info.api_version, &info.resource)?;
        let scope_ok = (r.scope == ResourceScope::Namespaced) != info.namespace.is_empty();
        scope_ok.then_some(r)
    }

    /// The declared resource a resource request addresses, if the path has a valid shape for it.
    fn declared(&self, info: &RequestInfo) -> Option<Arc<ServedResource>> {
        let served = self.served();
        if info.api_prefix != "apis" || info.api_group != served.config.group {
            return None;
        }
        let r = served.resource_in(&info.api_version, &info.resource)?;
        let shape_ok = match info.parts.len() {
            1 => true,
            2 => true,
            3 => info.subresource == "status" && discovery::has_status(&r),
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
        (shape_ok && scope_ok).then_some(r)
    }
}
