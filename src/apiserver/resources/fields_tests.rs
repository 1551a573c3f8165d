//! Unit tests of `fields.rs` and `fields_v1.rs`.

use super::super::fields_v1::{from_fields_v1, to_fields_v1};
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
