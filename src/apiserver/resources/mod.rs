//! The storage-backed [`ResourceHandler`]: kube-apiserver's custom-resource semantics over
//! [`Storage`]. Keys are `/<plural>/<namespace>/<name>` (namespace empty for cluster scope),
//! so every list is a key prefix.

mod apply;
mod fields;
mod managed;
mod object;
mod output;
mod select;
mod watch;

use super::body::{full, Body};
use super::handlers::{ResourceHandler, ResourceRequest};
use super::requestinfo::query_pairs;
use super::status::Status;
use crate::crd::ServedResource;
use crate::storage::{Preconditions, Storage, StorageError};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, HeaderValue, Response, StatusCode};
use select::Selector;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// How often a patch re-reads and retries after losing a write race.
const PATCH_RETRIES: usize = 8;

/// Serves declared resources from the embedded store.
pub struct StorageHandler {
    storage: Storage,
    group: String,
}

impl StorageHandler {
    /// A handler for `group` over `storage`.
    pub fn new(storage: Storage, group: String) -> Arc<Self> {
        Arc::new(StorageHandler { storage, group })
    }
}

impl ResourceHandler for StorageHandler {
    fn handle(&self, req: ResourceRequest) -> BoxFuture<'_, Response<Body>> {
        Box::pin(async move {
            let cx = Cx::new(&self.group, &req);
            let r = match req.info.verb.as_str() {
                "get" => self.get(&cx),
                "list" => self.list(&cx),
                "watch" => Ok(watch::serve(&self.storage, &cx, req.shutdown.clone())),
                "create" => self.create(&cx, &req.body).await,
                "update" => self.update(&cx, &req.body).await,
                "patch" => self.patch(&cx, &req).await,
                "delete" => self.delete(&cx, &req.body).await,
                "deletecollection" => self.delete_collection(&cx, &req.body).await,
                v => Err(Status::method_not_supported(&self.group, &req.info.resource, v)),
            };
            r.unwrap_or_else(Status::into_response)
        })
    }
}

/// Everything about one request the verbs need.
#[derive(Clone)]
pub(crate) struct Cx {
    pub group: String,
    pub api_version: String,
    pub res: ServedResource,
    pub namespace: String,
    pub name: String,
    pub status_sub: bool,
    pub query: HashMap<String, String>,
    pub form: output::Form,
    /// Who this write's fields belong to (`fieldManager`, else the User-Agent's product).
    pub manager: String,
}

impl Cx {
    fn new(group: &str, req: &ResourceRequest) -> Cx {
        let query: HashMap<String, String> = query_pairs(&req.query).collect();
        let user_agent = req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let manager = managed::default_manager(
            query.get("fieldManager").map(String::as_str).unwrap_or_default(),
            user_agent,
        );
        Cx {
            group: group.to_string(),
            api_version: format!("{group}/{}", req.info.api_version),
            res: req.resource.clone(),
            namespace: req.info.namespace.clone(),
            name: req.info.name.clone(),
            status_sub: req.info.subresource == "status",
            query,
            form: output::negotiate(&req.headers),
            manager,
        }
    }

    pub fn q(&self, k: &str) -> &str {
        self.query.get(k).map(String::as_str).unwrap_or_default()
    }

    fn key(&self, name: &str) -> String {
        format!("/{}/{}/{}", self.res.plural, self.namespace, name)
    }

    /// The prefix of a list: one namespace, or every namespace when none is given.
    pub fn prefix(&self) -> String {
        if self.namespace.is_empty() {
            format!("/{}/", self.res.plural)
        } else {
            format!("/{}/{}/", self.res.plural, self.namespace)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.res.kind)
    }

    fn has_status(&self) -> bool {
        self.res.subresources.as_ref().is_some_and(|s| s.status.is_some())
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    fn not_found(&self, name: &str) -> Status {
        Status::not_found(&self.group, &self.res.plural, name)
    }

    fn conflict(&self, name: &str, why: &str) -> Status {
        Status::conflict(&self.group, &self.res.plural, name, why)
    }

    pub fn selector(&self) -> Result<Selector, Status> {
        // The legacy `/watch/.../<name>` path names one object; select it like kube does.
        let field = match (self.q("fieldSelector"), self.name.is_empty()) {
            ("", false) => format!("metadata.name={}", self.name),
            (f, _) => f.to_string(),
        };
        Selector::parse(self.q("labelSelector"), &field).map_err(Status::bad_request)
    }

    /// Maps a storage error on object `name`.
    fn storage_err(&self, name: &str, e: StorageError) -> Status {
        match e {
            StorageError::AlreadyExists => Status::already_exists(&self.group, &self.res.plural, name),
            StorageError::NotFound => self.not_found(name),
            StorageError::Conflict(why) if why.contains("resourceVersion") || why.is_empty() => {
                self.conflict(name, Status::STALE)
            }
            StorageError::Conflict(why) => self.conflict(name, &format!("Precondition failed: {why}")),
            StorageError::Gone { requested, oldest } => {
                Status::expired(format!("too old resource version: {requested} ({oldest})"))
            }
            StorageError::BadContinue(m) => Status::bad_request(format!("continue key is not valid: {m}")),
            e => Status::internal(e.to_string()),
        }
    }
}

/// A JSON response.
pub(crate) fn json_response(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    r
}

fn value_response(code: StatusCode, v: &Value) -> Response<Body> {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// `DeleteOptions.preconditions` of a DELETE body (an empty body has none).
fn delete_preconditions(body: &[u8]) -> Result<Preconditions, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Status::bad_request(format!("invalid DeleteOptions: {e}")))?;
    let p = v.get("preconditions").cloned().unwrap_or(Value::Null);
    let rv = match p.get("resourceVersion").and_then(Value::as_str) {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| Status::bad_request(format!("invalid resourceVersion precondition {s:?}")))?,
        ),
        None => None,
    };
    Ok(Preconditions {
        resource_version: rv,
        uid: p.get("uid").and_then(Value::as_str).map(str::to_string),
    })
}

impl StorageHandler {
    fn get(&self, cx: &Cx) -> Result<Response<Body>, Status> {
        let obj = self
            .storage
            .get(&cx.key(&cx.name))
            .ok_or_else(|| cx.not_found(&cx.name))?;
        if let Some(v) = output::one(cx, cx.form, &obj.value()) {
            return Ok(value_response(StatusCode::OK, &v));
        }
        Ok(json_response(StatusCode::OK, obj.json.clone()))
    }

    fn list(&self, cx: &Cx) -> Result<Response<Body>, Status> {
        let sel = cx.selector()?;
        let limit = match cx.q("limit") {
            "" | "0" => None,
            l => Some(
                l.parse::<usize>()
                    .map_err(|_| Status::bad_request(format!("invalid limit {l:?}")))?,
            ),
        };
        let cont = Some(cx.q("continue")).filter(|c| !c.is_empty());
        let page = self
            .storage
            .list(&cx.prefix(), limit, cont, |o| sel.matches(o))
            .map_err(|e| match e {
                StorageError::Gone { .. } => Status::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."),
                e => cx.storage_err("", e),
            })?;
        let mut meta = json!({"resourceVersion": page.rv.to_string()});
        if let Some(c) = &page.continue_token {
            meta["continue"] = json!(c);
        }
        if let Some(n) = page.remaining {
            meta["remainingItemCount"] = json!(n);
        }
        let values: Vec<Value> = if cx.form == output::Form::Object {
            Vec::new()
        } else {
            page.items.iter().map(|o| o.value()).collect()
        };
        if let Some(v) = output::list(cx, cx.form, &values, meta.clone()) {
            return Ok(value_response(StatusCode::OK, &v));
        }
        // Items are stored serialized; splice them in rather than re-parse every object.
        let mut out = Vec::with_capacity(page.items.iter().map(|o| o.json.len() + 1).sum::<usize>() + 256);
        out.extend_from_slice(
            format!(
                "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
                json!(cx.list_kind()),
                json!(cx.api_version),
                meta
            )
            .as_bytes(),
        );
        for (i, o) in page.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&o.json);
        }
        out.extend_from_slice(b"]}");
        Ok(json_response(StatusCode::OK, out))
    }

    async fn create(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        if cx.status_sub {
            return Err(Status::method_not_supported(
                &cx.group,
                &format!("{}/status", cx.res.plural),
                "create",
            ));
        }
        managed::validate_options(cx, "CreateOptions", false)?;
        let mut v = object::decode(cx, body)?;
        object::prepare_create(cx, &mut v)?;
        managed::track_update(cx, None, &mut v);
        let name = object::name_of(&v);
        if cx.dry_run() {
            if self.storage.get(&cx.key(&name)).is_some() {
                return Err(Status::already_exists(&cx.group, &cx.res.plural, &name));
            }
            return Ok(value_response(StatusCode::CREATED, &v));
        }
        let obj = self
            .storage
            .create(&cx.key(&name), v)
            .await
            .map_err(|e| cx.storage_err(&name, e))?;
        Ok(json_response(StatusCode::CREATED, obj.json.clone()))
    }

    async fn update(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        managed::validate_options(cx, "UpdateOptions", false)?;
        let v = object::decode(cx, body)?;
        if object::name_of(&v) != cx.name {
            return Err(Status::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                object::name_of(&v),
                cx.name
            )));
        }
        let rv = match v.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.parse::<u64>().map_err(|_| cx.conflict(&cx.name, Status::STALE))?,
            _ => {
                return Err(Status::invalid(
                    &cx.group,
                    &cx.res.kind,
                    &cx.name,
                    &[(
                        "metadata.resourceVersion".into(),
                        "Invalid value: 0x0: must be specified for an update".into(),
                    )],
                ))
            }
        };
        let old = self
            .storage
            .get(&cx.key(&cx.name))
            .ok_or_else(|| cx.not_found(&cx.name))?;
        if old.rv != rv {
            return Err(cx.conflict(&cx.name, Status::STALE));
        }
        self.write_update(cx, &old.value(), v, rv).await
    }

    /// Merges `new` onto `old` with update semantics and writes it if `old` is still at `rv`.
    async fn write_update(&self, cx: &Cx, old: &Value, new: Value, rv: u64) -> Result<Response<Body>, Status> {
        let mut next = object::prepare_update(cx, old, new, cx.has_status())?;
        managed::track_update(cx, Some(old), &mut next);
        self.write_prepared(cx, next, rv).await
    }

    /// Writes the prepared `next` if the stored object is still at `rv`.
    async fn write_prepared(&self, cx: &Cx, next: Value, rv: u64) -> Result<Response<Body>, Status> {
        let key = cx.key(&cx.name);
        let pre = Preconditions {
            resource_version: Some(rv),
            uid: None,
        };
        // An update that drops the last finalizer of a deleting object completes the delete.
        if object::is_deleting(&next) && object::finalizers(&next).is_empty() {
            if cx.dry_run() {
                return Ok(value_response(StatusCode::OK, &next));
            }
            let obj = self
                .storage
                .delete(&key, pre)
                .await
                .map_err(|e| cx.storage_err(&cx.name, e))?;
            let mut last = obj.value();
            if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("finalizers".into(), json!([]));
            }
            return Ok(value_response(StatusCode::OK, &last));
        }
        if cx.dry_run() {
            return Ok(value_response(StatusCode::OK, &next));
        }
        let obj = self
            .storage
            .update(&key, next, pre)
            .await
            .map_err(|e| cx.storage_err(&cx.name, e))?;
        Ok(json_response(StatusCode::OK, obj.json.clone()))
    }

    async fn patch(&self, cx: &Cx, req: &ResourceRequest) -> Result<Response<Body>, Status> {
        let ct = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let kind = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let merge = match kind.as_str() {
            "application/merge-patch+json" => true,
            "application/json-patch+json" => false,
            "application/apply-patch+yaml" => return self.apply(cx, &req.body).await,
            _ => return Err(Status::unsupported_media_type(ct)),
        };
        managed::validate_options(cx, "PatchOptions", false)?;
        let patch: Value =
            serde_json::from_slice(&req.body).map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
        let json_patch: Option<json_patch::Patch> = if merge {
            None
        } else {
            Some(
                serde_json::from_value(patch.clone())
                    .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?,
            )
        };
        // Read-modify-write; a concurrent writer makes the store refuse and we re-read.
        for _ in 0..PATCH_RETRIES {
            let old = self
                .storage
                .get(&cx.key(&cx.name))
                .ok_or_else(|| cx.not_found(&cx.name))?;
            let old_v = old.value();
            let mut new = old_v.clone();
            match &json_patch {
                None => json_patch::merge(&mut new, &patch),
                Some(p) => json_patch::patch(&mut new, p).map_err(|e| {
                    Status::invalid(&cx.group, &cx.res.kind, &cx.name, &[("patch".into(), e.to_string())])
                })?,
            }
            // A patch naming a resourceVersion is a precondition, as in kube-apiserver.
            let rv = match new.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                Some(s) if s != old.rv.to_string() => return Err(cx.conflict(&cx.name, Status::STALE)),
                _ => old.rv,
            };
            match self.write_update(cx, &old_v, new, rv).await {
                Err(s) if s.reason == "Conflict" && merge_retryable(&patch) => continue,
                r => return r,
            }
        }
        Err(cx.conflict(&cx.name, Status::STALE))
    }

    async fn delete(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        let pre = delete_preconditions(body)?;
        let value = self.delete_one(cx, &cx.name, pre).await?;
        Ok(value_response(StatusCode::OK, &value))
    }

    /// Deletes one object, or marks it deleting when finalizers hold it.
    async fn delete_one(&self, cx: &Cx, name: &str, pre: Preconditions) -> Result<Value, Status> {
        let key = cx.key(name);
        for _ in 0..PATCH_RETRIES {
            let cur = self.storage.get(&key).ok_or_else(|| cx.not_found(name))?;
            if let Some(uid) = &pre.uid {
                if cur.uid != *uid {
                    return Err(cx.conflict(
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            cur.uid
                        ),
                    ));
                }
            }
            if let Some(rv) = pre.resource_version {
                if cur.rv != rv {
                    return Err(cx.conflict(
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            cur.rv
                        ),
                    ));
                }
            }
            let mut v = cur.value();
            let exact = Preconditions {
                resource_version: Some(cur.rv),
                uid: None,
            };
            if !object::finalizers(&v).is_empty() {
                if object::is_deleting(&v) || cx.dry_run() {
                    return Ok(v);
                }
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("deletionTimestamp".into(), json!(object::now()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                match self.storage.update(&key, v, exact).await {
                    Ok(o) => return Ok(o.value()),
                    Err(StorageError::Conflict(_)) => continue,
                    Err(e) => return Err(cx.storage_err(name, e)),
                }
            }
            if cx.dry_run() {
                return Ok(v);
            }
            match self.storage.delete(&key, exact).await {
                Ok(o) => return Ok(o.value()),
                Err(StorageError::Conflict(_)) => continue,
                Err(e) => return Err(cx.storage_err(name, e)),
            }
        }
        Err(cx.conflict(name, Status::STALE))
    }

    async fn delete_collection(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        let pre = delete_preconditions(body)?;
        let sel = cx.selector()?;
        let page = self
            .storage
            .list(&cx.prefix(), None, None, |o| sel.matches(o))
            .map_err(|e| cx.storage_err("", e))?;
        let mut items = Vec::new();
        for o in &page.items {
            let one = Cx {
                namespace: o.namespace.clone(),
                ..cx.clone()
            };
            match self.delete_one(&one, &o.name, pre.clone()).await {
                Ok(v) => items.push(v),
                // Deleted meanwhile: the goal is reached.
                Err(s) if s.code == StatusCode::NOT_FOUND => {}
                Err(s) => return Err(s),
            }
        }
        let list = json!({
            "kind": cx.list_kind(),
            "apiVersion": cx.api_version,
            "metadata": {"resourceVersion": self.storage.current_rv().to_string()},
            "items": items,
        });
        Ok(value_response(StatusCode::OK, &list))
    }
}

/// Whether a patch may be re-applied to a newer object after a lost race: only when it does not
/// pin the resourceVersion itself (then the conflict is the client's).
fn merge_retryable(patch: &Value) -> bool {
    patch.pointer("/metadata/resourceVersion").is_none()
}
