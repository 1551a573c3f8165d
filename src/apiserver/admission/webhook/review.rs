//! The `AdmissionReview` a webhook receives and what its answer means, checked as
//! k8s.io/apiserver's `VerifyAdmissionResponse` checks it.

use crate::apiserver::admission::Attributes;
use base64::Engine;
use serde_json::{json, Value};

/// A webhook's answer.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// `response.status` (a `metav1.Status`), used when the request is refused.
    pub status: Option<Value>,
    /// The decoded JSON patch of a mutating webhook.
    pub patch: Option<Value>,
    pub warnings: Vec<String>,
    pub audit_annotations: Vec<(String, String)>,
}

/// The request body: an `AdmissionReview` of `review_version` for the write at `version`.
pub fn request(a: &Attributes, version: &str, review_version: &str) -> Value {
    json!({
        "apiVersion": format!("admission.k8s.io/{review_version}"),
        "kind": "AdmissionReview",
        "request": a.request(version),
    })
}

/// Reads the answer; an error is an invalid response (kube's `received invalid webhook
/// response: ...`), which the failure policy judges.
pub fn parse(body: &[u8], uid: &str, review_version: &str, mutating: bool) -> Result<Verdict, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("failed to call webhook: {e}"))?;
    let invalid = |m: String| format!("received invalid webhook response: {m}");
    let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = review.get("kind").and_then(Value::as_str).unwrap_or_default();
    let wanted = format!("admission.k8s.io/{review_version}");
    if api_version != wanted || kind != "AdmissionReview" {
        return Err(invalid(format!(
            "expected webhook response of {wanted}, Kind=AdmissionReview, got {api_version}, Kind={kind}"
        )));
    }
    let Some(r) = review.get("response").filter(|r| r.is_object()) else {
        return Err(invalid("webhook response was absent".into()));
    };
    let got = r.get("uid").and_then(Value::as_str).unwrap_or_default();
    if got != uid {
        return Err(invalid(format!("expected response.uid={uid:?}, got {got:?}")));
    }
    let patch = match (
        r.get("patch").and_then(Value::as_str),
        r.get("patchType").and_then(Value::as_str),
    ) {
        (None | Some(""), None) => None,
        (None | Some(""), Some(t)) => {
            return Err(invalid(format!(
                "webhook returned response.patchType of {t:?} but not response.patch"
            )))
        }
        (Some(_), _) if !mutating => return Err(invalid("validating webhook may not return response.patch".into())),
        (Some(_), None) => {
            return Err(invalid(
                "webhook returned response.patch but not response.patchType".into(),
            ))
        }
        (Some(p), Some("JSONPatch")) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| invalid(format!("response.patch is not base64: {e}")))?;
            Some(
                serde_json::from_slice(&raw)
                    .map_err(|e| invalid(format!("response.patch is not a JSON patch: {e}")))?,
            )
        }
        (Some(_), Some(t)) => return Err(invalid(format!("webhook returned invalid response.patchType of {t:?}"))),
    };
    let warnings = r
        .get("warnings")
        .and_then(Value::as_array)
        .map(|w| w.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let audit_annotations = r
        .get("auditAnnotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Verdict {
        allowed: r.get("allowed").and_then(Value::as_bool).unwrap_or(false),
        status: r.get("status").filter(|s| s.is_object()).cloned(),
        patch,
        warnings,
        audit_annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(response: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        )
        .expect("json")
    }

    #[test]
    fn answers_are_verified_as_kube_verifies_them() {
        let ok = parse(
            &answer(json!({"uid": "u", "allowed": true, "warnings": ["careful"]})),
            "u",
            "v1",
            false,
        )
        .expect("valid");
        assert!(ok.allowed);
        assert_eq!(ok.warnings, ["careful"]);
        let e = |body: Vec<u8>, mutating: bool| parse(&body, "u", "v1", mutating).expect_err("invalid");
        assert_eq!(
            e(answer(json!({"uid": "other", "allowed": true})), false),
            "received invalid webhook response: expected response.uid=\"u\", got \"other\""
        );
        assert!(e(b"not json".to_vec(), false).starts_with("failed to call webhook: "));
        assert!(e(answer(json!(null)), false).ends_with("webhook response was absent"));
        let p = base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"add","path":"/a","value":1}]"#);
        assert!(e(
            answer(json!({"uid": "u", "allowed": true, "patch": p, "patchType": "JSONPatch"})),
            false
        )
        .ends_with("validating webhook may not return response.patch"));
        assert!(
            e(answer(json!({"uid": "u", "allowed": true, "patch": p})), true).ends_with("but not response.patchType")
        );
        let m = parse(
            &answer(json!({"uid": "u", "allowed": true, "patch": p, "patchType": "JSONPatch"})),
            "u",
            "v1",
            true,
        )
        .expect("valid");
        assert_eq!(m.patch, Some(json!([{"op": "add", "path": "/a", "value": 1}])));
        let wrong = serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "response": {"uid": "u"}}),
        )
        .expect("json");
        assert!(e(wrong, false).contains("expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview"));
    }
}
