//! Audit-Id echo: kube-apiserver passes its `Audit-Id` along when it proxies a request here;
//! answering with the same header lets both servers' audit logs be joined. Wraps the whole
//! chain, so early refusals carry it too.

use crate::apiserver::body::Body;
use http::{HeaderMap, HeaderValue, Response};

/// The request's `Audit-Id`, taken before the chain consumes the request.
pub fn of(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get("audit-id").cloned()
}

/// Sets `id` (if the request had one) on the answer.
pub fn echo(id: Option<HeaderValue>, mut resp: Response<Body>) -> Response<Body> {
    if let Some(id) = id {
        resp.headers_mut().insert("audit-id", id);
    }
    resp
}
