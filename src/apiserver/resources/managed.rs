//! `metadata.managedFields`, after kube-apiserver's field manager for custom resources: every
//! write records which manager set which fields. The entries, their encoding and capping, and
//! the bookkeeping of non-apply writes are here; server-side apply, which reads and rewrites
//! the same entries, is in [`super::apply`]. The unit tests cover both and live in
//! `managed_tests.rs`.

use super::fields::{self, FieldSet};
use super::fields_v1;
use super::{object, Cx};
use crate::apiserver::apierrors::Status;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The annotation of client-side apply, which kube keeps in step for `kubectl` appliers.
pub(super) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `validation.FieldManagerMaxLength`.
const MAX_MANAGER_LEN: usize = 128;

pub(super) const APPLY: &str = "Apply";
pub(super) const UPDATE: &str = "Update";

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
    pub(super) fn is(&self, manager: &str, operation: &str, api_version: &str, subresource: &str) -> bool {
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
        m.insert("fieldsV1".into(), fields_v1::to_fields_v1(&self.set));
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
            set: fields_v1::from_fields_v1(v.get("fieldsV1").unwrap_or(&Value::Null))?,
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
pub(super) fn store(v: &mut Value, mut entries: Vec<Entry>) {
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
    // kube-apiserver records a request without a usable User-Agent as "unknown" (seen on 1.36
    // with the differential suite); an empty manager would be refused on apply.
    if out.is_empty() {
        out.push_str("unknown");
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
pub(super) fn schema_of(cx: &Cx) -> Value {
    let version = cx
        .res
        .versions
        .iter()
        .find(|v| format!("{}/{}", cx.group, v.name) == cx.api_version);
    fields::schema(version.and_then(|v| v.open_api_v3_schema.as_ref()))
}

pub(super) fn subresource(cx: &Cx) -> &'static str {
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
    // kube's skipNonAppliedManager: an update (not an apply) of an object that tracks no
    // fields does not start tracking them; only a create or an apply does.
    if old.is_some() && entries.is_empty() {
        return;
    }
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

#[cfg(test)]
#[path = "managed_tests.rs"]
mod tests;
