//! What a test that drives the real control plane with kubectl and helm needs from its view of
//! the cluster: the commands, their failures shown with the test's own diagnostics, and polling
//! until something holds. A test implements the two required methods; the rest is shared, so
//! every such test fails the same way: the command, what it printed, then the diagnostics.

use super::controlplane::ControlPlane;
use super::pod::RunningPod;
use super::tools::{chart_dir, helm_path, run, text};
use serde_json::Value;
use std::future::Future;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The release name and namespace under which the tests install the chart.
pub const RELEASE: &str = "eao";
pub const OP_NS: &str = "eao-system";
/// The operator Deployment the chart renders for [`RELEASE`].
pub const OPERATOR: &str = "eao-extension-apiserver-operator";

pub trait Harness {
    /// The control plane the commands go to.
    fn control_plane(&self) -> &ControlPlane;

    /// Everything a failure message should show: pod logs, the objects involved.
    fn diagnostics(&self) -> String;

    /// How long [`Harness::eventually`] waits before it fails.
    fn patience(&self) -> Duration {
        Duration::from_secs(150)
    }

    /// Runs kubectl with `stdin` (none: no standard input); its exit status is the caller's.
    fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.control_plane().kubectl();
        c.args(args);
        run(c, stdin)
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(args, None)
    }

    /// Runs kubectl and fails with the diagnostics unless it succeeds; its standard output.
    fn kubectl_ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_in(args, stdin);
        self.succeeded("kubectl", args, &out);
        text(&out.stdout)
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_ok_in(args, None)
    }

    /// Runs helm against the control plane, its cache and config in the control plane's
    /// directory (never the user's home).
    fn helm(&self, args: &[&str]) -> Output {
        let cp = self.control_plane();
        let home = cp.dir().join("helm");
        let mut c = Command::new(helm_path());
        c.args(args)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        run(c, None)
    }

    /// Runs helm and fails with the diagnostics unless it succeeds; its standard output.
    fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        self.succeeded("helm", args, &out);
        text(&out.stdout)
    }

    /// `helm install`s this repository's chart as [`RELEASE`] in [`OP_NS`] (created if
    /// missing), with plain logs (they read better in failure messages) and `extra` flags.
    fn install_chart(&self, extra: &[&str]) -> String {
        let chart = chart_dir();
        let chart = chart.to_str().expect("UTF-8 path");
        let mut args = vec![
            "install",
            RELEASE,
            chart,
            "-n",
            OP_NS,
            "--create-namespace",
            "--set",
            "logFormat=plain",
        ];
        args.extend(extra);
        self.helm_ok(&args)
    }

    /// `kubectl <args> -o json`, or `None` when kubectl fails (not found, say).
    fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `kubectl <args> -o json`; fails with the diagnostics unless kubectl succeeds.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {all:?} printed no JSON ({e}): {out}"))
    }

    /// The names `kubectl <args> -o name` prints (none when it finds none).
    fn names(&self, args: &[&str]) -> Vec<String> {
        let mut all = args.to_vec();
        all.extend(["-o", "name"]);
        self.kubectl_ok(&all)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `$ kubectl <args>` and what it printed, for diagnostics.
    fn shown(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        )
    }

    /// Polls `check` until it returns `Some`, or fails with `what` and the diagnostics.
    fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> impl Future<Output = T> {
        async move {
            let (started, patience) = (Instant::now(), self.patience());
            loop {
                if let Some(v) = check() {
                    return v;
                }
                assert!(
                    started.elapsed() < patience,
                    "{what}: not within {patience:?}\n{}",
                    self.diagnostics()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Fails with the command, what it printed and the diagnostics unless it succeeded.
    fn succeeded(&self, tool: &str, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "{tool} {} failed: {}{}\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr),
            self.diagnostics()
        );
    }
}

/// The last `lines` lines of each running pod's log, under its name (absent pods are skipped).
pub fn pod_logs(pods: &[(&str, Option<&RunningPod>, usize)]) -> String {
    pods.iter()
        .filter_map(|(name, pod, lines)| pod.map(|p| format!("{name}:\n{}\n", p.log_tail(*lines))))
        .collect()
}
