//! DELETE and deletecollection: `DeleteOptions` (preconditions, propagation policy, dryRun in
//! the body as kubectl sends it), finalizers, and the garbage collector's `orphan` and
//! `foregroundDeletion` finalizers, as kube-apiserver's generic registry applies them.

use super::{object, value_response, Cx, StorageHandler, PATCH_RETRIES};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::{Preconditions, StorageError};
use http::{Response, StatusCode};
use serde_json::{json, Value};

/// The garbage collector's finalizers.
const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// An explicit propagation choice (`propagationPolicy`, or the older `orphanDependents`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Propagation {
    /// None given: the object's own GC finalizers decide.
    #[default]
    Unset,
    Orphan,
    Foreground,
    Background,
}

/// What a DELETE body asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct DeleteOptions {
    pub pre: Preconditions,
    pub propagation: Propagation,
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
    let propagation = match (orphan, policy) {
        (Some(_), Some(p)) => {
            return Err(invalid(
                "propagationPolicy",
                format!("Invalid value: {p:?}: orphanDependents and deletionPropagation cannot be both set"),
            ))
        }
        (Some(true), None) | (None, Some("Orphan")) => Propagation::Orphan,
        (None, Some("Foreground")) => Propagation::Foreground,
        (Some(false), None) | (None, Some("Background")) => Propagation::Background,
        (None, None) => Propagation::Unset,
        (None, Some(p)) => {
            return Err(invalid(
                "propagationPolicy",
                format!(
                    "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
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
        propagation,
        dry_run,
        accepted_if_kept: orphan == Some(false),
    })
}

/// The finalizers after a delete, as kube's `deletionFinalizersForGarbageCollection` computes
/// them: the garbage collector's two are taken out, then `orphan` or `foregroundDeletion` put
/// back at the end as the explicit policy, or else the object's own choice, says. This runs on
/// every DELETE, so a repeated one can switch or strip them.
fn with_gc_finalizers(finalizers: &[String], propagation: Propagation) -> Vec<String> {
    let has = |f: &str| finalizers.iter().any(|x| x == f);
    let (orphan, foreground) = match propagation {
        Propagation::Orphan => (true, false),
        Propagation::Foreground => (false, true),
        Propagation::Background => (false, false),
        // Validation keeps both from being set; orphan is checked first, as in kube.
        Propagation::Unset => (has(ORPHAN), !has(ORPHAN) && has(FOREGROUND)),
    };
    let mut out: Vec<String> = finalizers
        .iter()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .cloned()
        .collect();
    if orphan {
        out.push(ORPHAN.into());
    }
    if foreground {
        out.push(FOREGROUND.into());
    }
    out
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
        if gone {
            // An object deleted at once is answered with a Success Status naming it, as the
            // CRD handler answers (one that finalizers keep is answered with the object).
            let uid = value.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": cx.name, "group": cx.group, "kind": cx.res.plural, "uid": uid}});
            return Ok(value_response(StatusCode::OK, &status));
        }
        cx.at_version(&mut value);
        let code = if opts.accepted_if_kept {
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
        let mut admitted = false;
        for _ in 0..PATCH_RETRIES {
            let cur = self.storage.get(&key).ok_or_else(|| cx.not_found(name))?;
            // Precondition failures name the kind, as kube's delete words them.
            if let Some(uid) = &pre.uid {
                if cur.uid != *uid {
                    let why = format!(
                        "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                        cur.uid
                    );
                    return Err(Status::conflict(&cx.group, &cx.res.kind, name, &why));
                }
            }
            if let Some(rv) = pre.resource_version {
                if cur.rv != rv {
                    let why = format!(
                        "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                        cur.rv
                    );
                    return Err(Status::conflict(&cx.group, &cx.res.kind, name, &why));
                }
            }
            let mut v = cur.value();
            if !admitted {
                self.admit_delete(cx, name, &v).await?;
                admitted = true;
            }
            let exact = Preconditions {
                resource_version: Some(cur.rv),
                uid: None,
            };
            let before = object::finalizers(&v);
            let finalizers = with_gc_finalizers(&before, opts.propagation);
            let deleting = object::is_deleting(&v);
            if deleting && finalizers == before && !finalizers.is_empty() {
                // Already on its way and nothing to switch: a repeated DELETE changes nothing.
                return Ok((v, false));
            }
            if !finalizers.is_empty() {
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("finalizers".into(), json!(finalizers));
                    if !deleting {
                        m.insert("deletionTimestamp".into(), json!(object::now()));
                        m.insert("deletionGracePeriodSeconds".into(), json!(0));
                        // Marking for deletion is a change of the object: generation moves, so
                        // controllers that filter on it see the deletion.
                        let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                        m.insert("generation".into(), json!(generation + 1));
                    }
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
            "metadata": {"resourceVersion": self.storage.current_rv().to_string(), "continue": ""},
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
        assert_eq!(o.propagation, Propagation::Background);
        let f = |b: &[u8]| parse(b).expect("valid").propagation;
        assert_eq!(f(br#"{"propagationPolicy":"Foreground"}"#), Propagation::Foreground);
        assert_eq!(f(br#"{"propagationPolicy":"Orphan"}"#), Propagation::Orphan);
        assert_eq!(f(br#"{"orphanDependents":true}"#), Propagation::Orphan);
        assert_eq!(f(br#"{"orphanDependents":false}"#), Propagation::Background);
        assert_eq!(f(b"{}"), Propagation::Unset);
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

    #[test]
    fn gc_finalizers_follow_the_latest_delete() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let hold = v(&["example.com/hold"]);
        assert_eq!(
            with_gc_finalizers(&hold, Propagation::Foreground),
            v(&["example.com/hold", FOREGROUND])
        );
        let fg = v(&["example.com/hold", FOREGROUND]);
        assert_eq!(
            with_gc_finalizers(&fg, Propagation::Orphan),
            v(&["example.com/hold", ORPHAN])
        );
        assert_eq!(with_gc_finalizers(&fg, Propagation::Background), hold);
        assert_eq!(
            with_gc_finalizers(&fg, Propagation::Unset),
            fg,
            "no policy keeps the object's choice"
        );
        assert!(with_gc_finalizers(&[], Propagation::Background).is_empty());
    }
}
