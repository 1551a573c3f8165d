//! PATCH: JSON merge patch and JSON Patch (RFC 6902), applied read-modify-write onto the
//! object as kube-apiserver would read it, re-read and retried after a lost write race;
//! `application/apply-patch+yaml` is server-side apply (see [`super::apply`]).
//!
//! JSON Patch has kube-apiserver's limits: at most 10,000 operations, and `copy` operations
//! may together duplicate no more than the request size limit. Without them a 2 KB patch of
//! repeated `copy /metadata` doubles the object per operation until memory runs out.

use super::{managed, object, Cx, StorageHandler, PATCH_RETRIES};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::filters::body_limit::MAX_BODY_BYTES;
use crate::apiserver::router::ResourceRequest;
use http::{header, Response};
use json_patch::{Patch, PatchOperation};
use serde_json::Value;

impl StorageHandler {
    pub(super) async fn patch(&self, cx: &Cx, req: &ResourceRequest) -> Result<Response<Body>, Status> {
        let ct = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let kind = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let merge = match kind.as_str() {
            "application/merge-patch+json" => true,
            "application/json-patch+json" => false,
            "application/apply-patch+yaml" => return self.apply(cx, &req.body).await,
            _ => {
                return Err(Status::unsupported_media_type(
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ))
            }
        };
        managed::validate_options(cx, "PatchOptions", false)?;
        let patch: Value =
            serde_json::from_slice(&req.body).map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
        let json_patch: Option<json_patch::Patch> = if merge {
            None
        } else {
            Some(
                serde_json::from_value(patch.clone())
                    .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?,
            )
        };
        // Read-modify-write; a concurrent writer makes the store refuse and we re-read.
        for _ in 0..PATCH_RETRIES {
            let old = self
                .storage
                .get(&cx.key(&cx.name))
                .ok_or_else(|| cx.not_found(&cx.name))?;
            // Patched as kube-apiserver would read it: pruned and defaulted.
            let mut old_v = old.value();
            cx.at_version(&mut old_v);
            cx.prune_and_default(&mut old_v);
            let mut new = old_v.clone();
            match &json_patch {
                None => json_patch::merge(&mut new, &patch),
                // `apply` counts the operations before applying any: too many is kube's 413,
                // any other failure its bare 422.
                Some(p) => apply(&mut new, p).map_err(|e| {
                    if let Err(too_many) = check(p) {
                        return Status::entity_too_large(&too_many);
                    }
                    // kube answers a failed operation with a bare 422 and no causes; what
                    // failed goes to the log.
                    tracing::debug!(error = %e, name = %cx.name, "JSON patch failed");
                    Status {
                        code: http::StatusCode::UNPROCESSABLE_ENTITY,
                        reason: "Invalid",
                        message: "the server rejected our request due to an error in our request".into(),
                        details: Some(serde_json::Map::new()),
                    }
                })?,
            }
            object::check_patched(cx, &new)?;
            object::check_depth(&new)?;
            // A patch naming a resourceVersion is a precondition, as in kube-apiserver.
            let rv = match new.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                Some(s) if s != old.rv.to_string() => return Err(cx.conflict(&cx.name, Status::STALE)),
                _ => old.rv,
            };
            match self.write_update(cx, &old_v, new, rv).await {
                Err(s) if s.reason == "Conflict" && merge_retryable(&patch) => continue,
                r => return r,
            }
        }
        Err(cx.conflict(&cx.name, Status::STALE))
    }
}

/// Whether a patch may be re-applied to a newer object after a lost race: only when it does not
/// pin the resourceVersion itself (then the conflict is the client's).
fn merge_retryable(patch: &Value) -> bool {
    patch.pointer("/metadata/resourceVersion").is_none()
}

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
