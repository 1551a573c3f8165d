//! GET of one object, in the form the client negotiated (object, table or metadata).

use super::{consistency, json_response, output, value_response, Cx, StorageHandler};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use http::{Response, StatusCode};

impl StorageHandler {
    pub(super) fn get(&self, cx: &Cx) -> Result<Response<Body>, Status> {
        // Any version serves the latest state (there is no older one), but one that does not
        // parse is refused as kube's storage refuses it.
        consistency::parse_rv(cx.q("resourceVersion")).map_err(consistency::unparsable_rv)?;
        let obj = self
            .storage
            .get(&cx.key(&cx.name))
            .ok_or_else(|| cx.not_found(&cx.name))?;
        // Only a table or metadata needs the object parsed; the object itself goes out as stored.
        if cx.form != output::Form::Object {
            if let Some(v) = output::one(cx, cx.form, &obj.value())? {
                return Ok(value_response(StatusCode::OK, &v));
            }
        }
        Ok(json_response(StatusCode::OK, cx.bytes_of(&obj)))
    }
}
