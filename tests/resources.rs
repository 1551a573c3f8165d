//! Declared resources served from the embedded store, driven over TLS against the real
//! `extension-apiserver --standalone` binary, with shapes compared to the contract's
//! reference responses when `../shared/contract` is present.

use bytes::Bytes;
use eao::testing::testkit as tk;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const G: &str = "wardle.example.com";
const V: &str = "v1alpha1";

fn reference(name: &str) -> Option<Value> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/contract"));
    if !dir.is_dir() {
        eprintln!("note: {} missing; skipping the contract comparison", dir.display());
        return None;
    }
    let path = dir.join("reference-responses").join(format!("{name}.body"));
    Some(serde_json::from_slice(&std::fs::read(path).expect("reference body")).expect("reference JSON"))
}

fn flunders(ns: &str) -> String {
    format!("/apis/{G}/{V}/namespaces/{ns}/flunders")
}

fn flunder(ns: &str, name: &str) -> Value {
    json!({"apiVersion": format!("{G}/{V}"), "kind": "Flunder",
           "metadata": {"name": name, "namespace": ns}, "spec": {"reference": "r", "size": 1}})
}

struct Srv {
    addr: SocketAddr,
    ca: String,
    child: tokio::process::Child,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Srv {
    async fn start() -> Srv {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Srv::start_in(&dir).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server over `config` (a server config YAML) instead of the embedded example.
    async fn start_with_config(config: &str) -> Srv {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("config.yaml"), config).expect("write config");
        let mut s = Srv::start_in(tmp.path()).await;
        s._tmp = Some(tmp);
        s
    }

    async fn start_in(dir: &Path) -> Srv {
        let s = tk::start_standalone(Path::new(env!("CARGO_BIN_EXE_extension-apiserver")), dir)
            .await
            .expect("standalone server starts");
        Srv {
            addr: s.addr,
            ca: s.ca,
            child: s.child,
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(body)).expect("request")
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> http::Response<Incoming> {
        let mut c = tk::connect(self.addr, &self.ca, None, false).await.expect("connect");
        c.conn.send(Srv::req(method, path, headers, body)).await.expect("send")
    }

    async fn call_raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> (StatusCode, Bytes) {
        let r = self.send(method, path, headers, body).await;
        let code = r.status();
        (code, r.into_body().collect().await.expect("body").to_bytes())
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        self.call_ct(method, path, "application/json", body).await
    }

    async fn call_ct(&self, method: &str, path: &str, ct: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let body = body
            .map(|b| Bytes::from(serde_json::to_vec(b).expect("json")))
            .unwrap_or_default();
        let (code, bytes) = self.call_raw(method, path, &[("content-type", ct)], body).await;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&bytes)));
        (code, v)
    }

    async fn create(&self, ns: &str, obj: &Value) -> Value {
        let (code, v) = self.call("POST", &flunders(ns), Some(obj)).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        v
    }

    async fn stop(mut self) -> PathBuf {
        let _ = self.child.kill().await;
        self.dir.clone()
    }
}

/// Reads newline-delimited watch events.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    fn new(r: http::Response<Incoming>) -> Events {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        Events {
            body: r.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ended or nothing came within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event JSON"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()??.ok()?;
            if let Ok(d) = frame.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }
}

#[tokio::test]
async fn create_get_and_their_errors() {
    let s = Srv::start().await;
    let created = s.create("default", &flunder("default", "example")).await;
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["uid"].as_str().expect("uid").len(), 36);
    assert_eq!(created["metadata"]["creationTimestamp"].as_str().expect("ts").len(), 20);
    assert!(created["metadata"]["resourceVersion"].as_str().is_some());

    let (code, got) = s.call("GET", &format!("{}/example", flunders("default")), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got, created);

    let (code, v) = s
        .call("POST", &flunders("default"), Some(&flunder("default", "example")))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    if let Some(want) = reference("create-conflict") {
        assert_eq!(v, want);
    }
    let (code, v) = s.call("GET", &format!("{}/nope", flunders("default")), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    if let Some(want) = reference("get-notfound") {
        assert_eq!(v, want);
    }
    let (code, bytes) = s
        .call_raw(
            "POST",
            &flunders("default"),
            &[("content-type", "application/json")],
            Bytes::from_static(b"{\"apiVersion\":"),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    if let Some(want) = reference("create-bad-json") {
        assert_eq!(v, want);
    }
    // Wrong kind: 422 on `kind` (kube-apiserver decodes it, then validation refuses it, as
    // the differential suite shows); wrong version, wrong namespace: 400.
    let mut wrong = flunder("default", "w");
    wrong["kind"] = json!("Fischer");
    let (code, v) = s.call("POST", &flunders("default"), Some(&wrong)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "kind");
    let mut wrong = flunder("default", "w");
    wrong["apiVersion"] = json!(format!("{G}/v9"));
    assert_eq!(
        s.call("POST", &flunders("default"), Some(&wrong)).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.call("POST", &flunders("default"), Some(&flunder("other", "w")))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    // Invalid name: 422 with a cause on metadata.name.
    let (code, v) = s
        .call("POST", &flunders("default"), Some(&flunder("default", "Bad_Name")))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["reason"], "Invalid");
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    // generateName.
    let mut gen = flunder("default", "");
    gen["metadata"] = json!({"generateName": "gen-"});
    let v = s.create("default", &gen).await;
    let name = v["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    // dryRun=All writes nothing.
    let (code, _) = s
        .call(
            "POST",
            &format!("{}?dryRun=All", flunders("default")),
            Some(&flunder("default", "dry")),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(
        s.call("GET", &format!("{}/dry", flunders("default")), None).await.0,
        StatusCode::NOT_FOUND
    );
    // Cluster-scoped resources live without a namespace.
    let fischer = json!({"apiVersion": format!("{G}/{V}"), "kind": "Fischer", "metadata": {"name": "f1"}});
    let (code, v) = s.call("POST", &format!("/apis/{G}/{V}/fischers"), Some(&fischer)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert!(v["metadata"].get("namespace").is_none());
    assert_eq!(
        s.call("GET", &format!("/apis/{G}/{V}/fischers/f1"), None).await.0,
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test]
async fn update_patch_status_and_generation() {
    let s = Srv::start().await;
    let path = format!("{}/example", flunders("default"));
    let v = s.create("default", &flunder("default", "example")).await;
    // Labels only: generation stays.
    let mut u = v.clone();
    u["metadata"]["labels"] = json!({"a": "b"});
    let (code, u1) = s.call("PUT", &path, Some(&u)).await;
    assert_eq!(code, StatusCode::OK, "{u1}");
    assert_eq!(u1["metadata"]["generation"], 1);
    // Stale resourceVersion: 409 as the reference.
    let (code, e) = s.call("PUT", &path, Some(&u)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    if let Some(want) = reference("update-stale-rv") {
        assert_eq!(e, want);
    }
    // Missing resourceVersion: 422; name mismatch: 400.
    let mut no_rv = u1.clone();
    no_rv["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("resourceVersion");
    assert_eq!(
        s.call("PUT", &path, Some(&no_rv)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut renamed = u1.clone();
    renamed["metadata"]["name"] = json!("other");
    assert_eq!(s.call("PUT", &path, Some(&renamed)).await.0, StatusCode::BAD_REQUEST);
    // Spec change: generation 2; status on the main resource is ignored.
    let mut u2 = u1.clone();
    u2["spec"]["size"] = json!(5);
    u2["status"] = json!({"phase": "ignored"});
    let (code, u2) = s.call("PUT", &path, Some(&u2)).await;
    assert_eq!(code, StatusCode::OK, "{u2}");
    assert_eq!(u2["metadata"]["generation"], 2);
    assert!(u2.get("status").is_none(), "{u2}");
    // /status writes only status.
    let mut st = u2.clone();
    st["status"] = json!({"phase": "Ready"});
    st["spec"]["size"] = json!(99);
    let (code, st) = s.call("PUT", &format!("{path}/status"), Some(&st)).await;
    assert_eq!(code, StatusCode::OK, "{st}");
    assert_eq!(st["status"]["phase"], "Ready");
    assert_eq!(st["spec"]["size"], 5);
    assert_eq!(st["metadata"]["generation"], 2);
    // Merge patch and JSON patch.
    let (code, p) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"spec": {"size": 7}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["spec"]["size"], 7);
    assert_eq!(p["metadata"]["generation"], 3);
    let ops = json!([{"op": "replace", "path": "/spec/reference", "value": "z"}]);
    let (code, p) = s
        .call_ct("PATCH", &path, "application/json-patch+json", Some(&ops))
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["spec"]["reference"], "z");
    let (code, p) = s
        .call_ct(
            "PATCH",
            &format!("{path}/status"),
            "application/merge-patch+json",
            Some(&json!({"status": {"phase": "Done"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["status"]["phase"], "Done");
    // Strategic merge patch needs Go types; custom resources refuse it, as in kube.
    let (code, e) = s
        .call_ct(
            "PATCH",
            &path,
            "application/strategic-merge-patch+json",
            Some(&json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("application/apply-patch+yaml")),
        "{e}"
    );
    assert_eq!(
        s.call_ct(
            "PATCH",
            &format!("{}/nope", flunders("default")),
            "application/merge-patch+json",
            Some(&json!({}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

#[tokio::test]
async fn parallel_conflicting_updates_exactly_one_wins() {
    let s = Srv::start().await;
    let v = s.create("default", &flunder("default", "race")).await;
    let path = format!("{}/race", flunders("default"));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut u = v.clone();
        u["spec"]["size"] = json!(100 + i);
        let (addr, ca) = (s.addr, s.ca.clone());
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = tk::connect(addr, &ca, None, false).await.expect("connect");
            let body = Bytes::from(serde_json::to_vec(&u).expect("json"));
            let r = c
                .conn
                .send(Srv::req("PUT", &path, &[("content-type", "application/json")], body))
                .await
                .expect("send");
            r.status()
        }));
    }
    let mut ok = 0;
    let mut conflict = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => conflict += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, conflict), (1, 7));
    s.stop().await;
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let s = Srv::start().await;
    for (ns, name, app) in [
        ("a", "f1", "demo"),
        ("a", "f2", "web"),
        ("b", "f3", "demo"),
        ("b", "f4", "db"),
        ("b", "f5", ""),
    ] {
        let mut o = flunder(ns, name);
        if !app.is_empty() {
            o["metadata"]["labels"] = json!({"app": app});
        }
        s.create(ns, &o).await;
    }
    let all = format!("/apis/{G}/{V}/flunders");
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {v}"))
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (code, v) = s.call("GET", &all, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["kind"], "FlunderList");
    assert_eq!(v["apiVersion"], format!("{G}/{V}"));
    assert!(v["metadata"]["resourceVersion"].as_str().is_some());
    assert_eq!(names(&v), ["f1", "f2", "f3", "f4", "f5"]);
    assert_eq!(names(&s.call("GET", &flunders("b"), None).await.1), ["f3", "f4", "f5"]);
    for (sel, want) in [
        ("app%3Ddemo", vec!["f1", "f3"]),
        ("app!%3Ddemo", vec!["f2", "f4", "f5"]),
        ("app%20in%20(web,db)", vec!["f2", "f4"]),
        ("app%20notin%20(web,db)", vec!["f1", "f3", "f5"]),
        ("app", vec!["f1", "f2", "f3", "f4"]),
        ("!app", vec!["f5"]),
    ] {
        let (code, v) = s.call("GET", &format!("{all}?labelSelector={sel}"), None).await;
        assert_eq!(code, StatusCode::OK, "{sel}: {v}");
        assert_eq!(names(&v), want, "{sel}");
    }
    let (_, v) = s
        .call("GET", &format!("{all}?fieldSelector=metadata.namespace%3Da"), None)
        .await;
    assert_eq!(names(&v), ["f1", "f2"]);
    let (_, v) = s
        .call("GET", &format!("{all}?fieldSelector=metadata.name%3Df4"), None)
        .await;
    assert_eq!(names(&v), ["f4"]);
    assert_eq!(
        s.call("GET", &format!("{all}?fieldSelector=spec.x%3D1"), None).await.0,
        StatusCode::BAD_REQUEST
    );
    // Pages of two.
    let (_, p1) = s.call("GET", &format!("{all}?limit=2"), None).await;
    assert_eq!(names(&p1), ["f1", "f2"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 3);
    if let Some(want) = reference("list-paginated") {
        let keys = |v: &Value| -> Vec<String> { v.as_object().expect("obj").keys().cloned().collect() };
        assert_eq!(keys(&p1), keys(&want));
        assert_eq!(keys(&p1["metadata"]), keys(&want["metadata"]));
    }
    let c1 = p1["metadata"]["continue"].as_str().expect("continue").to_string();
    let (_, p2) = s.call("GET", &format!("{all}?limit=2&continue={c1}"), None).await;
    assert_eq!(names(&p2), ["f3", "f4"]);
    let c2 = p2["metadata"]["continue"].as_str().expect("continue").to_string();
    let (_, p3) = s.call("GET", &format!("{all}?limit=2&continue={c2}"), None).await;
    assert_eq!(names(&p3), ["f5"]);
    assert_eq!(
        p3["metadata"]["continue"], "",
        "the last page says continue \"\", as kube does"
    );
    assert!(p3["metadata"].get("remainingItemCount").is_none());
    assert_eq!(
        s.call("GET", &format!("{all}?limit=2&continue=garbage"), None).await.0,
        StatusCode::BAD_REQUEST
    );
    // kubectl's Table and the metadata informers' PartialObjectMetadataList.
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (code, bytes) = s
        .call_raw("GET", &flunders("a"), &[("accept", table)], Bytes::new())
        .await;
    assert_eq!(code, StatusCode::OK);
    let t: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .expect("cols")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // Declared columns only, as kube's CRD handler: Age comes only when none are declared.
    assert_eq!(cols, ["Name", "Size"]);
    assert_eq!(t["rows"][0]["cells"][0], "f1");
    assert_eq!(t["rows"][0]["cells"][1], 1);
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let pom = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let (_, bytes) = s.call_raw("GET", &all, &[("accept", pom)], Bytes::new()).await;
    let l: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(l["kind"], "PartialObjectMetadataList");
    assert_eq!(l["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(l["items"].as_array().map(Vec::len), Some(5));
    assert!(l["items"][0].get("spec").is_none());
    let one = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let (_, bytes) = s
        .call_raw(
            "GET",
            &format!("{}/f1", flunders("a")),
            &[("accept", one)],
            Bytes::new(),
        )
        .await;
    let o: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        (o["kind"].as_str(), o["metadata"]["name"].as_str()),
        (Some("PartialObjectMetadata"), Some("f1"))
    );
    // deletecollection with a selector, as the namespace controller sends it.
    let (code, v) = s
        .call(
            "DELETE",
            &format!("{}?labelSelector=app%3Ddemo", flunders("b")),
            Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(names(&v), ["f3"]);
    assert_eq!(names(&s.call("GET", &flunders("b"), None).await.1), ["f4", "f5"]);
    s.stop().await;
}

#[tokio::test]
async fn delete_preconditions_and_finalizers() {
    let s = Srv::start().await;
    let path = format!("{}/fin", flunders("default"));
    let mut o = flunder("default", "fin");
    o["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let v = s.create("default", &o).await;
    let bad = json!({"preconditions": {"uid": "not-the-uid"}});
    let (code, e) = s.call("DELETE", &path, Some(&bad)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["reason"], "Conflict");
    let good = json!({"preconditions": {"uid": v["metadata"]["uid"]}});
    let (code, d) = s.call("DELETE", &path, Some(&good)).await;
    assert_eq!(code, StatusCode::OK, "{d}");
    assert!(d["metadata"]["deletionTimestamp"].as_str().is_some(), "{d}");
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 0);
    let (code, cur) = s.call("GET", &path, None).await;
    assert_eq!(code, StatusCode::OK, "held by its finalizer");
    // Removing the last finalizer completes the delete.
    let mut rel = cur.clone();
    rel["metadata"]["finalizers"] = json!([]);
    let (code, r) = s.call("PUT", &path, Some(&rel)).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(s.call("GET", &path, None).await.0, StatusCode::NOT_FOUND);
    // Plain delete returns the object; a second one is 404.
    s.create("default", &flunder("default", "plain")).await;
    let p = format!("{}/plain", flunders("default"));
    let (code, d) = s.call_raw("DELETE", &p, &[], Bytes::new()).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&d));
    assert_eq!(
        s.call_raw("DELETE", &p, &[], Bytes::new()).await.0,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

#[tokio::test]
async fn watch_resume_list_timeout_and_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Srv::start_in(tmp.path()).await;
    let a = s.create("default", &flunder("default", "w1")).await;
    let rv_a: u64 = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("num");
    s.create("default", &flunder("default", "w2")).await;
    // Resume after w1: sees w2 only, then live changes.
    let r = s
        .send(
            "GET",
            &format!("{}?watch=true&resourceVersion={rv_a}", flunders("default")),
            &[],
            Bytes::new(),
        )
        .await;
    let mut ev = Events::new(r);
    let e = ev.next(Duration::from_secs(5)).await.expect("event");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("w2"))
    );
    let (code, _) = s
        .call_raw("DELETE", &format!("{}/w1", flunders("default")), &[], Bytes::new())
        .await;
    assert_eq!(code, StatusCode::OK);
    let e = ev.next(Duration::from_secs(5)).await.expect("event");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("w1"))
    );

    // Watch-list: ADDED for each object, then the initial-events-end bookmark.
    let r = s
        .send(
            "GET",
            &format!(
                "{}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan",
                flunders("default")
            ),
            &[],
            Bytes::new(),
        )
        .await;
    let mut ev = Events::new(r);
    let e = ev.next(Duration::from_secs(5)).await.expect("event");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("w2"))
    );
    let b = ev.next(Duration::from_secs(5)).await.expect("bookmark");
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(b["object"]["kind"], "Flunder");

    // timeoutSeconds ends the stream.
    let r = s
        .send(
            "GET",
            &format!(
                "{}?watch=true&timeoutSeconds=1&resourceVersion={rv_a}",
                flunders("default")
            ),
            &[],
            Bytes::new(),
        )
        .await;
    let mut ev = Events::new(r);
    let started = Instant::now();
    while ev.next(Duration::from_secs(5)).await.is_some() {}
    assert!(started.elapsed() < Duration::from_secs(4));

    // After a restart, history before the reopen is gone: 200, then an ERROR event with 410.
    let dir = s.stop().await;
    let s = Srv::start_in(&dir).await;
    assert_eq!(
        s.call("GET", &format!("{}/w2", flunders("default")), None).await.0,
        StatusCode::OK,
        "durable"
    );
    let r = s
        .send(
            "GET",
            &format!("{}?watch=true&resourceVersion=1", flunders("default")),
            &[],
            Bytes::new(),
        )
        .await;
    let mut ev = Events::new(r);
    let e = ev.next(Duration::from_secs(5)).await.expect("error event");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    if let Some(want) = reference("watch-expired-rv") {
        assert_eq!(
            e["object"].as_object().map(|o| o.keys().count()),
            want["object"].as_object().map(|o| o.keys().count())
        );
    }
    s.stop().await;
}

/// A Flunder whose schema has types, bounds, a pattern, an enum and defaults.
const SCHEMA_CONFIG: &str = r#"
group: wardle.example.com
versions: [v1alpha1]
resources:
  - kind: Flunder
    plural: flunders
    subresources:
      status: {}
    versions:
      - name: v1alpha1
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [reference]
              properties:
                reference: {type: string, pattern: '^[a-z]+$'}
                size: {type: integer, minimum: 0, maximum: 10}
                mode: {type: string, enum: [fast, slow], default: fast}
                ports:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: integer}
                      protocol: {type: string, default: TCP}
            status:
              type: object
              properties:
                phase: {type: string, enum: [Pending, Ready]}
"#;

fn causes(v: &Value) -> Vec<(String, String, String)> {
    v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("field"), s("reason"), s("message"))
        })
        .collect()
}

#[tokio::test]
async fn schema_prunes_defaults_and_validates() {
    let s = Srv::start_with_config(SCHEMA_CONFIG).await;
    let path = format!("{}/example", flunders("default"));

    // Wrong type and a pattern miss: 422 with both causes, nothing stored, dryRun alike.
    let mut bad = flunder("default", "example");
    bad["spec"] = json!({"reference": "R2", "size": "big"});
    for url in [flunders("default"), format!("{}?dryRun=All", flunders("default"))] {
        let (code, v) = s.call("POST", &url, Some(&bad)).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["reason"], "Invalid");
        assert_eq!(v["details"]["kind"], "Flunder");
        let mut got = causes(&v);
        got.sort();
        assert_eq!(
            got,
            [
                (
                    "spec.reference".to_string(),
                    "FieldValueInvalid".to_string(),
                    r#"Invalid value: "R2": spec.reference in body should match '^[a-z]+$'"#.to_string()
                ),
                (
                    "spec.size".to_string(),
                    "FieldValueTypeInvalid".to_string(),
                    r#"Invalid value: "string": spec.size in body must be of type integer: "string""#.to_string()
                ),
            ]
        );
        assert!(v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Flunder.wardle.example.com \"example\" is invalid: [")));
    }
    assert_eq!(s.call("GET", &path, None).await.0, StatusCode::NOT_FOUND);
    // A missing required field.
    let mut no_ref = flunder("default", "example");
    no_ref["spec"] = json!({"size": 1});
    let (code, v) = s.call("POST", &flunders("default"), Some(&no_ref)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        causes(&v),
        [(
            "spec.reference".to_string(),
            "FieldValueRequired".to_string(),
            "Required value".to_string()
        )]
    );

    // Unknown fields are dropped, defaults filled, in the answer and in what is stored.
    let mut obj = flunder("default", "example");
    obj["spec"]["color"] = json!("red");
    obj["spec"]["ports"] = json!([{"port": 80}, {"port": 53, "protocol": "UDP", "x": 1}]);
    obj["extra"] = json!({"a": 1});
    let created = s.create("default", &obj).await;
    let got = s.call("GET", &path, None).await.1;
    assert_eq!(got, created);
    assert!(got.get("extra").is_none(), "{got}");
    assert_eq!(
        got["spec"],
        json!({"reference": "r", "size": 1, "mode": "fast",
               "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]})
    );
    assert_eq!(got["metadata"]["name"], "example");

    // Update and both patch kinds over the maximum: 422, the stored object untouched.
    let mut over = got.clone();
    over["spec"]["size"] = json!(11);
    let (code, v) = s.call("PUT", &path, Some(&over)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["message"],
        "Flunder.wardle.example.com \"example\" is invalid: spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"
    );
    assert_eq!(causes(&v)[0].0, "spec.size");
    let (code, v) = s.call("PUT", &format!("{path}?dryRun=All"), Some(&over)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "dryRun validates too: {v}");
    let (code, v) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"spec": {"size": 11, "mode": "warp"}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut got_causes = causes(&v);
    got_causes.sort();
    assert_eq!(got_causes[0].0, "spec.mode");
    assert_eq!(got_causes[0].1, "FieldValueNotSupported");
    assert_eq!(
        got_causes[0].2,
        r#"Unsupported value: "warp": supported values: "fast", "slow""#
    );
    assert_eq!(got_causes[1].0, "spec.size");
    let (code, v) = s
        .call_ct(
            "PATCH",
            &path,
            "application/json-patch+json",
            Some(&json!([{"op": "replace", "path": "/spec/size", "value": -1}])),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(s.call("GET", &path, None).await.1, created);

    // A valid patch that nulls a defaulted field gets the default back, and prunes.
    let (code, v) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"spec": {"size": 10, "mode": null, "junk": true}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["size"], 10);
    assert_eq!(v["spec"]["mode"], "fast");
    assert!(v["spec"].get("junk").is_none(), "{v}");

    // /status is validated as a whole object and pruned like the rest.
    let status_path = format!("{path}/status");
    let mut st = v.clone();
    st["status"] = json!({"phase": "Lost"});
    let (code, e) = s.call("PUT", &status_path, Some(&st)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(causes(&e)[0].0, "status.phase");
    st["status"] = json!({"phase": "Ready", "other": 1});
    let (code, after) = s.call("PUT", &status_path, Some(&st)).await;
    assert_eq!(code, StatusCode::OK, "{after}");
    assert_eq!(after["status"], json!({"phase": "Ready"}));

    // A malformed body is still a 400, not a validation failure.
    let (code, _) = s
        .call_raw(
            "POST",
            &flunders("default"),
            &[("content-type", "application/json")],
            Bytes::from_static(b"{\"spec\": "),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    s.stop().await;
}

// ---------------------------------------------------------------- server-side apply

const APPLY: &str = "application/apply-patch+yaml";

/// Sends an apply body (YAML or JSON text) to one flunder.
async fn apply(s: &Srv, ns: &str, name: &str, query: &str, body: &str) -> (StatusCode, Value) {
    let path = format!("{}/{name}?{query}", flunders(ns));
    let (code, bytes) = s
        .call_raw(
            "PATCH",
            &path,
            &[("content-type", APPLY)],
            Bytes::from(body.to_string()),
        )
        .await;
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&bytes)));
    (code, v)
}

/// The managedFields entry of `manager` with `operation`.
fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

#[tokio::test]
async fn apply_creates_then_prunes_what_it_stopped_applying() {
    let s = Srv::start().await;
    let path = format!("{}/ssa", flunders("default"));
    let yaml = format!(
        "apiVersion: {G}/{V}\nkind: Flunder\nmetadata:\n  name: ssa\n  labels:\n    keep: \"yes\"\n    drop: \"yes\"\nspec:\n  size: 1\n"
    );
    // dryRun creates nothing.
    let (code, v) = apply(&s, "default", "ssa", "fieldManager=tester&dryRun=All", &yaml).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(s.call("GET", &path, None).await.0, StatusCode::NOT_FOUND);

    let (code, created) = apply(
        &s,
        "default",
        "ssa",
        "fieldManager=tester&fieldValidation=Strict",
        &yaml,
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["labels"], json!({"keep": "yes", "drop": "yes"}));
    assert_eq!(created["metadata"]["generation"], 1);
    let e = entry(&created, "tester", "Apply").expect("Apply entry");
    assert_eq!(e["apiVersion"], format!("{G}/{V}"));
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:drop": {}, "f:keep": {}}}, "f:spec": {"f:size": {}}})
    );
    assert_eq!(created["metadata"]["managedFields"].as_array().map(Vec::len), Some(1));

    // The same configuration without `drop`: the label goes, as does its ownership.
    let yaml2 = yaml.replace("    drop: \"yes\"\n", "");
    let (code, next) = apply(&s, "default", "ssa", "fieldManager=tester", &yaml2).await;
    assert_eq!(code, StatusCode::OK, "{next}");
    assert_eq!(next["metadata"]["labels"], json!({"keep": "yes"}));
    assert_eq!(next["metadata"]["generation"], 1, "labels are not spec");
    let e = entry(&next, "tester", "Apply").expect("Apply entry");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:keep": {}}}, "f:spec": {"f:size": {}}})
    );
    // Reads return managedFields, in every form.
    let (_, got) = s.call("GET", &path, None).await;
    assert_eq!(got["metadata"]["managedFields"], next["metadata"]["managedFields"]);
    let (_, list) = s.call("GET", &flunders("default"), None).await;
    assert_eq!(
        list["items"][0]["metadata"]["managedFields"],
        next["metadata"]["managedFields"]
    );
    let (code, bytes) = s
        .call_raw(
            "GET",
            &path,
            &[("accept", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let meta: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(meta["kind"], "PartialObjectMetadata");
    assert_eq!(meta["metadata"]["managedFields"], next["metadata"]["managedFields"]);

    // Applying the same again changes nothing, not even the resourceVersion.
    let (code, again) = apply(&s, "default", "ssa", "fieldManager=tester", &yaml2).await;
    assert_eq!(code, StatusCode::OK, "{again}");
    assert_eq!(
        again["metadata"]["resourceVersion"],
        next["metadata"]["resourceVersion"]
    );

    // Status is the subresource's: the main resource ignores it.
    let with_status = format!("{yaml2}status:\n  phase: Ready\n");
    let (code, v) = apply(&s, "default", "ssa", "fieldManager=tester", &with_status).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(v.get("status").is_none(), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn apply_conflicts_with_other_managers_unless_forced() {
    let s = Srv::start().await;
    let path = format!("{}/shared", flunders("default"));
    let cfg = |size: i64| {
        json!({"apiVersion": format!("{G}/{V}"), "kind": "Flunder", "metadata": {"name": "shared"},
               "spec": {"size": size}})
        .to_string()
    };
    let (code, v) = apply(&s, "default", "shared", "fieldManager=tester", &cfg(1)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // Another manager changes spec.size with a merge patch: it owns the field now.
    let (code, p) = s
        .call_ct(
            "PATCH",
            &format!("{path}?fieldManager=other"),
            "application/merge-patch+json",
            Some(&json!({"spec": {"size": 2}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    let other = entry(&p, "other", "Update").expect("other's entry");
    assert_eq!(other["fieldsV1"], json!({"f:spec": {"f:size": {}}}));
    assert!(other["time"].as_str().is_some_and(|t| t.len() == 20), "{other}");
    // `tester` lost size and owns nothing else: its entry is gone.
    assert!(entry(&p, "tester", "Apply").is_none(), "{p}");

    // Applying a different value without force: 409 naming the other manager and the field.
    let (code, e) = apply(&s, "default", "shared", "fieldManager=tester&force=false", &cfg(3)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["kind"], "Status");
    assert_eq!(e["reason"], "Conflict");
    assert_eq!(
        e["message"],
        format!("Apply failed with 1 conflict: conflict with \"other\" using {G}/{V}: .spec.size")
    );
    assert_eq!(
        e["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": format!("conflict with \"other\" using {G}/{V}"),
                "field": ".spec.size"}])
    );
    let (_, got) = s.call("GET", &path, None).await;
    assert_eq!(got["spec"]["size"], 2, "a refused apply writes nothing");

    // Forced: the value and the ownership move to the applier.
    let (code, f) = apply(&s, "default", "shared", "fieldManager=tester&force=true", &cfg(3)).await;
    assert_eq!(code, StatusCode::OK, "{f}");
    assert_eq!(f["spec"]["size"], 3);
    assert_eq!(f["metadata"]["generation"], 3);
    assert_eq!(
        entry(&f, "tester", "Apply").map(|e| &e["fieldsV1"]),
        Some(&json!({"f:spec": {"f:size": {}}}))
    );
    assert!(entry(&f, "other", "Update").is_none(), "{f}");

    // An empty managedFields list clears them, as in kube; omitting them keeps them.
    let (code, kept) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{kept}");
    assert!(entry(&kept, "tester", "Apply").is_some(), "{kept}");
    let (code, cleared) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"metadata": {"managedFields": []}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{cleared}");
    assert!(cleared["metadata"].get("managedFields").is_none(), "{cleared}");

    // The options kube validates: apply needs a manager, other patches take no force.
    let (code, e) = apply(&s, "default", "shared", "force=true", &cfg(4)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(
        e["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    let (code, e) = s
        .call_ct(
            "PATCH",
            &format!("{path}?force=true"),
            "application/merge-patch+json",
            Some(&json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    // The body must be this object: other names and versions are refused.
    let (code, e) = apply(
        &s,
        "default",
        "shared",
        "fieldManager=tester",
        &cfg(4).replace("shared", "other-name"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{e}");
    let (code, e) = apply(&s, "default", "shared", "fieldManager=tester", &cfg(4).replace(V, "v9")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{e}");
    let (code, e) = apply(&s, "default", "shared", "fieldManager=tester", "{: not yaml").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{e}");
    s.stop().await;
}

/// The requests of `kubectl apply` (client-side), `kubectl label`, `kubectl patch --type=json`
/// and `kubectl apply --server-side`, as recorded in `aggregated-requests.jsonl`.
const KUBECTL_UA: &str = "kubectl/v1.35.2 (linux/amd64) kubernetes/fdc9d74";
const CSA_BODY: &str = "{\"apiVersion\":\"wardle.example.com/v1alpha1\",\"kind\":\"Flunder\",\"metadata\":{\"annotations\":{\"kubectl.kubernetes.io/last-applied-configuration\":\"{\\\"apiVersion\\\":\\\"wardle.example.com/v1alpha1\\\",\\\"kind\\\":\\\"Flunder\\\",\\\"metadata\\\":{\\\"annotations\\\":{},\\\"labels\\\":{\\\"app\\\":\\\"demo\\\"},\\\"name\\\":\\\"f2\\\",\\\"namespace\\\":\\\"default\\\"},\\\"spec\\\":{}}\\n\"},\"labels\":{\"app\":\"demo\"},\"name\":\"f2\",\"namespace\":\"default\"},\"spec\":{}}\n";
const SSA_PATH: &str = "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders/f2?fieldManager=kubectl&fieldValidation=Ignore&force=false";
const SSA_BODY: &str = "{\"apiVersion\":\"wardle.example.com/v1alpha1\",\"kind\":\"Flunder\",\"metadata\":{\"labels\":{\"app\":\"demo\"},\"name\":\"f2\",\"namespace\":\"default\"},\"spec\":{}}\n";

/// The recorded request with `method` and `path` prefix, when the contract is present.
fn recorded(method: &str, path: &str) -> Option<Value> {
    let file = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/contract/aggregated-requests.jsonl"
    ));
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["method"] == method && r["path"].as_str().is_some_and(|p| p.starts_with(path)))
}

#[tokio::test]
async fn kubectl_server_side_apply_request_succeeds() {
    // Keep the constants honest against the recording when it is there.
    if let Some(rec) = recorded("PATCH", SSA_PATH) {
        assert_eq!(rec["path"], SSA_PATH);
        assert_eq!(rec["body"], SSA_BODY);
        assert_eq!(rec["headers"]["content-type"], APPLY);
        assert_eq!(rec["headers"]["user-agent"], KUBECTL_UA);
    }
    let csa = recorded(
        "POST",
        &format!("{}?fieldManager=kubectl-client-side-apply", flunders("default")),
    );
    if let Some(rec) = &csa {
        assert_eq!(rec["body"], CSA_BODY);
    }
    let s = Srv::start().await;
    let ua = ("user-agent", KUBECTL_UA);
    // kubectl apply (client-side) creates the object...
    let (code, bytes) = s
        .call_raw(
            "POST",
            &format!(
                "{}?fieldManager=kubectl-client-side-apply&fieldValidation=Ignore",
                flunders("default")
            ),
            &[ua, ("content-type", "application/json"), ("accept", "application/json")],
            Bytes::from(CSA_BODY),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{}", String::from_utf8_lossy(&bytes));
    let created: Value = serde_json::from_slice(&bytes).expect("json");
    let csa_entry = entry(&created, "kubectl-client-side-apply", "Update").expect("client-side apply entry");
    let want_meta = json!({"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                           "f:labels": {".": {}, "f:app": {}}});
    assert_eq!(csa_entry["fieldsV1"]["f:metadata"], want_meta);
    if let Some(rec) = &csa {
        let head = rec["reference_body_head"].as_str().unwrap_or_default();
        if let Ok(reference) = serde_json::from_str::<Value>(head) {
            let r = entry(&reference, "kubectl-client-side-apply", "Update").expect("reference entry");
            assert_eq!(r["fieldsV1"]["f:metadata"], want_meta);
        }
    }
    // ...kubectl label adds one (the manager comes from the query)...
    let (code, bytes) = s
        .call_raw(
            "PATCH",
            &format!("{}/f2?fieldManager=kubectl-label", flunders("default")),
            &[ua, ("content-type", "application/merge-patch+json")],
            Bytes::from_static(b"{\"metadata\":{\"labels\":{\"extra\":\"yes\"}}}"),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let labelled: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        entry(&labelled, "kubectl-label", "Update").map(|e| &e["fieldsV1"]),
        Some(&json!({"f:metadata": {"f:labels": {"f:extra": {}}}}))
    );
    // ...and without fieldManager the manager is the User-Agent's product.
    let (code, bytes) = s
        .call_raw(
            "PATCH",
            &format!("{}/f2", flunders("default")),
            &[ua, ("content-type", "application/json-patch+json")],
            Bytes::from_static(b"[{\"op\":\"add\",\"path\":\"/metadata/labels/j\",\"value\":\"k\"}]"),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let patched: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        entry(&patched, "kubectl", "Update").map(|e| &e["fieldsV1"]),
        Some(&json!({"f:metadata": {"f:labels": {"f:j": {}}}}))
    );

    // kubectl apply --server-side, byte for byte.
    let (code, bytes) = s
        .call_raw(
            "PATCH",
            SSA_PATH,
            &[ua, ("content-type", APPLY), ("accept", "application/json")],
            Bytes::from(SSA_BODY),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let applied: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        applied["metadata"]["labels"],
        json!({"app": "demo", "extra": "yes", "j": "k"})
    );
    let e = entry(&applied, "kubectl", "Apply").expect("Apply entry");
    // The value the reference server recorded for this request.
    assert_eq!(
        e["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {}})
    );
    // Shared with client-side apply, which keeps its entry.
    assert!(
        entry(&applied, "kubectl-client-side-apply", "Update").is_some(),
        "{applied}"
    );
    // kube keeps the client-side annotation in step with what kubectl applied server-side.
    assert_eq!(
        applied["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        SSA_BODY
    );
    // Entries come sorted with Apply first, as kube-apiserver writes them.
    assert_eq!(applied["metadata"]["managedFields"][0]["operation"], "Apply");
    s.stop().await;
}

#[tokio::test]
async fn schema_tightened_after_restart_ratchets_unchanged_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("config.yaml"), SCHEMA_CONFIG).expect("write config");
    let s = Srv::start_in(tmp.path()).await;
    let path = format!("{}/example", flunders("default"));
    let mut obj = flunder("default", "example");
    obj["spec"]["size"] = json!(9);
    s.create("default", &obj).await;
    let dir = s.stop().await;

    // The new schema allows at most 5: the stored 9 is now invalid.
    let tighter = SCHEMA_CONFIG.replace("maximum: 10", "maximum: 5");
    assert_ne!(tighter, SCHEMA_CONFIG);
    std::fs::write(dir.join("config.yaml"), tighter).expect("rewrite config");
    let s = Srv::start_in(&dir).await;
    // Labels and status may still be written: the unchanged size is not held against them.
    let (code, v) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, v) = s
        .call_ct(
            "PATCH",
            &format!("{path}/status"),
            "application/merge-patch+json",
            Some(&json!({"status": {"phase": "Ready"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    // Changing it to another invalid value is refused.
    let (code, v) = s
        .call_ct(
            "PATCH",
            &path,
            "application/merge-patch+json",
            Some(&json!({"spec": {"size": 8}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        causes(&v)[0].2,
        "Invalid value: 8: spec.size in body should be less than or equal to 5"
    );
    s.stop().await;
}

#[tokio::test]
async fn appliers_keep_each_others_finalizers() {
    let s = Srv::start().await;
    let cfg = |finalizer: &str| {
        json!({"apiVersion": format!("{G}/{V}"), "kind": "Flunder",
               "metadata": {"name": "fin", "finalizers": [finalizer]}})
        .to_string()
    };
    let (code, v) = apply(&s, "default", "fin", "fieldManager=one", &cfg("example.com/one")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (code, v) = apply(&s, "default", "fin", "fieldManager=two", &cfg("example.com/two")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        v["metadata"]["finalizers"],
        json!(["example.com/one", "example.com/two"])
    );
    assert_eq!(
        entry(&v, "two", "Apply").map(|e| &e["fieldsV1"]),
        Some(&json!({"f:metadata": {"f:finalizers": {"v:\"example.com/two\"": {}}}}))
    );
    // `one` applies without its finalizer: only that one is released.
    let none = json!({"apiVersion": format!("{G}/{V}"), "kind": "Flunder", "metadata": {"name": "fin"}}).to_string();
    let (code, v) = apply(&s, "default", "fin", "fieldManager=one", &none).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["finalizers"], json!(["example.com/two"]));
    s.stop().await;
}

/// Large bodies are processed off the async workers (`block_in_place`); they must be served
/// like any other write.
#[tokio::test]
async fn large_bodies_are_served() {
    let s = Srv::start().await;
    let mut obj = flunder("default", "big");
    obj["spec"]["reference"] = json!("r".repeat(512 * 1024));
    let created = s.create("default", &obj).await;
    assert_eq!(created["spec"]["reference"].as_str().map(str::len), Some(512 * 1024));
    let (code, got) = s.call("GET", &format!("{}/big", flunders("default")), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got["spec"], created["spec"]);
    s.stop().await;
}
