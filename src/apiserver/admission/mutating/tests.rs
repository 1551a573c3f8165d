//! The plugin end to end over fixed snapshots: the rewrite of message construction, matching,
//! mutations in order, reinvocation, params and failure policies in kube's words.

use super::*;
use crate::apiserver::admission::attributes::tests::attrs;
use crate::apiserver::admission::cel::{compile_with_structs, eval_expr, structs_as_maps, to_json};
use crate::apiserver::admission::policy::params::tests::{cm, Fake};
use crate::apiserver::admission::policy::{NamespaceLookup, Snapshot};
use kube_cel::cel::common::ast::Expr as Ast;
use kube_cel::cel::IdedExpr;

fn policy(name: &str, spec: Value) -> Value {
    let mut full = json!({"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
        "apiGroups": ["wardle.example.com"], "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"], "resources": ["flunders"]}]}});
    if let (Some(s), Some(e)) = (full.as_object_mut(), spec.as_object()) {
        s.extend(e.clone());
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
           "metadata": {"name": name}, "spec": full})
}

fn binding(name: &str, policy: &str, extra: Value) -> Value {
    let mut spec = json!({"policyName": policy});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
           "metadata": {"name": name}, "spec": spec})
}

fn json_patch(expr: &str) -> Value {
    json!({"patchType": "JSONPatch", "jsonPatch": {"expression": expr}})
}

fn apply(expr: &str) -> Value {
    json!({"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": expr}})
}

fn plugin(policies: Vec<Value>, bindings: Vec<Value>, params: Fake) -> MutatingPolicies {
    let lookup: NamespaceLookup = Box::new(|ns: &str| {
        (ns == "ns").then(
            || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns", "labels": {"env": "prod"}}}),
        )
    });
    let snap = Snapshot::build_with(&policies, &bindings, MutatingPolicy::parse);
    Policies::fixed(lookup, Box::new(params), snap)
}

fn write(spec: Value) -> Attributes {
    let mut a = attrs();
    a.object.as_mut().expect("object")["spec"] = spec;
    a
}

fn has_struct(e: &IdedExpr) -> bool {
    format!("{e:?}").contains("Struct(")
}

#[test]
fn message_construction_is_rewritten_into_maps_at_any_depth() {
    let src = "[1].map(i, JSONPatch{op: 'add', path: '/spec', value: Object.spec{n: i, inner: Object.spec.inner{x: [Object.spec.inner.x{y: true}]}}})";
    let parsed = kube_cel::cel::Program::compile(src).expect("parses");
    assert!(has_struct(parsed.expression()));
    let rewritten = structs_as_maps(parsed.expression());
    assert!(!has_struct(&rewritten), "{rewritten:?}");
    assert!(matches!(rewritten.expr, Ast::Comprehension(_)));
    let v = eval_expr(&rewritten, &[]).expect("evaluates");
    let mut o = json!({});
    patch::json_patch(&mut o, &v).expect("applies, the type names following the field path");
    assert_eq!(o, json!({"spec": {"n": 1, "inner": {"x": [{"y": true}]}}}));
    // Map literals keep their keys; struct fields inside calls and selections are rewritten.
    let v = eval_expr(
        &compile_with_structs("{'k': Object{a: 1}.a, 'l': size([Object{}])}").expect("compiles"),
        &[],
    );
    assert_eq!(v.map(|v| to_json(&v)), Ok(json!({"k": 1, "l": 1})));
    // The type names are kept for kube's check, which `constructed` makes.
    let v = eval_expr(
        &compile_with_structs("Object{spec: Object.spec{}}").expect("compiles"),
        &[],
    )
    .expect("evaluates");
    assert_eq!(
        to_json(&v),
        json!({"\u{1}type": "Object", "spec": {"\u{1}type": "Object.spec"}})
    );
}

#[tokio::test]
async fn json_patch_and_apply_configuration_mutate_in_order() {
    let p = plugin(
        vec![policy(
            "label-and-size",
            json!({"mutations": [
                json_patch("[JSONPatch{op: 'add', path: '/metadata/labels', value: {'mutated': 'yes'}}]"),
                apply("Object{spec: Object.spec{size: 3, seen: object.metadata.labels.mutated}}"),
            ]}),
        )],
        vec![binding("b", "label-and-size", json!({}))],
        Fake::default(),
    );
    assert!(p.configured());
    let mut a = write(json!({"size": 1, "keep": "x"}));
    p.admit(&mut a).await.expect("admitted");
    let o = a.object.expect("object");
    assert_eq!(o["metadata"]["labels"], json!({"mutated": "yes"}));
    assert_eq!(o["spec"], json!({"size": 3, "keep": "x", "seen": "yes"}));
    assert_eq!(
        o["apiVersion"], "wardle.example.com/v1beta1",
        "the object keeps its version"
    );

    // A delete has no object to mutate.
    let mut d = write(json!({}));
    d.operation = Operation::Delete;
    d.old_object = d.object.take();
    assert_eq!(p.admit(&mut d).await, Ok(()));
}

#[tokio::test]
async fn match_conditions_constraints_and_bindings_select() {
    let label = json_patch("[JSONPatch{op: 'add', path: '/metadata/labels', value: {'m': 'y'}}]");
    let p = plugin(
        vec![
            policy(
                "conditional",
                json!({"matchConditions": [{"name": "big", "expression": "object.spec.size > 10"}], "mutations": [label]}),
            ),
            policy(
                "deployments-only",
                json!({"matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["deployments"]}]},
                    "mutations": [apply("Object{spec: Object.spec{wrong: true}}")]}),
            ),
        ],
        vec![
            binding("c", "conditional", json!({})),
            binding("d", "deployments-only", json!({})),
        ],
        Fake::default(),
    );
    let mut small = write(json!({"size": 1}));
    p.admit(&mut small).await.expect("admitted");
    assert!(small
        .object
        .as_ref()
        .expect("object")
        .pointer("/metadata/labels")
        .is_none());
    assert!(small.object.as_ref().expect("object").pointer("/spec/wrong").is_none());
    let mut big = write(json!({"size": 11}));
    p.admit(&mut big).await.expect("admitted");
    assert_eq!(big.object.expect("object")["metadata"]["labels"]["m"], "y");

    // A binding whose matchResources exclude the namespace does not apply.
    let p = plugin(
        vec![policy(
            "label",
            json!({"mutations": [json_patch("[JSONPatch{op: 'add', path: '/spec/x', value: 1}]")]}),
        )],
        vec![binding(
            "only-dev",
            "label",
            json!({"matchResources": {"namespaceSelector": {"matchLabels": {"env": "dev"}}}}),
        )],
        Fake::default(),
    );
    let mut a = write(json!({}));
    p.admit(&mut a).await.expect("admitted");
    assert_eq!(a.object.expect("object")["spec"], json!({}));
}

#[tokio::test]
async fn params_and_variables_reach_the_mutations() {
    let p = plugin(
        vec![policy(
            "from-params",
            json!({"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                   "variables": [{"name": "want", "expression": "params.data.size"}],
                   "mutations": [apply("Object{spec: Object.spec{size: int(variables.want)}}")]}),
        )],
        vec![binding(
            "b",
            "from-params",
            json!({"paramRef": {"name": "limits", "parameterNotFoundAction": "Deny"}}),
        )],
        Fake {
            objects: vec![("ns".into(), {
                let mut c = cm("limits", json!({}));
                c["data"] = json!({"size": "7"});
                c
            })],
            namespaced: true,
            fail: None,
        },
    );
    let mut a = write(json!({"size": 1}));
    p.admit(&mut a).await.expect("admitted");
    assert_eq!(a.object.expect("object")["spec"]["size"], 7);
}

#[tokio::test]
async fn a_policy_asking_for_it_is_reinvoked_after_a_later_change() {
    // Policies run in name order: `a-copy` copies the size, then `b-grow` changes it.
    let run = |reinvocation: &str| {
        plugin(
            vec![
                policy(
                    "a-copy",
                    json!({"reinvocationPolicy": reinvocation,
                           "mutations": [apply("Object{spec: Object.spec{copy: object.spec.size}}")]}),
                ),
                policy(
                    "b-grow",
                    json!({"mutations": [apply("Object{spec: Object.spec{size: 5}}")]}),
                ),
            ],
            vec![binding("a", "a-copy", json!({})), binding("b", "b-grow", json!({}))],
            Fake::default(),
        )
    };
    let mut a = write(json!({"size": 1}));
    run("Never").admit(&mut a).await.expect("admitted");
    assert_eq!(a.object.expect("object")["spec"], json!({"size": 5, "copy": 1}));
    let mut a = write(json!({"size": 1}));
    run("IfNeeded").admit(&mut a).await.expect("admitted");
    assert_eq!(a.object.expect("object")["spec"], json!({"size": 5, "copy": 5}));
}

#[tokio::test]
async fn failures_refuse_under_fail_and_are_ignored_under_ignore() {
    let failing = |policy_name: &str, failure: &str| {
        policy(
            policy_name,
            json!({"failurePolicy": failure, "mutations": [
                apply("Object{spec: Object.spec{size: object.spec.nope}}"),
                json_patch("[JSONPatch{op: 'add', path: '/spec/after', value: true}]"),
            ]}),
        )
    };
    let p = plugin(
        vec![failing("strict", "Fail")],
        vec![binding("sb", "strict", json!({}))],
        Fake::default(),
    );
    let s = p.admit(&mut write(json!({"size": 1}))).await.expect_err("refused");
    let body = s.to_json();
    let msg = "policy 'strict' with binding 'sb' denied request: expression 'Object{spec: Object.spec{size: object.spec.nope}}' resulted in error: no such key: nope";
    assert_eq!(body["code"], 403);
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["message"], msg);
    assert_eq!(
        body["details"],
        json!({"name": "f", "group": "wardle.example.com", "kind": "flunders", "causes": [{"message": msg}]})
    );

    let p = plugin(
        vec![failing("lenient", "Ignore")],
        vec![binding("lb", "lenient", json!({}))],
        Fake::default(),
    );
    let mut a = write(json!({"size": 1}));
    p.admit(&mut a).await.expect("ignored");
    // The failing mutation is skipped; the next one still runs, as in kube.
    assert_eq!(a.object.expect("object")["spec"], json!({"size": 1, "after": true}));

    // A configuration error: a binding's params are missing under Deny.
    let p = plugin(
        vec![policy(
            "needs-params",
            json!({"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                   "mutations": [json_patch("[]")]}),
        )],
        vec![binding(
            "nb",
            "needs-params",
            json!({"paramRef": {"name": "absent", "parameterNotFoundAction": "Deny"}}),
        )],
        Fake {
            namespaced: true,
            ..Fake::default()
        },
    );
    let body = p.admit(&mut write(json!({}))).await.expect_err("refused").to_json();
    assert_eq!(body["code"], 403);
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "policy 'needs-params' with binding 'nb' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"
    );
}

#[tokio::test]
async fn a_refusal_comes_before_any_reinvocation() {
    let p = plugin(
        vec![
            policy(
                "a-fails",
                json!({"reinvocationPolicy": "IfNeeded", "mutations": [apply("Object{spec: Object.spec{size: object.spec.nope}}")]}),
            ),
            policy(
                "b-grow",
                json!({"mutations": [apply("Object{spec: Object.spec{size: 5}}")]}),
            ),
        ],
        vec![binding("a", "a-fails", json!({})), binding("b", "b-grow", json!({}))],
        Fake::default(),
    );
    let body = p
        .admit(&mut write(json!({"size": 1})))
        .await
        .expect_err("refused")
        .to_json();
    assert_eq!(body["details"]["causes"].as_array().map(Vec::len), Some(1), "{body}");
}

#[tokio::test]
async fn mutations_are_cost_bounded_before_they_run() {
    let src =
        "Object{spec: Object.spec{size: object.spec.items.filter(x, object.spec.items.exists_one(y, y == x)).size()}}";
    let p = plugin(
        vec![policy("expensive", json!({"mutations": [apply(src)]}))],
        vec![binding("b", "expensive", json!({}))],
        Fake::default(),
    );
    let items: Vec<String> = (0..2000).map(|i| format!("v{i}")).collect();
    let mut a = write(json!({"size": 1, "items": items}));
    let body = p.admit(&mut a).await.expect_err("refused").to_json();
    assert_eq!(
        body["message"],
        format!("policy 'expensive' with binding 'b' denied request: expression '{src}' resulted in error: operation cancelled: actual cost limit exceeded")
    );
    assert_eq!(a.object.expect("object")["spec"]["size"], 1, "not applied");
    // A cheap one over the same object runs.
    let mut a = write(json!({"size": 1, "items": ["a", "b"]}));
    p.admit(&mut a).await.expect("admitted");
    assert_eq!(a.object.expect("object")["spec"]["size"], 2);
}
