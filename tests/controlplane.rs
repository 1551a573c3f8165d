//! Smoke test of the real-control-plane harness (`eao::testing::controlplane`): etcd,
//! kube-apiserver and kube-controller-manager from `KUBEBUILDER_ASSETS`, kubectl against them,
//! namespace deletion by the namespace controller, and the bundled `extension-apiserver` served
//! through the aggregation layer with the RBAC the operator grants its servers.
//!
//! Without `KUBEBUILDER_ASSETS` every test prints why it is skipped and passes.

use eao::crd::KeyAlgorithm;
use eao::pki;
use eao::testing::controlplane::{Assets, ControlPlane, Credentials};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Api;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);

fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .expect("kubectl reads stdin");
    }
    child.wait_with_output().expect("kubectl finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

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

/// Deletes the APIService when the test ends, also on panic: an unavailable APIService left
/// behind makes the namespace controller's discovery fail for every later namespace deletion.
struct DeleteApiService(Command);

impl Drop for DeleteApiService {
    fn drop(&mut self) {
        let _ = self.0.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

#[tokio::test]
async fn aggregated_server_serves_flunders_through_the_aggregator() {
    let Some(cp) = ControlPlane::shared("aggregated_server_serves_flunders_through_the_aggregator").await else {
        return;
    };
    let client = cp.client().await.expect("admin client");
    let (ns, svc, sa) = ("eao-smoke-wardle", "wardle-api", "wardle-server");
    let ssa = PatchParams::apply("eao-smoke").force();
    let apply = |v: Value| Patch::Apply(v);

    // The server's identity: a ServiceAccount with exactly the RBAC the operator grants the
    // servers it deploys, and a token from TokenRequest.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &ssa,
            &apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        )
        .await
        .expect("namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.patch(
        sa,
        &ssa,
        &apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})),
    )
    .await
    .expect("service account");
    let subject = json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]);
    let rbac = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "eao-smoke-auth-delegator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": eao::operator::rbac::AUTH_DELEGATOR},
            "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "eao-smoke-auth-reader", "namespace": "kube-system"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": eao::operator::rbac::AUTH_READER},
            "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "eao-smoke-server"}, "rules": eao::operator::rbac::bundled_server_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "eao-smoke-server"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "eao-smoke-server"},
            "subjects": subject}),
    ];
    let mut kubectl_apply = cp.kubectl();
    kubectl_apply.args(["apply", "--server-side", "-f", "-"]);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rbac}).to_string();
    let out = run(kubectl_apply, Some(&list));
    assert!(out.status.success(), "RBAC applies: {}", text(&out.stderr));
    let token = sas
        .create_token_request(
            sa,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("token request")
        .status
        .expect("token in status")
        .token;

    // Files of the server: serving certificate for the Service name, config, kubeconfig.
    let dir = cp.dir().join("wardle");
    std::fs::create_dir_all(&dir).expect("server dir");
    let now = jiff::Timestamp::now().as_second();
    let ca = pki::generate_ca("wardle-ca", KeyAlgorithm::EcdsaP256, Duration::from_secs(3600), now).expect("CA");
    let serving = pki::issue_serving(
        &ca,
        &pki::service_dns_names(svc, ns),
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
        now,
    )
    .expect("serving certificate");
    std::fs::write(dir.join("tls.crt"), &serving.cert_pem).expect("write cert");
    std::fs::write(dir.join("tls.key"), &serving.key_pem).expect("write key");
    std::fs::write(dir.join("config.yaml"), eao::apiserver::STANDALONE_CONFIG).expect("write config");
    cp.write_kubeconfig(&dir.join("kubeconfig"), &Credentials::Token(token))
        .expect("server kubeconfig");

    let port = 8443; // the namespace has its own ports
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_extension-apiserver"));
    cmd.arg("--bind-address")
        .arg(cp.inner_ip().to_string())
        .args(["--secure-port", &port.to_string(), "--log-format", "plain"])
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-private-key-file")
        .arg(dir.join("tls.key"))
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--data-dir")
        .arg(dir.join("data"));
    let mut server = cp.spawn_in_netns(cmd).expect("server starts");

    // Service without selector + the EndpointSlice a kubelet-less cluster needs by hand, then
    // the APIService trusting the server's CA (never insecureSkipTLSVerify).
    let mut objects = cp.service_for_netns(ns, svc, port);
    objects["items"].as_array_mut().expect("a List").push(json!(
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1alpha1.wardle.example.com"},
         "spec": {"group": "wardle.example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                  "service": {"name": svc, "namespace": ns, "port": 443},
                  "caBundle": base64_std(&ca.cert_pem)}}
    ));
    let mut cleanup = cp.kubectl();
    cleanup.args([
        "delete",
        "apiservice",
        "v1alpha1.wardle.example.com",
        "--ignore-not-found",
        "--wait=false",
    ]);
    let _cleanup = DeleteApiService(cleanup);
    let mut kubectl_apply = cp.kubectl();
    kubectl_apply.args(["apply", "--server-side", "-f", "-"]);
    let out = run(kubectl_apply, Some(&objects.to_string()));
    assert!(
        out.status.success(),
        "Service, EndpointSlice, APIService apply: {}",
        text(&out.stderr)
    );

    let apiservices: Api<APIService> = Api::all(client.clone());
    let server_log = server.log().to_path_buf();
    let last_conditions = std::sync::Mutex::new(String::new());
    eventually(
        "APIService v1alpha1.wardle.example.com Available",
        || {
            format!(
                "conditions: {}\nserver log {}:\n{}",
                last_conditions.lock().expect("lock"),
                server_log.display(),
                eao::testing::netns::tail(&server_log, 30)
            )
        },
        || async {
            let s = apiservices.get("v1alpha1.wardle.example.com").await.ok()?;
            let conditions = s.status.and_then(|s| s.conditions).unwrap_or_default();
            *last_conditions.lock().expect("lock") = format!("{conditions:?}");
            conditions
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
                .then_some(())
        },
    )
    .await;
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
    server.check_running().expect("server still running");
}

fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
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
