//! End-to-end tests of the operator against a real control plane.
//!
//! By default they run against the control plane of the test harness
//! (`eao::testing::controlplane::ControlPlane::shared`: etcd, kube-apiserver and
//! kube-controller-manager from `KUBEBUILDER_ASSETS`, one per test binary), so `make test` runs
//! them; without `KUBEBUILDER_ASSETS` each test prints why it is skipped and passes. With
//! `EAO_E2E=1` and `KUBECONFIG` set they run against that cluster instead.
//!
//! The CRD from `crds/` is applied, and the controller runs in this process (set
//! `EAO_E2E_IN_PROCESS=0` to test an operator already installed in a cluster instead). It runs on
//! a thread with its own runtime: each `#[tokio::test]` has a runtime of its own that ends with
//! the test, and a controller spawned there would stop with the first test. For the same reason
//! every test makes its own client.
//! Each test uses its own temporary namespace and API group. Pods are never expected to become
//! Ready (there is no kubelet in the harness, and the image may not exist in a cluster): the
//! tests check objects, status and cleanup.

use eao::crd::ExtensionApiServer;
use eao::testing::controlplane::ControlPlane;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Where the tests run.
#[derive(Clone, Copy)]
enum Target {
    /// The shared control plane of the test harness.
    Harness(&'static ControlPlane),
    /// The cluster `KUBECONFIG` names (`EAO_E2E=1`).
    Cluster,
}

impl Target {
    /// A new client, bound to the calling test's runtime.
    async fn client(self) -> Client {
        match self {
            Target::Harness(cp) => cp.client().await.expect("admin client for the harness control plane"),
            Target::Cluster => Client::try_default().await.expect("kubeconfig works"),
        }
    }
}

/// The target for `test`, or `None` (the test is skipped).
async fn target(test: &str) -> Option<Target> {
    if std::env::var("EAO_E2E").as_deref() == Ok("1") {
        if std::env::var_os("KUBECONFIG").is_some() {
            return Some(Target::Cluster);
        }
        eprintln!("EAO_E2E=1 without KUBECONFIG: {test} runs against the harness control plane");
    }
    ControlPlane::shared(test).await.map(Target::Harness)
}

static SETUP: OnceCell<()> = OnceCell::const_new();

/// Installs the CRD and starts the controller, once per test binary.
async fn setup(target: Target) {
    SETUP
        .get_or_init(|| async move {
            let client = target.client().await;
            let text = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/crds/extensionapiservers.aggregation.dev.yaml"
            ))
            .unwrap();
            let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            crds.patch(
                "extensionapiservers.aggregation.dev",
                &PatchParams::apply("eao-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("CRD applies");
            let established = kube::runtime::conditions::is_crd_established();
            tokio::time::timeout(
                TIMEOUT,
                kube::runtime::wait::await_condition(crds, "extensionapiservers.aggregation.dev", established),
            )
            .await
            .expect("CRD established in time")
            .unwrap();
            if std::env::var("EAO_E2E_IN_PROCESS").as_deref() != Ok("0") {
                start_controller(target);
            }
        })
        .await;
}

/// Runs the controller on a thread of its own until the test process exits.
fn start_controller(target: Target) {
    std::thread::Builder::new()
        .name("eao-e2e-controller".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("controller runtime");
            rt.block_on(async move {
                eao::operator::controller::run(
                    target.client().await,
                    eao::operator::reconcile::build::BuildOptions {
                        default_server_image: "extension-apiserver-operator:e2e".into(),
                        // No kubelet runs here: no replica ever becomes available.
                        register_before_available: true,
                    },
                    Arc::new(eao::operator::metrics::Metrics::default()),
                    Reporter {
                        controller: "extension-apiserver-operator".into(),
                        instance: Some("e2e".into()),
                    },
                    Arc::new(AtomicBool::new(false)),
                    std::future::pending(),
                )
                .await
            })
        })
        .expect("controller thread");
}

/// A fresh scope for `test`, or `None` (the test is skipped) without a control plane.
async fn scope_for(test: &str) -> Option<Scope> {
    let target = target(test).await?;
    setup(target).await;
    Some(Scope::new(target.client().await).await)
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:x}", std::process::id() % 0xffff, nanos % 0xfffff)
}

/// A temporary namespace and a unique group; everything is removed afterwards, the
/// ExtensionApiServer first so no APIService points at a deleted namespace.
#[derive(Clone)]
struct Scope {
    client: Client,
    ns: String,
    group: String,
}

impl Scope {
    async fn new(client: Client) -> Scope {
        let id = suffix();
        let ns = format!("eao-e2e-{id}");
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"eao-e2e": "true"}}})).unwrap(),
        )
        .await
        .unwrap();
        Scope {
            client,
            ns,
            group: format!("e2e-{id}.example.com"),
        }
    }

    fn eas_api(&self) -> Api<ExtensionApiServer> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn manifest(&self) -> ExtensionApiServer {
        serde_json::from_value(json!({
            "apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
            "metadata": {"name": "wardle", "namespace": self.ns},
            "spec": {"group": self.group, "versions": [{"name": "v1alpha1"}],
                     "server": {"resources": [{"kind": "Flunder", "plural": "flunders",
                                               "versions": [{"name": "v1alpha1"}]}]}}
        }))
        .unwrap()
    }

    async fn cleanup(&self) {
        let _ = self.eas_api().delete("wardle", &DeleteParams::default()).await;
        let _ = wait_for(|| async { self.eas_api().get_opt("wardle").await.ok().flatten().is_none() }).await;
        // Whatever the operator could not remove (a failed test) must not outlive the test.
        let sel = format!("aggregation.dev/owner-namespace={}", self.ns);
        let svcs: Api<APIService> = Api::all(self.client.clone());
        if let Ok(list) = svcs.list(&ListParams::default().labels(&sel)).await {
            for s in list {
                let _ = svcs.delete(&s.name_any(), &DeleteParams::default()).await;
            }
        }
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let _ = nss.delete(&self.ns, &DeleteParams::default()).await;
    }

    /// Runs `body`, then cleans up whether it passed or panicked.
    async fn run<F: std::future::Future<Output = ()>>(self, body: impl FnOnce(Scope) -> F) {
        let result = AssertUnwindSafe(body(self.clone())).catch_unwind().await;
        self.cleanup().await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

async fn wait_for<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

fn cluster_names(ns: &str) -> [String; 3] {
    let p = format!("aggregation.dev:{ns}:wardle");
    [p.clone(), format!("{p}:auth-delegator"), format!("{p}:auth-reader")]
}

#[tokio::test]
async fn apply_creates_every_child() {
    let Some(scope) = scope_for("apply_creates_every_child").await else {
        return;
    };
    scope
        .run(|s| async move {
            let c = s.client.clone();
            s.eas_api()
                .create(&PostParams::default(), &s.manifest())
                .await
                .expect("valid spec is admitted");
            let svc_name = format!("v1alpha1.{}", s.group);
            let apiservices: Api<APIService> = Api::all(c.clone());
            assert!(
                wait_for(|| async { apiservices.get_opt(&svc_name).await.ok().flatten().is_some() }).await,
                "APIService {svc_name} appears"
            );
            let secrets: Api<Secret> = Api::namespaced(c.clone(), &s.ns);
            let ca = secrets.get("wardle-ca").await.unwrap();
            let serving = secrets.get("wardle-serving-cert").await.unwrap();
            assert_eq!(serving.type_.as_deref(), Some("kubernetes.io/tls"));
            let ca_pem = ca.data.as_ref().unwrap()["ca.crt"].0.clone();
            assert_eq!(serving.data.as_ref().unwrap()["ca.crt"].0, ca_pem);
            let apisvc = apiservices.get(&svc_name).await.unwrap();
            let spec = apisvc.spec.unwrap();
            assert_eq!(spec.ca_bundle.unwrap().0, ca_pem, "caBundle is the CA");
            assert_ne!(spec.insecure_skip_tls_verify, Some(true));
            assert_eq!(spec.service.unwrap().namespace.as_deref(), Some(s.ns.as_str()));
            Api::<ServiceAccount>::namespaced(c.clone(), &s.ns)
                .get("wardle")
                .await
                .unwrap();
            Api::<Service>::namespaced(c.clone(), &s.ns)
                .get("wardle")
                .await
                .unwrap();
            Api::<ConfigMap>::namespaced(c.clone(), &s.ns)
                .get("wardle-config")
                .await
                .unwrap();
            let d = Api::<Deployment>::namespaced(c.clone(), &s.ns)
                .get("wardle")
                .await
                .unwrap();
            assert_eq!(d.owner_references()[0].kind, "ExtensionApiServer");
            let [role, delegator, reader] = cluster_names(&s.ns);
            let cr = Api::<ClusterRole>::all(c.clone()).get(&role).await.unwrap();
            assert!(!cr.rules.unwrap().is_empty());
            let crbs: Api<ClusterRoleBinding> = Api::all(c.clone());
            assert_eq!(
                crbs.get(&delegator).await.unwrap().role_ref.name,
                "system:auth-delegator"
            );
            crbs.get(&role).await.unwrap();
            let rb = Api::<RoleBinding>::namespaced(c.clone(), "kube-system")
                .get(&reader)
                .await
                .unwrap();
            assert_eq!(rb.role_ref.name, "extension-apiserver-authentication-reader");
            // Status: certificates and the aggregation-layer check are reported.
            assert!(
                wait_for(|| async {
                    let eas = s.eas_api().get("wardle").await.unwrap();
                    let conds = eas.status.map(|st| st.conditions).unwrap_or_default();
                    conds
                        .iter()
                        .any(|c| c.type_ == "CertificatesReady" && c.status == "True")
                        && conds.iter().any(|c| c.type_ == "Ready")
                })
                .await,
                "status conditions are written"
            );
        })
        .await;
}

#[tokio::test]
async fn edited_ca_bundle_is_repaired() {
    let Some(scope) = scope_for("edited_ca_bundle_is_repaired").await else {
        return;
    };
    scope
        .run(|s| async move {
            s.eas_api().create(&PostParams::default(), &s.manifest()).await.unwrap();
            let name = format!("v1alpha1.{}", s.group);
            let apiservices: Api<APIService> = Api::all(s.client.clone());
            assert!(wait_for(|| async { apiservices.get_opt(&name).await.ok().flatten().is_some() }).await);
            let good = apiservices.get(&name).await.unwrap().spec.unwrap().ca_bundle;
            apiservices
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"caBundle": "Ym9ndXM="}})),
                )
                .await
                .unwrap();
            assert!(
                wait_for(|| async { apiservices.get(&name).await.unwrap().spec.unwrap().ca_bundle == good }).await,
                "caBundle repaired"
            );
        })
        .await;
}

#[tokio::test]
async fn delete_leaves_nothing_behind() {
    let Some(scope) = scope_for("delete_leaves_nothing_behind").await else {
        return;
    };
    scope
        .run(|s| async move {
            let c = s.client.clone();
            s.eas_api().create(&PostParams::default(), &s.manifest()).await.unwrap();
            let name = format!("v1alpha1.{}", s.group);
            let apiservices: Api<APIService> = Api::all(c.clone());
            let [role, delegator, reader] = cluster_names(&s.ns);
            let rbs: Api<RoleBinding> = Api::namespaced(c.clone(), "kube-system");
            assert!(wait_for(|| async { rbs.get_opt(&reader).await.ok().flatten().is_some() }).await);
            assert!(wait_for(|| async { apiservices.get_opt(&name).await.ok().flatten().is_some() }).await);
            s.eas_api().delete("wardle", &DeleteParams::default()).await.unwrap();
            let crs: Api<ClusterRole> = Api::all(c.clone());
            let crbs: Api<ClusterRoleBinding> = Api::all(c.clone());
            let secrets: Api<Secret> = Api::namespaced(c.clone(), &s.ns);
            let deployments: Api<Deployment> = Api::namespaced(c.clone(), &s.ns);
            assert!(
                wait_for(|| async {
                    apiservices.get_opt(&name).await.unwrap().is_none()
                        && crs.get_opt(&role).await.unwrap().is_none()
                        && crbs.get_opt(&role).await.unwrap().is_none()
                        && crbs.get_opt(&delegator).await.unwrap().is_none()
                        && rbs.get_opt(&reader).await.unwrap().is_none()
                        && s.eas_api().get_opt("wardle").await.unwrap().is_none()
                })
                .await,
                "cluster-scoped children and the kube-system RoleBinding are deleted"
            );
            // Namespaced children go through the garbage collector.
            assert!(
                wait_for(|| async {
                    secrets.get_opt("wardle-ca").await.unwrap().is_none()
                        && deployments.get_opt("wardle").await.unwrap().is_none()
                })
                .await,
                "namespaced children are garbage-collected"
            );
        })
        .await;
}

#[tokio::test]
async fn invalid_spec_is_rejected_with_a_clear_message() {
    let Some(scope) = scope_for("invalid_spec_is_rejected_with_a_clear_message").await else {
        return;
    };
    scope
        .run(|s| async move {
            let mut bad = s.manifest();
            bad.spec.image = Some(serde_json::from_value(json!({"image": "example/server:1"})).unwrap());
            let err = s.eas_api().create(&PostParams::default(), &bad).await.unwrap_err();
            let kube::Error::Api(status) = err else {
                panic!("expected an API error, got {err}")
            };
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("exactly one of spec.server"),
                "{}",
                status.message
            );

            let mut bad = s.manifest();
            bad.spec.versions[0].name = "version1".into();
            bad.spec.group = "Not_A_Group".into();
            let err = s.eas_api().create(&PostParams::default(), &bad).await.unwrap_err();
            let kube::Error::Api(status) = err else {
                panic!("expected an API error, got {err}")
            };
            assert_eq!(status.code, 422);
            assert!(status.message.contains("spec.group"), "{}", status.message);
            assert!(status.message.contains("spec.versions[0].name"), "{}", status.message);
        })
        .await;
}

#[tokio::test]
async fn bundled_storage_and_resources_follow_the_spec() {
    let Some(scope) = scope_for("bundled_storage_and_resources_follow_the_spec").await else {
        return;
    };
    scope
        .run(|s| async move {
            use k8s_openapi::api::core::v1::PersistentVolumeClaim;
            let c = s.client.clone();
            let mut m = serde_json::to_value(s.manifest()).unwrap();
            m["spec"]["server"]["storage"] = json!({"embedded": {"size": "1Gi"}});
            let m: ExtensionApiServer = serde_json::from_value(m).unwrap();
            s.eas_api().create(&PostParams::default(), &m).await.expect("admitted");

            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &s.ns);
            assert!(
                wait_for(|| async { pvcs.get_opt("wardle-data").await.ok().flatten().is_some() }).await,
                "the data PVC appears"
            );
            let pvc = pvcs.get("wardle-data").await.unwrap();
            assert_eq!(pvc.owner_references()[0].kind, "ExtensionApiServer");
            let requested = pvc.spec.unwrap().resources.unwrap().requests.unwrap();
            assert_eq!(requested["storage"].0, "1Gi");
            let d = Api::<Deployment>::namespaced(c.clone(), &s.ns)
                .get("wardle")
                .await
                .unwrap();
            let spec = d.spec.unwrap();
            assert_eq!(spec.replicas, Some(1), "embedded storage runs one replica");
            assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));

            // A resource added to the spec reaches the mounted configuration (the server
            // reloads it without a restart).
            let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &s.ns);
            let patch = json!({"spec": {"server": {"resources": [
                {"kind": "Flunder", "plural": "flunders", "versions": [{"name": "v1alpha1"}]},
                {"kind": "Fischer", "plural": "fischers", "scope": "Cluster", "versions": [{"name": "v1alpha1"}]}
            ]}}});
            s.eas_api()
                .patch("wardle", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patch admitted");
            assert!(
                wait_for(|| async {
                    let cm = cms.get("wardle-config").await.unwrap();
                    cm.data.unwrap_or_default().values().any(|v| v.contains("fischers"))
                })
                .await,
                "the ConfigMap lists the new resource"
            );

            // Two replicas cannot share one embedded store: refused by the CRD's CEL rule.
            let err = s
                .eas_api()
                .patch(
                    "wardle",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"replicas": 2}})),
                )
                .await
                .unwrap_err();
            let kube::Error::Api(status) = err else {
                panic!("expected an API error, got {err}")
            };
            assert_eq!(status.code, 422);
            assert!(
                status
                    .message
                    .contains("more than one replica only with etcd storage: set spec.server.storage.etcd"),
                "{}",
                status.message
            );
        })
        .await;
}

fn pems(bytes: &[u8]) -> Vec<Vec<u8>> {
    eao::pki::pem_certs_to_der(&String::from_utf8_lossy(bytes)).unwrap_or_default()
}

async fn event_reasons(c: &Client, ns: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn rotations_through_the_annotation() {
    let Some(scope) = scope_for("rotations_through_the_annotation").await else {
        return;
    };
    scope
        .run(|s| async move {
            let c = s.client.clone();
            s.eas_api().create(&PostParams::default(), &s.manifest()).await.unwrap();
            let name = format!("v1alpha1.{}", s.group);
            let apiservices: Api<APIService> = Api::all(c.clone());
            let secrets: Api<Secret> = Api::namespaced(c.clone(), &s.ns);
            let bundle = || async {
                apiservices
                    .get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|a| a.spec?.ca_bundle)
                    .map(|b| pems(&b.0))
                    .unwrap_or_default()
            };
            let leaf = || async {
                secrets
                    .get_opt("wardle-serving-cert")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.data?.get("tls.crt").map(|b| pems(&b.0)))
                    .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
            };
            assert!(wait_for(|| async { bundle().await.len() == 1 }).await);
            let old_ca = bundle().await.remove(0);
            let old_leaf = leaf().await.unwrap();
            let annotate = |value: &'static str| {
                let api = s.eas_api();
                async move {
                    let patch = json!({"metadata": {"annotations": {"aggregation.dev/rotate": value}}});
                    api.patch("wardle", &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .unwrap();
                }
            };
            let annotation_gone = || async {
                !s.eas_api()
                    .get("wardle")
                    .await
                    .unwrap()
                    .annotations()
                    .contains_key("aggregation.dev/rotate")
            };

            // Serving rotation: a new leaf from the same CA; the bundle is unchanged.
            annotate("serving").await;
            assert!(wait_for(|| async { leaf().await.is_some_and(|l| l != old_leaf) }).await);
            assert!(wait_for(annotation_gone).await, "annotation cleared");
            let serving_leaf = leaf().await.unwrap();
            assert!(eao::pki::signed_by(&serving_leaf, &old_ca));
            assert_eq!(bundle().await, vec![old_ca.clone()]);
            assert!(event_reasons(&c, &s.ns)
                .await
                .contains(&"RotationRequestDone".to_string()));

            // CA rotation, phase 1: both CAs published, the leaf still from the old CA.
            annotate("ca").await;
            assert!(
                wait_for(|| async { bundle().await.len() == 2 }).await,
                "new CA published"
            );
            let published = bundle().await;
            assert_eq!(published[0], old_ca);
            let new_ca = published[1].clone();
            let ca_secret = secrets.get("wardle-ca").await.unwrap();
            assert!(ca_secret.data.as_ref().unwrap().contains_key("next.crt"));
            // Phase 2 (after the settle time): the leaf moves to the new CA, both stay published.
            assert!(
                wait_for(|| async { leaf().await.is_some_and(|l| eao::pki::signed_by(&l, &new_ca)) }).await,
                "serving certificate issued from the new CA"
            );
            // The same reconcile then applies the APIService and writes the status: waited for,
            // as the leaf is stored first.
            assert!(
                wait_for(|| async { bundle().await == vec![new_ca.clone(), old_ca.clone()] }).await,
                "both CAs published, the new one first: {:?}",
                bundle().await.len()
            );
            let overlap = || async {
                let status = s.eas_api().get("wardle").await.ok()?.status?;
                let certs = status.certificates?;
                let phase = certs.rotation.map(|r| r.phase);
                (certs.bundle.len() == 2 && phase.as_deref() == Some("Overlap")).then_some(())
            };
            assert!(
                wait_for(|| async { overlap().await.is_some() }).await,
                "the status shows both CAs and the Overlap phase"
            );
            // No replica is Ready in this test, so none is observed serving the new leaf:
            // the old CA must stay published.
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert_eq!(bundle().await.len(), 2, "the old CA is not dropped on a timer");
            let reasons = event_reasons(&c, &s.ns).await;
            for r in ["CARotationStarted", "CARotationNewCAActive"] {
                assert!(reasons.contains(&r.to_string()), "missing event {r}: {reasons:?}");
            }
        })
        .await;
}
