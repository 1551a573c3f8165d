//! The operator's behaviour on a real control plane (issue 13): failures reach the status,
//! foreign APIServices and `caSecretRef` Secrets are watched, an APIService waits for an
//! available server, an idle operator writes nothing, and two replicas share the work through
//! the Lease. Without `KUBEBUILDER_ASSETS` every test prints why it is skipped and passes.
//!
//! Time bounds here are behaviour bounds (a watch reacts in seconds, a resync would take a
//! minute), generous for a loaded machine; they are no performance measurements.

mod leader;
mod setup;

use eao::crd::ExtensionApiServer;
use eao::testing::pod::{LocalBinary, PodRunnerOptions, RunningPod};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use setup::{env, eventually, kubectl, serial, suffix, writes, Env, TIMEOUT};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One test's namespace and group, deleted (ExtensionApiServer first) when dropped.
struct Scope {
    env: &'static Env,
    client: Client,
    ns: String,
    group: String,
}

impl Scope {
    async fn new(env: &'static Env) -> Scope {
        let id = suffix();
        let ns = format!("beh-{id}");
        kubectl(env.cp, &["create", "namespace", &ns], b"");
        Scope {
            env,
            client: env.cp.client().await.expect("admin client"),
            ns,
            group: format!("beh{id}.example.com"),
        }
    }

    fn eas_api(&self) -> Api<ExtensionApiServer> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create(&self, spec: Value) {
        let obj: ExtensionApiServer = serde_json::from_value(json!({
            "apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
            "metadata": {"name": "s", "namespace": self.ns}, "spec": spec}))
        .expect("manifest");
        self.eas_api()
            .create(&PostParams::default(), &obj)
            .await
            .expect("admitted");
    }

    /// `(status, reason, message)` of a condition.
    async fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        let eas = self.eas_api().get_opt("s").await.ok()??;
        let c = eas.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
        Some((c.status, c.reason, c.message))
    }

    fn diagnostics(&self) -> String {
        kubectl(
            self.env.cp,
            &["get", "eas,deploy,secrets,events", "-n", &self.ns, "-o", "yaml"],
            b"",
        )
    }

    async fn wait_condition(&self, type_: &str, what: &str, ok: impl Fn(&(String, String, String)) -> bool) {
        eventually(
            what,
            TIMEOUT,
            || self.diagnostics(),
            || async { self.condition(type_).await.filter(|c| ok(c)) },
        )
        .await;
    }

    async fn cleanup(self) {
        let _ = self.eas_api().delete("s", &DeleteParams::default()).await;
        let gone = eventually("the ExtensionApiServer is deleted", TIMEOUT, String::new, || async {
            matches!(self.eas_api().get_opt("s").await, Ok(None)).then_some(())
        });
        gone.await;
        let _ = kubectl(self.env.cp, &["delete", "namespace", &self.ns, "--wait=false"], b"");
    }
}

fn image_spec(group: &str) -> Value {
    json!({"group": group, "versions": [{"name": "v1alpha1"}],
           "image": {"image": "example.com/server:1", "port": 8443}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_apply_is_ready_false_with_the_reason_and_a_warning_event() {
    let Some(env) = env("a_forbidden_apply_is_ready_false_with_the_reason_and_a_warning_event").await else {
        return;
    };
    let _serial = serial().await;
    let s = Scope::new(env).await;
    let mut spec = image_spec(&s.group);
    // The chart's operator (rbac.allowUserRules=false) holds no right on nodes, so it may not
    // grant one: kube-apiserver refuses the ClusterRole, or (with `escalate`, which the default
    // rbac.userRoles=true grants for the user roles) the binding, since there is no `bind`.
    spec["rules"] = json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]);
    s.create(spec).await;
    s.wait_condition("Ready", "Ready=False, reason Forbidden", |(st, r, _)| {
        st == "False" && r == "Forbidden"
    })
    .await;
    let (_, _, message) = s.condition("Ready").await.expect("Ready");
    assert!(
        message.contains("ClusterRole aggregation.dev:") || message.contains("ClusterRoleBinding aggregation.dev:"),
        "{message}"
    );
    assert!(message.contains("forbidden"), "the API's message: {message}");
    let (st, reason, _) = s.condition("ChildrenApplied").await.expect("ChildrenApplied");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "Forbidden"));
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(
        "a Warning Event with reason Forbidden",
        TIMEOUT,
        || s.diagnostics(),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("Forbidden") && e.type_.as_deref() == Some("Warning"))
        },
    )
    .await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ca_secret_ref_secret_is_noticed_promptly() {
    let Some(env) = env("a_replaced_ca_secret_ref_secret_is_noticed_promptly").await else {
        return;
    };
    let _serial = serial().await;
    let s = Scope::new(env).await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let put_ca = |name: &str| {
        let ca = eao::pki::generate_ca(
            name,
            eao::crd::KeyAlgorithm::EcdsaP256,
            eao::pki::DEFAULT_CA_VALIDITY,
            jiff::Timestamp::now().as_second(),
        )
        .expect("CA");
        let fingerprint = eao::pki::inspect(&ca.cert_pem).expect("facts").sha256_hex;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "my-ca"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": ca.cert_pem, "tls.key": ca.key_pem}}))
        .expect("secret");
        (secret, fingerprint)
    };
    let (first, first_fp) = put_ca("user-ca-1");
    secrets.create(&PostParams::default(), &first).await.expect("user CA");
    let mut spec = image_spec(&s.group);
    spec["certificates"] = json!({"caSecretRef": {"name": "my-ca"}});
    s.create(spec).await;
    let bundle = || async {
        let eas = s.eas_api().get("s").await.ok()?;
        let certs = eas.status?.certificates?;
        Some(
            certs
                .bundle
                .into_iter()
                .map(|c| c.sha256_fingerprint)
                .collect::<Vec<_>>(),
        )
    };
    eventually(
        "the user's CA is published",
        TIMEOUT,
        || s.diagnostics(),
        || async { bundle().await.filter(|b| b.contains(&first_fp)) },
    )
    .await;
    // Replacing the Secret's contents starts a rotation at once: the Secret is watched (by
    // metadata), not polled by the one-minute resync.
    let (second, second_fp) = put_ca("user-ca-2");
    let started = Instant::now();
    secrets
        .replace("my-ca", &PostParams::default(), &{
            let mut s2 = second;
            s2.metadata.resource_version = secrets
                .get("my-ca")
                .await
                .ok()
                .and_then(|o| o.metadata.resource_version);
            s2
        })
        .await
        .expect("replace the user CA");
    eventually(
        "the new CA is published beside the old one",
        Duration::from_secs(10),
        || s.diagnostics(),
        || async {
            bundle()
                .await
                .filter(|b| b.contains(&second_fp) && b.contains(&first_fp))
        },
    )
    .await;
    eprintln!("caSecretRef change noticed in {:.1}s", started.elapsed().as_secs_f64());
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_operator_sends_no_writes() {
    let Some(env) = env("an_idle_operator_sends_no_writes").await else {
        return;
    };
    let _serial = serial().await;
    let s = Scope::new(env).await;
    s.create(image_spec(&s.group)).await;
    // Converged: every child applied, the APIService waiting for a server that never comes.
    s.wait_condition(
        "APIServiceAvailable",
        "APIServiceAvailable=False, WaitingForServer",
        |(_, r, _)| r == "WaitingForServer",
    )
    .await;
    s.wait_condition("ChildrenApplied", "ChildrenApplied=True", |(st, _, _)| st == "True")
        .await;
    // The last writes' own watch events come back and are reconciled (debounced); then quiet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = writes(&env.metrics);
    // A status-only touch of a child (as the Deployment controller does) triggers a reconcile
    // that must find nothing to write.
    kubectl(
        env.cp,
        &["annotate", "deployment", "s", "-n", &s.ns, "unrelated=1"],
        b"",
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = writes(&env.metrics);
    assert_eq!(after - before, 0.0, "writes while idle\n{}", env.metrics.encode(0));
    s.cleanup().await;
}

fn runner_options() -> PodRunnerOptions {
    PodRunnerOptions {
        binaries: BTreeMap::from([(
            eao::serverconfig::SERVER_BINARY.to_string(),
            LocalBinary {
                path: PathBuf::from(env!("CARGO_BIN_EXE_extension-apiserver")),
                kubeconfig_env: vec!["EAS_KUBECONFIG".into()],
            },
        )]),
        image_entrypoint: vec![eao::serverconfig::SERVER_BINARY.to_string()],
    }
}

/// The APIService waits for the first available replica; a foreign APIService is not taken
/// while it exists, and is taken over within seconds once it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_service_waits_for_a_replica_and_a_deleted_foreign_one_is_taken_over() {
    let Some(env) = env("api_service_waits_for_a_replica_and_a_deleted_foreign_one_is_taken_over").await else {
        return;
    };
    let _serial = serial().await;
    let s = Scope::new(env).await;
    let apiservices: Api<APIService> = Api::all(s.client.clone());
    let (alpha, beta) = (format!("v1alpha1.{}", s.group), format!("v1beta1.{}", s.group));
    let foreign: APIService = serde_json::from_value(json!({
        "metadata": {"name": beta, "labels": {"app": "someone-else"}},
        "spec": {"group": s.group, "version": "v1beta1", "groupPriorityMinimum": 1000, "versionPriority": 10,
                 "service": {"namespace": "default", "name": "nowhere", "port": 443}, "insecureSkipTLSVerify": true}}))
    .expect("foreign APIService");
    apiservices
        .create(&PostParams::default(), &foreign)
        .await
        .expect("foreign");
    s.create(
        json!({"group": s.group, "versions": [{"name": "v1alpha1"}, {"name": "v1beta1"}],
        "server": {"resources": [{"kind": "Flunder", "plural": "flunders",
                                  "versions": [{"name": "v1alpha1"}, {"name": "v1beta1"}]}]}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let deployment = eventually(
        "the server Deployment",
        TIMEOUT,
        || s.diagnostics(),
        || async { deployments.get_opt("s").await.ok().flatten() },
    )
    .await;
    s.wait_condition("ChildrenApplied", "children applied", |(st, _, _)| st == "True")
        .await;
    // No pod runs: no APIService of ours may exist, however long we wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        apiservices.get_opt(&alpha).await.expect("get").is_none(),
        "registered without a replica"
    );

    let runner = RunningPod::start(env.cp, &deployment, runner_options()).expect("pod runner");
    let diagnostics = || format!("{}\n{}", s.diagnostics(), runner.log_tail(30));
    eventually(
        "the APIService once a replica is available",
        TIMEOUT,
        diagnostics,
        || async { apiservices.get_opt(&alpha).await.ok().flatten() },
    )
    .await;
    let (_, reason, message) = s.condition("APIServiceAvailable").await.expect("condition");
    assert_eq!(reason, "APIServiceConflict", "{message}");
    assert!(message.contains("not managed by this operator"), "{message}");

    // The foreign owner goes away: ours within seconds (the APIService watch), not a resync.
    let started = Instant::now();
    apiservices
        .delete(&beta, &DeleteParams::default())
        .await
        .expect("delete foreign");
    let ours = eventually(
        "the deleted foreign APIService taken over",
        Duration::from_secs(10),
        diagnostics,
        || async {
            apiservices.get_opt(&beta).await.ok().flatten().filter(|a| {
                a.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("aggregation.dev/owner-name").is_some())
            })
        },
    )
    .await;
    eprintln!(
        "foreign APIService taken over in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(ours.spec.and_then(|s| s.insecure_skip_tls_verify), Some(true));
    s.wait_condition("Ready", "Ready once the server is available", |(st, _, _)| st == "True")
        .await;
    s.cleanup().await;
    drop(runner);
}
