//! The bundled server on etcd (`--etcd-servers`), through the real binary: two server
//! processes on one etcd serve one consistent data set (a watch on one sees every write made
//! through the other, in order; optimistic concurrency holds across them), and an etcd outage
//! makes requests fail fast with a Status and `/readyz` fail, until etcd is back and the
//! server carries on without a restart. Skipped without an etcd binary.

use bytes::Bytes;
use eao::testing::etcd::Etcd;
use eao::testing::testkit as tk;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const NS: &str = "etcd";
/// Generous bound on any single answer: a request must never hang, but speed is not tested.
const NO_HANG: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    ca: String,
    _child: tokio::process::Child,
}

/// The server's flags for `etcd` (with its TLS files when it has them).
fn flags(etcd: &Etcd) -> Vec<String> {
    // A short request timeout: the frozen-etcd test waits for it.
    let mut flags = vec![
        "--etcd-servers".to_string(),
        etcd.url().to_string(),
        "--etcd-request-timeout=2s".into(),
    ];
    if let Some(tls) = etcd.tls() {
        for (flag, file) in [
            ("--etcd-cafile", &tls.ca_file),
            ("--etcd-certfile", &tls.client_cert_file),
            ("--etcd-keyfile", &tls.client_key_file),
        ] {
            flags.push(flag.into());
            flags.push(file.display().to_string());
        }
    }
    flags
}

/// Starts `extension-apiserver --standalone` on `etcd`.
async fn start(etcd: &Etcd, dir: &Path) -> Server {
    start_with(&flags(etcd), dir).await
}

async fn start_with(flags: &[String], dir: &Path) -> Server {
    let s = tk::start_standalone_with(Path::new(env!("CARGO_BIN_EXE_extension-apiserver")), dir, flags)
        .await
        .expect("server starts");
    Server {
        addr: s.addr,
        ca: s.ca,
        _child: s.child,
    }
}

fn path(name: &str) -> String {
    let base = format!("/apis/wardle.example.com/v1alpha1/namespaces/{NS}/flunders");
    if name.is_empty() {
        base
    } else {
        format!("{base}/{name}")
    }
}

fn flunder(name: &str, size: i64, rv: Option<&str>) -> Value {
    let mut f = json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
                       "metadata": {"name": name, "namespace": NS}, "spec": {"size": size}});
    if let Some(rv) = rv {
        f["metadata"]["resourceVersion"] = rv.into();
    }
    f
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

impl Server {
    /// One request on a fresh connection: status and body (JSON, or the text as a string).
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
            .expect("request");
        let answer = async {
            let mut c = tk::connect(self.addr, &self.ca, None, false).await?;
            c.conn.call(req).await
        };
        let (code, _, bytes) = tokio::time::timeout(NO_HANG, answer)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung for {NO_HANG:?}"))
            .expect("answer");
        let v =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (code, v)
    }

    async fn readyz(&self) -> (StatusCode, String) {
        let (code, body) = self.call("GET", "/readyz", None).await;
        (
            code,
            body.as_str().map(str::to_string).unwrap_or_else(|| body.to_string()),
        )
    }

    /// Opens a watch of the collection from `from` (a resourceVersion).
    async fn watch(&self, from: u64) -> Watch {
        let mut c = tk::connect(self.addr, &self.ca, None, false).await.expect("connect");
        let req = tk::get(
            &format!("https://127.0.0.1{}?watch=true&resourceVersion={from}", path("")),
            &[],
        )
        .expect("request");
        let resp = c.conn.send(req).await.expect("watch");
        assert_eq!(resp.status(), StatusCode::OK);
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event: (type, object).
    async fn next(&mut self) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let ev: Value = serde_json::from_slice(&line).expect("event JSON");
                return (
                    ev["type"].as_str().unwrap_or_default().to_string(),
                    ev["object"].clone(),
                );
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("an event within 60 s")
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_share_writes_and_conflicts() {
    // Over https with client certificates, so the TLS flags are exercised end to end.
    let Some(etcd) = Etcd::start_tls_or_skip("two_servers_on_one_etcd_share_writes_and_conflicts").await else {
        return;
    };
    let etcd = etcd.expect("etcd starts");
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let a = start(&etcd, dir_a.path()).await;
    let b = start(&etcd, dir_b.path()).await;
    let (code, ready) = a.readyz().await;
    assert_eq!(code, StatusCode::OK, "{ready}");

    let (code, list) = a.call("GET", &path(""), None).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let mut watch = a.watch(rv(&list)).await;

    // Writes through B, each acknowledged with its resourceVersion.
    let mut written: Vec<(&str, String, u64)> = Vec::new();
    let (code, f1) = b.call("POST", &path(""), Some(&flunder("f1", 1, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{f1}");
    written.push(("ADDED", "f1".into(), rv(&f1)));
    let mut last = f1;
    for size in 2..4 {
        let (code, f) = b
            .call(
                "PUT",
                &path("f1"),
                Some(&flunder("f1", size, Some(&rv(&last).to_string()))),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{f}");
        written.push(("MODIFIED", "f1".into(), rv(&f)));
        last = f;
    }
    let (code, f2) = b.call("POST", &path(""), Some(&flunder("f2", 7, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{f2}");
    written.push(("ADDED", "f2".into(), rv(&f2)));
    let (code, gone) = b.call("DELETE", &path("f1"), None).await;
    assert_eq!(code, StatusCode::OK, "{gone}");

    // A's watch: every write, in order, with the resourceVersions B answered, nothing between.
    let mut seen = Vec::new();
    for _ in 0..written.len() + 1 {
        let (type_, obj) = watch.next().await;
        seen.push((
            type_,
            obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            rv(&obj),
        ));
    }
    let rvs: Vec<u64> = seen.iter().map(|s| s.2).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {rvs:?}");
    let (delete_type, delete_name, delete_rv) = seen.pop().expect("delete event");
    assert_eq!((delete_type.as_str(), delete_name.as_str()), ("DELETED", "f1"));
    let expected: Vec<(String, String, u64)> = written.iter().map(|(t, n, r)| (t.to_string(), n.clone(), *r)).collect();
    assert_eq!(seen, expected, "A's watch shows B's writes in order");
    // etcd gives every write one revision: consecutive writes leave no gap.
    let all: Vec<u64> = written.iter().map(|w| w.2).chain([delete_rv]).collect();
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "no gaps: {all:?}");

    // Optimistic concurrency across servers: A read f2, B updated it, A's update is stale.
    let (code, f2_at_a) = a.call("GET", &path("f2"), None).await;
    assert_eq!(code, StatusCode::OK, "{f2_at_a}");
    let stale = rv(&f2_at_a).to_string();
    let (code, newer) = b.call("PUT", &path("f2"), Some(&flunder("f2", 8, Some(&stale)))).await;
    assert_eq!(code, StatusCode::OK, "{newer}");
    let (code, status) = a.call("PUT", &path("f2"), Some(&flunder("f2", 9, Some(&stale)))).await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(status["code"], 409);
    // And the current version is B's on both servers.
    let (_, at_a) = a.call("GET", &path("f2"), None).await;
    assert_eq!(at_a["spec"]["size"], 8);
    assert_eq!(rv(&at_a), rv(&newer));
}

/// A Status of the failed request: 503 ServiceUnavailable or 504 Timeout.
#[track_caller]
fn assert_unavailable(what: &str, code: StatusCode, body: &Value) {
    assert!(
        matches!(code.as_u16(), 503 | 504),
        "{what} while etcd is down: expected 503 or 504, got {code}: {body}"
    );
    assert_eq!(body["kind"], "Status", "{what}: {body}");
    assert_eq!(body["code"], code.as_u16(), "{what}: {body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(matches!(reason, "ServiceUnavailable" | "Timeout"), "{what}: {body}");
}

/// Polls `/readyz` until `want(code, body)`.
async fn readyz_until(s: &Server, what: &str, want: impl Fn(StatusCode, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = s.readyz().await;
        if want(code, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: /readyz still {code}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_fails_fast_and_the_server_recovers() {
    let Some(etcd) = Etcd::start_or_skip("etcd_outage_fails_fast_and_the_server_recovers").await else {
        return;
    };
    let mut etcd = etcd.expect("etcd starts");
    let dir = tempdir();
    let s = start(&etcd, dir.path()).await;
    let (code, before) = s.call("POST", &path(""), Some(&flunder("before", 1, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{before}");
    let mut watch = s.watch(rv(&before)).await;

    etcd.stop();
    // At once, before the server can know: the write fails (no connection, or its timeout).
    let started = Instant::now();
    let (code, body) = s.call("POST", &path(""), Some(&flunder("during", 2, None))).await;
    assert_unavailable("create", code, &body);
    assert!(started.elapsed() < NO_HANG);

    // The watch cache may notice first ("storage"); the etcd check follows within a second.
    readyz_until(&s, "etcd stopped", |c, body| {
        c != StatusCode::OK && body.contains("[-]etcd failed")
    })
    .await;
    let (code, body) = s.call("POST", &path(""), Some(&flunder("during", 2, None))).await;
    assert_unavailable("create", code, &body);
    let (code, body) = s.call("GET", &path("before"), None).await;
    assert_unavailable("get", code, &body);
    let (code, body) = s.call("GET", &path(""), None).await;
    assert_unavailable("list", code, &body);
    // A list at resourceVersion=0 (any version will do) is the watch cache's, as in kube.
    let (code, cached) = s.call("GET", &format!("{}?resourceVersion=0", path("")), None).await;
    assert_eq!(code, StatusCode::OK, "{cached}");
    assert_eq!(cached["items"][0]["metadata"]["name"], "before");

    etcd.restart().await.expect("etcd restarts");
    let body = readyz_until(&s, "etcd restarted", |c, _| c == StatusCode::OK).await;
    assert_eq!(body, "ok");
    let (code, after) = s.call("POST", &path(""), Some(&flunder("after", 3, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{after}");
    let (code, got) = s.call("GET", &path("before"), None).await;
    assert_eq!(code, StatusCode::OK, "{got}");

    // The watch opened before the outage goes on: the next event is the write after it (etcd
    // compacts nothing here, so there is no 410).
    let (type_, obj) = watch.next().await;
    assert_eq!(type_, "ADDED", "{obj}");
    assert_eq!(obj["metadata"]["name"], "after");
    assert_eq!(rv(&obj), rv(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_times_out_instead_of_hanging() {
    let Some(etcd) = Etcd::start_or_skip("frozen_etcd_times_out_instead_of_hanging").await else {
        return;
    };
    let etcd = etcd.expect("etcd starts");
    let dir = tempdir();
    let s = start(&etcd, dir.path()).await;
    let (code, before) = s.call("POST", &path(""), Some(&flunder("before", 1, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{before}");

    // A hung etcd answers nothing and refuses nothing: the request timeout must end the write.
    etcd.freeze();
    let (code, body) = s.call("POST", &path(""), Some(&flunder("during", 2, None))).await;
    assert_unavailable("create", code, &body);
    readyz_until(&s, "etcd frozen", |c, body| {
        c != StatusCode::OK && body.contains("[-]etcd failed")
    })
    .await;
    let (code, body) = s.call("DELETE", &path("before"), None).await;
    assert_unavailable("delete", code, &body);

    etcd.thaw();
    readyz_until(&s, "etcd thawed", |c, _| c == StatusCode::OK).await;
    let (code, after) = s.call("POST", &path(""), Some(&flunder("after", 3, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_waits_for_etcd_at_start() {
    let Some(etcd) = Etcd::start_or_skip("server_waits_for_etcd_at_start").await else {
        return;
    };
    let mut etcd = etcd.expect("etcd starts");
    etcd.stop();
    let dir = tempdir();
    // The server retries while etcd is away (it may be starting beside it), and serves once
    // etcd answers.
    let flags = flags(&etcd);
    let server_dir = dir.path().to_path_buf();
    let server = tokio::spawn(async move { start_with(&flags, &server_dir).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!server.is_finished(), "the server must wait for etcd, not exit");
    etcd.restart().await.expect("etcd restarts");
    let s = server.await.expect("server task");
    let (code, created) = s.call("POST", &path(""), Some(&flunder("first", 1, None))).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(log.contains("etcd not reachable yet"), "the wait is logged:\n{log}");
}
