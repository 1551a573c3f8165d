//! Validation against a structural schema, worded as kube-apiserver words it: the messages of
//! k8s.io/kube-openapi's validators (`spec.x in body should ...`) wrapped into `field.Error`
//! bodies (`Invalid value: ...`, `Required value`, `Unsupported value`, `Too long`, `Too many`)
//! by apiextensions-apiserver's `kubeOpenAPIResultToFieldErrors`.

use super::{additional, flag, items, nullable, property};
use base64::Engine;
use regex::Regex;
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

/// A `(field, message)` cause of a 422, as `Status::invalid` takes them.
pub type Cause = (String, String);

/// Every violation of `schema` by `obj`, not just the first; empty when valid. The root
/// `metadata` is left to the server, which validates it by its own rules.
///
/// For an update from `old`, violations inside parts that did not change are forgiven, as
/// kube's CRD validation ratcheting (on by default since 1.30) does, so an object stored
/// before its schema was tightened can still be labelled or have its status written.
pub fn validate_update(obj: &Value, old: Option<&Value>, schema: &Value) -> Vec<Cause> {
    let mut v = Validator {
        causes: Vec::new(),
        duplicates: Vec::new(),
    };
    v.node(obj, schema, "", true, old);
    v.causes.append(&mut v.duplicates);
    v.causes
}

struct Validator {
    causes: Vec<Cause>,
    /// List-type set/map duplicates: kube finds them in a pass after schema validation, so
    /// they come after every other cause.
    duplicates: Vec<Cause>,
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn uint(s: &Value, k: &str) -> Option<u64> {
    s.get(k).and_then(Value::as_u64)
}

fn num(s: &Value, k: &str) -> Option<f64> {
    s.get(k).and_then(Value::as_f64)
}

/// The JSON type of a value under the names the schema uses.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What Go's `%v` prints for a float: no trailing `.0` on whole numbers.
fn show_f64(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e21 {
        format!("{}", x as i128)
    } else {
        x.to_string()
    }
}

fn show_number(n: &Number) -> String {
    match n.as_f64() {
        Some(x) if !(n.is_i64() || n.is_u64()) => show_f64(x),
        _ => n.to_string(),
    }
}

/// A bad value as `field.Error` prints it: `%q` for strings, `%v` for scalars, Go's `%#v`
/// for maps and slices.
pub(super) fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "\"null\"".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => show_number(n),
        Value::Bool(b) => b.to_string(),
        _ => go_sharp(v),
    }
}

/// Go's `%#v` of a decoded JSON value (`map[string]interface {}{"a":1}`; map keys sorted).
fn go_sharp(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".into(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_sharp).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys.iter().map(|k| format!("{k:?}:{}", go_sharp(&m[*k]))).collect();
            format!("map[string]interface {{}}{{{}}}", items.join(", "))
        }
        other => show_value(other),
    }
}

/// JSON equality where `1` and `1.0` are the same number, as after Go's decoding.
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => a == b,
    }
}

fn is_integral(x: f64) -> bool {
    x.is_finite() && x.fract() == 0.0
}

/// Compiled patterns by source. Schemas come from the server's configuration, so the set is
/// small; compiling once per pattern instead of per request keeps validation cheap.
static REGEXES: LazyLock<Mutex<HashMap<String, Result<Regex, String>>>> = LazyLock::new(Default::default);

fn compiled(pattern: &str) -> Result<Regex, String> {
    let mut cache = REGEXES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(r) = cache.get(pattern) {
        return r.clone();
    }
    // Bounded in case configurations churn through many patterns over a long run.
    if cache.len() >= 1024 {
        cache.clear();
    }
    let r = Regex::new(pattern).map_err(|e| e.to_string());
    cache.insert(pattern.to_string(), r.clone());
    r
}

impl Validator {
    fn push(&mut self, path: &str, message: String) {
        self.causes.push((path.to_string(), message));
    }

    /// `field.Invalid` around a kube-openapi message about `path`.
    fn invalid(&mut self, path: &str, value: String, detail: impl std::fmt::Display) {
        self.push(path, format!("Invalid value: {value}: {path} in body {detail}"));
    }

    /// Validates `v` at `path`; `old` is the value the same place had before an update, when
    /// it can be told (kube correlates object fields and map-list items, not list indexes).
    fn node(&mut self, v: &Value, s: &Value, path: &str, root: bool, old: Option<&Value>) {
        if old.is_some_and(|o| json_eq(o, v)) {
            // Unchanged, so everything below is too: ratcheted.
            return;
        }
        if !self.check_type(v, s, path) {
            // Constraints of the declared type say nothing about a value of another type.
            return;
        }
        match v {
            // A null that passed the type check is nullable; nothing more to say about it.
            Value::Null => return,
            Value::String(x) => self.string(x, s, path),
            Value::Number(n) => self.number(n, s, path),
            Value::Array(a) => self.array(a, s, path, old),
            Value::Object(m) => self.object(m, s, path, root, old),
            Value::Bool(_) => {}
        }
        self.composition(v, s, path);
        self.enumeration(v, s, path);
    }

    /// The causes of validating `v` at `path` against a subschema on its own.
    fn sub(v: &Value, s: &Value, path: &str) -> Vec<Cause> {
        let mut v2 = Validator {
            causes: Vec::new(),
            duplicates: Vec::new(),
        };
        v2.node(v, s, path, false, None);
        v2.causes.append(&mut v2.duplicates);
        v2.causes
    }

    /// `allOf`, `anyOf`, `oneOf` and `not`, which structural schemas allow with value
    /// validations only, as kube-openapi's `schemaPropsValidator` reports them: its composite
    /// errors carry no field (kube prints `<nil>`) and name the path quoted; a failed `allOf`
    /// or `anyOf`/`oneOf` also reports the failures of its (closest) branches.
    fn composition(&mut self, v: &Value, s: &Value, path: &str) {
        let branches = |k: &str| -> Vec<Vec<Cause>> {
            s.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|b| Self::sub(v, b, path)).collect())
                .unwrap_or_default()
        };
        let mut composite = Vec::new();
        let all = branches("allOf");
        let valid = all.iter().filter(|c| c.is_empty()).count();
        if valid < all.len() {
            composite.push(if valid == 0 {
                "must validate all the schemas (allOf). None validated".to_string()
            } else {
                // kube-openapi adds nothing when some branches passed.
                "must validate all the schemas (allOf)".to_string()
            });
        }
        let any = branches("anyOf");
        let any_failed = !any.is_empty() && any.iter().all(|c| !c.is_empty());
        if any_failed {
            composite.push("must validate at least one schema (anyOf)".into());
        }
        let one = branches("oneOf");
        let valid_one = one.iter().filter(|c| c.is_empty()).count();
        if !one.is_empty() && valid_one != 1 {
            composite.push(if valid_one == 0 {
                "must validate one and only one schema (oneOf). Found none valid".to_string()
            } else {
                format!("must validate one and only one schema (oneOf). Found {valid_one} valid alternatives")
            });
        }
        if let Some(not) = s.get("not").filter(|n| n.is_object()) {
            if Self::sub(v, not, path).is_empty() {
                composite.push("must not validate the schema (not)".into());
            }
        }
        for what in composite {
            self.push("<nil>", format!("Invalid value: \"\": {path:?} {what}"));
        }
        for mut c in all {
            self.causes.append(&mut c);
        }
        if any_failed {
            if let Some(best) = any.into_iter().min_by_key(Vec::len) {
                self.causes.extend(best);
            }
        }
        if !one.is_empty() && valid_one == 0 {
            if let Some(best) = one.into_iter().min_by_key(Vec::len) {
                self.causes.extend(best);
            }
        }
    }

    fn check_type(&mut self, v: &Value, s: &Value, path: &str) -> bool {
        let declared = if flag(s, "x-kubernetes-int-or-string") {
            "integer,string"
        } else {
            s.get("type").and_then(Value::as_str).unwrap_or_default()
        };
        if declared.is_empty() {
            return true;
        }
        let has = |t: &str| declared.split(',').any(|d| d == t);
        let actual = type_name(v);
        let ok = match v {
            Value::Null => nullable(s),
            Value::Number(n) => {
                has("number") || (has("integer") && (actual == "integer" || n.as_f64().is_some_and(is_integral)))
            }
            _ => has(actual),
        };
        if !ok {
            // kube-openapi reports the JSON type of the value, not the value itself.
            self.push(
                path,
                format!("Invalid value: {actual:?}: {path} in body must be of type {declared}: {actual:?}"),
            );
        }
        ok
    }

    fn string(&mut self, x: &str, s: &Value, path: &str) {
        // Lengths are in characters (runes), whatever the message of `field.TooLong` says.
        let len = x.chars().count() as u64;
        if let Some(max) = uint(s, "maxLength").filter(|m| len > *m) {
            let unit = if max == 1 { "byte" } else { "bytes" };
            self.push(path, format!("Too long: may not be more than {max} {unit}"));
        }
        if let Some(min) = uint(s, "minLength").filter(|m| len < *m) {
            self.invalid(
                path,
                show_value(&x.into()),
                format_args!("should be at least {min} chars long"),
            );
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            match compiled(p) {
                Ok(re) if re.is_match(x) => {}
                Ok(_) => self.invalid(path, show_value(&x.into()), format_args!("should match '{p}'")),
                Err(e) => self.push(
                    path,
                    format!("Internal error: the schema's pattern '{p}' does not compile: {e}"),
                ),
            }
        }
        let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
        let ok = match format {
            "date-time" => x.parse::<jiff::Timestamp>().is_ok() || x.parse::<jiff::civil::DateTime>().is_ok(),
            "date" => x.parse::<jiff::civil::Date>().is_ok(),
            "byte" => base64::engine::general_purpose::STANDARD.decode(x).is_ok(),
            // Other formats are not checked (kube checks a few more, e.g. uuid and email).
            _ => true,
        };
        if !ok {
            let q = show_value(&x.into());
            self.invalid(path, q.clone(), format_args!("must be of type {format}: {q}"));
        }
    }

    fn number(&mut self, n: &Number, s: &Value, path: &str) {
        let Some(x) = n.as_f64() else { return };
        let shown = show_number(n);
        if let Some(f) = num(s, "multipleOf").filter(|f| *f > 0.0) {
            // go-openapi's way, which keeps fractional factors like 0.1 exact enough.
            let m = if f < 1.0 { 1.0 / f * x } else { x / f };
            if !is_integral(m) {
                self.invalid(
                    path,
                    shown.clone(),
                    format_args!("should be a multiple of {}", show_f64(f)),
                );
            }
        }
        if let Some(max) = num(s, "maximum") {
            let exclusive = flag(s, "exclusiveMaximum");
            if x > max || (exclusive && x == max) {
                let how = if exclusive {
                    "less than"
                } else {
                    "less than or equal to"
                };
                self.invalid(path, shown.clone(), format_args!("should be {how} {}", show_f64(max)));
            }
        }
        if let Some(min) = num(s, "minimum") {
            let exclusive = flag(s, "exclusiveMinimum");
            if x < min || (exclusive && x == min) {
                let how = if exclusive {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                self.invalid(path, shown.clone(), format_args!("should be {how} {}", show_f64(min)));
            }
        }
        // kube leaves integer formats unchecked; checking the range catches values a typed
        // client (Go int32, Rust i32) could not decode.
        let fits = match s.get("format").and_then(Value::as_str) {
            Some("int32") => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) || !is_integral(x),
            Some("int64") => n.as_i64().is_some() || !is_integral(x),
            _ => true,
        };
        if !fits {
            let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
            self.invalid(path, shown, format_args!("must be of type {format}"));
        }
    }

    fn array(&mut self, a: &[Value], s: &Value, path: &str, old: Option<&Value>) {
        let n = a.len() as u64;
        if let Some(min) = uint(s, "minItems").filter(|m| n < *m) {
            self.invalid(path, n.to_string(), format_args!("should have at least {min} items"));
        }
        if let Some(max) = uint(s, "maxItems").filter(|m| n > *m) {
            let unit = if max == 1 { "item" } else { "items" };
            self.push(path, format!("Too many: {n}: must have at most {max} {unit}"));
        }
        // Hashed, not pairwise: a large list must not cost quadratic time (serde_json maps are
        // sorted, so equal values serialize equally; numbers are compared as written).
        let mut seen = std::collections::HashSet::new();
        if flag(s, "uniqueItems") && !a.iter().all(|x| seen.insert(x.to_string())) {
            self.invalid(path, "\"\"".into(), "shouldn't contain duplicates");
        }
        if let Some(it) = items(s) {
            let keys: Vec<&str> = match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => s
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            // The item of the old list with the same keys is an item's old self; indexed by key
            // so that matching stays linear in the list size.
            let key_of = |x: &Value| -> String {
                let vals: Vec<Value> = keys.iter().map(|k| x.get(*k).cloned().unwrap_or(Value::Null)).collect();
                Value::Array(vals).to_string()
            };
            let before: std::collections::HashMap<String, &Value> = old
                .and_then(Value::as_array)
                .filter(|_| !keys.is_empty())
                .map(|b| b.iter().map(|y| (key_of(y), y)).collect())
                .unwrap_or_default();
            for (i, x) in a.iter().enumerate() {
                let o = if before.is_empty() {
                    None
                } else {
                    before.get(&key_of(x)).copied()
                };
                self.node(x, it, &format!("{path}[{i}]"), false, o);
            }
            self.list_duplicates(a, s, &keys, path);
        }
    }

    /// `x-kubernetes-list-type: set` items and `map` keys must be unique, as kube's
    /// `ValidateListSetsAndMaps` reports them: each repeat is a `Duplicate value` at its index.
    fn list_duplicates(&mut self, a: &[Value], s: &Value, keys: &[&str], path: &str) {
        let mut seen = std::collections::HashSet::new();
        match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                for (i, x) in a.iter().enumerate() {
                    if !seen.insert(x.to_string()) {
                        let message = format!("Duplicate value: {}", go_value(x));
                        self.duplicates.push((format!("{path}[{i}]"), message));
                    }
                }
            }
            Some("map") if !keys.is_empty() => {
                for (i, x) in a.iter().enumerate() {
                    let key: Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| x.get(*k).map(|v| (k.to_string(), v.clone())))
                        .collect();
                    // The repeated key, shown as JSON (kube marshals it for the message).
                    let shown = Value::Object(key).to_string();
                    if !seen.insert(shown.clone()) {
                        self.duplicates
                            .push((format!("{path}[{i}]"), format!("Duplicate value: {shown}")));
                    }
                }
            }
            _ => {}
        }
    }

    fn object(&mut self, m: &Map<String, Value>, s: &Value, path: &str, root: bool, old: Option<&Value>) {
        let n = m.len() as u64;
        if let Some(min) = uint(s, "minProperties").filter(|x| n < *x) {
            self.invalid(
                path,
                n.to_string(),
                format_args!("should have at least {min} properties"),
            );
        }
        if let Some(max) = uint(s, "maxProperties").filter(|x| n > *x) {
            // kube maps too many properties onto `field.TooMany`, hence "items".
            let unit = if max == 1 { "item" } else { "items" };
            self.push(path, format!("Too many: {n}: must have at most {max} {unit}"));
        }
        let skip = |k: &str| root && k == "metadata";
        for k in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let Some(k) = k.as_str() else { continue };
            if !skip(k) && !m.contains_key(k) {
                self.push(&join(path, k), "Required value".into());
            }
        }
        for (k, x) in m {
            if skip(k) {
                continue;
            }
            if let Some(c) = property(s, k).or_else(|| additional(s)) {
                self.node(x, c, &join(path, k), false, old.and_then(|o| o.get(k)));
            }
        }
    }

    fn enumeration(&mut self, v: &Value, s: &Value, path: &str) {
        let Some(allowed) = s.get("enum").and_then(Value::as_array) else {
            return;
        };
        if allowed.iter().any(|e| json_eq(e, v)) {
            return;
        }
        // Non-string enum values are listed as their JSON, each quoted like the strings.
        let listed: Vec<String> = allowed
            .iter()
            .map(|e| match e {
                Value::String(s) => format!("{s:?}"),
                other => format!("{:?}", other.to_string()),
            })
            .collect();
        self.push(
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                show_value(v),
                listed.join(", ")
            ),
        );
    }
}

#[cfg(test)]
#[path = "validation_tests.rs"]
mod tests;

/// A value as Go's `%#v` prints what JSON decoded into: strings quoted, numbers and booleans
/// bare.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}
