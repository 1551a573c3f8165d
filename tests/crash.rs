//! Durability through the real binary: creates acknowledged with 201 survive `kill -9` of
//! `extension-apiserver --standalone`, and resourceVersions keep increasing after the restart.
//! Not timed: only what was acknowledged matters, not how fast.

use bytes::Bytes;
use eao::testing::testkit as tk;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "crash";
const WRITERS: usize = 8;
/// Acknowledged creates to wait for before the kill, so the kill lands mid-stream.
const ACKED_BEFORE_KILL: usize = 300;

fn collection() -> String {
    format!("https://127.0.0.1/apis/wardle.example.com/v1alpha1/namespaces/{NS}/flunders")
}

struct Server {
    addr: SocketAddr,
    ca: String,
    child: tokio::process::Child,
}

/// Starts the binary on `dir` (certificates and data persist there across restarts).
async fn start(dir: &Path) -> Server {
    let s = tk::start_standalone(Path::new(env!("CARGO_BIN_EXE_extension-apiserver")), dir)
        .await
        .expect("server starts");
    Server {
        addr: s.addr,
        ca: s.ca,
        child: s.child,
    }
}

fn request(method: &str, uri: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request")
}

fn rv_of(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

/// Creates objects on its own HTTP/2 connection until the server goes away or `stop` is set,
/// recording every create answered 201 as (name, resourceVersion).
async fn writer(
    s_addr: SocketAddr,
    ca: String,
    w: usize,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut c) = tk::connect(s_addr, &ca, None, true).await else {
        return;
    };
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("w{w}-{i}");
        let obj = json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
                         "metadata": {"name": name, "namespace": NS}, "spec": {"reference": "crash", "size": i}});
        // Any failure (connection reset by the kill) ends this writer; only 201s count.
        let Ok((code, _, body)) = c.conn.call(request("POST", &collection(), Some(&obj))).await else {
            return;
        };
        if code != StatusCode::CREATED {
            return;
        }
        let v: Value = serde_json::from_slice(&body).expect("created object JSON");
        acked.lock().expect("lock").insert(name, rv_of(&v));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_creates_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut s = start(tmp.path()).await;

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(s.addr, s.ca.clone(), w, acked.clone(), stop.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().expect("lock").len() < ACKED_BEFORE_KILL {
        assert!(Instant::now() < deadline, "writers made no progress");
        assert!(
            !writers.iter().all(|w| w.is_finished()),
            "every writer stopped before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // tokio's kill is SIGKILL: no shutdown path runs, in-flight creates are cut off.
    s.child.kill().await.expect("SIGKILL");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();
    let max_acked = acked.values().copied().max().expect("some creates acknowledged");

    let s = start(tmp.path()).await;
    let mut c = tk::connect(s.addr, &s.ca, None, true).await.expect("connect");
    let (code, _, body) = c.conn.call(request("GET", &collection(), None)).await.expect("list");
    assert_eq!(code, StatusCode::OK);
    let list: Value = serde_json::from_slice(&body).expect("list JSON");
    let stored: BTreeMap<String, u64> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| (o["metadata"]["name"].as_str().expect("name").to_string(), rv_of(o)))
        .collect();
    let lost: Vec<_> = acked.keys().filter(|n| !stored.contains_key(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    for (name, rv) in &acked {
        assert_eq!(stored[name], *rv, "{name} changed resourceVersion across the crash");
    }
    // Creates that were in flight at the kill may or may not be there; nothing else may be.
    assert!(
        stored.len() <= acked.len() + WRITERS,
        "{} stored, {} acknowledged",
        stored.len(),
        acked.len()
    );
    // Every stored object is readable on its own too.
    for name in acked.keys().step_by(37) {
        let (code, _, _) = c
            .conn
            .call(request("GET", &format!("{}/{name}", collection()), None))
            .await
            .expect("get");
        assert_eq!(code, StatusCode::OK, "GET {name}");
    }

    let after = json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
                       "metadata": {"name": "after-restart", "namespace": NS}, "spec": {"reference": "crash"}});
    let (code, _, body) = c
        .conn
        .call(request("POST", &collection(), Some(&after)))
        .await
        .expect("create");
    assert_eq!(code, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    let max_stored = stored.values().copied().max().unwrap_or(0);
    assert!(
        rv_of(&v) > max_acked,
        "rv {} after restart <= acknowledged {max_acked}",
        rv_of(&v)
    );
    assert!(
        rv_of(&v) > max_stored,
        "rv {} after restart <= stored {max_stored}",
        rv_of(&v)
    );
}
