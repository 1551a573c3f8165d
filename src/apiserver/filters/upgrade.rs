//! First step of the chain: refuse protocol switches (`Connection: Upgrade` or an `Upgrade`
//! header). Nothing here upgrades, and answering 101 on a proxied connection is
//! CVE-2018-1002105's class, so such a request is refused before anything else looks at it.
//! Also home of [`close`], the way early refusals end an HTTP/1 connection.

use super::Early;
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Response};

/// The filter: 400 and a closed connection for an upgrade request.
pub fn refuse(parts: &Parts) -> Result<(), Early> {
    if wants_upgrade(&parts.headers) {
        let s = Status::bad_request("connection upgrades are not supported by this server");
        return Err(Box::new(close(s.into_response(), parts.version)));
    }
    Ok(())
}

/// Whether the request asks for a protocol switch.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Asks the client to close the connection after `r`, for answers given without reading
/// the request body (the unread rest must not be taken for the next request).
pub fn close(mut r: Response<Body>, version: http::Version) -> Response<Body> {
    // `Connection` is an HTTP/1 header; HTTP/2 forbids it.
    if version < http::Version::HTTP_2 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
