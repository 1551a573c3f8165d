//! The `application/apply-patch+yaml` verb: server-side apply, creating the object when it
//! does not exist yet (see [`super::managed`] for the merge and ownership rules).

use super::{json_response, managed, value_response, Cx, StorageHandler, PATCH_RETRIES};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::StorageError;
use http::{Response, StatusCode};
use serde_json::Value;

/// `force` as Go's `strconv.ParseBool` reads it; anything else is not forcing.
fn force(cx: &Cx) -> bool {
    matches!(cx.q("force"), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

impl StorageHandler {
    pub(super) async fn apply(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        managed::validate_options(cx, "PatchOptions", true)?;
        let mut cfg = managed::decode_config(cx, body)?;
        super::object::check_depth(&cfg)?;
        cx.prune_config(&mut cfg)?;
        // A resourceVersion in the configuration is a precondition, as for other patches.
        let pinned = cfg
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let key = cx.key(&cx.name);
        for _ in 0..PATCH_RETRIES {
            let Some(old) = self.storage.get(&key) else {
                // Subresources cannot create their object.
                if cx.status_sub {
                    return Err(cx.not_found(&cx.name));
                }
                let mut v = managed::apply_create(cx, &cfg)?;
                cx.prune_and_default(&mut v);
                cx.validate(&v, None)?;
                self.namespaces
                    .admit_create(&cx.namespace, &cx.group, &cx.res.plural, &cx.name)
                    .await?;
                if cx.dry_run() {
                    return Ok(value_response(StatusCode::CREATED, &v));
                }
                match self.storage.create(&key, v).await {
                    Ok(obj) => return Ok(json_response(StatusCode::CREATED, obj.json.clone())),
                    // Created meanwhile: apply onto what is there now.
                    Err(StorageError::AlreadyExists) => continue,
                    Err(e) => return Err(cx.storage_err(&cx.name, e)),
                }
            };
            if pinned.as_ref().is_some_and(|rv| *rv != old.rv.to_string()) {
                return Err(cx.conflict(&cx.name, Status::STALE));
            }
            let mut live = old.value();
            cx.at_version(&mut live);
            let mut next = managed::apply_update(cx, &live, &cfg, force(cx))?;
            // As in write_update: defaults filled and the result validated against what was
            // there (unchanged invalid parts are tolerated).
            let mut before = live.clone();
            cx.prune_and_default(&mut before);
            cx.prune_and_default(&mut next);
            cx.validate(&next, Some(&before))?;
            // Nothing to change, not even ownership: no write, no new resourceVersion.
            if next == live {
                return Ok(json_response(StatusCode::OK, cx.bytes_of(&old)));
            }
            match self.write_prepared(cx, next, old.rv).await {
                Err(s) if s.reason == "Conflict" && pinned.is_none() => continue,
                r => return r,
            }
        }
        Err(cx.conflict(&cx.name, Status::STALE))
    }
}
