//! Field sets as server-side apply sees custom resources. Objects are granular (every key is its
//! own field) unless the schema says `x-kubernetes-map-type: atomic`; lists are atomic leaves
//! unless the schema says `x-kubernetes-list-type: set` (items are `v:<value>`) or `map` (items
//! are `k:{<keys>}`, each item granular), as kube-apiserver does for CRDs; `metadata` follows
//! ObjectMeta (finalizers a set, ownerReferences a map keyed by uid). A set serializes to the
//! `FieldsV1` format of `metadata.managedFields` (`{"f:spec":{"f:size":{}}}`, with `"."` marking
//! a node that is itself a member and also has members below it).

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

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<String, Node>,
}

/// The `FieldsV1` JSON of a set.
pub fn to_fields_v1(s: &FieldSet) -> Value {
    let mut root = Node::default();
    for p in s {
        let mut n = &mut root;
        for k in p {
            n = n.children.entry(k.clone()).or_default();
        }
        n.member = true;
    }
    node_json(&root)
}

fn node_json(n: &Node) -> Value {
    let mut m = Map::new();
    // A member with children says so with ".", which Go writes first.
    if n.member && !n.children.is_empty() {
        m.insert(".".into(), Value::Object(Map::new()));
    }
    for (k, c) in &n.children {
        m.insert(k.clone(), node_json(c));
    }
    Value::Object(m)
}

/// The set of a `FieldsV1` JSON value; `Err` when it is not a tree of objects.
pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
    let mut out = FieldSet::new();
    read_node(v, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn read_node(v: &Value, p: &mut Path, out: &mut FieldSet) -> Result<(), String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("expected an object at {}", display(p)))?;
    if o.is_empty() && !p.is_empty() {
        out.insert(p.clone());
    }
    for (k, c) in o {
        if k == "." {
            if !p.is_empty() {
                out.insert(p.clone());
            }
            continue;
        }
        if !["f:", "k:", "v:", "i:"].iter().any(|pre| k.starts_with(pre)) {
            return Err(format!("unexpected key {k:?} at {}", display(p)));
        }
        p.push(k.clone());
        read_node(c, p, out)?;
        p.pop();
    }
    Ok(())
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
mod tests {
    use super::*;
    use serde_json::json;

    fn applied_to(v: &Value) -> FieldSet {
        applied(v, &schema(None))
    }

    fn compare_of(a: &Value, b: &Value) -> (FieldSet, FieldSet) {
        compare(a, b, &schema(None))
    }

    fn set(v: Value) -> FieldSet {
        from_fields_v1(&v).expect("fieldsV1")
    }

    #[test]
    fn applied_set_owns_leaves_and_atomic_lists() {
        let cfg = json!({"apiVersion": "g/v1", "kind": "K",
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "x"}, "resourceVersion": "3"},
            "spec": {"size": 1, "items": [1, 2], "empty": {}}});
        let s = applied(&cfg, &schema(None));
        assert_eq!(
            to_fields_v1(&s),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:empty": {}, "f:items": {}, "f:size": {}}})
        );
        // Only type meta and the name: nothing to own, not even `metadata`.
        assert!(applied_to(&json!({"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "a"}})).is_empty());
        // An empty spec is itself a leaf, as in kube's record of `kubectl apply --server-side`.
        assert_eq!(
            to_fields_v1(&applied_to(&json!({"metadata": {"name": "a"}, "spec": {}}))),
            json!({"f:spec": {}})
        );
    }

    #[test]
    fn compare_marks_new_maps_with_dot() {
        let old = json!({"metadata": {"name": "a"}, "spec": {"size": 1, "keep": true}});
        let new = json!({"metadata": {"name": "a", "labels": {"app": "demo"}},
                         "spec": {"size": 2, "keep": true, "list": [1]}});
        let (changed, removed) = compare(&old, &new, &schema(None));
        assert_eq!(
            to_fields_v1(&changed),
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:list": {}, "f:size": {}}})
        );
        assert!(removed.is_empty());
        let (changed, removed) = compare(&new, &old, &schema(None));
        assert_eq!(to_fields_v1(&changed), json!({"f:spec": {"f:size": {}}}));
        assert_eq!(
            to_fields_v1(&removed),
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:list": {}}})
        );
        // Changing a list is changing one atomic field.
        let (changed, _) = compare_of(&json!({"spec": {"l": [1, 2]}}), &json!({"spec": {"l": [2]}}));
        assert_eq!(to_fields_v1(&changed), json!({"f:spec": {"f:l": {}}}));
        // Server-owned metadata is never anyone's.
        let (changed, _) = compare_of(&json!({}), &json!({"metadata": {"uid": "u", "generation": 2}}));
        assert!(changed.is_empty(), "{changed:?}");
    }

    /// A schema with a map list keyed by name, a set and an atomic map under spec.
    fn typed() -> Value {
        schema(Some(
            &json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object"}},
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "sel": {"type": "object", "x-kubernetes-map-type": "atomic"},
            }}}}),
        ))
    }

    #[test]
    fn prefix_lookup_and_batched_item_removal() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Path>();
        let s: FieldSet = [p(&["f:a", "f:b"]), p(&["f:c"])].into_iter().collect();
        assert!(has_under(&s, &p(&["f:a"])));
        assert!(has_under(&s, &p(&["f:a", "f:b"])));
        assert!(!has_under(&s, &p(&["f:b"])));
        assert!(!has_under(&s, &p(&["f:a", "f:b", "f:x"])));

        let n = 20_000;
        let mut v = json!({"metadata": {"finalizers": (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>()},
            "spec": {"ports": [{"port": 1, "x": 1}, {"port": 2, "x": 2}], "keep": 1, "drop": 1}});
        let mut gone: Vec<Path> = (0..n - 1)
            .map(|i| p(&["f:metadata", "f:finalizers", &format!("v:\"f{i}\"")]))
            .collect();
        gone.push(p(&["f:spec", "f:ports", "k:{\"port\":2}"]));
        gone.push(p(&["f:spec", "f:drop"]));
        let refs: Vec<&Path> = gone.iter().collect();
        remove_all(&mut v, &refs);
        assert_eq!(v["metadata"]["finalizers"], json!([format!("f{}", n - 1)]));
        assert_eq!(v["spec"], json!({"ports": [{"port": 1, "x": 1}], "keep": 1}));
    }

    #[test]
    fn keyed_lists_and_atomic_maps() {
        let sc = typed();
        let cfg = json!({"metadata": {"finalizers": ["a/b"], "ownerReferences": [{"uid": "u1", "kind": "K"}]},
            "spec": {"ports": [{"name": "http", "port": 80}], "tags": ["x"], "sel": {"a": "b"}}});
        assert_eq!(
            to_fields_v1(&applied(&cfg, &sc)),
            json!({"f:metadata": {"f:finalizers": {"v:\"a/b\"": {}}, "f:ownerReferences": {"k:{\"uid\":\"u1\"}": {}}},
                   "f:spec": {"f:ports": {"k:{\"name\":\"http\"}": {".": {}, "f:name": {}, "f:port": {}}},
                              "f:sel": {}, "f:tags": {"v:\"x\"": {}}}})
        );
        // One more item and one changed item field: only those change.
        let mut next = cfg.clone();
        next["spec"]["ports"] = json!([{"name": "http", "port": 81}, {"name": "https", "port": 443}]);
        next["metadata"]["finalizers"] = json!(["a/b", "c"]);
        let (changed, removed) = compare(&cfg, &next, &sc);
        assert_eq!(
            to_fields_v1(&changed),
            json!({"f:metadata": {"f:finalizers": {"v:\"c\"": {}}},
                   "f:spec": {"f:ports": {"k:{\"name\":\"http\"}": {"f:port": {}},
                                          "k:{\"name\":\"https\"}": {".": {}, "f:name": {}, "f:port": {}}}}})
        );
        assert!(removed.is_empty());
        // Apply's merge keeps other items and merges matching ones; atomic maps are replaced.
        let mut live = next.clone();
        merge(
            &mut live,
            &json!({"metadata": {"finalizers": ["d"]}, "spec": {"ports": [{"name": "http", "proto": "TCP"}], "sel": {"c": "d"}}}),
            Some(&sc),
        );
        assert_eq!(live["metadata"]["finalizers"], json!(["a/b", "c", "d"]));
        assert_eq!(
            live["spec"]["ports"][0],
            json!({"name": "http", "port": 81, "proto": "TCP"})
        );
        assert_eq!(live["spec"]["sel"], json!({"c": "d"}));
        merge(&mut live, &json!({"metadata": {"finalizers": []}}), Some(&sc));
        assert_eq!(live["metadata"]["finalizers"], json!(["a/b", "c", "d"]));
        // Items are removed whole, by key or value.
        remove(
            &mut live,
            &["f:spec".into(), "f:ports".into(), "k:{\"name\":\"http\"}".into()],
        );
        remove(
            &mut live,
            &["f:metadata".into(), "f:finalizers".into(), "v:\"c\"".into()],
        );
        assert_eq!(live["spec"]["ports"], json!([{"name": "https", "port": 443}]));
        assert_eq!(live["metadata"]["finalizers"], json!(["a/b", "d"]));
        assert_eq!(
            display(&[
                "f:metadata".into(),
                "f:ownerReferences".into(),
                "k:{\"uid\":\"u1\"}".into()
            ]),
            ".metadata.ownerReferences[uid=\"u1\"]"
        );
        // Without the schema's markers, lists stay atomic.
        assert_eq!(
            to_fields_v1(&applied_to(&json!({"spec": {"tags": ["x"]}}))),
            json!({"f:spec": {"f:tags": {}}})
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({"f:metadata": {"f:annotations": {".": {}, "f:x": {}},
            "f:ownerReferences": {".": {}, "k:{\"uid\":\"u\"}": {}}}, "f:spec": {}});
        let s = set(v.clone());
        assert!(s.contains(&vec!["f:metadata".to_string(), "f:annotations".to_string()]));
        assert!(s.contains(&vec!["f:spec".to_string()]));
        assert!(!s.contains(&vec!["f:metadata".to_string()]));
        assert_eq!(to_fields_v1(&s), v);
        assert!(from_fields_v1(&json!({"spec": {}})).is_err());
        assert!(from_fields_v1(&json!({"f:spec": 1})).is_err());
        assert_eq!(display(&["f:spec".into(), "f:size".into()]), ".spec.size");
    }
}
