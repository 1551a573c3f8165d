//! Field sets as server-side apply sees custom resources: objects are granular (every key is its
//! own field), lists and scalars are atomic leaves. A set serializes to the `FieldsV1` format of
//! `metadata.managedFields` (`{"f:spec":{"f:size":{}}}`, with `"."` marking a node that is itself
//! a member and also has members below it).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One field: the `FieldsV1` keys from the root (`["f:spec", "f:size"]`). Keys are kept raw so
/// that `k:`/`v:`/`i:` elements written by other servers survive a round trip.
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

fn key(k: &str) -> String {
    format!("f:{k}")
}

fn child(p: &[String], k: &str) -> Path {
    let mut c = p.to_vec();
    c.push(key(k));
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
    s.remove(&vec![key("metadata")]);
    s
}

fn is_map(v: &Value) -> bool {
    v.as_object().is_some_and(|o| !o.is_empty())
}

/// The leaves under `v` at `p`: every key whose value is not a non-empty object. This is what
/// an applied configuration owns (`ToFieldSet`).
fn leaves(v: &Value, p: &[String], out: &mut FieldSet) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let c = child(p, k);
            if is_map(x) {
                leaves(x, &c, out);
            } else {
                out.insert(c);
            }
        }
    }
}

/// Every path strictly below `p` in `v`, containers included.
fn subtree(v: &Value, p: &[String], out: &mut FieldSet) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let c = child(p, k);
            subtree(x, &c, out);
            out.insert(c);
        }
    }
}

/// The fields an applied configuration sets.
pub fn applied(cfg: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    leaves(&tracked(cfg), &[], &mut out);
    strip(out)
}

/// What changed from `old` to `new`: `(added or modified, removed)`. A key that appears brings
/// itself and everything below it; a key whose value differs (and is not a map on both sides)
/// is modified; maps on both sides are compared key by key, so only what changed inside them
/// counts.
pub fn compare(old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    let (mut changed, mut removed) = (FieldSet::new(), FieldSet::new());
    walk(&tracked(old), &tracked(new), &[], &mut changed, &mut removed);
    (strip(changed), strip(removed))
}

fn walk(old: &Value, new: &Value, p: &[String], changed: &mut FieldSet, removed: &mut FieldSet) {
    let empty = Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    for (k, nv) in n {
        let c = child(p, k);
        match o.get(k) {
            None => {
                subtree(nv, &c, changed);
                changed.insert(c);
            }
            Some(ov) if ov.is_object() && nv.is_object() => walk(ov, nv, &c, changed, removed),
            Some(ov) if ov != nv => {
                // A type change: whatever was below is gone, whatever is below now is new.
                subtree(ov, &c, removed);
                subtree(nv, &c, changed);
                changed.insert(c);
            }
            Some(_) => {}
        }
    }
    for (k, ov) in o {
        if !n.contains_key(k) {
            let c = child(p, k);
            subtree(ov, &c, removed);
            removed.insert(c);
        }
    }
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

/// A path as kube prints it in conflicts: `.spec.size`.
pub fn display(p: &[String]) -> String {
    p.iter()
        .map(|k| match k.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => format!("[{k}]"),
        })
        .collect()
}

/// The value at `p` (only `f:` steps lead anywhere: list elements are not addressed).
pub fn value_at<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter()
        .try_fold(v, |cur, k| k.strip_prefix("f:").and_then(|f| cur.get(f)))
}

/// Whether `p` is `q` or below it.
pub fn under(p: &[String], q: &[String]) -> bool {
    p.len() >= q.len() && p[..q.len()] == *q
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: Value) -> FieldSet {
        from_fields_v1(&v).expect("fieldsV1")
    }

    #[test]
    fn applied_set_owns_leaves_and_atomic_lists() {
        let cfg = json!({"apiVersion": "g/v1", "kind": "K",
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "x"}, "resourceVersion": "3"},
            "spec": {"size": 1, "items": [1, 2], "empty": {}}});
        let s = applied(&cfg);
        assert_eq!(
            to_fields_v1(&s),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:empty": {}, "f:items": {}, "f:size": {}}})
        );
        // Only type meta and the name: nothing to own, not even `metadata`.
        assert!(applied(&json!({"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "a"}})).is_empty());
        // An empty spec is itself a leaf, as in kube's record of `kubectl apply --server-side`.
        assert_eq!(
            to_fields_v1(&applied(&json!({"metadata": {"name": "a"}, "spec": {}}))),
            json!({"f:spec": {}})
        );
    }

    #[test]
    fn compare_marks_new_maps_with_dot() {
        let old = json!({"metadata": {"name": "a"}, "spec": {"size": 1, "keep": true}});
        let new = json!({"metadata": {"name": "a", "labels": {"app": "demo"}},
                         "spec": {"size": 2, "keep": true, "list": [1]}});
        let (changed, removed) = compare(&old, &new);
        assert_eq!(
            to_fields_v1(&changed),
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:list": {}, "f:size": {}}})
        );
        assert!(removed.is_empty());
        let (changed, removed) = compare(&new, &old);
        assert_eq!(to_fields_v1(&changed), json!({"f:spec": {"f:size": {}}}));
        assert_eq!(
            to_fields_v1(&removed),
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:list": {}}})
        );
        // Changing a list is changing one atomic field.
        let (changed, _) = compare(&json!({"spec": {"l": [1, 2]}}), &json!({"spec": {"l": [2]}}));
        assert_eq!(to_fields_v1(&changed), json!({"f:spec": {"f:l": {}}}));
        // Server-owned metadata is never anyone's.
        let (changed, _) = compare(&json!({}), &json!({"metadata": {"uid": "u", "generation": 2}}));
        assert!(changed.is_empty(), "{changed:?}");
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
