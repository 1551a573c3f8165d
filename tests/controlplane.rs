//! Smoke test of the real-control-plane harness (`eao::testing::controlplane`): etcd,
//! kube-apiserver and kube-controller-manager from `KUBEBUILDER_ASSETS`, kubectl against them,
//! namespace deletion by the namespace controller, and the bundled `extension-apiserver` served
//! through the aggregation layer with the RBAC the operator grants its servers.
//!
//! Without `KUBEBUILDER_ASSETS` every test prints why it is skipped and passes.

use eao::testing::aggregated::{AggregatedServer, ServeOptions};
use eao::testing::controlplane::{Assets, ControlPlane};
use eao::testing::tools::{run, text};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Api;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Polls `check` until it returns `Some`, or fails the test with `what` and `diag()`.
async fn eventually<T, F, Fut>(what: &str, diag: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{what}: not within {TIMEOUT:?}\n{}",
            diag()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn kubectl_works_and_namespace_deletion_completes() {
    let Some(cp) = ControlPlane::shared("kubectl_works_and_namespace_deletion_completes").await else {
        return;
    };
    let out = run(
        {
            let mut c = cp.kubectl();
            c.args(["get", "--raw", "/readyz"]);
            c
        },
        None,
    );
    assert!(out.status.success(), "kubectl get --raw /readyz: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");

    // A namespace with content: the namespace controller must delete the ConfigMap before it
    // removes the `kubernetes` finalizer, so completion proves kube-controller-manager works.
    let client = cp.client().await.expect("admin client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = "eao-smoke-lifecycle";
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace"),
        )
        .await
        .expect("namespace created");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "content"}, "data": {"k": "v"}})).expect("configmap"),
    )
    .await
    .expect("configmap created");
    namespaces
        .delete(name, &DeleteParams::default())
        .await
        .expect("namespace deletion accepted");
    let ns = namespaces
        .get(name)
        .await
        .expect("namespace still there while terminating");
    assert!(
        ns.spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == "kubernetes")),
        "the kubernetes finalizer holds the namespace until its content is gone: {ns:?}"
    );
    let log = cp.dir().join("kube-controller-manager.log");
    eventually(
        "namespace deletion completes",
        || eao::testing::netns::tail(&log, 20),
        || async {
            match namespaces.get_opt(name).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn aggregated_server_serves_flunders_through_the_aggregator() {
    let Some(cp) = ControlPlane::shared("aggregated_server_serves_flunders_through_the_aggregator").await else {
        return;
    };
    let client = cp.client().await.expect("admin client");
    let ns = "eao-smoke-wardle";
    // The server runs with a TokenRequest token of a ServiceAccount that has exactly the RBAC
    // the operator grants its servers, so this also shows that RBAC is enough.
    let mut server = AggregatedServer::start(
        cp,
        ServeOptions {
            binary: Path::new(env!("CARGO_BIN_EXE_extension-apiserver")),
            namespace: ns,
            service: "wardle-api",
            config_yaml: eao::apiserver::STANDALONE_CONFIG,
            port: 8443,
            extra_args: vec![],
            storage: Default::default(),
            replicas: 1,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("aggregated server: {e}"));
    server.check_running().expect("server still running");

    // kubectl through the aggregator: discovery, list, create, read back.
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut c = cp.kubectl();
        c.args(args);
        run(c, stdin)
    };
    let out = kubectl(&["get", "flunders", "-A"], None);
    assert!(out.status.success(), "kubectl get flunders -A: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("No resources found"),
        "empty list: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let flunder = format!(
        "apiVersion: wardle.example.com/v1alpha1\nkind: Flunder\nmetadata:\n  name: first\n  namespace: {ns}\n\
         spec:\n  reference: none\n  size: 3\n"
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&flunder));
    assert!(out.status.success(), "kubectl apply flunder: {}", text(&out.stderr));
    let out = kubectl(&["get", "flunder", "first", "-n", ns, "-o", "json"], None);
    assert!(out.status.success(), "kubectl get flunder: {}", text(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).expect("flunder JSON");
    assert_eq!(got["spec"]["size"], 3, "{got}");
    assert_eq!(got["metadata"]["namespace"], ns);

    // And with the kube client, through the aggregator, as a controller would.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wardle.example.com", "v1alpha1", "Flunder"),
        "flunders",
    );
    let flunders: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let listed = flunders.list(&Default::default()).await.expect("list flunders");
    let names: Vec<_> = listed.items.iter().filter_map(|o| o.metadata.name.clone()).collect();
    assert_eq!(names, vec!["first".to_string()]);
    assert_eq!(listed.items[0].data["spec"]["reference"], "none");

    // A user who may list only the flunder named `first` (RBAC resourceNames): the server's
    // SubjectAccessReview names it when a field selector pins it, even among other terms, and
    // carries the selectors as requirements kube-apiserver accepts.
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: list-first, namespace: {ns}}}\n\
         rules: [{{apiGroups: [wardle.example.com], resources: [flunders], verbs: [list], resourceNames: [first]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: list-first, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: list-first}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: name-limited}}]\n"
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&rbac));
    assert!(out.status.success(), "kubectl apply RBAC: {}", text(&out.stderr));
    let as_user = ["--as", "name-limited", "-n", ns];
    eventually("RBAC allows listing first", String::new, || {
        let out = kubectl(
            &[
                &["auth", "can-i", "list", "flunders.wardle.example.com/first"],
                &as_user[..],
            ]
            .concat(),
            None,
        );
        async move { out.status.success().then_some(()) }
    })
    .await;
    let selector = format!("metadata.namespace={ns},metadata.name=first");
    let get = |extra: &[&str]| {
        kubectl(
            &[&["get", "flunders", "-o", "name"], &as_user[..], extra].concat(),
            None,
        )
    };
    let out = get(&["--field-selector", &selector, "-l", "tier!=x,!gone"]);
    assert!(out.status.success(), "list pinned to first: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "flunder.wardle.example.com/first");
    let out = get(&[]);
    assert!(
        !out.status.success(),
        "an unpinned list is refused: {}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains("forbidden"), "{}", text(&out.stderr));
    server.check_running().expect("server still running");
}

#[tokio::test]
async fn owned_control_plane_is_torn_down_when_the_test_panics() {
    let Some(assets) = Assets::from_env_or_skip("owned_control_plane_is_torn_down_when_the_test_panics") else {
        return;
    };
    // The owned control plane lives in a task that panics; unwinding drops it.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let cp = ControlPlane::start(&assets).await.expect("owned control plane starts");
        let client = cp.client().await.expect("client");
        let req = http::Request::get("/readyz").body(Vec::new()).expect("request");
        assert_eq!(client.request_text(req).await.expect("readyz"), "ok");
        let _ = tx.send((cp.netns().to_string(), cp.dir().to_path_buf(), cp.pids()));
        panic!("deliberate panic with a live control plane");
    });
    assert!(task.await.expect_err("the task panics").is_panic());
    let (netns, dir, pids) = rx.await.expect("the task reported its control plane");
    assert_eq!(pids.len(), 3, "etcd, kube-apiserver, kube-controller-manager: {pids:?}");
    let namespaces = text(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    );
    assert!(!namespaces.contains(&netns), "{netns} deleted: {namespaces}");
    let links = text(
        &Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link")
            .stdout,
    );
    assert!(!links.contains(&netns), "host veth {netns} deleted: {links}");
    if std::env::var_os("EAO_KEEP_CONTROLPLANE").is_none() {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    for pid in pids {
        // Killed and reaped by the drop, so the pid no longer exists (barring reuse so soon).
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is gone"
        );
    }
}
