//! Request body size: kube-apiserver's 3 MiB limit, applied twice. A declared
//! `Content-Length` over the limit is refused right after the upgrade check, before
//! authentication; a body without a (truthful) length is cut off while it is read, which
//! happens only on the resource path and only after the in-flight permit is taken.

use super::upgrade::close;
use super::Early;
use crate::apiserver::apierrors::Status;
use bytes::Bytes;
use http::header;
use http::request::Parts;
use http_body_util::{BodyExt, Limited};

/// Largest accepted request body, as kube-apiserver's default (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The filter: 413 for a declared length over [`MAX_BODY_BYTES`].
pub fn refuse_declared(parts: &Parts) -> Result<(), Early> {
    let declared_len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|l| l > MAX_BODY_BYTES as u64) {
        // Refused before reading; the connection is closed so the unread body cannot be
        // taken for the next request.
        return Err(Box::new(close(
            Status::too_large(MAX_BODY_BYTES).into_response(),
            parts.version,
        )));
    }
    Ok(())
}

/// Reads the body of a mutating request, at most [`MAX_BODY_BYTES`] (413 and a closed
/// connection beyond). Other requests' bodies are not read: nothing serves them.
pub async fn read(body: hyper::body::Incoming, mutating: bool, version: http::Version) -> Result<Bytes, Early> {
    if !mutating {
        return Ok(Bytes::new());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(Box::new(close(
            Status::too_large(MAX_BODY_BYTES).into_response(),
            version,
        ))),
        Err(e) => Err(Box::new(
            Status::bad_request(format!("reading the request body failed: {e}")).into_response(),
        )),
    }
}
