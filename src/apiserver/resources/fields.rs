//! Field sets as server-side apply sees custom resources. Objects are granular (every key is its
//! own field) unless the schema says `x-kubernetes-map-type: atomic`; lists are atomic leaves
//! unless the schema says `x-kubernetes-list-type: set` (items are `v:<value>`) or `map` (items
//! are `k:{<keys>}`, each item granular), as kube-apiserver does for CRDs; `metadata` follows
//! ObjectMeta (finalizers a set, ownerReferences a map keyed by uid). A set serializes to the
//! `FieldsV1` format of `metadata.managedFields` (`{"f:spec":{"f:size":{}}}`, with `"."` marking
//! a node that is itself a member and also has members below it; that encoding is in
//! [`super::fields_v1`]).

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One field: the `FieldsV1` keys from the root (`["f:spec", "f:size"]`). Keys are kept raw so
/// that elements written by other servers survive a round trip.
pub type Path = Vec<String>;

/// A set of fields.
pub type FieldSet = BTreeSet<Path>;

/// Metadata kube-apiserver never tracks (`stripMetaManager`): the server owns these.
const SERVER_META: [&str; 9] = [
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
];

/// The structural schema of `metadata` that matters to ownership (ObjectMeta's markers).
fn meta_schema() -> Value {
    json!({"type": "object", "properties": {
        "finalizers": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["uid"], "items": {"type": "object", "x-kubernetes-map-type": "atomic"}},
    }})
}

/// The schema ownership follows: a version's `openAPIV3Schema` (or none) with ObjectMeta's
/// `metadata`.
pub fn schema(open_api_v3: Option<&Value>) -> Value {
    let mut s = match open_api_v3 {
        Some(v) if v.is_object() => v.clone(),
        _ => json!({}),
    };
    if !s.get("properties").is_some_and(Value::is_object) {
        s["properties"] = json!({});
    }
    s["properties"]["metadata"] = meta_schema();
    s
}

fn child_schema<'a>(s: Option<&'a Value>, k: &str) -> Option<&'a Value> {
    let s = s?;
    s.get("properties")
        .and_then(|p| p.get(k))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn item_schema(s: Option<&Value>) -> Option<&Value> {
    s?.get("items")
}

/// Whether `v` is an object whose keys are separate fields.
fn granular(v: &Value, s: Option<&Value>) -> bool {
    v.is_object() && s.and_then(|s| s.get("x-kubernetes-map-type")) != Some(&json!("atomic"))
}

/// The items of a set or map list with their `FieldsV1` keys; `None` for atomic lists, empty
/// ones, and ones whose items cannot be told apart (then the list is one field, as before).
fn keyed_items<'a>(v: &'a Value, s: Option<&Value>) -> Option<Vec<(String, &'a Value)>> {
    let items = v.as_array().filter(|a| !a.is_empty())?;
    let s = s?;
    let mut out = Vec::with_capacity(items.len());
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for x in items {
                if x.is_object() || x.is_array() {
                    return None;
                }
                out.push((format!("v:{x}"), x));
            }
        }
        Some("map") => {
            let mut keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")?
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if keys.is_empty() {
                return None;
            }
            keys.sort_unstable();
            for x in items {
                let parts: Option<Vec<String>> = keys
                    .iter()
                    .map(|k| Some(format!("{}:{}", json!(k), x.get(*k)?)))
                    .collect();
                out.push((format!("k:{{{}}}", parts?.join(",")), x));
            }
        }
        _ => return None,
    }
    let distinct: BTreeSet<&String> = out.iter().map(|(k, _)| k).collect();
    (distinct.len() == out.len()).then_some(out)
}

fn field(k: &str) -> String {
    format!("f:{k}")
}

fn child(p: &[String], k: String) -> Path {
    let mut c = p.to_vec();
    c.push(k);
    c
}

/// The part of an object whose fields are owned: without type meta and server-owned metadata.
fn tracked(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_META {
                m.remove(k);
            }
        }
    }
    c
}

/// Drops the `metadata` node itself, which stripMeta also never lets anyone own.
fn strip(mut s: FieldSet) -> FieldSet {
    s.remove(&vec![field("metadata")]);
    s.remove(&Vec::new());
    s
}

/// The fields of the object `v` at `p`, each as [`owned`] counts it.
fn owned_fields(v: &Value, s: Option<&Value>, p: &[String], out: &mut FieldSet) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            owned(x, child_schema(s, k), &child(p, field(k)), out);
        }
    }
}

/// What setting `v` at `p` owns (`ToFieldSet`): the leaves below a granular map, every item
/// of a keyed list (and the leaves inside map items), or `p` itself.
fn owned(v: &Value, s: Option<&Value>, p: &[String], out: &mut FieldSet) {
    if granular(v, s) && v.as_object().is_some_and(|o| !o.is_empty()) {
        return owned_fields(v, s, p, out);
    }
    if let Some(items) = keyed_items(v, s) {
        let is = item_schema(s);
        for (k, x) in items {
            let ip = child(p, k);
            if granular(x, is) {
                owned_fields(x, is, &ip, out);
            }
            out.insert(ip);
        }
        return;
    }
    out.insert(p.to_vec());
}

/// Every path strictly below `p` in `v`, containers included.
fn subtree(v: &Value, s: Option<&Value>, p: &[String], out: &mut FieldSet) {
    if granular(v, s) {
        if let Some(o) = v.as_object() {
            for (k, x) in o {
                let c = child(p, field(k));
                subtree(x, child_schema(s, k), &c, out);
                out.insert(c);
            }
        }
    } else if let Some(items) = keyed_items(v, s) {
        let is = item_schema(s);
        for (k, x) in items {
            let ip = child(p, k);
            subtree(x, is, &ip, out);
            out.insert(ip);
        }
    }
}

/// The fields an applied configuration sets; `schema` comes from [`schema`].
pub fn applied(cfg: &Value, schema: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    owned_fields(&tracked(cfg), Some(schema), &[], &mut out);
    strip(out)
}

/// What changed from `old` to `new`: `(added or modified, removed)`. A field or item that
/// appears brings itself and everything below it; a value that differs is modified unless both
/// sides are granular (maps, keyed lists), which are compared member by member.
pub fn compare(old: &Value, new: &Value, schema: &Value) -> (FieldSet, FieldSet) {
    let (mut changed, mut removed) = (FieldSet::new(), FieldSet::new());
    walk(
        &tracked(old),
        &tracked(new),
        Some(schema),
        &[],
        &mut changed,
        &mut removed,
    );
    (strip(changed), strip(removed))
}

/// The members of a granular map or keyed list: key, value, schema.
type Members<'v, 's> = Vec<(String, &'v Value, Option<&'s Value>)>;

fn members<'v, 's>(v: &'v Value, s: Option<&'s Value>) -> Option<Members<'v, 's>> {
    if granular(v, s) {
        let o = v.as_object()?;
        return Some(o.iter().map(|(k, x)| (field(k), x, child_schema(s, k))).collect());
    }
    let is = item_schema(s);
    keyed_items(v, s).map(|items| items.into_iter().map(|(k, x)| (k, x, is)).collect())
}

fn walk(old: &Value, new: &Value, s: Option<&Value>, p: &[String], changed: &mut FieldSet, removed: &mut FieldSet) {
    // Maps compare with maps and keyed lists with keyed lists; an empty list is never keyed.
    let comparable = (granular(old, s) && granular(new, s)) || (old.is_array() && new.is_array());
    if let (true, Some(om), Some(nm)) = (comparable, members(old, s), members(new, s)) {
        let oi: BTreeMap<&String, &Value> = om.iter().map(|(k, x, _)| (k, *x)).collect();
        let keys: BTreeSet<&String> = nm.iter().map(|(k, _, _)| k).collect();
        for (k, nv, cs) in &nm {
            let c = child(p, k.clone());
            match oi.get(k) {
                Some(ov) => walk(ov, nv, *cs, &c, changed, removed),
                None => {
                    subtree(nv, *cs, &c, changed);
                    changed.insert(c);
                }
            }
        }
        for (k, ov, cs) in &om {
            if !keys.contains(k) {
                let c = child(p, k.clone());
                subtree(ov, *cs, &c, removed);
                removed.insert(c);
            }
        }
        return;
    }
    if old != new {
        // A replaced value: whatever was below is gone, whatever is below now is new.
        subtree(old, s, p, removed);
        subtree(new, s, p, changed);
        changed.insert(p.to_vec());
    }
}

/// `cfg` merged onto `live` as apply merges: granular maps key by key (`null` deletes), keyed
/// lists item by item (new items appended), anything else replaced.
pub fn merge(live: &mut Value, cfg: &Value, s: Option<&Value>) {
    if granular(cfg, s) {
        if !live.is_object() {
            *live = json!({});
        }
        let (Some(l), Some(c)) = (live.as_object_mut(), cfg.as_object()) else {
            return;
        };
        for (k, x) in c {
            if x.is_null() {
                l.remove(k);
                continue;
            }
            let slot = l.entry(k.clone()).or_insert(Value::Null);
            merge(slot, x, child_schema(s, k));
        }
        return;
    }
    let keyed_type = s
        .and_then(|s| s.get("x-kubernetes-list-type"))
        .is_some_and(|t| t == "set" || t == "map");
    // Applying no items of a keyed list adds none; it does not take away the others' items.
    if keyed_type && live.is_array() && cfg.as_array().is_some_and(Vec::is_empty) {
        return;
    }
    if let (Some(ci), Some(li)) = (keyed_items(cfg, s), keyed_items(live, s)) {
        let is = item_schema(s);
        let known: BTreeMap<String, usize> = li.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let mut out: Vec<Value> = li.into_iter().map(|(_, x)| x.clone()).collect();
        for (k, x) in ci {
            match known.get(&k) {
                Some(i) => merge(&mut out[*i], x, is),
                None => out.push(x.clone()),
            }
        }
        *live = Value::Array(out);
        return;
    }
    *live = cfg.clone();
}

/// Removes the field or item at `p` from `v`. A map that still holds fields stays: it is not
/// the remover's to drop (kube adds such items back after pruning). Items go whole.
pub fn remove(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else { return };
    let mut cur = v;
    for k in parents {
        let Some(next) = step(cur, k) else { return };
        cur = next;
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(o) = cur.as_object_mut() {
            let holds_fields = o.get(f).and_then(Value::as_object).is_some_and(|m| !m.is_empty());
            if !holds_fields {
                o.remove(f);
            }
        }
    } else if let Some(a) = cur.as_array_mut() {
        let key = ItemKey::parse(last);
        a.retain(|x| !key.names(x));
    }
}

/// Removes every field of `paths` (outermost first, see [`remove`]). List items under one
/// parent are removed in one pass over the list, so dropping many items of a large list is
/// linear rather than one scan per item.
pub fn remove_all(v: &mut Value, paths: &[&Path]) {
    // Items first (whole, while their key fields are still there to match), then fields.
    let mut items: BTreeMap<&[String], Vec<&str>> = BTreeMap::new();
    let mut fields: Vec<&Path> = Vec::new();
    for p in paths {
        match p.split_last() {
            Some((last, parent)) if !last.starts_with("f:") => items.entry(parent).or_default().push(last),
            _ => fields.push(p),
        }
    }
    for (parent, keys) in items {
        let Some(a) = parent
            .iter()
            .try_fold(&mut *v, |cur, k| step(cur, k))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let keys: Vec<ItemKey> = keys.iter().map(|k| ItemKey::parse(k)).collect();
        let values: std::collections::HashSet<String> = keys
            .iter()
            .filter_map(|k| match k {
                ItemKey::Value(v) => Some(v.to_string()),
                _ => None,
            })
            .collect();
        let mut by_fields: BTreeMap<Vec<&String>, std::collections::HashSet<String>> = BTreeMap::new();
        for k in &keys {
            if let ItemKey::Keys(m) = k {
                by_fields
                    .entry(m.keys().collect())
                    .or_default()
                    .insert(Value::Object(m.clone()).to_string());
            }
        }
        a.retain(|x| {
            if values.contains(&x.to_string()) {
                return false;
            }
            !by_fields.iter().any(|(fields, set)| {
                let proj: Map<String, Value> = fields
                    .iter()
                    .map(|f| ((*f).clone(), x.get(f.as_str()).cloned().unwrap_or(Value::Null)))
                    .collect();
                set.contains(&Value::Object(proj).to_string())
            })
        });
    }
    for p in fields {
        remove(v, p);
    }
}

/// A list item's `FieldsV1` key, parsed once per lookup rather than once per item.
enum ItemKey {
    Value(Value),
    Keys(Map<String, Value>),
    None,
}

impl ItemKey {
    fn parse(k: &str) -> ItemKey {
        if let Some(v) = k.strip_prefix("v:") {
            return serde_json::from_str(v).map(ItemKey::Value).unwrap_or(ItemKey::None);
        }
        if let Some(keys) = k.strip_prefix("k:") {
            return serde_json::from_str(keys).map(ItemKey::Keys).unwrap_or(ItemKey::None);
        }
        ItemKey::None
    }

    /// Whether list item `x` is the one this key names.
    fn names(&self, x: &Value) -> bool {
        match self {
            ItemKey::Value(v) => v == x,
            ItemKey::Keys(keys) => keys.iter().all(|(f, want)| x.get(f) == Some(want)),
            ItemKey::None => false,
        }
    }
}

fn step<'a>(v: &'a mut Value, k: &str) -> Option<&'a mut Value> {
    match k.strip_prefix("f:") {
        Some(f) => v.get_mut(f),
        None => {
            let key = ItemKey::parse(k);
            v.as_array_mut()?.iter_mut().find(|x| key.names(x))
        }
    }
}

/// The value at `p`.
pub fn value_at<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, k| match k.strip_prefix("f:") {
        Some(f) => cur.get(f),
        None => {
            let key = ItemKey::parse(k);
            cur.as_array()?.iter().find(|x| key.names(x))
        }
    })
}

/// A path as kube prints it in conflicts: `.spec.size`, `.metadata.finalizers[="f"]`,
/// `.metadata.ownerReferences[uid="u"]`.
pub fn display(p: &[String]) -> String {
    p.iter()
        .map(|k| {
            if let Some(f) = k.strip_prefix("f:") {
                return format!(".{f}");
            }
            if let Some(v) = k.strip_prefix("v:") {
                return format!("[={v}]");
            }
            if let Some(keys) = k
                .strip_prefix("k:")
                .and_then(|j| serde_json::from_str::<Map<String, Value>>(j).ok())
            {
                let parts: Vec<String> = keys.iter().map(|(f, v)| format!("{f}={v}")).collect();
                return format!("[{}]", parts.join(","));
            }
            format!("[{}]", k.strip_prefix("i:").unwrap_or(k))
        })
        .collect()
}

/// Whether `s` holds `p` or a field below it. Fields under `p` sort right after it, so one
/// ordered lookup answers (a scan per path would be quadratic in large applies).
pub fn has_under(s: &FieldSet, p: &Path) -> bool {
    s.range(p.clone()..).next().is_some_and(|q| under(q, p))
}

/// Whether `p` is `q` or below it.
pub fn under(p: &[String], q: &[String]) -> bool {
    p.len() >= q.len() && p[..q.len()] == *q
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
