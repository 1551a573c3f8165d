//! Unit tests of [`super`]: messages, failure policies, match conditions, variables,
//! params, audit annotations and cost bounds.

use super::*;
use serde_json::json;

fn input(object: Value, params: Value) -> Input {
    let request = json!({"operation": "CREATE", "object": object, "oldObject": null, "namespace": "ns",
        "userInfo": {"username": "alice"}});
    Input::new(
        &request,
        params,
        json!({"metadata": {"name": "ns", "labels": {"env": "prod"}}}),
    )
}

fn validation(expr: &str) -> Validation {
    Validation {
        expr: Expr::new(expr),
        message: None,
        message_expression: None,
        reason: None,
    }
}

fn deny(message: &str, reason: &str) -> Decision {
    Decision::Deny {
        message: message.into(),
        reason: Some(reason.into()),
        error: false,
    }
}

#[test]
fn validations_give_kubes_messages_and_reasons() {
    let obj = json!({"metadata": {"name": "f"}, "spec": {"reference": "forbidden", "size": 3}});
    let mut with_message = validation("object.spec.size > 5");
    with_message.message = Some("  too small ".into());
    with_message.reason = Some("Forbidden".into());
    let mut with_expr = validation("object.spec.size > 5");
    with_expr.message_expression = Some(Expr::new("'size ' + string(object.spec.size) + ' is too small'"));
    with_expr.message = Some("fallback".into());
    let mut multi_line = validation("false");
    multi_line.message_expression = Some(Expr::new("'a\\nb'"));
    multi_line.message = Some("single".into());
    let mut non_string = validation("false");
    non_string.message_expression = Some(Expr::new("1"));
    let p = Program {
        validations: vec![
            validation("object.spec.reference != 'forbidden'"),
            validation("object.spec.size < 5"),
            with_message,
            with_expr,
            multi_line,
            non_string,
            validation("namespaceObject.metadata.labels.env == 'prod' && request.userInfo.username == 'alice'"),
        ],
        ..Default::default()
    };
    let out = p.validate(&input(obj, Value::Null));
    assert_eq!(
        out.decisions,
        vec![
            deny("failed expression: object.spec.reference != 'forbidden'", "Invalid"),
            Decision::Admit,
            deny("too small", "Forbidden"),
            deny("size 3 is too small", "Invalid"),
            deny("single", "Invalid"),
            deny("failed expression: false", "Invalid"),
            Decision::Admit,
        ]
    );
}

#[test]
fn errors_follow_the_failure_policy() {
    let obj = json!({"metadata": {"name": "f"}, "spec": {}});
    let mut p = Program {
        validations: vec![validation("object.spec.reference == 'x'"), validation("true")],
        ..Default::default()
    };
    let out = p.validate(&input(obj.clone(), Value::Null));
    assert_eq!(
        out.decisions[0],
        Decision::Deny {
            message: "expression 'object.spec.reference == 'x'' resulted in error: no such key: reference".into(),
            reason: None,
            error: true
        }
    );
    assert_eq!(out.decisions[1], Decision::Admit);
    p.ignore_failures = true;
    let out = p.validate(&input(obj, Value::Null));
    assert!(matches!(out.decisions[0], Decision::AdmitError(_)));
}

#[test]
fn match_conditions_skip_or_fail() {
    let obj = json!({"metadata": {"name": "f"}, "spec": {"size": 1}});
    let cond = |src: &str| ("c".to_string(), Expr::new(src));
    let mut p = Program {
        match_conditions: vec![cond("object.spec.size > 0"), cond("object.spec.nope == 1")],
        validations: vec![validation("false")],
        ..Default::default()
    };
    // A true condition and an error: the failure policy (Fail) denies with the error.
    let out = p.validate(&input(obj.clone(), Value::Null));
    assert_eq!(
        out.decisions,
        vec![Decision::Deny {
            message: "expression 'object.spec.nope == 1' resulted in error: no such key: nope".into(),
            reason: None,
            error: true
        }]
    );
    // Any false condition skips the policy, errors or not.
    p.match_conditions.push(cond("object.spec.size > 5"));
    assert_eq!(p.validate(&input(obj.clone(), Value::Null)), Outcome::default());
    // All true: validated.
    p.match_conditions = vec![cond("object.spec.size > 0")];
    assert_eq!(
        p.validate(&input(obj, Value::Null)).decisions,
        vec![deny("failed expression: false", "Invalid")]
    );
}

#[test]
fn variables_compose_and_params_are_seen() {
    let obj = json!({"metadata": {"name": "f"}, "spec": {"reference": "b", "size": 3}});
    let var = |n: &str, src: &str| (n.to_string(), Expr::new(src));
    let p = Program {
        variables: vec![
            var("ref", "object.spec.reference"),
            var("banned", "params.data.banned.split(',')"),
            var("isBanned", "variables.ref in variables.banned"),
            var("broken", "object.spec.nope"),
        ],
        validations: vec![
            validation("!variables.isBanned"),
            validation("variables.broken == 1"),
            validation("size(variables.banned) == 2"),
        ],
        ..Default::default()
    };
    let params = json!({"data": {"banned": "a,b"}});
    let out = p.validate(&input(obj, params));
    assert_eq!(
        out.decisions[0],
        deny("failed expression: !variables.isBanned", "Invalid")
    );
    assert_eq!(
        out.decisions[1],
        Decision::Deny {
            message: "expression 'variables.broken == 1' resulted in error: composited variable \"broken\" fails to evaluate: no such key: nope".into(),
            reason: None,
            error: true
        }
    );
    assert_eq!(out.decisions[2], Decision::Admit);
}

#[test]
fn audit_annotations_publish_strings_and_fail_on_other_types() {
    let obj = json!({"metadata": {"name": "f"}});
    let ann = |k: &str, src: &str| (k.to_string(), Expr::new(src));
    let mut p = Program {
        audit_annotations: vec![
            ann("who", "'by ' + request.userInfo.username"),
            ann("none", "null"),
            ann("blank", "'  '"),
            ann("num", "1"),
        ],
        ..Default::default()
    };
    let out = p.validate(&input(obj.clone(), Value::Null));
    assert_eq!(
        out.annotations,
        vec![
            Annotation::Publish("who".into(), "by alice".into()),
            Annotation::Error("valueExpression '1' resulted in unsupported return type: int. Return type must be either string or null.".into()),
        ]
    );
    p.ignore_failures = true;
    assert_eq!(p.validate(&input(obj, Value::Null)).annotations.len(), 1);
}

#[test]
fn expensive_expressions_are_refused_before_they_run() {
    let items: Vec<String> = (0..2000).map(|i| format!("v{i}")).collect();
    let obj = json!({"metadata": {"name": "f"}, "spec": {"items": items}});
    let src = "object.spec.items.all(x, object.spec.items.exists_one(y, y == x))";
    let p = Program {
        validations: vec![validation(src)],
        ..Default::default()
    };
    let out = p.validate(&input(obj, Value::Null));
    assert_eq!(
        out.decisions,
        vec![Decision::Deny {
            message: format!("expression '{src}' resulted in error: operation cancelled: actual cost limit exceeded"),
            reason: None,
            error: true
        }]
    );
}

#[test]
fn the_evaluation_budget_stops_further_validations() {
    // `exists` stops at the first element, but its bound counts every pair: each of these
    // is under the per-expression limit, and together they are over the budget.
    let items: Vec<String> = (0..400).map(|i| format!("v{i}")).collect();
    let obj = json!({"metadata": {"name": "f"}, "spec": {"items": items}});
    let src = "object.spec.items.exists(x, object.spec.items.exists(y, y == x))";
    let one = Program {
        validations: vec![validation(src)],
        ..Default::default()
    };
    assert_eq!(
        one.validate(&input(obj.clone(), Value::Null)).decisions,
        vec![Decision::Admit]
    );
    let mut p = Program {
        validations: (0..40).map(|_| validation(src)).collect(),
        ..Default::default()
    };
    let out = p.validate(&input(obj.clone(), Value::Null));
    assert_eq!(
        out.decisions,
        vec![Decision::Deny {
            message: OUT_OF_BUDGET.into(),
            reason: None,
            error: true
        }]
    );
    p.ignore_failures = true;
    assert_eq!(
        p.validate(&input(obj, Value::Null)).decisions,
        vec![Decision::AdmitError(OUT_OF_BUDGET.into())]
    );
}
