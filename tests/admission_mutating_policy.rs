//! MutatingAdmissionPolicy, differentially: the same policies and bindings select Flunders of
//! the bundled server (`wardle.example.com`, through the real aggregation layer) and of
//! kube-apiserver's CRDs built from the same configuration (`wardle-crd.example.com`); the same
//! writes must be mutated alike (the stored objects' labels and spec) or refused alike (status
//! code, reason, message and details once the group name is replaced).
//!
//! It runs once per storage of the bundled server (embedded, etcd), one after the other, in
//! namespaces of its own: both serve the same group through the same APIServices.
//!
//! Without `KUBEBUILDER_ASSETS` the tests print why they are skipped and pass.

use eao::testing::aggregated::{flunder, flunders, send_json, wardle_beside_crds, AggregatedServer, Storage};
use eao::testing::controlplane::ControlPlane;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);
const GROUP: &str = "wardle.example.com";
const CRD_GROUP: &str = "wardle-crd.example.com";

/// The namespaces of a run on `storage`: one the bindings select (by label), and one no binding
/// selects.
fn namespaces(storage: Storage) -> (String, String) {
    match storage {
        Storage::Embedded => ("map-checked".into(), "map-unchecked".into()),
        _ => (
            format!("map-checked-{}", storage.name()),
            format!("map-unchecked-{}", storage.name()),
        ),
    }
}

/// One run at a time (see the module comment).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = cp.run_kubectl(args, stdin, TIMEOUT).await;
    assert!(ok, "kubectl {args:?}: {err}");
    out
}

/// A request's status code and body, with the CRD group written as the aggregated server's.
async fn send(client: &kube::Client, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (code, _, bytes) = send_json(client, method, path, body).await;
    let text = String::from_utf8_lossy(&bytes).replace(CRD_GROUP, GROUP);
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// What must agree: for a refusal the Status' code, reason, message and details; for a
/// write the stored object's labels and spec.
fn outcome(code: u16, body: &Value) -> Value {
    if code >= 400 {
        json!({"code": code, "reason": body["reason"], "message": body["message"], "details": body["details"]})
    } else {
        json!({"code": code, "labels": body["metadata"]["labels"], "spec": body["spec"]})
    }
}

/// The policies; each is limited by a matchCondition on `spec.reference` except the label.
fn policies() -> Value {
    let rules = json!({"resourceRules": [{"apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"], "resources": ["flunders"]}]});
    let when = |reference: &str| json!([{"name": "reference", "expression": format!("has(object.spec.reference) && object.spec.reference == '{reference}'")}]);
    let apply = |expr: &str| json!({"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": expr}});
    let policy = |name: &str, spec: Value| {
        let mut full = json!({"matchConstraints": rules, "failurePolicy": "Fail", "reinvocationPolicy": "Never"});
        if let (Some(f), Some(s)) = (full.as_object_mut(), spec.as_object()) {
            f.extend(s.clone());
        }
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
               "metadata": {"name": name}, "spec": full})
    };
    let binding = |name: &str| {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
               "metadata": {"name": name}, "spec": {"policyName": name,
               "matchResources": {"namespaceSelector": {"matchLabels": {"map": "checked"}}}}})
    };
    let failing = "Object{spec: Object.spec{size: object.spec.nope}}";
    json!({"apiVersion": "v1", "kind": "List", "items": [
        policy("map-test-label", json!({
            "matchConditions": [{"name": "not-skipped", "expression": "!has(object.spec.reference) || object.spec.reference != 'skip'"}],
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression":
                "has(object.metadata.labels) ? [JSONPatch{op: 'add', path: '/metadata/labels/map-label', value: 'yes'}] : [JSONPatch{op: 'add', path: '/metadata/labels', value: {'map-label': 'yes'}}]"}}],
        })),
        binding("map-test-label"),
        policy("map-test-size", json!({"matchConditions": when("sized"),
            "mutations": [apply("Object{spec: Object.spec{size: 42}}")]})),
        binding("map-test-size"),
        policy("map-test-fail", json!({"matchConditions": when("fail"), "mutations": [apply(failing)]})),
        binding("map-test-fail"),
        // Under Ignore the failing mutation is skipped and the next one still applies.
        policy("map-test-ignore", json!({"failurePolicy": "Ignore", "matchConditions": when("ignore"),
            "mutations": [apply(failing), apply("Object{spec: Object.spec{size: 7}}")]})),
        binding("map-test-ignore"),
        // Apply configurations kube refuses: a field the schema does not declare, an atomic list.
        policy("map-test-undeclared", json!({"matchConditions": when("undeclared"),
            "mutations": [apply("Object{spec: Object.spec{extra: 1}}")]})),
        binding("map-test-undeclared"),
        policy("map-test-atomic", json!({
            "matchConstraints": {"resourceRules": [{"apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"],
                "operations": ["CREATE"], "resources": ["fischers"]}]},
            "matchConditions": [{"name": "atomic", "expression": "object.metadata.name == 'atomic'"}],
            "mutations": [apply("Object{disallowedFlunders: ['x']}")]})),
        binding("map-test-atomic"),
        // Reinvocation: whichever order the two run in, the copy ends up with the grown size
        // because the copying policy asks to be reinvoked (this server runs them in name order,
        // copy first).
        policy("map-test-reinvoke-a-copy", json!({"reinvocationPolicy": "IfNeeded", "matchConditions": when("reinvoke"),
            "mutations": [apply("Object{metadata: Object.metadata{labels: {'copy': string(object.spec.size)}}}")]})),
        binding("map-test-reinvoke-a-copy"),
        policy("map-test-reinvoke-b-grow", json!({"matchConditions": when("reinvoke"),
            "mutations": [apply("Object{spec: Object.spec{size: 99}}")]})),
        binding("map-test-reinvoke-b-grow"),
        policy("map-test-bad-patch", json!({"matchConditions": when("bad-patch"),
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": "[JSONPatch{op: 'remove', path: '/spec/nothere'}]"}}]})),
        binding("map-test-bad-patch"),
        policy("map-test-mistyped", json!({"matchConditions": when("mistyped"),
            "mutations": [apply("Object{spec: Object.spec.wrong{size: 5}}")]})),
        binding("map-test-mistyped"),
    ]})
}

async fn setup(cp: &'static ControlPlane, storage: Storage, ns: &str, ns_other: &str) -> AggregatedServer {
    let binary = Path::new(env!("CARGO_BIN_EXE_extension-apiserver"));
    let server = wardle_beside_crds(cp, binary, CRD_GROUP, storage).await;
    let namespaces = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"map": "checked"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_other}},
    ]});
    kubectl(cp, &["apply", "-f", "-"], Some(&namespaces.to_string())).await;
    kubectl(cp, &["apply", "-f", "-"], Some(&policies().to_string())).await;
    server
}

#[tokio::test]
async fn mutating_policies_mutate_the_bundled_server_as_kube_apiserver_mutates_crds() {
    mutating_policies(
        "mutating_policies_mutate_the_bundled_server_as_kube_apiserver_mutates_crds",
        Storage::Embedded,
    )
    .await;
}

#[tokio::test]
async fn mutating_policies_mutate_the_bundled_server_on_etcd_as_kube_apiserver_mutates_crds() {
    mutating_policies(
        "mutating_policies_mutate_the_bundled_server_on_etcd_as_kube_apiserver_mutates_crds",
        Storage::Etcd,
    )
    .await;
}

async fn mutating_policies(test: &str, storage: Storage) {
    let Some(cp) = ControlPlane::shared(test).await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let (ns, ns_other) = namespaces(storage);
    let (ns, ns_other) = (ns.as_str(), ns_other.as_str());
    let server = setup(cp, storage, ns, ns_other).await;
    let client = cp.client().await.expect("client");
    let diag = |server: &AggregatedServer| format!("aggregated server log tail:\n{}", server.log_tail(40));

    // Both sides pick the policies up asynchronously: wait until each side applies each.
    type Ready = Box<dyn Fn(u16, &Value) -> bool>;
    let probes: [(&str, Ready); 8] = [
        ("plain", Box::new(|_, b| b["metadata"]["labels"]["map-label"] == "yes")),
        ("sized", Box::new(|_, b| b["spec"]["size"] == 42)),
        ("fail", Box::new(|c, _| c == 403)),
        ("ignore", Box::new(|_, b| b["spec"]["size"] == 7)),
        ("undeclared", Box::new(|c, _| c == 403)),
        ("reinvoke", Box::new(|_, b| b["metadata"]["labels"]["copy"] == "99")),
        ("bad-patch", Box::new(|c, _| c == 403)),
        ("mistyped", Box::new(|c, _| c == 403)),
    ];
    for group in [GROUP, CRD_GROUP] {
        for (reference, ready) in &probes {
            let started = Instant::now();
            loop {
                let path = format!("{}?dryRun=All", flunders(group, ns));
                let obj = flunder(group, "probe", json!({"reference": reference, "size": 1}));
                let (code, body) = send(&client, "POST", &path, Some(&obj)).await;
                if ready(code, &body) {
                    break;
                }
                assert!(
                    started.elapsed() < TIMEOUT,
                    "{group}: the {reference} policy is not applied within {TIMEOUT:?}; last answer: {code} {body}\n{}",
                    diag(&server)
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    // (what, namespace, spec at create, spec of an update (PUT) if any, expected code)
    type Case<'a> = (&'static str, &'a str, Value, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        (
            "JSONPatch adds a label",
            ns,
            json!({"reference": "plain", "size": 1}),
            None,
            201,
        ),
        (
            "matchCondition false skips",
            ns,
            json!({"reference": "skip", "size": 1}),
            None,
            201,
        ),
        (
            "ApplyConfiguration sets a field",
            ns,
            json!({"reference": "sized", "size": 1}),
            None,
            201,
        ),
        (
            "failing expression under Fail",
            ns,
            json!({"reference": "fail"}),
            None,
            403,
        ),
        (
            "failing expression under Ignore",
            ns,
            json!({"reference": "ignore", "size": 1}),
            None,
            201,
        ),
        (
            "namespace not selected",
            ns_other,
            json!({"reference": "sized", "size": 1}),
            None,
            201,
        ),
        (
            "update mutated",
            ns,
            json!({"reference": "plain", "size": 1}),
            Some(json!({"reference": "sized", "size": 2})),
            200,
        ),
        (
            "update refused",
            ns,
            json!({"reference": "plain"}),
            Some(json!({"reference": "fail"})),
            403,
        ),
        (
            "undeclared field refused",
            ns,
            json!({"reference": "undeclared"}),
            None,
            403,
        ),
        (
            "reinvoked after a later change",
            ns,
            json!({"reference": "reinvoke", "size": 1}),
            None,
            201,
        ),
        (
            "JSON Patch that does not apply",
            ns,
            json!({"reference": "bad-patch"}),
            None,
            403,
        ),
        (
            "construction named off its field path",
            ns,
            json!({"reference": "mistyped"}),
            None,
            403,
        ),
    ];
    for (n, (what, ns, spec, update, expected)) in cases.into_iter().enumerate() {
        let mut outcomes = Vec::new();
        for group in [GROUP, CRD_GROUP] {
            let name = format!("f{n}");
            let collection = flunders(group, ns);
            let (mut code, mut body) =
                send(&client, "POST", &collection, Some(&flunder(group, &name, spec.clone()))).await;
            if let Some(new_spec) = &update {
                assert_eq!(code, 201, "{what}: create on {group}: {body}");
                // The answer was read with the group renamed: send it back as the group's.
                let mut obj = body.clone();
                obj["apiVersion"] = json!(format!("{group}/v1alpha1"));
                obj["spec"] = new_spec.clone();
                (code, body) = send(&client, "PUT", &format!("{collection}/{name}"), Some(&obj)).await;
            }
            if code < 400 {
                // What was stored, not only what was answered.
                let (c, stored) = send(&client, "GET", &format!("{collection}/{name}"), None).await;
                assert_eq!(c, 200, "{what}: get on {group}: {stored}");
                assert_eq!(
                    outcome(code, &stored),
                    outcome(code, &body),
                    "{what}: {group} stored what it answered"
                );
                body = stored;
            }
            outcomes.push(outcome(code, &body));
        }
        let (ours, crd) = (&outcomes[0], &outcomes[1]);
        assert_eq!(
            ours,
            crd,
            "{what}: the bundled server and kube-apiserver (CRD, group renamed) disagree\n=== bundled server:\n{ours}\n=== kube-apiserver:\n{crd}\n{}",
            diag(&server)
        );
        assert_eq!(ours["code"], expected, "{what}: {ours}");
        eprintln!("{what}: {ours}");
    }
    // An atomic list in an apply configuration (cluster-scoped Fischers), once applied.
    let mut outcomes = Vec::new();
    for group in [GROUP, CRD_GROUP] {
        let fischer = json!({"apiVersion": format!("{group}/v1alpha1"), "kind": "Fischer",
            "metadata": {"name": "atomic"}, "disallowedFlunders": ["a"]});
        let started = Instant::now();
        loop {
            let (code, body) = send(
                &client,
                "POST",
                &format!("/apis/{group}/v1alpha1/fischers"),
                Some(&fischer),
            )
            .await;
            if code == 403 {
                outcomes.push(outcome(code, &body));
                break;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{group}: the atomic policy is not applied within {TIMEOUT:?}; last answer: {code} {body}\n{}",
                diag(&server)
            );
            if code < 400 {
                send(
                    &client,
                    "DELETE",
                    &format!("/apis/{group}/v1alpha1/fischers/atomic"),
                    None,
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(
        outcomes[0],
        outcomes[1],
        "atomic list: the bundled server and kube-apiserver disagree\n{}",
        diag(&server)
    );
    eprintln!("atomic list refused: {}", outcomes[0]);

    // The cases are not vacuous: the mutations did take place.
    let get = |ns: &str, name: &str| {
        let path = format!("{}/{name}", flunders(GROUP, ns));
        let client = client.clone();
        async move { send(&client, "GET", &path, None).await.1 }
    };
    assert_eq!(get(ns, "f0").await["metadata"]["labels"]["map-label"], "yes");
    assert!(get(ns, "f1").await["metadata"]["labels"].is_null());
    assert_eq!(get(ns, "f2").await["spec"]["size"], 42);
    assert_eq!(get(ns, "f4").await["spec"]["size"], 7);
    assert_eq!(get(ns_other, "f5").await["spec"]["size"], 1);
    assert_eq!(get(ns, "f6").await["spec"]["size"], 42);
    drop(server);
}
