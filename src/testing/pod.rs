//! A stand-in kubelet for the pods of one Deployment of a test [`ControlPlane`], so that the
//! operator and the bundled server run from the Deployments the chart and the operator render,
//! with the real RBAC of their ServiceAccounts.
//!
//! No kubelet or scheduler runs in the harness, but kube-controller-manager runs the Deployment
//! and ReplicaSet controllers: they create the Pods (which the ServiceAccount admission plugin
//! gives the projected `kube-api-access-*` volume) and compute the Deployment's status from the
//! Pods' status. Patching the Deployment status ourselves would be overwritten by them, so the
//! runner plays the missing parts instead and leaves the status to the real controllers:
//!
//! - **scheduler**: binds each pending Pod of the Deployment to the Node [`NODE_NAME`];
//! - **kubelet**: keeps that Node alive (status heartbeat and Lease), starts the container's
//!   binary as a local process, restarts it when it exits (with back-off), runs its
//!   `readinessProbe` (httpGet) on the probe's period, reports the Pod's status (Running, pod
//!   IP, Ready, restart count), stops the process when the Pod is deleted (SIGTERM, then
//!   SIGKILL after the grace period, at most 10 s) and confirms the deletion;
//! - **EndpointSlice controller**: publishes, for each Service selecting a running pod, an
//!   EndpointSlice with the pod IP, the resolved target port and the Ready condition.
//!
//! So `kubectl rollout status`, `readyReplicas` and the `Available` condition are computed by
//! kube-controller-manager from what a kubelet would report, rolling updates happen for real
//! (a new ReplicaSet's Pod is run, the old Pod is deleted by the controller and stopped here).
//!
//! The container process:
//! - argv is `command` + `args` (or the image's entrypoint, `[image binary]`), with `$(VAR)`
//!   expanded as kubelet does, and the image's binary replaced by the local one from
//!   [`PodRunnerOptions::binaries`];
//! - env: `KUBERNETES_SERVICE_HOST/PORT`, `HOSTNAME`, `envFrom` and `env` (`valueFrom` field,
//!   Secret and ConfigMap references read from the cluster) and nothing from the test process
//!   but `PATH`;
//! - volumes are host directories (see [`super::pod_volumes`]) kept in sync every second;
//!   because the process has no mount namespace, **every absolute path in argv and env that
//!   starts with a volumeMount's `mountPath` is rewritten** to that volume's host directory
//!   (`subPath` mounts are refused);
//! - credentials: `KUBECONFIG` (and any variable named in [`LocalBinary::kubeconfig_env`])
//!   names a kubeconfig equivalent to in-cluster configuration: the control plane's URL, the CA
//!   file and the `tokenFile` of the pod's projected `kube-api-access` volume (the pod-bound
//!   TokenRequest token of its ServiceAccount). In-cluster configuration itself reads fixed
//!   paths under /var/run/secrets, which a host process cannot be given;
//! - network: the control plane's network namespace, where kube-apiserver's aggregator can reach
//!   it through the EndpointSlice; the pod IP is [`ControlPlane::inner_ip`]. All pods share
//!   that namespace (one "pod network" rather than one per pod: the host does not forward
//!   between namespaces), so two running pods must not listen on the same port: a surge pod of
//!   a rolling update needs a different port than the pod it replaces. With
//!   [`RunningPod::start_own_network`] each pod gets a namespace of its own instead (its own
//!   veth pair and /30, a default route to the host), as a kubelet would give it: replicas
//!   listening on the same port then run side by side. They reach kube-apiserver (and anything
//!   else bound to a host address) through the host end of their veth; the host, and with it
//!   kube-apiserver's aggregator and the probes, reach them directly.

use super::controlplane::ControlPlane;
use super::netns::{Error, Process};
pub use super::pod_status::NODE_NAME;
use super::pod_status::{ContainerReport, Endpoint};
use super::pod_volumes::PodVolumes;
use k8s_openapi::api::apps::v1::Deployment;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "pod_loop.rs"]
mod pod_loop;

/// A binary of the image and its local stand-in.
#[derive(Clone, Debug)]
pub struct LocalBinary {
    /// The local binary (`env!("CARGO_BIN_EXE_extension-apiserver")` in tests).
    pub path: PathBuf,
    /// Environment variables besides `KUBECONFIG` that should name the pod's kubeconfig, for a
    /// binary that does not read `KUBECONFIG` (`EAS_KUBECONFIG` for `extension-apiserver`).
    pub kubeconfig_env: Vec<String>,
}

/// How to run the pods.
#[derive(Clone, Debug, Default)]
pub struct PodRunnerOptions {
    /// Image binary path (the container's `command[0]`, or the image entrypoint) → local binary.
    pub binaries: BTreeMap<String, LocalBinary>,
    /// The image entrypoint, for containers without `command`.
    pub image_entrypoint: Vec<String>,
}

/// What the runner knows about one pod, for diagnostics.
#[derive(Clone, Debug, Default)]
pub struct PodReport {
    /// Pod name.
    pub name: String,
    /// Its current process's log.
    pub log: Option<PathBuf>,
    /// Whether the process runs and the readiness probe passed.
    pub ready: bool,
    /// Restarts of the container.
    pub restarts: u32,
    /// The last problem (volume not syncable, failed probe, exit status).
    pub last_error: Option<String>,
}

/// State shared between the runner thread and the guard.
#[derive(Default)]
struct Shared {
    /// Pods by name, including stopped ones (their logs stay useful).
    pods: BTreeMap<String, PodReport>,
    /// Errors of the loop itself (API failures), newest last.
    errors: Vec<String>,
    /// Set to kill every container once (see [`RunningPod::kill_containers`]).
    kill_requested: bool,
    /// Pods whose container to kill once (see [`RunningPod::kill_container`]).
    kill_pods: std::collections::BTreeSet<String>,
}

/// Runs the pods of one Deployment until dropped. Dropping it stops the processes, deletes the
/// runner's EndpointSlices and deletes the Pods it ran (their ReplicaSet then makes new
/// Pending ones, as with a node that is gone).
pub struct RunningPod {
    deployment: String,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningPod {
    /// Starts running the pods of `deployment` (read from the cluster; its namespace and name
    /// are what count). The runner works on its own thread and runtime, so a test may block
    /// (`kubectl wait`, say) while pods start and report.
    pub fn start(
        cp: &'static ControlPlane,
        deployment: &Deployment,
        opts: PodRunnerOptions,
    ) -> Result<RunningPod, Error> {
        RunningPod::start_with(cp, deployment, opts, false)
    }

    /// [`RunningPod::start`], each pod in a network namespace of its own (see the module
    /// documentation): for several replicas that listen on the same port.
    pub fn start_own_network(
        cp: &'static ControlPlane,
        deployment: &Deployment,
        opts: PodRunnerOptions,
    ) -> Result<RunningPod, Error> {
        RunningPod::start_with(cp, deployment, opts, true)
    }

    fn start_with(
        cp: &'static ControlPlane,
        deployment: &Deployment,
        opts: PodRunnerOptions,
        own_network: bool,
    ) -> Result<RunningPod, Error> {
        let name = deployment.metadata.name.clone().ok_or("Deployment without name")?;
        let ns = deployment
            .metadata
            .namespace
            .clone()
            .ok_or("Deployment without namespace")?;
        let label = format!("{ns}/{name}");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let ctx = pod_loop::Ctx {
            cp,
            namespace: ns.clone(),
            deployment: name.clone(),
            opts,
            own_network,
            shared: shared.clone(),
            dir: cp.dir().join("pods"),
        };
        let thread = std::thread::Builder::new()
            .name(format!("pod-runner-{name}"))
            .spawn(
                move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(pod_loop::run(ctx, stop_rx)),
                    Err(e) => eprintln!("pod runner for {ns}/{name}: no runtime: {e}"),
                },
            )?;
        Ok(RunningPod {
            deployment: label,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pods run so far.
    pub fn pods(&self) -> Vec<PodReport> {
        self.lock().pods.values().cloned().collect()
    }

    /// The last `lines` of each pod's log, with its state and the runner's recent errors: for
    /// failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let shared = self.lock();
        let mut out = format!("pods of deployment {}:\n", self.deployment);
        for p in shared.pods.values() {
            out.push_str(&format!(
                "--- pod {} (ready {}, restarts {}, last error {:?})\n",
                p.name, p.ready, p.restarts, p.last_error
            ));
            if let Some(log) = &p.log {
                out.push_str(&super::netns::tail(log, lines));
                out.push('\n');
            }
        }
        if shared.pods.is_empty() {
            out.push_str("(no pod run yet)\n");
        }
        let errors = &shared.errors[shared.errors.len().saturating_sub(5)..];
        if !errors.is_empty() {
            out.push_str(&format!("runner errors: {errors:#?}\n"));
        }
        out
    }

    /// Kills every container process once, as a crash would; the runner restarts them (the
    /// restart count goes up and the pod is NotReady until its probe passes again).
    pub fn kill_containers(&self) {
        self.lock().kill_requested = true;
    }

    /// Kills the container process of pod `name` once, as a crash of that one replica would;
    /// the runner restarts it like [`RunningPod::kill_containers`] does.
    pub fn kill_container(&self, name: &str) {
        self.lock().kill_pods.insert(name.to_string());
    }

    /// Stops the runner and its pods now (what drop does).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One container process and what kubelet tracks about it.
struct Container {
    process: Option<Process>,
    log: PathBuf,
    started_at: String,
    restarts: u32,
    last_exit: Option<i32>,
    /// Not before this instant (crash-loop back-off).
    restart_at: Option<std::time::Instant>,
    ready: bool,
    failures: i32,
    next_probe: std::time::Instant,
}

/// One pod the runner runs.
struct RunPod {
    pod: k8s_openapi::api::core::v1::Pod,
    volumes: PodVolumes,
    container: Container,
    /// What was last reported, to patch the status only on change.
    reported: Option<(bool, bool, u32)>,
    /// The pod's own network namespace with [`RunningPod::start_own_network`]; deleted when
    /// the pod is dropped (after its process is stopped).
    net: Option<super::netns::NetNs>,
}

impl RunPod {
    /// The pod IP: its own namespace's inner address, else the control plane's.
    fn ip(&self, cp: &ControlPlane) -> std::net::IpAddr {
        std::net::IpAddr::V4(self.net.as_ref().map_or_else(|| cp.inner_ip(), |n| n.inner()))
    }

    /// The network namespace the container runs in.
    fn netns<'a>(&'a self, cp: &'a ControlPlane) -> &'a str {
        self.net.as_ref().map_or_else(|| cp.netns(), |n| n.name())
    }
}

/// Used by pod_loop: the container report of a pod.
fn container_report(p: &RunPod) -> Option<ContainerReport<'_>> {
    let container = p.pod.spec.as_ref()?.containers.first()?;
    Some(ContainerReport {
        container,
        running: p.container.process.is_some(),
        ready: p.container.ready,
        restarts: p.container.restarts,
        started_at: p.container.started_at.clone(),
        last_exit: p.container.last_exit,
    })
}

/// Used by pod_loop: the pod as an endpoint.
fn endpoint(p: &RunPod, ip: std::net::IpAddr) -> Option<Endpoint<'_>> {
    Some(Endpoint {
        pod: &p.pod,
        container: p.pod.spec.as_ref()?.containers.first()?,
        ip,
        ready: p.container.process.is_some() && p.container.ready,
    })
}

/// Back-off before restarting a container that exited `restarts` times (kubelet: 10 s doubling
/// to 5 min; shorter here, tests wait for recovery).
fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << restarts.min(5)).min(10_000))
}

/// Time in the status format.
fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}
