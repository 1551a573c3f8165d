//! Two operator replicas on the real control plane: both ready, one leads, and stopping the
//! leader moves the lead within the lease duration.
//!
//! The replicas are two `extension-apiserver-operator` processes started with the command line
//! of the chart's Deployment (`replicaCount=2`, rendered by `helm template`) and the chart's
//! ServiceAccount token, rather than through the pod runner: the runner's pods share one
//! network namespace, so two replicas of one Deployment would both bind the chart's admin port.
//! Only `--admin-addr` differs per process, as two pods' own network namespaces would allow.

use crate::setup::{chart_dir, env, eventually, helm_path, run_ok, serial, OP_NS, RELEASE, TIMEOUT};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Lease the chart's operator uses (the binary's default name).
const LEASE: &str = "extension-apiserver-operator";
/// The operator's lease duration.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// One operator process, killed when dropped.
struct Replica {
    name: String,
    port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn signal(&self, sig: i32) {
        // The pid of a child we started and still own.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn log_tail(&self) -> String {
        format!("--- {} ---\n{}", self.name, eao::testing::netns::tail(&self.log, 30))
    }
}

/// `GET /readyz` on the admin port: the status code, if it answers.
fn readyz(port: u16) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The chart's operator Deployment with two replicas.
fn rendered_deployment(cp: &eao::testing::controlplane::ControlPlane) -> Deployment {
    let home = cp.dir().join("helm");
    let mut helm = Command::new(helm_path());
    helm.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["-n", OP_NS, "--show-only", "templates/deployment.yaml"])
        .args(["--set", "replicaCount=2", "--set", "logFormat=plain"])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    serde_yaml::from_str(&run_ok(helm, b"")).expect("a Deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_are_ready_one_leads_and_the_lead_moves() {
    let Some(env) = env("two_replicas_are_ready_one_leads_and_the_lead_moves").await else {
        return;
    };
    let _serial = serial().await;
    let d = rendered_deployment(env.cp);
    let spec = d.spec.clone().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    // An explicit rolling update that works with the Lease: a new pod is ready as a standby
    // before an old one stops, and never two pods fewer than wanted.
    let strategy = spec.strategy.clone().expect("explicit strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.expect("rollingUpdate");
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let container = spec.template.spec.expect("pod spec").containers.remove(0);
    let args = container.args.unwrap_or_default();
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");

    let dir = env.cp.dir().join("replicas");
    std::fs::create_dir_all(&dir).expect("dir");
    let start = |name: &str| {
        let port = free_port();
        let argv: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("--admin-addr=") {
                    format!("--admin-addr=127.0.0.1:{port}")
                } else {
                    a.replace("$(POD_NAMESPACE)", OP_NS).replace("$(POD_NAME)", name)
                }
            })
            .collect();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_extension-apiserver-operator"))
            .args(&argv)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &env.operator_kubeconfig)
            .env("POD_NAMESPACE", OP_NS)
            .env("POD_NAME", name)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("operator process");
        Replica {
            name: name.to_string(),
            port,
            child,
            log,
        }
    };
    let replicas = [start("eao-operator-a"), start("eao-operator-b")];
    let logs = || replicas.iter().map(Replica::log_tail).collect::<Vec<_>>().join("\n");
    eventually("both replicas ready", TIMEOUT, logs, || async {
        replicas.iter().all(|r| readyz(r.port) == Some(200)).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(env.cp.client().await.expect("client"), OP_NS);
    let holder = || async {
        leases
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    };
    let leader = eventually("one replica leads", TIMEOUT, logs, holder).await;
    let (lead, standby) = match replicas.iter().position(|r| r.name == leader) {
        Some(0) => (&replicas[0], &replicas[1]),
        Some(_) => (&replicas[1], &replicas[0]),
        None => panic!("the Lease is held by {leader}, not a replica\n{}", logs()),
    };
    assert_eq!(readyz(standby.port), Some(200), "the standby stays ready");

    // The leader is stopped as kubelet stops a pod (SIGTERM): the lead moves within the lease
    // duration (it releases the Lease, so in practice within one retry of the standby).
    let started = Instant::now();
    lead.signal(libc::SIGTERM);
    eventually("the standby takes the lead", LEASE_DURATION, logs, || async {
        holder().await.filter(|h| *h == standby.name)
    })
    .await;
    eprintln!("lead moved in {:.1}s", started.elapsed().as_secs_f64());
    eventually("the new leader is ready (its caches synced)", TIMEOUT, logs, || async {
        (readyz(standby.port) == Some(200)).then_some(())
    })
    .await;
}
