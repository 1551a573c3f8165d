//! The max-in-flight step (kube-apiserver's `WithMaxInFlightLimit`): a permit from the
//! [`InFlight`] pool of the request's kind, taken before the body is read, or 429.

use super::Early;
use crate::apiserver::concurrency::InFlight;
use crate::apiserver::request::RequestInfo;
use http::Method;
use tokio::sync::OwnedSemaphorePermit;

/// Whether `method` writes: such a request counts against the mutating pool, and only its
/// body is read.
pub fn is_mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The filter, on the resource path: a permit from the pool of the request's kind, or 429.
/// Watches pass without one.
pub fn limit(pools: &InFlight, info: &RequestInfo, mutating: bool) -> Result<Option<OwnedSemaphorePermit>, Early> {
    if info.verb == "watch" {
        return Ok(None);
    }
    pools.admit(mutating)
}
