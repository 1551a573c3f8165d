//! Which webhooks a write goes to: `rules` (operations, groups, versions, resources with
//! their subresource forms, scope) under `matchPolicy`, then `namespaceSelector` and
//! `objectSelector`, as k8s.io/apiserver's `webhook/predicates` decide. `matchConditions` are
//! evaluated by the dispatcher (they can fail, which the failure policy judges).

use super::hook::Hook;
use crate::apiserver::admission::{selector, Attributes};
use k8s_openapi::api::admissionregistration::v1::RuleWithOperations;
use serde_json::{Map, Value};

fn listed(list: &Option<Vec<String>>, x: &str) -> bool {
    list.as_ref().is_some_and(|l| l.iter().any(|e| e == "*" || e == x))
}

/// `resources` entries as kube's rule matcher splits them: `*` is every resource but no
/// subresource, `*/*` everything, `r/*` r and all its subresources, `*/s` subresource s of
/// every resource.
fn resource_listed(list: &Option<Vec<String>>, resource: &str, sub: &str) -> bool {
    let Some(list) = list else { return false };
    list.iter().any(|e| {
        let (r, s) = e.split_once('/').unwrap_or((e.as_str(), ""));
        (r == "*" || r == resource) && (s == "*" || s == sub)
    })
}

/// Whether `rule` matches the write with the resource at `version`.
fn rule_matches(rule: &RuleWithOperations, a: &Attributes, version: &str) -> bool {
    let scope_ok = match rule.scope.as_deref() {
        Some("Cluster") => !a.namespaced,
        Some("Namespaced") => a.namespaced,
        _ => true,
    };
    scope_ok
        && listed(&rule.operations, a.operation.as_str())
        && listed(&rule.api_groups, &a.resource.group)
        && listed(&rule.api_versions, version)
        && resource_listed(&rule.resources, &a.resource.resource, &a.subresource)
}

/// The version the webhook sees the write in: the request's own when a rule matches it, else
/// (under `matchPolicy: Equivalent`) the first equivalent version a rule matches. The served
/// versions of a resource differ only in `apiVersion`, so each is equivalent to the others.
pub fn matched_version(h: &Hook, a: &Attributes) -> Option<String> {
    let own = &a.resource.version;
    if h.rules.iter().any(|r| rule_matches(r, a, own)) {
        return Some(own.clone());
    }
    if !h.equivalent {
        return None;
    }
    a.versions
        .iter()
        .filter(|v| *v != own)
        .find(|v| h.rules.iter().any(|r| rule_matches(r, a, v)))
        .cloned()
}

/// `namespaceSelector`: a namespaced write is selected by its namespace's labels; a
/// cluster-scoped one always is. An error is a selector that does not parse.
pub fn namespace_selected(h: &Hook, a: &Attributes, namespace: Option<&Value>) -> Result<bool, String> {
    if !a.namespaced || a.namespace.is_empty() {
        return Ok(true);
    }
    let labels = namespace
        .and_then(|n| n.pointer("/metadata/labels"))
        .and_then(Value::as_object);
    selector::matches(h.namespace_selector.as_ref(), labels)
}

/// `objectSelector`: selected when the new or the old object's labels match (an absent object
/// never matches a selector that selects something).
pub fn object_selected(h: &Hook, a: &Attributes) -> Result<bool, String> {
    let sel = h.object_selector.as_ref().filter(|s| !is_empty_selector(s));
    let Some(sel) = sel else { return Ok(true) };
    let empty = Map::new();
    for (present, old) in [(a.object.is_some(), false), (a.old_object.is_some(), true)] {
        if present && selector::matches(Some(sel), Some(a.labels(old).unwrap_or(&empty)))? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn is_empty_selector(s: &Value) -> bool {
    s.as_object().is_none_or(|m| {
        m.values()
            .all(|v| v.is_null() || v == &Value::Object(Map::new()) || v.as_array().is_some_and(|a| a.is_empty()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::admission::attributes::tests::attrs;
    use crate::apiserver::admission::Operation;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhook;
    use serde_json::json;

    fn hook(rules: Value, extra: Value) -> Hook {
        let mut w = json!({"name": "h.example.com", "clientConfig": {"url": "https://x"},
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "rules": rules});
        if let (Some(m), Some(e)) = (w.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let w: ValidatingWebhook = serde_json::from_value(w).expect("webhook");
        Hook::validating("c", &w)
    }

    fn rule(ops: &[&str], versions: &[&str], resources: &[&str]) -> Value {
        json!([{"operations": ops, "apiGroups": ["wardle.example.com"], "apiVersions": versions, "resources": resources}])
    }

    #[test]
    fn rules_match_operations_versions_and_subresources() {
        let mut a = attrs();
        assert_eq!(
            matched_version(&hook(rule(&["CREATE"], &["v1beta1"], &["flunders"]), json!({})), &a).as_deref(),
            Some("v1beta1")
        );
        assert_eq!(
            matched_version(&hook(rule(&["UPDATE"], &["*"], &["flunders"]), json!({})), &a),
            None
        );
        assert_eq!(
            matched_version(&hook(rule(&["*"], &["*"], &["*"]), json!({})), &a).as_deref(),
            Some("v1beta1")
        );
        assert_eq!(
            matched_version(&hook(rule(&["*"], &["*"], &["fischers"]), json!({})), &a),
            None
        );
        // Equivalent versions (the default) and Exact.
        let old_version = rule(&["CREATE"], &["v1alpha1"], &["flunders"]);
        assert_eq!(
            matched_version(&hook(old_version.clone(), json!({})), &a).as_deref(),
            Some("v1alpha1")
        );
        assert_eq!(
            matched_version(&hook(old_version, json!({"matchPolicy": "Exact"})), &a),
            None
        );
        // Subresources: `*` is main resources only.
        a.subresource = "status".into();
        a.operation = Operation::Update;
        assert_eq!(
            matched_version(&hook(rule(&["*"], &["*"], &["*"]), json!({})), &a),
            None
        );
        assert_eq!(
            matched_version(&hook(rule(&["*"], &["*"], &["flunders"]), json!({})), &a),
            None
        );
        for r in ["*/*", "flunders/status", "*/status", "flunders/*"] {
            assert!(
                matched_version(&hook(rule(&["*"], &["*"], &[r]), json!({})), &a).is_some(),
                "{r}"
            );
        }
        assert_eq!(
            matched_version(&hook(rule(&["*"], &["*"], &["flunders/scale"]), json!({})), &a),
            None
        );
        // Scope.
        let scoped = |s: &str| json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"], "scope": s}]);
        assert!(matched_version(&hook(scoped("Namespaced"), json!({})), &a).is_some());
        assert!(matched_version(&hook(scoped("Cluster"), json!({})), &a).is_none());
    }

    #[test]
    fn selectors_use_namespace_and_object_labels() {
        let mut a = attrs();
        let h = hook(
            rule(&["*"], &["*"], &["*"]),
            json!({
                "namespaceSelector": {"matchLabels": {"team": "a"}},
                "objectSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]},
            }),
        );
        let ns = |l: Value| json!({"metadata": {"name": "ns", "labels": l}});
        assert_eq!(namespace_selected(&h, &a, Some(&ns(json!({"team": "a"})))), Ok(true));
        assert_eq!(namespace_selected(&h, &a, Some(&ns(json!({"team": "b"})))), Ok(false));
        assert_eq!(namespace_selected(&h, &a, None), Ok(false));
        a.namespaced = false;
        assert_eq!(
            namespace_selected(&h, &a, None),
            Ok(true),
            "cluster-scoped writes ignore it"
        );
        assert_eq!(object_selected(&h, &a), Ok(false));
        a.old_object = Some(json!({"metadata": {"labels": {"app": "x"}}}));
        assert_eq!(object_selected(&h, &a), Ok(true), "the old object's labels count too");
        let any = hook(rule(&["*"], &["*"], &["*"]), json!({"objectSelector": {}}));
        assert_eq!(object_selected(&any, &attrs()), Ok(true));
    }
}
