//! The storage-backed [`ResourceHandler`]: kube-apiserver's custom-resource semantics over
//! [`Storage`](crate::apiserver::storage::Storage). Keys are `/<plural>/<namespace>/<name>`
//! (namespace empty for cluster scope), so every list is a key prefix.
//!
//! Each verb has its own file; this one keeps the handler, the dispatch by verb, and what
//! every verb uses: the per-request context `Cx` (query, output form, schema, errors) and
//! the JSON responses.

// One file per verb.
mod admit;
mod apply;
mod create;
mod delete;
mod get;
mod list;
mod patch;
mod update;
mod watch;

// What the verbs share.
mod consistency;
mod fields;
pub(crate) use fields::{merge as apply_merge, schema as apply_schema};
mod fields_v1;
mod managed;
mod meta;
mod object;
pub(crate) use object::uuid;
mod output;
mod schema;
pub use schema::rule_problems;
pub(crate) use schema::{
    cel_compile, cel_context, cel_cost_bound, cel_error, cel_unsupported, to_cel, CEL_PER_CALL_LIMIT,
    CEL_REQUEST_BUDGET,
};
mod select;
mod table;

use super::body::{full, Body};
use crate::apiserver::admission::namespace_lifecycle::Namespaces;
use crate::apiserver::admission::Admission;
use crate::apiserver::apierrors::Status;
use crate::apiserver::request::query_pairs;
use crate::apiserver::router::{ResourceHandler, ResourceRequest};
use crate::apiserver::storage::{EtcdProbe, StorageError, Store};
use crate::crd::ServedResource;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, HeaderValue, Response, StatusCode};
use select::Selector;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// How often a patch re-reads and retries after losing a write race.
const PATCH_RETRIES: usize = 8;

/// Serves declared resources from the embedded store or etcd.
pub struct StorageHandler {
    storage: Arc<dyn Store>,
    group: String,
    namespaces: Arc<Namespaces>,
    admission: Admission,
    /// Whether etcd answers, when the storage is etcd.
    etcd: Option<Arc<EtcdProbe>>,
}

impl StorageHandler {
    /// A handler for `group` over `storage`, admitting creates through `namespaces`.
    pub fn new(storage: Arc<dyn Store>, group: String, namespaces: Arc<Namespaces>) -> Arc<Self> {
        Self::with_admission(storage, group, namespaces, Admission::none())
    }

    /// [`StorageHandler::new`] with the admission plugins writes go through.
    pub fn with_admission(
        storage: Arc<dyn Store>,
        group: String,
        namespaces: Arc<Namespaces>,
        admission: Admission,
    ) -> Arc<Self> {
        Self::on_etcd(storage, group, namespaces, admission, None)
    }

    /// [`StorageHandler::with_admission`] over an etcd store, whose reachability `etcd`
    /// follows: while etcd does not answer, requests fail at once with 503 instead of each
    /// waiting for its own timeout, and `/readyz` has a failing `etcd` check.
    pub fn on_etcd(
        storage: Arc<dyn Store>,
        group: String,
        namespaces: Arc<Namespaces>,
        admission: Admission,
        etcd: Option<Arc<EtcdProbe>>,
    ) -> Arc<Self> {
        Arc::new(StorageHandler {
            storage,
            group,
            namespaces,
            admission,
            etcd,
        })
    }

    /// A 503 when etcd is known to be unreachable and the request needs it. Watches and reads
    /// at `resourceVersion=0` (any version will do) are served from the watch cache, as
    /// kube-apiserver serves them; everything else needs etcd's current state.
    fn etcd_gate(&self, verb: &str, cx: &Cx) -> Result<(), Status> {
        let Some(why) = self.etcd.as_ref().and_then(|p| p.error()) else {
            return Ok(());
        };
        let from_cache = verb == "watch" || (matches!(verb, "get" | "list") && cx.q("resourceVersion") == "0");
        if from_cache {
            return Ok(());
        }
        Err(Status::unavailable(format!("storage unavailable: {why}")))
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

    fn admission_not_ready(&self) -> Option<String> {
        self.admission.not_ready()
    }

    fn etcd_unreachable(&self) -> Option<Option<String>> {
        self.etcd.as_ref().map(|p| p.error())
    }
}

impl StorageHandler {
    /// A get, or a watch that begins with the current state, without a resourceVersion reads
    /// consistently (kube-apiserver reads such a get from etcd, and waits for its watch cache
    /// to be fresh before such a watch's initial events).
    async fn consistent(&self, cx: &Cx) -> Result<(), Status> {
        let initial_events = cx.verb == "get"
            || cx
                .query
                .get("sendInitialEvents")
                .map(|v| crate::apiserver::request::go_query_bool(v))
                != Some(false);
        if cx.q("resourceVersion").is_empty() && initial_events {
            consistency::consistent_read(self.storage.as_ref()).await?;
        }
        Ok(())
    }
}

/// Bodies above this size are processed off the async worker threads.
const LARGE_BODY: usize = 64 * 1024;

impl StorageHandler {
    async fn serve(&self, req: ResourceRequest) -> Response<Body> {
        {
            let cx = Cx::new(&self.group, &req);
            let encoding = match output::negotiate(&req.headers) {
                Ok((_, e)) => e,
                Err(s) => return s.into_response(),
            };
            if let Err(s) = write_options_valid(&req.query) {
                return output::encode(encoding, s.into_response()).await;
            }
            let r = match self.etcd_gate(&req.info.verb, &cx) {
                Err(s) => Err(s),
                Ok(()) => self.dispatch(&cx, &req).await,
            };
            let mut r = output::encode(encoding, r.unwrap_or_else(Status::into_response)).await;
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

    /// The verb's handler.
    async fn dispatch(&self, cx: &Cx, req: &ResourceRequest) -> Result<Response<Body>, Status> {
        match req.info.verb.as_str() {
            "get" => {
                self.consistent(cx).await?;
                self.get(cx)
            }
            "list" => self.list(cx).await,
            "watch" => {
                self.consistent(cx).await?;
                Ok(watch::serve(self.storage.as_ref(), cx, req.shutdown.clone()))
            }
            "create" => self.create(cx, &req.body).await,
            "update" => self.update(cx, &req.body).await,
            "patch" => self.patch(cx, req).await,
            "delete" => self.delete(cx, &req.body).await,
            "deletecollection" => self.delete_collection(cx, &req.body).await,
            v => Err(Status::method_not_supported(&self.group, &req.info.resource, v)),
        }
    }
}

/// Everything about one request the verbs need.
#[derive(Clone)]
pub(crate) struct Cx {
    pub group: String,
    pub api_version: String,
    pub res: Arc<ServedResource>,
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
    /// The request body's media type, as sent.
    pub content_type: String,
    /// Who sent the request (admission tells webhooks and policies).
    pub user: crate::apiserver::authn::UserInfo,
    /// The request's verb (`create`, `update`, `patch`, `delete`, ...).
    pub verb: String,
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
            form: output::negotiate(&req.headers).map_or(output::Form::Object, |(f, _)| f),
            warnings: Default::default(),
            manager,
            content_type: req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            user: req.user.clone(),
            verb: req.info.verb.clone(),
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
        let version = self.api_version.rsplit('/').next().unwrap_or_default();
        let kind = &self.res.kind;
        Err(Status::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            fields.join(", ")
        )))
    }

    /// 422 with every violation of the schema by the object about to be written; for an
    /// update, what is unchanged from `old` is not held against it (kube's ratcheting).
    fn validate(&self, v: &Value, old: Option<&Value>) -> Result<(), Status> {
        let mut causes = meta::validate(v);
        if let Some(old) = old {
            causes.extend(meta::validate_update(v, old));
        }
        if let Some(s) = self.schema() {
            causes.extend(schema::validate_update(v, old, s));
            schema::validate_rules(v, old, s, &mut causes);
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
        let name = crate::apiserver::fieldselector::escape(&self.name);
        let field = if self.name.is_empty() {
            f.to_string()
        } else if f.trim().is_empty() {
            format!("metadata.name={name}")
        } else {
            if crate::apiserver::request::exact_name(f).is_some_and(|n| n != self.name) {
                return Err(Status::bad_request(
                    "fieldSelector metadata.name doesn't match requested name",
                ));
            }
            format!("{f},metadata.name={name}")
        };
        Selector::parse(self.q("labelSelector"), &field).map_err(Status::bad_request)
    }

    /// Maps a storage error on object `name`.
    fn storage_err(&self, name: &str, e: StorageError) -> Status {
        if let StorageError::TooLargeResourceVersion { requested, current } = e {
            return consistency::too_large(requested, current);
        }
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
            // Worth retrying: the store is away (etcd down) or slow, not the request wrong.
            StorageError::Unavailable(m) => Status::unavailable(m),
            StorageError::Timeout(m) => Status::timeout(m, 1),
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
