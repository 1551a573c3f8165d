//! Authorization: whether the authenticated user may do what the [`RequestInfo`] says, by
//! the local policy or a SubjectAccessReview (see [`crate::apiserver::authz`]). A denial is
//! a 403 with the message k8s.io/apiserver's `responsewriters.Forbidden` writes, so clients
//! and tests see the same text from us as from kube-apiserver.

use super::Early;
use crate::apiserver::apierrors::{details, qualified, Status};
use crate::apiserver::authn::UserInfo;
use crate::apiserver::authz::Authorizer;
use crate::apiserver::request::RequestInfo;
use http::StatusCode;

/// The filter: `Ok` when allowed; 403 when denied, 500 when no decision could be made.
pub async fn authorize(authz: &Authorizer, user: &UserInfo, info: &RequestInfo) -> Result<(), Early> {
    match authz.authorize(user, info).await {
        Ok(d) if d.allowed => Ok(()),
        Ok(d) => Err(Box::new(forbidden(&user.name, info, &d.reason).into_response())),
        Err(e) => {
            tracing::warn!(error = %e, "authorization failed");
            Err(Box::new(
                Status::internal(format!("authorization failed: {e}")).into_response(),
            ))
        }
    }
}

/// 403 for a denied request, with the message k8s' `responsewriters.Forbidden` builds.
fn forbidden(user: &str, info: &RequestInfo, reason: &str) -> Status {
    let mut msg = forbidden_message(user, info);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    let (group, resource) = if info.is_resource_request {
        (info.api_group.as_str(), info.resource.as_str())
    } else {
        ("", "")
    };
    let message = match (resource.is_empty(), info.name.is_empty()) {
        (true, _) => format!("forbidden: {msg}"),
        (false, true) => format!("{} is forbidden: {msg}", qualified(resource, group)),
        (false, false) => format!("{} \"{}\" is forbidden: {msg}", qualified(resource, group), info.name),
    };
    Status {
        code: StatusCode::FORBIDDEN,
        reason: "Forbidden",
        message,
        details: Some(details(&info.name, group, resource)),
    }
}

/// `responsewriters.forbiddenMessage` of k8s.io/apiserver.
fn forbidden_message(user: &str, info: &RequestInfo) -> String {
    if !info.is_resource_request {
        return format!("User {user:?} cannot {} path {:?}", info.verb, info.path);
    }
    let mut resource = info.resource.clone();
    if !info.subresource.is_empty() {
        resource = format!("{resource}/{}", info.subresource);
    }
    if !info.namespace.is_empty() {
        format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
            info.verb, info.api_group, info.namespace
        )
    } else {
        format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
            info.verb, info.api_group
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forbidden_matches_reference_shape() {
        let info = RequestInfo::parse(
            "GET",
            "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders",
            "",
        )
        .expect("valid path");
        let got = forbidden("nobody", &info, "").to_json();
        let want = json!({
          "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": "flunders.wardle.example.com is forbidden: User \"nobody\" cannot list resource \"flunders\" in API group \"wardle.example.com\" in the namespace \"default\"",
          "reason": "Forbidden", "details": {"group": "wardle.example.com", "kind": "flunders"}, "code": 403
        });
        assert_eq!(got, want);
    }

    #[test]
    fn forbidden_non_resource_and_named() {
        let info = RequestInfo::parse("GET", "/metrics", "").expect("valid");
        let got = forbidden("system:anonymous", &info, "").to_json();
        assert_eq!(
            got["message"],
            "forbidden: User \"system:anonymous\" cannot get path \"/metrics\""
        );
        assert_eq!(got["details"], json!({}));
        let info = RequestInfo::parse("DELETE", "/apis/g.io/v1/fischers/a", "").expect("valid");
        let got = forbidden("u", &info, "no RBAC").to_json();
        assert_eq!(
            got["message"],
            "fischers.g.io \"a\" is forbidden: User \"u\" cannot delete resource \"fischers\" in API group \"g.io\" at the cluster scope: no RBAC"
        );
    }
}
