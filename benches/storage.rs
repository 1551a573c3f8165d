//! Throughput of the embedded store: durable creates with concurrent writers (group commit),
//! in-memory gets, and the memory used by 10,000 objects of 1 KiB.
//! Run: `cargo bench --bench storage` (WRITERS=n, OBJECTS=n to change the load).

use eao::apiserver::storage::{Storage, StorageOptions};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn object(i: usize) -> serde_json::Value {
    // About 1 KiB serialized.
    json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
           "metadata": {"name": format!("flunder-{i}"), "namespace": "bench", "uid": format!("{i:036}"),
                        "labels": {"app": "bench", "index": i.to_string()}},
           "spec": {"reference": "x".repeat(760)}})
}

#[tokio::main]
async fn main() {
    let writers: usize = std::env::var("WRITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let objects: usize = std::env::var("OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let rss0 = rss_kib();
    let store = Storage::open(dir.path(), StorageOptions::default()).expect("open");
    let per = objects / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let n = w * per + i;
                let t = Instant::now();
                store
                    .create(&format!("/flunders/bench/flunder-{n}"), object(n))
                    .await
                    .expect("create");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let took = start.elapsed();
    lat.sort();
    println!(
        "durable creates: {} in {:.2}s = {:.0}/s with {writers} writers; p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        took.as_secs_f64(),
        lat.len() as f64 / took.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    let rss = rss_kib();
    println!(
        "RSS with {} objects of ~1 KiB: {} KiB ({} KiB above the empty process)",
        store.len(),
        rss,
        rss.saturating_sub(rss0)
    );
    let store = Arc::new(store);
    let start = Instant::now();
    let mut gets = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for n in 0..1000 {
            let o = store.get(&format!("/flunders/bench/flunder-{}", (n * 7) % lat.len()));
            assert!(o.is_some());
            gets += 1;
        }
    }
    println!(
        "gets (one thread, in memory): {:.0}/s",
        gets as f64 / start.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let page = store
        .list("/flunders/bench/", Some(1000), None, |_| true)
        .expect("list");
    println!(
        "list of {} objects: {:.2} ms",
        page.items.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}
