//! A real Kubernetes control plane for tests (the envtest convention): etcd, kube-apiserver and,
//! when present, kube-controller-manager from the directory `KUBEBUILDER_ASSETS` names.
//!
//! Without `KUBEBUILDER_ASSETS` the constructors return `None` after printing one line, and the
//! test returns early. Everything lives in a temporary directory (PKI, kubeconfig, data, one log
//! per process) and a network namespace (see [`super::netns`] for why).
//!
//! Use [`ControlPlane::shared`] to start one control plane per test binary (a start costs
//! seconds of CPU), or [`ControlPlane::start_or_skip`] for an owned one that is torn down on drop.
//! Child processes are tied to the test process with `PR_SET_PDEATHSIG`, and a later start
//! removes namespaces and directories of test processes that no longer exist.

use super::cluster_pki::{self, Pki};
use super::netns::{self, Error, NetNs, Process};
use crate::pki::CertKeyPair;
use base64::Engine;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long kube-apiserver may take to answer `/readyz` (a few seconds on 2 idle cores; CI runs
/// other test binaries at the same time).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Prefix of the temporary directories.
const DIR_PREFIX: &str = "eao-cp-";
/// Set to keep the temporary directory (logs, PKI, data) after teardown.
const KEEP_ENV: &str = "EAO_KEEP_CONTROLPLANE";

/// Binaries of the control plane.
#[derive(Clone, Debug)]
pub struct Assets {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`, when the directory has one (namespace deletion and garbage
    /// collection need it).
    pub kube_controller_manager: Option<PathBuf>,
}

impl Assets {
    /// The binaries in `$KUBEBUILDER_ASSETS`, when it names a directory holding at least etcd
    /// and kube-apiserver.
    pub fn from_env() -> Option<Assets> {
        let dir = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS")?);
        let (etcd, kube_apiserver) = (dir.join("etcd"), dir.join("kube-apiserver"));
        if !etcd.is_file() || !kube_apiserver.is_file() {
            return None;
        }
        let kcm = dir.join("kube-controller-manager");
        Some(Assets {
            etcd,
            kube_apiserver,
            kube_controller_manager: kcm.is_file().then_some(kcm),
        })
    }

    /// [`Assets::from_env`], printing why `test` is skipped when there are none.
    pub fn from_env_or_skip(test: &str) -> Option<Assets> {
        let assets = Self::from_env();
        if assets.is_none() {
            let now = match std::env::var_os("KUBEBUILDER_ASSETS") {
                Some(v) => format!(" (now {}, which lacks them)", v.to_string_lossy()),
                None => String::new(),
            };
            eprintln!(
                "skipping {test}: set KUBEBUILDER_ASSETS to a directory with etcd and kube-apiserver{now} \
                 (e.g. ../shared/k8s/bin or `setup-envtest use -p path`) to run tests against a real control plane"
            );
        }
        assets
    }
}

/// Credentials written into a kubeconfig by [`ControlPlane::write_kubeconfig`].
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A client certificate (the admin's, or one signed by [`ControlPlane::ca`]).
    ClientCert(CertKeyPair),
    /// A bearer token (a ServiceAccount token from TokenRequest, say).
    Token(String),
}

/// A running control plane. Dropping it kills the processes, deletes the network namespace and
/// removes the temporary directory.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    netns: NetNs,
    pki: Pki,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    /// etcd's client URL, set when etcd starts.
    etcd_url: String,
    /// etcd, kube-apiserver, kube-controller-manager: stopped in reverse order.
    processes: Mutex<Vec<Process>>,
    torn_down: Mutex<bool>,
}

/// The control plane shared by the tests of one binary; `Err` keeps why it did not start, so
/// every test that asks reports it.
static SHARED: tokio::sync::OnceCell<Result<ControlPlane, String>> = tokio::sync::OnceCell::const_new();

extern "C" fn teardown_shared() {
    if let Some(Ok(cp)) = SHARED.get() {
        cp.teardown();
    }
}

/// A free TCP port on `ip` (free when asked; the process binds it right after).
fn free_port(ip: Ipv4Addr) -> Result<u16, Error> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// etcd as a single member on free loopback ports with its data in `data_dir`, and its client URL.
pub fn etcd_command(binary: &Path, data_dir: &Path) -> Result<(Command, String), Error> {
    let lo = Ipv4Addr::LOCALHOST;
    let ports = (free_port(lo)?, free_port(lo)?);
    Ok(etcd_command_at(binary, data_dir, ports, None))
}

/// The TLS files of an etcd serving clients over https: its certificate and key, and the CA
/// client certificates must chain to (etcd's `--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdServerTls {
    /// Serving certificate (for 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// CA of the client certificates etcd accepts.
    pub client_ca: PathBuf,
}

/// [`etcd_command`] on given (client, peer) ports, over https with client-certificate
/// authentication when `tls` is given (peers stay on http: there is one member).
pub fn etcd_command_at(
    binary: &Path,
    data_dir: &Path,
    ports: (u16, u16),
    tls: Option<&EtcdServerTls>,
) -> (Command, String) {
    etcd_command_on(binary, data_dir, Ipv4Addr::LOCALHOST, ports, tls)
}

/// [`etcd_command_at`] serving clients on `client_ip` (the peer URL stays on loopback), e.g.
/// an address that servers in a test's network namespaces reach.
pub fn etcd_command_on(
    binary: &Path,
    data_dir: &Path,
    client_ip: Ipv4Addr,
    ports: (u16, u16),
    tls: Option<&EtcdServerTls>,
) -> (Command, String) {
    let lo = Ipv4Addr::LOCALHOST;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (client_url, peer_url) = (
        format!("{scheme}://{client_ip}:{}", ports.0),
        format!("http://{lo}:{}", ports.1),
    );
    let mut etcd = Command::new(binary);
    etcd.arg("--data-dir")
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .arg(format!("--initial-cluster=default={peer_url}"))
        // Test data need not survive a power cut; fsync dominates etcd's latency on CI disks.
        .args(["--unsafe-no-fsync", "--log-level", "warn"]);
    if let Some(tls) = tls {
        etcd.arg("--cert-file")
            .arg(&tls.cert)
            .arg("--key-file")
            .arg(&tls.key)
            .arg("--trusted-ca-file")
            .arg(&tls.client_ca)
            .arg("--client-cert-auth");
    }
    (etcd, client_url)
}

/// Removes temporary directories of test processes that no longer exist.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        if netns::owner_pid(&format!("{}{rest}", netns::PREFIX)).is_some_and(|p| !netns::pid_alive(p)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Path of the kubectl the tests use: `.tools/bin/kubectl` (scripts/install-test-tools.sh)
/// when present, else `kubectl` from PATH.
pub fn kubectl_path() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    if tools.is_file() {
        tools
    } else {
        PathBuf::from("kubectl")
    }
}

impl ControlPlane {
    /// The shared control plane of this test binary, started on first use; `None` (after one
    /// line on stderr) without `KUBEBUILDER_ASSETS`. Its processes die with the test process and
    /// it is torn down at exit. Panics when it cannot start, with the reason and log tails,
    /// in every test that asks.
    pub async fn shared(test: &str) -> Option<&'static ControlPlane> {
        let assets = Assets::from_env_or_skip(test)?;
        let started = SHARED
            .get_or_init(|| async move {
                let cp = Self::start(&assets).await.map_err(|e| e.to_string());
                if cp.is_ok() {
                    // SAFETY: registers a plain function without captured state; it runs once at
                    // process exit, when the static is still alive (statics are never dropped).
                    unsafe {
                        libc::atexit(teardown_shared);
                    }
                }
                cp
            })
            .await;
        match started {
            Ok(cp) => Some(cp),
            Err(e) => panic!("the shared control plane did not start: {e}"),
        }
    }

    /// An owned control plane, torn down on drop (also when the test panics); `None` (after one
    /// line on stderr) without `KUBEBUILDER_ASSETS`. Panics when it cannot start.
    pub async fn start_or_skip(test: &str) -> Option<ControlPlane> {
        let assets = Assets::from_env_or_skip(test)?;
        match Self::start(&assets).await {
            Ok(cp) => Some(cp),
            Err(e) => panic!("the control plane did not start: {e}"),
        }
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager (when in `assets`) and waits until
    /// kube-apiserver is ready.
    pub async fn start(assets: &Assets) -> Result<ControlPlane, Error> {
        // kube's client and rustls may each look for a process-wide provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let started = Instant::now();
        remove_stale_dirs();
        let netns = NetNs::create()?;
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}",
            netns.name().trim_start_matches(netns::PREFIX)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let pki = cluster_pki::generate(&dir.join("pki"), netns.outer())?;
        let addr = SocketAddr::from((netns.outer(), free_port(netns.outer())?));
        let mut cp = ControlPlane {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            netns,
            pki,
            addr,
            etcd_url: String::new(),
            processes: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
        };
        cp.write_kubeconfig(&cp.kubeconfig, &Credentials::ClientCert(cp.pki.admin.clone()))?;
        cp.start_etcd_and_apiserver(assets)?;
        cp.wait_ready().await?;
        if let Some(kcm) = &assets.kube_controller_manager {
            cp.start_controller_manager(kcm)?;
        }
        // One line per start: how long it took is worth seeing on a slow CI machine.
        eprintln!(
            "control plane ready in {:.1}s at {} (files in {})",
            started.elapsed().as_secs_f64(),
            cp.url(),
            cp.dir.display()
        );
        Ok(cp)
    }

    fn start_etcd_and_apiserver(&mut self, assets: &Assets) -> Result<(), Error> {
        // etcd serves clients on the outer veth address, not loopback, so that servers in the
        // namespace can store in it too (see [`Self::etcd_url`]); peers stay on loopback.
        let outer = self.netns.outer();
        let ports = (free_port(outer)?, free_port(Ipv4Addr::LOCALHOST)?);
        let (etcd, client_url) = etcd_command_on(&assets.etcd, &self.dir.join("etcd"), outer, ports, None);
        self.spawn("etcd", etcd)?;
        self.etcd_url = client_url.clone();

        let p = |name: &str| self.pki.file(name).display().to_string();
        let ip = self.addr.ip().to_string();
        let mut kas = Command::new(&assets.kube_apiserver);
        kas.arg(format!("--etcd-servers={client_url}"))
            // The outer veth address, not 127.0.0.1: servers in the namespace call back here
            // (TokenReview, SubjectAccessReview, the authentication ConfigMap).
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--advertise-address={ip}"))
            .arg(format!("--secure-port={}", self.addr.port()))
            .arg(format!("--cert-dir={}", self.dir.join("kas-certs").display()))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            // 4094 ClusterIPs: operator-bench makes a Service for each of 1000 objects.
            .arg("--service-cluster-ip-range=10.0.0.0/20")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")))
            .arg("--requestheader-allowed-names=front-proxy-client")
            .arg("--requestheader-username-headers=X-Remote-User")
            .arg("--requestheader-group-headers=X-Remote-Group")
            .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
            .arg(format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")))
            .arg(format!("--proxy-client-key-file={}", p("front-proxy-client.key")))
            .arg("--enable-aggregator-routing=true");
        self.spawn("kube-apiserver", kas)
    }

    fn start_controller_manager(&mut self, binary: &Path) -> Result<(), Error> {
        let kc = self.kubeconfig.display().to_string();
        let mut kcm = Command::new(binary);
        kcm.arg(format!("--kubeconfig={kc}"))
            .arg(format!("--authentication-kubeconfig={kc}"))
            .arg(format!("--authorization-kubeconfig={kc}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port(Ipv4Addr::LOCALHOST)?))
            .arg(format!("--cert-dir={}", self.dir.join("kcm-certs").display()))
            .arg("--leader-elect=false")
            // No kubelet or kube-proxy runs: tests publish the EndpointSlices of servers they
            // run themselves, and the endpoint controllers would fight them.
            .arg(
                "--controllers=*,-endpoints-controller,-endpointslice-controller,\
                 -endpointslice-mirroring-controller,-service-lb-controller,-node-ipam-controller,\
                 -cloud-node-lifecycle-controller",
            )
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.file("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", self.pki.ca_file().display()));
        self.spawn("kube-controller-manager", kcm)
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<(), Error> {
        let process = Process::spawn(name, cmd, &self.dir.join(format!("{name}.log")))?;
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        Ok(())
    }

    /// Polls `/readyz` until it answers, failing early when a process exits.
    async fn wait_ready(&self) -> Result<(), Error> {
        let started = Instant::now();
        let client = self.client().await?;
        loop {
            for p in self.processes.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
                p.check_running()?;
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let last_error = match client.request_text(req).await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > READY_TIMEOUT {
                let logs: Vec<String> = self
                    .processes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|p| format!("log {}:\n{}", p.log().display(), p.log_tail(20)))
                    .collect();
                return Err(format!(
                    "kube-apiserver at {} not ready after {READY_TIMEOUT:?} (last: {last_error})\n{}",
                    self.addr,
                    logs.join("\n")
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The admin kubeconfig (`system:masters`), for kubectl, helm and [`Self::client`].
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new client for the admin kubeconfig. A fresh one per call: a client's connections
    /// belong to the runtime that made it, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl --kubeconfig <admin>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(kubectl_path());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs kubectl with `args` (and `stdin`, if any) within `timeout`: whether it succeeded,
    /// its stdout and its stderr. Panics when kubectl cannot run or does not finish in time.
    pub async fn run_kubectl(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        timeout: std::time::Duration,
    ) -> (bool, String, String) {
        use std::process::Stdio;
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::from(self.kubectl());
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(input.as_bytes()).await.expect("kubectl reads stdin");
        }
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within {timeout:?}"))
            .expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Writes a kubeconfig for this cluster with `credentials` (data inline, so the file is all
    /// a process in the namespace needs).
    pub fn write_kubeconfig(&self, path: &Path, credentials: &Credentials) -> Result<(), Error> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let user = match credentials {
            Credentials::ClientCert(ck) => format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&ck.cert_pem),
                b64(&ck.key_pem)
            ),
            Credentials::Token(t) => format!("    token: {t}\n"),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: eao-test\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\nusers:\n- name: eao-test\n  user:\n{user}contexts:\n- name: eao-test\n  \
             context:\n    cluster: eao-test\n    user: eao-test\ncurrent-context: eao-test\n",
            self.url(),
            b64(&self.pki.ca.cert_pem),
        );
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(())
    }

    /// `https://<outer address>:<port>`, reachable from the host and from the namespace.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The client URL of the control plane's etcd (plain http on the outer veth address),
    /// reachable from the host and from servers started with [`Self::spawn_in_netns`]. Servers
    /// under test may keep their data here under a prefix of their own (never `/registry`,
    /// kube-apiserver's): kube-apiserver compacts this etcd every few minutes, as it would in a
    /// cluster whose etcd an aggregated server shared.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// kube-apiserver's address (the outer veth address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address inside the namespace, for EndpointSlices of servers started with
    /// [`Self::spawn_in_netns`].
    pub fn inner_ip(&self) -> Ipv4Addr {
        self.netns.inner()
    }

    /// Pids of etcd, kube-apiserver and kube-controller-manager (when running).
    pub fn pids(&self) -> Vec<u32> {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(Process::id)
            .collect()
    }

    /// A `v1` List with a selector-less Service `namespace/service` (port 443 named `https`) and
    /// the EndpointSlice that points it at `port` on [`Self::inner_ip`], for a server started
    /// with [`Self::spawn_in_netns`]; apply it with `kubectl apply -f -` or server-side apply.
    ///
    /// The EndpointSlice is required: with `--enable-aggregator-routing=true` kube-apiserver
    /// 1.36 resolves the Service through EndpointSlices only (with just a `v1` Endpoints object
    /// the APIService reports `EndpointsNotFound: cannot find endpointslices`), and no
    /// controller makes one here (the EndpointSlice controllers are off: no kubelet runs).
    pub fn service_for_netns(&self, namespace: &str, service: &str, port: u16) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": namespace},
             "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": format!("{service}-netns"), "namespace": namespace,
                          "labels": {"kubernetes.io/service-name": service}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [self.inner_ip().to_string()], "conditions": {"ready": true}}],
             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        ]})
    }

    /// The network namespace's name.
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// The cluster CA (kube-apiserver's serving certificate and client certificates).
    pub fn ca(&self) -> &CertKeyPair {
        &self.pki.ca
    }

    /// The front-proxy CA, which kube-apiserver publishes in the
    /// `kube-system/extension-apiserver-authentication` ConfigMap.
    pub fn front_proxy_ca(&self) -> &CertKeyPair {
        &self.pki.front_proxy_ca
    }

    /// The temporary directory (logs `<process>.log`, `pki/`, `etcd/`). Tests may put files here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `cmd` inside the network namespace (via `ip netns exec`), its output in
    /// `<dir>/<program>-<n>.log`, killed when the returned guard drops or the test process dies.
    pub fn spawn_in_netns(&self, cmd: Command) -> Result<Process, Error> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".into());
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", self.netns.name()])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            wrapped.current_dir(d);
        }
        let log = self.dir.join(format!("{program}-{}.log", netns::next_seq()));
        Process::spawn(&program, wrapped, &log)
    }

    /// Kills the processes, deletes the namespace and removes the directory (unless
    /// `EAO_KEEP_CONTROLPLANE` is set). Idempotent; drop calls it.
    pub fn teardown(&self) {
        let mut done = self.torn_down.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        *done = true;
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = processes.pop() {
            p.kill();
        }
        self.netns.delete();
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("control plane files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.teardown();
    }
}
