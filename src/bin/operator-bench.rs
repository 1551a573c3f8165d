//! `operator-bench`: the operator against a real control plane. It starts etcd and
//! kube-apiserver from `KUBEBUILDER_ASSETS` (the test harness), runs the
//! `extension-apiserver-operator` binary next to this one as a child process (so its RSS is its
//! own), applies N ExtensionApiServers at once (image mode; no pod ever runs, so every
//! APIService waits for a replica) and reports:
//!
//! - the time until every object has all its children (status `ChildrenApplied=True`, and the
//!   Deployment controller's first report of the Deployment in the status);
//! - API requests per reconcile by verb, from the operator's `eao_reconcile_api_requests`;
//! - writes during `--idle` seconds after convergence (every object is re-reconciled by its
//!   one-minute not-ready resync in that time), from the same metric;
//! - the operator's `VmRSS`.
//!
//! Build and run (release, as root for the harness's network namespace):
//! `cargo build --release --features test-support --bin operator-bench --bin extension-apiserver-operator`
//! `KUBEBUILDER_ASSETS=../shared/k8s/bin target/release/operator-bench --objects 200`

use clap::Parser;
use eao::crd::ExtensionApiServer;
use eao::testing::controlplane::{Assets, ControlPlane};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams};
use kube::Api;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Convergence, requests per reconcile, idle writes and RSS of the operator")]
struct Args {
    /// ExtensionApiServers to apply at once.
    #[arg(long, default_value_t = 200)]
    objects: usize,
    /// Seconds of idle after convergence during which writes are counted.
    #[arg(long, default_value_t = 60)]
    idle: u64,
    /// Give up converging after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The operator binary to run; by default `extension-apiserver-operator` next to this one.
    /// The shipped operator is built with `--profile operator`
    /// (`target/operator/extension-apiserver-operator`).
    #[arg(long)]
    operator: Option<std::path::PathBuf>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The operator process, killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// `(sum, count)` of `eao_reconcile_api_requests` per verb.
fn requests(port: u16) -> Vec<(String, f64, f64)> {
    let Some((_, text)) = http_get(port, "/metrics") else {
        return Vec::new();
    };
    let value = |name: &str, verb: &str| {
        let prefix = format!("eao_reconcile_api_requests_{name}{{verb=\"{verb}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eao::operator::requests::VERBS
        .iter()
        .map(|v| (v.to_string(), value("sum", v), value("count", v)))
        .collect()
}

/// `eao_applies_total` lines other than `unchanged`, with their values.
fn applies(port: u16) -> std::collections::BTreeMap<String, f64> {
    let Some((_, text)) = http_get(port, "/metrics") else {
        return Default::default();
    };
    text.lines()
        .filter(|l| l.starts_with("eao_applies_total{") && !l.contains("unchanged"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn writes(r: &[(String, f64, f64)]) -> f64 {
    r.iter()
        .filter(|(v, _, _)| !matches!(v.as_str(), "get" | "watch"))
        .map(|(_, s, _)| s)
        .sum()
}

/// `VmRSS`, `RssAnon` (heap and stacks) and `RssFile` (mapped code) of `pid`, in KiB.
fn rss_kib(pid: u32) -> [u64; 3] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    ["VmRSS:", "RssAnon:", "RssFile:"].map(|key| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every child applied (the APIService waits for a replica that never comes).
fn children_applied(eas: &ExtensionApiServer) -> bool {
    eas.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "ChildrenApplied" && c.status == "True")
    })
}

/// Every child applied, and the status shows what the Deployment controller reported (so the
/// status write that follows its first report is part of convergence, not of idle).
fn applied(eas: &ExtensionApiServer) -> bool {
    eas.status.as_ref().is_some_and(|s| {
        let has = |t: &str, ok: &dyn Fn(&str, &str) -> bool| {
            s.conditions.iter().any(|c| c.type_ == t && ok(&c.status, &c.reason))
        };
        has("ChildrenApplied", &|st, _| st == "True") && has("DeploymentAvailable", &|_, r| r != "DeploymentPending")
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let assets = Assets::from_env().ok_or("set KUBEBUILDER_ASSETS to a directory with etcd and kube-apiserver")?;
    eprintln!("starting the control plane");
    let cp = ControlPlane::start(&assets).await?;
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/extensionapiservers.aggregation.dev.yaml"
    );
    for argv in [
        vec!["apply", "-f", crd],
        vec![
            "wait",
            "--for=condition=Established",
            "crd/extensionapiservers.aggregation.dev",
        ],
        vec!["create", "namespace", "bench"],
    ] {
        // `kubectl wait` right after the create can fail while the CRD has no conditions yet.
        let mut tries = 0;
        loop {
            let out = cp.kubectl().args(&argv).output()?;
            if out.status.success() {
                break;
            }
            tries += 1;
            if tries == 10 {
                return Err(format!("kubectl {argv:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let binary = match &args.operator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("extension-apiserver-operator"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = cp.dir().join("operator.log");
    // Tied to this process (PR_SET_PDEATHSIG), so an interrupted bench leaves no operator behind.
    let operator = Operator(
        eao::testing::netns::spawn_tied({
            let mut c = Command::new(&binary);
            c.args([
                &format!("--admin-addr=127.0.0.1:{port}"),
                "--log-format=plain",
                "--log-level=warn",
            ])
            .env("KUBECONFIG", cp.kubeconfig())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?);
            c
        })
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?,
    );
    let pid = operator.0.id();
    while http_get(port, "/readyz").map(|r| r.0) != Some(200) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_empty = rss_kib(pid);

    let client = cp.client().await?;
    let api: Api<ExtensionApiServer> = Api::namespaced(client, "bench");
    let started = Instant::now();
    futures::stream::iter(0..args.objects)
        .map(|i| {
            let api = api.clone();
            async move {
                let obj: ExtensionApiServer = serde_json::from_value(serde_json::json!({
                    "apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
                    "metadata": {"name": format!("s{i}")},
                    "spec": {"group": format!("g{i}.bench.example.com"), "versions": [{"name": "v1"}],
                             "image": {"image": "example.com/server:1", "port": 8443}}}))?;
                api.create(&PostParams::default(), &obj).await?;
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut children_at = None;
    let converged = loop {
        let items = api.list(&ListParams::default()).await?.items;
        let with_children = items.iter().filter(|e| children_applied(e)).count();
        if with_children == args.objects && children_at.is_none() {
            children_at = Some(started.elapsed());
        }
        let done = items.iter().filter(|e| applied(e)).count();
        if done == args.objects {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("only {done}/{} converged in {}s", args.objects, args.timeout).into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let children_at = children_at.unwrap_or(converged);
    // Let the watch events of the last writes come back and be reconciled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_convergence = requests(port);
    let applies_before = applies(port);
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let after_idle = requests(port);
    // Which children were written while idle, if any (status writes are the rest).
    for (k, v) in applies(port) {
        let delta = v - applies_before.get(&k).copied().unwrap_or(0.0);
        if delta > 0.0 {
            println!("idle apply: {k} +{delta}");
        }
    }
    let rss = rss_kib(pid);

    println!("objects: {}", args.objects);
    println!(
        "created in {:.1}s; every object has all its children after {:.1}s; \
         every status shows the Deployment controller's report after {:.1}s",
        created.as_secs_f64(),
        children_at.as_secs_f64(),
        converged.as_secs_f64()
    );
    let reconciles = at_convergence.first().map(|r| r.2).unwrap_or(0.0);
    let per: Vec<String> = at_convergence
        .iter()
        .map(|(v, s, _)| format!("{v} {:.2}", s / reconciles.max(1.0)))
        .collect();
    println!(
        "until convergence: {reconciles} reconciles; requests per reconcile: {}",
        per.join(", ")
    );
    let idle_reconciles = after_idle.first().map(|r| r.2).unwrap_or(0.0) - reconciles;
    println!(
        "idle {}s: {idle_reconciles} reconciles, {} writes",
        args.idle,
        writes(&after_idle) - writes(&at_convergence)
    );
    println!(
        "operator RSS (VmRSS): {:.1} MiB ready with no object, {:.1} MiB with {} objects \
         (RssAnon {:.1} MiB, RssFile {:.1} MiB; empty: {:.1} / {:.1})",
        mib(rss_empty[0]),
        mib(rss[0]),
        args.objects,
        mib(rss[1]),
        mib(rss[2]),
        mib(rss_empty[1]),
        mib(rss_empty[2]),
    );
    drop(operator);
    cp.teardown();
    Ok(())
}
