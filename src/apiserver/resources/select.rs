//! Label and field selectors as `labels.Parse` / `fields.ParseSelector` accept them, reduced to
//! what lists and watches of custom resources need.

use crate::apiserver::fieldselector;
use crate::apiserver::labels::{self, Req};
use crate::apiserver::storage::Object;
use std::collections::BTreeMap;

/// A parsed `labelSelector` plus `fieldSelector`; matches everything when both are empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Req>,
    /// `(field, value, equal)` on `metadata.name` / `metadata.namespace`.
    fields: Vec<(String, String, bool)>,
}

impl Selector {
    /// Parses both selectors; the error is the message of a 400.
    pub fn parse(label: &str, field: &str) -> Result<Selector, String> {
        let mut sel = Selector {
            labels: labels::parse(label)?,
            ..Default::default()
        };
        // Parsed as authorization parsed it (escapes, sorted terms, nothing trimmed), then
        // each field checked as the custom resource field label conversion checks it.
        for r in fieldselector::parse(field)? {
            if r.field != "metadata.name" && r.field != "metadata.namespace" {
                return Err(format!("field label not supported: {}", r.field));
            }
            sel.fields.push((r.field, r.value, r.equals));
        }
        Ok(sel)
    }

    /// Selects everything: no label and no field requirement. Only then can a page say how
    /// many items remain (`remainingItemCount`); with a selector kube leaves it unset, since
    /// counting would mean matching every remaining object.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::Ne(k, v) => labels.get(k) != Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
            // Only labels whose value is an integer can be greater or less than one.
            Req::Gt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Req::Lt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }

    /// Whether a stored object matches.
    pub fn matches(&self, o: &Object) -> bool {
        self.labels_match(&o.labels)
            && self.fields.iter().all(|(k, v, eq)| {
                let got = if k == "metadata.name" { &o.name } else { &o.namespace };
                (got == v) == *eq
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: serde_json::Value) -> std::sync::Arc<Object> {
        Object::new(
            json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}}),
            1,
        )
    }

    #[test]
    fn label_forms() {
        let o = obj(json!({"app": "demo", "tier": "web"}));
        for (sel, want) in [
            ("app=demo", true),
            ("app==demo", true),
            ("app!=demo", false),
            ("app in (x,demo)", true),
            ("app notin (x,demo)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app=demo,tier in (web)", true),
            ("missing notin (a)", true),
        ] {
            assert_eq!(Selector::parse(sel, "").expect(sel).matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn field_forms() {
        let o = obj(json!({}));
        assert!(Selector::parse("", "metadata.name=a").expect("ok").matches(&o));
        assert!(!Selector::parse("", "metadata.namespace!=ns").expect("ok").matches(&o));
        assert!(Selector::parse("", "spec.x=1").is_err());
        assert!(Selector::parse("app in x", "").is_err());
    }
}
