//! DELETE and deletecollection: `DeleteOptions` (preconditions, propagation policy, dryRun in
//! the body as kubectl sends it), finalizers, and the garbage collector's `orphan` and
//! `foregroundDeletion` finalizers, as kube-apiserver's generic registry applies them.

use super::{object, value_response, Cx, StorageHandler, PATCH_RETRIES};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::{Preconditions, StorageError};
use http::{Response, StatusCode};
use serde_json::{json, Value};

/// What a DELETE body asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct DeleteOptions {
    pub pre: Preconditions,
    /// The finalizer the garbage collector acts on: `orphan` or `foregroundDeletion`.
    pub gc_finalizer: Option<&'static str>,
    pub dry_run: bool,
    /// `orphanDependents: false`, the one case kube-apiserver answers 202 for an object that
    /// finalizers keep (other clients were built on 200 and kube kept it for them).
    pub accepted_if_kept: bool,
}

fn invalid(field: &str, message: String) -> Status {
    Status::invalid("meta.k8s.io", "DeleteOptions", "", &[(field.to_string(), message)])
}

/// Parses a `DeleteOptions` body (an empty body means the defaults).
pub(super) fn parse(body: &[u8]) -> Result<DeleteOptions, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Status::bad_request(format!("invalid DeleteOptions: {e}")))?;
    let p = v.get("preconditions").cloned().unwrap_or(Value::Null);
    let rv = match p.get("resourceVersion").and_then(Value::as_str) {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| Status::bad_request(format!("invalid resourceVersion precondition {s:?}")))?,
        ),
        None => None,
    };
    let orphan = v.get("orphanDependents").and_then(Value::as_bool);
    let policy = v.get("propagationPolicy").and_then(Value::as_str);
    let gc_finalizer = match (orphan, policy) {
        (Some(_), Some(p)) => {
            return Err(invalid(
                "propagationPolicy",
                format!("Invalid value: {p:?}: orphanDependents and deletionPropagation cannot be both set"),
            ))
        }
        (Some(true), None) | (None, Some("Orphan")) => Some("orphan"),
        (None, Some("Foreground")) => Some("foregroundDeletion"),
        (Some(false), None) | (None, Some("Background")) | (None, None) => None,
        (None, Some(p)) => {
            return Err(invalid(
                "propagationPolicy",
                format!("Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
            ))
        }
    };
    let dry_run = match v.get("dryRun").and_then(Value::as_array) {
        None => false,
        Some(a) if a.iter().all(|x| x == "All") => !a.is_empty(),
        Some(_) => {
            return Err(invalid(
                "dryRun",
                format!("Unsupported value: {}: supported values: \"All\"", v["dryRun"]),
            ))
        }
    };
    Ok(DeleteOptions {
        pre: Preconditions {
            resource_version: rv,
            uid: p.get("uid").and_then(Value::as_str).map(str::to_string),
        },
        gc_finalizer,
        dry_run,
        accepted_if_kept: orphan == Some(false),
    })
}

/// `cx` with the body's dryRun folded in, so either place counts.
fn with_dry_run(cx: &Cx, opts: &DeleteOptions) -> Cx {
    let mut cx = cx.clone();
    if opts.dry_run {
        cx.query.insert("dryRun".into(), "All".into());
    }
    cx
}

impl StorageHandler {
    pub(super) async fn delete(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        let opts = parse(body)?;
        let cx = with_dry_run(cx, &opts);
        let (mut value, gone) = self.delete_one(&cx, &cx.name, &opts).await?;
        cx.at_version(&mut value);
        let code = if !gone && opts.accepted_if_kept {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok(value_response(code, &value))
    }

    /// Deletes one object, or marks it deleting when finalizers hold it. Returns the last state
    /// and whether the object is gone.
    async fn delete_one(&self, cx: &Cx, name: &str, opts: &DeleteOptions) -> Result<(Value, bool), Status> {
        let key = cx.key(name);
        let pre = &opts.pre;
        for _ in 0..PATCH_RETRIES {
            let cur = self.storage.get(&key).ok_or_else(|| cx.not_found(name))?;
            if let Some(uid) = &pre.uid {
                if cur.uid != *uid {
                    return Err(cx.conflict(
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            cur.uid
                        ),
                    ));
                }
            }
            if let Some(rv) = pre.resource_version {
                if cur.rv != rv {
                    return Err(cx.conflict(
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            cur.rv
                        ),
                    ));
                }
            }
            let mut v = cur.value();
            let exact = Preconditions {
                resource_version: Some(cur.rv),
                uid: None,
            };
            let mut finalizers = object::finalizers(&v);
            if object::is_deleting(&v) {
                // Already on its way; a repeated DELETE changes nothing.
                if !finalizers.is_empty() {
                    return Ok((v, false));
                }
            } else if let Some(f) = opts.gc_finalizer {
                // The garbage collector deletes or orphans the dependents, then removes it.
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(f.to_string());
                }
            }
            if !finalizers.is_empty() {
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("finalizers".into(), json!(finalizers));
                    m.insert("deletionTimestamp".into(), json!(object::now()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                if cx.dry_run() {
                    return Ok((v, false));
                }
                match self.storage.update(&key, v, exact).await {
                    Ok(o) => return Ok((o.value(), false)),
                    Err(StorageError::Conflict(_)) => continue,
                    Err(e) => return Err(cx.storage_err(name, e)),
                }
            }
            if cx.dry_run() {
                return Ok((v, true));
            }
            match self.storage.delete(&key, exact).await {
                Ok(o) => return Ok((o.value(), true)),
                Err(StorageError::Conflict(_)) => continue,
                Err(e) => return Err(cx.storage_err(name, e)),
            }
        }
        Err(cx.conflict(name, Status::STALE))
    }

    pub(super) async fn delete_collection(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        let opts = parse(body)?;
        let cx = with_dry_run(cx, &opts);
        let sel = cx.selector()?;
        let page = self
            .storage
            .list(&cx.prefix(), None, None, |o| sel.matches(o))
            .map_err(|e| cx.storage_err("", e))?;
        let mut items = Vec::new();
        for o in &page.items {
            let one = Cx {
                namespace: o.namespace.clone(),
                ..cx.clone()
            };
            match self.delete_one(&one, &o.name, &opts).await {
                Ok((mut v, _)) => {
                    cx.at_version(&mut v);
                    items.push(v)
                }
                // Deleted meanwhile: the goal is reached.
                Err(s) if s.code == StatusCode::NOT_FOUND => {}
                Err(s) => return Err(s),
            }
        }
        let list = json!({
            "kind": cx.list_kind(),
            "apiVersion": cx.api_version,
            "metadata": {"resourceVersion": self.storage.current_rv().to_string()},
            "items": items,
        });
        Ok(value_response(StatusCode::OK, &list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_as_kube_reads_them() {
        assert_eq!(parse(b"").expect("empty"), DeleteOptions::default());
        let o = parse(br#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"uid":"u","resourceVersion":"7"},"propagationPolicy":"Background"}"#)
            .expect("gc delete");
        assert_eq!(o.pre.uid.as_deref(), Some("u"));
        assert_eq!(o.pre.resource_version, Some(7));
        assert_eq!(o.gc_finalizer, None);
        let f = |b: &[u8]| parse(b).expect("valid").gc_finalizer;
        assert_eq!(f(br#"{"propagationPolicy":"Foreground"}"#), Some("foregroundDeletion"));
        assert_eq!(f(br#"{"propagationPolicy":"Orphan"}"#), Some("orphan"));
        assert_eq!(f(br#"{"orphanDependents":true}"#), Some("orphan"));
        assert_eq!(f(br#"{"orphanDependents":false}"#), None);
        assert!(
            parse(br#"{"dryRun":["All"],"gracePeriodSeconds":0}"#)
                .expect("dry")
                .dry_run
        );

        let bad = parse(br#"{"propagationPolicy":"Sideways"}"#)
            .expect_err("refused")
            .to_json();
        assert_eq!(bad["code"], 422);
        assert_eq!(bad["details"]["causes"][0]["field"], "propagationPolicy");
        let both = parse(br#"{"propagationPolicy":"Orphan","orphanDependents":true}"#).expect_err("refused");
        assert_eq!(both.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(parse(b"{").expect_err("bad json").code, StatusCode::BAD_REQUEST);
        assert_eq!(
            parse(br#"{"dryRun":["Some"]}"#).expect_err("bad").code,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
