//! An in-memory stand-in for kube-apiserver, for reconcile tests: it stores objects by path,
//! implements GET, LIST (label equality selectors), server-side apply, merge and JSON patch,
//! POST and DELETE, and records every request so tests can assert the exact calls.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One recorded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

impl Recorded {
    /// `METHOD path`, the form tests compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<Recorded>,
    pub rv: u64,
    /// Paths whose DELETE answers 404 as if someone else deleted the object first.
    pub vanish_on_delete: Vec<String>,
    /// Serve `apiregistration.k8s.io/v1` discovery.
    pub no_apiregistration: bool,
    /// Paths whose writes fail with this code, reason and message (an admission or RBAC refusal).
    pub fail_writes: BTreeMap<String, (u16, String, String)>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((k, v)) = term.split_once('=') else {
            return false;
        };
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FakeApi {
    pub fn client(&self) -> kube::Client {
        self.client_with_latency(std::time::Duration::ZERO)
    }

    /// A client whose every request takes at least `latency`, as over a network: races between
    /// tasks waiting for the first answers show up only then.
    pub fn client_with_latency(&self, latency: std::time::Duration) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                Ok::<_, std::convert::Infallible>(me.handle(req).await)
            }
        });
        kube::Client::new(svc, "default")
    }

    pub fn put(&self, path: &str, obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(path.to_string(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().objects.remove(path);
    }

    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body_text = String::from_utf8_lossy(&body).into_owned();
        let mut st = self.state.lock().unwrap();
        st.requests.push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body_text,
        });
        let (code, value) = Self::route(&mut st, &method, &path, &query, &content_type, &body);
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }

    fn route(st: &mut State, method: &Method, path: &str, query: &str, ct: &str, body: &[u8]) -> (u16, Value) {
        if path == "/apis/apiregistration.k8s.io/v1" {
            if st.no_apiregistration {
                return (
                    404,
                    status(404, "NotFound", "the server could not find the requested resource"),
                );
            }
            return (
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apiregistration.k8s.io/v1",
                       "resources": [{"name": "apiservices", "singularName": "apiservice", "namespaced": false,
                                      "kind": "APIService", "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}),
            );
        }
        let (obj_path, is_status) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        if *method != Method::GET {
            if let Some((code, reason, message)) = st.fail_writes.get(path) {
                return (*code, status(*code, reason, message));
            }
        }
        match *method {
            Method::GET => {
                if let Some(obj) = st.objects.get(&obj_path) {
                    return (200, obj.clone());
                }
                // A collection: list the objects directly below it.
                let prefix = format!("{obj_path}/");
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .filter(|(_, v)| labels_match(v, &selector))
                    .map(|(_, v)| v.clone())
                    .collect();
                if items.is_empty() && !Self::is_collection(&obj_path) {
                    return (404, status(404, "NotFound", &format!("{obj_path} not found")));
                }
                (
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            Method::POST => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                    return (400, status(400, "BadRequest", "bad json"));
                };
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("generated")
                    .to_string();
                st.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.objects.insert(format!("{obj_path}/{name}"), obj.clone());
                (201, obj)
            }
            Method::DELETE => {
                if st.vanish_on_delete.contains(&obj_path) {
                    st.objects.remove(&obj_path);
                    return (404, status(404, "NotFound", "already gone"));
                }
                match st.objects.remove(&obj_path) {
                    Some(_) => (
                        200,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                    ),
                    None => (404, status(404, "NotFound", &format!("{obj_path} not found"))),
                }
            }
            Method::PATCH => {
                let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                    return (400, status(400, "BadRequest", "bad patch body"));
                };
                let existing = st.objects.get(&obj_path).cloned();
                let mut obj = match (&existing, ct) {
                    (None, c) if c.contains("apply-patch") => {
                        let mut o = patch.clone();
                        o["metadata"]["uid"] = json!(format!("uid-{}", st.rv + 1));
                        o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                        o
                    }
                    (None, _) => return (404, status(404, "NotFound", &format!("{obj_path} not found"))),
                    (Some(e), c) if c.contains("apply-patch") && is_status => {
                        let mut o = e.clone();
                        o["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
                        o
                    }
                    (Some(e), c) if c.contains("apply-patch") => {
                        // Server-side apply by the only manager: its fields replace ours; status and
                        // server-set metadata stay.
                        let mut o = e.clone();
                        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
                            if k == "metadata" {
                                for (mk, mv) in v.as_object().cloned().unwrap_or_default() {
                                    o["metadata"][mk] = mv;
                                }
                            } else if k != "status" {
                                o[k] = v;
                            }
                        }
                        o
                    }
                    (Some(e), c) if c.contains("json-patch") => {
                        let mut o = e.clone();
                        // Like the real server's JSON patch, a `test` for null passes on a missing field.
                        if o.pointer("/metadata/finalizers").is_none() {
                            o["metadata"]["finalizers"] = Value::Null;
                        }
                        let Ok(p) = serde_json::from_value::<json_patch::Patch>(patch.clone()) else {
                            return (400, status(400, "BadRequest", "bad json patch"));
                        };
                        if json_patch::patch(&mut o, &p).is_err() {
                            return (422, status(422, "Invalid", "json patch test failed"));
                        }
                        o
                    }
                    (Some(e), _) => {
                        let mut o = e.clone();
                        if is_status {
                            if let Some(s) = patch.get("status") {
                                merge(&mut o["status"], s);
                            }
                        } else {
                            merge(&mut o, &patch);
                        }
                        o
                    }
                };
                if ct.contains("apply-patch") && !is_status {
                    // Like kube-apiserver, record the applier's fields (list elements by
                    // position: `i:N`; the real server keys map lists, which the operator's
                    // fingerprint also understands).
                    let manager = query_param(query, "fieldManager").unwrap_or_default();
                    obj["metadata"]["managedFields"] = json!([{
                        "manager": manager, "operation": "Apply",
                        "apiVersion": patch.get("apiVersion").cloned().unwrap_or(Value::Null),
                        "fieldsType": "FieldsV1", "fieldsV1": applied_fields(&patch, true),
                    }]);
                }
                let unchanged = existing.as_ref().is_some_and(|e| {
                    let mut a = e.clone();
                    a["metadata"]["resourceVersion"] = Value::Null;
                    let mut b = obj.clone();
                    b["metadata"]["resourceVersion"] = Value::Null;
                    a == b
                });
                if !unchanged {
                    st.rv += 1;
                    obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                }
                // Like the real API server: removing the last finalizer of a deleting object deletes it.
                let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
                let no_finalizers = obj
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(|f| f.is_empty());
                if deleting && no_finalizers {
                    st.objects.remove(&obj_path);
                } else {
                    st.objects.insert(obj_path, obj.clone());
                }
                (200, obj)
            }
            Method::PUT => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                    return (400, status(400, "BadRequest", "bad json"));
                };
                let Some(existing) = st.objects.get(&obj_path) else {
                    return (404, status(404, "NotFound", &format!("{obj_path} not found")));
                };
                // Optimistic concurrency, as kube-apiserver does for update.
                if obj.pointer("/metadata/resourceVersion") != existing.pointer("/metadata/resourceVersion") {
                    return (409, status(409, "Conflict", "the object has been modified"));
                }
                st.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.objects.insert(obj_path, obj.clone());
                (200, obj)
            }
            _ => (405, status(405, "MethodNotAllowed", "method not allowed")),
        }
    }

    fn is_collection(path: &str) -> bool {
        // /api/v1/<plural>, /api/v1/namespaces/<ns>/<plural>, /apis/<g>/<v>/<plural>, /apis/<g>/<v>/namespaces/<ns>/<plural>
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.first() {
            Some(&"api") => segs.len() == 3 || (segs.len() == 5 && segs[2] == "namespaces"),
            Some(&"apis") => segs.len() == 4 || (segs.len() == 6 && segs[3] == "namespaces"),
            _ => false,
        }
    }
}

/// The `fieldsV1` set of an applied object: every field it sets, lists by position. At the top,
/// the identity fields (which kube never lists) and status are left out.
fn applied_fields(v: &Value, top: bool) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !(v.is_null() || top && matches!(k.as_str(), "apiVersion" | "kind" | "status")))
                .map(|(k, v)| {
                    let sub = if top && k == "metadata" {
                        let mut meta = v.clone();
                        if let Some(m) = meta.as_object_mut() {
                            m.remove("name");
                            m.remove("namespace");
                        }
                        applied_fields(&meta, false)
                    } else {
                        applied_fields(v, false)
                    };
                    (format!("f:{k}"), sub)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Object(
            a.iter()
                .enumerate()
                .map(|(i, v)| (format!("i:{i}"), applied_fields(v, false)))
                .collect(),
        ),
        _ => json!({}),
    }
}
