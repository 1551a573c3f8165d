//! The `application/apply-patch+yaml` verb: server-side apply, creating the object when it
//! does not exist yet. Here too are its merge and ownership rules: apply merges a
//! configuration, removes what its manager stopped applying and refuses to silently
//! overwrite what other managers set (the `managedFields` entries it reads and rewrites are
//! kept by [`super::managed`]).

use super::fields::{self, FieldSet};
use super::managed::{self, decode, schema_of, store, subresource, Entry, APPLY, LAST_APPLIED, UPDATE};
use super::{json_response, object, value_response, Cx, StorageHandler, PATCH_RETRIES};
use crate::apiserver::admission::Operation;
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::StorageError;
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

/// `force` as Go's `strconv.ParseBool` reads it; anything else is not forcing.
pub(super) fn force(cx: &Cx) -> bool {
    matches!(cx.q("force"), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

impl StorageHandler {
    pub(super) async fn apply(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        managed::validate_options(cx, "PatchOptions", true)?;
        let mut cfg = decode_config(cx, body)?;
        object::check_depth(&cfg)?;
        cx.prune_config(&mut cfg)?;
        // A resourceVersion in the configuration is a precondition, as for other patches.
        let pinned = cfg
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let key = cx.key(&cx.name);
        for _ in 0..PATCH_RETRIES {
            let Some(old) = self.storage.get(&key) else {
                // Subresources cannot create their object.
                if cx.status_sub {
                    return Err(cx.not_found(&cx.name));
                }
                let mut v = apply_create(cx, &cfg)?;
                cx.prune_and_default(&mut v);
                self.admit_mutate(cx, Operation::Create, &mut v, None).await?;
                cx.validate(&v, None)?;
                self.namespaces
                    .admit_create(&cx.namespace, &cx.group, &cx.res.plural, &cx.name)
                    .await?;
                self.admit_validate(cx, Operation::Create, &cx.name, Some(&v), None)
                    .await?;
                if cx.dry_run() {
                    return Ok(value_response(StatusCode::CREATED, &v));
                }
                match self.storage.create(&key, v).await {
                    Ok(obj) => return Ok(json_response(StatusCode::CREATED, obj.json.clone())),
                    // Created meanwhile: apply onto what is there now.
                    Err(StorageError::AlreadyExists) => continue,
                    Err(e) => return Err(cx.storage_err(&cx.name, e)),
                }
            };
            if pinned.as_ref().is_some_and(|rv| *rv != old.rv.to_string()) {
                return Err(cx.conflict(&cx.name, Status::STALE));
            }
            let mut live = old.value();
            cx.at_version(&mut live);
            let mut next = apply_update(cx, &live, &cfg, force(cx))?;
            // As in write_update: defaults filled and the result validated against what was
            // there (unchanged invalid parts are tolerated).
            let mut before = live.clone();
            cx.prune_and_default(&mut before);
            cx.prune_and_default(&mut next);
            self.admit_mutate(cx, Operation::Update, &mut next, Some(&before))
                .await?;
            cx.validate(&next, Some(&before))?;
            self.admit_validate(cx, Operation::Update, &cx.name, Some(&next), Some(&before))
                .await?;
            // Nothing to change, not even ownership: no write, no new resourceVersion.
            if next == live {
                return Ok(json_response(StatusCode::OK, cx.bytes_of(&old)));
            }
            match self.write_prepared(cx, next, old.rv).await {
                Err(s) if s.reason == "Conflict" && pinned.is_none() => continue,
                r => return r,
            }
        }
        Err(cx.conflict(&cx.name, Status::STALE))
    }
}

/// The fields of `cfg` an apply to this endpoint owns: with a status subresource, the main
/// resource never writes status and /status writes nothing else.
fn applied_set(cx: &Cx, cfg: &Value) -> FieldSet {
    let status = vec!["f:status".to_string()];
    fields::applied(cfg, &schema_of(cx))
        .into_iter()
        .filter(|p| {
            if cx.status_sub {
                fields::under(p, &status)
            } else {
                !cx.has_status() || !fields::under(p, &status)
            }
        })
        .collect()
}

/// Parses an apply body (YAML or JSON) and checks that it is an object of the URL's type and
/// name, as kube does before merging.
pub(super) fn decode_config(cx: &Cx, body: &[u8]) -> Result<Value, Status> {
    let cfg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body).map_err(|e| Status::bad_request(format!("error decoding YAML: {e}")))?,
    };
    if !cfg.is_object() {
        return Err(Status::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            cx.res.kind
        )));
    }
    let api_version = cfg.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api_version.is_empty() {
        // What kube's apply decoding reports for a group-version-kind without a version.
        let kind = cfg.get("kind").and_then(Value::as_str).unwrap_or_default();
        return Err(Status::bad_request(format!("invalid object type: /, Kind={kind}")));
    }
    if api_version != cx.api_version {
        return Err(Status::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {api_version}, expected: {}",
            cx.api_version
        )));
    }
    if cfg.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
        return Err(Status::bad_request("metadata.managedFields must be nil"));
    }
    // The remaining type, namespace and name checks are the ones of every other write.
    let bytes = serde_json::to_vec(&cfg).map_err(|e| Status::internal(e.to_string()))?;
    let cfg = object::decode(cx, &bytes)?;
    let name = object::name_of(&cfg);
    if name != cx.name {
        return Err(Status::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            cx.name
        )));
    }
    Ok(cfg)
}

/// The object an apply creates: `cfg` with the system fields of a create, owned by the applier.
pub(super) fn apply_create(cx: &Cx, cfg: &Value) -> Result<Value, Status> {
    let mut v = cfg.clone();
    object::prepare_create(cx, &mut v)?;
    let entry = Entry {
        manager: cx.manager.clone(),
        operation: APPLY.into(),
        api_version: cx.api_version.clone(),
        time: Some(object::now()),
        subresource: String::new(),
        set: applied_set(cx, cfg),
    };
    store(&mut v, vec![entry]);
    Ok(v)
}

/// The manager kube gives an object's fields at the first apply to it when nothing tracked them.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// The object an apply of `cfg` onto the stored `live` writes, or the conflicts that stop it.
pub(super) fn apply_update(cx: &Cx, live: &Value, cfg: &Value, force: bool) -> Result<Value, Status> {
    let sub = subresource(cx);
    let mut entries = decode(live).unwrap_or_default();
    let schema = schema_of(cx);
    if entries.is_empty() {
        // kube's skipNonAppliedManager: the first apply to an object that tracks no fields
        // first gives every existing field to an Update manager "before-first-apply", so the
        // apply conflicts with what was there, as it would with any other manager.
        let (existing, _) = fields::compare(&json!({}), live, &schema);
        if !existing.is_empty() {
            entries.push(Entry {
                manager: BEFORE_FIRST_APPLY.into(),
                operation: UPDATE.into(),
                api_version: cx.api_version.clone(),
                time: Some(object::now()),
                subresource: sub.into(),
                set: existing,
            });
        }
    }
    let set = applied_set(cx, cfg);
    let own = entries.iter().position(|e| e.is(&cx.manager, APPLY, "", sub));
    let last = own.map(|i| entries[i].set.clone()).unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != own)
        .flat_map(|(_, e)| e.set.iter().cloned())
        .collect();

    let mut merged = live.clone();
    fields::merge(&mut merged, cfg, Some(&schema));
    // What this manager applied before and omits now goes, unless someone else still owns it
    // or something below it. A map that still has content stays (kube adds such items back).
    let mut gone: Vec<&fields::Path> = last
        .iter()
        .filter(|p| !set.contains(*p))
        .filter(|p| !fields::has_under(&others, p) && !fields::has_under(&set, p))
        .collect();
    // Outermost first: an item goes whole, before its key fields could be removed from it.
    gone.sort_by_key(|p| p.len());
    fields::remove_all(&mut merged, &gone);

    let mut next = object::prepare_update(cx, live, merged, cx.has_status())?;
    let (changed, removed) = fields::compare(live, &next, &schema);
    let mut conflicts: Vec<(String, fields::Path)> = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) == own {
            continue;
        }
        let taken: FieldSet = e.set.intersection(&changed).cloned().collect();
        for p in &taken {
            conflicts.push((describe(e), p.clone()));
        }
        e.set = e.set.difference(&taken).cloned().collect();
        e.set = e.set.difference(&removed).cloned().collect();
    }
    if !force {
        let allowed = client_side_applied(cx, live);
        let remaining: Vec<(String, String)> = conflicts
            .iter()
            .filter(|(_, p)| !allowed.contains(p))
            .map(|(m, p)| (m.clone(), fields::display(p)))
            .collect();
        if !remaining.is_empty() {
            return Err(conflict(remaining));
        }
    }
    // The entry's time moves only when the apply changed the object.
    let time = if strip_managed(live) != strip_managed(&next) {
        Some(object::now())
    } else {
        own.and_then(|i| entries[i].time.clone())
    };
    let entry = Entry {
        manager: cx.manager.clone(),
        operation: APPLY.into(),
        api_version: cx.api_version.clone(),
        time,
        subresource: sub.into(),
        set,
    };
    match own {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    store(&mut next, entries);
    if !cx.status_sub && cx.manager == "kubectl" && has_last_applied(live) {
        sync_last_applied(&mut next, cfg);
    }
    Ok(next)
}

fn strip_managed(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    c
}

/// A manager as kube names it in conflicts (`printManager`).
fn describe(e: &Entry) -> String {
    let mut s = format!("{:?}", e.manager);
    if !e.subresource.is_empty() {
        s = format!("{s} with subresource {:?}", e.subresource);
    }
    if e.operation == UPDATE {
        s = format!("{s} using {}", e.api_version);
    }
    s
}

/// 409 for apply conflicts, worded like `NewConflictError`; `conflicts` are `(manager, path)`.
fn conflict(mut conflicts: Vec<(String, String)>) -> Status {
    conflicts.sort();
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
        .collect();
    let message = if let [(m, p)] = conflicts.as_slice() {
        format!("Apply failed with 1 conflict: conflict with {m}: {p}")
    } else {
        let mut lines = Vec::new();
        let mut current = None;
        for (m, p) in &conflicts {
            if current != Some(m) {
                lines.push(format!("conflicts with {m}:"));
                current = Some(m);
            }
            lines.push(format!("- {p}"));
        }
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    let mut details = Map::new();
    details.insert("causes".into(), Value::Array(causes));
    Status {
        code: StatusCode::CONFLICT,
        reason: "Conflict",
        message,
        details: Some(details),
    }
}

/// For `kubectl`, the fields its client-side apply annotation still describes: the value there
/// is what the object holds. kube lets `kubectl apply --server-side` take those over without
/// `--force-conflicts`, so that moving from client-side to server-side apply just works
/// (`lastAppliedManager`).
fn client_side_applied(cx: &Cx, live: &Value) -> FieldSet {
    if cx.manager != "kubectl" {
        return FieldSet::new();
    }
    let Some(last) = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    else {
        return FieldSet::new();
    };
    fields::applied(&last, &schema_of(cx))
        .into_iter()
        .filter(|p| fields::value_at(&last, p).is_some() && fields::value_at(&last, p) == fields::value_at(live, p))
        .collect()
}

fn has_last_applied(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(LAST_APPLIED))
}

/// kube rewrites client-side apply's annotation to what `kubectl apply --server-side` applied,
/// so that a later client-side apply does not undo it (`lastAppliedUpdater`).
fn sync_last_applied(next: &mut Value, cfg: &Value) {
    let mut c = cfg.clone();
    if let Some(a) = c.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.remove(LAST_APPLIED);
    }
    // Go marshals maps with sorted keys and its encoder ends with a newline.
    let text = format!("{}\n", sorted(&c));
    if let Some(a) = next.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.insert(LAST_APPLIED.into(), Value::String(text));
    }
}

fn sorted(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), sorted(&o[*k])))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(sorted).collect::<Vec<_>>().join(",")),
        x => x.to_string(),
    }
}
