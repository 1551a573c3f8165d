//! `metav1.Status` error bodies, shaped exactly like kube-apiserver's (see
//! `shared/contract/reference-responses/*.body`): `kind`, `apiVersion`, empty `metadata`,
//! `status: Failure`, `message`, `reason`, `details`, `code`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::body::{full, Body};

/// A failure answer as kube-apiserver writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// HTTP status code, also the body's `code`.
    pub code: StatusCode,
    /// `reason`, e.g. `Forbidden`; empty for reasons k8s leaves unset.
    pub reason: &'static str,
    /// Human-readable `message`.
    pub message: String,
    /// `details`, `None` when k8s leaves it out.
    pub details: Option<Map<String, Value>>,
}

impl Status {
    /// The JSON body.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        });
        let obj = v.as_object_mut().expect("literal object");
        if !self.reason.is_empty() {
            obj.insert("reason".into(), Value::String(self.reason.into()));
        }
        if let Some(d) = &self.details {
            obj.insert("details".into(), Value::Object(d.clone()));
        }
        obj.insert("code".into(), json!(self.code.as_u16()));
        v
    }

    /// The HTTP response, with the headers kube-apiserver sets on errors.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = self.code;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        resp
    }

    /// 401: the credentials were presented but are not valid.
    pub fn unauthorized() -> Self {
        Status {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }

    /// 404 for a path nothing is served at.
    pub fn not_found_path() -> Self {
        Status {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: Some(Map::new()),
        }
    }

    /// 404 for a named object that does not exist (`flunders.wardle.example.com "x" not found`).
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Status {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(resource, group)),
            details: Some(details(name, group, resource)),
        }
    }

    /// 405 as `apierrors.NewMethodNotSupported` builds it.
    pub fn method_not_supported(group: &str, resource: &str, action: &str) -> Self {
        Status {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!(
                "{action} is not supported on resources of kind \"{}\"",
                qualified(resource, group)
            ),
            details: Some(details("", group, resource)),
        }
    }

    /// 405 for a method a path does not serve, as kube-apiserver's mux answers it.
    pub fn method_not_allowed() -> Self {
        Status {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".into(),
            details: None,
        }
    }

    /// 406 when none of `types` (a comma-separated list) is acceptable to the client.
    pub fn not_acceptable(types: &str) -> Self {
        Status {
            code: StatusCode::NOT_ACCEPTABLE,
            reason: "NotAcceptable",
            message: format!("only the following media types are accepted: {types}"),
            details: None,
        }
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Status {
            code: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "RequestEntityTooLarge",
            message: format!("Request entity too large: limit is {limit}"),
            details: None,
        }
    }

    /// 413 for a request too large in another way than its size
    /// (`apierrors.NewRequestEntityTooLargeError`).
    pub fn entity_too_large(message: &str) -> Self {
        Status {
            code: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "RequestEntityTooLarge",
            message: format!("Request entity too large: {message}"),
            details: None,
        }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Status {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 503 while the server cannot decide (e.g. authentication config not loaded yet).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Status {
            code: StatusCode::SERVICE_UNAVAILABLE,
            reason: "ServiceUnavailable",
            message: message.into(),
            details: None,
        }
    }

    /// 409 for a create of an existing name (`apierrors.NewAlreadyExists`).
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Status {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(resource, group)),
            details: Some(details(name, group, resource)),
        }
    }

    /// 409 for a failed precondition (`apierrors.NewConflict`); `why` is the underlying error.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Status {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(resource, group)
            ),
            details: Some(details(name, group, resource)),
        }
    }

    /// The `why` of a stale resourceVersion, as kube-apiserver words it.
    pub const STALE: &'static str =
        "the object has been modified; please apply your changes to the latest version and try again";

    /// 422 with field causes (`apierrors.NewInvalid`); `causes` are `(field, message)`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: &[(String, String)]) -> Self {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        // The message names each distinct problem once, as `ErrorList.ToAggregate` does; the
        // causes keep every entry.
        let mut list: Vec<String> = Vec::new();
        for text in causes.iter().map(|(f, m)| format!("{f}: {m}")) {
            if !list.contains(&text) {
                list.push(text);
            }
        }
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut d = details(name, group, kind);
        d.insert(
            "causes".into(),
            Value::Array(
                causes
                    .iter()
                    .map(|(f, m)| json!({"reason": cause_reason(m), "message": m, "field": f}))
                    .collect(),
            ),
        );
        Status {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{gk} \"{name}\" is invalid: {joined}"),
            details: Some(d),
        }
    }

    /// 410 for a resourceVersion older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Status {
            code: StatusCode::GONE,
            reason: "Expired",
            message: message.into(),
            details: None,
        }
    }

    /// 415 for a body media type this request does not take; `accepted` lists those it does.
    pub fn unsupported_media_type(accepted: &str) -> Self {
        Status {
            code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
            details: None,
        }
    }

    /// 403 for one object, as `apierrors.NewForbidden` words it (admission refusals use it):
    /// `<resource>.<group> "<name>" is forbidden: <why>`.
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Status {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: format!("{} {name:?} is forbidden: {why}", qualified(resource, group)),
            details: Some(details(name, group, resource)),
        }
    }

    /// A Status an admission webhook or policy chose: its code (at least 400) and reason. A
    /// reason Kubernetes does not define is left out (`reason` is an enumeration).
    pub fn custom(code: u16, reason: &str, message: impl Into<String>) -> Self {
        const KNOWN: [&str; 19] = [
            "Unauthorized",
            "Forbidden",
            "NotFound",
            "AlreadyExists",
            "Conflict",
            "Gone",
            "Invalid",
            "ServerTimeout",
            "StoreReadError",
            "Timeout",
            "TooManyRequests",
            "BadRequest",
            "MethodNotAllowed",
            "NotAcceptable",
            "RequestEntityTooLarge",
            "UnsupportedMediaType",
            "InternalError",
            "Expired",
            "ServiceUnavailable",
        ];
        let code = StatusCode::from_u16(code)
            .ok()
            .filter(|c| c.as_u16() >= 400)
            .unwrap_or(StatusCode::BAD_REQUEST);
        Status {
            code,
            reason: KNOWN.iter().find(|k| **k == reason).copied().unwrap_or(""),
            message: message.into(),
            details: None,
        }
    }

    /// 504 Timeout, retryable after `retry_after_seconds` (`apierrors.NewTimeoutError`): the
    /// storage did not answer in time.
    pub fn timeout(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let mut details = serde_json::Map::new();
        details.insert("retryAfterSeconds".into(), retry_after_seconds.into());
        Status {
            code: StatusCode::GATEWAY_TIMEOUT,
            reason: "Timeout",
            message: message.into(),
            details: Some(details),
        }
    }

    /// 500 with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Status {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }
}

/// `resource.group` (or just `resource` for the core group), as `GroupResource.String()`.
pub(crate) fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// The `reason` of a 422 cause: the `field.ErrorType` its message starts with, as
/// `field.Error.ErrorBody` puts the type's text first.
fn cause_reason(message: &str) -> &'static str {
    const TYPES: [(&str, &str); 8] = [
        ("Required value", "FieldValueRequired"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Forbidden", "FieldValueForbidden"),
        ("Not found", "FieldValueNotFound"),
        ("Internal error", "InternalError"),
    ];
    if let Some((_, r)) = TYPES.iter().find(|(p, _)| message.starts_with(p)) {
        return r;
    }
    // `field.TypeInvalid` prints as "Invalid value" too; schema type errors say this.
    if message.contains(" in body must be of type ") {
        return "FieldValueTypeInvalid";
    }
    "FieldValueInvalid"
}

/// `StatusDetails` with Go's omitempty behaviour.
pub(crate) fn details(name: &str, group: &str, kind: &str) -> Map<String, Value> {
    let mut d = Map::new();
    for (k, v) in [("name", name), ("group", group), ("kind", kind)] {
        if !v.is_empty() {
            d.insert(k.into(), Value::String(v.into()));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_causes_with_their_types() {
        let causes = [
            ("spec.a".to_string(), "Required value".to_string()),
            (
                "spec.b".to_string(),
                r#"Invalid value: "string": spec.b in body must be of type integer: "string""#.to_string(),
            ),
            (
                "spec.c".to_string(),
                "Too long: may not be more than 2 bytes".to_string(),
            ),
            ("metadata.name".to_string(), "Invalid value: \"X\": bad".to_string()),
        ];
        let got = Status::invalid("g.io", "Flunder", "f", &causes).to_json();
        assert_eq!(got["code"], 422);
        assert_eq!(got["reason"], "Invalid");
        assert!(got["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Flunder.g.io \"f\" is invalid: [spec.a: Required value, spec.b: ")));
        let reasons: Vec<&str> = got["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["reason"].as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "FieldValueRequired",
                "FieldValueTypeInvalid",
                "FieldValueTooLong",
                "FieldValueInvalid"
            ]
        );
    }

    #[test]
    fn not_found_matches_reference() {
        let got = Status::not_found("wardle.example.com", "flunders", "nope").to_json();
        let want = json!({
          "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": "flunders.wardle.example.com \"nope\" not found", "reason": "NotFound",
          "details": {"name": "nope", "group": "wardle.example.com", "kind": "flunders"}, "code": 404
        });
        assert_eq!(got, want);
    }
}
