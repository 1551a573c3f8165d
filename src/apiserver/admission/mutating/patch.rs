//! Applying a mutation's value to the object, as k8s.io/apiserver's
//! `policy/mutating/patch` does: a JSON Patch (`json_patch.go`), or an apply configuration
//! merged into the object (`smd.go`).

use crate::apiserver::admission::cel::{to_json, TYPE_KEY};
use crate::apiserver::resources::{apply_merge, apply_schema};
use kube_cel::cel::Value as Cel;
use serde_json::{Map, Value};

/// Applies the JSON Patch a `JSONPatch` expression gave (a list of `JSONPatch{op, path,
/// value, from}`, as maps) to `obj`. A failed `test` operation leaves the object as it was
/// without an error, as in kube; other failures are errors worded `JSON Patch: ...` (a remove
/// of a missing key in kube's words, others in the `json-patch` crate's).
pub fn json_patch(obj: &mut Value, ops: &Cel) -> Result<(), String> {
    let Cel::List(items) = ops else {
        return Err("type mismatch: JSONPatchType.expression should evaluate to array".into());
    };
    let mut patch = Vec::with_capacity(items.len());
    for item in items.iter() {
        let Value::Object(mut m) = to_json(item) else {
            return Err(format!(
                "type mismatch: JSONPatchType.expression should evaluate to array of JSONPatch, got element of {}",
                item.type_of()
            ));
        };
        // kube copies op, path, a non-empty from, and a value that is set.
        let mut op = Map::new();
        for k in ["op", "path"] {
            op.insert(k.into(), m.get(k).cloned().unwrap_or(Value::String(String::new())));
        }
        if let Some(from) = m.get("from").filter(|f| f.as_str().is_some_and(|f| !f.is_empty())) {
            op.insert("from".into(), from.clone());
        }
        if let Some(v) = m.get_mut("value") {
            op.insert("value".into(), constructed(v.take())?);
        }
        patch.push(Value::Object(op));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(patch)).map_err(|e| format!("JSON Patch: {e}"))?;
    let before = obj.clone();
    match json_patch::patch(obj, &patch) {
        Ok(()) => Ok(()),
        Err(e) => {
            *obj = before;
            if matches!(e.kind, json_patch::PatchErrorKind::TestFailed) {
                return Ok(());
            }
            let path = e.path.to_string();
            let key = path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .replace("~1", "/")
                .replace("~0", "~");
            match patch.get(e.operation) {
                // evanphx/json-patch's words, as kube-apiserver answers them.
                Some(json_patch::PatchOperation::Remove(_)) if !key.is_empty() => Err(format!(
                    "JSON Patch: error in remove for path: '{path}': Unable to remove nonexistent key: {key}: missing value"
                )),
                _ => Err(format!("JSON Patch: {e}")),
            }
        }
    }
}

/// Merges the apply configuration an `ApplyConfiguration` expression gave (an `Object{...}`,
/// as a map) into `obj` as server-side apply merges a configuration (kube's structured merge
/// diff without field ownership), by the version's declared `schema` when there is one:
/// granular maps and structs key by key, `x-kubernetes-list-type: map`/`set` lists item by
/// item, scalars replaced. As in kube, a field the schema does not declare, and an atomic
/// list, map or struct anywhere in the configuration, are errors (without a schema every
/// object is granular and lists are replaced).
pub fn apply_configuration(obj: &mut Value, config: &Cel, schema: Option<&Value>) -> Result<(), String> {
    let cfg = constructed(to_json(config))?;
    if !cfg.is_object() {
        return Err(format!(
            "unsupported return type from ApplyConfiguration expression: {}",
            config.type_of()
        ));
    }
    let full = apply_schema(schema);
    if schema.is_some() {
        if let Some(path) = undeclared(&cfg, &full, "", true) {
            return Err(format!(
                "error applying patch: failed to convert patch object to typed object: {path}: field not declared in schema"
            ));
        }
    }
    let mut atomics = Vec::new();
    find_atomics(&cfg, Some(&full), String::new(), &mut atomics);
    if !atomics.is_empty() {
        return Err(format!(
            "error applying patch: invalid ApplyConfiguration: may not mutate atomic arrays, maps or structs: {}",
            atomics.join(", ")
        ));
    }
    apply_merge(obj, &cfg, Some(&full));
    Ok(())
}

/// A constructed value without the type names the rewrite kept ([`TYPE_KEY`]), after kube's
/// `CheckTypeNamesMatchFieldPathNames`: an `Object...{}` under a field of another must be
/// named after the field path from the outermost one (`Object.spec{...}` under `spec`).
pub fn constructed(mut v: Value) -> Result<Value, String> {
    let mut errors = Vec::new();
    untype(&mut v, None, &mut errors);
    match errors.is_empty() {
        true => Ok(v),
        false => Err(format!("type mismatch: {}", errors.join("\n"))),
    }
}

fn untype(v: &mut Value, expected: Option<&str>, errors: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let typed = m.remove(TYPE_KEY).and_then(|t| t.as_str().map(str::to_string));
            let base = match (&typed, expected) {
                (Some(t), Some(e)) => {
                    if t != e {
                        errors.push(format!(
                            "unexpected type name {t:?}, expected {e:?}, which matches field name path from root Object type"
                        ));
                    }
                    Some(e.to_string())
                }
                (Some(t), None) => Some(t.clone()),
                (None, e) => e.map(str::to_string),
            };
            for (k, x) in m.iter_mut() {
                let path = match (&typed, &base) {
                    (Some(_), Some(b)) => Some(format!("{b}.{k}")),
                    _ => base.clone(),
                };
                untype(x, path.as_deref(), errors);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| untype(x, expected, errors)),
        _ => {}
    }
}

fn preserves_unknown(s: &Value) -> bool {
    s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// The path (`.spec.x`) of the first field of `v` that the structural schema `s` does not
/// declare (`apiVersion`, `kind` and `metadata` are always declared at the root).
fn undeclared(v: &Value, s: &Value, at: &str, root: bool) -> Option<String> {
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let extra = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                // ObjectMeta's fields are checked when the object is validated.
                if root && k == "metadata" {
                    continue;
                }
                let child = props.and_then(|p| p.get(k)).or(extra);
                let path = format!("{at}.{k}");
                match child {
                    Some(c) => {
                        if let Some(p) = undeclared(x, c, &path, false) {
                            return Some(p);
                        }
                    }
                    None if root && (k == "apiVersion" || k == "kind") => {}
                    None if preserves_unknown(s) || (props.is_none() && s.get("type").is_none()) => {}
                    None => return Some(path),
                }
            }
            None
        }
        Value::Array(items) => {
            let is = s.get("items")?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, x)| undeclared(x, is, &format!("{at}[{i}]"), false))
        }
        _ => None,
    }
}

/// kube's `findAtomics`: the paths of the atomic lists (no `x-kubernetes-list-type` of `map` or
/// `set`), maps and structs (`x-kubernetes-map-type: atomic`) in the configuration `v`.
fn find_atomics(v: &Value, s: Option<&Value>, at: String, out: &mut Vec<String>) {
    let Some(s) = s else { return };
    match v {
        Value::Object(m) => {
            if s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic") {
                out.push(at.clone());
            }
            let props = s.get("properties").and_then(Value::as_object);
            let extra = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                find_atomics(x, props.and_then(|p| p.get(k)).or(extra), format!("{at}.{k}"), out);
            }
        }
        Value::Array(items) => {
            if !matches!(
                s.get("x-kubernetes-list-type").and_then(Value::as_str),
                Some("map" | "set")
            ) {
                out.push(at.clone());
            }
            for (i, x) in items.iter().enumerate() {
                find_atomics(x, s.get("items"), format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::admission::cel::{compile_with_structs, eval_expr};
    use serde_json::json;

    fn value(src: &str) -> Cel {
        eval_expr(&compile_with_structs(src).expect("compiles"), &[]).expect("evaluates")
    }

    #[test]
    fn json_patches_apply_in_order_and_a_failed_test_changes_nothing() {
        let mut o = json!({"metadata": {"name": "f"}, "spec": {"a": 1}});
        let ops = value(
            "[JSONPatch{op: 'add', path: '/metadata/labels', value: {'x': 'y'}}, \
              JSONPatch{op: 'replace', path: '/spec/a', value: 2}, \
              JSONPatch{op: 'copy', from: '/spec/a', path: '/spec/b'}]",
        );
        json_patch(&mut o, &ops).expect("applies");
        assert_eq!(
            o,
            json!({"metadata": {"name": "f", "labels": {"x": "y"}}, "spec": {"a": 2, "b": 2}})
        );

        let before = o.clone();
        let ops = value("[JSONPatch{op: 'test', path: '/spec/a', value: 3}, JSONPatch{op: 'remove', path: '/spec'}]");
        assert_eq!(json_patch(&mut o, &ops), Ok(()));
        assert_eq!(o, before, "a failed test leaves the object alone");

        let err = json_patch(&mut o, &value("[JSONPatch{op: 'remove', path: '/spec/zz'}]")).expect_err("fails");
        assert_eq!(
            err,
            "JSON Patch: error in remove for path: '/spec/zz': Unable to remove nonexistent key: zz: missing value"
        );
        assert_eq!(o, before, "a failed patch leaves the object alone");
        assert!(json_patch(&mut o, &value("{'a': 1}")).is_err(), "not a list");
    }

    #[test]
    fn apply_configurations_merge_by_the_schema() {
        let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "size": {"type": "integer"},
            "keep": {"type": "boolean"},
            "added": {"type": "object", "properties": {"x": {"type": "string"}}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "list": {"type": "array", "items": {"type": "integer"}},
            "sel": {"type": "object", "x-kubernetes-map-type": "atomic", "additionalProperties": {"type": "string"}},
        }}}});
        let mut o = json!({"metadata": {"name": "f", "labels": {"a": "1"}},
                           "spec": {"size": 1, "keep": true, "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}],
                                    "tags": ["x"], "list": [1, 2]}});
        let cfg = value(
            "Object{metadata: Object.metadata{labels: {'b': '2'}}, \
                    spec: Object.spec{size: 3, added: Object.spec.added{x: 'y'}, \
                    ports: [Object.spec.ports{name: 'b', port: 20}, Object.spec.ports{name: 'c', port: 3}], tags: ['y']}}",
        );
        apply_configuration(&mut o, &cfg, Some(&schema)).expect("merges");
        assert_eq!(
            o,
            json!({"metadata": {"name": "f", "labels": {"a": "1", "b": "2"}},
                   "spec": {"size": 3, "keep": true, "added": {"x": "y"}, "list": [1, 2], "tags": ["x", "y"],
                            "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 20}, {"name": "c", "port": 3}]}})
        );
        let before = o.clone();
        let err = |src: &str, o: &mut Value| apply_configuration(o, &value(src), Some(&schema)).expect_err("refused");
        assert_eq!(
            err("Object{spec: Object.spec{list: [9], sel: {'a': 'b'}}}", &mut o),
            "error applying patch: invalid ApplyConfiguration: may not mutate atomic arrays, maps or structs: .spec.list, .spec.sel"
        );
        assert_eq!(
            err("Object{spec: Object.spec{nope: 1}}", &mut o),
            "error applying patch: failed to convert patch object to typed object: .spec.nope: field not declared in schema"
        );
        assert_eq!(o, before, "a refused configuration changes nothing");
        assert!(apply_configuration(&mut o, &value("[1]"), None).is_err());
        assert_eq!(
            err("Object{spec: Object.spec{added: Object.spec.wrong{x: 'y'}}}", &mut o),
            "type mismatch: unexpected type name \"Object.spec.wrong\", expected \"Object.spec.added\", which matches field name path from root Object type"
        );

        // Without a schema: objects merge, lists are replaced.
        let mut o = json!({"spec": {"list": [1], "a": 1}});
        apply_configuration(&mut o, &value("Object{spec: Object.spec{list: [2], b: 2}}"), None).expect("merges");
        assert_eq!(o, json!({"spec": {"list": [2], "a": 1, "b": 2}}));
    }
}
