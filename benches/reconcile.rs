//! Reconcile latency and operator memory against the in-memory API server.
//! Run: `cargo bench --features test-support --bench reconcile`
//! (OBJECTS=n changes how many ExtensionApiServers are reconciled.)

use eao::crd::ExtensionApiServer;
use eao::operator::events::Recorder;
use eao::operator::metrics::Metrics;
use eao::operator::reconcile::build::BuildOptions;
use eao::operator::reconcile::{reconcile, system_clock, Context};
use eao::testing::fake_api::FakeApi;
use kube::runtime::events::Reporter;
use std::sync::Arc;
use std::time::Instant;

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let objects: usize = std::env::var("OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let api = FakeApi::default();
    api.put(
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
            "data": {"requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"}}),
    );
    let client = api.client();
    // The caches are filled from the in-memory API server before each round, as the watches
    // would; the sync is not timed.
    let (caches, mut writers) =
        eao::operator::reconcile::cache::caches(eao::operator::reconcile::cache::SyncGate::open());
    let ctx = Arc::new(Context {
        caches,
        backoff: Default::default(),
        registration_served: Default::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "bench".into(),
                instance: None,
            },
        ),
        client,
        metrics: Arc::new(Metrics::default()),
        options: BuildOptions {
            default_server_image: "bench:1".into(),
            register_before_available: false,
        },
        clock: system_clock(),
        store: None,
        probe: eao::operator::reconcile::probe::tls_probe(),
    });
    let rss_start = rss_kib();
    let mut first = Vec::new();
    let mut steady = Vec::new();
    for round in 0..4 {
        if round > 0 {
            eao::testing::fake_caches::sync(&api, &mut writers);
        }
        for i in 0..objects {
            let ns = format!("ns-{i}");
            let path = format!("/apis/aggregation.dev/v1alpha1/namespaces/{ns}/extensionapiservers/s");
            if round == 0 {
                let obj = serde_json::json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
                    "metadata": {"name": "s", "namespace": ns, "uid": format!("u{i}"), "generation": 1,
                                 "finalizers": ["aggregation.dev/cleanup"]},
                    "spec": {"group": format!("g{i}.example.com"), "versions": [{"name": "v1"}], "server": {}}});
                api.put(&path, obj);
            }
            let eas: ExtensionApiServer = serde_json::from_value(api.get(&path).unwrap()).unwrap();
            let t = Instant::now();
            reconcile(Arc::new(eas), ctx.clone()).await.expect("reconcile succeeds");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if round == 0 {
                first.push(ms)
            } else {
                steady.push(ms)
            }
        }
        api.take_requests();
    }
    first.sort_by(f64::total_cmp);
    steady.sort_by(f64::total_cmp);
    println!("objects: {objects}");
    println!(
        "first reconcile (issues CA + serving cert): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&first, 0.5),
        percentile(&first, 0.99)
    );
    println!(
        "steady reconcile (nothing to change):       p50 {:.2} ms, p99 {:.2} ms",
        percentile(&steady, 0.5),
        percentile(&steady, 0.99)
    );
    println!(
        "RSS: {} KiB at start, {} KiB after (includes the in-memory API server's copy of every object)",
        rss_start,
        rss_kib()
    );
}
