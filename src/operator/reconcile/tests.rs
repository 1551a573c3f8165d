//! Reconcile flows against the in-memory API server: the exact requests, drift repair,
//! certificate stability, conflicts, aggregation checks and the finalizer path.
//!
//! Longer than 500 lines because it is a list of independent scenarios sharing one harness.

use super::build::BuildOptions;
use super::*;
use crate::crd::{ApiVersion, ExtensionApiServerSpec};
use crate::operator::events::Recorder;
use crate::operator::metrics::Metrics;
use crate::testing::fake_api::FakeApi;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::Store;
use serde_json::{json, Value};

const NS: &str = "wardle-system";
const NOW: i64 = 1_800_000_000;
const EAS_PATH: &str = "/apis/aggregation.dev/v1alpha1/namespaces/wardle-system/extensionapiservers/wardle";
const CA_SECRET: &str = "/api/v1/namespaces/wardle-system/secrets/wardle-ca";
const SERVING_SECRET: &str = "/api/v1/namespaces/wardle-system/secrets/wardle-serving-cert";
const APISERVICE: &str = "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.wardle.example.com";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/wardle-system/deployments/wardle";
const AUTH_CM: &str = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

use crate::crd::wardle_spec as spec;

/// The wardle spec with a second version, `v1beta1`.
fn spec_with_beta() -> ExtensionApiServerSpec {
    let mut s = spec();
    s.versions.push(ApiVersion {
        name: "v1beta1".into(),
        group_priority_minimum: 1000,
        version_priority: 20,
    });
    s
}

struct Harness {
    api: FakeApi,
    /// The caches' writing halves: filled from `api` before every reconcile, as the watches
    /// would once their events are delivered.
    writers: std::sync::Mutex<cache::Writers>,
    ctx: Arc<Context>,
    clock: Arc<std::sync::atomic::AtomicI64>,
    /// What the probe reports each replica serves.
    served: Arc<std::sync::Mutex<Vec<probe::Observed>>>,
}

fn ca_pem(cn: &str) -> String {
    crate::pki::generate_ca(
        cn,
        crate::crd::KeyAlgorithm::EcdsaP256,
        crate::pki::DEFAULT_CA_VALIDITY,
        NOW,
    )
    .unwrap()
    .cert_pem
}

impl Harness {
    fn new() -> Self {
        Self::with_store(None)
    }

    fn with_store(store: Option<Store<ExtensionApiServer>>) -> Self {
        let api = FakeApi::default();
        api.put(
            AUTH_CM,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
                   "data": {"requestheader-client-ca-file": ca_pem("front-proxy-ca"), "client-ca-file": ca_pem("client-ca"),
                            "requestheader-allowed-names": "[\"front-proxy-client\"]"}}),
        );
        let client = api.client();
        let clock = Arc::new(std::sync::atomic::AtomicI64::new(NOW));
        let c = clock.clone();
        let served: Arc<std::sync::Mutex<Vec<probe::Observed>>> = Arc::default();
        let (caches, writers) = cache::caches(cache::SyncGate::open());
        let ctx = Arc::new(Context {
            caches,
            backoff: Default::default(),
            registration_served: Default::default(),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "extension-apiserver-operator".into(),
                    instance: None,
                },
            ),
            client,
            metrics: Arc::new(Metrics::default()),
            options: BuildOptions {
                default_server_image: "ghcr.io/example/eao:test".into(),
                register_before_available: false,
            },
            clock: Arc::new(move || c.load(std::sync::atomic::Ordering::SeqCst)),
            store,
            probe: {
                let served = served.clone();
                Arc::new(move |_client, _target| {
                    let served = served.lock().unwrap().clone();
                    Box::pin(async move { Ok(served) })
                })
            },
        });
        Harness {
            api,
            writers: std::sync::Mutex::new(writers),
            ctx,
            clock,
            served,
        }
    }

    /// Stores an ExtensionApiServer (with our finalizer, as after the first reconcile).
    fn put_eas(&self, spec: ExtensionApiServerSpec) {
        let mut eas = ExtensionApiServer::new("wardle", spec);
        eas.metadata.namespace = Some(NS.into());
        eas.metadata.uid = Some("uid-wardle".into());
        eas.metadata.generation = Some(1);
        eas.metadata.finalizers = Some(vec![FINALIZER.into()]);
        self.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
    }

    fn eas(&self) -> ExtensionApiServer {
        serde_json::from_value(self.api.get(EAS_PATH).expect("EAS stored")).unwrap()
    }

    async fn reconcile(&self) -> Result<Action> {
        self.sync_caches();
        reconcile(Arc::new(self.eas()), self.ctx.clone()).await
    }

    /// Makes the server Deployment report one available replica, as kube-controller-manager
    /// would once a pod is ready.
    fn make_available(&self) {
        let mut d = self.api.get(DEPLOYMENT).expect("Deployment applied");
        d["status"] = json!({"availableReplicas": 1, "readyReplicas": 1, "replicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"}]});
        self.api.put(DEPLOYMENT, d);
    }

    /// The first reconcile, then one with an available server, so the APIService exists.
    async fn converge(&self) {
        self.reconcile().await.unwrap();
        self.make_available();
        self.reconcile().await.unwrap();
    }

    fn sync_caches(&self) {
        crate::testing::fake_caches::sync(&self.api, &mut self.writers.lock().unwrap());
    }

    /// Requests other than Events, as `METHOD path`.
    fn calls(&self) -> Vec<String> {
        self.api
            .take_requests()
            .iter()
            .filter(|r| !r.path.contains("/events"))
            .map(|r| r.line())
            .collect()
    }

    fn event_reasons(&self) -> Vec<String> {
        let st = self.api.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .filter_map(|(_, v)| v["reason"].as_str().map(str::to_string))
            .collect()
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let eas = self.eas();
        let c = eas
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status, c.reason, c.message)
    }
}

fn secret_data(obj: &Value, key: &str) -> String {
    use base64::Engine;
    let b64 = obj["data"][key].as_str().unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[tokio::test]
async fn first_reconcile_only_adds_the_finalizer() {
    let h = Harness::new();
    let mut eas = ExtensionApiServer::new("wardle", spec());
    eas.metadata.namespace = Some(NS.into());
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
    h.reconcile().await.unwrap();
    let reqs = h.api.take_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].line(), format!("PATCH {EAS_PATH}"));
    assert!(reqs[0].content_type.contains("json-patch"));
    assert_eq!(h.eas().metadata.finalizers, Some(vec![FINALIZER.to_string()]));
}

#[tokio::test]
async fn creates_every_child_with_exact_requests() {
    let h = Harness::new();
    h.put_eas(spec());
    let action = h.reconcile().await.unwrap();
    let calls = h.calls();
    // Nothing is read but whether apiregistration is served (once per process): the caches
    // show no child, so every child is applied, except the APIService, which waits for an
    // available server replica.
    let expected: Vec<String> = [
        "GET /apis/apiregistration.k8s.io/v1",
        &format!("PATCH {CA_SECRET}"),
        &format!("PATCH {SERVING_SECRET}"),
        "PATCH /api/v1/namespaces/wardle-system/serviceaccounts/wardle",
        "PATCH /api/v1/namespaces/wardle-system/configmaps/wardle-config",
        "PATCH /api/v1/namespaces/wardle-system/persistentvolumeclaims/wardle-data",
        "PATCH /api/v1/namespaces/wardle-system/services/wardle",
        &format!("PATCH {DEPLOYMENT}"),
        "PATCH /apis/rbac.authorization.k8s.io/v1/clusterroles/aggregation.dev:wardle-system:wardle",
        "PATCH /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/aggregation.dev:wardle-system:wardle",
        "PATCH /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/aggregation.dev:wardle-system:wardle:auth-delegator",
        "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings/aggregation.dev:wardle-system:wardle:auth-reader",
        &format!("PATCH {EAS_PATH}/status"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(calls, expected);
    assert!(
        h.api.get(APISERVICE).is_none(),
        "no APIService before a server replica is available"
    );
    let (status, reason, message) = h.condition("APIServiceAvailable");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WaitingForServer"));
    assert!(message.contains("has an available replica"), "{message}");
    assert_eq!(action, Action::requeue(NOT_READY_RESYNC));

    // The same object again: the caches match, so not one request.
    h.reconcile().await.unwrap();
    assert_eq!(h.calls(), Vec::<String>::new(), "an unchanged object sends nothing");

    // A replica is available: the APIService is registered, and the status says so.
    h.make_available();
    h.reconcile().await.unwrap();
    assert_eq!(
        h.calls(),
        vec![format!("PATCH {APISERVICE}"), format!("PATCH {EAS_PATH}/status")]
    );
    h.reconcile().await.unwrap();
    assert_eq!(h.calls(), Vec::<String>::new(), "converged: nothing is sent");

    // Every apply is a forced server-side apply by our field manager.
    let st = h.api.state.lock().unwrap();
    for r in st
        .requests
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.ends_with("/status"))
    {
        assert!(r.content_type.starts_with("application/apply-patch"), "{r:?}");
        assert!(r.query.contains("fieldManager=extension-apiserver-operator"), "{r:?}");
        assert!(r.query.contains("force=true"), "{r:?}");
    }
    drop(st);

    // The APIService trusts exactly the CA in the CA Secret, and never skips verification.
    let ca = h.api.get(CA_SECRET).unwrap();
    let svc = h.api.get(APISERVICE).unwrap();
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(svc["spec"]["caBundle"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(bundle).unwrap(), secret_data(&ca, "ca.crt"));
    assert!(svc["spec"].get("insecureSkipTLSVerify").is_none());
    assert_eq!(
        svc["spec"]["service"],
        json!({"namespace": NS, "name": "wardle", "port": 443})
    );
    assert_eq!(svc["metadata"]["labels"]["aggregation.dev/owner-name"], "wardle");

    // The serving Secret carries the leaf, its key and the CA certificate, never the CA key.
    let serving = h.api.get(SERVING_SECRET).unwrap();
    assert_eq!(serving["type"], "kubernetes.io/tls");
    assert_eq!(secret_data(&serving, "ca.crt"), secret_data(&ca, "ca.crt"));
    assert_ne!(secret_data(&serving, "tls.key"), secret_data(&ca, "ca.key"));
    let facts = crate::pki::inspect(&secret_data(&serving, "tls.crt")).unwrap();
    assert_eq!(
        facts.dns_names,
        vec!["wardle.wardle-system.svc", "wardle.wardle-system.svc.cluster.local"]
    );

    // Status reports certificates and the pending Deployment and APIService.
    let eas = h.eas();
    let status = eas.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.api_services, vec!["v1alpha1.wardle.example.com"]);
    assert_eq!(
        status.certificates.unwrap().serving.unwrap().sha256_fingerprint,
        facts.sha256_hex
    );
    assert_eq!(h.condition("AggregationLayerReady").1, "Configured");
    assert_eq!(h.condition("CertificatesReady").0, "True");
    assert_eq!(h.condition("DeploymentAvailable").0, "True");
    assert_eq!(h.condition("ChildrenApplied").1, "Applied");
    assert_eq!(h.condition("APIServiceAvailable").1, "APIServicePending");
    assert_eq!(h.condition("Ready").0, "False");
    let reasons = h.event_reasons();
    assert!(reasons.contains(&"Created".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"CertificateIssued".to_string()), "{reasons:?}");
}

#[tokio::test]
async fn a_hundred_reconciles_issue_no_new_certificate() {
    let h = Harness::new();
    h.put_eas(spec());
    h.converge().await;
    let ca = h.api.get(CA_SECRET).unwrap();
    let serving = h.api.get(SERVING_SECRET).unwrap();
    h.api.take_requests();
    for i in 0..100 {
        // Time passes, but stays well before renewal.
        h.clock.store(NOW + i * 60, std::sync::atomic::Ordering::SeqCst);
        h.reconcile().await.unwrap();
    }
    assert_eq!(h.api.get(CA_SECRET).unwrap(), ca, "CA Secret must not change");
    assert_eq!(
        h.api.get(SERVING_SECRET).unwrap(),
        serving,
        "serving Secret must not change"
    );
    let reqs = h.api.take_requests();
    assert!(
        reqs.is_empty(),
        "a hundred reconciles of an unchanged object send nothing: {reqs:?}"
    );
}

#[tokio::test]
async fn serving_certificate_is_renewed_when_a_third_of_its_life_remains() {
    let h = Harness::new();
    h.put_eas(spec());
    h.reconcile().await.unwrap();
    let before = crate::pki::inspect(&secret_data(&h.api.get(SERVING_SECRET).unwrap(), "tls.crt")).unwrap();
    let ca_before = h.api.get(CA_SECRET).unwrap();
    h.clock.store(before.renew_at(), std::sync::atomic::Ordering::SeqCst);
    h.reconcile().await.unwrap();
    let after = crate::pki::inspect(&secret_data(&h.api.get(SERVING_SECRET).unwrap(), "tls.crt")).unwrap();
    assert_ne!(before.serial_hex, after.serial_hex);
    assert_eq!(
        secret_data(&h.api.get(CA_SECRET).unwrap(), "ca.crt"),
        secret_data(&ca_before, "ca.crt"),
        "the CA is kept"
    );
}

#[tokio::test]
async fn drift_is_repaired() {
    let h = Harness::new();
    h.put_eas(spec());
    h.converge().await;
    let good = h.api.get(APISERVICE).unwrap();
    let ca_before = h.api.get(CA_SECRET).unwrap();

    // Someone edits the caBundle and deletes the serving Secret and a binding.
    let mut edited = good.clone();
    edited["spec"]["caBundle"] = json!("Ym9ndXM=");
    h.api.put(APISERVICE, edited);
    h.api.remove(SERVING_SECRET);
    let binding =
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/aggregation.dev:wardle-system:wardle:auth-delegator";
    let mut bad_binding = h.api.get(binding).unwrap();
    bad_binding["subjects"] = json!([]);
    h.api.put(binding, bad_binding);

    h.reconcile().await.unwrap();
    assert_eq!(h.api.get(APISERVICE).unwrap()["spec"], good["spec"]);
    assert_eq!(
        h.api.get(binding).unwrap()["subjects"],
        json!([{"kind": "ServiceAccount", "name": "wardle", "namespace": NS}])
    );
    let serving = h.api.get(SERVING_SECRET).expect("serving Secret recreated");
    assert!(crate::pki::signed_by(
        &crate::pki::pem_certs_to_der(&secret_data(&serving, "tls.crt")).unwrap()[0],
        &crate::pki::pem_certs_to_der(&secret_data(&ca_before, "ca.crt")).unwrap()[0],
    ));
    assert_eq!(
        h.api.get(CA_SECRET).unwrap(),
        ca_before,
        "a lost serving Secret does not replace the CA"
    );
    assert!(h.event_reasons().contains(&"Repaired".to_string()));
}

#[tokio::test]
async fn foreign_api_service_is_not_taken_over() {
    let h = Harness::new();
    h.put_eas(spec());
    h.api.put(
        APISERVICE,
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": "v1alpha1.wardle.example.com", "labels": {"app": "sample-apiserver"}},
               "spec": {"group": "wardle.example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15}}),
    );
    let foreign = h.api.get(APISERVICE).unwrap();
    h.reconcile().await.unwrap();
    let calls = h.calls();
    assert!(!calls.contains(&format!("PATCH {APISERVICE}")), "{calls:?}");
    assert_eq!(h.api.get(APISERVICE).unwrap(), foreign);
    let (status, reason, message) = h.condition("Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "APIServiceConflict"));
    assert!(message.contains("not managed by this operator"), "{message}");
    assert!(h.event_reasons().contains(&"APIServiceConflict".to_string()));

    // Owned by another ExtensionApiServer: the message names it.
    let mut other = foreign.clone();
    other["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "extension-apiserver-operator",
        "aggregation.dev/owner-namespace": "team-b", "aggregation.dev/owner-name": "wardle2"});
    h.api.put(APISERVICE, other);
    h.reconcile().await.unwrap();
    assert!(h
        .condition("APIServiceAvailable")
        .2
        .contains("ExtensionApiServer team-b/wardle2"));
}

#[tokio::test]
async fn an_older_rival_claim_wins() {
    let (store, mut writer) = kube::runtime::reflector::store::<ExtensionApiServer>();
    let mut rival = ExtensionApiServer::new("first", spec());
    rival.metadata.namespace = Some("team-a".into());
    rival.metadata.uid = Some("uid-first".into());
    rival.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(NOW - 100).unwrap()));
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(rival));
    let h = Harness::with_store(Some(store));
    let mut mine = ExtensionApiServer::new("wardle", spec());
    mine.metadata.namespace = Some(NS.into());
    mine.metadata.uid = Some("uid-wardle".into());
    mine.metadata.generation = Some(1);
    mine.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(NOW).unwrap()));
    mine.metadata.finalizers = Some(vec![FINALIZER.into()]);
    h.api.put(EAS_PATH, serde_json::to_value(&mine).unwrap());
    h.reconcile().await.unwrap();
    assert!(h.api.get(APISERVICE).is_none());
    let (_, reason, message) = h.condition("Ready");
    assert_eq!(reason, "APIServiceConflict");
    assert!(message.contains("team-a/first"), "{message}");
}

#[tokio::test]
async fn missing_request_header_ca_is_reported() {
    let h = Harness::new();
    h.put_eas(spec());
    let mut cm = h.api.get(AUTH_CM).unwrap();
    cm["data"]
        .as_object_mut()
        .unwrap()
        .remove("requestheader-client-ca-file");
    h.api.put(AUTH_CM, cm);
    h.reconcile().await.unwrap();
    let (status, reason, message) = h.condition("AggregationLayerReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "RequestHeaderCAMissing"));
    assert!(message.contains("--requestheader-client-ca-file"));
    assert_eq!(h.condition("Ready").1, "RequestHeaderCAMissing");
}

#[tokio::test]
async fn unserved_apiregistration_is_reported() {
    let h = Harness::new();
    h.api.state.lock().unwrap().no_apiregistration = true;
    h.put_eas(spec());
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("AggregationLayerReady").1, "APIRegistrationUnavailable");
}

#[tokio::test]
async fn invalid_spec_sets_a_condition_and_waits_for_a_change() {
    let h = Harness::new();
    let mut s = spec();
    s.image = Some(serde_json::from_value(json!({"image": "example/server:1"})).unwrap());
    h.put_eas(s);
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.calls();
    assert_eq!(calls, vec![format!("PATCH {EAS_PATH}/status")], "nothing is applied");
    let (status, reason, message) = h.condition("Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("exactly one of spec.server"), "{message}");
}

#[tokio::test]
async fn available_children_make_it_ready() {
    let h = Harness::new();
    h.put_eas(spec());
    h.converge().await;
    let mut d = h.api.get(DEPLOYMENT).unwrap();
    d["status"] = json!({"conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"}]});
    h.api.put(DEPLOYMENT, d);
    let mut s = h.api.get(APISERVICE).unwrap();
    s["status"] = json!({"conditions": [{"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck",
                                          "message": "failing or missing response from https://10.0.0.1:443"}]});
    h.api.put(APISERVICE, s.clone());
    h.reconcile().await.unwrap();
    let (_, reason, message) = h.condition("APIServiceAvailable");
    assert_eq!(reason, "FailedDiscoveryCheck");
    assert!(message.starts_with("v1alpha1.wardle.example.com: failing or missing response"));
    assert_eq!(h.condition("Ready").0, "False");

    s["status"]["conditions"][0] =
        json!({"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"});
    h.api.put(APISERVICE, s);
    let action = h.reconcile().await.unwrap();
    assert_eq!(h.condition("DeploymentAvailable").0, "True");
    assert_eq!(h.condition("Ready").0, "True");
    assert_eq!(action, Action::requeue(RESYNC));
}

#[tokio::test]
async fn removed_version_loses_its_api_service() {
    let h = Harness::new();
    let s = spec_with_beta();
    h.put_eas(s);
    h.converge().await;
    let beta = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.wardle.example.com";
    assert!(h.api.get(beta).is_some());
    let mut eas = h.eas();
    eas.spec.versions.truncate(1);
    eas.metadata.generation = Some(2);
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
    h.reconcile().await.unwrap();
    assert!(h.api.get(beta).is_none());
    assert!(h.api.get(APISERVICE).is_some());
}

#[tokio::test]
async fn deletion_removes_cluster_scoped_children_and_tolerates_missing_ones() {
    let h = Harness::new();
    h.put_eas(spec());
    h.converge().await;
    h.api.take_requests();
    let mut eas = h.eas();
    eas.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(NOW).unwrap()));
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
    // One child disappears between our list and our delete.
    h.api
        .state
        .lock()
        .unwrap()
        .vanish_on_delete
        .push("/apis/rbac.authorization.k8s.io/v1/clusterroles/aggregation.dev:wardle-system:wardle".into());
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.calls();
    let selector_lists = calls.iter().filter(|c| c.starts_with("GET ")).count();
    assert_eq!(selector_lists, 4, "{calls:?}");
    for gone in [
        APISERVICE,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/aggregation.dev:wardle-system:wardle",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/aggregation.dev:wardle-system:wardle",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/aggregation.dev:wardle-system:wardle:auth-delegator",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings/aggregation.dev:wardle-system:wardle:auth-reader",
    ] {
        assert!(calls.contains(&format!("DELETE {gone}")), "{gone} not deleted: {calls:?}");
        assert!(h.api.get(gone).is_none(), "{gone} still there");
    }
    assert_eq!(
        calls.last().unwrap(),
        &format!("PATCH {EAS_PATH}"),
        "finalizer removed last"
    );
    assert!(
        h.api.get(EAS_PATH).is_none(),
        "object gone once the finalizer is removed"
    );
    // Namespaced children are left to the garbage collector through their owner references.
    let owner = &h.api.get(DEPLOYMENT).unwrap()["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], "uid-wardle");
    assert_eq!(owner["controller"], true);
}

#[tokio::test]
async fn cleanup_with_everything_already_gone_still_finishes() {
    let h = Harness::new();
    h.put_eas(spec());
    let mut eas = h.eas();
    eas.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(NOW).unwrap()));
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
    h.reconcile().await.unwrap();
    assert!(h.api.get(EAS_PATH).is_none());
}

fn set_rotate(h: &Harness, value: &str) {
    let mut eas = h.eas();
    eas.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(certs::ROTATE_ANNOTATION.into(), value.into());
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
}

fn bundle_of(h: &Harness) -> Vec<Vec<u8>> {
    use base64::Engine;
    let b64 = h.api.get(APISERVICE).unwrap()["spec"]["caBundle"]
        .as_str()
        .unwrap()
        .to_string();
    let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    crate::pki::pem_certs_to_der(&pem).unwrap()
}

fn serving_der(h: &Harness) -> Vec<u8> {
    crate::pki::pem_certs_to_der(&secret_data(&h.api.get(SERVING_SECRET).unwrap(), "tls.crt"))
        .unwrap()
        .remove(0)
}

fn serve(h: &Harness, leaf: &[u8]) {
    *h.served.lock().unwrap() = vec![probe::Observed {
        endpoint: "10.0.0.7:8443".into(),
        leaf: Ok(leaf.to_vec()),
    }];
}

#[tokio::test]
async fn serving_rotation_on_request_keeps_the_ca_and_clears_the_annotation() {
    let h = Harness::new();
    h.put_eas(spec());
    h.converge().await;
    let before = serving_der(&h);
    let bundle = bundle_of(&h);
    set_rotate(&h, "serving");
    h.reconcile().await.unwrap();
    let after = serving_der(&h);
    assert_ne!(before, after, "a new serving certificate");
    assert_eq!(bundle_of(&h), bundle, "the CA is unchanged");
    assert!(
        crate::pki::signed_by(&after, &bundle[0]),
        "signed by the already published CA"
    );
    assert!(
        !h.eas().annotations().contains_key(certs::ROTATE_ANNOTATION),
        "annotation cleared"
    );
    let reasons = h.event_reasons();
    assert!(reasons.contains(&"RotationRequestDone".to_string()), "{reasons:?}");
    // An unknown value is reported and cleared, and nothing is rotated.
    set_rotate(&h, "everything");
    h.reconcile().await.unwrap();
    assert_eq!(serving_der(&h), after);
    assert!(!h.eas().annotations().contains_key(certs::ROTATE_ANNOTATION));
    assert!(h.event_reasons().contains(&"RotationRequestInvalid".to_string()));
}

/// A CA rotation through the annotation, phase by phase, as the operator would drive it.
#[tokio::test]
async fn ca_rotation_publishes_then_signs_then_waits_for_replicas() {
    let h = Harness::new();
    h.put_eas(spec());
    h.converge().await;
    let old_ca = bundle_of(&h).remove(0);
    let old_leaf = serving_der(&h);
    serve(&h, &old_leaf);

    // 1. Publishing: both CAs in every caBundle; the leaf is untouched.
    set_rotate(&h, "ca");
    h.reconcile().await.unwrap();
    let bundle = bundle_of(&h);
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[0], old_ca, "the current CA stays first");
    let new_ca = bundle[1].clone();
    assert_eq!(serving_der(&h), old_leaf);
    assert!(!h.eas().annotations().contains_key(certs::ROTATE_ANNOTATION));
    let rotation = h.eas().status.unwrap().certificates.unwrap().rotation.unwrap();
    assert_eq!(rotation.phase, "PublishingNewCA");
    assert_eq!(h.eas().status.unwrap().certificates.unwrap().bundle.len(), 2);
    let ca_secret = h.api.get(CA_SECRET).unwrap();
    assert_eq!(
        ca_secret["metadata"]["annotations"][rotation::PHASE_ANNOTATION],
        "PublishingNewCA"
    );
    assert!(
        ca_secret["data"].get("next.key").is_some(),
        "state survives a crash: it is in the Secret"
    );

    // Before the settle time nothing moves on.
    h.reconcile().await.unwrap();
    assert_eq!(serving_der(&h), old_leaf);

    // 2. Overlap: the new CA signs a new leaf; the old CA is still published.
    h.clock.store(NOW + 10, std::sync::atomic::Ordering::SeqCst);
    h.reconcile().await.unwrap();
    let new_leaf = serving_der(&h);
    assert_ne!(new_leaf, old_leaf);
    assert!(crate::pki::signed_by(&new_leaf, &new_ca));
    let bundle = bundle_of(&h);
    assert_eq!(bundle, vec![new_ca.clone(), old_ca.clone()]);
    assert_eq!(
        h.eas().status.unwrap().certificates.unwrap().rotation.unwrap().phase,
        "Overlap"
    );

    // 3. A replica still serves the old leaf: the old CA stays, however long it takes.
    h.clock.store(NOW + 10 + 7200, std::sync::atomic::Ordering::SeqCst);
    h.reconcile().await.unwrap();
    assert_eq!(bundle_of(&h).len(), 2);

    // 4. Every replica serves the new leaf and the overlap has passed: the old CA goes.
    serve(&h, &new_leaf);
    h.reconcile().await.unwrap();
    assert_eq!(bundle_of(&h), vec![new_ca.clone()]);
    assert!(h.eas().status.unwrap().certificates.unwrap().rotation.is_none());
    let ca_secret = h.api.get(CA_SECRET).unwrap();
    assert!(ca_secret["data"].get("previous.crt").is_none());
    let reasons = h.event_reasons();
    for r in ["CARotationStarted", "CARotationNewCAActive", "CARotationCompleted"] {
        assert!(reasons.contains(&r.to_string()), "missing event {r}: {reasons:?}");
    }
}

#[tokio::test]
async fn own_ca_from_a_secret() {
    let h = Harness::new();
    let mut s = spec();
    s.certificates = Some(Box::new(crate::crd::CertificatesSpec {
        ca_secret_ref: Some(crate::crd::SecretReference { name: "my-ca".into() }),
        ..Default::default()
    }));
    h.put_eas(s);
    h.reconcile().await.unwrap();
    let (status, reason, message) = h.condition("CertificatesReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CASecretInvalid"));
    assert!(message.contains("Secret my-ca not found"), "{message}");
    assert!(h.api.get(APISERVICE).is_none(), "nothing is applied without a CA");

    use base64::Engine;
    let user = crate::pki::generate_ca(
        "user",
        crate::crd::KeyAlgorithm::EcdsaP256,
        crate::pki::DEFAULT_CA_VALIDITY,
        NOW,
    )
    .unwrap();
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    h.api.put(
        "/api/v1/namespaces/wardle-system/secrets/my-ca",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-ca", "namespace": NS},
               "type": "kubernetes.io/tls", "data": {"tls.crt": enc(&user.cert_pem), "tls.key": enc(&user.key_pem)}}),
    );
    h.converge().await;
    let user_der = crate::pki::pem_certs_to_der(&user.cert_pem).unwrap().remove(0);
    assert_eq!(bundle_of(&h), vec![user_der.clone()]);
    assert!(crate::pki::signed_by(&serving_der(&h), &user_der));
    assert!(
        h.api.get(CA_SECRET).unwrap()["data"].get("ca.key").is_none(),
        "the user's CA key is never copied"
    );
    assert!(h.eas().status.unwrap().certificates.unwrap().next_ca_rotation.is_none());
}

#[tokio::test]
async fn changing_the_own_ca_while_a_new_leaf_is_due_does_not_deadlock() {
    use base64::Engine;
    let h = Harness::new();
    let mut s = spec();
    s.certificates = Some(Box::new(crate::crd::CertificatesSpec {
        ca_secret_ref: Some(crate::crd::SecretReference { name: "my-ca".into() }),
        ..Default::default()
    }));
    h.put_eas(s);
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let put_ca = |ca: &crate::pki::CertKeyPair| {
        h.api.put(
            "/api/v1/namespaces/wardle-system/secrets/my-ca",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-ca", "namespace": NS},
                   "type": "kubernetes.io/tls", "data": {"tls.crt": enc(&ca.cert_pem), "tls.key": enc(&ca.key_pem)}}),
        )
    };
    let alg = crate::crd::KeyAlgorithm::EcdsaP256;
    let user1 = crate::pki::generate_ca("user-1", alg, crate::pki::DEFAULT_CA_VALIDITY, NOW).unwrap();
    let user2 = crate::pki::generate_ca("user-2", alg, crate::pki::DEFAULT_CA_VALIDITY, NOW).unwrap();
    put_ca(&user1);
    h.converge().await;
    let leaf1 = serving_der(&h);
    // The user replaces the CA (its old key is gone) and asks for a new serving certificate.
    put_ca(&user2);
    set_rotate(&h, "serving");
    h.reconcile().await.expect("no deadlock");
    assert_eq!(bundle_of(&h).len(), 2, "both CAs published");
    assert_eq!(
        serving_der(&h),
        leaf1,
        "the current leaf is kept while only the new CA could sign it"
    );
    h.clock.store(NOW + 10, std::sync::atomic::Ordering::SeqCst);
    h.reconcile().await.unwrap();
    let user2_der = crate::pki::pem_certs_to_der(&user2.cert_pem).unwrap().remove(0);
    assert!(
        crate::pki::signed_by(&serving_der(&h), &user2_der),
        "new leaf from the published new CA"
    );
}

#[tokio::test]
async fn a_conflicting_version_does_not_stall_a_rotation() {
    let h = Harness::new();
    let s = spec_with_beta();
    h.put_eas(s);
    let foreign = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.wardle.example.com";
    h.api.put(
        foreign,
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": "v1beta1.wardle.example.com"},
               "spec": {"group": "wardle.example.com", "version": "v1beta1", "groupPriorityMinimum": 1, "versionPriority": 1}}),
    );
    h.converge().await;
    set_rotate(&h, "ca");
    h.reconcile().await.unwrap();
    h.clock.store(NOW + 10, std::sync::atomic::Ordering::SeqCst);
    h.reconcile().await.unwrap();
    let rotation = h.eas().status.unwrap().certificates.unwrap().rotation.unwrap();
    assert_eq!(rotation.phase, "Overlap", "the foreign APIService is not waited for");
}

#[path = "tests_etcd.rs"]
mod etcd;
#[path = "tests_roles.rs"]
mod roles;

#[tokio::test]
async fn a_refused_apply_is_reported_with_the_api_reason_and_retried_later() {
    let h = Harness::new();
    h.put_eas(spec());
    let role = "/apis/rbac.authorization.k8s.io/v1/clusterroles/aggregation.dev:wardle-system:wardle";
    let message = "clusterroles.rbac.authorization.k8s.io \"aggregation.dev:wardle-system:wardle\" is forbidden: \
                   user \"system:serviceaccount:eao-system:eao\" is attempting to grant RBAC permissions not currently held";
    h.api
        .state
        .lock()
        .unwrap()
        .fail_writes
        .insert(role.into(), (403, "Forbidden".into(), message.into()));
    let action = h.reconcile().await.expect("a refused apply is no reconcile error");
    let calls = h.calls();
    // The apply stops at the refused ClusterRole: nothing after it is written.
    assert_eq!(calls[calls.len() - 2], format!("PATCH {role}"), "{calls:?}");
    assert_eq!(calls.last().unwrap(), &format!("PATCH {EAS_PATH}/status"));
    let (status, reason, msg) = h.condition("Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Forbidden"));
    assert!(msg.contains("is attempting to grant RBAC permissions"), "{msg}");
    assert!(
        msg.contains("ClusterRole aggregation.dev:wardle-system:wardle"),
        "{msg}"
    );
    let (status, reason, _) = h.condition("ChildrenApplied");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Forbidden"));
    assert_eq!(h.condition("CertificatesReady").0, "True", "the Secrets were applied");
    let warning = {
        let st = h.api.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .find(|(_, v)| v["reason"] == "Forbidden")
            .map(|(_, v)| v.clone())
            .expect("a Warning Event")
    };
    assert_eq!(warning["type"], "Warning");
    assert!(
        warning["note"].as_str().unwrap_or_default().contains("forbidden"),
        "{warning}"
    );
    // Forbidden needs a human (or RBAC): retried every minute, not in a tight loop.
    assert_eq!(action, Action::requeue(context::PERMANENT_RETRY));

    // The same refusal again: the status is unchanged, so it is not written again.
    h.reconcile().await.unwrap();
    assert_eq!(h.calls(), vec![format!("PATCH {role}")]);

    // A transient failure (the API server throttles) backs off exponentially, per object.
    h.api
        .state
        .lock()
        .unwrap()
        .fail_writes
        .insert(role.into(), (429, "TooManyRequests".into(), "slow down".into()));
    let mut delays = Vec::new();
    for _ in 0..3 {
        match h.reconcile().await.unwrap() {
            a if a == Action::requeue(context::PERMANENT_RETRY) => panic!("429 is transient"),
            a => delays.push(format!("{a:?}")),
        }
    }
    assert_eq!(h.condition("Ready").1, "TooManyRequests");
    let d = |i: usize| parse_requeue(&delays[i]);
    assert!(d(0) < d(1) && d(1) < d(2), "{delays:?}");

    // Once the apply passes, everything else is applied and the condition clears.
    h.api.state.lock().unwrap().fail_writes.clear();
    h.converge().await;
    assert_eq!(h.condition("ChildrenApplied").0, "True");
    assert!(h.api.get(APISERVICE).is_some());
}

/// The delay of a `requeue` Action, from its Debug form (Action keeps it private).
fn parse_requeue(debug: &str) -> std::time::Duration {
    let rest = debug.split("requeue_after: Some(").nth(1).unwrap_or_default();
    let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let value: f64 = number.parse().unwrap_or(0.0);
    let unit = &rest[number.len()..];
    let secs = if unit.starts_with("ms") {
        value / 1e3
    } else if unit.starts_with("µs") {
        value / 1e6
    } else if unit.starts_with("ns") {
        value / 1e9
    } else {
        value
    };
    std::time::Duration::from_secs_f64(secs)
}

#[test]
fn retry_after_is_a_floor_for_the_backoff() {
    let s = std::time::Duration::from_secs;
    assert_eq!(retry_delay(s(2), Some(s(30))), s(30));
    assert_eq!(retry_delay(s(60), Some(s(30))), s(60));
    assert_eq!(retry_delay(s(2), None), s(2));
}
