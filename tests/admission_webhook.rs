//! Admission webhooks on the real control plane: the bundled server (through the aggregation
//! layer) and kube-apiserver (serving the same resources as CRDs) call the same webhook
//! server, configured by the same Mutating/ValidatingWebhookConfigurations, and every answer
//! is compared: a mutation, a denial on create and on update, a webhook that times out under
//! `failurePolicy: Fail` and under `Ignore`, a webhook that answers with the wrong uid, and
//! one reached as a Service. Each step also asserts what it is about, so two servers that
//! agree on nothing fail too.
//!
//! It runs once per storage of the bundled server (embedded, etcd), one after the other: both
//! serve the same group through the same APIServices.
//!
//! Without `KUBEBUILDER_ASSETS` the tests print why they are skipped and pass.

use base64::Engine;
use eao::testing::aggregated::{crds_from_config, AggregatedServer, ServeOptions, Storage};
use eao::testing::controlplane::ControlPlane;
use eao::testing::webhook::{Answer, WebhookServer};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const GROUP: &str = "wardle.example.com";
const CRD_GROUP: &str = "wardle-crd.example.com";
const TIMEOUT: Duration = Duration::from_secs(90);

/// The webhook server's decisions, by path.
fn decide(path: &str, req: &Value) -> Answer {
    let obj = &req["object"];
    match path {
        // Labels every new object, and says so.
        "/mutate" => {
            let patch = if obj["metadata"]["labels"].is_object() {
                json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
            };
            let p = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            Answer {
                response: json!({"allowed": true, "patchType": "JSONPatch", "patch": p,
                                 "warnings": ["labelled by the test webhook"]}),
                delay: Duration::ZERO,
            }
        }
        "/deny" if obj["spec"]["reference"] == "forbidden" => Answer {
            response: json!({"allowed": false,
                             "status": {"code": 403, "reason": "Forbidden", "message": "reference is forbidden"}}),
            delay: Duration::ZERO,
        },
        "/slow" => Answer {
            response: json!({"allowed": true}),
            delay: Duration::from_secs(4),
        },
        "/wrong-uid" => Answer {
            response: json!({"allowed": true, "uid": "not-the-request"}),
            delay: Duration::ZERO,
        },
        "/service" if obj["spec"]["reference"] == "via-service" => Answer {
            response: json!({"allowed": false, "status": {"message": "denied through a Service"}}),
            delay: Duration::ZERO,
        },
        _ => Answer::allow(),
    }
}

/// Webhook configurations for both groups, limited to namespaces labelled for this test.
fn configurations(hooks: &WebhookServer) -> Value {
    let ca = base64::engine::general_purpose::STANDARD.encode(&hooks.ca.cert_pem);
    let rules = |ops: &[&str]| json!([{"operations": ops, "apiGroups": [GROUP, CRD_GROUP], "apiVersions": ["*"], "resources": ["flunders"]}]);
    let ns = json!({"matchLabels": {"webhook-test": "yes"}});
    let hook = |name: &str, path: &str, ops: &[&str], extra: Value| {
        let mut h = json!({
            "name": name, "clientConfig": {"url": hooks.url(path), "caBundle": ca},
            "rules": rules(ops), "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail", "namespaceSelector": ns, "timeoutSeconds": 2,
        });
        if let (Some(h), Some(e)) = (h.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        h
    };
    let selected = |k: &str, v: &str| json!({"objectSelector": {"matchLabels": {k: v}}});
    let service_hook = json!({
        "name": "service.eao.test",
        "clientConfig": {"service": {"namespace": "webhook-system", "name": "test-webhook",
                                     "port": 443, "path": "/service"}, "caBundle": ca},
        "rules": rules(&["CREATE"]), "sideEffects": "None", "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail", "namespaceSelector": ns, "timeoutSeconds": 2,
    });
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "eao-test-mutate"},
         "webhooks": [hook("mutate.eao.test", "/mutate", &["CREATE"], json!({"reinvocationPolicy": "Never"}))]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "eao-test-validate"},
         "webhooks": [
            hook("deny.eao.test", "/deny", &["CREATE", "UPDATE"], json!({})),
            hook("slow-fail.eao.test", "/slow", &["CREATE"], {
                let mut s = selected("slow", "fail");
                s["timeoutSeconds"] = json!(1);
                s
            }),
            hook("slow-ignore.eao.test", "/slow", &["CREATE"], {
                let mut s = selected("slow", "ignore");
                s["failurePolicy"] = json!("Ignore");
                s["timeoutSeconds"] = json!(1);
                s
            }),
            hook("wrong-uid.eao.test", "/wrong-uid", &["CREATE"], selected("broken", "yes")),
            service_hook,
         ]},
    ]})
}

async fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    cp.run_kubectl(args, stdin, TIMEOUT).await
}

fn flunders(client: &kube::Client, group: &str, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1alpha1", "Flunder"), "flunders");
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn flunder(group: &str, name: &str, reference: &str, labels: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1alpha1"), "kind": "Flunder",
        "metadata": {"name": name, "labels": labels}, "spec": {"reference": reference},
    }))
    .expect("flunder")
}

/// What a write answered: the object's labels, or the error's code, reason and message
/// (with the group and the webhook server's address written alike for both servers).
fn outcome(r: Result<DynamicObject, kube::Error>, hooks: &WebhookServer) -> Value {
    let uid = regex::Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").expect("regex");
    let norm = |s: &str| {
        let s = s
            .replace(CRD_GROUP, GROUP)
            .replace(&hooks.addr.to_string(), "<webhook>");
        uid.replace_all(&s, "<uid>").into_owned()
    };
    match r {
        Ok(o) => json!({"ok": true, "labels": o.metadata.labels}),
        Err(kube::Error::Api(s)) => json!({"code": s.code, "reason": s.reason, "message": norm(&s.message)}),
        Err(e) => json!({"client error": e.to_string()}),
    }
}

/// The outcomes of every step, on one side.
async fn scenario(client: &kube::Client, group: &str, ns: &str, hooks: &WebhookServer) -> Vec<(String, Value)> {
    let api = flunders(client, group, ns);
    let pp = PostParams::default();
    // The servers pick configurations up from their watches: wait until the denial is in force.
    let started = Instant::now();
    loop {
        let last = api.create(&pp, &flunder(group, "probe", "forbidden", json!({}))).await;
        match &last {
            Err(kube::Error::Api(s)) if s.code == 403 => break,
            Ok(_) => {
                let _ = api.delete("probe", &Default::default()).await;
            }
            Err(_) => {}
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{group}: the deny webhook never took effect; last answer: {}",
            outcome(last, hooks)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut out = Vec::new();
    let created = api
        .create(&pp, &flunder(group, "ok", "fine", json!({"app": "x"})))
        .await;
    out.push(("create, mutated".to_string(), outcome(created, hooks)));
    let denied = api.create(&pp, &flunder(group, "bad", "forbidden", json!({}))).await;
    out.push(("create, denied".to_string(), outcome(denied, hooks)));
    let mut current = api.get("ok").await.expect("created object");
    current.data["spec"]["reference"] = json!("forbidden");
    let updated = api.replace("ok", &pp, &current).await;
    out.push(("update, denied".to_string(), outcome(updated, hooks)));
    let slow = api
        .create(&pp, &flunder(group, "slow-fail", "fine", json!({"slow": "fail"})))
        .await;
    out.push(("timeout, Fail".to_string(), outcome(slow, hooks)));
    let ignored = api
        .create(&pp, &flunder(group, "slow-ignore", "fine", json!({"slow": "ignore"})))
        .await;
    out.push(("timeout, Ignore".to_string(), outcome(ignored, hooks)));
    let broken = api
        .create(&pp, &flunder(group, "broken", "fine", json!({"broken": "yes"})))
        .await;
    out.push(("wrong uid, Fail".to_string(), outcome(broken, hooks)));
    let service = api.create(&pp, &flunder(group, "svc", "via-service", json!({}))).await;
    out.push(("service, denied".to_string(), outcome(service, hooks)));
    out
}

/// One run at a time (see the module comment).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn webhooks_mutate_deny_and_fail_as_for_a_crd() {
    webhooks("webhooks_mutate_deny_and_fail_as_for_a_crd", Storage::Embedded).await;
}

#[tokio::test]
async fn webhooks_mutate_deny_and_fail_as_for_a_crd_on_etcd() {
    webhooks("webhooks_mutate_deny_and_fail_as_for_a_crd_on_etcd", Storage::Etcd).await;
}

async fn webhooks(test: &str, storage: Storage) {
    let Some(cp) = ControlPlane::shared(test).await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    // Namespaces of this run: the other run's objects stay (on the CRD side too).
    let (agg_ns, crd_ns) = match storage {
        Storage::Embedded => ("wh-agg".to_string(), "wh-crd".to_string()),
        _ => (
            format!("wh-agg-{}", storage.name()),
            format!("wh-crd-{}", storage.name()),
        ),
    };
    let (agg_ns, crd_ns) = (agg_ns.as_str(), crd_ns.as_str());
    let crds = crds_from_config(eao::apiserver::STANDALONE_CONFIG, CRD_GROUP).to_string();
    let (ok, _, err) = kubectl(cp, &["apply", "-f", "-"], Some(&crds)).await;
    assert!(ok, "CRDs: {err}");
    let server = AggregatedServer::start(
        cp,
        ServeOptions {
            storage,
            ..ServeOptions::wardle(Path::new(env!("CARGO_BIN_EXE_extension-apiserver")))
        },
    )
    .await
    .expect("aggregated server starts");
    let (ok, _, err) = kubectl(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/flunders.{CRD_GROUP}"),
        ],
        None,
    )
    .await;
    assert!(ok, "CRD established: {err}");

    // The webhook server listens on the host side of the network namespace, which both
    // kube-apiserver (on the host) and the bundled server (inside) reach.
    let hooks = WebhookServer::start(cp.addr().ip(), &["test-webhook.webhook-system.svc"], decide)
        .await
        .expect("webhook server");
    // The Service-based webhook: a selector-less Service whose EndpointSlice points at it.
    let svc = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "webhook-system"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "test-webhook", "namespace": "webhook-system"},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": hooks.addr.port()}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "test-webhook", "namespace": "webhook-system", "labels": {"kubernetes.io/service-name": "test-webhook"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [hooks.addr.ip().to_string()], "conditions": {"ready": true}}],
         "ports": [{"name": "https", "port": hooks.addr.port(), "protocol": "TCP"}]},
    ]});
    let (ok, _, err) = kubectl(cp, &["apply", "-f", "-"], Some(&svc.to_string())).await;
    assert!(ok, "webhook Service: {err}");
    for ns in [agg_ns, crd_ns] {
        let manifest = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"webhook-test": "yes"}}});
        let (ok, _, err) = kubectl(cp, &["apply", "-f", "-"], Some(&manifest.to_string())).await;
        assert!(ok, "namespace {ns}: {err}");
    }
    let (ok, _, err) = kubectl(cp, &["apply", "-f", "-"], Some(&configurations(&hooks).to_string())).await;
    assert!(ok, "webhook configurations: {err}");

    let client = cp.client().await.expect("client");
    let (ours, crd) = tokio::join!(
        scenario(&client, GROUP, agg_ns, &hooks),
        scenario(&client, CRD_GROUP, crd_ns, &hooks)
    );
    let log = || server.log_tail(40);
    for ((step, a), (_, c)) in ours.iter().zip(&crd) {
        println!("{step}:\n  bundled: {a}\n  kube:    {c}");
    }
    for ((step, a), (_, c)) in ours.iter().zip(&crd) {
        assert_eq!(a, c, "{step}: the bundled server and kube-apiserver differ\n{}", log());
    }
    // What each step is about.
    let by = |s: &str| &ours.iter().find(|(k, _)| k == s).expect("step").1;
    assert_eq!(by("create, mutated")["labels"], json!({"app": "x", "mutated": "yes"}));
    assert_eq!(by("create, denied")["code"], 403);
    assert_eq!(
        by("create, denied")["message"],
        "admission webhook \"deny.eao.test\" denied the request: reference is forbidden"
    );
    assert_eq!(by("update, denied")["code"], 403);
    assert_eq!(by("timeout, Fail")["code"], 500);
    assert!(by("timeout, Fail")["message"].as_str().is_some_and(|m| m.starts_with("Internal error occurred: failed calling webhook \"slow-fail.eao.test\": failed to call webhook: Post \"https://<webhook>/slow?timeout=1s\"")), "{}", by("timeout, Fail"));
    assert_eq!(by("timeout, Ignore")["ok"], true);
    assert_eq!(by("wrong uid, Fail")["code"], 500);
    assert_eq!(
        by("service, denied")["message"],
        "admission webhook \"service.eao.test\" denied the request: denied through a Service"
    );

    // What the webhook was told, by each server, about the same request.
    let reviews = hooks.reviews("/deny");
    let of = |group: &str| {
        reviews
            .iter()
            .find(|r| r["kind"]["group"] == group && r["name"] == "bad")
            .cloned()
            .unwrap_or_else(|| panic!("no review of {group} bad"))
    };
    let (a, c) = (of(GROUP), of(CRD_GROUP));
    let comparable = |r: &Value| {
        let text = r.to_string().replace(CRD_GROUP, GROUP).replace(crd_ns, agg_ns);
        let mut r: Value = serde_json::from_str(&text).expect("json");
        r["uid"] = json!("<uid>");
        if let Some(m) = r["object"]["metadata"].as_object_mut() {
            for k in ["uid", "creationTimestamp", "managedFields"] {
                if m.contains_key(k) {
                    m.insert(k.into(), json!("<varies>"));
                }
            }
        }
        r
    };
    println!(
        "review (bundled): {}\nreview (kube):    {}",
        comparable(&a),
        comparable(&c)
    );
    assert_eq!(comparable(&a), comparable(&c), "the AdmissionReview requests differ");

    // Warnings reach kubectl, and a server-side dry run calls the webhooks with dryRun set.
    let mut warned = Vec::new();
    for (group, ns) in [(GROUP, agg_ns), (CRD_GROUP, crd_ns)] {
        let obj = flunder(group, "dry", "forbidden-not", json!({}));
        let manifest = serde_json::to_string(&obj).expect("json");
        let (ok, _, err) = kubectl(
            cp,
            &["create", "-n", ns, "--dry-run=server", "-f", "-"],
            Some(&manifest),
        )
        .await;
        assert!(ok, "{group}: dry run: {err}");
        warned.push(
            err.lines()
                .filter(|l| l.starts_with("Warning:"))
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
        let dry = hooks
            .reviews("/deny")
            .into_iter()
            .find(|r| r["kind"]["group"] == group && r["name"] == "dry")
            .unwrap_or_else(|| panic!("{group}: no review of the dry run"));
        assert_eq!(dry["dryRun"], true, "{group}");
        assert_eq!(dry["options"]["dryRun"], json!(["All"]), "{group}");
        assert!(
            flunders(&client, group, ns)
                .get_opt("dry")
                .await
                .expect("get")
                .is_none(),
            "{group}: a dry run stores nothing"
        );
    }
    assert_eq!(warned[0], ["Warning: labelled by the test webhook"]);
    assert_eq!(warned[0], warned[1], "warnings differ");
    assert_eq!(a["object"]["spec"], c["object"]["spec"]);
    assert_eq!(a["kind"]["kind"], "Flunder");
    assert_eq!(a["namespace"], agg_ns);
}
