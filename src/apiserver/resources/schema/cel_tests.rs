use super::*;
use serde_json::json;

fn run(obj: Value, old: Option<Value>, schema: Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate(&obj, old.as_ref(), &schema, &mut causes);
    causes
}

fn spec(rules: Value) -> Value {
    json!({"type": "object", "properties": {"spec": {
        "type": "object",
        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"},
                       "l": {"type": "array", "items": {"type": "string"}}},
        "x-kubernetes-validations": rules}}})
}

#[test]
fn rules_pass_fail_and_message_forms() {
    let s = spec(json!([{"rule": "self.min <= self.max", "message": "min above max"}, {"rule": "self.min >= 0"}]));
    assert!(run(json!({"spec": {"min": 1, "max": 2}}), None, s.clone()).is_empty());
    let c = run(json!({"spec": {"min": -3, "max": -4}}), None, s);
    assert_eq!(
        c,
        vec![
            ("spec".into(), "Invalid value: min above max".into()),
            ("spec".into(), "Invalid value: failed rule: self.min >= 0".into()),
        ]
    );
}

#[test]
fn message_expression_reason_and_field_path() {
    let s = spec(
        json!([{"rule": "self.min <= self.max", "messageExpression": "'min ' + string(self.min) + ' above max'",
                         "reason": "FieldValueForbidden", "fieldPath": ".min"}]),
    );
    let c = run(json!({"spec": {"min": 5, "max": 4}}), None, s);
    assert_eq!(c, vec![("spec.min".into(), "Forbidden: min 5 above max".into())]);
}

#[test]
fn transition_rules_need_an_old_value_and_ratchet() {
    let s =
        spec(json!([{"rule": "self.min >= oldSelf.min", "message": "min may not shrink"}, {"rule": "self.max < 10"}]));
    // Create: no old value, the transition rule is not run.
    assert!(run(json!({"spec": {"min": 1, "max": 2}}), None, s.clone()).is_empty());
    let old = json!({"spec": {"min": 3, "max": 20}});
    let c = run(json!({"spec": {"min": 1, "max": 20}}), Some(old.clone()), s.clone());
    assert_eq!(c.len(), 2, "{c:?}");
    // Unchanged: the invalid max is ratcheted.
    assert!(run(old.clone(), Some(old), s).is_empty());
}

#[test]
fn kubernetes_library_and_escaping() {
    let s = json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"a-b": {"type": "string"}, "l": {"type": "array", "items": {"type": "string"}}},
        "x-kubernetes-validations": [
            {"rule": "self.a__dash__b.matches('^[a-z]+$') && self.l.all(x, x.startsWith('p'))"},
            {"rule": "!has(self.missing) && size(self.l) == 2"}]}}});
    assert!(run(json!({"spec": {"a-b": "abc", "l": ["p1", "p2"]}}), None, s.clone()).is_empty());
    assert_eq!(run(json!({"spec": {"a-b": "ABC", "l": ["p1", "q"]}}), None, s).len(), 1);
}

#[test]
fn cost_over_the_limit_is_refused_without_running() {
    let s = spec(json!([{"rule": "self.l.all(x, self.l.all(y, self.l.exists_one(z, z == x + y)))"}]));
    let l: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
    let c = run(json!({"spec": {"l": l}}), None, s);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].1
            .contains("call cost exceeds limit for rule: failed rule: self.l.all"),
        "{c:?}"
    );
}

#[test]
fn escape_matches_kube() {
    assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
    assert_eq!(escape("a.b-c/d").as_deref(), Some("a__dot__b__dash__c__slash__d"));
    assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
    assert_eq!(escape("1a"), None);
    assert_eq!(unescape("a__dot__b__dash__c"), "a.b-c");
}

#[test]
fn optional_old_self_runs_on_create_with_an_empty_optional() {
    let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"level": {
        "type": "integer",
        "x-kubernetes-validations": [
            {"rule": "oldSelf.hasValue() || self < 10", "optionalOldSelf": true, "message": "new below 10"},
            {"rule": "!oldSelf.hasValue() || self >= oldSelf.value()", "optionalOldSelf": true, "message": "no decrease"}]}}}}});
    let c = run(json!({"spec": {"level": 50}}), None, s.clone());
    assert_eq!(c, vec![("spec.level".into(), "Invalid value: 50: new below 10".into())]);
    assert!(run(
        json!({"spec": {"level": 50}}),
        Some(json!({"spec": {"level": 5}})),
        s.clone()
    )
    .is_empty());
    let c = run(json!({"spec": {"level": 4}}), Some(json!({"spec": {"level": 5}})), s);
    assert_eq!(c, vec![("spec.level".into(), "Invalid value: 4: no decrease".into())]);
}

#[test]
fn the_request_budget_stops_all_further_rules() {
    let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"rows": {
        "type": "array",
        "items": {"type": "object", "properties": {"v": {"type": "array", "items": {"type": "string"}}},
                  "x-kubernetes-validations": [{"rule": "self.v.all(x, self.v.exists_one(y, y == x))"}]}}}}}});
    let row: Vec<String> = (0..150).map(|i| format!("s{i}")).collect();
    let one = cel_cost::bound(
        compile("self.v.all(x, self.v.exists_one(y, y == x))")
            .expect("compiles")
            .expression(),
        &json!({"v": row}),
        None,
    );
    assert!(one < cel_cost::PER_CALL_LIMIT, "{one}");
    let rows: Vec<Value> = (0..(cel_cost::REQUEST_BUDGET / one + 2))
        .map(|_| json!({"v": row}))
        .collect();
    let c = run(json!({"spec": {"rows": rows}}), None, s);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0]
        .1
        .ends_with("validation failed due to running out of cost budget, no further validation rules will be run"));
}

#[test]
fn rules_that_do_not_compile_are_found_and_fail_writes_without_panicking() {
    let s = spec(json!([{"rule": "self.min <="}, {"rule": "true", "messageExpression": "'a' +"}]));
    assert_eq!(rule_problems(&s).len(), 2);
    let c = run(json!({"spec": {"min": 1}}), None, s);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].1.starts_with("Internal error: rule does not compile"), "{c:?}");
}

#[test]
fn date_time_strings_are_timestamps() {
    let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"expires": {
        "type": "string", "format": "date-time",
        "x-kubernetes-validations": [{"rule": "self > timestamp('2020-01-01T00:00:00Z')", "message": "after 2020"}]}}}}});
    let c = run(json!({"spec": {"expires": "2019-05-01T10:00:00Z"}}), None, s.clone());
    assert_eq!(
        c,
        vec![(
            "spec.expires".into(),
            "Invalid value: \"2019-05-01T10:00:00Z\": after 2020".into()
        )]
    );
    assert!(run(json!({"spec": {"expires": "2030-05-01T10:00:00+02:00"}}), None, s).is_empty());
}

#[test]
fn go_durations_parse() {
    assert_eq!(go_duration("1h30m"), Some(chrono::Duration::minutes(90)));
    assert_eq!(go_duration("-1.5s"), Some(chrono::Duration::milliseconds(-1500)));
    assert_eq!(go_duration("300ms"), Some(chrono::Duration::milliseconds(300)));
    assert_eq!(go_duration("0"), Some(chrono::Duration::zero()));
    assert_eq!(go_duration("5"), None);
    assert_eq!(go_duration("1d"), None);
    assert_eq!(go_duration(""), None);
}
