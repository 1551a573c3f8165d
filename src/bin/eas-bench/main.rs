//! Benchmark of an aggregated API server's resource path: GET, LIST of 1000, durable CREATE,
//! UPDATE with conflicts counted apart, watch delivery latency to many watchers, and the server's
//! RSS idle / with `--objects` loaded / after the run.
//!
//! Without `--url` it starts the kube-apiserver double and the real `extension-apiserver`
//! binary next to this one (the double allows every SubjectAccessReview), on a fresh embedded
//! store or, with `--storage etcd|etcd3`, on one or three etcd members started here (whose RSS
//! is reported apart: the server then holds only its watch cache).
//! With `--url` it talks to any aggregated API server as kube-apiserver's front proxy would:
//! a client certificate plus `X-Remote-User`/`X-Remote-Group`.
//!
//! Run: `cargo build --release --features test-support --bin eas-bench --bin extension-apiserver`,
//! then `target/release/eas-bench --at-half-load [--storage etcd3]`.

mod client;
mod load;
mod local;
mod resource;
mod stats;
mod storage;
mod watch;

use clap::Parser;
use client::{Endpoint, Identity};
use load::{Bench, Verb};
use resource::Resource;
use stats::{ms, percentile, rss_kib, CpuSnap, Row};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage::Storage;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "Benchmark an aggregated API server (by default the bundled extension-apiserver)")]
struct Opts {
    /// Server to benchmark (`https://host:port`); without it the local binary is started.
    #[arg(long)]
    url: Option<String>,
    /// CA bundle that signed the server's certificate (required with --url).
    #[arg(long, requires = "url")]
    ca_file: Option<PathBuf>,
    /// Front-proxy client certificate (PEM).
    #[arg(long, requires = "client_key_file")]
    client_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// `X-Remote-User` of every request.
    #[arg(long, default_value = "bench-user")]
    user: String,
    /// `X-Remote-Group` of every request (repeatable).
    #[arg(long, default_value = "bench-group")]
    group: Vec<String>,
    #[arg(long, default_value = "wardle.example.com/v1alpha1")]
    group_version: String,
    /// Resource plural.
    #[arg(long, default_value = "flunders")]
    resource: String,
    /// Kind written in request bodies.
    #[arg(long, default_value = "Flunder")]
    kind: String,
    /// Namespace prefix: the bench uses `<ns>-load`, `-list`, `-create`, `-update`, `-watch`
    /// (they must exist on servers that check namespaces). Empty for a cluster-scoped resource;
    /// then every step shares one collection and LIST reads all of it, not 1000 objects.
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// `spec` of written objects (JSON).
    #[arg(long, default_value = r#"{"reference":"eas-bench","size":1}"#)]
    spec: String,
    /// PID of a remote-mode server on this machine, for RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Store of the local server: `embedded` (a fresh data dir), `etcd` (one member) or
    /// `etcd3` (three members on loopback), etcd from `$KUBEBUILDER_ASSETS` or `PATH`.
    #[arg(long, value_enum, default_value = "embedded", conflicts_with = "url")]
    storage: Storage,
    /// Run etcd with `--unsafe-no-fsync` (as the tests do); by default it fsyncs, as the
    /// embedded store does before it acknowledges a write.
    #[arg(long)]
    etcd_unsafe_no_fsync: bool,

    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// HTTP/2 connections per phase.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams (workers) per connection (the bundled server allows 1000).
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Verbs to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "get,list,create,update")]
    verbs: Vec<Verb>,
    /// Pace every phase to this many requests/s (instead of as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// For every verb: find the peak, then run paced at 50% of it and report that p99.
    #[arg(long, conflicts_with = "rate")]
    at_half_load: bool,
    /// Objects the update phase shares among its workers; 0 = one per worker (no conflicts).
    #[arg(long, default_value_t = 0)]
    update_keys: usize,
    /// Objects loaded before the phases (RSS is reported with them).
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// JSON bytes of every written object.
    #[arg(long, default_value_t = 1024)]
    object_size: usize,

    /// Watch streams for the delivery-latency phase; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Watch streams per HTTP/2 connection (below the server's 1000-stream limit).
    #[arg(long, default_value_t = 250)]
    watch_streams: usize,
    /// Writes/s during the watch phase (each reaches every watcher).
    #[arg(long, default_value_t = 50.0)]
    watch_rate: f64,
    /// JSON bytes of every object written in the watch phase.
    #[arg(long, default_value_t = 256)]
    watch_object_size: usize,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

async fn remote(o: &Opts, url: &str) -> Result<Endpoint, Error> {
    let uri: http::Uri = url.parse()?;
    if uri.scheme_str() != Some("https") {
        return Err("--url must be https://host:port".into());
    }
    let host = uri.host().ok_or("--url without host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let addr = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await?
        .next()
        .ok_or("host did not resolve")?;
    let ca = std::fs::read(o.ca_file.as_ref().ok_or("--url needs --ca-file")?)?;
    let identity = match (&o.client_cert_file, &o.client_key_file) {
        (Some(c), Some(k)) => Some(Identity {
            cert_pem: std::fs::read(c)?,
            key_pem: std::fs::read(k)?,
        }),
        _ => None,
    };
    Endpoint::new(
        addr,
        &host,
        &ca,
        identity.as_ref(),
        Some(o.user.clone()),
        o.group.clone(),
    )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let o = Opts::parse();
    // Interrupted, the bench still stops the server and etcd and removes their directories.
    tokio::select! {
        r = bench(o) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    }
}

async fn bench(o: Opts) -> Result<(), Error> {
    let load0 = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let (local, ep) = match &o.url {
        Some(url) => (None, remote(&o, url).await?),
        None => {
            let namespaces: Vec<String> = ["load", "list", "create", "update", "watch"]
                .iter()
                .map(|s| format!("{}-{s}", o.namespace))
                .collect();
            let etcd = storage::Etcd::start(o.storage, o.etcd_unsafe_no_fsync).await?;
            let (l, ep) = local::Local::start(Some(o.user.clone()), o.group.clone(), &namespaces, etcd).await?;
            (Some(l), ep)
        }
    };
    let pid = local.as_ref().map(|l| l.pid).or(o.server_pid);
    let rss = || pid.and_then(rss_kib);
    let etcd = local.as_ref().and_then(|l| l.etcd.as_ref());
    let etcd_rss = || etcd.map(|e| storage::describe_rss(&e.rss_kib()));
    // Whose CPU is the system's under test, not "others'".
    let tested: Vec<u32> = pid
        .into_iter()
        .chain(etcd.map(|e| e.pids()).unwrap_or_default())
        .collect();
    let store = match (&o.url, o.storage) {
        (Some(_), _) => "remote server".to_string(),
        (None, Storage::Embedded) => "embedded store".to_string(),
        (None, s) => format!(
            "etcd, {} member(s) on loopback, fsync {}",
            s.members(),
            if o.etcd_unsafe_no_fsync { "off" } else { "on" }
        ),
    };
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            & 0xff_ffff
    );
    let b = Arc::new(Bench {
        ep,
        res: Resource {
            group_version: o.group_version.clone(),
            kind: o.kind.clone(),
            plural: o.resource.clone(),
            namespace: o.namespace.clone(),
            spec: o.spec.clone(),
        },
        object_size: o.object_size,
        conns: o.connections.max(1),
        streams: o.streams.max(1),
        duration: Duration::from_secs(o.duration),
        update_keys: o.update_keys,
        run_id: run_id.clone(),
    });
    let mut rows = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    rows.push(Row::note("server RSS idle".into(), mib(rss())));
    if let Some(r) = etcd_rss() {
        rows.push(Row::note("etcd RSS idle".into(), r));
    }

    if o.objects > 0 {
        let cpu = CpuSnap::take(&tested);
        let took = b
            .create_many(&b.res.ns("load"), &format!("o{run_id}"), o.objects, 64)
            .await?;
        rows.push(Row::note(
            format!(
                "load {} objects of {} B (64 concurrent creates)",
                o.objects, o.object_size
            ),
            format!(
                "{:.0} creates/s, RSS {}",
                o.objects as f64 / took.as_secs_f64(),
                mib(rss())
            ),
        ));
        if let Some(row) = rows.last_mut() {
            row.others = cpu.others_since(&tested);
            eprintln!("{}: {}", row.what, row.notes);
        }
        // Steady state: a server holding the objects, after the burst's garbage is released.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        rows.push(Row::note(
            format!(
                "RSS holding {} objects of {} B (6 s after the load)",
                o.objects, o.object_size
            ),
            mib(rss()),
        ));
        if let Some(r) = etcd_rss() {
            rows.push(Row::note(
                format!("etcd RSS holding {} objects of {} B", o.objects, o.object_size),
                r,
            ));
        }
    }
    if o.verbs
        .iter()
        .any(|v| matches!(v, Verb::Get | Verb::List | Verb::GetCached | Verb::ListCached))
    {
        b.prepare_reads().await?;
    }
    let shape = format!("{}x{}", b.conns, b.streams);
    for (i, verb) in o.verbs.iter().enumerate() {
        let what = match verb {
            Verb::GetCached => "GET rv=0".to_string(),
            Verb::ListCached => "LIST rv=0".to_string(),
            v => format!("{v:?}").to_uppercase(),
        };
        let cpu = CpuSnap::take(&tested);
        let (mode, r) = match o.rate {
            Some(rate) => (
                format!("paced {rate:.0}/s, {shape}"),
                b.phase(*verb, Some(rate), &format!("{i}p")).await?,
            ),
            None => (format!("peak, {shape}"), b.phase(*verb, None, &format!("{i}a")).await?),
        };
        rows.push(outcome_row(&what, mode, &r));
        if let Some(row) = rows.last_mut() {
            row.others = cpu.others_since(&tested);
        }
        eprintln!(
            "{} {}: {:.0}/s p99 {}",
            rows.last().map_or("", |r| &r.what),
            rows.last().map_or("", |r| &r.mode),
            r.rate(),
            ms(percentile(&r.lat, 0.99))
        );
        if o.at_half_load {
            let half = r.rate() / 2.0;
            let cpu = CpuSnap::take(&tested);
            let h = b.phase(*verb, Some(half), &format!("{i}h")).await?;
            rows.push(outcome_row(&what, format!("50% of peak (paced {half:.0}/s)"), &h));
            if let Some(row) = rows.last_mut() {
                row.others = cpu.others_since(&tested);
            }
            eprintln!(
                "{what} at half load: {:.0}/s p99 {}",
                h.rate(),
                ms(percentile(&h.lat, 0.99))
            );
        }
    }

    if o.watchers > 0 {
        let cpu = CpuSnap::take(&tested);
        let w = watch::run(
            &b,
            &watch::WatchOpts {
                watchers: o.watchers,
                per_conn: o.watch_streams,
                rate: o.watch_rate,
                duration: Duration::from_secs(o.duration),
                object_size: o.watch_object_size,
            },
        )
        .await?;
        let notes = format!(
            "{} watchers, {} writes ({:.0}/s), delivered {}/{}, ERROR events {}",
            w.watchers, w.writes, w.write_rate, w.delivered, w.expected, w.errors
        );
        let mut row = Row::latencies(
            "WATCH delivery (from write ack)".into(),
            format!("{} streams/conn", o.watch_streams.clamp(1, 999)),
            w.write_rate,
            &w.from_ack,
            notes.clone(),
        );
        row.others = cpu.others_since(&tested);
        rows.push(row);
        rows.push(Row::latencies(
            "WATCH delivery (from write send)".into(),
            String::new(),
            w.write_rate,
            &w.from_send,
            String::new(),
        ));
        eprintln!("watch: {notes}");
    }
    rows.push(Row::note("server RSS after run".into(), mib(rss())));
    if let Some(r) = etcd_rss() {
        rows.push(Row::note("etcd RSS after run".into(), r));
    }

    println!("\ncommand: {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!("storage: {store}");
    println!(
        "load before start: {load0}; \"others' CPU\" is the share of all CPUs used by other processes during that step"
    );
    stats::print_table(&rows);
    if let Some(l) = local {
        l.stop().await?;
    }
    Ok(())
}

fn outcome_row(what: &str, mode: String, r: &load::Outcome) -> Row {
    let mut notes = format!("{} ok, {} errors", r.ok, r.errors);
    if r.conflicts > 0 {
        notes.push_str(&format!(", {} conflicts", r.conflicts));
    }
    if let Some(e) = &r.first_error {
        notes.push_str(&format!("; first error: {}", e.replace('|', "/").replace('\n', " ")));
    }
    Row::latencies(what.to_string(), mode, r.rate(), &r.lat, notes)
}
