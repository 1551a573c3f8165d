//! The plugin end to end over fixed snapshots: matching, params, actions and kube's words.

use super::params::tests::{cm, Fake};
use super::*;
use crate::apiserver::admission::attributes::tests::attrs;
use crate::apiserver::admission::Operation;

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
           "metadata": {"name": name}, "spec": spec})
}

fn binding(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
           "metadata": {"name": name}, "spec": spec})
}

fn flunder_rules() -> Value {
    json!({"resourceRules": [{"apiGroups": ["wardle.example.com"], "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"], "resources": ["flunders"]}],
           "matchPolicy": "Equivalent"})
}

fn no_reference(extra: Value) -> Value {
    let mut spec = json!({
        "failurePolicy": "Fail",
        "matchConstraints": flunder_rules(),
        "validations": [{"expression": "object.spec.reference != 'forbidden'"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

fn plugin(policies: Vec<Value>, bindings: Vec<Value>, params: Fake) -> Policies {
    let lookup: NamespaceLookup = Box::new(|ns: &str| {
        (ns == "ns").then(|| {
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "ns", "labels": {"env": "prod"}, "managedFields": []}})
        })
    });
    Policies::fixed(lookup, Box::new(params), Snapshot::build(&policies, &bindings))
}

fn write(spec: Value) -> Attributes {
    let mut a = attrs();
    a.object.as_mut().expect("object")["spec"] = spec;
    a
}

#[tokio::test]
async fn deny_refuses_with_kubes_status() {
    let p = plugin(
        vec![policy("no-forbidden", no_reference(json!({})))],
        vec![binding(
            "deny",
            json!({"policyName": "no-forbidden", "validationActions": ["Deny"]}),
        )],
        Fake::default(),
    );
    assert!(p.configured());
    assert_eq!(p.check(&write(json!({"reference": "fine"}))).await, Ok(()));
    let s = p
        .check(&write(json!({"reference": "forbidden"})))
        .await
        .expect_err("denied");
    let body = s.to_json();
    assert_eq!(body["code"], 422);
    assert_eq!(body["reason"], "Invalid");
    let msg = "ValidatingAdmissionPolicy 'no-forbidden' with binding 'deny' denied request: failed expression: object.spec.reference != 'forbidden'";
    assert_eq!(
        body["message"],
        format!("flunders.wardle.example.com \"f\" is forbidden: {msg}")
    );
    assert_eq!(
        body["details"],
        json!({"name": "f", "group": "wardle.example.com", "kind": "flunders", "causes": [{"message": msg}]})
    );
    let checks = |action: &str| {
        METRICS
            .policy_checks
            .get_or_create(&PolicyLabels {
                policy: "no-forbidden".into(),
                policy_binding: "deny".into(),
                enforcement_action: action.into(),
            })
            .get()
    };
    assert!(checks("deny") >= 1 && checks("allow") >= 1);
    // Not matched: other operations, other resources.
    let mut d = write(json!({"reference": "forbidden"}));
    d.operation = Operation::Delete;
    assert_eq!(p.check(&d).await, Ok(()));
    let mut other = write(json!({"reference": "forbidden"}));
    other.resource.resource = "fischers".into();
    assert_eq!(p.check(&other).await, Ok(()));
}

#[tokio::test]
async fn reasons_choose_the_code_and_messages_the_text() {
    let spec = json!({"matchConstraints": flunder_rules(), "validations": [
        {"expression": "object.spec.size < 10", "reason": "Forbidden",
         "messageExpression": "'size ' + string(object.spec.size) + ' is too big'"}]});
    let p = plugin(
        vec![policy("size", spec)],
        vec![binding(
            "b",
            json!({"policyName": "size", "validationActions": ["Deny"]}),
        )],
        Fake::default(),
    );
    let s = p.check(&write(json!({"size": 12}))).await.expect_err("denied");
    assert_eq!(s.code, StatusCode::FORBIDDEN);
    assert_eq!(s.reason, "Forbidden");
    assert!(
        s.message.ends_with("denied request: size 12 is too big"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn warn_and_audit_admit_with_kubes_warning() {
    let p = plugin(
        vec![policy("no-forbidden", no_reference(json!({})))],
        vec![binding(
            "warn",
            json!({"policyName": "no-forbidden", "validationActions": ["Warn", "Audit"]}),
        )],
        Fake::default(),
    );
    let a = write(json!({"reference": "forbidden"}));
    assert_eq!(p.check(&a).await, Ok(()));
    assert_eq!(
        *a.warnings.lock().expect("warnings"),
        vec!["Validation failed for ValidatingAdmissionPolicy 'no-forbidden' with binding 'warn': failed expression: object.spec.reference != 'forbidden'".to_string()]
    );
}

#[tokio::test]
async fn bindings_narrow_and_orphans_are_ignored() {
    let p = plugin(
        vec![policy("no-forbidden", no_reference(json!({})))],
        vec![
            binding(
                "dev-only",
                json!({"policyName": "no-forbidden", "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"env": "dev"}}}}),
            ),
            binding(
                "labelled",
                json!({"policyName": "no-forbidden", "validationActions": ["Deny"],
                "matchResources": {"objectSelector": {"matchLabels": {"check": "yes"}}}}),
            ),
            binding(
                "orphan",
                json!({"policyName": "missing", "validationActions": ["Deny"]}),
            ),
            json!({"metadata": {"name": "broken"}}),
        ],
        Fake::default(),
    );
    let mut a = write(json!({"reference": "forbidden"}));
    assert_eq!(p.check(&a).await, Ok(()), "namespace is prod, object unlabelled");
    a.object.as_mut().expect("object")["metadata"]["labels"] = json!({"check": "yes"});
    let s = p.check(&a).await.expect_err("labelled object");
    assert!(s.message.contains("with binding 'labelled'"), "{}", s.message);
}

#[tokio::test]
async fn no_bindings_means_not_configured() {
    let p = plugin(
        vec![policy("no-forbidden", no_reference(json!({})))],
        vec![],
        Fake::default(),
    );
    assert!(!p.configured());
    assert_eq!(p.check(&write(json!({"reference": "forbidden"}))).await, Ok(()));
}

#[tokio::test]
async fn params_select_values_and_missing_params_follow_the_action() {
    let spec = json!({
        "failurePolicy": "Fail",
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConstraints": flunder_rules(),
        "validations": [{"expression": "object.spec.reference != params.data.banned",
                         "messageExpression": "'reference ' + object.spec.reference + ' is banned'"}],
    });
    let mut banned = cm("banned", json!({}));
    banned["data"] = json!({"banned": "evil"});
    let params = Fake {
        objects: vec![("ns".into(), banned)],
        namespaced: true,
        fail: None,
    };
    let bind = |name: &str, param_ref: Value| {
        binding(
            name,
            json!({"policyName": "banned", "validationActions": ["Deny"], "paramRef": param_ref}),
        )
    };
    let p = plugin(
        vec![policy("banned", spec.clone())],
        vec![bind(
            "by-name",
            json!({"name": "banned", "parameterNotFoundAction": "Deny"}),
        )],
        params,
    );
    assert_eq!(p.check(&write(json!({"reference": "good"}))).await, Ok(()));
    let s = p.check(&write(json!({"reference": "evil"}))).await.expect_err("banned");
    assert!(
        s.message
            .ends_with("with binding 'by-name' denied request: reference evil is banned"),
        "{}",
        s.message
    );

    // Not found: Deny refuses as a configuration error, Allow admits.
    let p = plugin(
        vec![policy("banned", spec.clone())],
        vec![bind(
            "missing",
            json!({"name": "nope", "parameterNotFoundAction": "Deny"}),
        )],
        Fake {
            namespaced: true,
            ..Default::default()
        },
    );
    let s = p
        .check(&write(json!({"reference": "good"})))
        .await
        .expect_err("no params");
    assert_eq!(s.code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        s.message.ends_with("ValidatingAdmissionPolicy 'banned' with binding 'missing' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{}",
        s.message
    );
    let p = plugin(
        vec![policy("banned", spec.clone())],
        vec![bind(
            "allow",
            json!({"name": "nope", "parameterNotFoundAction": "Allow"}),
        )],
        Fake {
            namespaced: true,
            ..Default::default()
        },
    );
    assert_eq!(p.check(&write(json!({"reference": "evil"}))).await, Ok(()));

    // An unknown paramKind is the policy's configuration error; Ignore lets it pass.
    let mut unknown = spec.clone();
    unknown["paramKind"] = json!({"apiVersion": "example.com/v1", "kind": "Nope"});
    let p = plugin(
        vec![policy("banned", unknown.clone())],
        vec![bind("b", json!({"name": "x"}))],
        Fake::default(),
    );
    let s = p
        .check(&write(json!({"reference": "good"})))
        .await
        .expect_err("unknown kind");
    assert!(
        s.message.ends_with("ValidatingAdmissionPolicy 'banned' denied request: failed to configure policy: failed to find resource referenced by paramKind: 'example.com/v1, Kind=Nope'"),
        "{}",
        s.message
    );
    unknown["failurePolicy"] = json!("Ignore");
    let p = plugin(
        vec![policy("banned", unknown)],
        vec![bind("b", json!({"name": "x"}))],
        Fake::default(),
    );
    assert_eq!(p.check(&write(json!({"reference": "good"}))).await, Ok(()));
}

#[tokio::test]
async fn evaluation_errors_follow_the_failure_policy_and_the_first_denial_wins() {
    let failing = json!({"matchConstraints": flunder_rules(),
                         "validations": [{"expression": "object.spec.missing == 'x'"}]});
    let mut ignoring = failing.clone();
    ignoring["failurePolicy"] = json!("Ignore");
    let p = plugin(
        vec![
            policy("a-ignoring", ignoring),
            policy("b-failing", failing),
            policy("c-no-forbidden", no_reference(json!({}))),
        ],
        vec![
            binding("x", json!({"policyName": "a-ignoring", "validationActions": ["Deny"]})),
            binding("y", json!({"policyName": "b-failing", "validationActions": ["Deny"]})),
            binding(
                "z",
                json!({"policyName": "c-no-forbidden", "validationActions": ["Deny"]}),
            ),
        ],
        Fake::default(),
    );
    let s = p
        .check(&write(json!({"reference": "forbidden"})))
        .await
        .expect_err("denied");
    assert!(
        s.message.ends_with("ValidatingAdmissionPolicy 'b-failing' with binding 'y' denied request: expression 'object.spec.missing == 'x'' resulted in error: no such key: missing"),
        "{}",
        s.message
    );
    assert_eq!(
        s.details.as_ref().expect("details")["causes"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn namespace_object_and_cluster_scoped_requests() {
    let spec = json!({"matchConstraints": {"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"],
            "operations": ["*"], "resources": ["*"]}], "namespaceSelector": {"matchLabels": {"env": "prod"}}},
        "validations": [{"expression": "namespaceObject == null || namespaceObject.metadata.name != 'ns'",
                         "message": "not in ns"},
                        {"expression": "namespaceObject == null || (namespaceObject.status.phase == 'Active' && !has(namespaceObject.metadata.managedFields) && !has(namespaceObject.kind))"},
                        {"expression": "request.uid == ''"}]});
    let p = plugin(
        vec![policy("ns", spec)],
        vec![binding("b", json!({"policyName": "ns", "validationActions": ["Deny"]}))],
        Fake::default(),
    );
    let s = p.check(&write(json!({}))).await.expect_err("in ns");
    assert!(s.message.ends_with("denied request: not in ns"), "{}", s.message);
    assert_eq!(
        s.details.as_ref().expect("details")["causes"].as_array().map(Vec::len),
        Some(1)
    );
    // Cluster-scoped: the namespace selector does not apply, namespaceObject is null.
    let mut c = write(json!({}));
    c.namespace.clear();
    c.namespaced = false;
    assert_eq!(p.check(&c).await, Ok(()));
    // Unknown namespace: kube's lookup error, as a configuration error of the policy.
    let mut u = write(json!({}));
    u.namespace = "gone".into();
    let s = p.check(&u).await.expect_err("unknown namespace");
    assert!(
        s.message.ends_with(
            "ValidatingAdmissionPolicy 'ns' denied request: failed to configure policy: namespaces \"gone\" not found"
        ),
        "{}",
        s.message
    );
}

#[test]
fn generated_names_and_subresources_in_the_refusal() {
    let mut a = attrs();
    a.name.clear();
    a.object = Some(json!({"metadata": {"generateName": "fl-"}}));
    a.subresource = "status".into();
    let s = denial(&a, "m".into(), Some("Forbidden")).to_json();
    assert_eq!(
        s["message"], "flunders.wardle.example.com \"fl-\" is forbidden: m",
        "kube-apiserver 1.36 leaves the subresource out"
    );
    assert_eq!(s["details"]["kind"], "flunders");
    assert_eq!(s["code"], 403);
}

#[test]
fn a_kind_the_cluster_does_not_serve_is_not_waited_for() {
    let api = |code: u16| {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    };
    assert!(not_served(&watcher::Error::InitialListFailed(api(404))));
    assert!(
        !not_served(&watcher::Error::InitialListFailed(api(403))),
        "forbidden: RBAC is missing"
    );
    assert!(!not_served(&watcher::Error::WatchStartFailed(api(404))));
}
