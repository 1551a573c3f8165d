//! The environment of the behaviour tests: the harness control plane, the CRD, the chart's
//! ServiceAccount and least-privilege RBAC (`rbac.allowUserRules=false`), and the controller
//! running in this process **as that ServiceAccount** (a TokenRequest token), so what the
//! chart grants is what the operator may do.
//!
//! The tests run one at a time ([`serial`]): they count the operator's writes, which another
//! test's objects would add to, and the server pods of the pod runner share one network
//! namespace and port.

use eao::operator::metrics::Metrics;
use eao::testing::controlplane::{ControlPlane, Credentials};
use kube::Client;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

pub const OP_NS: &str = "eao-system";
pub const RELEASE: &str = "eao";
pub const SERVICE_ACCOUNT: &str = "eao-extension-apiserver-operator";
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What every test shares.
pub struct Env {
    pub cp: &'static ControlPlane,
    /// The in-process controller's metrics.
    pub metrics: Arc<Metrics>,
    /// A kubeconfig with the chart ServiceAccount's token.
    pub operator_kubeconfig: PathBuf,
}

static ENV: OnceCell<Option<Env>> = OnceCell::const_new();
static SERIAL: Mutex<()> = Mutex::const_new(());

pub use eao::testing::tools::{chart_dir, helm_path, root};

/// Runs `cmd` with `stdin`, and panics with its output unless it succeeds.
pub fn run_ok(mut cmd: Command, stdin: &[u8]) -> String {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).expect("stdin");
    }
    let out = child.wait_with_output().expect("command finishes");
    assert!(
        out.status.success(),
        "{desc} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl <args>` as the admin.
pub fn kubectl(cp: &ControlPlane, args: &[&str], stdin: &[u8]) -> String {
    let mut c = cp.kubectl();
    c.args(args);
    run_ok(c, stdin)
}

/// Installs the chart's ServiceAccount and RBAC (not its Deployment: the tests run the
/// operator themselves) and returns a kubeconfig with the ServiceAccount's token.
pub fn install_chart_identity(cp: &ControlPlane, extra: &[&str]) -> PathBuf {
    let home = cp.dir().join("helm");
    let chart = chart_dir();
    let mut helm = Command::new(helm_path());
    helm.args(["template", RELEASE])
        .arg(&chart)
        .args(["-n", OP_NS])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/clusterrole.yaml"])
        .args(["--show-only", "templates/role.yaml"])
        .args(extra)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    let manifests = run_ok(helm, b"");
    let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OP_NS}\n");
    kubectl(cp, &["apply", "-f", "-"], ns.as_bytes());
    kubectl(cp, &["apply", "-n", OP_NS, "-f", "-"], manifests.as_bytes());
    let token = kubectl(
        cp,
        &["create", "token", SERVICE_ACCOUNT, "-n", OP_NS, "--duration=24h"],
        b"",
    );
    let path = cp.dir().join("operator.kubeconfig");
    cp.write_kubeconfig(&path, &Credentials::Token(token.trim().to_string()))
        .expect("operator kubeconfig");
    path
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// The environment, set up once; `None` (the test is skipped) without `KUBEBUILDER_ASSETS`.
pub async fn env(test: &str) -> Option<&'static Env> {
    let cp = ControlPlane::shared(test).await?;
    ENV.get_or_init(|| async move {
        let crd = root().join("crds/extensionapiservers.aggregation.dev.yaml");
        kubectl(cp, &["apply", "-f", crd.to_str().expect("path")], b"");
        // Polled: `kubectl wait` fails outright while the CRD has no conditions yet.
        let crds: kube::Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = kube::Api::all(cp.client().await.expect("admin client"));
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(
                crds,
                "extensionapiservers.aggregation.dev",
                kube::runtime::conditions::is_crd_established(),
            ),
        )
        .await
        .expect("the CRD is Established within 60 s")
        .expect("watching the CRD");
        let operator_kubeconfig = install_chart_identity(cp, &[]);
        let metrics = Arc::new(Metrics::default());
        start_controller(operator_kubeconfig.clone(), metrics.clone());
        Some(Env {
            cp,
            metrics,
            operator_kubeconfig,
        })
    })
    .await
    .as_ref()
}

/// Runs the controller on a thread of its own (each test has its own runtime, which ends with
/// the test) until the process exits.
fn start_controller(kubeconfig: PathBuf, metrics: Arc<Metrics>) {
    std::thread::Builder::new()
        .name("eao-controller".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("controller runtime");
            rt.block_on(async move {
                eao::operator::controller::run(
                    client_for(&kubeconfig).await,
                    eao::operator::reconcile::build::BuildOptions {
                        default_server_image: "extension-apiserver-operator:behaviour".into(),
                        register_before_available: false,
                    },
                    metrics,
                    kube::runtime::events::Reporter {
                        controller: "extension-apiserver-operator".into(),
                        instance: Some("behaviour".into()),
                    },
                    Arc::new(AtomicBool::new(false)),
                    std::future::pending(),
                )
                .await
            })
        })
        .expect("controller thread");
}

/// Holds the one-test-at-a-time lock.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Polls `check` until it returns `Some`, or panics with `what` and `diagnostics()`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, diagnostics: impl Fn() -> String, mut check: F) -> T
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
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes (create, update, patch, delete) the controller's reconciles have sent so far,
/// from `eao_reconcile_api_requests_sum{verb}`.
pub fn writes(metrics: &Metrics) -> f64 {
    metrics
        .encode(0)
        .lines()
        .filter(|l| l.starts_with("eao_reconcile_api_requests_sum{"))
        .filter(|l| {
            ["create", "update", "patch", "delete"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A unique suffix for names.
pub fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}", nanos % 0xfffff)
}
