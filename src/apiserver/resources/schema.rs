//! What kube-apiserver does with a CRD's structural `openAPIV3Schema` to every object it is
//! asked to write, in its order: prune unknown fields, drop non-nullable nulls, apply `default`s,
//! then validate (see [`validate_update`]). Metadata is the server's business, not the schema's.

mod cel;
mod cel_cost;
mod validation;

pub(crate) use cel::{compile as cel_compile, go_error as cel_error, to_cel, with_context as cel_context};
pub use cel::{rule_problems, validate as validate_rules};
/// The CEL environment rules run in, for admission's expressions.
pub(crate) use cel_cost::{
    bound_vars as cel_cost_bound, unsupported as cel_unsupported, PER_CALL_LIMIT as CEL_PER_CALL_LIMIT,
    REQUEST_BUDGET as CEL_REQUEST_BUDGET,
};
pub use validation::validate_update;

use crate::crd::ServedResource;
use serde_json::{json, Value};
use std::sync::LazyLock;

const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";
const EMBEDDED: &str = "x-kubernetes-embedded-resource";
/// Kept at the root whatever the schema says, and in embedded resources.
const META: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// `additionalProperties: true` as a schema: keep everything below.
static ANY: LazyLock<Value> = LazyLock::new(|| json!({ PRESERVE: true }));

/// The schema of `version` of `res`, if it declares one.
pub fn of_version<'a>(res: &'a ServedResource, version: &str) -> Option<&'a Value> {
    res.versions
        .iter()
        .find(|v| v.name == version)
        .and_then(|v| v.open_api_v3_schema.as_ref())
}

/// Prunes and defaults `obj` in place, as the CRD decoder does before anything else sees it.
/// Returns the paths of the pruned fields (`spec.foo`, `spec.items[0].bar`), which
/// `fieldValidation=Strict` turns into an error.
pub fn prune_and_default(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune(obj, Some(schema), true, "", &mut pruned);
    drop_nulls_and_default(obj, schema, true);
    pruned
}

/// Only the pruning of [`prune_and_default`]: for an applied configuration, whose manager must
/// not come to own fields that defaulting fills in.
pub fn prune_only(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune(obj, Some(schema), true, "", &mut pruned);
    pruned
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn property<'a>(s: &'a Value, k: &str) -> Option<&'a Value> {
    s.get("properties").and_then(|p| p.get(k)).filter(|p| p.is_object())
}

/// The schema of map values; `additionalProperties: true` keeps arbitrary values.
fn additional(s: &Value) -> Option<&Value> {
    match s.get("additionalProperties") {
        Some(a @ Value::Object(_)) => Some(a),
        Some(Value::Bool(true)) => Some(&ANY),
        _ => None,
    }
}

/// The schema of the value under key `k` of an object described by `s`.
fn child<'a>(s: &'a Value, k: &str) -> Option<&'a Value> {
    property(s, k).or_else(|| additional(s))
}

fn items(s: &Value) -> Option<&Value> {
    s.get("items").filter(|i| i.is_object())
}

fn nullable(s: &Value) -> bool {
    flag(s, "nullable")
}

/// The fields an embedded resource keeps as long as they have their usual shape.
fn embedded_meta(k: &str, v: &Value) -> bool {
    match k {
        "apiVersion" | "kind" => v.is_string(),
        "metadata" => v.is_object(),
        _ => false,
    }
}

/// `pruning.Prune`: removes what `s` does not declare. `None` is "no schema here", under
/// which objects lose every key (kube's behaviour for e.g. an array without `items`).
fn prune(v: &mut Value, s: Option<&Value>, root: bool, path: &str, out: &mut Vec<String>) {
    if let Some(s) = s.filter(|s| flag(s, PRESERVE)) {
        return skip_prune(v, s, root, path, out);
    }
    match v {
        Value::Object(m) => {
            let Some(s) = s else {
                out.extend(m.keys().map(|k| join(path, k)));
                m.clear();
                return;
            };
            let embedded = flag(s, EMBEDDED);
            m.retain(|k, v| {
                if (root && META.contains(&k.as_str())) || (embedded && embedded_meta(k, v)) {
                    // Kept, but not the schema's to prune: metadata has its own rules.
                    return true;
                }
                match child(s, k) {
                    Some(c) => {
                        prune(v, Some(c), false, &join(path, k), out);
                        true
                    }
                    None => {
                        out.push(join(path, k));
                        false
                    }
                }
            });
        }
        Value::Array(a) => {
            let it = s.and_then(items);
            for (i, x) in a.iter_mut().enumerate() {
                prune(x, it, false, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Under `x-kubernetes-preserve-unknown-fields` unknown keys stay, but declared ones are still
/// pruned below.
fn skip_prune(v: &mut Value, s: &Value, root: bool, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let embedded = flag(s, EMBEDDED);
            for (k, x) in m.iter_mut() {
                if (root || embedded) && META.contains(&k.as_str()) {
                    continue;
                }
                if let Some(c) = child(s, k) {
                    prune(x, Some(c), false, &join(path, k), out);
                }
            }
        }
        Value::Array(a) => {
            if let Some(it) = items(s) {
                for (i, x) in a.iter_mut().enumerate() {
                    skip_prune(x, it, false, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// `PruneNonNullableNullsWithoutDefaults` then `defaulting.Default`: a missing field, or a
/// null one that may not be null, gets its `default`; a null that may not be null and has no
/// default is dropped (in objects only; null array items are left for validation to refuse).
fn drop_nulls_and_default(v: &mut Value, s: &Value, root: bool) {
    match v {
        Value::Object(m) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if root && k == "metadata" {
                        continue;
                    }
                    if let Some(d) = p.get("default") {
                        if m.get(k).is_none_or(|x| x.is_null() && !nullable(p)) {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            m.retain(|k, x| {
                if root && k == "metadata" {
                    return true;
                }
                match child(s, k) {
                    Some(c) if x.is_null() && !nullable(c) => match c.get("default") {
                        Some(d) => {
                            *x = d.clone();
                            drop_nulls_and_default(x, c, false);
                            true
                        }
                        None => false,
                    },
                    Some(c) => {
                        drop_nulls_and_default(x, c, false);
                        true
                    }
                    None => true,
                }
            });
        }
        Value::Array(a) => {
            let Some(it) = items(s) else { return };
            for x in a {
                if x.is_null() && !nullable(it) {
                    if let Some(d) = it.get("default") {
                        *x = d.clone();
                    }
                }
                drop_nulls_and_default(x, it, false);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(schema: Value, obj: Value) -> Value {
        let mut o = obj;
        prune_and_default(&mut o, &schema);
        o
    }

    #[test]
    fn pruned_paths_are_reported_for_strict_validation() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut o = json!({"apiVersion": "g/v", "kind": "K", "metadata": {"name": "n"}, "top": 1,
            "spec": {"bogus": true, "items": [{"a": "x", "b": 1}], "free": {"anything": 1}}});
        let mut pruned = prune_and_default(&mut o, &schema);
        pruned.sort();
        assert_eq!(pruned, vec!["spec.bogus", "spec.items[0].b", "top"]);
        assert_eq!(o["spec"]["free"]["anything"], 1);
    }

    #[test]
    fn prunes_undeclared_fields_but_not_root_meta() {
        let s = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}}}});
        let got = run(
            s,
            json!({"apiVersion": "g/v", "kind": "K", "metadata": {"name": "n", "x": 1},
                   "spec": {"a": "1", "b": 2}, "extra": true}),
        );
        assert_eq!(
            got,
            json!({"apiVersion": "g/v", "kind": "K", "metadata": {"name": "n", "x": 1}, "spec": {"a": "1"}})
        );
    }

    #[test]
    fn preserve_unknown_fields_keeps_unknown_but_prunes_declared_children() {
        let s = json!({"type": "object", "properties": {"spec": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"known": {"type": "object", "properties": {"k": {"type": "string"}}}}}}});
        let got = run(
            s,
            json!({"spec": {"free": {"deep": [1, {"x": 2}]}, "known": {"k": "v", "gone": 1}}}),
        );
        assert_eq!(
            got,
            json!({"spec": {"free": {"deep": [1, {"x": 2}]}, "known": {"k": "v"}}})
        );
    }

    #[test]
    fn additional_properties_keep_keys_and_prune_values() {
        let s = json!({"type": "object", "properties": {"labels": {"type": "object",
            "additionalProperties": {"type": "object", "properties": {"v": {"type": "string"}}}}}});
        let got = run(s, json!({"labels": {"a": {"v": "1", "w": 2}, "b": {}}}));
        assert_eq!(got, json!({"labels": {"a": {"v": "1"}, "b": {}}}));
    }

    #[test]
    fn embedded_resources_keep_their_type_and_metadata() {
        let s = json!({"type": "object", "properties": {"template": {"type": "object",
            "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}}}});
        let got = run(
            s,
            json!({"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                "spec": {"gone": 1}, "other": 1}}),
        );
        assert_eq!(
            got,
            json!({"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}})
        );
    }

    #[test]
    fn array_items_are_pruned() {
        let s = json!({"type": "object", "properties": {"list": {"type": "array",
            "items": {"type": "object", "properties": {"n": {"type": "string"}}}}}});
        let got = run(s, json!({"list": [{"n": "a", "x": 1}, {"y": 2}]}));
        assert_eq!(got, json!({"list": [{"n": "a"}, {}]}));
    }

    #[test]
    fn defaults_nested_in_arrays_and_maps() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
        "default": {},
        "properties": {
            "replicas": {"type": "integer", "default": 1},
            "mode": {"type": "string", "default": "fast"},
            "ports": {"type": "array", "items": {"type": "object", "properties": {
                "protocol": {"type": "string", "default": "TCP"}, "port": {"type": "integer"}}}},
            "byName": {"type": "object", "additionalProperties": {"type": "object",
                "properties": {"weight": {"type": "integer", "default": 10}}}},
            "inner": {"type": "object", "default": {}, "properties": {
                "deep": {"type": "boolean", "default": true}}},
        }}}});
        let got = run(
            s.clone(),
            json!({"spec": {"mode": "slow", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}],
                            "byName": {"a": {}, "b": {"weight": 3}}}}),
        );
        assert_eq!(
            got,
            json!({"spec": {"replicas": 1, "mode": "slow",
                "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                "byName": {"a": {"weight": 10}, "b": {"weight": 3}},
                "inner": {"deep": true}}})
        );
        // A missing parent with a default is created and then defaulted itself.
        let got = run(s, json!({}));
        assert_eq!(
            got,
            json!({"spec": {"replicas": 1, "mode": "fast", "inner": {"deep": true}}})
        );
    }

    #[test]
    fn nulls_get_defaults_or_are_dropped_unless_nullable() {
        let s = json!({"type": "object", "properties": {
            "d": {"type": "string", "default": "x"},
            "n": {"type": "string"},
            "ok": {"type": "string", "nullable": true, "default": "y"},
            "list": {"type": "array", "items": {"type": "string", "default": "z"}}}});
        let got = run(s, json!({"d": null, "n": null, "ok": null, "list": ["a", null]}));
        assert_eq!(got, json!({"d": "x", "ok": null, "list": ["a", "z"]}));
    }

    #[test]
    fn root_preserve_keeps_everything() {
        let s = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let obj = json!({"spec": {"anything": [1, 2]}, "x": null});
        assert_eq!(run(s, obj.clone()), obj);
    }
}
