//! The non-resource endpoints at the end of the chain: `/healthz`, `/livez`, `/readyz`,
//! `/version`, `/metrics`, discovery (`/apis...`) and OpenAPI (`/openapi/...`), with the
//! content negotiation and ETag revalidation kube-apiserver offers for its documents.

use crate::apiserver::apierrors::Status;
use crate::apiserver::body::{full, text, Body};
use crate::apiserver::discovery::{self, DiscoveryFormat, Doc};
use crate::apiserver::health;
use crate::apiserver::request::{query_pairs, RequestInfo};
use crate::apiserver::router::App;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

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
    Status::not_acceptable(types).into_response()
}

impl App {
    /// A health endpoint's plain-text answer: 200, or 500 listing the failing checks.
    pub(crate) fn health(&self, path: &str) -> Response<Body> {
        let (ok, msg) = health::check(path, &self.ready_checks(), self.is_shutting_down());
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        text(code, msg)
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
        let mut checks = vec![
            (
                "authentication-config",
                unless(
                    self.auth.is_loaded(),
                    "extension-apiserver-authentication not loaded yet",
                ),
            ),
            ("namespace-lifecycle", self.namespaces.not_ready()),
            // Webhook configurations and policies: writes are refused until they are read.
            ("admission", self.resources.admission_not_ready()),
            ("storage", self.resources.unhealthy()),
        ];
        // As kube-apiserver's `[+]etcd ok`, only when the storage is etcd.
        if let Some(etcd) = self.resources.etcd_unreachable() {
            checks.push(("etcd", etcd));
        }
        checks
    }

    /// Answers an authorized non-resource request; unknown paths are 404, known ones 405 for
    /// anything but GET and HEAD.
    pub(crate) fn non_resource(&self, parts: &Parts, info: &RequestInfo) -> Response<Body> {
        let (method, headers) = (&parts.method, &parts.headers);
        let query = parts.uri.query().unwrap_or_default();
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
            return Status::method_not_allowed().into_response();
        }
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let served = self.served();
        let d = &served.discovery;
        match segs.as_slice() {
            [p @ ("healthz" | "livez" | "readyz")] => self.health(&format!("/{p}")),
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
