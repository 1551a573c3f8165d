//! `metav1.LabelSelector` (`matchLabels` and `matchExpressions`) as
//! `metav1.LabelSelectorAsSelector` reads it, for the `namespaceSelector` and `objectSelector`
//! of webhooks and policies. An omitted or empty selector selects everything.

use serde_json::{Map, Value};

/// Whether `labels` are selected by `selector`; an invalid selector is an error naming what
/// is wrong (kube then treats the webhook as failing, under its failure policy).
pub fn matches(selector: Option<&Value>, labels: Option<&Map<String, Value>>) -> Result<bool, String> {
    let Some(sel) = selector.filter(|s| !s.is_null()) else {
        return Ok(true);
    };
    let empty = Map::new();
    let labels = labels.unwrap_or(&empty);
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            if get(k) != v.as_str() {
                return Ok(false);
            }
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
        let ok = match op {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "for 'in', 'notin' operators, values set can't be empty (key {key:?})"
                ))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "values set must be empty for exists and does not exist (key {key:?})"
                ))
            }
            "In" => get(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(key).is_some(),
            "DoesNotExist" => get(key).is_none(),
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(sel: Value, labels: Value) -> Result<bool, String> {
        matches(Some(&sel), labels.as_object())
    }

    #[test]
    fn selectors_select_as_label_selector_as_selector_does() {
        assert_eq!(matches(None, None), Ok(true));
        assert_eq!(m(json!({}), json!({})), Ok(true));
        assert_eq!(
            m(json!({"matchLabels": {"a": "1"}}), json!({"a": "1", "b": "2"})),
            Ok(true)
        );
        assert_eq!(m(json!({"matchLabels": {"a": "1"}}), json!({"a": "2"})), Ok(false));
        let expr =
            |op: &str, values: Value| json!({"matchExpressions": [{"key": "env", "operator": op, "values": values}]});
        assert_eq!(m(expr("In", json!(["prod", "dev"])), json!({"env": "dev"})), Ok(true));
        assert_eq!(m(expr("In", json!(["prod"])), json!({})), Ok(false));
        assert_eq!(m(expr("NotIn", json!(["prod"])), json!({})), Ok(true));
        assert_eq!(m(expr("NotIn", json!(["prod"])), json!({"env": "prod"})), Ok(false));
        assert_eq!(
            m(
                json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]}),
                json!({"env": ""})
            ),
            Ok(true)
        );
        assert_eq!(
            m(
                json!({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}),
                json!({"env": ""})
            ),
            Ok(false)
        );
        assert!(m(expr("In", json!([])), json!({})).is_err());
        assert!(m(expr("Exists", json!(["x"])), json!({})).is_err());
        assert!(m(expr("Near", json!(["x"])), json!({})).is_err());
    }
}
