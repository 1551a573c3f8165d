//! POST of a new object: decoded, pruned and defaulted, named (`generateName`), validated,
//! its fields owned by the manager, and admitted by namespace lifecycle before it is stored.

use super::{json_response, managed, object, value_response, Cx, StorageHandler};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use http::{Response, StatusCode};

impl StorageHandler {
    pub(super) async fn create(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        if cx.status_sub {
            return Err(Status::method_not_supported(
                &cx.group,
                &format!("{}/status", cx.res.plural),
                "create",
            ));
        }
        managed::validate_options(cx, "CreateOptions", false)?;
        let mut v = object::decode(cx, body)?;
        cx.prune_request(&mut v)?;
        object::prepare_create(cx, &mut v)?;
        cx.validate(&v, None)?;
        managed::track_update(cx, None, &mut v);
        let name = object::name_of(&v);
        self.namespaces
            .admit_create(&cx.namespace, &cx.group, &cx.res.plural, &name)
            .await?;
        if cx.dry_run() {
            if self.storage.get(&cx.key(&name)).is_some() {
                return Err(Status::already_exists(&cx.group, &cx.res.plural, &name));
            }
            return Ok(value_response(StatusCode::CREATED, &v));
        }
        let obj = self
            .storage
            .create(&cx.key(&name), v)
            .await
            .map_err(|e| cx.storage_err(&name, e))?;
        Ok(json_response(StatusCode::CREATED, obj.json.clone()))
    }
}
