//! ValidatingAdmissionPolicy, differentially: the same policies and bindings select Flunders of
//! the bundled server (`wardle.example.com`, through the real aggregation layer) and of
//! kube-apiserver's CRDs built from the same configuration (`wardle-crd.example.com`); the same
//! requests must be refused or admitted alike, with the same status code, reason, message,
//! details and `Warning` headers once the group name is replaced.
//!
//! It runs once per storage of the bundled server (embedded, etcd), one after the other, in
//! namespaces of its own: both serve the same group through the same APIServices.
//!
//! Without `KUBEBUILDER_ASSETS` the tests print why they are skipped and pass.
//!
//! Over 500 lines: one scenario, whose policies, cases and harness read best together.

use eao::testing::aggregated::{flunder, flunders, send_json, wardle_beside_crds, AggregatedServer, Storage};
use eao::testing::controlplane::ControlPlane;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);
const GROUP: &str = "wardle.example.com";
const CRD_GROUP: &str = "wardle-crd.example.com";
/// The namespaces of a run on one storage.
struct Namespaces {
    /// The namespace the policies' bindings select (by label).
    checked: String,
    /// A namespace no binding selects.
    other: String,
    /// A namespace only the param binding selects, without the params.
    no_params: String,
    /// The namespace of the policy with params selected by labels.
    limits: String,
}

impl Namespaces {
    fn of(storage: Storage) -> Namespaces {
        let sfx = match storage {
            Storage::Embedded => String::new(),
            _ => format!("-{}", storage.name()),
        };
        Namespaces {
            checked: format!("vap-checked{sfx}"),
            other: format!("vap-unchecked{sfx}"),
            no_params: format!("vap-no-params{sfx}"),
            limits: format!("vap-limits{sfx}"),
        }
    }
}

/// One run at a time (see the module comment).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `kubectl apply -f -` (or another verb) with `stdin`; panics on failure.
async fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = cp.run_kubectl(args, stdin, TIMEOUT).await;
    assert!(ok, "kubectl {args:?}: {err}");
    out
}

/// One answer: the status code, the body (a Status for failures) and the `Warning` headers,
/// with the CRD group written as the aggregated server's.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    code: u16,
    reason: Value,
    message: Value,
    details: Value,
    warnings: Vec<String>,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}\n  details: {}\n  warnings: {:?}",
            self.code, self.reason, self.message, self.details, self.warnings
        )
    }
}

fn norm(s: &str) -> String {
    s.replace(CRD_GROUP, GROUP)
}

async fn send(client: &kube::Client, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let (code, headers, bytes) = send_json(client, method, path, body).await;
    let warnings: Vec<String> = headers
        .get_all("warning")
        .iter()
        .map(|v| norm(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let failed = code >= 400;
    let pick = |k: &str| {
        if failed {
            serde_json::from_str(&norm(&body.get(k).cloned().unwrap_or_default().to_string())).unwrap_or_default()
        } else {
            Value::Null
        }
    };
    Answer {
        code,
        reason: pick("reason"),
        message: pick("message"),
        details: pick("details"),
        warnings,
    }
}

/// A dry-run create that shows whether a policy is applied yet: (policy, spec, applied?).
type Probe = (&'static str, Value, Box<dyn Fn(&Answer) -> bool>);

/// The policies: each request below is judged by at most one of them, so that the first
/// denial (kube-apiserver takes policies in map order) is the same on both sides.
fn policies() -> Value {
    let rules = json!({"resourceRules": [{"apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"], "resources": ["flunders"]}]});
    let policy = |name: &str, spec: Value| {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": name}, "spec": spec})
    };
    let binding = |name: &str, spec: Value| {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name}, "spec": spec})
    };
    let checked = json!({"namespaceSelector": {"matchLabels": {"vap": "checked"}}});
    json!({"apiVersion": "v1", "kind": "List", "items": [
        policy("vap-test-reference", json!({
            "failurePolicy": "Fail",
            "matchConstraints": rules,
            "variables": [{"name": "ref", "expression": "has(object.spec.reference) ? object.spec.reference : ''"}],
            "validations": [
                {"expression": "variables.ref != 'forbidden'"},
                {"expression": "!has(object.spec.size) || object.spec.size < 100", "reason": "Forbidden",
                 "messageExpression": "'size ' + string(object.spec.size) + ' is too big'"},
                {"expression": "variables.ref != 'explained'", "message": "explained is not allowed"},
                {"expression": "variables.ref != 'broken' || object.spec.nope == 1"},
                {"expression": "variables.ref != 'fallback'", "messageExpression": "string(object.spec.nope)",
                 "message": "the message when messageExpression fails"},
            ],
        })),
        binding("vap-test-reference-deny", json!({"policyName": "vap-test-reference",
            "validationActions": ["Deny"], "matchResources": checked})),
        policy("vap-test-warn", json!({
            "matchConstraints": rules,
            "matchConditions": [{"name": "has-ref", "expression": "has(object.spec.reference)"}],
            "validations": [{"expression": "object.spec.reference != 'warned'"}],
        })),
        binding("vap-test-warn", json!({"policyName": "vap-test-warn", "validationActions": ["Warn", "Audit"]})),
        policy("vap-test-banned", json!({
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": rules,
            "matchConditions": [{"name": "banned-only", "expression": "has(object.spec.reference) && object.spec.reference.startsWith('b')"}],
            "validations": [{"expression": "object.spec.reference != params.data.banned",
                             "messageExpression": "'reference ' + object.spec.reference + ' is banned by ' + params.metadata.name"}],
        })),
        binding("vap-test-banned", json!({"policyName": "vap-test-banned", "validationActions": ["Deny"],
            "paramRef": {"name": "banned", "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchExpressions": [
                {"key": "vap", "operator": "In", "values": ["checked", "no-params"]}]}}})),
        policy("vap-test-limits", json!({
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": rules,
            "validations": [{"expression": "!has(object.spec.size) || object.spec.size <= int(params.data.max)",
                             "messageExpression": "'size ' + string(object.spec.size) + ' exceeds ' + params.metadata.name"}],
        })),
        binding("vap-test-limits", json!({"policyName": "vap-test-limits", "validationActions": ["Deny"],
            "paramRef": {"selector": {"matchLabels": {"vap-limit": "yes"}}, "parameterNotFoundAction": "Allow"},
            "matchResources": {"namespaceSelector": {"matchLabels": {"vap": "limits"}}}})),
        policy("vap-test-status", json!({
            "matchConstraints": {"resourceRules": [{"apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["flunders/status"]}]},
            "validations": [{"expression": "!has(object.status) || !has(object.status.phase) || object.status.phase != 'bad'",
                             "message": "bad phase", "reason": "Forbidden"}],
        })),
        binding("vap-test-status", json!({"policyName": "vap-test-status", "validationActions": ["Deny"]})),
        policy("vap-test-delete", json!({
            "matchConstraints": {"resourceRules": [{"apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"],
                "operations": ["DELETE"], "resources": ["flunders"]}]},
            "validations": [{"expression": "object == null && oldObject.spec.reference != 'keep'",
                             "messageExpression": "'keep ' + oldObject.metadata.name + ' (' + request.operation + ')'"}],
        })),
        binding("vap-test-delete", json!({"policyName": "vap-test-delete", "validationActions": ["Deny"]})),
        // Evaluation errors: ignored under Ignore; under Fail, a Warn binding warns with them.
        policy("vap-test-ignore", json!({
            "failurePolicy": "Ignore",
            "matchConstraints": rules,
            "matchConditions": [{"name": "ignored", "expression": "has(object.spec.reference) && object.spec.reference == 'ignored'"}],
            "validations": [{"expression": "object.spec.nope == 1"}],
        })),
        binding("vap-test-ignore", json!({"policyName": "vap-test-ignore", "validationActions": ["Deny"]})),
        policy("vap-test-warn-error", json!({
            "failurePolicy": "Fail",
            "matchConstraints": rules,
            "matchConditions": [{"name": "warn-error", "expression": "has(object.spec.reference) && object.spec.reference == 'warn-error'"}],
            "validations": [{"expression": "object.spec.nope == 1"}],
        })),
        binding("vap-test-warn-error", json!({"policyName": "vap-test-warn-error", "validationActions": ["Warn"]})),
        // Cluster-scoped: the namespace selector does not apply, namespaceObject is null.
        policy("vap-test-fischers", json!({
            "matchConstraints": {"resourceRules": [{"apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"],
                "operations": ["CREATE"], "resources": ["fischers"]}],
                "namespaceSelector": {"matchLabels": {"vap": "checked"}}},
            "validations": [{"expression": "namespaceObject == null && (!has(object.disallowedFlunders) || size(object.disallowedFlunders) < 3)",
                             "messageExpression": "string(size(object.disallowedFlunders)) + ' disallowed flunders are too many'"}],
        })),
        binding("vap-test-fischers", json!({"policyName": "vap-test-fischers", "validationActions": ["Deny"]})),
    ]})
}

async fn setup(cp: &'static ControlPlane, storage: Storage, namespaces: &Namespaces) -> AggregatedServer {
    let binary = Path::new(env!("CARGO_BIN_EXE_extension-apiserver"));
    let server = wardle_beside_crds(cp, binary, CRD_GROUP, storage).await;
    let (ns, ns_other, ns_no_params, ns_limits) = (
        &namespaces.checked,
        &namespaces.other,
        &namespaces.no_params,
        &namespaces.limits,
    );
    // Namespaces, the param, and read access to params for the bundled server (kube-apiserver
    // reads them itself; the bundled server reads them with its ServiceAccount).
    let setup = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"vap": "checked"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_other}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_no_params, "labels": {"vap": "no-params"}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "banned", "namespace": ns},
         "data": {"banned": "bad"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_limits, "labels": {"vap": "limits"}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limit-a", "namespace": ns_limits,
         "labels": {"vap-limit": "yes"}}, "data": {"max": "150"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limit-b", "namespace": ns_limits,
         "labels": {"vap-limit": "yes"}}, "data": {"max": "120"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limit-c", "namespace": ns_limits},
         "data": {"max": "1"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "wardle-api-vap-params"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "wardle-api-vap-params"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "wardle-api-vap-params"},
         "subjects": [{"kind": "ServiceAccount", "name": "wardle-api-server", "namespace": "wardle-system"}]},
    ]});
    kubectl(cp, &["apply", "-f", "-"], Some(&setup.to_string())).await;
    kubectl(cp, &["apply", "-f", "-"], Some(&policies().to_string())).await;
    server
}

#[tokio::test]
async fn policies_judge_the_bundled_server_as_kube_apiserver_judges_crds() {
    judge(
        "policies_judge_the_bundled_server_as_kube_apiserver_judges_crds",
        Storage::Embedded,
    )
    .await;
}

#[tokio::test]
async fn policies_judge_the_bundled_server_on_etcd_as_kube_apiserver_judges_crds() {
    judge(
        "policies_judge_the_bundled_server_on_etcd_as_kube_apiserver_judges_crds",
        Storage::Etcd,
    )
    .await;
}

async fn judge(test: &str, storage: Storage) {
    let Some(cp) = ControlPlane::shared(test).await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let namespaces = Namespaces::of(storage);
    let (ns, ns_other, ns_no_params, ns_limits) = (
        namespaces.checked.as_str(),
        namespaces.other.as_str(),
        namespaces.no_params.as_str(),
        namespaces.limits.as_str(),
    );
    // Cluster-scoped Fischers of this run: the other run's stay on the CRD side.
    let fischer_suffix = match storage {
        Storage::Embedded => String::new(),
        _ => format!("-{}", storage.name()),
    };
    let server = setup(cp, storage, &namespaces).await;
    let client = cp.client().await.expect("client");
    let diag = |server: &AggregatedServer| format!("aggregated server log tail:\n{}", server.log_tail(40));

    // Both sides pick the policies up asynchronously (kube-apiserver's policy informer and its
    // one-second refresh, our reflectors): wait until each side applies them. The last probe's
    // policy and binding come after every other Flunder policy in the applied List, and each
    // informer delivers in order, so once it applies, the ones before it do too (probing only
    // the first three once let kube-apiserver miss `vap-test-warn-error` in a CI run).
    let probes: [Probe; 4] = [
        (
            "Deny",
            json!({"reference": "forbidden"}),
            Box::new(|a: &Answer| a.code == 422),
        ),
        (
            "Warn",
            json!({"reference": "warned"}),
            Box::new(|a: &Answer| !a.warnings.is_empty()),
        ),
        (
            "params",
            json!({"reference": "bad"}),
            Box::new(|a: &Answer| a.code == 422 && a.message.as_str().is_some_and(|m| m.contains("is banned by"))),
        ),
        (
            "Warn on an evaluation error",
            json!({"reference": "warn-error"}),
            Box::new(|a: &Answer| a.warnings.iter().any(|w| w.contains("vap-test-warn-error"))),
        ),
    ];
    for group in [GROUP, CRD_GROUP] {
        for (what, spec, ready) in &probes {
            let started = Instant::now();
            loop {
                let path = format!("{}?dryRun=All", flunders(group, ns));
                let a = send(&client, "POST", &path, Some(&flunder(group, "probe", spec.clone()))).await;
                if ready(&a) {
                    break;
                }
                assert!(
                    started.elapsed() < TIMEOUT,
                    "{group}: the {what} policy is not applied within {TIMEOUT:?}; last answer: {a}\n{}",
                    diag(&server)
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    // (what, method, namespace, name for the URL (PUT), object spec, expected code)
    type Case<'a> = (&'static str, &'static str, &'a str, &'static str, Value, u16);
    let cases: Vec<Case> = vec![
        ("admitted", "POST", ns, "", json!({"reference": "fine", "size": 1}), 201),
        (
            "default message",
            "POST",
            ns,
            "",
            json!({"reference": "forbidden"}),
            422,
        ),
        (
            "dry run refused too",
            "POST",
            ns,
            "?dryRun=All",
            json!({"reference": "forbidden"}),
            422,
        ),
        (
            "reason Forbidden and messageExpression",
            "POST",
            ns,
            "",
            json!({"size": 200}),
            403,
        ),
        ("message", "POST", ns, "", json!({"reference": "explained"}), 422),
        (
            "evaluation error under Fail",
            "POST",
            ns,
            "",
            json!({"reference": "broken"}),
            422,
        ),
        ("warning, admitted", "POST", ns, "", json!({"reference": "warned"}), 201),
        (
            "matchCondition false: not evaluated",
            "POST",
            ns,
            "",
            json!({"size": 2}),
            201,
        ),
        ("param value refused", "POST", ns, "", json!({"reference": "bad"}), 422),
        (
            "param value admitted",
            "POST",
            ns,
            "",
            json!({"reference": "benign"}),
            201,
        ),
        (
            "bindings narrowed by namespace",
            "POST",
            ns_other,
            "",
            json!({"reference": "forbidden"}),
            201,
        ),
        (
            "param not found, Deny (before matchConditions)",
            "POST",
            ns_no_params,
            "",
            json!({"reference": "forbidden"}),
            422,
        ),
        (
            "update refused",
            "PUT",
            ns,
            "fine",
            json!({"reference": "forbidden"}),
            422,
        ),
        (
            "update admitted",
            "PUT",
            ns,
            "fine",
            json!({"reference": "fine-too"}),
            200,
        ),
        (
            "messageExpression fails: message",
            "POST",
            ns,
            "",
            json!({"reference": "fallback"}),
            422,
        ),
        (
            "evaluation error under Ignore",
            "POST",
            ns,
            "",
            json!({"reference": "ignored"}),
            201,
        ),
        (
            "evaluation error under Fail, Warn",
            "POST",
            ns,
            "",
            json!({"reference": "warn-error"}),
            201,
        ),
        (
            "warned and refused",
            "POST",
            ns,
            "",
            json!({"reference": "warned", "size": 200}),
            403,
        ),
        (
            "first failed validation wins",
            "POST",
            ns,
            "",
            json!({"reference": "forbidden", "size": 200}),
            422,
        ),
        (
            "params by selector, one refuses",
            "POST",
            ns_limits,
            "",
            json!({"size": 130}),
            422,
        ),
        (
            "params by selector, all admit",
            "POST",
            ns_limits,
            "",
            json!({"size": 100}),
            201,
        ),
        (
            "status subresource refused",
            "PUT status",
            ns_other,
            "fine",
            json!({"phase": "bad"}),
            403,
        ),
        (
            "status subresource admitted",
            "PUT status",
            ns_other,
            "fine",
            json!({"phase": "good"}),
            200,
        ),
        ("delete refused (oldObject)", "DELETE", ns_other, "keep", json!({}), 422),
        ("delete admitted", "DELETE", ns_other, "drop", json!({}), 200),
    ];
    let mut n = 0;
    for (what, method, ns, extra, spec, expected) in cases {
        n += 1;
        let mut answers = Vec::new();
        for group in [GROUP, CRD_GROUP] {
            let collection = flunders(group, ns);
            if method == "POST" {
                let obj = flunder(group, &format!("f{n}"), spec.clone());
                answers.push(send(&client, "POST", &format!("{collection}{extra}"), Some(&obj)).await);
                continue;
            }
            // Updates, status updates and deletes: the object is created first (with `extra`
            // as its reference), then read for its resourceVersion.
            let name = format!("u{n}");
            let created = send(
                &client,
                "POST",
                &collection,
                Some(&flunder(group, &name, json!({"reference": extra}))),
            )
            .await;
            assert_eq!(created.code, 201, "{what}: create on {group}: {created}");
            let path = format!("{collection}/{name}");
            let current: Value = serde_json::from_str(
                &kubectl(
                    cp,
                    &["get", &format!("flunders.{group}"), &name, "-n", ns, "-o", "json"],
                    None,
                )
                .await,
            )
            .expect("json");
            let mut obj = flunder(group, &name, json!({"reference": extra}));
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            answers.push(match method {
                "PUT" => {
                    obj["spec"] = spec.clone();
                    send(&client, "PUT", &path, Some(&obj)).await
                }
                "PUT status" => {
                    obj["status"] = spec.clone();
                    send(&client, "PUT", &format!("{path}/status"), Some(&obj)).await
                }
                _ => send(&client, "DELETE", &path, None).await,
            });
        }
        let (ours, crd) = (&answers[0], &answers[1]);
        assert_eq!(
            ours,
            crd,
            "{what}: the bundled server and kube-apiserver (CRD, group renamed) disagree\n=== bundled server:\n{ours}\n=== kube-apiserver:\n{crd}\n{}",
            diag(&server)
        );
        assert_eq!(ours.code, expected, "{what}: {ours}");
        // The cases about warnings must have some (agreeing on none would prove nothing).
        let warns = what.contains("warn") || what.contains("Warn");
        assert_eq!(!ours.warnings.is_empty(), warns, "{what}: {ours}");
        eprintln!("{what}: {ours}");
    }

    // Cluster-scoped Fischers (once both sides apply the policy).
    let fischer = |group: &str, name: &str, list: Value| {
        json!({"apiVersion": format!("{group}/v1alpha1"), "kind": "Fischer",
            "metadata": {"name": name}, "disallowedFlunders": list})
    };
    for group in [GROUP, CRD_GROUP] {
        let started = Instant::now();
        loop {
            let path = format!("/apis/{group}/v1alpha1/fischers?dryRun=All");
            let a = send(
                &client,
                "POST",
                &path,
                Some(&fischer(group, "probe", json!(["a", "b", "c"]))),
            )
            .await;
            if a.code == 422 {
                break;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{group}: the Fischer policy is not applied within {TIMEOUT:?}; last answer: {a}\n{}",
                diag(&server)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for (what, list, expected) in [
        ("cluster-scoped refused", json!(["a", "b", "c"]), 422),
        ("cluster-scoped admitted", json!(["a"]), 201),
    ] {
        let mut answers = Vec::new();
        for group in [GROUP, CRD_GROUP] {
            let obj = fischer(group, &format!("fi-{expected}{fischer_suffix}"), list.clone());
            answers.push(send(&client, "POST", &format!("/apis/{group}/v1alpha1/fischers"), Some(&obj)).await);
        }
        let (ours, crd) = (&answers[0], &answers[1]);
        assert_eq!(
            ours,
            crd,
            "{what}: the bundled server and kube-apiserver (CRD, group renamed) disagree\n=== bundled server:\n{ours}\n=== kube-apiserver:\n{crd}\n{}",
            diag(&server)
        );
        assert_eq!(ours.code, expected, "{what}: {ours}");
        eprintln!("{what}: {ours}");
    }

    // What the answers say, beyond agreeing.
    let a = send(
        &client,
        "POST",
        &flunders(GROUP, ns),
        Some(&flunder(GROUP, "again", json!({"reference": "forbidden"}))),
    )
    .await;
    assert_eq!(a.reason, "Invalid");
    assert_eq!(
        a.message,
        "flunders.wardle.example.com \"again\" is forbidden: ValidatingAdmissionPolicy 'vap-test-reference' with binding 'vap-test-reference-deny' denied request: failed expression: variables.ref != 'forbidden'"
    );
    let w = send(
        &client,
        "POST",
        &format!("{}?dryRun=All", flunders(GROUP, ns)),
        Some(&flunder(GROUP, "w", json!({"reference": "warned"}))),
    )
    .await;
    assert_eq!(
        w.warnings,
        vec!["299 - \"Validation failed for ValidatingAdmissionPolicy 'vap-test-warn' with binding 'vap-test-warn': failed expression: object.spec.reference != 'warned'\"".to_string()]
    );

    // Removing the binding stops the checks (both sides, eventually).
    kubectl(
        cp,
        &["delete", "validatingadmissionpolicybinding", "vap-test-reference-deny"],
        None,
    )
    .await;
    let started = Instant::now();
    loop {
        let a = send(
            &client,
            "POST",
            &format!("{}?dryRun=All", flunders(GROUP, ns)),
            Some(&flunder(GROUP, "later", json!({"reference": "forbidden"}))),
        )
        .await;
        if a.code == 201 {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the deleted binding still applies: {a}\n{}",
            diag(&server)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(server);
}
