//! Kubernetes' own clients against the bundled server in cluster mode (authentication and
//! namespaces from the kube-apiserver double): namespace lifecycle admission, the namespace
//! controller's deletecollection, the garbage collector's metadata-only watch-list and
//! deletes, the aggregator conformance flow, `kubectl get -w` Table watches, selector
//! transitions in watches, and configuration reload. Requests carry the headers the contract
//! recorded from a real 1.36 control plane.

use bytes::Bytes;
use clap::Parser;
use eao::apiserver::options::Args;
use eao::apiserver::{self, Server};
use eao::pki::CertKeyPair;
use eao::testing::testkit::{self as tk, KubeDouble};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const G: &str = "wardle.example.com";
const V: &str = "v1alpha1";
const METADATA_LIST: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const METADATA: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";
const TABLE: &str =
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

struct H {
    double: KubeDouble,
    server: Server,
    serving_ca: CertKeyPair,
    front: CertKeyPair,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

async fn harness() -> H {
    harness_with(&[]).await
}

async fn harness_with(extra: &[&str]) -> H {
    let dir = tempfile::tempdir().expect("tempdir");
    let front_ca = tk::ca("front-proxy-ca").expect("ca");
    let front = tk::client_cert(&front_ca, "front-proxy-client", None).expect("cert");
    let double = KubeDouble::start(tk::auth_configmap_data(&front_ca, &["front-proxy-client"], None))
        .await
        .expect("double");
    let kubeconfig = double.write_kubeconfig(dir.path()).expect("kubeconfig");
    let s = tk::write_serving_files(dir.path()).expect("serving files");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, apiserver::STANDALONE_CONFIG).expect("config");
    let p = |x: &Path| x.display().to_string();
    let mut argv = vec![
        "extension-apiserver".to_string(),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=0".into(),
        format!("--config={}", p(&config)),
        format!("--tls-cert-file={}", p(&s.cert)),
        format!("--tls-private-key-file={}", p(&s.key)),
        format!("--kubeconfig={}", p(&kubeconfig)),
        "--config-reload-interval=100ms".into(),
        "--shutdown-grace-period=2s".into(),
        format!("--data-dir={}", p(&dir.path().join("data"))),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Args::parse_from(argv);
    let server = apiserver::start(args).await.expect("server starts");
    let h = H {
        double,
        server,
        serving_ca: s.ca,
        front,
        config,
        _dir: dir,
    };
    h.wait_ready().await;
    h
}

fn path(ns: &str, rest: &str) -> String {
    format!("/apis/{G}/{V}/namespaces/{ns}/flunders{rest}")
}

fn flunder(name: &str, labels: Value) -> Value {
    json!({"apiVersion": format!("{G}/{V}"), "kind": "Flunder",
           "metadata": {"name": name, "labels": labels}, "spec": {"reference": "r", "size": 1}})
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl H {
    async fn wait_ready(&self) {
        until("/readyz", async || {
            self.raw("GET", "/readyz", &[], Bytes::new()).await.status() == StatusCode::OK
        })
        .await;
    }

    /// A request through the front proxy as an admin, as the aggregator forwards it.
    async fn raw(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Bytes) -> http::Response<Incoming> {
        self.raw_as("admin", &["system:masters"], method, uri, headers, body)
            .await
    }

    /// A request through the front proxy as `user` in `groups` (and system:authenticated).
    async fn raw_as(
        &self,
        user: &str,
        groups: &[&str],
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> http::Response<Incoming> {
        let mut c = tk::connect(self.server.addr, &self.serving_ca.cert_pem, Some(&self.front), true)
            .await
            .expect("connect");
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1")
            .header("x-remote-user", user)
            .header("x-remote-group", "system:authenticated");
        for g in groups {
            b = b.header("x-remote-group", *g);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        c.conn
            .send(b.body(Full::new(body)).expect("request"))
            .await
            .expect("send")
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut hs = headers.to_vec();
        if !hs.iter().any(|(k, _)| *k == "content-type") {
            hs.push(("content-type", "application/json"));
        }
        let r = self.raw(method, uri, &hs, body).await;
        let code = r.status();
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}: {}", String::from_utf8_lossy(&bytes)));
        (code, v)
    }

    async fn create(&self, ns: &str, obj: &Value) -> Value {
        let (code, v) = self.call("POST", &path(ns, ""), &[], Some(obj)).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        v
    }

    async fn names(&self, ns: &str) -> Vec<String> {
        let (code, v) = self
            .call("GET", &path(ns, ""), &[("accept", METADATA_LIST)], None)
            .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        assert_eq!(v["kind"], "PartialObjectMetadataList");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
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
        Events {
            body: r.into_body(),
            buf: Vec::new(),
        }
    }

    async fn next(&mut self) -> Value {
        let read = async {
            loop {
                if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=i).collect();
                    return serde_json::from_slice::<Value>(&line).expect("event JSON");
                }
                let frame = self.body.frame().await.expect("stream open").expect("frame");
                if let Ok(d) = frame.into_data() {
                    self.buf.extend_from_slice(&d);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("an event within 20 s")
    }
}

#[tokio::test]
async fn namespace_lifecycle_refuses_missing_and_terminating_namespaces() {
    let h = harness().await;
    // Until the double names namespaces every name exists (looked up live, not cached).
    h.create("anything", &flunder("f0", json!({}))).await;

    h.double.set_namespace("live", false);
    h.double.set_namespace("doomed", false);
    h.create("live", &flunder("f1", json!({}))).await;

    let (code, v) = h
        .call("POST", &path("no-such-ns", ""), &[], Some(&flunder("f1", json!({}))))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    let reference = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/contract/reference-responses/create-missing-namespace.body"
    ));
    if let Ok(bytes) = std::fs::read(reference) {
        let want: Value = serde_json::from_slice(&bytes).expect("reference JSON");
        assert_eq!(v, want, "as the reference server answers");
    }

    h.double.set_namespace("doomed", true);
    let mut last = Value::Null;
    until("the terminating namespace to refuse creates", async || {
        let (code, v) = h
            .call("POST", &path("doomed", ""), &[], Some(&flunder("late", json!({}))))
            .await;
        last = v;
        code == StatusCode::FORBIDDEN
    })
    .await;
    assert_eq!(last["reason"], "Forbidden");
    assert_eq!(last["details"]["causes"][0]["reason"], "NamespaceTerminating");
    assert!(h.names("doomed").await.is_empty(), "nothing was written");
    // Existing objects in a terminating namespace can still be read, updated and deleted.
    h.double.delete_namespace("live");
    until("the deleted namespace to refuse creates", async || {
        h.call("POST", &path("live", ""), &[], Some(&flunder("f2", json!({}))))
            .await
            .0
            == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(h.names("live").await, vec!["f1"]);
    let (code, _) = h.call("DELETE", &path("live", "/f1"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn namespace_controller_deletecollection_empties_the_namespace() {
    let h = harness().await;
    for n in ["a", "b", "c"] {
        h.create("trace-ns", &flunder(n, json!({"app": "x"}))).await;
    }
    let mut held = flunder("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    h.create("trace-ns", &held).await;
    h.create("other-ns", &flunder("keep", json!({}))).await;

    // The namespace controller's exact request (contract), then its confirming LIST.
    let ua = (
        "user-agent",
        "kube-controller-manager/v0.0.0 (linux/amd64) kubernetes/8e16b12/namespace-controller",
    );
    let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
    let accept = ("accept", "application/vnd.kubernetes.protobuf,application/json");
    let (code, v) = h
        .call("DELETE", &path("trace-ns", ""), &[ua, accept], Some(&opts))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "FlunderList");
    assert_eq!(
        h.names("trace-ns").await,
        vec!["held"],
        "only the finalized object remains"
    );
    let (_, held) = h.call("GET", &path("trace-ns", "/held"), &[], None).await;
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");

    // Its finalizer's controller lets go; the namespace is then empty.
    let patch = json!({"metadata": {"finalizers": null}});
    let (code, v) = h
        .call(
            "PATCH",
            &path("trace-ns", "/held"),
            &[("content-type", "application/merge-patch+json")],
            Some(&patch),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(h.names("trace-ns").await.is_empty());
    assert_eq!(h.names("other-ns").await, vec!["keep"], "other namespaces untouched");
}

#[tokio::test]
async fn garbage_collector_metadata_watch_list_and_delete() {
    let h = harness().await;
    let owner = h.create("gc", &flunder("owner", json!({}))).await;
    let mut owned = flunder("owned", json!({}));
    owned["metadata"]["ownerReferences"] = json!([{"apiVersion": format!("{G}/{V}"), "kind": "Flunder",
        "name": "owner", "uid": owner["metadata"]["uid"], "blockOwnerDeletion": true}]);
    let owned = h.create("gc", &owned).await;
    let rv = owned["metadata"]["resourceVersion"].as_str().expect("rv").to_string();

    // The metadata informer's watch-list (contract), across all namespaces.
    let uri = format!("/apis/{G}/{V}/flunders?allowWatchBookmarks=true&resourceVersion={rv}&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeout=6m54s&timeoutSeconds=414&watch=true");
    let mut ev = Events::new(h.raw("GET", &uri, &[("accept", METADATA)], Bytes::new()).await);
    let mut seen = Vec::new();
    loop {
        let e = ev.next().await;
        assert_eq!(e["object"]["kind"], "PartialObjectMetadata", "{e}");
        assert_eq!(e["object"]["apiVersion"], "meta.k8s.io/v1");
        assert!(e["object"].get("spec").is_none(), "metadata only: {e}");
        if e["type"] == "BOOKMARK" {
            assert_eq!(
                e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            break;
        }
        assert_eq!(e["type"], "ADDED");
        seen.push(e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string());
    }
    seen.sort();
    assert_eq!(seen, vec!["owned", "owner"]);
    let (_, got) = h
        .call("GET", &path("gc", "/owned"), &[("accept", METADATA)], None)
        .await;
    assert_eq!(
        got["metadata"]["ownerReferences"][0]["name"], "owner",
        "kept for the collector"
    );

    // The owner goes; the collector deletes the dependent with uid and rv preconditions.
    let (code, _) = h.call("DELETE", &path("gc", "/owner"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let e = ev.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("owner"))
    );
    let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
        "preconditions": {"uid": owned["metadata"]["uid"], "resourceVersion": rv}});
    let (code, v) = h.call("DELETE", &path("gc", "/owned"), &[], Some(&opts)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let e = ev.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["kind"].as_str()),
        (Some("DELETED"), Some("PartialObjectMetadata"))
    );
    // A retry of the same delete finds nothing, as the contract's 404 shows.
    let (code, v) = h.call("DELETE", &path("gc", "/owned"), &[], Some(&opts)).await;
    assert_eq!((code, v["reason"].as_str()), (StatusCode::NOT_FOUND, Some("NotFound")));
}

/// The flow of Kubernetes' aggregator conformance test (test/e2e/apimachinery/aggregator.go).
#[tokio::test]
async fn aggregator_conformance_flow() {
    let h = harness().await;
    let ns = "conformance";
    let (code, v) = h
        .call(
            "POST",
            &path(ns, ""),
            &[],
            Some(&flunder("rest-flunder", json!({"e2e-test": "x"}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["apiVersion"].as_str(), v["kind"].as_str()),
        (Some("wardle.example.com/v1alpha1"), Some("Flunder"))
    );
    assert_eq!(v["metadata"]["name"], "rest-flunder");

    let (_, list) = h.call("GET", &path(ns, ""), &[], None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (code, _) = h.call("DELETE", &path(ns, "/rest-flunder"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let (_, list) = h.call("GET", &path(ns, ""), &[], None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));

    let (code, disc) = h.call("GET", &format!("/apis/{G}/{V}"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(disc["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["name"] == "flunders"));

    for (n, l) in [("a", "yes"), ("b", "yes"), ("c", "no")] {
        h.create(ns, &flunder(n, json!({"e2e-test": l}))).await;
    }
    let (code, _) = h
        .call("DELETE", &path(ns, "?labelSelector=e2e-test%3Dyes"), &[], None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h.names(ns).await, vec!["c"]);

    let patch = json!({"status": {"phase": "ok"}});
    let (code, v) = h
        .call(
            "PATCH",
            &path(ns, "/c/status"),
            &[("content-type", "application/merge-patch+json")],
            Some(&patch),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["phase"], "ok");
}

#[tokio::test]
async fn table_watch_sends_columns_once() {
    let h = harness().await;
    let first = h.create("tw", &flunder("one", json!({}))).await;
    let rv = first["metadata"]["resourceVersion"].as_str().expect("rv");
    // kubectl get -w: a Table list, then a Table watch from its resourceVersion.
    let uri = path("tw", &format!("?resourceVersion={rv}&watch=true"));
    let mut ev = Events::new(h.raw("GET", &uri, &[("accept", TABLE)], Bytes::new()).await);
    h.create("tw", &flunder("two", json!({}))).await;
    h.create("tw", &flunder("three", json!({}))).await;
    let a = ev.next().await;
    let b = ev.next().await;
    for (e, name) in [(&a, "two"), (&b, "three")] {
        assert_eq!(e["type"], "ADDED");
        assert_eq!(e["object"]["kind"], "Table");
        let row = &e["object"]["rows"][0];
        assert_eq!(row["cells"][0], name);
        assert_eq!(row["cells"][1], 1, "the Size printer column");
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    }
    let cols: Vec<&str> = a["object"]["columnDefinitions"]
        .as_array()
        .expect("columns in the first event")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // Declared columns only: kube adds Age only when none are declared.
    assert_eq!(cols, vec!["Name", "Size"]);
    assert!(
        b["object"]["columnDefinitions"].is_null(),
        "only the first event carries columns"
    );
}

#[tokio::test]
async fn label_selector_watch_sees_objects_enter_and_leave() {
    let h = harness().await;
    let uri = path("sel", "?labelSelector=app%3Dweb&watch=true&resourceVersion=1");
    let mut ev = Events::new(h.raw("GET", &uri, &[], Bytes::new()).await);
    h.create("sel", &flunder("other", json!({"app": "db"}))).await;
    h.create("sel", &flunder("w", json!({"app": "web"}))).await;
    let e = ev.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("w"))
    );

    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    let merge = [("content-type", "application/merge-patch+json")];
    let (code, moved) = h.call("PATCH", &path("sel", "/w"), &merge, Some(&relabel("db"))).await;
    assert_eq!(code, StatusCode::OK);
    let e = ev.next().await;
    assert_eq!(e["type"], "DELETED", "left the selection: {e}");
    assert_eq!(e["object"]["metadata"]["labels"]["app"], "web", "last matching content");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        moved["metadata"]["resourceVersion"]
    );

    // "other" enters the selection: ADDED, not MODIFIED.
    h.call("PATCH", &path("sel", "/other"), &merge, Some(&relabel("web")))
        .await;
    let e = ev.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("other"))
    );
    h.call(
        "PATCH",
        &path("sel", "/other"),
        &merge,
        Some(&json!({"spec": {"size": 3}})),
    )
    .await;
    let e = ev.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["spec"]["size"].as_i64()),
        (Some("MODIFIED"), Some(3))
    );
}

#[tokio::test]
async fn config_reload_serves_new_resources_without_restart() {
    let h = harness().await;
    let gv = format!("/apis/{G}/{V}");
    let has = |v: &Value, name: &str| {
        v["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"] == name)
    };
    let (_, before) = h.call("GET", &gv, &[], None).await;
    assert!(!has(&before, "widgets"));
    let (etag_before, _) = openapi_etag(&h).await;

    let widget =
        "  - kind: Widget\n    plural: widgets\n    scope: Namespaced\n    versions:\n      - name: v1alpha1\n";
    let mut cfg = apiserver::STANDALONE_CONFIG.to_string();
    cfg.push_str(widget);
    std::fs::write(&h.config, &cfg).expect("config");
    until("discovery to list the new resource", async || {
        has(&h.call("GET", &gv, &[], None).await.1, "widgets")
    })
    .await;
    let (code, v) = h.call("GET", &format!("{gv}/namespaces/x/widgets"), &[], None).await;
    assert_eq!((code, v["kind"].as_str()), (StatusCode::OK, Some("WidgetList")));
    let (etag_after, doc) = openapi_etag(&h).await;
    assert_ne!(etag_before, etag_after, "the OpenAPI document changed");
    assert!(doc.to_string().contains("Widget"));

    // A broken file is refused and the last good configuration stays.
    std::fs::write(&h.config, "group: [").expect("config");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(has(&h.call("GET", &gv, &[], None).await.1, "widgets"));
    // So is a change of group, which needs a restart.
    std::fs::write(&h.config, cfg.replace(G, "other.example.com")).expect("config");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, _) = h.call("GET", &gv, &[], None).await;
    assert_eq!(code, StatusCode::OK);
    h.server.shutdown();
}

async fn openapi_etag(h: &H) -> (String, Value) {
    let r = h
        .raw("GET", &format!("/openapi/v3/apis/{G}/{V}"), &[], Bytes::new())
        .await;
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (etag, serde_json::from_slice(&body).expect("json"))
}

#[tokio::test]
async fn mutating_requests_over_the_inflight_limit_get_429() {
    use tokio::io::AsyncWriteExt;
    let h = harness_with(&["--max-mutating-requests-inflight=1"]).await;
    // A client that sends its headers and then only part of its body holds the one permit.
    let mut slow = tk::tls_stream(h.server.addr, &h.serving_ca.cert_pem, Some(&h.front), &[b"http/1.1"])
        .await
        .expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-remote-user: admin\r\nx-remote-group: system:masters\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{",
        path("limits", "")
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    slow.flush().await.expect("flush");
    let mut refused = None;
    until("the held permit to refuse a second write", async || {
        // dryRun: a write that takes a permit but, should it get through, stores nothing.
        let r = h
            .raw(
                "POST",
                &path("limits", "?dryRun=All"),
                &[("content-type", "application/json")],
                Bytes::from(flunder("x", json!({})).to_string()),
            )
            .await;
        let code = r.status();
        refused = r.headers().get("retry-after").cloned();
        let body = r.into_body().collect().await.expect("body").to_bytes();
        code == StatusCode::TOO_MANY_REQUESTS
            && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["reason"] == "TooManyRequests")
    })
    .await;
    assert_eq!(refused.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
    // Reads have their own pool.
    assert_eq!(h.call("GET", &path("limits", ""), &[], None).await.0, StatusCode::OK);
    drop(slow);
    until("the permit to be released", async || {
        h.call("POST", &path("limits", ""), &[], Some(&flunder("y", json!({}))))
            .await
            .0
            == StatusCode::CREATED
    })
    .await;
    assert_eq!(h.names("limits").await, vec!["y"], "the refused write stored nothing");
}

#[tokio::test]
async fn dry_run_is_honoured_on_every_mutating_verb() {
    let h = harness().await;
    let ns = "dry";
    let (code, v) = h
        .call(
            "POST",
            &path(ns, "?dryRun=All"),
            &[],
            Some(&flunder("ghost", json!({}))),
        )
        .await;
    assert_eq!(
        (code, v["metadata"]["name"].as_str()),
        (StatusCode::CREATED, Some("ghost"))
    );
    assert!(h.names(ns).await.is_empty(), "dry-run create stored nothing");

    let stored = h.create(ns, &flunder("real", json!({"app": "a"}))).await;
    let mut changed = stored.clone();
    changed["spec"]["size"] = json!(9);
    let (code, v) = h.call("PUT", &path(ns, "/real?dryRun=All"), &[], Some(&changed)).await;
    assert_eq!((code, v["spec"]["size"].as_i64()), (StatusCode::OK, Some(9)));
    let merge = [("content-type", "application/merge-patch+json")];
    let (code, v) = h
        .call(
            "PATCH",
            &path(ns, "/real?dryRun=All"),
            &merge,
            Some(&json!({"spec": {"size": 7}})),
        )
        .await;
    assert_eq!((code, v["spec"]["size"].as_i64()), (StatusCode::OK, Some(7)));
    let (code, _) = h.call("DELETE", &path(ns, "/real?dryRun=All"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = h.call("DELETE", &path(ns, "?dryRun=All"), &[], None).await;
    assert_eq!(code, StatusCode::OK);

    let (code, now) = h.call("GET", &path(ns, "/real"), &[], None).await;
    assert_eq!(code, StatusCode::OK, "still there after dry-run deletes");
    assert_eq!(now, stored, "no dry-run write changed the stored object");
}

#[tokio::test]
async fn propagation_policies_set_the_collectors_finalizers() {
    let h = harness().await;
    let ns = "gc-policy";
    for n in ["fg", "orph", "bg"] {
        h.create(ns, &flunder(n, json!({}))).await;
    }
    let del = |policy: &str| json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy});
    let (code, v) = h.call("DELETE", &path(ns, "/fg"), &[], Some(&del("Foreground"))).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let (_, v) = h.call("DELETE", &path(ns, "/orph"), &[], Some(&del("Orphan"))).await;
    assert_eq!(v["metadata"]["finalizers"], json!(["orphan"]));
    let (code, _) = h.call("DELETE", &path(ns, "/bg"), &[], Some(&del("Background"))).await;
    assert_eq!(code, StatusCode::OK);
    let mut names = h.names(ns).await;
    names.sort();
    assert_eq!(names, vec!["fg", "orph"], "held for the garbage collector");

    // The collector removes its finalizer when done; the object then goes.
    let merge = [("content-type", "application/merge-patch+json")];
    let (code, _) = h
        .call(
            "PATCH",
            &path(ns, "/fg"),
            &merge,
            Some(&json!({"metadata": {"finalizers": null}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h.names(ns).await, vec!["orph"]);

    // kubectl delete --dry-run=server puts dryRun in the body.
    h.create(ns, &flunder("kept", json!({}))).await;
    let (code, _) = h
        .call("DELETE", &path(ns, "/kept"), &[], Some(&json!({"dryRun": ["All"]})))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(h.names(ns).await.contains(&"kept".to_string()));
    let (code, v) = h.call("DELETE", &path(ns, "/kept"), &[], Some(&del("Sideways"))).await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid"))
    );
}

#[tokio::test]
async fn strict_field_validation_refuses_unknown_fields() {
    let h = harness().await;
    let mut obj = flunder("strict", json!({}));
    obj["spec"]["bogus"] = json!(1);
    // kubectl --validate=strict (its default) sends fieldValidation=Strict.
    let (code, v) = h
        .call(
            "POST",
            &path("fv", "?fieldManager=kubectl-create&fieldValidation=Strict"),
            &[],
            Some(&obj),
        )
        .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    assert_eq!(
        v["message"],
        "Flunder in version \"v1alpha1\" cannot be handled as a Flunder: strict decoding error: unknown field \"spec.bogus\""
    );
    assert!(h.names("fv").await.is_empty());
    // The default (Warn) prunes and says so in a Warning header; Ignore prunes silently.
    let r = h
        .raw(
            "POST",
            &path("fv", "?dryRun=All"),
            &[("content-type", "application/json")],
            Bytes::from(obj.to_string()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let warnings: Vec<&str> = r
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(warnings, vec!["299 - \"unknown field \\\"spec.bogus\\\"\""]);
    let r = h
        .raw(
            "POST",
            &path("fv", "?fieldValidation=Ignore"),
            &[("content-type", "application/json")],
            Bytes::from(obj.to_string()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("warning").is_none());
    let v: Value = serde_json::from_slice(&r.into_body().collect().await.expect("body").to_bytes()).expect("json");
    assert!(v["spec"].get("bogus").is_none());
    let merge = [("content-type", "application/merge-patch+json")];
    let (code, _) = h
        .call(
            "PATCH",
            &path("fv", "/strict?fieldValidation=Strict"),
            &merge,
            Some(&json!({"spec": {"other": 2}})),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "a patch introducing an unknown field too"
    );
}

#[tokio::test]
async fn server_side_apply_is_admitted_and_validated_like_other_writes() {
    let h = harness().await;
    h.double.set_namespace("ssa", false);
    let apply = [("content-type", "application/apply-patch+yaml")];
    let cfg = |spec: &str| format!("apiVersion: {G}/{V}\nkind: Flunder\nmetadata:\n  name: a\nspec:\n{spec}\n");
    let send = async |ns: &str, query: &str, body: String| {
        let r = h
            .raw("PATCH", &path(ns, &format!("/a?{query}")), &apply, Bytes::from(body))
            .await;
        let code = r.status();
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        (code, serde_json::from_slice::<Value>(&bytes).expect("json"))
    };
    let (code, v) = send("ssa", "fieldManager=m", cfg("  size: -1")).await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")),
        "{v}"
    );
    assert_eq!(v["details"]["causes"][0]["field"], "spec.size");
    let (code, v) = send(
        "ssa",
        "fieldManager=m&fieldValidation=Strict",
        cfg("  size: 1\n  bogus: 1"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = send("gone", "fieldManager=m", cfg("  size: 1")).await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some("NotFound")),
        "{v}"
    );
    assert_eq!(v["details"]["kind"], "namespaces");
    let (code, v) = send("ssa", "fieldManager=m", cfg("  size: 2\n  bogus: 1")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert!(v["spec"].get("bogus").is_none(), "pruned: {v}");
    assert_eq!(v["metadata"]["managedFields"][0]["manager"], "m");
    let (code, v) = send("ssa", "fieldManager=m", cfg("  size: -5")).await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an apply update is validated too: {v}"
    );
}

#[tokio::test]
async fn list_resource_version_semantics() {
    let h = harness().await;
    let ns = "rv";
    let first = h.create(ns, &flunder("a", json!({}))).await;
    let rv: u64 = first["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    let hr = &h;
    let list = |q: String| {
        let uri = path(ns, &format!("?{q}"));
        async move { hr.call("GET", &uri, &[], None).await }
    };
    let (code, v) = list("resourceVersionMatch=NotOlderThan".into()).await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")),
        "{v}"
    );
    assert_eq!(
        list(format!("resourceVersion={rv}&resourceVersionMatch=Exact")).await.0,
        StatusCode::OK
    );
    assert_eq!(list("resourceVersion=0".into()).await.0, StatusCode::OK);
    h.create(ns, &flunder("b", json!({}))).await;
    // An Exact list at a past version is the state then, as etcd serves it until compaction
    // (the differential case list-resource-version-options shows kube's answer).
    let (code, v) = list(format!("resourceVersion={rv}&resourceVersionMatch=Exact")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["resourceVersion"], rv.to_string(), "{v}");
    let names: Vec<&str> = v["items"]
        .as_array()
        .map(|i| i.iter().filter_map(|o| o["metadata"]["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["a"], "b came later: {v}");
    let (code, v) = list("resourceVersion=abc".into()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");

    // A version not reached yet is waited for: the list answers once a write gets there.
    let next = rv + 2;
    let waiting = list(format!("resourceVersion={next}&resourceVersionMatch=NotOlderThan"));
    let write = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.create(ns, &flunder("c", json!({}))).await
    };
    let ((code, v), _) = tokio::join!(waiting, write);
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        v["items"].as_array().map(Vec::len),
        Some(3),
        "includes the awaited write"
    );
    // Never reached: 504 ResourceVersionTooLarge after the wait.
    let (code, v) = list(format!("resourceVersion={}", next + 100)).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
}

#[tokio::test]
async fn idle_watch_lists_get_periodic_bookmarks_in_their_form() {
    let h = harness().await;
    let first = h.create("bm", &flunder("a", json!({}))).await;
    let last = h.create("bm", &flunder("b", json!({}))).await;
    let from = first["metadata"]["resourceVersion"].as_str().expect("rv");
    let now = last["metadata"]["resourceVersion"].as_str().expect("rv");
    // kube-controller-manager's metadata informer, from a version older than the current one.
    // kube-apiserver's cacher sends a bookmark roughly every minute and one 2 s before the
    // deadline (measured on 1.36: a 10 s watch got its bookmark 8.6 s in, then ended); a 6 s
    // watch shows the latter without waiting a minute.
    let uri = path(
        "bm",
        &format!("?allowWatchBookmarks=true&resourceVersion={from}&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&watch=true&timeoutSeconds=6"),
    );
    let started = Instant::now();
    let mut ev = Events::new(h.raw("GET", &uri, &[("accept", METADATA)], Bytes::new()).await);
    for _ in 0..2 {
        assert_eq!(ev.next().await["type"], "ADDED");
    }
    let end = ev.next().await;
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(end["object"]["metadata"]["resourceVersion"], now);
    // Writes elsewhere (another namespace is another prefix): the watched resource stays quiet.
    let mut elsewhere = String::new();
    for i in 0..5 {
        let o = h.create("bm-elsewhere", &flunder(&format!("o{i}"), json!({}))).await;
        elsewhere = o["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    }
    // The next event is the bookmark before the deadline. It carries the server's version,
    // past the other namespace's writes (kube's bookmarks carry its watch cache's version,
    // which follows etcd's revision across resources: 277 after configmap writes up to 262,
    // for a custom resource last written at 237), so an informer of a quiet resource never
    // resumes from a version that has left the history. It never goes back behind the
    // version the informer asked for either.
    let e = ev.next().await;
    let at = started.elapsed();
    assert_eq!(e["type"], "BOOKMARK", "{e}");
    assert_eq!(e["object"]["kind"], "PartialObjectMetadata");
    let rv: u64 = e["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("numeric rv");
    assert!(rv >= elsewhere.parse::<u64>().expect("rv"), "{e} before {elsewhere}");
    assert!(
        at >= Duration::from_secs(3) && at < Duration::from_secs(6),
        "bookmark {at:?} into a 6 s watch"
    );
}

#[tokio::test]
async fn versions_differ_only_in_api_version() {
    let h = harness().await;
    // Serve v1beta1 too (through a configuration reload), like a CRD with conversion None.
    let two = apiserver::STANDALONE_CONFIG
        .replace("versions: [v1alpha1]", "versions: [v1alpha1, v1beta1]")
        .replace(
            "      - name: v1alpha1\n",
            "      - name: v1beta1\n      - name: v1alpha1\n",
        );
    assert_ne!(two, apiserver::STANDALONE_CONFIG);
    std::fs::write(&h.config, &two).expect("config");
    until("v1beta1 to be served", async || {
        h.call("GET", &format!("/apis/{G}/v1beta1"), &[], None).await.0 == StatusCode::OK
    })
    .await;
    let beta = |ns: &str, rest: &str| format!("/apis/{G}/v1beta1/namespaces/{ns}/flunders{rest}");
    let created = h.create("mv", &flunder("f", json!({}))).await;
    let watch = beta(
        "mv",
        &format!(
            "?watch=true&resourceVersion={}",
            created["metadata"]["resourceVersion"].as_str().expect("rv")
        ),
    );
    let mut ev = Events::new(h.raw("GET", &watch, &[], Bytes::new()).await);

    let (code, got) = h.call("GET", &beta("mv", "/f"), &[], None).await;
    assert_eq!(code, StatusCode::OK, "{got}");
    assert_eq!(got["apiVersion"], format!("{G}/v1beta1"));
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(got["spec"], created["spec"]);
    let (_, list) = h.call("GET", &beta("mv", ""), &[], None).await;
    assert_eq!(list["items"][0]["apiVersion"], format!("{G}/v1beta1"));

    let merge = [("content-type", "application/merge-patch+json")];
    let (code, patched) = h
        .call(
            "PATCH",
            &beta("mv", "/f"),
            &merge,
            Some(&json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert_eq!(patched["apiVersion"], format!("{G}/v1beta1"));
    assert_eq!(
        patched["metadata"]["generation"], 1,
        "a version change is not a spec change"
    );
    let e = ev.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["apiVersion"].as_str()),
        (Some("MODIFIED"), Some("wardle.example.com/v1beta1"))
    );

    let (_, alpha) = h.call("GET", &path("mv", "/f"), &[], None).await;
    assert_eq!(alpha["apiVersion"], format!("{G}/{V}"));
    assert_eq!(alpha["metadata"]["labels"]["x"], "y");
    // Deleted at once: a Success Status naming it, as the CRD handler answers.
    let (code, v) = h.call("DELETE", &beta("mv", "/f"), &[], None).await;
    assert_eq!(
        (code, v["status"].as_str(), v["details"]["name"].as_str()),
        (StatusCode::OK, Some("Success"), Some("f"))
    );
}

/// Everything a watch sends until it ends (use `timeoutSeconds`).
async fn all_events(r: http::Response<Incoming>) -> Vec<Value> {
    assert_eq!(r.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(20), r.into_body().collect())
        .await
        .expect("watch ends")
        .expect("body")
        .to_bytes();
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("event"))
        .collect()
}

#[tokio::test]
async fn field_selectors_cannot_widen_what_was_authorized() {
    let h = harness().await;
    for n in ["allowed", "secret"] {
        h.create("ns", &flunder(n, json!({}))).await;
    }
    // Reads are allowed only by resourceNames: ["allowed"].
    h.double.set_sar_policy(std::sync::Arc::new(|spec: &Value| {
        let ra = &spec["resourceAttributes"];
        let ok = !matches!(ra["verb"].as_str(), Some("get" | "list" | "watch")) || ra["name"] == "allowed";
        (ok, String::new())
    }));
    let alice = async |uri: &str| h.raw_as("alice", &[], "GET", uri, &[], Bytes::new()).await;
    assert_eq!(
        alice(&path("ns", "")).await.status(),
        StatusCode::FORBIDDEN,
        "an unnamed list is not allowed"
    );
    // The legacy watch path names "allowed" but the selector asks for "secret".
    let legacy = format!("/apis/{G}/{V}/watch/namespaces/ns/flunders/allowed?fieldSelector=metadata.name%3Dsecret");
    assert_eq!(alice(&legacy).await.status(), StatusCode::BAD_REQUEST);
    // Repeated selectors: the first is authorized, so the first is served (as Go reads them).
    let twice = path(
        "ns",
        "?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%3Dallowed&fieldSelector=metadata.namespace%3Dns",
    );
    let names: Vec<String> = all_events(alice(&twice).await)
        .await
        .iter()
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, vec!["allowed"]);
}

#[tokio::test]
async fn malformed_writes_are_refused_and_change_nothing() {
    let h = harness().await;
    let stored = h.create("bad", &flunder("f", json!({"app": "x"}))).await;
    let merge = [("content-type", "application/merge-patch+json")];
    let jsonp = [("content-type", "application/json-patch+json")];

    // A create without a namespace on a namespaced resource: kube's plain-text 404 (as the
    // differential suite shows), never an unreachable object.
    let r = h
        .raw(
            "POST",
            &format!("/apis/{G}/{V}/flunders"),
            &[("content-type", "application/json")],
            Bytes::from(flunder("x", json!({})).to_string()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Unsupported dryRun values are refused, not taken as a real write.
    for q in ["dryRun=true", "dryRun=All&dryRun="] {
        let (code, _) = h
            .call(
                "POST",
                &path("bad", &format!("?{q}")),
                &[],
                Some(&flunder("g", json!({}))),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
    }
    // Patches whose result is not a Flunder.
    for body in [json!(1), json!({"kind": "Other"}), json!({"metadata": 5})] {
        let (code, v) = h.call("PATCH", &path("bad", "/f"), &merge, Some(&body)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (code, _) = h
        .call(
            "PATCH",
            &path("bad", "/f"),
            &jsonp,
            Some(&json!([{"op": "replace", "path": "", "value": 1}])),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // A small JSON patch that doubles the object per operation.
    let doubling: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "/metadata", "path": format!("/metadata/annotations/a{i}")}))
        .collect();
    let (code, v) = h
        .call("PATCH", &path("bad", "/f"), &jsonp, Some(&Value::Array(doubling)))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Metadata of the wrong shape (client-go could no longer decode the list).
    let (code, v) = h
        .call(
            "PATCH",
            &path("bad", "/f"),
            &merge,
            Some(&json!({"metadata": {"labels": {"n": 1}}})),
        )
        .await;
    assert_eq!(
        (code, v["details"]["causes"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.labels.n"))
    );
    // Nesting deeper than can be stored and read back.
    let mut deep = json!({});
    for _ in 0..110 {
        deep = json!({"a": deep});
    }
    let mut obj = flunder("deep", json!({}));
    obj["status"] = deep;
    let (code, v) = h.call("POST", &path("bad", ""), &[], Some(&obj)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");

    let (_, now) = h.call("GET", &path("bad", "/f"), &[], None).await;
    assert_eq!(now, stored, "nothing above changed the object");
    assert_eq!(h.names("bad").await, vec!["f"]);
}
