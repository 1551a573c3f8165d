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
    let mut v = Validator { causes: Vec::new() };
    v.node(obj, schema, "", true, old);
    v.causes
}

struct Validator {
    causes: Vec<Cause>,
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
fn show_value(v: &Value) -> String {
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
fn json_eq(a: &Value, b: &Value) -> bool {
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
        self.enumeration(v, s, path);
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
mod tests {
    use super::*;
    use serde_json::json;

    fn validate(obj: &Value, schema: &Value) -> Vec<Cause> {
        validate_update(obj, None, schema)
    }

    /// The causes for `obj` under `{spec: <spec>}`.
    fn causes(spec: Value, obj: Value) -> Vec<Cause> {
        let schema = json!({"type": "object", "properties": {"spec": spec}});
        validate(&json!({"spec": obj}), &schema)
    }

    fn one(spec: Value, obj: Value) -> String {
        let c = causes(spec, obj);
        assert_eq!(c.len(), 1, "{c:?}");
        format!("{}: {}", c[0].0, c[0].1)
    }

    fn obj_with(prop: Value, value: Value) -> (Value, Value) {
        (
            json!({"type": "object", "properties": {"x": prop}}),
            json!({"x": value}),
        )
    }

    fn x(prop: Value, value: Value) -> String {
        let (s, o) = obj_with(prop, value);
        one(s, o)
    }

    fn x_ok(prop: Value, value: Value) {
        let (s, o) = obj_with(prop, value);
        assert_eq!(causes(s, o), Vec::<Cause>::new());
    }

    #[test]
    fn types() {
        assert_eq!(
            x(json!({"type": "integer"}), json!("string")),
            r#"spec.x: Invalid value: "string": spec.x in body must be of type integer: "string""#
        );
        assert_eq!(
            x(json!({"type": "string"}), json!(1.5)),
            r#"spec.x: Invalid value: "number": spec.x in body must be of type string: "number""#
        );
        assert_eq!(
            x(json!({"type": "object"}), json!([])),
            r#"spec.x: Invalid value: "array": spec.x in body must be of type object: "array""#
        );
        assert_eq!(
            x(json!({"type": "boolean"}), json!(null)),
            r#"spec.x: Invalid value: "null": spec.x in body must be of type boolean: "null""#
        );
        x_ok(json!({"type": "boolean", "nullable": true}), json!(null));
        x_ok(json!({"type": "integer"}), json!(2.0));
        x_ok(json!({"type": "number"}), json!(2));
        x_ok(json!({"type": "array"}), json!([1, "a"]));
        x_ok(json!({}), json!({"anything": 1}));
    }

    #[test]
    fn int_or_string() {
        let s = json!({"x-kubernetes-int-or-string": true, "pattern": "^[0-9]+%$"});
        x_ok(s.clone(), json!(3));
        x_ok(s.clone(), json!("50%"));
        assert_eq!(
            x(s.clone(), json!(true)),
            r#"spec.x: Invalid value: "boolean": spec.x in body must be of type integer,string: "boolean""#
        );
        assert_eq!(
            x(s, json!("half")),
            r#"spec.x: Invalid value: "half": spec.x in body should match '^[0-9]+%$'"#
        );
    }

    #[test]
    fn required_and_enum() {
        let s = json!({"type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "string", "enum": ["x", "y"]}, "b": {"type": "integer", "enum": [1, 2]}}});
        assert_eq!(one(s.clone(), json!({"a": "x"})), "spec.b: Required value");
        assert_eq!(
            one(s.clone(), json!({"a": "z", "b": 1})),
            r#"spec.a: Unsupported value: "z": supported values: "x", "y""#
        );
        assert_eq!(
            one(s.clone(), json!({"a": "y", "b": 3})),
            r#"spec.b: Unsupported value: 3: supported values: "1", "2""#
        );
        assert!(causes(s, json!({"a": "y", "b": 2.0})).is_empty());
        // The root's required list is checked too, except for metadata (the server's).
        let root = json!({"type": "object", "required": ["metadata", "spec"], "properties": {"spec": {}}});
        assert_eq!(
            validate(&json!({"metadata": {}}), &root),
            vec![("spec".to_string(), "Required value".to_string())]
        );
    }

    #[test]
    fn strings() {
        assert_eq!(
            x(json!({"type": "string", "pattern": "^[0-9]+$"}), json!("abc")),
            r#"spec.x: Invalid value: "abc": spec.x in body should match '^[0-9]+$'"#
        );
        assert_eq!(
            x(json!({"type": "string", "maxLength": 5}), json!("héllo!")),
            "spec.x: Too long: may not be more than 5 bytes"
        );
        // Characters, not bytes, are counted.
        x_ok(json!({"type": "string", "maxLength": 5}), json!("héllo"));
        assert_eq!(
            x(json!({"type": "string", "minLength": 3}), json!("ab")),
            r#"spec.x: Invalid value: "ab": spec.x in body should be at least 3 chars long"#
        );
        assert_eq!(
            x(json!({"type": "string", "format": "date-time"}), json!("yesterday")),
            r#"spec.x: Invalid value: "yesterday": spec.x in body must be of type date-time: "yesterday""#
        );
        x_ok(
            json!({"type": "string", "format": "date-time"}),
            json!("2024-01-02T03:04:05Z"),
        );
        x_ok(
            json!({"type": "string", "format": "date-time"}),
            json!("2024-01-02T03:04:05.5+02:00"),
        );
        assert!(x(json!({"type": "string", "format": "byte"}), json!("not base64!")).contains("type byte"));
        assert!(x(json!({"type": "string", "pattern": "("}), json!("a")).contains("Internal error"));
    }

    #[test]
    fn numbers() {
        assert_eq!(
            x(json!({"type": "integer", "maximum": 10}), json!(11)),
            "spec.x: Invalid value: 11: spec.x in body should be less than or equal to 10"
        );
        assert_eq!(
            x(
                json!({"type": "integer", "maximum": 10, "exclusiveMaximum": true}),
                json!(10)
            ),
            "spec.x: Invalid value: 10: spec.x in body should be less than 10"
        );
        assert_eq!(
            x(json!({"type": "number", "minimum": 0.5}), json!(0.25)),
            "spec.x: Invalid value: 0.25: spec.x in body should be greater than or equal to 0.5"
        );
        assert_eq!(
            x(
                json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true}),
                json!(0)
            ),
            "spec.x: Invalid value: 0: spec.x in body should be greater than 0"
        );
        assert_eq!(
            x(json!({"type": "integer", "multipleOf": 5}), json!(12)),
            "spec.x: Invalid value: 12: spec.x in body should be a multiple of 5"
        );
        x_ok(json!({"type": "number", "multipleOf": 0.1}), json!(0.3));
        x_ok(json!({"type": "integer", "maximum": 10, "minimum": 10}), json!(10));
        assert_eq!(
            x(json!({"type": "integer", "format": "int32"}), json!(3_000_000_000u64)),
            "spec.x: Invalid value: 3000000000: spec.x in body must be of type int32"
        );
        x_ok(json!({"type": "integer", "format": "int64"}), json!(3_000_000_000u64));
    }

    #[test]
    fn arrays() {
        let s = json!({"type": "array", "minItems": 2, "maxItems": 3, "uniqueItems": true,
                       "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}});
        assert_eq!(
            x(s.clone(), json!([{"name": "a"}])),
            "spec.x: Invalid value: 1: spec.x in body should have at least 2 items"
        );
        assert_eq!(
            x(
                s.clone(),
                json!([{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}])
            ),
            "spec.x: Too many: 4: must have at most 3 items"
        );
        assert_eq!(
            x(s.clone(), json!([{"name": "a"}, {"name": "a"}])),
            r#"spec.x: Invalid value: "": spec.x in body shouldn't contain duplicates"#
        );
        assert_eq!(x(s, json!([{"name": "a"}, {}])), "spec.x[1].name: Required value");
    }

    #[test]
    fn objects_and_maps() {
        let s = json!({"type": "object", "minProperties": 1, "maxProperties": 2,
                       "additionalProperties": {"type": "integer", "maximum": 3}});
        assert_eq!(
            x(s.clone(), json!({})),
            "spec.x: Invalid value: 0: spec.x in body should have at least 1 properties"
        );
        assert_eq!(
            x(s.clone(), json!({"a": 1, "b": 2, "c": 3})),
            "spec.x: Too many: 3: must have at most 2 items"
        );
        assert_eq!(
            x(s, json!({"a": 4})),
            "spec.x.a: Invalid value: 4: spec.x.a in body should be less than or equal to 3"
        );
        assert_eq!(
            x(json!({"type": "object", "enum": [{"a": 1}]}), json!({"b": "c"})),
            r#"spec.x: Unsupported value: map[string]interface {}{"b":"c"}: supported values: "{\"a\":1}""#
        );
    }

    #[test]
    fn every_error_is_collected() {
        let spec = json!({"type": "object", "required": ["name"], "properties": {
            "replicas": {"type": "integer", "maximum": 10},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "items": {"type": "array", "items": {"type": "string", "maxLength": 1}}}});
        let got = causes(
            spec,
            json!({"replicas": "many", "mode": "c", "items": ["ok", "x", "no"]}),
        );
        // Sorted: the order among properties follows the map's, which is not the point here.
        let mut fields: Vec<&str> = got.iter().map(|c| c.0.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "spec.items[0]",
                "spec.items[2]",
                "spec.mode",
                "spec.name",
                "spec.replicas"
            ],
            "{got:?}"
        );
    }

    #[test]
    fn unchanged_parts_are_ratcheted() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["r"],
            "properties": {
                "a": {"type": "integer", "maximum": 1},
                "b": {"type": "integer", "maximum": 1},
                "list": {"type": "array", "items": {"type": "string", "maxLength": 1}},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {
                              "name": {"type": "string"}, "port": {"type": "integer", "maximum": 100}}}}}}}});
        let old = json!({"metadata": {"labels": {}}, "spec": {"r": 1, "a": 5, "b": 5, "list": ["xx"],
            "ports": [{"name": "a", "port": 500}, {"name": "b", "port": 600}]}});
        let fields = |new: &Value| -> Vec<String> {
            validate_update(new, Some(&old), &schema)
                .into_iter()
                .map(|c| c.0)
                .collect()
        };
        // Only metadata changed: every old violation is forgiven; without `old` none is.
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"a": "b"});
        assert!(fields(&new).is_empty());
        assert_eq!(validate(&new, &schema).len(), 5);
        // A changed field is checked; unchanged siblings, and map-list items matched by key
        // even when reordered, are not.
        new["spec"]["a"] = json!(6);
        new["spec"]["ports"] = json!([{"name": "b", "port": 600}, {"name": "a", "port": 501}]);
        assert_eq!(fields(&new), ["spec.a", "spec.ports[1].port"]);
        // Plain lists are not correlated by index: a changed list is checked whole.
        new["spec"]["list"] = json!(["xx", "y"]);
        assert_eq!(fields(&new), ["spec.a", "spec.list[0]", "spec.ports[1].port"]);
        // A changed object is checked for its required fields.
        new["spec"].as_object_mut().map(|m| m.remove("r"));
        assert!(fields(&new).contains(&"spec.r".to_string()));
    }

    #[test]
    fn metadata_is_not_the_schemas() {
        let s = json!({"type": "object", "properties": {"metadata": {"type": "object",
            "properties": {"name": {"type": "string", "maxLength": 2}}}}});
        assert!(validate(&json!({"metadata": {"name": "long-name"}}), &s).is_empty());
    }
}
