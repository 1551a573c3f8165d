//! Unit tests of `validation.rs`.

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

#[test]
fn composition_is_reported_as_kube_openapi_does() {
    let spec = json!({"type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        "not": {"properties": {"a": {"minimum": 10}}, "required": ["a"]},
        "allOf": [{"properties": {"b": {"maximum": 5}}}]});
    assert!(causes(spec.clone(), json!({"a": 1})).is_empty());
    let none = causes(spec.clone(), json!({}));
    assert!(
        none.contains(&(
            "<nil>".into(),
            "Invalid value: \"\": \"spec\" must validate at least one schema (anyOf)".into()
        )),
        "{none:?}"
    );
    assert!(
        none.iter().any(|(_, m)| m.ends_with("(oneOf). Found none valid")),
        "{none:?}"
    );
    assert!(none.contains(&("spec.a".into(), "Required value".into())), "{none:?}");
    let both = causes(spec.clone(), json!({"a": 20, "b": 9}));
    assert!(
        both.iter()
            .any(|(_, m)| m.ends_with("(oneOf). Found 2 valid alternatives")),
        "{both:?}"
    );
    assert!(
        both.iter()
            .any(|(_, m)| m.ends_with("must not validate the schema (not)")),
        "{both:?}"
    );
    assert!(
        both.iter()
            .any(|(_, m)| m.ends_with("must validate all the schemas (allOf). None validated")),
        "{both:?}"
    );
    assert!(both.iter().any(|(f, _)| f == "spec.b"), "{both:?}");
}
