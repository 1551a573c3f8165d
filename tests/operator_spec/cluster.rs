//! What the tests of this binary share: kubectl and helm against the harness's control plane,
//! polling with diagnostics, and the pods the stand-in kubelet runs.

use eao::testing::controlplane::ControlPlane;
use eao::testing::pod::RunningPod;
pub use eao::testing::tools::{pod_options, root, run, text, OPERATOR_BINARY};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(150);
pub const RELEASE: &str = "eao";
pub const OP_NS: &str = "eao-system";
pub const OPERATOR: &str = "eao-extension-apiserver-operator";

/// The control plane, and the pods this test runs (for diagnostics).
pub struct Cluster {
    pub cp: &'static ControlPlane,
    pub operator: Option<RunningPod>,
    pub server: Option<RunningPod>,
    /// Namespaces whose objects the diagnostics show.
    pub namespaces: Vec<String>,
}

impl Cluster {
    pub fn new(cp: &'static ControlPlane) -> Self {
        Cluster {
            cp,
            operator: None,
            server: None,
            namespaces: Vec::new(),
        }
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.cp.kubectl();
        c.args(args);
        run(c, stdin)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(args, None)
    }

    pub fn helm(&self, args: &[&str]) -> Output {
        let home = self.cp.dir().join("helm");
        let helm = match std::env::var_os("HELM") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => root().join(".tools/bin/helm"),
        };
        let mut c = Command::new(helm);
        c.args(args)
            .arg("--kubeconfig")
            .arg(self.cp.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        run(c, None)
    }

    /// Everything a failure message should show.
    pub fn diagnostics(&self) -> String {
        let get = |args: &[&str]| {
            let out = self.kubectl(args);
            format!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                text(&out.stdout),
                text(&out.stderr)
            )
        };
        let mut d = String::new();
        if let Some(op) = &self.operator {
            d.push_str(&format!("operator:\n{}\n", op.log_tail(40)));
        }
        if let Some(s) = &self.server {
            d.push_str(&format!("server:\n{}\n", s.log_tail(30)));
        }
        for ns in &self.namespaces {
            d.push_str(&get(&[
                "get",
                "deploy,rs,pods,pvc,endpointslices",
                "-n",
                ns,
                "-o",
                "wide",
            ]));
            d.push_str(&get(&["get", "events", "-n", ns]));
        }
        d.push_str(&get(&["get", "eas", "-A", "-o", "yaml"]));
        d
    }

    /// Runs kubectl and fails with the diagnostics unless it succeeds; stdout.
    pub fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_in(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr),
            self.diagnostics()
        );
        text(&out.stdout)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {} failed: {}{}\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr),
            self.diagnostics()
        );
        text(&out.stdout)
    }

    /// `kubectl get <args> -o json`, or `None` when it fails (not found, say).
    pub fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Polls `check` until it returns `Some`, or fails with `what` and the diagnostics.
    pub async fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{what}: not within {TIMEOUT:?}\n{}",
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The condition `type_` of an ExtensionApiServer: (status, reason).
    pub fn condition(&self, ns: &str, name: &str, type_: &str) -> Option<(String, String)> {
        let eas = self.json(&["get", "eas", name, "-n", ns])?;
        let c = eas["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?
            .clone();
        Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
    }
}
