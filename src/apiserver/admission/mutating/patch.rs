//! Applying a mutation's value to the object, as k8s.io/apiserver's
//! `policy/mutating/patch` does: a JSON Patch (`json_patch.go`), or an apply configuration
//! merged into the object (`smd.go`).

use crate::apiserver::admission::cel::to_json;
use kube_cel::cel::Value as Cel;
use serde_json::{Map, Value};

/// Applies the JSON Patch a `JSONPatch` expression gave (a list of `JSONPatch{op, path,
/// value, from}`, as maps) to `obj`. A failed `test` operation leaves the object as it was
/// without an error, as in kube; other failures are errors worded `JSONPath: ...`.
pub fn json_patch(obj: &mut Value, ops: &Cel) -> Result<(), String> {
    let Cel::List(items) = ops else {
        return Err("type mismatch: JSONPatchType.expression should evaluate to array".into());
    };
    let mut patch = Vec::with_capacity(items.len());
    for item in items.iter() {
        let Value::Object(m) = to_json(item) else {
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
        if let Some(v) = m.get("value") {
            op.insert("value".into(), v.clone());
        }
        patch.push(Value::Object(op));
    }
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).map_err(|e| format!("JSONPath: {e}"))?;
    let before = obj.clone();
    match json_patch::patch(obj, &patch) {
        Ok(()) => Ok(()),
        Err(e) => {
            *obj = before;
            if matches!(e.kind, json_patch::PatchErrorKind::TestFailed) {
                Ok(())
            } else {
                Err(format!("JSONPath: {e}"))
            }
        }
    }
}

/// Merges the apply configuration an `ApplyConfiguration` expression gave (an `Object{...}`,
/// as a map) into `obj`, as server-side apply merges a configuration: maps (and structs) are
/// merged key by key, everything else (scalars, and lists, which this server takes as atomic
/// without the schema at hand) is replaced by the configuration's value.
pub fn apply_configuration(obj: &mut Value, config: &Cel) -> Result<(), String> {
    let Value::Object(cfg) = to_json(config) else {
        return Err(format!(
            "unsupported return type from ApplyConfiguration expression: {}",
            config.type_of()
        ));
    };
    merge(obj, cfg);
    Ok(())
}

fn merge(into: &mut Value, from: Map<String, Value>) {
    let Value::Object(target) = into else {
        *into = Value::Object(from);
        return;
    };
    for (k, v) in from {
        match (target.get_mut(&k), v) {
            (Some(t @ Value::Object(_)), Value::Object(m)) => merge(t, m),
            (_, v) => {
                target.insert(k, v);
            }
        }
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
        assert!(err.starts_with("JSONPath: "), "{err}");
        assert_eq!(o, before, "a failed patch leaves the object alone");
        assert!(json_patch(&mut o, &value("{'a': 1}")).is_err(), "not a list");
    }

    #[test]
    fn apply_configurations_merge_maps_and_replace_the_rest() {
        let mut o = json!({"metadata": {"name": "f", "labels": {"a": "1"}},
                           "spec": {"size": 1, "list": [1, 2], "keep": true}});
        let cfg = value(
            "Object{metadata: Object.metadata{labels: {'b': '2'}}, \
                    spec: Object.spec{size: 3, list: [9], added: Object.spec.added{x: 'y'}}}",
        );
        apply_configuration(&mut o, &cfg).expect("merges");
        assert_eq!(
            o,
            json!({"metadata": {"name": "f", "labels": {"a": "1", "b": "2"}},
                   "spec": {"size": 3, "list": [9], "keep": true, "added": {"x": "y"}}})
        );
        assert!(apply_configuration(&mut o, &value("[1]")).is_err());
    }
}
