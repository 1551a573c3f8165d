//! Benchmark of the bundled server: starts the kube-apiserver double and the real
//! `extension-apiserver` binary (next to this one), then measures
//! - idle RSS of the server process (from /proc/<pid>/status),
//! - requests/s of an authorized `GET /apis/<g>/<v>` through the front-proxy path with a warm
//!   SubjectAccessReview cache (HTTP/2, several connections, many streams each),
//! - discovery latency (aggregated `/apis`, `/apis/<g>/<v>`, and the aggregator's probe).
//!
//! Run: `cargo build --release --bins && target/release/eas-bench`.

use bytes::Bytes;
use clap::Parser;
use eao::apiserver::testkit::{self as tk, KubeDouble};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: &str = "wardle.example.com";
const VERSION: &str = "v1alpha1";

#[derive(Parser, Debug)]
#[command(about = "Benchmark the extension-apiserver binary")]
struct Opts {
    /// Seconds of load for the throughput run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Sequential requests per latency measurement.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Target {
    addr: std::net::SocketAddr,
    ca: String,
    front: eao::pki::CertKeyPair,
}

async fn latency(t: &Target, path: &str, headers: &[(&str, &str)], samples: usize) -> Result<Vec<Duration>, Error> {
    let mut c = tk::connect(t.addr, &t.ca, Some(&t.front), true).await?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let req = tk::get(&format!("https://127.0.0.1{path}"), headers)?;
        let start = Instant::now();
        let (code, _, _) = c.conn.call(req).await?;
        out.push(start.elapsed());
        if code != StatusCode::OK {
            return Err(format!("{path}: {code}").into());
        }
    }
    out.sort();
    Ok(out)
}

fn report(name: &str, d: &[Duration]) {
    println!(
        "{name:<48} p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        percentile(d, 0.50).as_secs_f64() * 1e3,
        percentile(d, 0.90).as_secs_f64() * 1e3,
        percentile(d, 0.99).as_secs_f64() * 1e3,
        d.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn throughput(t: &Target, o: &Opts) -> Result<(u64, u64, Duration), Error> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(o.duration);
    let path = format!("https://127.0.0.1/apis/{GROUP}/{VERSION}");
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..o.connections {
        let c = tk::connect(t.addr, &t.ca, Some(&t.front), true).await?;
        let tk::Conn::H2(send) = c.conn else {
            return Err("server did not negotiate h2".into());
        };
        for _ in 0..o.streams {
            let mut send = send.clone();
            let (ok, failed, path) = (ok.clone(), failed.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let req = Request::get(&path)
                        .header("x-remote-user", "bench-user")
                        .header("x-remote-group", "bench-group")
                        .body(Full::new(Bytes::new()));
                    let Ok(req) = req else { break };
                    if send.ready().await.is_err() {
                        break;
                    }
                    match send.send_request(req).await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            let _ = resp.into_body().collect().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed(),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let o = Opts::parse();
    let dir = std::env::temp_dir().join(format!("eas-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let front_ca = tk::ca("front-proxy-ca")?;
    let front = tk::client_cert(&front_ca, "front-proxy-client", None)?;
    let double = KubeDouble::start(tk::auth_configmap_data(&front_ca, &["front-proxy-client"], None)).await?;
    let kubeconfig = double.write_kubeconfig(&dir)?;
    let serving = tk::write_serving_files(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, eao::apiserver::STANDALONE_CONFIG)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .join("extension-apiserver");
    let mut child = tokio::process::Command::new(&exe)
        .args([
            "--bind-address",
            "127.0.0.1",
            "--log-format",
            "plain",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--config")
        .arg(&config)
        .arg("--tls-cert-file")
        .arg(&serving.cert)
        .arg("--tls-private-key-file")
        .arg(&serving.key)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("no pid")?;
    let t = Target {
        addr: ([127, 0, 0, 1], port).into(),
        ca: serving.ca.cert_pem.clone(),
        front,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = tk::connect(t.addr, &t.ca, None, false).await {
            if let Ok((StatusCode::OK, _, _)) = c.conn.call(tk::get("/readyz", &[])?).await {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("server not ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("server: {} (pid {pid})", exe.display());
    println!("idle RSS after start:           {} KiB", rss_kib(pid).unwrap_or(0));

    // Warm the SAR cache (one review per distinct request), then measure.
    let user = [("x-remote-user", "bench-user"), ("x-remote-group", "bench-group")];
    latency(&t, &format!("/apis/{GROUP}/{VERSION}"), &user, 1).await?;
    let sars_before = double.sar_specs().len();
    let (ok, failed, elapsed) = throughput(&t, &o).await?;
    println!(
        "GET /apis/{GROUP}/{VERSION} (front-proxy, warm SAR cache): {:.0} req/s  ({ok} ok, {failed} failed, {} conns x {} streams, {:.1} s); SARs during run: {}",
        ok as f64 / elapsed.as_secs_f64(),
        o.connections,
        o.streams,
        elapsed.as_secs_f64(),
        double.sar_specs().len() - sars_before,
    );
    println!("RSS after load:                 {} KiB", rss_kib(pid).unwrap_or(0));

    let agg = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let probe = [
        ("x-remote-user", "system:kube-aggregator"),
        ("x-remote-group", "system:masters"),
    ];
    report(
        "aggregated discovery GET /apis (v2)",
        &latency(&t, "/apis", &[user[0], user[1], ("accept", agg)], o.samples).await?,
    );
    report(
        &format!("GET /apis/{GROUP}/{VERSION} (warm SAR cache)"),
        &latency(&t, &format!("/apis/{GROUP}/{VERSION}"), &user, o.samples).await?,
    );
    report(
        "aggregator probe (system:kube-aggregator)",
        &latency(&t, &format!("/apis/{GROUP}/{VERSION}"), &probe, o.samples).await?,
    );
    report(
        "GET /openapi/v3/apis/<g>/<v>",
        &latency(&t, &format!("/openapi/v3/apis/{GROUP}/{VERSION}"), &user, o.samples / 4).await?,
    );

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if kill.success() {
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
        println!("server exit after SIGTERM: {status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
