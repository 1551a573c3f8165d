//! Normalization of answers before they are compared: what legitimately differs between two
//! servers (uids, timestamps, resourceVersions, generated name suffixes, continue tokens, ages,
//! the group name) is masked; everything else must be equal.

use serde_json::{Map, Value};

/// Masks what may differ in `v`, recursively. `groups` are replaced by `GROUP`, longest first.
pub fn normalize(v: &mut Value, groups: &[&str]) {
    order_causes(v);
    normalize_inner(v, groups);
}

/// kube-apiserver reports a 422's causes in Go map order (random from one run to the next), so
/// causes are compared as a set: sorted, and a message that lists several replaced by its prefix.
fn order_causes(v: &mut Value) {
    let Some(causes) = v.pointer_mut("/details/causes").and_then(Value::as_array_mut) else {
        return;
    };
    if causes.len() < 2 {
        return;
    }
    causes.sort_by_key(|c| c.to_string());
    if let Some(Value::String(m)) = v.get_mut("message") {
        if let Some(i) = m.find(" is invalid: [") {
            m.truncate(i);
            m.push_str(" is invalid: [<the causes>]");
        }
    }
}

fn normalize_inner(v: &mut Value, groups: &[&str]) {
    match v {
        Value::Object(map) => normalize_object(map, groups),
        Value::Array(items) => items.iter_mut().for_each(|i| normalize_inner(i, groups)),
        Value::String(s) => *s = mask_text(&replace_groups(s, groups)),
        _ => {}
    }
}

/// Replaces every group name in `s` with `GROUP`.
pub fn replace_groups(s: &str, groups: &[&str]) -> String {
    let mut sorted: Vec<&str> = groups.to_vec();
    sorted.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut out = s.to_string();
    for g in sorted {
        out = out.replace(g, "GROUP");
    }
    out
}

/// Masks uids and resourceVersions inside messages ("UID in record (…)", "too old resource
/// version: 1 (217)"), which differ between servers like the fields that hold them.
fn mask_text(s: &str) -> String {
    static PATTERNS: std::sync::OnceLock<Vec<(regex::Regex, &'static str)>> = std::sync::OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        [
            (
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "<uuid>",
            ),
            (r"ResourceVersion in record \(\d+\)", "ResourceVersion in record (<rv>)"),
            (
                r"too old resource version: (\d+) \(\d+\)",
                "too old resource version: $1 (<rv>)",
            ),
            (r"ResourceVersion: \d+", "ResourceVersion: <rv>"),
        ]
        .into_iter()
        .filter_map(|(p, r)| regex::Regex::new(p).ok().map(|re| (re, r)))
        .collect()
    });
    let mut out = s.to_string();
    for (re, with) in patterns {
        out = re.replace_all(&out, *with).into_owned();
    }
    out
}

fn mask(v: &mut Value, what: &str) {
    if !v.is_null() && v != &Value::String(String::new()) {
        *v = Value::String(format!("<{what}>"));
    }
}

fn normalize_object(map: &mut Map<String, Value>, groups: &[&str]) {
    // A generated name is its generateName plus five random characters.
    if let (Some(Value::String(prefix)), Some(Value::String(name))) =
        (map.get("generateName").cloned(), map.get("name"))
    {
        if name.starts_with(&prefix) && name.len() == prefix.len() + 5 {
            map.insert("name".into(), Value::String(format!("{prefix}<random>")));
        }
    }
    for (k, v) in map.iter_mut() {
        match k.as_str() {
            "uid" => mask(v, "uid"),
            "resourceVersion" => mask(v, "rv"),
            "creationTimestamp" | "deletionTimestamp" | "time" | "lastTransitionTime" => mask(v, "time"),
            "continue" => mask(v, "continue"),
            "cells" => {
                if let Value::Array(cells) = v {
                    for c in cells.iter_mut() {
                        if c.as_str().is_some_and(is_age) {
                            *c = Value::String("<age>".into());
                        } else {
                            normalize_inner(c, groups);
                        }
                    }
                }
            }
            _ => normalize_inner(v, groups),
        }
    }
}

/// `0s`, `12m`, `3h4m`, `5d`: what kube prints for a date cell.
fn is_age(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || "smhdy".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && !s.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_what_may_differ_and_keeps_the_rest() {
        let mut v = json!({"metadata": {"name": "w-abcde", "generateName": "w-", "uid": "1", "resourceVersion": "9",
            "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"a": "diff.example.com"}},
            "apiVersion": "diff-crd.example.com/v1", "rows": [{"cells": ["x", 3, "5s"]}], "spec": {"size": 3}});
        normalize(&mut v, &["diff.example.com", "diff-crd.example.com"]);
        assert_eq!(
            v,
            json!({"metadata": {"name": "w-<random>", "generateName": "w-", "uid": "<uid>", "resourceVersion": "<rv>",
                "creationTimestamp": "<time>", "labels": {"a": "GROUP"}},
                "apiVersion": "GROUP/v1", "rows": [{"cells": ["x", 3, "<age>"]}], "spec": {"size": 3}})
        );
    }

    #[test]
    fn causes_compare_as_a_set() {
        let a = json!({"message": "W \"x\" is invalid: [b: two, a: one]", "details": {"causes": [{"field": "b"}, {"field": "a"}]}});
        let b = json!({"message": "W \"x\" is invalid: [a: one, b: two]", "details": {"causes": [{"field": "a"}, {"field": "b"}]}});
        let (mut a, mut b) = (a, b);
        normalize(&mut a, &[]);
        normalize(&mut b, &[]);
        assert_eq!(a, b);
        assert_eq!(a["message"], "W \"x\" is invalid: [<the causes>]");
    }
}
