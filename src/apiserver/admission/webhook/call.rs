//! Calling a webhook: where it is (a URL, or a Service resolved through its EndpointSlices as
//! kube-apiserver does with `--enable-aggregator-routing`), TLS verified against the
//! configuration's `caBundle` (the system's roots without one), one POST within the
//! webhook's timeout. Errors are worded as Go's HTTP client words them
//! (`Post "<url>": <cause>`), because they reach clients inside kube's own messages.

use crate::apiserver::tls::{parse_certs, provider};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::Api;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook answer larger than this is refused (kube-apiserver reads at most 3 MiB more than
/// the object; an AdmissionReview is small).
const MAX_RESPONSE: usize = 10 * 1024 * 1024;
/// How long a Service's resolved address is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// Where one call goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `host:port` to connect to.
    pub connect: String,
    /// The name the certificate must carry.
    pub server_name: String,
    /// Path and query of the request.
    pub path: String,
    /// The URL as Go prints it in errors.
    pub url: String,
}

/// Calls webhooks; holds the TLS configurations by CA bundle and resolved Services.
pub struct Caller {
    client: Option<kube::Client>,
    tls: Mutex<HashMap<Vec<u8>, Arc<rustls::ClientConfig>>>,
    resolved: Mutex<HashMap<ServicePort, (String, Instant)>>,
}

/// A Service's namespace, name and port.
type ServicePort = (String, String, i32);

impl Caller {
    /// A caller that resolves Services through `client` (none: only URLs are reachable).
    pub fn new(client: Option<kube::Client>) -> Caller {
        Caller {
            client,
            tls: Default::default(),
            resolved: Default::default(),
        }
    }

    /// The target of `cfg`, with kube-apiserver's `timeout` query parameter.
    pub async fn target(&self, cfg: &WebhookClientConfig, timeout: Duration) -> Result<Target, String> {
        let t = format!("timeout={}s", timeout.as_secs());
        if let Some(url) = &cfg.url {
            return url_target(url, &t);
        }
        let svc = cfg.service.as_ref().ok_or("webhook has neither a url nor a service")?;
        let port = svc.port.unwrap_or(443);
        let path = svc.path.clone().unwrap_or_default();
        let host = format!("{}.{}.svc", svc.name, svc.namespace);
        let path = if path.is_empty() { "/".to_string() } else { path };
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}{t}");
        let url = if port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{port}{path}")
        };
        let connect = self
            .resolve(&svc.namespace, &svc.name, port)
            .await
            .map_err(|e| format!("Post {url:?}: {e}"))?;
        Ok(Target {
            connect,
            server_name: host,
            path,
            url,
        })
    }

    /// The `ip:port` of a ready endpoint of Service `ns/name` for its port `port`.
    async fn resolve(&self, ns: &str, name: &str, port: i32) -> Result<String, String> {
        let key = (ns.to_string(), name.to_string(), port);
        if let Ok(r) = self.resolved.lock() {
            if let Some((addr, at)) = r.get(&key) {
                if at.elapsed() < RESOLVE_TTL {
                    return Ok(addr.clone());
                }
            }
        }
        let client = self.client.clone().ok_or("no cluster to resolve services in")?;
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("service \"{name}\" not found"))?;
        let spec = svc.spec.unwrap_or_default();
        let addr = if spec.type_.as_deref() == Some("ExternalName") {
            let host = spec.external_name.unwrap_or_default();
            format!("{host}:{port}")
        } else {
            let sp = spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .find(|p| p.port == port)
                .ok_or_else(|| format!("no service port {port} found for service \"{name}\""))?;
            let slices = Api::<EndpointSlice>::namespaced(client, ns)
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
                .await
                .map_err(|e| e.to_string())?;
            pick_endpoint(&slices.items, sp.name.as_deref().unwrap_or_default())
                .ok_or_else(|| format!("no endpoints available for service \"{name}\""))?
        };
        if let Ok(mut r) = self.resolved.lock() {
            r.insert(key, (addr.clone(), Instant::now()));
        }
        Ok(addr)
    }

    fn tls_config(&self, ca_bundle: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(c) = self.tls.lock().ok().and_then(|m| m.get(ca_bundle).cloned()) {
            return Ok(c);
        }
        let mut roots = rustls::RootCertStore::empty();
        if ca_bundle.iter().all(u8::is_ascii_whitespace) {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        } else {
            for c in parse_certs(ca_bundle).map_err(|e| format!("invalid caBundle: {e}"))? {
                roots.add(c).map_err(|e| format!("invalid caBundle: {e}"))?;
            }
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let cfg = Arc::new(cfg);
        if let Ok(mut m) = self.tls.lock() {
            if m.len() > 256 {
                m.clear();
            }
            m.insert(ca_bundle.to_vec(), cfg.clone());
        }
        Ok(cfg)
    }

    /// POSTs `body` to the webhook and returns the response body; the whole call (resolving,
    /// connecting, TLS, request, response) is bounded by `timeout`.
    pub async fn post(&self, cfg: &WebhookClientConfig, timeout: Duration, body: Vec<u8>) -> Result<Bytes, String> {
        let deadline = Instant::now() + timeout;
        let target = match tokio::time::timeout(timeout, self.target(cfg, timeout)).await {
            Ok(t) => t?,
            Err(_) => return Err("context deadline exceeded".into()),
        };
        let ca = cfg.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default();
        let tls = self.tls_config(&ca)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, send(&target, tls, body)).await {
            Ok(r) => r.map_err(|e| format!("Post {:?}: {e}", target.url)),
            Err(_) => Err(format!("Post {:?}: context deadline exceeded", target.url)),
        }
    }
}

/// A `url` client configuration as a target.
fn url_target(url: &str, timeout_param: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid webhook url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("invalid webhook url {url:?}: the scheme must be https"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("invalid webhook url {url:?}: no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let connect = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let mut path = uri.path().to_string();
    if path.is_empty() {
        path.push('/');
    }
    let path = match uri.query() {
        Some(q) => format!("{path}?{q}&{timeout_param}"),
        None => format!("{path}?{timeout_param}"),
    };
    let shown = match uri.query() {
        Some(_) => format!("{url}&{timeout_param}"),
        None => format!("{url}?{timeout_param}"),
    };
    Ok(Target {
        connect,
        server_name: bare,
        path,
        url: shown,
    })
}

/// The first ready endpoint of `slices` with the port named `port_name`.
fn pick_endpoint(slices: &[EndpointSlice], port_name: &str) -> Option<String> {
    for s in slices {
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(ip)) = (ready, e.addresses.first()) {
                return Some(if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                });
            }
        }
    }
    None
}

async fn send(target: &Target, tls: Arc<rustls::ClientConfig>, body: Vec<u8>) -> Result<Bytes, String> {
    let tcp = tokio::net::TcpStream::connect(&target.connect)
        .await
        .map_err(|e| format!("dial tcp {}: connect: {e}", target.connect))?;
    let name = ServerName::try_from(target.server_name.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(&target.path)
        .header(header::HOST, &target.server_name)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    conn.abort();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(format!(
            "the server responded with the status code {} but did not return more information: {}",
            status.as_u16(),
            text.chars().take(256).collect::<String>()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_get_the_timeout_parameter() {
        let t = url_target("https://10.0.0.1:8443/validate", "timeout=5s").expect("valid");
        assert_eq!(t.connect, "10.0.0.1:8443");
        assert_eq!(t.server_name, "10.0.0.1");
        assert_eq!(t.path, "/validate?timeout=5s");
        assert_eq!(t.url, "https://10.0.0.1:8443/validate?timeout=5s");
        let t = url_target("https://hooks.example.com/x?a=b", "timeout=10s").expect("valid");
        assert_eq!(
            (t.connect.as_str(), t.path.as_str()),
            ("hooks.example.com:443", "/x?a=b&timeout=10s")
        );
        assert!(url_target("http://x/", "timeout=1s").is_err());
    }

    #[test]
    fn service_endpoints_are_picked_by_port_name_and_readiness() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": false}},
                          {"addresses": ["10.0.0.7"], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": 9443}]
        }))
        .expect("slice");
        assert_eq!(
            pick_endpoint(std::slice::from_ref(&slice), "https").as_deref(),
            Some("10.0.0.7:9443")
        );
        assert_eq!(pick_endpoint(&[slice], "metrics"), None);
    }
}
