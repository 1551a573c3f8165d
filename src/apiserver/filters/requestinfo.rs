//! The request-info step: the attributes of the request ([`RequestInfo`]), parsed once for
//! every later step.

use super::Early;
use crate::apiserver::apierrors::Status;
use crate::apiserver::request::RequestInfo;
use http::request::Parts;

/// The filter: the attributes of the request, parsed once for every later step; a refused
/// path is a 404 (after authentication, so unauthenticated clients learn nothing from it).
pub fn resolve(parts: &Parts) -> Result<RequestInfo, Early> {
    let query = parts.uri.query().unwrap_or_default();
    RequestInfo::parse(parts.method.as_str(), parts.uri.path(), query).map_err(|e| {
        tracing::debug!(error = %e, "refused path");
        Box::new(Status::not_found_path().into_response())
    })
}
