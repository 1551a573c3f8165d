//! Whether a policy's `matchConstraints` (or a binding's `matchResources`) select a request, as
//! k8s.io/apiserver's `policy/matching` decides it: the namespace and object selectors first,
//! then `excludeResourceRules`, then `resourceRules` (exactly, else under
//! `matchPolicy: Equivalent` through the equivalent resources: every version this server
//! serves of the same resource).

use crate::apiserver::admission::{selector, Attributes};
use serde_json::{Map, Value};

/// What a match decided: the version of the resource the rules matched (the request's own,
/// or an equivalent one under `matchPolicy: Equivalent`), or no match.
pub type Matched = Option<String>;

/// Whether a `metav1.LabelSelector` is empty (`LabelSelectorAsSelector` gives `Everything`).
fn selector_empty(sel: Option<&Value>) -> bool {
    match sel {
        None | Some(Value::Null) => true,
        Some(s) => {
            let none = |k: &str| {
                s.get(k)
                    .map(|v| {
                        v.is_null()
                            || v.as_array().is_some_and(Vec::is_empty)
                            || v.as_object().is_some_and(Map::is_empty)
                    })
                    .unwrap_or(true)
            };
            none("matchLabels") && none("matchExpressions")
        }
    }
}

/// The namespace selector: cluster-scoped requests (other than namespaces themselves) are never
/// exempted. `ns_labels` is `None` when the namespace is unknown.
fn namespace_selected(
    sel: Option<&Value>,
    a: &Attributes,
    ns_labels: Option<&Map<String, Value>>,
    ns_known: bool,
) -> Result<bool, String> {
    if a.namespace.is_empty() && a.resource.resource != "namespaces" {
        return Ok(true);
    }
    if selector_empty(sel) {
        // Still parse it, as kube does, for its errors.
        return selector::matches(sel, None).map(|_| true);
    }
    if !ns_known {
        return Err(format!("namespaces \"{}\" not found", a.namespace));
    }
    selector::matches(sel, ns_labels)
}

/// The object selector: the new or the old object must carry the labels (a request with
/// neither object is not selected by a non-empty selector).
fn object_selected(sel: Option<&Value>, a: &Attributes) -> Result<bool, String> {
    if selector_empty(sel) {
        return selector::matches(sel, None).map(|_| true);
    }
    let one = |o: &Option<Value>| -> Result<bool, String> {
        match o {
            None => Ok(false),
            Some(o) => selector::matches(sel, o.pointer("/metadata/labels").and_then(Value::as_object)),
        }
    };
    Ok(one(&a.object)? || one(&a.old_object)?)
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn exact_or_wildcard(items: &[&str], requested: &str) -> bool {
    items.iter().any(|i| *i == "*" || *i == requested)
}

/// `rules.Matcher.Matches` for one rule, with the request's resource at `version`.
fn rule_matches(rule: &Value, a: &Attributes, version: &str) -> bool {
    let scope = rule.get("scope").and_then(Value::as_str).unwrap_or("*");
    let is_namespace = a.resource.group.is_empty() && a.resource.resource == "namespaces";
    let scope_ok = match scope {
        "*" => true,
        "Namespaced" => !is_namespace && !a.namespace.is_empty(),
        "Cluster" => is_namespace || a.namespace.is_empty(),
        _ => false,
    };
    let op = a.operation.as_str();
    let ops = strings(rule.get("operations"));
    let op_ok = ops.iter().any(|o| *o == "*" || *o == op);
    let resources = strings(rule.get("resources"));
    let res_ok = resources.iter().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == a.resource.resource) && (sub == "*" || sub == a.subresource)
    });
    scope_ok
        && op_ok
        && exact_or_wildcard(&strings(rule.get("apiGroups")), &a.resource.group)
        && exact_or_wildcard(&strings(rule.get("apiVersions")), version)
        && res_ok
}

/// `matchesResourceRules`: the version the rules matched, if any.
fn resource_rules_match(rules: &[Value], equivalent: bool, a: &Attributes) -> Matched {
    let named = |rule: &Value| {
        let names = strings(rule.get("resourceNames"));
        names.is_empty() || names.contains(&a.name.as_str())
    };
    for rule in rules {
        if rule_matches(rule, a, &a.resource.version) && named(rule) {
            return Some(a.resource.version.clone());
        }
    }
    if !equivalent {
        return None;
    }
    for rule in rules {
        for v in a.versions.iter().filter(|v| **v != a.resource.version) {
            if rule_matches(rule, a, v) && named(rule) {
                return Some(v.clone());
            }
        }
    }
    None
}

/// `Matcher.Matches` for one `MatchResources`; `ns` is the namespace object when known.
pub fn matches(constraints: &Value, a: &Attributes, ns: Option<&Value>) -> Result<Matched, String> {
    let ns_labels = ns
        .and_then(|n| n.pointer("/metadata/labels"))
        .and_then(Value::as_object);
    let ns_match = namespace_selected(constraints.get("namespaceSelector"), a, ns_labels, ns.is_some());
    if ns_match == Ok(false) {
        return Ok(None);
    }
    let obj_match = object_selected(constraints.get("objectSelector"), a);
    if obj_match == Ok(false) {
        return Ok(None);
    }
    // The API defaults matchPolicy to Equivalent; an absent one is Exact.
    let equivalent = constraints.get("matchPolicy").and_then(Value::as_str) == Some("Equivalent");
    let rules = |k: &str| {
        constraints
            .get(k)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    if resource_rules_match(rules("excludeResourceRules"), equivalent, a).is_some() {
        return Ok(None);
    }
    let include = rules("resourceRules");
    let matched = if include.is_empty() {
        Some(a.resource.version.clone())
    } else {
        resource_rules_match(include, equivalent, a)
    };
    if matched.is_none() {
        return Ok(None);
    }
    // Selector errors count only for requests the rules select.
    ns_match?;
    obj_match?;
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::admission::attributes::tests::attrs;
    use crate::apiserver::admission::Operation;
    use serde_json::json;

    fn rule(ops: Value, groups: Value, versions: Value, resources: Value) -> Value {
        json!({"operations": ops, "apiGroups": groups, "apiVersions": versions, "resources": resources})
    }

    fn ns(labels: Value) -> Value {
        json!({"metadata": {"name": "ns", "labels": labels}})
    }

    #[test]
    fn resource_rules_match_operations_groups_versions_resources() {
        let a = attrs(); // CREATE flunders.wardle.example.com/v1beta1 in ns
        let m = |r: Value| {
            matches(
                &json!({"resourceRules": [r], "matchPolicy": "Exact"}),
                &a,
                Some(&ns(json!({}))),
            )
        };
        let g = json!(["wardle.example.com"]);
        assert_eq!(
            m(rule(
                json!(["CREATE"]),
                g.clone(),
                json!(["v1beta1"]),
                json!(["flunders"])
            )),
            Ok(Some("v1beta1".into()))
        );
        assert_eq!(
            m(rule(json!(["*"]), json!(["*"]), json!(["*"]), json!(["*"]))),
            Ok(Some("v1beta1".into()))
        );
        assert_eq!(
            m(rule(json!(["UPDATE"]), g.clone(), json!(["*"]), json!(["flunders"]))),
            Ok(None)
        );
        assert_eq!(
            m(rule(
                json!(["*"]),
                json!(["other.io"]),
                json!(["*"]),
                json!(["flunders"])
            )),
            Ok(None)
        );
        assert_eq!(
            m(rule(json!(["*"]), g.clone(), json!(["*"]), json!(["fischers"]))),
            Ok(None)
        );
        // `flunders` does not match the status subresource, `flunders/*` and `*/status` do.
        let mut s = attrs();
        s.subresource = "status".into();
        let ms = |r: Value| matches(&json!({"resourceRules": [r]}), &s, Some(&ns(json!({}))));
        assert_eq!(
            ms(rule(json!(["*"]), g.clone(), json!(["*"]), json!(["flunders"]))),
            Ok(None)
        );
        assert_eq!(
            ms(rule(json!(["*"]), g.clone(), json!(["*"]), json!(["flunders/status"]))),
            Ok(Some("v1beta1".into()))
        );
        assert_eq!(
            ms(rule(json!(["*"]), g.clone(), json!(["*"]), json!(["*/status"]))),
            Ok(Some("v1beta1".into()))
        );
        assert_eq!(
            ms(rule(json!(["*"]), g.clone(), json!(["*"]), json!(["*/*"]))),
            Ok(Some("v1beta1".into()))
        );
        assert_eq!(
            m(rule(json!(["*"]), g.clone(), json!(["*"]), json!(["*/*"]))),
            Ok(Some("v1beta1".into()))
        );
        // resourceNames
        let mut named = rule(json!(["*"]), g.clone(), json!(["*"]), json!(["flunders"]));
        named["resourceNames"] = json!(["other"]);
        assert_eq!(m(named.clone()), Ok(None));
        named["resourceNames"] = json!(["other", "f"]);
        assert_eq!(m(named), Ok(Some("v1beta1".into())));
        // Scope
        let mut scoped = rule(json!(["*"]), g.clone(), json!(["*"]), json!(["*"]));
        scoped["scope"] = json!("Cluster");
        assert_eq!(m(scoped.clone()), Ok(None));
        scoped["scope"] = json!("Namespaced");
        assert_eq!(m(scoped), Ok(Some("v1beta1".into())));
        // No rules: everything.
        assert_eq!(
            matches(&json!({}), &a, Some(&ns(json!({})))),
            Ok(Some("v1beta1".into()))
        );
        let mut d = attrs();
        d.operation = Operation::Delete;
        assert_eq!(
            matches(
                &json!({"resourceRules": [rule(json!(["DELETE"]), json!(["*"]), json!(["*"]), json!(["*"]))]}),
                &d,
                None
            ),
            Ok(Some("v1beta1".into()))
        );
    }

    #[test]
    fn equivalent_versions_match_under_match_policy_equivalent() {
        let a = attrs();
        let r = rule(json!(["*"]), json!(["*"]), json!(["v1alpha1"]), json!(["flunders"]));
        let n = ns(json!({}));
        assert_eq!(
            matches(
                &json!({"resourceRules": [r.clone()], "matchPolicy": "Exact"}),
                &a,
                Some(&n)
            ),
            Ok(None)
        );
        assert_eq!(matches(&json!({"resourceRules": [r.clone()]}), &a, Some(&n)), Ok(None));
        assert_eq!(
            matches(
                &json!({"resourceRules": [r.clone()], "matchPolicy": "Equivalent"}),
                &a,
                Some(&n)
            ),
            Ok(Some("v1alpha1".into()))
        );
        // Excluded through an equivalent too.
        assert_eq!(
            matches(
                &json!({"matchPolicy": "Equivalent", "excludeResourceRules": [r]}),
                &a,
                Some(&n)
            ),
            Ok(None)
        );
    }

    #[test]
    fn selectors_narrow_and_cluster_scoped_requests_ignore_the_namespace_selector() {
        let mut a = attrs();
        a.object.as_mut().expect("object")["metadata"]["labels"] = json!({"tier": "web"});
        let sel = |k: &str, s: Value| json!({k: s});
        let prod = json!({"matchLabels": {"env": "prod"}});
        assert_eq!(
            matches(
                &sel("namespaceSelector", prod.clone()),
                &a,
                Some(&ns(json!({"env": "prod"})))
            ),
            Ok(Some("v1beta1".into()))
        );
        assert_eq!(
            matches(
                &sel("namespaceSelector", prod.clone()),
                &a,
                Some(&ns(json!({"env": "dev"})))
            ),
            Ok(None)
        );
        // An unknown namespace is an error (kube's 404 for the lookup).
        assert_eq!(
            matches(&sel("namespaceSelector", prod.clone()), &a, None),
            Err("namespaces \"ns\" not found".into())
        );
        let mut c = attrs();
        c.namespace.clear();
        c.namespaced = false;
        assert_eq!(
            matches(&sel("namespaceSelector", prod), &c, None),
            Ok(Some("v1beta1".into()))
        );
        // Object selector: new or old object.
        let web = json!({"matchLabels": {"tier": "web"}});
        assert_eq!(
            matches(&sel("objectSelector", web.clone()), &a, None),
            Ok(Some("v1beta1".into()))
        );
        let mut d = attrs();
        d.operation = Operation::Delete;
        d.old_object = d.object.take();
        assert_eq!(matches(&sel("objectSelector", web.clone()), &d, None), Ok(None));
        d.old_object.as_mut().expect("old")["metadata"]["labels"] = json!({"tier": "web"});
        assert_eq!(
            matches(&sel("objectSelector", web), &d, None),
            Ok(Some("v1beta1".into()))
        );
        // A non-empty selector does not select an object without labels through NotIn alone
        // when there is no object at all.
        let mut none = attrs();
        none.object = None;
        let not_in = json!({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["1"]}]});
        assert_eq!(matches(&sel("objectSelector", not_in), &none, None), Ok(None));
        // Selector errors only for requests that match otherwise.
        let bad = json!({"matchExpressions": [{"key": "x", "operator": "Near"}]});
        assert!(matches(&sel("objectSelector", bad.clone()), &a, None).is_err());
        let other = json!({"objectSelector": bad, "resourceRules": [rule(json!(["*"]), json!(["*"]), json!(["*"]), json!(["fischers"]))]});
        assert_eq!(matches(&other, &a, None), Ok(None));
    }
}
