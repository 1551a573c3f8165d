//! ObjectMeta as kube-apiserver decodes and validates it for every object: fields ObjectMeta
//! does not have are dropped, and labels, annotations, finalizers and owner references must
//! have the shapes and names Kubernetes allows. Without this a `labels: {"a": 1}` would be
//! stored, and every client-go list of the resource (the garbage collector's and the namespace
//! controller's included) would then fail to decode.

use crate::apiserver::names::{label_value_error, qualified_name_errors};
use serde_json::Value;

const FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// `TotalAnnotationSizeLimitB`.
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// Drops metadata fields ObjectMeta does not have; returns their paths.
pub fn prune(obj: &mut Value) -> Vec<String> {
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let unknown: Vec<String> = m.keys().filter(|k| !FIELDS.contains(&k.as_str())).cloned().collect();
    for k in &unknown {
        m.remove(k);
    }
    unknown.into_iter().map(|k| format!("metadata.{k}")).collect()
}

/// Every problem of `obj`'s metadata, as `(field, message)` causes of a 422.
pub fn validate(obj: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let Some(m) = obj.get("metadata") else { return out };
    let mut bad = |f: &str, msg: String| out.push((f.to_string(), msg));
    match m.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                for e in qualified_name_errors(k) {
                    bad("metadata.labels", format!("Invalid value: {k:?}: {e}"));
                }
                match v.as_str() {
                    Some(s) => {
                        if let Some(e) = label_value_error(s) {
                            bad("metadata.labels", format!("Invalid value: {s:?}: {e}"));
                        }
                    }
                    None => bad(
                        &format!("metadata.labels.{k}"),
                        format!("Invalid value: {v}: must be a string"),
                    ),
                }
            }
        }
        Some(other) => bad(
            "metadata.labels",
            format!("Invalid value: {other}: must be a map of strings"),
        ),
    }
    match m.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ann)) => {
            let mut total = 0usize;
            for (k, v) in ann {
                for e in qualified_name_errors(&k.to_ascii_lowercase()) {
                    bad("metadata.annotations", format!("Invalid value: {k:?}: {e}"));
                }
                match v.as_str() {
                    Some(s) => total += k.len() + s.len(),
                    None => bad(
                        &format!("metadata.annotations.{k}"),
                        format!("Invalid value: {v}: must be a string"),
                    ),
                }
            }
            if total > ANNOTATIONS_MAX {
                bad(
                    "metadata.annotations",
                    format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
                );
            }
        }
        Some(other) => bad(
            "metadata.annotations",
            format!("Invalid value: {other}: must be a map of strings"),
        ),
    }
    match m.get("finalizers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(fs)) => {
            for (i, f) in fs.iter().enumerate() {
                match f.as_str() {
                    Some(s) => {
                        for e in qualified_name_errors(s) {
                            bad(
                                &format!("metadata.finalizers[{i}]"),
                                format!("Invalid value: {s:?}: {e}"),
                            );
                        }
                    }
                    None => bad(
                        &format!("metadata.finalizers[{i}]"),
                        format!("Invalid value: {f}: must be a string"),
                    ),
                }
            }
        }
        Some(other) => bad(
            "metadata.finalizers",
            format!("Invalid value: {other}: must be a list of strings"),
        ),
    }
    match m.get("ownerReferences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(refs)) => {
            let mut controllers = 0;
            for (i, r) in refs.iter().enumerate() {
                let field = |k: &str| format!("metadata.ownerReferences[{i}].{k}");
                for (k, what) in [
                    ("apiVersion", "version"),
                    ("kind", "kind"),
                    ("name", "name"),
                    ("uid", "uid"),
                ] {
                    if r.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                        bad(&field(k), format!("Invalid value: \"\": {what} must not be empty"));
                    }
                }
                if r.get("controller").and_then(Value::as_bool) == Some(true) {
                    controllers += 1;
                }
            }
            if controllers > 1 {
                bad(
                    "metadata.ownerReferences",
                    "Invalid value: ...: Only one reference can have Controller set to true".into(),
                );
            }
        }
        Some(other) => bad(
            "metadata.ownerReferences",
            format!("Invalid value: {other}: must be a list"),
        ),
    }
    out
}

/// What an update may not change in metadata, as `ValidateObjectMetaUpdate` checks it. kube runs
/// that check twice on a custom resource (the common fields, then the strategy's own
/// validation), so each problem is a cause twice; the message names it once.
pub fn validate_update(obj: &Value, old: &Value) -> Vec<(String, String)> {
    let uid = |v: &Value| {
        v.pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (new_uid, old_uid) = (uid(obj), uid(old));
    if new_uid == old_uid {
        return Vec::new();
    }
    let cause = (
        "metadata.uid".to_string(),
        format!("Invalid value: {new_uid:?}: field is immutable"),
    );
    vec![cause.clone(), cause]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_uid_is_immutable_twice_over() {
        let old = json!({"metadata": {"name": "a", "uid": "u1"}});
        assert!(validate_update(&old, &old).is_empty());
        let causes = validate_update(&json!({"metadata": {"name": "a", "uid": "u2"}}), &old);
        assert_eq!(causes.len(), 2);
        assert_eq!(causes[0].1, "Invalid value: \"u2\": field is immutable");
    }

    #[test]
    fn unknown_metadata_fields_are_pruned() {
        let mut o = json!({"metadata": {"name": "a", "x": {"deep": 1}, "labels": {"k": "v"}}});
        assert_eq!(prune(&mut o), vec!["metadata.x"]);
        assert_eq!(o, json!({"metadata": {"name": "a", "labels": {"k": "v"}}}));
    }

    #[test]
    fn labels_annotations_finalizers_and_owners_are_checked() {
        let ok = json!({"metadata": {"labels": {"app.kubernetes.io/name": "web", "e": ""},
            "annotations": {"example.com/Note": "anything at all"}, "finalizers": ["example.com/hold"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u", "controller": true}]}});
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
        let fields = |v: Value| validate(&v).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(
            fields(json!({"metadata": {"labels": {"a": 1}}})),
            vec!["metadata.labels.a"]
        );
        assert_eq!(
            fields(json!({"metadata": {"labels": {"bad key!": "v"}}})),
            vec!["metadata.labels"]
        );
        assert_eq!(
            fields(json!({"metadata": {"labels": {"k": "-v"}}})),
            vec!["metadata.labels"]
        );
        assert_eq!(fields(json!({"metadata": {"labels": "x"}})), vec!["metadata.labels"]);
        assert_eq!(
            fields(json!({"metadata": {"finalizers": ["ok", "not ok"]}})),
            vec!["metadata.finalizers[1]"]
        );
        assert_eq!(
            fields(json!({"metadata": {"ownerReferences": [{"kind": "K", "name": "n", "uid": "u"}]}})),
            vec!["metadata.ownerReferences[0].apiVersion"]
        );
        let big = "v".repeat(ANNOTATIONS_MAX);
        assert_eq!(
            fields(json!({"metadata": {"annotations": {"k": big}}})),
            vec!["metadata.annotations"]
        );
        let msgs = validate(&json!({"metadata": {"labels": {"k": "x".repeat(64)}}}));
        assert!(msgs[0].1.contains("must be no more than 63 characters"));
    }
}
