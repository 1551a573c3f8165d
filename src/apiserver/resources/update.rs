//! PUT of a whole object (optimistic concurrency on `resourceVersion`), and the write path
//! every modification shares: [`StorageHandler::write_update`] merges with update semantics
//! (patch uses it too), [`StorageHandler::write_prepared`] stores a finished object
//! (server-side apply uses it), completing a delete when the last finalizer goes.

use super::{json_response, managed, object, value_response, Cx, StorageHandler};
use crate::apiserver::admission::Operation;
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::Preconditions;
use http::{Response, StatusCode};
use serde_json::{json, Value};

impl StorageHandler {
    pub(super) async fn update(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        if cx.name.is_empty() {
            // PUT on a collection: kube's update handler asks for the name first.
            return Err(Status::bad_request("name must be provided"));
        }
        managed::validate_options(cx, "UpdateOptions", false)?;
        let v = object::decode_request(cx, body)?;
        if object::name_of(&v) != cx.name {
            return Err(Status::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                object::name_of(&v),
                cx.name
            )));
        }
        // Custom resources are never created by PUT: a missing object is 404 before anything
        // else is looked at, as the CRD handler answers.
        let old = self
            .storage
            .get(&cx.key(&cx.name))
            .ok_or_else(|| cx.not_found(&cx.name))?;
        // A uid in the body is a precondition, checked by storage before anything else.
        if let Some(uid) = v
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            if uid != old.uid {
                let key = match cx.namespace.as_str() {
                    "" => format!("/registry/{}/{}/{}", cx.group, cx.res.plural, cx.name),
                    ns => format!("/registry/{}/{}/{ns}/{}", cx.group, cx.res.plural, cx.name),
                };
                let why = format!(
                    "StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.uid
                );
                return Err(cx.conflict(&cx.name, &why));
            }
        }
        let rv = match v.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.parse::<u64>().map_err(|_| cx.conflict(&cx.name, Status::STALE))?,
            _ => {
                // kube names the resource (not the kind) in this one message.
                return Err(Status::invalid(
                    &cx.group,
                    &cx.res.plural,
                    &cx.name,
                    &[(
                        "metadata.resourceVersion".into(),
                        "Invalid value: 0: must be specified for an update".into(),
                    )],
                ));
            }
        };
        if old.rv != rv {
            return Err(cx.conflict(&cx.name, Status::STALE));
        }
        self.write_update(cx, &old.value(), v, rv).await
    }

    /// Merges `new` onto `old` with update semantics and writes it if `old` is still at `rv`.
    pub(super) async fn write_update(
        &self,
        cx: &Cx,
        old: &Value,
        mut new: Value,
        rv: u64,
    ) -> Result<Response<Body>, Status> {
        // Both sides as kube-apiserver would see them (it prunes and defaults what it reads
        // from storage too), so a default added to the schema later is not a spec change.
        let mut old = old.clone();
        // Compared and written at the request's version (versions differ only in apiVersion).
        cx.at_version(&mut old);
        cx.at_version(&mut new);
        cx.prune_and_default(&mut old);
        cx.prune_request(&mut new)?;
        let mut next = object::prepare_update(cx, &old, new, cx.has_status())?;
        self.admit_mutate(cx, Operation::Update, &mut next, Some(&old)).await?;
        // The whole object, also for /status: kube validates what would be stored.
        cx.validate(&next, Some(&old))?;
        // Judged even when nothing changes, as kube's Update runs admission before its
        // no-op check.
        self.admit_validate(cx, Operation::Update, &cx.name, Some(&next), Some(&old))
            .await?;
        managed::track_update(cx, Some(&old), &mut next);
        if next == old {
            // Nothing changes: kube-apiserver stores nothing, so the resourceVersion stays and
            // watchers see no event (kubectl says "patched (no change)"). Controllers that
            // write unchanged objects rely on this not to wake each other up.
            return Ok(value_response(StatusCode::OK, &old));
        }
        self.write_prepared(cx, next, rv).await
    }

    /// Writes the prepared `next` if the stored object is still at `rv`.
    pub(super) async fn write_prepared(&self, cx: &Cx, next: Value, rv: u64) -> Result<Response<Body>, Status> {
        let key = cx.key(&cx.name);
        let pre = Preconditions {
            resource_version: Some(rv),
            uid: None,
        };
        // An update that drops the last finalizer of a deleting object completes the delete.
        if object::is_deleting(&next) && object::finalizers(&next).is_empty() {
            if cx.dry_run() {
                return Ok(value_response(StatusCode::OK, &next));
            }
            let obj = self
                .storage
                .delete(&key, pre)
                .await
                .map_err(|e| cx.storage_err(&cx.name, e))?;
            // The answer is the object as this update left it (kube returns what it deleted
            // after applying the update), at the version of the deletion.
            let mut last = next;
            cx.at_version(&mut last);
            if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("resourceVersion".into(), json!(obj.rv.to_string()));
            }
            return Ok(value_response(StatusCode::OK, &last));
        }
        if cx.dry_run() {
            return Ok(value_response(StatusCode::OK, &next));
        }
        let obj = self
            .storage
            .update(&key, next, pre)
            .await
            .map_err(|e| cx.storage_err(&cx.name, e))?;
        Ok(json_response(StatusCode::OK, obj.json.clone()))
    }
}
