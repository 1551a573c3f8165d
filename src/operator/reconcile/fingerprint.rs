//! Fingerprints of what the operator owns in a child, so the caches need not keep the children.
//!
//! Server-side apply records, in `metadata.managedFields`, the exact set of fields each manager
//! owns. The part of a live object that our field manager owns, projected through that set, is
//! what our last apply put there, unless someone changed one of those fields (the value then
//! differs) or took it over (the field then leaves our set). So a hash of that projection, taken
//! when the watch delivers the object, equals the hash of the object we would apply exactly when
//! applying it would change nothing we manage. The cache keeps the 32-character hash instead of
//! the object: a Deployment's spec, a ClusterRole's rules, a Service's ports.
//!
//! Both sides are canonical: object keys sorted, nulls and empty maps and lists dropped (the API
//! server drops them too), and the identity fields that managedFields never lists (`apiVersion`,
//! `kind`, `metadata.name`, `metadata.namespace`) left out of the desired object.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Fingerprint of the fields `manager` owns through server-side apply in `live` (with its
/// `managedFields`), or None when it owns none (created by someone else, or never applied).
pub fn owned(live: &Value, manager: &str) -> Option<String> {
    let entry = live.pointer("/metadata/managedFields")?.as_array()?.iter().find(|e| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
            && e.get("subresource").and_then(Value::as_str).unwrap_or("").is_empty()
    })?;
    let fields = entry.get("fieldsV1")?;
    let projected = project(live, fields).and_then(prune).unwrap_or(Value::Null);
    Some(digest(&projected))
}

/// Fingerprint of an object as it will be applied.
pub fn desired(obj: &Value) -> String {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
        }
    }
    digest(&prune(obj).unwrap_or(Value::Null))
}

/// The part of `v` that the `fieldsV1` set `f` names.
fn project(v: &Value, f: &Value) -> Option<Value> {
    let f = f.as_object()?;
    // A leaf (`{}` or only the `.` marker): the whole value is owned (atomic, or a scalar).
    if f.keys().all(|k| k == ".") {
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, sub) in f {
                if let Some(name) = k.strip_prefix("f:") {
                    if let Some(p) = m.get(name).and_then(|child| project(child, sub)) {
                        out.insert(name.to_string(), p);
                    }
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(sub) = f.iter().find_map(|(k, sub)| element_matches(k, i, item).then_some(sub)) {
                    out.extend(project(item, sub));
                }
            }
            Some(Value::Array(out))
        }
        _ => Some(v.clone()),
    }
}

/// Whether list element `item` at `index` is the one a `fieldsV1` key names: `k:{…}` by its
/// key fields (map lists), `v:…` by value (set lists), `i:N` by position.
fn element_matches(key: &str, index: usize, item: &Value) -> bool {
    if let Some(k) = key.strip_prefix("k:") {
        let Ok(Value::Object(want)) = serde_json::from_str::<Value>(k) else {
            return false;
        };
        return want.iter().all(|(name, value)| item.get(name) == Some(value));
    }
    if let Some(v) = key.strip_prefix("v:") {
        return serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item);
    }
    if let Some(i) = key.strip_prefix("i:") {
        return i.parse::<usize>().is_ok_and(|i| i == index);
    }
    false
}

/// Drops nulls and empty maps and lists, recursively; None when nothing is left.
fn prune(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let out: Map<String, Value> = m.into_iter().filter_map(|(k, v)| Some((k, prune(v)?))).collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(a) => {
            // Elements keep their places: an element that prunes to nothing is an empty object.
            let out: Vec<Value> = a
                .into_iter()
                .map(|v| prune(v).unwrap_or_else(|| Value::Object(Map::new())))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other),
    }
}

/// SHA-256 of the canonical form (sorted keys, whatever order serde_json keeps maps in).
fn digest(v: &Value) -> String {
    let mut h = Sha256::new();
    feed(&mut h, v);
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn feed(h: &mut Sha256, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for k in keys {
                h.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                h.update(b":");
                feed(h, &m[k]);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for item in a {
                feed(h, item);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired_service() -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "s", "namespace": "ns", "labels": {"app": "x"}, "annotations": {}},
               "spec": {"selector": {"app": "x"}, "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}})
    }

    /// The Service as the API server returns it after our apply: defaults, a foreign manager's
    /// annotation, and our managedFields entry as kube-apiserver writes it.
    fn live_service() -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "9", "uid": "u",
                            "labels": {"app": "x"}, "annotations": {"other": "y"},
                            "managedFields": [
                              {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {"f:annotations": {"f:other": {}}}}},
                              {"manager": "eao", "operation": "Apply", "fieldsV1": {
                                "f:metadata": {"f:labels": {"f:app": {}}},
                                "f:spec": {"f:ports": {"k:{\"port\":443,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}}},
                                           "f:selector": {}}}}]},
               "spec": {"clusterIP": "10.0.0.1", "type": "ClusterIP", "selector": {"app": "x"},
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]}})
    }

    #[test]
    fn unchanged_object_has_the_desired_fingerprint() {
        assert_eq!(owned(&live_service(), "eao"), Some(desired(&desired_service())));
    }

    #[test]
    fn drift_and_takeover_change_the_fingerprint() {
        let want = desired(&desired_service());
        let mut drifted = live_service();
        drifted["spec"]["ports"][0]["targetPort"] = json!(9999);
        assert_ne!(owned(&drifted, "eao"), Some(want.clone()), "a changed value");
        let mut taken = live_service();
        taken["metadata"]["managedFields"][1]["fieldsV1"]["f:metadata"] = json!({});
        assert_ne!(owned(&taken, "eao"), Some(want.clone()), "a field another manager took");
        let mut spec_changed = desired_service();
        spec_changed["spec"]["selector"]["app"] = json!("z");
        assert_ne!(
            owned(&live_service(), "eao"),
            Some(desired(&spec_changed)),
            "a new spec"
        );
        assert_eq!(owned(&live_service(), "someone-else"), None);
    }

    #[test]
    fn key_order_does_not_matter() {
        let a = json!({"a": 1, "b": {"c": [1, 2], "d": null}});
        let b = json!({"b": {"c": [1, 2]}, "a": 1});
        assert_eq!(desired(&a), desired(&b));
        assert_ne!(desired(&a), desired(&json!({"a": 1, "b": {"c": [2, 1]}})));
    }
}
