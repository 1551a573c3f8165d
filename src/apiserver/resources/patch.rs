//! JSON Patch (RFC 6902) with kube-apiserver's limits: at most 10,000 operations, and `copy`
//! operations may together duplicate no more than the request size limit. Without them a 2 KB
//! patch of repeated `copy /metadata` doubles the object per operation until memory runs out.

use crate::apiserver::filters::body_limit::MAX_BODY_BYTES;
use json_patch::{Patch, PatchOperation};
use serde_json::Value;

/// kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_OPERATIONS: usize = 10_000;

/// Why a patch is refused before it is applied.
pub fn check(patch: &Patch) -> Result<(), String> {
    if patch.0.len() > MAX_OPERATIONS {
        return Err(format!(
            "The allowed maximum operations in a JSON patch is {MAX_OPERATIONS}, got {}",
            patch.0.len()
        ));
    }
    Ok(())
}

/// Applies `patch` to `doc` operation by operation, counting the bytes `copy` duplicates.
pub fn apply(doc: &mut Value, patch: &Patch) -> Result<(), String> {
    check(patch)?;
    let mut copied = 0usize;
    for op in &patch.0 {
        if let PatchOperation::Copy(c) = op {
            let size = doc
                .pointer(c.from.as_str())
                .map(|v| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX))
                .unwrap_or(0);
            copied = copied.saturating_add(size);
            if copied > MAX_BODY_BYTES {
                return Err(format!(
                    "copy operations would duplicate more than {MAX_BODY_BYTES} bytes (the request size limit)"
                ));
            }
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(v: Value) -> Patch {
        serde_json::from_value(v).expect("patch")
    }

    #[test]
    fn doubling_copies_are_stopped() {
        let mut doc = json!({"metadata": {"name": "x".repeat(1000)}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/metadata", "path": format!("/metadata/a{i}")}))
            .collect();
        let err = apply(&mut doc, &patch(Value::Array(ops))).expect_err("refused");
        assert!(err.contains("copy operations"), "{err}");
    }

    #[test]
    fn ordinary_patches_apply_and_too_many_operations_do_not() {
        let mut doc = json!({"spec": {"a": 1}});
        let p = patch(
            json!([{"op": "copy", "from": "/spec/a", "path": "/spec/b"}, {"op": "test", "path": "/spec/b", "value": 1}]),
        );
        apply(&mut doc, &p).expect("applies");
        assert_eq!(doc, json!({"spec": {"a": 1, "b": 1}}));
        let many: Vec<Value> = (0..=MAX_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/spec/a", "value": 1}))
            .collect();
        assert!(apply(&mut doc, &patch(Value::Array(many))).is_err());
    }
}
