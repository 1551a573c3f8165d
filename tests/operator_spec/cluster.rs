//! What the tests of this binary share: kubectl and helm against the harness's control plane,
//! polling with diagnostics, and the pods the stand-in kubelet runs.

use eao::testing::controlplane::ControlPlane;
use eao::testing::harness::pod_logs;
pub use eao::testing::harness::{Harness, OPERATOR, OP_NS, RELEASE};
use eao::testing::pod::RunningPod;
pub use eao::testing::tools::{chart_dir, pod_options, root, text, OPERATOR_BINARY};
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(150);

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

    /// The condition `type_` of an ExtensionApiServer: (status, reason).
    pub fn condition(&self, ns: &str, name: &str, type_: &str) -> Option<(String, String)> {
        let eas = self.try_json(&["get", "eas", name, "-n", ns])?;
        let c = eas["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?
            .clone();
        Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
    }
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
        for ns in &self.namespaces {
            d.push_str(&self.shown(&["get", "deploy,rs,pods,pvc,endpointslices", "-n", ns, "-o", "wide"]));
            d.push_str(&self.shown(&["get", "events", "-n", ns]));
        }
        d.push_str(&self.shown(&["get", "eas", "-A", "-o", "yaml"]));
        d
    }
}
