//! `metadata.managedFields` and server-side apply, after kube-apiserver's field manager for
//! custom resources: every write records which manager set which fields; apply merges a
//! configuration, removes what its manager stopped applying and refuses to silently overwrite
//! what other managers set.

use super::fields::{self, FieldSet};
use super::{object, Cx};
use crate::apiserver::apierrors::Status;
use http::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The annotation of client-side apply, which kube keeps in step for `kubectl` appliers.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `validation.FieldManagerMaxLength`.
const MAX_MANAGER_LEN: usize = 128;

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub set: FieldSet,
}

impl Entry {
    /// kube keys managers by name, operation and subresource, and Update managers also by
    /// apiVersion (`BuildManagerIdentifier`).
    fn is(&self, manager: &str, operation: &str, api_version: &str, subresource: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == APPLY || self.api_version == api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), fields::to_fields_v1(&self.set));
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Result<Entry, String> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        if s("fieldsType") != "FieldsV1" {
            return Err(format!("unsupported FieldsType {:?}", s("fieldsType")));
        }
        Ok(Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            time: Some(s("time")).filter(|t| !t.is_empty()),
            subresource: s("subresource"),
            set: fields::from_fields_v1(v.get("fieldsV1").unwrap_or(&Value::Null))?,
        })
    }
}

/// The entries of `v`'s `metadata.managedFields`; none when absent.
pub fn decode(v: &Value) -> Result<Vec<Entry>, String> {
    match v.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(Entry::from_json).collect(),
        Some(_) => Err("managedFields is not a list".into()),
    }
}

/// Writes `entries` as `v`'s managedFields, dropping empty ones, in kube's order (operation,
/// time, manager, apiVersion, subresource).
fn store(v: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    let mut entries = cap_updates(entries);
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert(
                "managedFields".into(),
                Value::Array(entries.iter().map(Entry::to_json).collect()),
            );
        }
    }
}

/// kube keeps at most this many Update entries (`DefaultMaxUpdateManagers`), so that an object
/// written by many clients does not grow without bound.
const MAX_UPDATE_MANAGERS: usize = 10;

/// The entry older Update entries are folded into (one per apiVersion).
const ANCIENT: &str = "ancient-changes";

/// Folds the oldest Update entries into `ancient-changes` until at most
/// [`MAX_UPDATE_MANAGERS`] remain (`capManagersManager`).
fn cap_updates(entries: Vec<Entry>) -> Vec<Entry> {
    let (mut updates, mut out): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.operation == UPDATE);
    if updates.len() <= MAX_UPDATE_MANAGERS {
        out.extend(updates);
        return out;
    }
    updates.sort_by(|a, b| (&a.time, &a.manager).cmp(&(&b.time, &b.manager)));
    // Per apiVersion, the bucket: an existing ancient-changes entry, else the oldest entry.
    let mut bucket: HashMap<String, usize> = updates
        .iter()
        .enumerate()
        .filter(|(_, e)| e.manager == ANCIENT && e.subresource.is_empty())
        .map(|(i, e)| (e.api_version.clone(), i))
        .collect();
    let mut count = updates.len();
    let mut folded = vec![false; updates.len()];
    for i in 0..updates.len() {
        if count <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = updates[i].api_version.clone();
        let b = match bucket.get(&version) {
            Some(&b) if b != i => b,
            Some(_) => continue,
            None => {
                bucket.insert(version, i);
                continue;
            }
        };
        let set = std::mem::take(&mut updates[i].set);
        let time = updates[i].time.clone();
        let target = &mut updates[b];
        target.manager = ANCIENT.into();
        target.subresource = String::new();
        target.set.extend(set);
        // The folded entry is the newer one; its time is the bucket's now.
        target.time = time;
        folded[i] = true;
        count -= 1;
    }
    out.extend(updates.into_iter().zip(folded).filter(|(_, f)| !f).map(|(e, _)| e));
    out
}

/// The manager of a non-apply write: `fieldManager`, or the User-Agent up to its first `/`
/// (`prefixFromUserAgent`), without unprintable characters and cut to the length limit.
pub fn default_manager(field_manager: &str, user_agent: &str) -> String {
    if !field_manager.is_empty() {
        return field_manager.to_string();
    }
    let mut out = String::new();
    for c in user_agent.split('/').next().unwrap_or_default().chars() {
        if !printable(c) {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_MANAGER_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// Go's `unicode.IsPrint`, closely enough: no controls, and no spaces but U+0020.
fn printable(c: char) -> bool {
    !c.is_control() && (c == ' ' || !c.is_whitespace())
}

/// Checks the `fieldManager` and `force` options of a request whose options kind is `opts`
/// (`CreateOptions`, `UpdateOptions`, `PatchOptions`), as `ValidatePatchOptions` does.
pub fn validate_options(cx: &Cx, opts: &str, apply: bool) -> Result<(), Status> {
    let fm = cx.q("fieldManager");
    let mut causes = Vec::new();
    if opts == "PatchOptions" {
        if !apply && cx.query.contains_key("force") {
            causes.push((
                "force".to_string(),
                "Forbidden: may not be specified for non-apply patch".to_string(),
            ));
        }
        if apply && fm.is_empty() {
            causes.push((
                "fieldManager".to_string(),
                "Required value: is required for apply patch".to_string(),
            ));
        }
    }
    if fm.len() > MAX_MANAGER_LEN {
        causes.push((
            "fieldManager".to_string(),
            format!("Too long: may not be more than {MAX_MANAGER_LEN} bytes"),
        ));
    }
    for (i, c) in fm.char_indices() {
        if !printable(c) {
            causes.push((
                "fieldManager".to_string(),
                format!(
                    "Invalid value: {fm:?}: invalid character U+{:04X} (at position {i})",
                    c as u32
                ),
            ));
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    let mut st = Status::invalid("meta.k8s.io", opts, "", &causes);
    // kube names the kind of each problem; `Status::invalid` says "invalid" for all.
    if let Some(Value::Array(list)) = st.details.as_mut().and_then(|d| d.get_mut("causes")) {
        for c in list.iter_mut() {
            let m = c["message"].as_str().unwrap_or_default();
            let reason = match m.split(':').next().unwrap_or_default() {
                "Required value" => "FieldValueRequired",
                "Forbidden" => "FieldValueForbidden",
                "Too long" => "FieldValueTooLong",
                _ => "FieldValueInvalid",
            };
            c["reason"] = json!(reason);
        }
    }
    Err(st)
}

/// Whether a write asks to clear managedFields: `[]` or `[{}]` (`isResetManagedFields`).
fn is_reset(v: &Value) -> bool {
    match v.pointer("/metadata/managedFields") {
        Some(Value::Array(a)) => a.is_empty() || (a.len() == 1 && a[0].as_object().is_some_and(Map::is_empty)),
        _ => false,
    }
}

/// The schema ownership follows for this request's version.
fn schema_of(cx: &Cx) -> Value {
    let version = cx
        .res
        .versions
        .iter()
        .find(|v| format!("{}/{}", cx.group, v.name) == cx.api_version);
    fields::schema(version.and_then(|v| v.open_api_v3_schema.as_ref()))
}

fn subresource(cx: &Cx) -> &'static str {
    if cx.status_sub {
        "status"
    } else {
        ""
    }
}

/// Records a create, update or non-apply patch in `next.metadata.managedFields`: `old` is the
/// stored object (`None` for a create), `next` what will be written.
pub fn track_update(cx: &Cx, old: Option<&Value>, next: &mut Value) {
    // Clearing is honoured on the main resource only: a /status write keeps the stored metadata.
    if !cx.status_sub && is_reset(next) {
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        return;
    }
    // Entries the client sent replace the stored ones (that is how they are edited), unless
    // they are missing or broken: clients unaware of the field must not wipe it.
    let mut entries = match decode(next) {
        Ok(e) if !e.is_empty() && !cx.status_sub => e,
        _ => old.map(|o| decode(o).unwrap_or_default()).unwrap_or_default(),
    };
    let empty = json!({});
    let (changed, removed) = fields::compare(old.unwrap_or(&empty), next, &schema_of(cx));
    let sub = subresource(cx);
    // What this write set now belongs to its manager alone; what it removed to nobody.
    for e in &mut entries {
        e.set = e.set.difference(&changed).cloned().collect();
        e.set = e.set.difference(&removed).cloned().collect();
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.is(&cx.manager, UPDATE, &cx.api_version, sub))
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = Some(object::now());
            }
            None => entries.push(Entry {
                manager: cx.manager.clone(),
                operation: UPDATE.into(),
                api_version: cx.api_version.clone(),
                time: Some(object::now()),
                subresource: sub.into(),
                set: changed,
            }),
        }
    }
    store(next, entries);
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
pub fn decode_config(cx: &Cx, body: &[u8]) -> Result<Value, Status> {
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
pub fn apply_create(cx: &Cx, cfg: &Value) -> Result<Value, Status> {
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

/// The object an apply of `cfg` onto the stored `live` writes, or the conflicts that stop it.
pub fn apply_update(cx: &Cx, live: &Value, cfg: &Value, force: bool) -> Result<Value, Status> {
    let sub = subresource(cx);
    let mut entries = decode(live).unwrap_or_default();
    let schema = schema_of(cx);
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
        .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServedResource;
    use std::collections::HashMap;

    fn cx(manager: &str, status_sub: bool) -> Cx {
        let res: ServedResource = serde_json::from_value(json!({
            "kind": "Thing", "plural": "things", "versions": [{"name": "v1"}], "subresources": {"status": {}}
        }))
        .expect("resource");
        Cx {
            group: "g".into(),
            api_version: "g/v1".into(),
            version_prefix: r#"{"apiVersion":"g/v1""#.into(),
            res,
            namespace: "n".into(),
            name: "a".into(),
            status_sub,
            query: HashMap::new(),
            form: super::super::output::Form::Object,
            manager: manager.into(),
            warnings: Default::default(),
        }
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "g/v1", "kind": "Thing", "metadata": {"name": "a", "namespace": "n"}, "spec": spec})
    }

    fn fields_of<'a>(v: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
        v["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == op)
            .map(|e| &e["fieldsV1"])
    }

    #[test]
    fn updates_move_ownership_and_drop_empty_entries() {
        let old = obj(json!({"size": 1}));
        let mut created = old.clone();
        track_update(&cx("maker", false), None, &mut created);
        assert_eq!(
            fields_of(&created, "maker", "Update"),
            Some(&json!({"f:spec": {".": {}, "f:size": {}}}))
        );
        // Another manager sets the only field `maker` still owned (the map itself stays its).
        let mut next = created.clone();
        next["spec"]["size"] = json!(2);
        next["spec"]["other"] = json!("x");
        track_update(&cx("editor", false), Some(&created), &mut next);
        assert_eq!(
            fields_of(&next, "editor", "Update"),
            Some(&json!({"f:spec": {"f:other": {}, "f:size": {}}}))
        );
        assert_eq!(fields_of(&next, "maker", "Update"), Some(&json!({"f:spec": {}})));
        // Removing spec altogether leaves nobody owning anything: both entries go.
        let mut gone = next.clone();
        gone.as_object_mut().expect("object").remove("spec");
        track_update(&cx("cleaner", false), Some(&next), &mut gone);
        assert!(gone["metadata"].get("managedFields").is_none(), "{gone}");
        // A write that changes nothing keeps entries and their times.
        let mut same = next.clone();
        track_update(&cx("noop", false), Some(&next), &mut same);
        assert_eq!(same["metadata"]["managedFields"], next["metadata"]["managedFields"]);
    }

    #[test]
    fn empty_list_resets_and_omission_keeps() {
        let mut created = obj(json!({"size": 1}));
        track_update(&cx("maker", false), None, &mut created);
        let mut omit = created.clone();
        omit["metadata"].as_object_mut().expect("meta").remove("managedFields");
        omit["spec"]["x"] = json!(1);
        track_update(&cx("editor", false), Some(&created), &mut omit);
        assert!(fields_of(&omit, "maker", "Update").is_some(), "{omit}");
        for reset in [json!([]), json!([{}])] {
            let mut r = created.clone();
            r["metadata"]["managedFields"] = reset;
            track_update(&cx("editor", false), Some(&created), &mut r);
            assert!(r["metadata"].get("managedFields").is_none(), "{r}");
        }
    }

    #[test]
    fn apply_removes_omitted_fields_unless_shared() {
        let c = cx("ssa", false);
        let cfg1 = obj(json!({"size": 1, "mode": "a", "shared": "s"}));
        let live = apply_create(&c, &cfg1).expect("create");
        assert_eq!(
            fields_of(&live, "ssa", "Apply"),
            Some(&json!({"f:spec": {"f:mode": {}, "f:shared": {}, "f:size": {}}}))
        );
        // Someone else applies the same value of `shared`: no conflict, shared ownership.
        let live = apply_update(&cx("peer", false), &live, &obj(json!({"shared": "s"})), false).expect("peer");
        assert_eq!(
            fields_of(&live, "peer", "Apply"),
            Some(&json!({"f:spec": {"f:shared": {}}}))
        );
        // `ssa` stops applying mode and shared: mode goes, shared stays for `peer`.
        let next = apply_update(&c, &live, &obj(json!({"size": 1})), false).expect("reapply");
        assert_eq!(next["spec"], json!({"size": 1, "shared": "s"}));
        assert_eq!(
            fields_of(&next, "ssa", "Apply"),
            Some(&json!({"f:spec": {"f:size": {}}}))
        );
    }

    #[test]
    fn appliers_share_a_set_list_item_by_item() {
        let with_finalizers = |f: Value| {
            let mut o = obj(json!({"size": 1}));
            o["metadata"]["finalizers"] = f;
            o
        };
        let live = apply_create(&cx("one", false), &with_finalizers(json!(["one/f"]))).expect("create");
        // A second controller adds its own finalizer: no conflict, both stay.
        let live = apply_update(&cx("two", false), &live, &with_finalizers(json!(["two/f"])), false).expect("second");
        assert_eq!(live["metadata"]["finalizers"], json!(["one/f", "two/f"]));
        assert_eq!(
            fields_of(&live, "two", "Apply"),
            Some(&json!({"f:metadata": {"f:finalizers": {"v:\"two/f\"": {}}}, "f:spec": {"f:size": {}}}))
        );
        // The first drops its finalizer: only that one goes.
        let live = apply_update(&cx("one", false), &live, &obj(json!({"size": 1})), false).expect("drop");
        assert_eq!(live["metadata"]["finalizers"], json!(["two/f"]));
    }

    #[test]
    fn apply_conflicts_unless_forced() {
        let c = cx("ssa", false);
        let live = apply_create(&c, &obj(json!({"size": 1}))).expect("create");
        let mut edited = live.clone();
        edited["spec"]["size"] = json!(2);
        track_update(&cx("other", false), Some(&live), &mut edited);
        let err = apply_update(&c, &edited, &obj(json!({"size": 3})), false).expect_err("conflict");
        assert_eq!(err.code, StatusCode::CONFLICT);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"other\" using g/v1: .spec.size"
        );
        let causes = &err.details.as_ref().expect("details")["causes"];
        assert_eq!(causes[0]["type"], "FieldManagerConflict");
        assert_eq!(causes[0]["field"], ".spec.size");
        // Applying the value that is there already is no conflict.
        assert!(apply_update(&c, &edited, &obj(json!({"size": 2})), false).is_ok());
        let forced = apply_update(&c, &edited, &obj(json!({"size": 3})), true).expect("force");
        assert_eq!(forced["spec"]["size"], 3);
        assert_eq!(
            fields_of(&forced, "ssa", "Apply"),
            Some(&json!({"f:spec": {"f:size": {}}}))
        );
        assert!(fields_of(&forced, "other", "Update").is_none(), "{forced}");
    }

    #[test]
    fn apply_respects_the_status_subresource() {
        let live = apply_create(&cx("ssa", false), &obj(json!({"size": 1}))).expect("create");
        let mut cfg = obj(json!({"size": 1}));
        cfg["status"] = json!({"phase": "x"});
        let main = apply_update(&cx("ssa", false), &live, &cfg, false).expect("main");
        assert!(main.get("status").is_none());
        assert!(fields_of(&main, "ssa", "Apply").is_some_and(|f| f.get("f:status").is_none()));
        let st = apply_update(&cx("ctl", true), &main, &cfg, false).expect("status");
        assert_eq!(st["status"]["phase"], "x");
        let e = st["metadata"]["managedFields"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["manager"] == "ctl"))
            .expect("ctl entry");
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
    }

    #[test]
    fn status_writes_are_their_own_subresource_entries() {
        let mut live = obj(json!({"size": 1}));
        track_update(&cx("maker", false), None, &mut live);
        let mut next = live.clone();
        next["status"] = json!({"phase": "Ready"});
        track_update(&cx("ctl", true), Some(&live), &mut next);
        let e = next["metadata"]["managedFields"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["manager"] == "ctl"))
            .expect("ctl entry");
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["fieldsV1"], json!({"f:status": {".": {}, "f:phase": {}}}));
        // The same manager writing the main resource is a different entry.
        let mut main = next.clone();
        main["spec"]["size"] = json!(2);
        track_update(&cx("ctl", false), Some(&next), &mut main);
        let n = main["metadata"]["managedFields"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["manager"] == "ctl").count());
        assert_eq!(n, Some(2), "{main}");
    }

    #[test]
    fn update_entries_are_capped_into_ancient_changes() {
        let mut v = obj(json!({}));
        track_update(&cx("maker", false), None, &mut v);
        for i in 0..12 {
            let old = v.clone();
            v["spec"][format!("f{i}")] = json!(i);
            // Distinct, increasing times without waiting: rewrite the entry's time afterwards.
            track_update(&cx(&format!("m{i:02}"), false), Some(&old), &mut v);
            for e in v["metadata"]["managedFields"].as_array_mut().expect("entries") {
                if e["manager"] == format!("m{i:02}") {
                    e["time"] = json!(format!("2026-01-01T00:00:{i:02}Z"));
                }
            }
        }
        let entries = v["metadata"]["managedFields"].as_array().expect("entries");
        assert_eq!(entries.len(), 10, "{entries:?}");
        let ancient = entries
            .iter()
            .find(|e| e["manager"] == ANCIENT)
            .expect("ancient-changes");
        // 13 writers (maker, which wrote last of all by the clock, and m00..m11): the four
        // oldest, m00..m03, are folded into one entry.
        assert_eq!(
            ancient["fieldsV1"],
            json!({"f:spec": {"f:f0": {}, "f:f1": {}, "f:f2": {}, "f:f3": {}}})
        );
        assert!(entries.iter().all(|e| e["manager"] != "m00" && e["manager"] != "m03"));
        assert!(entries.iter().any(|e| e["manager"] == "m04"));
        assert!(entries.iter().any(|e| e["manager"] == "maker"));
    }

    #[test]
    fn managers_and_options() {
        assert_eq!(
            default_manager("", "kubectl/v1.35.2 (linux/amd64) kubernetes/fdc9d74"),
            "kubectl"
        );
        assert_eq!(default_manager("mine", "kubectl/v1"), "mine");
        assert_eq!(default_manager("", "a\tb/c"), "ab");
        assert_eq!(default_manager("", &"x".repeat(200)).len(), 128);
        let mut c = cx("", false);
        assert!(validate_options(&c, "PatchOptions", false).is_ok());
        let e = validate_options(&c, "PatchOptions", true).expect_err("required");
        assert_eq!(
            e.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        assert_eq!(
            e.details.as_ref().map(|d| d["causes"].clone()),
            Some(
                json!([{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
                         "field": "fieldManager"}])
            )
        );
        c.query.insert("force".into(), "true".into());
        assert!(validate_options(&c, "PatchOptions", false).is_err());
        c.query.insert("fieldManager".into(), "x".repeat(129));
        assert!(validate_options(&c, "UpdateOptions", false).is_err());
    }

    #[test]
    fn kubectl_takes_over_what_client_side_apply_set() {
        let mut live = obj(json!({"size": 1, "mode": "a"}));
        live["metadata"]["annotations"] = json!({LAST_APPLIED: obj(json!({"size": 1})).to_string()});
        track_update(&cx("kubectl-client-side-apply", false), None, &mut live);
        // `mode` was set by client-side apply too, but the annotation does not describe it.
        let err = apply_update(
            &cx("kubectl", false),
            &live,
            &obj(json!({"size": 2, "mode": "b"})),
            false,
        )
        .expect_err("mode conflicts");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using g/v1: .spec.mode"
        );
        let next = apply_update(&cx("kubectl", false), &live, &obj(json!({"size": 2})), false).expect("upgrade");
        assert_eq!(next["spec"]["size"], 2);
        // Only kubectl gets this; other managers conflict as usual.
        assert!(apply_update(&cx("other", false), &live, &obj(json!({"size": 2})), false).is_err());
    }

    #[test]
    fn kubectl_apply_keeps_last_applied_in_step() {
        let mut live = obj(json!({}));
        live["metadata"]["annotations"] = json!({LAST_APPLIED: "old", "a": "b"});
        let live = {
            let mut v = live.clone();
            track_update(&cx("kubectl-client-side-apply", false), None, &mut v);
            v
        };
        let cfg = json!({"apiVersion": "g/v1", "kind": "Thing",
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "demo"}}, "spec": {}});
        let next = apply_update(&cx("kubectl", false), &live, &cfg, false).expect("apply");
        assert_eq!(
            next["metadata"]["annotations"][LAST_APPLIED],
            "{\"apiVersion\":\"g/v1\",\"kind\":\"Thing\",\"metadata\":{\"labels\":{\"app\":\"demo\"},\"name\":\"a\",\"namespace\":\"n\"},\"spec\":{}}\n"
        );
        assert_eq!(next["metadata"]["annotations"]["a"], "b");
    }
}
