//! The loop of [`super::RunningPod`]: once a second it binds, starts, probes, reports and stops
//! the pods of its Deployment (see the parent module for what it emulates and why).

use super::{backoff, container_report, endpoint, now, Container, PodReport, PodRunnerOptions, RunPod, Shared};
use crate::testing::controlplane::ControlPlane;
use crate::testing::netns::{Error, NetNs, Process};
use crate::testing::pod_env::{container_argv, container_env, rewrite_paths, PodFields};
use crate::testing::pod_status::{self as status, NODE_NAME, SLICE_LABEL};
use crate::testing::pod_volumes::PodVolumes;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the kube-api-access volume is mounted in every pod.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How often the loop runs (volume sync included).
const TICK: Duration = Duration::from_secs(1);
/// How often the Node heartbeat is posted.
const HEARTBEAT: Duration = Duration::from_secs(10);

pub(super) struct Ctx {
    pub cp: &'static ControlPlane,
    pub namespace: String,
    pub deployment: String,
    pub opts: PodRunnerOptions,
    /// Each pod in a network namespace of its own.
    pub own_network: bool,
    pub shared: Arc<Mutex<Shared>>,
    pub dir: PathBuf,
}

struct Runner {
    ctx: Ctx,
    client: Client,
    pods: BTreeMap<String, RunPod>,
    slices: BTreeMap<String, serde_json::Value>,
    last_heartbeat: Option<Instant>,
    runner_id: String,
    /// Every pod this runner bound, until its deletion is confirmed.
    known: BTreeSet<String>,
}

pub(super) async fn run(ctx: Ctx, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let client = match ctx.cp.client().await {
        Ok(c) => c,
        Err(e) => {
            ctx.shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .errors
                .push(format!("no client: {e}"));
            return;
        }
    };
    // Short: it is a label value (at most 63 characters) and part of EndpointSlice names.
    let runner_id = format!("runner-{}", crate::testing::netns::next_seq());
    let mut r = Runner {
        ctx,
        client,
        pods: BTreeMap::new(),
        slices: BTreeMap::new(),
        last_heartbeat: None,
        runner_id,
        known: BTreeSet::new(),
    };
    loop {
        if let Err(e) = r.tick().await {
            r.error(format!("{}: {e}", now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = &mut stop => break,
        }
    }
    r.shutdown().await;
}

impl Runner {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.ctx.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, e: String) {
        let mut s = self.shared();
        s.errors.push(e);
        let excess = s.errors.len().saturating_sub(50);
        s.errors.drain(..excess);
    }

    fn note(&self, pod: &str, f: impl FnOnce(&mut PodReport)) {
        let mut s = self.shared();
        let r = s.pods.entry(pod.to_string()).or_insert_with(|| PodReport {
            name: pod.to_string(),
            ..Default::default()
        });
        f(r);
    }

    fn pod_ip(&self) -> IpAddr {
        IpAddr::V4(self.ctx.cp.inner_ip())
    }

    fn host_ip(&self) -> IpAddr {
        self.ctx.cp.addr().ip()
    }

    async fn tick(&mut self) -> Result<(), Error> {
        if self.last_heartbeat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            status::heartbeat(&self.client, self.host_ip()).await?;
            self.last_heartbeat = Some(Instant::now());
        }
        let ns = self.ctx.namespace.clone();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let current = self.current_pods().await?;
        // Pods that are gone or being deleted: stop them (kubelet's SIGTERM, grace, SIGKILL),
        // then confirm the deletion as kubelet does with a zero grace period.
        let names: BTreeSet<String> = current.iter().map(|p| p.name_any()).collect();
        for (name, p) in current.iter().map(|p| (p.name_any(), p)) {
            if p.metadata.deletion_timestamp.is_some() {
                self.stop_pod(&name, grace(p)).await;
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: p.metadata.uid.clone().map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = pods_api.delete(&name, &dp).await;
            }
        }
        self.known.retain(|n| names.contains(n));
        let gone: Vec<String> = self.pods.keys().filter(|n| !names.contains(*n)).cloned().collect();
        for name in gone {
            self.stop_pod(&name, 0).await;
        }
        let kill = std::mem::take(&mut self.shared().kill_requested);
        let kill_pods = std::mem::take(&mut self.shared().kill_pods);
        for p in current.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let name = p.name_any();
            let bound = p.spec.as_ref().and_then(|s| s.node_name.clone());
            match bound.as_deref() {
                None => {
                    status::bind(&pods_api, &name).await?;
                    self.known.insert(name);
                    continue; // started next tick, from the bound Pod
                }
                Some(NODE_NAME) => {}
                Some(_) => continue,
            }
            if !self.pods.contains_key(&name) {
                if let Err(e) = self.admit(p.clone()).await {
                    self.note(&name, |r| r.last_error = Some(e.to_string()));
                    continue;
                }
            }
            if kill || kill_pods.contains(&name) {
                if let Some(rp) = self.pods.get_mut(&name) {
                    // Killed in place: `supervise` sees the exit and counts the restart.
                    if let Some(proc) = rp.container.process.as_mut() {
                        proc.kill();
                    }
                }
            }
            self.supervise(&name, p).await;
        }
        self.publish_slices().await
    }

    /// The Pods of the Deployment: matching its selector and owned by one of its ReplicaSets.
    async fn current_pods(&self) -> Result<Vec<Pod>, Error> {
        let ns = &self.ctx.namespace;
        // Pods this runner started stay its own after their Deployment is gone (helm uninstall):
        // like kubelet, it stops them and confirms their deletion.
        let on_node = ListParams::default().fields(&format!("spec.nodeName={NODE_NAME}"));
        let mut pods: Vec<Pod> = Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&on_node)
            .await?
            .items
            .into_iter()
            .filter(|p| self.known.contains(&p.name_any()))
            .collect();
        let d: Option<Deployment> = Api::namespaced(self.client.clone(), ns)
            .get_opt(&self.ctx.deployment)
            .await?;
        let Some(d) = d else {
            return Ok(pods);
        };
        let labels = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let lp = ListParams::default().labels(&selector.join(","));
        let uid = d.metadata.uid.clone();
        let sets: BTreeSet<String> = Api::<ReplicaSet>::namespaced(self.client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|rs| rs.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
            .filter_map(|rs| rs.metadata.uid)
            .collect();
        let owned = Api::<Pod>::namespaced(self.client.clone(), ns).list(&lp).await?.items;
        for p in owned {
            let mine = p.owner_references().iter().any(|o| sets.contains(&o.uid));
            if mine && !pods.iter().any(|q| q.name_any() == p.name_any()) {
                pods.push(p);
            }
        }
        Ok(pods)
    }

    /// Prepares the volumes of a newly bound pod; the process starts in `supervise`.
    async fn admit(&mut self, pod: Pod) -> Result<(), Error> {
        let name = pod.name_any();
        let pod_dir = self.ctx.dir.join(format!("{}-{name}", self.ctx.namespace));
        let mut volumes = PodVolumes::prepare(&pod, &pod_dir, &self.ctx.dir.join("claims"))?;
        let net = if self.ctx.own_network {
            let net = NetNs::create()?;
            net.route_default_via_host()?;
            Some(net)
        } else {
            None
        };
        let pod_ip = net.as_ref().map_or_else(|| self.pod_ip(), |n| IpAddr::V4(n.inner()));
        volumes.sync(&self.client, &pod, &pod_ip.to_string()).await?;
        let log = pod_dir.join("container.log");
        self.note(&name, |r| r.log = Some(log.clone()));
        self.pods.insert(
            name,
            RunPod {
                pod,
                volumes,
                container: Container {
                    process: None,
                    log,
                    started_at: now(),
                    restarts: 0,
                    last_exit: None,
                    restart_at: None,
                    ready: false,
                    failures: 0,
                    next_probe: Instant::now(),
                },
                reported: None,
                net,
            },
        );
        Ok(())
    }

    /// Syncs volumes, (re)starts the process, probes, and reports the status on change.
    async fn supervise(&mut self, name: &str, latest: Pod) {
        let host_ip = self.host_ip();
        let Some(rp) = self.pods.get_mut(name) else { return };
        let pod_ip = rp.ip(self.ctx.cp);
        rp.pod = latest;
        if let Err(e) = rp.volumes.sync(&self.client, &rp.pod, &pod_ip.to_string()).await {
            let msg = format!("volume sync: {e}");
            self.note(name, |r| r.last_error = Some(msg));
        }
        let Some(rp) = self.pods.get_mut(name) else { return };
        let mut problem = None;
        // An exited process: record it and schedule the restart.
        if let Some(proc) = rp.container.process.as_mut() {
            if let Err(e) = proc.check_running() {
                problem = Some(format!("container exited: {e}"));
                rp.container.last_exit = Some(1);
                rp.container.process = None;
                rp.container.restart_at = Some(Instant::now() + backoff(rp.container.restarts));
                rp.container.restarts += 1;
                rp.container.ready = false;
            }
        } else if rp.container.process.is_none() && rp.container.restart_at.is_none_or(|t| Instant::now() >= t) {
            match start_container(&self.ctx, &self.client, rp, pod_ip).await {
                Ok(p) => {
                    rp.container.process = Some(p);
                    rp.container.started_at = now();
                    rp.container.ready = false;
                    rp.container.failures = 0;
                    let delay = probe_of(&rp.pod).and_then(|p| p.initial_delay_seconds).unwrap_or(0);
                    rp.container.next_probe = Instant::now() + Duration::from_secs(delay.max(0) as u64);
                }
                Err(e) => {
                    problem = Some(format!("cannot start the container: {e}"));
                    rp.container.restart_at = Some(Instant::now() + backoff(rp.container.restarts));
                }
            }
        }
        // Readiness, on the probe's period (no probe: ready once running).
        if rp.container.process.is_some() && Instant::now() >= rp.container.next_probe {
            match probe_of(&rp.pod) {
                None => rp.container.ready = true,
                Some(probe) => {
                    let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
                    rp.container.next_probe = Instant::now() + Duration::from_secs(period);
                    let container = rp.pod.spec.as_ref().and_then(|s| s.containers.first()).cloned();
                    let result = match &container {
                        Some(c) => status::probe_once(c, &probe, pod_ip).await,
                        None => Err("no container".into()),
                    };
                    match result {
                        Ok(()) => {
                            rp.container.ready = true;
                            rp.container.failures = 0;
                        }
                        Err(e) => {
                            rp.container.failures += 1;
                            if rp.container.failures >= probe.failure_threshold.unwrap_or(3) {
                                rp.container.ready = false;
                            }
                            problem = Some(format!("readiness probe: {e}"));
                        }
                    }
                }
            }
        }
        let now_state = (
            rp.container.process.is_some(),
            rp.container.ready,
            rp.container.restarts,
        );
        let (ready, restarts) = (now_state.0 && now_state.1, now_state.2);
        let log = rp.container.log.clone();
        if rp.reported != Some(now_state) {
            let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ctx.namespace);
            let reported = match container_report(rp) {
                Some(c) => status::report(&pods_api, &rp.pod, pod_ip, host_ip, &c).await,
                None => Err("pod without container".into()),
            };
            match reported {
                Ok(()) => rp.reported = Some(now_state),
                Err(e) => problem = Some(format!("status update: {e}")),
            }
        }
        self.note(name, |r| {
            r.ready = ready;
            r.restarts = restarts;
            r.log = Some(log);
            if problem.is_some() {
                r.last_error = problem;
            }
        });
    }

    /// Stops a pod's process: SIGTERM, up to `grace` seconds (at most 10), then SIGKILL.
    async fn stop_pod(&mut self, name: &str, grace: i64) {
        let Some(mut rp) = self.pods.remove(name) else { return };
        if let Some(mut proc) = rp.container.process.take() {
            // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
            unsafe {
                libc::kill(proc.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(grace.clamp(0, 10) as u64);
            while Instant::now() < deadline && proc.check_running().is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            proc.kill();
        }
        self.note(name, |r| {
            r.ready = false;
            r.last_error = Some("stopped (pod deleted)".into());
        });
    }

    /// Applies the EndpointSlices of the Services selecting running pods; deletes stale ones.
    async fn publish_slices(&mut self) -> Result<(), Error> {
        let cp = self.ctx.cp;
        let endpoints: Vec<_> = self.pods.values().filter_map(|p| endpoint(p, p.ip(cp))).collect();
        let desired = status::desired_slices(&self.client, &self.ctx.namespace, &self.runner_id, &endpoints).await?;
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.ctx.namespace);
        let mut keep = BTreeSet::new();
        for slice in desired {
            let name = slice["metadata"]["name"].as_str().unwrap_or_default().to_string();
            keep.insert(name.clone());
            if self.slices.get(&name) != Some(&slice) {
                api.patch(
                    &name,
                    &PatchParams::apply(status::MANAGER).force(),
                    &Patch::Apply(&slice),
                )
                .await?;
                self.slices.insert(name, slice);
            }
        }
        let stale: Vec<String> = self.slices.keys().filter(|n| !keep.contains(*n)).cloned().collect();
        for name in stale {
            let _ = api.delete(&name, &DeleteParams::default()).await;
            self.slices.remove(&name);
        }
        Ok(())
    }

    /// Stops every pod, deletes the runner's EndpointSlices and the Pods it ran.
    async fn shutdown(&mut self) {
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in &names {
            self.stop_pod(name, 0).await;
        }
        let ns = self.ctx.namespace.clone();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
        let lp = ListParams::default().labels(&format!("{SLICE_LABEL}={}", self.runner_id));
        let _ = slices.delete_collection(&DeleteParams::default(), &lp).await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        for name in names {
            let _ = pods.delete(&name, &DeleteParams::default().grace_period(0)).await;
        }
    }
}

fn grace(p: &Pod) -> i64 {
    p.metadata
        .deletion_grace_period_seconds
        .or_else(|| p.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
}

fn probe_of(pod: &Pod) -> Option<k8s_openapi::api::core::v1::Probe> {
    pod.spec.as_ref()?.containers.first()?.readiness_probe.clone()
}

/// Builds argv and env (see the parent module) and spawns the process in the network namespace.
async fn start_container(ctx: &Ctx, client: &Client, rp: &RunPod, pod_ip: IpAddr) -> Result<Process, Error> {
    let pod = &rp.pod;
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    if spec.containers.len() != 1 || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("the pod runner runs pods with exactly one container and no init containers".into());
    }
    let container = &spec.containers[0];
    // Mount path → host directory.
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        if m.sub_path.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "volumeMount {} uses subPath, which the pod runner does not support",
                m.name
            )
            .into());
        }
        let dir = rp
            .volumes
            .host_dir(&m.name)
            .ok_or_else(|| format!("volumeMount {} names no volume", m.name))?;
        mounts.push((m.mount_path.clone(), dir.to_path_buf()));
    }
    let pod_dir = rp.container.log.parent().ok_or("log without directory")?.to_path_buf();
    // The equivalent of in-cluster configuration, from the kube-api-access volume.
    let kubeconfig = pod_dir.join("kubeconfig");
    let sa_dir = mounts.iter().find(|(m, _)| m == SA_MOUNT).map(|(_, d)| d.clone());
    crate::testing::pod_env::write_kubeconfig(ctx.cp, &kubeconfig, sa_dir.as_deref())?;
    let url = ctx.cp.addr();
    let base = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("HOSTNAME".to_string(), pod.name_any()),
        ("KUBERNETES_SERVICE_HOST".to_string(), url.ip().to_string()),
        ("KUBERNETES_SERVICE_PORT".to_string(), url.port().to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), url.port().to_string()),
    ];
    let fields = PodFields {
        pod_ip: pod_ip.to_string(),
        host_ip: ctx.cp.addr().ip().to_string(),
    };
    let mut env = container_env(client, pod, container, &fields, base).await?;
    let argv = container_argv(container, &env, &ctx.opts.image_entrypoint);
    let image_binary = argv.first().ok_or("no command and no image entrypoint")?;
    let local = ctx
        .opts
        .binaries
        .get(image_binary)
        .ok_or_else(|| format!("no local binary for the image's {image_binary} (PodRunnerOptions::binaries)"))?;
    for name in std::iter::once("KUBECONFIG".to_string()).chain(local.kubeconfig_env.iter().cloned()) {
        env.retain(|(k, _)| *k != name);
        env.push((name, kubeconfig.display().to_string()));
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", rp.netns(ctx.cp)])
        .arg(&local.path)
        .args(argv[1..].iter().map(|a| rewrite_paths(a, &mounts)))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, rewrite_paths(v, &mounts))))
        .current_dir(&pod_dir);
    Process::spawn(&pod.name_any(), cmd, &rp.container.log)
}
