//! Label and field selectors as `labels.Parse` / `fields.ParseSelector` accept them, reduced to
//! what lists and watches of custom resources need.

use crate::apiserver::storage::Object;
use std::collections::BTreeMap;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` plus `fieldSelector`; matches everything when both are empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Req>,
    /// `(field, value, equal)` on `metadata.name` / `metadata.namespace`.
    fields: Vec<(String, String, bool)>,
}

/// Splits on commas that are not inside parentheses (`a in (x,y),b`).
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_req(term: &str) -> Result<Req, String> {
    let t = term.trim();
    if let Some(k) = t.strip_prefix('!') {
        return Ok(Req::NotExists(k.trim().to_string()));
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(Req::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    let mut words = t.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().trim().to_string();
    let rest = words.next().unwrap_or_default().trim();
    if key.is_empty() {
        return Err(format!("invalid label selector term {t:?}"));
    }
    if let Some(r) = rest.strip_prefix("notin") {
        return Ok(Req::NotIn(key, set_values(r)?));
    }
    if let Some(r) = rest.strip_prefix("in") {
        return Ok(Req::In(key, set_values(r)?));
    }
    if rest.is_empty() {
        return Ok(Req::Exists(key));
    }
    Err(format!("invalid label selector term {t:?}"))
}

impl Selector {
    /// Parses both selectors; the error is the message of a 400.
    pub fn parse(label: &str, field: &str) -> Result<Selector, String> {
        let mut sel = Selector::default();
        if !label.trim().is_empty() {
            for term in split_top(label) {
                sel.labels.push(parse_req(term)?);
            }
        }
        if !field.trim().is_empty() {
            for term in field.split(',') {
                let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
                    (k, v, false)
                } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                    (k, v, true)
                } else {
                    return Err(format!("invalid field selector term {term:?}"));
                };
                let k = k.trim();
                if k != "metadata.name" && k != "metadata.namespace" {
                    return Err(format!("field label not supported: {k}"));
                }
                sel.fields.push((k.to_string(), v.trim().to_string(), eq));
            }
        }
        Ok(sel)
    }

    fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::Ne(k, v) => labels.get(k) != Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
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
