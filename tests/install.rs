//! The install path on a real control plane, as README "Quickstart on a cluster" and the chart's
//! NOTES.txt describe it: `helm install` the chart, the operator rolls out, `kubectl apply -f
//! examples/wardle.yaml`, the ExtensionApiServer turns Ready and the wardle API answers, `helm
//! upgrade` rolls the operator, and deleting the ExtensionApiServer plus `helm uninstall` leave
//! nothing behind.
//!
//! The operator and the bundled server run from the Deployments the chart and the operator
//! render, through `eao::testing::pod::RunningPod` (a stand-in kubelet): with their
//! ServiceAccounts' tokens, so the chart's least-privilege RBAC and the RBAC the operator grants
//! its server are what is tested, and the Deployments' status comes from kube-controller-manager.
//!
//! Without `KUBEBUILDER_ASSETS` the test prints why it is skipped and passes.

use eao::testing::controlplane::{kubectl_path, ControlPlane};
use eao::testing::harness::{pod_logs, Harness, OPERATOR, OP_NS, RELEASE};
use eao::testing::pod::RunningPod;
use eao::testing::tools::{chart_dir, helm_path, pod_options, root, text, OPERATOR_BINARY};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use std::time::{Duration, Instant};

const EAS_NS: &str = "wardle-system";
const TIMEOUT: Duration = Duration::from_secs(120);
const OWNER_LABELS: &str = "aggregation.dev/owner-namespace=wardle-system,aggregation.dev/owner-name=wardle";

/// The test's view of the cluster and the pods it runs, for commands and diagnostics.
struct Cluster {
    cp: &'static ControlPlane,
    operator: Option<RunningPod>,
    server: Option<RunningPod>,
}

impl Harness for Cluster {
    fn control_plane(&self) -> &ControlPlane {
        self.cp
    }

    fn patience(&self) -> Duration {
        TIMEOUT
    }

    fn diagnostics(&self) -> String {
        let mut d = pod_logs(&[
            ("operator", self.operator.as_ref(), 40),
            ("server", self.server.as_ref(), 30),
        ]);
        for ns in [OP_NS, EAS_NS] {
            d.push_str(&self.shown(&["get", "deploy,rs,pods,endpointslices", "-n", ns, "-o", "wide"]));
        }
        d.push_str(&self.shown(&["get", "eas", "-A", "-o", "yaml"]));
        d.push_str(&self.shown(&["get", "apiservices", "-l", OWNER_LABELS]));
        d
    }
}

async fn deployment(cp: &ControlPlane, ns: &str, name: &str) -> Option<Deployment> {
    let client = cp.client().await.expect("admin client");
    Api::<Deployment>::namespaced(client, ns)
        .get_opt(name)
        .await
        .expect("get deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_wardle_upgrade_and_uninstall() {
    let Some(cp) = ControlPlane::shared("helm_install_wardle_upgrade_and_uninstall").await else {
        return;
    };
    assert!(
        helm_path().is_file(),
        "helm not found at {}: run `make tools`",
        helm_path().display()
    );
    assert!(kubectl_path().is_file(), "kubectl not found: run `make tools`");
    let started = Instant::now();
    let mut c = Cluster {
        cp,
        operator: None,
        server: None,
    };
    let chart = chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");

    // 1. helm install, as the README says. The image does not exist; the pod runner runs the
    //    local binaries for it.
    c.install_chart(&[]);
    let d = deployment(cp, OP_NS, OPERATOR)
        .await
        .expect("the chart made the operator Deployment");
    let op_binary = env!("CARGO_BIN_EXE_extension-apiserver-operator");
    c.operator =
        Some(RunningPod::start(cp, &d, pod_options(op_binary, &[], OPERATOR_BINARY)).expect("operator pod runner"));
    // Rollout status succeeds only when the Deployment controller sees the pod Ready, i.e. the
    // operator's /readyz answered the chart's readinessProbe.
    c.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deployment/{OPERATOR}"),
        "-n",
        OP_NS,
        "--timeout=120s",
    ]);
    let d = deployment(cp, OP_NS, OPERATOR).await.expect("operator Deployment");
    let status = d.status.clone().unwrap_or_default();
    assert_eq!(status.available_replicas, Some(1), "{status:?}");
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Available" && c.status == "True"),
        "{status:?}"
    );

    // 2. The wardle example: the operator renders the server; it runs from that Deployment.
    c.kubectl_ok(&[
        "apply",
        "-f",
        root().join("examples/wardle.yaml").to_str().expect("path"),
    ]);
    let server_deployment = c
        .eventually("the operator creates the wardle Deployment", || {
            let out = c.kubectl(&["get", "deployment", "wardle", "-n", EAS_NS, "-o", "json"]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Deployment>(&out.stdout).ok())
                .flatten()
        })
        .await;
    let server_binary = env!("CARGO_BIN_EXE_extension-apiserver");
    c.server = Some(
        RunningPod::start(
            cp,
            &server_deployment,
            pod_options(server_binary, &["EAS_KUBECONFIG"], eao::serverconfig::SERVER_BINARY),
        )
        .expect("server pod runner"),
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "eas/wardle",
        "-n",
        EAS_NS,
        "--timeout=120s",
    ]);
    assert_eq!(c.names(&["get", "flunders", "-A"]), Vec::<String>::new());
    // The server answers writes too, with the RBAC the operator granted it (admission reads
    // Flunders and Fischers through its own ServiceAccount).
    c.kubectl_ok_in(
        &["apply", "-f", "-"],
        Some("apiVersion: wardle.example.com/v1alpha1\nkind: Flunder\nmetadata:\n  name: first\n  namespace: wardle-system\nspec:\n  reference: none\n"),
    );
    assert_eq!(
        c.names(&["get", "flunders", "-n", EAS_NS]),
        ["flunder.wardle.example.com/first"]
    );

    // A crash: the runner restarts the container as kubelet would, the pod reports the
    // restart, and the data directory (the embedded store on its PersistentVolumeClaim, a host
    // directory here) outlives the container.
    c.server.as_ref().expect("server runner").kill_containers();
    c.eventually("the restarted server container is ready again", || {
        let v = c.json(&["get", "pods", "-n", EAS_NS]);
        let status = &v["items"][0]["status"]["containerStatuses"][0];
        (status["restartCount"] == 1 && status["ready"] == true).then_some(())
    })
    .await;
    c.eventually("the Flunder is served again after the restart", || {
        let out = c.kubectl(&["get", "flunders", "-n", EAS_NS, "-o", "name"]);
        (out.status.success() && text(&out.stdout).trim() == "flunder.wardle.example.com/first").then_some(())
    })
    .await;

    // 3. helm upgrade with changed values rolls the operator (a new pod template). The admin
    //    port changes too: the runner's pods share one network namespace, and the surge pod
    //    must not collide with the pod it replaces (a kubelet would give each its own).
    c.helm_ok(&[
        "upgrade",
        RELEASE,
        chart,
        "-n",
        OP_NS,
        "--reuse-values",
        "--set",
        "adminPort=8081",
        "--set",
        "metrics.service.enabled=true",
    ]);
    c.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deployment/{OPERATOR}"),
        "-n",
        OP_NS,
        "--timeout=120s",
    ]);
    // The old pod is stopped (SIGTERM: it gives up the Lease) and its deletion confirmed.
    c.eventually("only the new operator pod remains", || {
        (c.names(&["get", "pods", "-n", OP_NS]).len() == 1).then_some(())
    })
    .await;
    // The metrics Service gets an EndpointSlice pointing at the new pod's admin port.
    c.eventually("the metrics Service has a ready endpoint on port 8081", || {
        let v = c.json(&[
            "get",
            "endpointslices",
            "-n",
            OP_NS,
            "-l",
            &format!("kubernetes.io/service-name={OPERATOR}-metrics"),
        ]);
        let items = v["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .any(|s| {
                s["ports"][0]["port"] == 8081
                    && s["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["conditions"]["ready"] == true))
            })
            .then_some(())
    })
    .await;
    // The upgraded operator reconciles: a spec change reaches the APIService.
    c.kubectl_ok(&[
        "patch",
        "eas",
        "wardle",
        "-n",
        EAS_NS,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/versions/0/versionPriority","value":16}]"#,
    ]);
    c.eventually("the upgraded operator updates the APIService", || {
        let v = c.json(&["get", "apiservice", "v1alpha1.wardle.example.com"]);
        (v["spec"]["versionPriority"] == 16).then_some(())
    })
    .await;
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "eas/wardle",
        "-n",
        EAS_NS,
        "--timeout=120s",
    ]);

    // 4. Uninstall: the ExtensionApiServer first (its finalizer needs the operator), then the
    //    release. Nothing the operator or the chart made may remain.
    c.kubectl_ok(&["delete", "eas", "wardle", "-n", EAS_NS, "--timeout=120s"]);
    c.server = None;
    c.helm_ok(&["uninstall", RELEASE, "-n", OP_NS, "--wait", "--timeout=120s"]);
    c.eventually("the operator pods are deleted", || {
        c.names(&["get", "pods", "-n", OP_NS]).is_empty().then_some(())
    })
    .await;
    c.operator = None;
    let leftovers = |c: &Cluster| {
        // What the control plane itself puts in every namespace (kube-root-ca.crt, the default
        // ServiceAccount, and whatever else this distribution publishes), as seen in `default`.
        let everywhere = c.names(&["get", "configmaps,serviceaccounts", "-n", "default"]);
        let mut found = Vec::new();
        for (args, what) in [
            (vec!["get", "apiservices", "-l", OWNER_LABELS], "APIServices"),
            (
                vec!["get", "clusterroles,clusterrolebindings", "-l", OWNER_LABELS],
                "cluster RBAC",
            ),
            (
                vec!["get", "rolebindings", "-n", "kube-system", "-l", OWNER_LABELS],
                "kube-system RoleBinding",
            ),
            (
                vec![
                    "get",
                    "deploy,rs,pods,svc,endpointslices,secrets,configmaps,serviceaccounts,pvc",
                    "-n",
                    EAS_NS,
                ],
                "wardle-system children",
            ),
            (
                vec![
                    "get",
                    "deploy,rs,pods,svc,endpointslices,secrets,configmaps,serviceaccounts,roles,rolebindings",
                    "-n",
                    OP_NS,
                ],
                "release objects",
            ),
            (
                vec![
                    "get",
                    "clusterroles,clusterrolebindings",
                    "-l",
                    &format!("app.kubernetes.io/instance={RELEASE}"),
                ],
                "chart RBAC",
            ),
        ] {
            for n in c.names(&args) {
                if everywhere.contains(&n) {
                    continue;
                }
                found.push(format!("{what}: {n}"));
            }
        }
        found
    };
    let waited = Instant::now();
    loop {
        let found = leftovers(&c);
        if found.is_empty() {
            break;
        }
        assert!(
            waited.elapsed() < TIMEOUT,
            "left behind after {TIMEOUT:?} (garbage collection included): {found:#?}\n{}",
            c.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // crds.keep (the default) keeps the CRD, and with it nothing else.
    assert_eq!(
        c.names(&["get", "crd", "extensionapiservers.aggregation.dev"]),
        ["customresourcedefinition.apiextensions.k8s.io/extensionapiservers.aggregation.dev"]
    );
    assert!(c.names(&["get", "eas", "-A"]).is_empty());
    c.kubectl_ok(&["delete", "namespace", EAS_NS, OP_NS, "--timeout=120s"]);
    eprintln!("install path passed in {:.1}s", started.elapsed().as_secs_f64());
}
