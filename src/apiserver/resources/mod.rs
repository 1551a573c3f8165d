//! The storage-backed [`ResourceHandler`]: kube-apiserver's custom-resource semantics over
//! [`Storage`]. Keys are `/<plural>/<namespace>/<name>` (namespace empty for cluster scope),
//! so every list is a key prefix.

mod apply;
mod consistency;
mod delete;
mod fields;
mod managed;
mod meta;
mod object;
mod output;
mod patch;
mod schema;
mod select;
mod watch;

use super::body::{full, Body};
use crate::apiserver::admission::namespace_lifecycle::Namespaces;
use crate::apiserver::apierrors::Status;
use crate::apiserver::filters::requestinfo::query_pairs;
use crate::apiserver::router::{ResourceHandler, ResourceRequest};
use crate::apiserver::storage::{Preconditions, StorageError, Store};
use crate::crd::ServedResource;
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
    storage: Arc<dyn Store>,
    group: String,
    namespaces: Arc<Namespaces>,
}

impl StorageHandler {
    /// A handler for `group` over `storage`, admitting creates through `namespaces`.
    pub fn new(storage: Arc<dyn Store>, group: String, namespaces: Arc<Namespaces>) -> Arc<Self> {
        Arc::new(StorageHandler {
            storage,
            group,
            namespaces,
        })
    }
}

impl ResourceHandler for StorageHandler {
    fn handle(&self, req: ResourceRequest) -> BoxFuture<'_, Response<Body>> {
        Box::pin(async move {
            // Pruning, validating and tracking the fields of a large body is CPU work of
            // milliseconds; off the async workers it cannot stall other requests (health
            // probes included) on a small machine.
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if req.body.len() > LARGE_BODY && multi_thread {
                return tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(self.serve(req)));
            }
            self.serve(req).await
        })
    }

    fn unhealthy(&self) -> Option<String> {
        self.storage.unhealthy()
    }
}

/// Bodies above this size are processed off the async worker threads.
const LARGE_BODY: usize = 64 * 1024;

impl StorageHandler {
    async fn serve(&self, req: ResourceRequest) -> Response<Body> {
        {
            let cx = Cx::new(&self.group, &req);
            if let Err(s) = write_options_valid(&req.query) {
                return s.into_response();
            }
            let r = match req.info.verb.as_str() {
                "get" => self.get(&cx),
                "list" => self.list(&cx).await,
                "watch" => Ok(watch::serve(self.storage.as_ref(), &cx, req.shutdown.clone())),
                "create" => self.create(&cx, &req.body).await,
                "update" => self.update(&cx, &req.body).await,
                "patch" => self.patch(&cx, &req).await,
                "delete" => self.delete(&cx, &req.body).await,
                "deletecollection" => self.delete_collection(&cx, &req.body).await,
                v => Err(Status::method_not_supported(&self.group, &req.info.resource, v)),
            };
            let mut r = r.unwrap_or_else(Status::into_response);
            let mut warnings = cx.warnings.lock().map(|w| w.clone()).unwrap_or_default();
            // A patch retried after a lost write race reports its fields once.
            let mut seen = std::collections::HashSet::new();
            warnings.retain(|w| seen.insert(w.clone()));
            for w in warnings {
                // RFC 7234 warn-code 299 with a quoted text, as kube-apiserver writes it.
                if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
                    r.headers_mut().append(header::WARNING, v);
                }
            }
            r
        }
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
    /// `Warning` headers for the response (unknown fields under `fieldValidation=Warn`).
    pub warnings: Arc<std::sync::Mutex<Vec<String>>>,
    /// `{"apiVersion":"<group/version>"`, how stored objects of this version begin.
    pub version_prefix: String,
    /// Who this write's fields belong to (`fieldManager`, else the User-Agent's product).
    pub manager: String,
}

impl Cx {
    fn new(group: &str, req: &ResourceRequest) -> Cx {
        // The first value of a repeated parameter counts, as in Go's url.Values.Get and in
        // RequestInfo (authorization must see what the handler serves).
        let query = query_pairs(&req.query).fold(HashMap::new(), |mut m: HashMap<String, String>, (k, v)| {
            m.entry(k).or_insert(v);
            m
        });
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
            version_prefix: format!(
                "{{\"apiVersion\":{}",
                Value::String(format!("{group}/{}", req.info.api_version))
            ),
            res: req.resource.clone(),
            namespace: req.info.namespace.clone(),
            name: req.info.name.clone(),
            status_sub: req.info.subresource == "status",
            query,
            form: output::negotiate(&req.headers),
            warnings: Default::default(),
            manager,
        }
    }

    /// The stored object as this request's version sees it: served versions differ only in
    /// `apiVersion` (conversion strategy None), so the stored bytes are reused when they match.
    pub fn bytes_of(&self, o: &crate::apiserver::storage::Object) -> Bytes {
        // serde_json writes keys sorted, so a stored object starts with its apiVersion; a
        // stored document in another order only costs the re-serialization below.
        if o.json.starts_with(self.version_prefix.as_bytes()) {
            return o.json.clone();
        }
        let mut v = o.value();
        self.at_version(&mut v);
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// Sets `apiVersion` to this request's version (see [`Cx::bytes_of`]).
    pub fn at_version(&self, v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(self.api_version.clone()));
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

    /// The declared schema of the URL's version; without one everything is kept as sent.
    fn schema(&self) -> Option<&Value> {
        let version = self.api_version.rsplit('/').next().unwrap_or_default();
        schema::of_version(&self.res, version)
    }

    /// Drops undeclared fields and fills defaults, as the CRD decoder does to every body.
    fn prune_and_default(&self, v: &mut Value) {
        meta::prune(v);
        if let Some(s) = self.schema() {
            schema::prune_and_default(v, s);
        }
    }

    /// [`Cx::prune_and_default`] for what the client sent: with `fieldValidation=Strict`
    /// (kubectl's default when the OpenAPI document offers the parameter, as ours does) an
    /// unknown field is a 400, as kube-apiserver's strict decoding answers.
    fn prune_request(&self, v: &mut Value) -> Result<(), Status> {
        let mut pruned = meta::prune(v);
        if let Some(s) = self.schema() {
            pruned.extend(schema::prune_and_default(v, s));
        }
        self.strict(pruned)
    }

    /// [`Cx::prune_request`] without defaults, for a server-side apply configuration.
    fn prune_config(&self, v: &mut Value) -> Result<(), Status> {
        let mut pruned = meta::prune(v);
        if let Some(s) = self.schema() {
            pruned.extend(schema::prune_only(v, s));
        }
        self.strict(pruned)
    }

    /// What `fieldValidation` makes of pruned fields: `Strict` refuses them, `Warn` (the
    /// default, as in kube-apiserver) answers with a `Warning` header each, `Ignore` drops them.
    fn strict(&self, pruned: Vec<String>) -> Result<(), Status> {
        if pruned.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = pruned.iter().map(|p| format!("unknown field {p:?}")).collect();
        match self.q("fieldValidation") {
            "Strict" => {}
            "Ignore" => return Ok(()),
            _ => {
                if let Ok(mut w) = self.warnings.lock() {
                    w.extend(fields);
                }
                return Ok(());
            }
        }
        Err(Status::bad_request(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )))
    }

    /// 422 with every violation of the schema by the object about to be written; for an
    /// update, what is unchanged from `old` is not held against it (kube's ratcheting).
    fn validate(&self, v: &Value, old: Option<&Value>) -> Result<(), Status> {
        let mut causes = meta::validate(v);
        if let Some(s) = self.schema() {
            causes.extend(schema::validate_update(v, old, s));
        }
        if causes.is_empty() {
            return Ok(());
        }
        Err(Status::invalid(
            &self.group,
            &self.res.kind,
            &object::name_of(v),
            &causes,
        ))
    }

    fn not_found(&self, name: &str) -> Status {
        Status::not_found(&self.group, &self.res.plural, name)
    }

    fn conflict(&self, name: &str, why: &str) -> Status {
        Status::conflict(&self.group, &self.res.plural, name, why)
    }

    pub fn selector(&self) -> Result<Selector, Status> {
        // A name (from the legacy `/watch/.../<name>` path, or authorized from the field
        // selector) always restricts the selection, as in kube's ListResource: a selector
        // naming another object is refused, anything else is ANDed with the name.
        let f = self.q("fieldSelector");
        let field = if self.name.is_empty() {
            f.to_string()
        } else if f.trim().is_empty() {
            format!("metadata.name={}", self.name)
        } else {
            if crate::apiserver::filters::requestinfo::exact_name(f).is_some_and(|n| n != self.name) {
                return Err(Status::bad_request(
                    "fieldSelector metadata.name doesn't match requested name",
                ));
            }
            format!("{f},metadata.name={}", self.name)
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

/// `dryRun` and `fieldValidation` as kube-apiserver checks them: any dryRun value but `All`
/// (in any repetition) is refused rather than taken as a real write.
fn write_options_valid(query: &str) -> Result<(), Status> {
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "dryRun" if v != "All" => {
                return Err(Status::invalid(
                    "meta.k8s.io",
                    "CreateOptions",
                    "",
                    &[(
                        "dryRun".into(),
                        format!("Unsupported value: {v:?}: supported values: \"All\""),
                    )],
                ))
            }
            "fieldValidation" if !matches!(v.as_str(), "" | "Ignore" | "Warn" | "Strict") => {
                return Err(Status::bad_request(format!(
                    "invalid fieldValidation directive: {v:?}: only Ignore, Warn and Strict are supported"
                )))
            }
            _ => {}
        }
    }
    Ok(())
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

impl StorageHandler {
    fn get(&self, cx: &Cx) -> Result<Response<Body>, Status> {
        let obj = self
            .storage
            .get(&cx.key(&cx.name))
            .ok_or_else(|| cx.not_found(&cx.name))?;
        if let Some(v) = output::one(cx, cx.form, &obj.value()) {
            return Ok(value_response(StatusCode::OK, &v));
        }
        Ok(json_response(StatusCode::OK, cx.bytes_of(&obj)))
    }

    async fn list(&self, cx: &Cx) -> Result<Response<Body>, Status> {
        let exact = consistency::check_list(cx, self.storage.as_ref()).await?;
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
        if let Some(want) = exact.filter(|w| *w != page.rv) {
            return Err(consistency::exact_gone(want, page.rv));
        }
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
            out.extend_from_slice(&cx.bytes_of(o));
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
        cx.prune_request(&mut v)?;
        object::prepare_create(cx, &mut v)?;
        cx.validate(&v, None)?;
        managed::track_update(cx, None, &mut v);
        let name = object::name_of(&v);
        self.namespaces
            .admit_create(&cx.namespace, &cx.group, &cx.res.plural, &name)
            .await?;
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
    async fn write_update(&self, cx: &Cx, old: &Value, mut new: Value, rv: u64) -> Result<Response<Body>, Status> {
        // Both sides as kube-apiserver would see them (it prunes and defaults what it reads
        // from storage too), so a default added to the schema later is not a spec change.
        let mut old = old.clone();
        // Compared and written at the request's version (versions differ only in apiVersion).
        cx.at_version(&mut old);
        cx.at_version(&mut new);
        cx.prune_and_default(&mut old);
        cx.prune_request(&mut new)?;
        let mut next = object::prepare_update(cx, &old, new, cx.has_status())?;
        // The whole object, also for /status: kube validates what would be stored.
        cx.validate(&next, Some(&old))?;
        managed::track_update(cx, Some(&old), &mut next);
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
            cx.at_version(&mut last);
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
            // Patched as kube-apiserver would read it: pruned and defaulted.
            let mut old_v = old.value();
            cx.at_version(&mut old_v);
            cx.prune_and_default(&mut old_v);
            let mut new = old_v.clone();
            match &json_patch {
                None => json_patch::merge(&mut new, &patch),
                Some(p) => patch::apply(&mut new, p).map_err(|e| {
                    Status::invalid(&cx.group, &cx.res.kind, &cx.name, &[("patch".into(), e.to_string())])
                })?,
            }
            object::check_patched(cx, &new)?;
            object::check_depth(&new)?;
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
}

/// Whether a patch may be re-applied to a newer object after a lost race: only when it does not
/// pin the resourceVersion itself (then the conflict is the client's).
fn merge_retryable(patch: &Value) -> bool {
    patch.pointer("/metadata/resourceVersion").is_none()
}
