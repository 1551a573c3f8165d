//! The response body type: one boxed type for both whole bodies and (later) watch streams.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Error type of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body of the server.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// An early answer: the filter chain stops there and this is the response. Boxed because a
/// response is large and most requests pass every step.
pub type Early = Box<http::Response<Body>>;

/// A plain-text answer, as Go's `http.Error` and the health endpoints write it.
pub fn text(code: http::StatusCode, body: String) -> http::Response<Body> {
    let mut r = http::Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    r
}
