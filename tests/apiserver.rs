//! End-to-end tests of the bundled aggregated API server over real TLS, with rcgen CAs in
//! tempdirs and the kube-apiserver double from `eao::testing::testkit`.

use bytes::Bytes;
use clap::Parser;
use eao::apiserver::options::Args;
use eao::apiserver::{self, Server};
use eao::pki::CertKeyPair;
use eao::testing::testkit::{self as tk, KubeDouble};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const G: &str = "wardle.example.com";
const V: &str = "v1alpha1";

/// The request got past authentication and authorization (storage answers whatever it
/// answers for the verb: 200, 404, 400...).
#[track_caller]
fn assert_allowed(code: StatusCode, why: &str) {
    assert!(
        !matches!(code.as_u16(), 401 | 403 | 503),
        "{why}: expected an allowed request, got {code}"
    );
}

fn contract_dir() -> Option<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/contract")).to_path_buf();
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: {} missing; skipping the contract comparison", dir.display());
        None
    }
}

fn reference(name: &str) -> Option<Value> {
    let path = contract_dir()?.join("reference-responses").join(format!("{name}.body"));
    Some(serde_json::from_slice(&std::fs::read(path).expect("reference body")).expect("reference JSON"))
}

struct H {
    double: KubeDouble,
    server: Server,
    serving_ca: CertKeyPair,
    front_ca: CertKeyPair,
    client_ca: CertKeyPair,
    /// A front-proxy client certificate with an allowed CN.
    front: CertKeyPair,
    dir: tempfile::TempDir,
}

struct Opts {
    /// Serve the cert/key at these paths instead of fresh files.
    cert_paths: Option<(PathBuf, PathBuf, CertKeyPair)>,
    kubeconfig: Option<PathBuf>,
}

async fn harness() -> H {
    harness_with(Opts {
        cert_paths: None,
        kubeconfig: None,
    })
    .await
}

async fn harness_with(opts: Opts) -> H {
    let dir = tempfile::tempdir().expect("tempdir");
    let front_ca = tk::ca("front-proxy-ca").expect("ca");
    let client_ca = tk::ca("client-ca").expect("ca");
    let front = tk::client_cert(&front_ca, "front-proxy-client", None).expect("cert");
    let double = KubeDouble::start(tk::auth_configmap_data(
        &front_ca,
        &["front-proxy-client"],
        Some(&client_ca),
    ))
    .await
    .expect("double");
    let kubeconfig = match opts.kubeconfig {
        Some(k) => k,
        None => double.write_kubeconfig(dir.path()).expect("kubeconfig"),
    };
    let (cert, key, serving_ca) = match opts.cert_paths {
        Some(p) => p,
        None => {
            let s = tk::write_serving_files(dir.path()).expect("serving files");
            (s.cert, s.key, s.ca)
        }
    };
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, apiserver::STANDALONE_CONFIG).expect("config");
    let args = Args::parse_from::<_, &std::ffi::OsStr>([
        "extension-apiserver".as_ref(),
        "--bind-address".as_ref(),
        "127.0.0.1".as_ref(),
        "--secure-port".as_ref(),
        "0".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--tls-cert-file".as_ref(),
        cert.as_os_str(),
        "--tls-private-key-file".as_ref(),
        key.as_os_str(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--cert-reload-interval".as_ref(),
        "200ms".as_ref(),
        "--shutdown-grace-period".as_ref(),
        "5s".as_ref(),
        "--header-read-timeout".as_ref(),
        "1s".as_ref(),
        "--data-dir".as_ref(),
        dir.path().join("data").as_os_str(),
    ]);
    let server = apiserver::start(args).await.expect("server starts");
    H {
        double,
        server,
        serving_ca,
        front_ca,
        client_ca,
        front,
        dir,
    }
}

impl H {
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, _, _) = self.call(None, "GET", "/readyz", &[], Bytes::new()).await;
            if code == StatusCode::OK {
                return;
            }
            assert!(Instant::now() < deadline, "server not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(
        &self,
        identity: Option<&CertKeyPair>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut c = tk::connect(self.server.addr, &self.serving_ca.cert_pem, identity, false)
            .await
            .expect("connect");
        let mut b = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        c.conn
            .call(b.body(Full::new(body)).expect("request"))
            .await
            .expect("call")
    }

    /// A request through the front proxy as `user` in `groups`.
    async fn as_user(&self, method: &str, path: &str, user: &str, groups: &[&str]) -> (StatusCode, Value) {
        let mut headers = vec![("x-remote-user", user)];
        headers.extend(groups.iter().map(|g| ("x-remote-group", *g)));
        let (code, _, body) = self.call(Some(&self.front), method, path, &headers, Bytes::new()).await;
        (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn last_sar(&self) -> Value {
        self.double
            .sar_specs()
            .last()
            .cloned()
            .expect("a SubjectAccessReview was sent")
    }
}

fn flunders(ns: &str) -> String {
    format!("/apis/{G}/{V}/namespaces/{ns}/flunders")
}

// ---------------------------------------------------------------- authentication

#[tokio::test]
async fn front_proxy_identity_is_used_with_groups_and_extras() {
    let h = harness().await;
    h.wait_ready().await;
    let headers = [
        ("x-remote-user", "alice"),
        ("x-remote-group", "devs"),
        ("x-remote-group", "ops"),
        (
            "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
            "X509SHA256=abc",
        ),
        ("X-Remote-Extra-Scopes", "view"),
        ("X-Remote-Extra-Scopes", "edit"),
        ("x-remote-extra-bad%zzkey", "v"),
    ];
    let (code, _, _) = h
        .call(Some(&h.front), "GET", &flunders("default"), &headers, Bytes::new())
        .await;
    assert_allowed(code, "allowed, no storage yet");
    let spec = h.last_sar();
    assert_eq!(spec["user"], "alice");
    assert_eq!(spec["groups"], json!(["devs", "ops", "system:authenticated"]));
    assert_eq!(
        spec["extra"],
        json!({
            "authentication.kubernetes.io/credential-id": ["X509SHA256=abc"],
            "scopes": ["view", "edit"],
            "bad%zzkey": ["v"],
        })
    );
}

#[tokio::test]
async fn spoofed_headers_without_certificate_are_ignored() {
    let h = harness().await;
    h.wait_ready().await;
    let headers = [("x-remote-user", "admin"), ("x-remote-group", "system:masters")];
    let (code, _, body) = h.call(None, "GET", &flunders("default"), &headers, Bytes::new()).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let body: Value = serde_json::from_slice(&body).expect("Status");
    assert_eq!(
        body["message"],
        "flunders.wardle.example.com is forbidden: User \"system:anonymous\" cannot list resource \"flunders\" in API group \"wardle.example.com\" in the namespace \"default\""
    );
    if let Some(reference) = reference("unauthenticated") {
        assert_eq!(body, reference, "same Status as the sample-apiserver");
    }
    let spec = h.last_sar();
    assert_eq!(spec["user"], "system:anonymous");
    assert_eq!(spec["groups"], json!(["system:unauthenticated"]));
}

#[tokio::test]
async fn certificate_from_wrong_ca_is_unauthorized() {
    let h = harness().await;
    h.wait_ready().await;
    let rogue_ca = tk::ca("front-proxy-ca").expect("ca"); // same name, different key
    let rogue = tk::client_cert(&rogue_ca, "front-proxy-client", None).expect("cert");
    let headers = [("x-remote-user", "admin"), ("x-remote-group", "system:masters")];
    let (code, _, body) = h
        .call(Some(&rogue), "GET", &flunders("default"), &headers, Bytes::new())
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body).expect("Status");
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );
    assert!(h.double.sar_specs().is_empty(), "no SAR for unauthenticated requests");
}

#[tokio::test]
async fn front_proxy_ca_with_unlisted_cn_is_unauthorized() {
    let h = harness().await;
    h.wait_ready().await;
    let other = tk::client_cert(&h.front_ca, "not-the-proxy", None).expect("cert");
    let headers = [("x-remote-user", "admin"), ("x-remote-group", "system:masters")];
    let (code, _, _) = h
        .call(Some(&other), "GET", &flunders("default"), &headers, Bytes::new())
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(h.double.sar_specs().is_empty());
}

#[tokio::test]
async fn empty_allowed_names_accept_any_front_proxy_cn() {
    let h = harness().await;
    h.wait_ready().await;
    let other = tk::client_cert(&h.front_ca, "some-other-proxy", None).expect("cert");
    let path = format!("/apis/{G}/{V}");
    let headers = [("x-remote-user", "dave")];
    let (code, _, _) = h.call(Some(&other), "GET", &path, &headers, Bytes::new()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    h.double
        .update_configmap(tk::auth_configmap_data(&h.front_ca, &[], Some(&h.client_ca)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.call(Some(&other), "GET", &path, &headers, Bytes::new()).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "empty allowed-names not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.last_sar()["user"], "dave");
}

#[tokio::test]
async fn bearer_token_wins_over_spoofed_headers() {
    let h = harness().await;
    h.wait_ready().await;
    h.double.add_token("tok-carol", "carol", "uid-carol", &["readers"]);
    let headers = [
        ("authorization", "Bearer tok-carol"),
        ("x-remote-user", "admin"),
        ("x-remote-group", "system:masters"),
        ("x-remote-extra-scopes", "all"),
    ];
    let (code, _, _) = h.call(None, "GET", &flunders("default"), &headers, Bytes::new()).await;
    assert_allowed(code, "");
    let spec = h.last_sar();
    assert_eq!(spec["user"], "carol");
    assert_eq!(spec["uid"], "uid-carol");
    assert_eq!(spec["groups"], json!(["readers", "system:authenticated"]));
    assert!(spec.get("extra").is_none());
    // Cached: a second request within 10 s makes no second TokenReview.
    let _ = h.call(None, "GET", &flunders("other"), &headers, Bytes::new()).await;
    let reviews = h
        .double
        .requests()
        .iter()
        .filter(|r| r.uri.contains("tokenreviews"))
        .count();
    assert_eq!(reviews, 1);
    // An unknown token is 401, never anonymous.
    let (code, _, _) = h
        .call(
            None,
            "GET",
            &flunders("default"),
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn client_ca_certificate_gives_cn_and_o() {
    let h = harness().await;
    h.wait_ready().await;
    let bob = tk::client_cert(&h.client_ca, "bob", Some("devs")).expect("cert");
    let headers = [("x-remote-user", "admin"), ("x-remote-group", "system:masters")];
    let (code, _, _) = h
        .call(Some(&bob), "GET", &flunders("default"), &headers, Bytes::new())
        .await;
    assert_allowed(code, "");
    let spec = h.last_sar();
    assert_eq!(spec["user"], "bob");
    assert_eq!(spec["groups"], json!(["devs", "system:authenticated"]));
    // No common name, no user: 401, and its O is never granted.
    let nameless = tk::client_cert(&h.client_ca, "", Some("system:masters")).expect("cert");
    let (code, _, _) = h
        .call(Some(&nameless), "GET", &flunders("default"), &[], Bytes::new())
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

/// A deleted authentication ConfigMap is treated as one that never existed: the front-proxy CA
/// it named is no longer trusted (fail closed) until it is back.
#[tokio::test]
async fn deleted_auth_configmap_fails_closed_until_restored() {
    let h = harness().await;
    h.wait_ready().await;
    let gv = format!("/apis/{G}/{V}");
    assert_eq!(h.as_user("GET", &gv, "alice", &[]).await.0, StatusCode::OK);
    h.double.delete_configmap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.as_user("GET", &gv, "alice", &[]).await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "deletion not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, _) = h.call(None, "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    h.double.update_configmap(tk::auth_configmap_data(
        &h.front_ca,
        &["front-proxy-client"],
        Some(&h.client_ca),
    ));
    h.wait_ready().await;
    assert_eq!(h.as_user("GET", &gv, "alice", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn front_proxy_ca_rotation_is_followed() {
    let h = harness().await;
    h.wait_ready().await;
    let (code, _) = h.as_user("GET", &format!("/apis/{G}/{V}"), "alice", &[]).await;
    assert_eq!(code, StatusCode::OK);
    // A long-lived connection with the old certificate: its remembered verification must not
    // outlive the rotation.
    let mut kept = tk::connect(h.server.addr, &h.serving_ca.cert_pem, Some(&h.front), true)
        .await
        .expect("h2");
    let probe = || {
        tk::get(
            &format!("https://127.0.0.1/apis/{G}/{V}"),
            &[("x-remote-user", "alice")],
        )
        .expect("req")
    };
    assert_eq!(kept.conn.call(probe()).await.expect("call").0, StatusCode::OK);
    let new_ca = tk::ca("front-proxy-ca-2").expect("ca");
    let new_front = tk::client_cert(&new_ca, "front-proxy-client", None).expect("cert");
    h.double.update_configmap(tk::auth_configmap_data(
        &new_ca,
        &["front-proxy-client"],
        Some(&h.client_ca),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, _) = h
            .call(
                Some(&new_front),
                "GET",
                &format!("/apis/{G}/{V}"),
                &[("x-remote-user", "alice")],
                Bytes::new(),
            )
            .await;
        if code == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "rotation not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) = h.as_user("GET", &format!("/apis/{G}/{V}"), "alice", &[]).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "the old front-proxy CA is no longer trusted"
    );
    assert_eq!(
        kept.conn.call(probe()).await.expect("call").0,
        StatusCode::UNAUTHORIZED,
        "not on an existing connection either"
    );
}

#[tokio::test]
async fn not_ready_until_auth_config_is_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A kubeconfig pointing at a closed port: the ConfigMap can never load.
    let double = KubeDouble::start(Default::default()).await.expect("double");
    let kc = double.write_kubeconfig(dir.path()).expect("kubeconfig");
    let text = std::fs::read_to_string(&kc)
        .expect("read")
        .replace(&double.addr.to_string(), "127.0.0.1:1");
    std::fs::write(&kc, text).expect("write");
    let h = harness_with(Opts {
        cert_paths: None,
        kubeconfig: Some(kc),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _, body) = h.call(None, "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("[-]authentication-config failed: reason withheld"),
        "{body}"
    );
    // Namespace lifecycle cannot admit creates without its cache. Reasons are logged, not
    // shown to callers (the endpoint answers before authentication), as kube-apiserver does.
    assert!(
        body.contains("[-]namespace-lifecycle failed: reason withheld"),
        "{body}"
    );
    assert!(body.contains("[+]storage ok"), "{body}");
    let (code, _, _) = h.call(None, "GET", "/livez", &[], Bytes::new()).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = h
        .call(Some(&h.front), "GET", "/apis", &[("x-remote-user", "a")], Bytes::new())
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
}

// ---------------------------------------------------------------- authorization

#[tokio::test]
async fn sar_attributes_for_each_verb() {
    let h = harness().await;
    h.wait_ready().await;
    let item = format!("{}/f1", flunders("ns1"));
    let cases: Vec<(&str, String, Value)> = vec![
        (
            "GET",
            flunders("ns1"),
            json!({"namespace": "ns1", "verb": "list", "group": G, "version": V, "resource": "flunders"}),
        ),
        (
            "GET",
            format!("{}?watch=true&resourceVersion=5&timeoutSeconds=1", flunders("ns1")),
            json!({"namespace": "ns1", "verb": "watch", "group": G, "version": V, "resource": "flunders"}),
        ),
        (
            "GET",
            item.clone(),
            json!({"namespace": "ns1", "verb": "get", "group": G, "version": V, "resource": "flunders", "name": "f1"}),
        ),
        (
            "POST",
            flunders("ns1"),
            json!({"namespace": "ns1", "verb": "create", "group": G, "version": V, "resource": "flunders"}),
        ),
        (
            "PUT",
            item.clone(),
            json!({"namespace": "ns1", "verb": "update", "group": G, "version": V, "resource": "flunders", "name": "f1"}),
        ),
        (
            "PATCH",
            item.clone(),
            json!({"namespace": "ns1", "verb": "patch", "group": G, "version": V, "resource": "flunders", "name": "f1"}),
        ),
        (
            "DELETE",
            item.clone(),
            json!({"namespace": "ns1", "verb": "delete", "group": G, "version": V, "resource": "flunders", "name": "f1"}),
        ),
        (
            "DELETE",
            flunders("ns1"),
            json!({"namespace": "ns1", "verb": "deletecollection", "group": G, "version": V, "resource": "flunders"}),
        ),
        (
            "PUT",
            format!("{item}/status"),
            json!({"namespace": "ns1", "verb": "update", "group": G, "version": V, "resource": "flunders", "subresource": "status", "name": "f1"}),
        ),
        (
            "GET",
            format!("/apis/{G}/{V}/fischers"),
            json!({"verb": "list", "group": G, "version": V, "resource": "fischers"}),
        ),
        (
            "GET",
            format!("/apis/{G}/{V}/flunders"),
            json!({"verb": "list", "group": G, "version": V, "resource": "flunders"}),
        ),
        (
            "GET",
            format!("/apis/{G}/{V}/watch/namespaces/ns1/flunders/f1?timeoutSeconds=1"),
            json!({"namespace": "ns1", "verb": "watch", "group": G, "version": V, "resource": "flunders", "name": "f1"}),
        ),
        // Selectors go to the review as kube's webhook authorizer sends them, and the name a
        // field selector pins (terms sorted, so it need not come first) is the review's name.
        (
            "GET",
            format!(
                "{}?watch=yes&timeoutSeconds=1&fieldSelector=metadata.namespace%3Dns1%2Cmetadata.name%3Df1&labelSelector=app%3Da%2C%21gone",
                flunders("ns1")
            ),
            json!({"namespace": "ns1", "verb": "watch", "group": G, "version": V, "resource": "flunders", "name": "f1",
                "fieldSelector": {"requirements": [
                    {"key": "metadata.name", "operator": "In", "values": ["f1"]},
                    {"key": "metadata.namespace", "operator": "In", "values": ["ns1"]}]},
                "labelSelector": {"requirements": [
                    {"key": "app", "operator": "In", "values": ["a"]},
                    {"key": "gone", "operator": "DoesNotExist"}]}}),
        ),
        (
            "DELETE",
            format!("{}?labelSelector=app+notin+%28x%29", flunders("ns1")),
            json!({"namespace": "ns1", "verb": "deletecollection", "group": G, "version": V, "resource": "flunders",
                "labelSelector": {"requirements": [{"key": "app", "operator": "NotIn", "values": ["x"]}]}}),
        ),
    ];
    for (method, path, want) in cases {
        let (code, _) = h.as_user(method, &path, "verb-user", &[]).await;
        assert_allowed(code, "{method} {path}");
        let spec = h.last_sar();
        assert_eq!(spec["user"], "verb-user");
        assert_eq!(spec["groups"], json!(["system:authenticated"]));
        assert_eq!(spec["resourceAttributes"], want, "{method} {path}");
        assert!(spec.get("nonResourceAttributes").is_none());
    }
    let (code, _) = h.as_user("GET", &format!("/apis/{G}/{V}"), "verb-user", &[]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        h.last_sar()["nonResourceAttributes"],
        json!({"path": format!("/apis/{G}/{V}"), "verb": "get"})
    );
}

#[tokio::test]
async fn sar_answers_are_cached_and_denials_are_kube_shaped() {
    let h = harness().await;
    h.wait_ready().await;
    for _ in 0..3 {
        let (code, _) = h.as_user("GET", &flunders("default"), "cache-user", &[]).await;
        assert_allowed(code, "");
    }
    for _ in 0..3 {
        let (code, body) = h.as_user("GET", &flunders("default"), "deny-nobody", &[]).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(body["reason"], "Forbidden");
        assert_eq!(body["details"], json!({"group": G, "kind": "flunders"}));
    }
    let specs = h.double.sar_specs();
    assert_eq!(specs.iter().filter(|s| s["user"] == "cache-user").count(), 1);
    assert_eq!(specs.iter().filter(|s| s["user"] == "deny-nobody").count(), 1);
    if let Some(reference) = reference("forbidden") {
        h.double.set_sar_policy(std::sync::Arc::new(|_| (false, String::new())));
        let (code, body) = h.as_user("GET", &flunders("default"), "nobody", &[]).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(body, reference);
    }
    // Health is always allowed, without a SAR; system:masters skips the SAR too.
    h.double.clear_requests();
    for p in ["/healthz", "/livez", "/readyz"] {
        let (code, _, body) = h.call(None, "GET", p, &[], Bytes::new()).await;
        assert_eq!((code, &body[..]), (StatusCode::OK, &b"ok"[..]), "{p}");
    }
    let (code, _) = h
        .as_user("GET", "/metrics", "system:kube-aggregator", &["system:masters"])
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(h.double.sar_specs().is_empty());
}

// ---------------------------------------------------------------- discovery

/// Checks that every field of `reference` exists in `ours` with the same JSON kind (following
/// the first element of arrays), except paths listed in `optional`.
fn assert_shape(reference: &Value, ours: &Value, path: &str, optional: &[&str]) {
    match (reference, ours) {
        (Value::Object(r), Value::Object(o)) => {
            for (k, rv) in r {
                let p = format!("{path}.{k}");
                match o.get(k) {
                    Some(ov) => assert_shape(rv, ov, &p, optional),
                    None => assert!(optional.contains(&p.as_str()), "missing field {p}"),
                }
            }
        }
        (Value::Array(r), Value::Array(o)) => {
            if let (Some(r0), Some(o0)) = (r.first(), o.first()) {
                assert_shape(r0, o0, &format!("{path}[]"), optional);
            }
        }
        (r, o) => assert_eq!(
            std::mem::discriminant(r),
            std::mem::discriminant(o),
            "{path}: {r} vs {o}"
        ),
    }
}

// The fields are the vocabulary `deny_unknown_fields` checks both documents against.
#[allow(dead_code)]
mod aggregated {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct List {
        pub kind: String,
        pub api_version: String,
        pub metadata: serde_json::Value,
        pub items: Vec<Group>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Group {
        pub metadata: Meta,
        pub versions: Vec<Version>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct Meta {
        pub name: String,
    }
    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Version {
        pub version: String,
        pub resources: Vec<Resource>,
        pub freshness: Option<String>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Resource {
        pub resource: String,
        pub response_kind: Option<Gvk>,
        pub scope: String,
        pub singular_resource: String,
        pub verbs: Vec<String>,
        #[serde(default)]
        pub short_names: Vec<String>,
        #[serde(default)]
        pub categories: Vec<String>,
        #[serde(default)]
        pub subresources: Vec<Subresource>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Subresource {
        pub subresource: String,
        pub response_kind: Option<Gvk>,
        pub verbs: Vec<String>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct Gvk {
        pub group: String,
        pub version: String,
        pub kind: String,
    }
}

#[tokio::test]
async fn discovery_documents_deserialize_and_match_reference_shapes() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIGroupList, APIResourceList};
    let h = harness().await;
    h.wait_ready().await;
    let get = |path: String, accept: Option<&'static str>| {
        let h = &h;
        async move {
            let mut headers = vec![("x-remote-user", "reader")];
            if let Some(a) = accept {
                headers.push(("accept", a));
            }
            let (code, hdrs, body) = h.call(Some(&h.front), "GET", &path, &headers, Bytes::new()).await;
            assert_eq!(code, StatusCode::OK, "{path}");
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            (hdrs, v)
        }
    };
    let (_, apis) = get("/apis".into(), None).await;
    let list: APIGroupList = serde_json::from_value(apis.clone()).expect("APIGroupList");
    assert_eq!(list.groups[0].name, G);
    assert_eq!(
        list.groups[0].preferred_version.as_ref().map(|p| p.version.as_str()),
        Some(V)
    );
    let (_, group) = get(format!("/apis/{G}"), None).await;
    let g: APIGroup = serde_json::from_value(group.clone()).expect("APIGroup");
    assert_eq!(g.versions[0].group_version, format!("{G}/{V}"));
    let (_, rl) = get(format!("/apis/{G}/{V}"), None).await;
    let rl_typed: APIResourceList = serde_json::from_value(rl.clone()).expect("APIResourceList");
    let names: Vec<&str> = rl_typed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["fischers", "flunders", "flunders/status"]);
    let fl = &rl_typed.resources[1];
    assert_eq!(
        (fl.singular_name.as_str(), fl.namespaced, fl.kind.as_str()),
        ("flunder", true, "Flunder")
    );
    assert_eq!(fl.short_names.as_deref(), Some(&["fl".to_string()][..]));
    assert_eq!(fl.categories.as_deref(), Some(&["all".to_string()][..]));
    assert_eq!(rl_typed.resources[2].verbs, ["get", "patch", "update"]);
    // Trailing slash: same document, no redirect.
    let (_, rl_slash) = get(format!("/apis/{G}/{V}/"), None).await;
    assert_eq!(rl_slash, rl);

    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let (hdrs, agg) = get("/apis".into(), Some(accept)).await;
    assert_eq!(
        hdrs["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(hdrs["vary"], "Accept");
    let typed: aggregated::List = serde_json::from_value(agg.clone()).expect("aggregated discovery");
    assert_eq!(typed.kind, "APIGroupDiscoveryList");
    assert_eq!(typed.api_version, "apidiscovery.k8s.io/v2");
    let res = &typed.items[0].versions[0].resources;
    let flunder = res.iter().find(|r| r.resource == "flunders").expect("flunders");
    assert_eq!(flunder.subresources[0].subresource, "status");
    assert_eq!(flunder.scope, "Namespaced");
    let (_, beta) = get(
        "/apis".into(),
        Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"),
    )
    .await;
    assert_eq!(beta["apiVersion"], "apidiscovery.k8s.io/v2beta1");

    // 304 when the aggregator already has this version.
    let etag = hdrs["etag"].to_str().expect("etag").to_string();
    let (code, _, body) = h
        .call(
            Some(&h.front),
            "GET",
            "/apis",
            &[
                ("x-remote-user", "system:kube-aggregator"),
                ("accept", accept),
                ("if-none-match", &etag),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    // Nothing acceptable: 406 Status.
    let (code, _, _) = h
        .call(
            Some(&h.front),
            "GET",
            "/apis",
            &[
                ("x-remote-user", "r"),
                ("accept", "application/vnd.kubernetes.protobuf"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_ACCEPTABLE);

    if let Some(r) = reference("apis-legacy") {
        assert_shape(&r, &apis, "", &[".groups[].serverAddressByClientCIDRs"]);
    }
    if let Some(r) = reference("group") {
        assert_shape(&r, &group, "", &[]);
    }
    if let Some(r) = reference("group-version-resourcelist") {
        assert_shape(&r, &rl, "", &[]);
    }
    if let Some(r) = reference("apis-v2-aggregated-discovery") {
        let _: aggregated::List = serde_json::from_value(r.clone()).expect("reference fits the same struct");
        assert_shape(&r, &agg, "", &[]);
    }
    if let Some(r) = reference("version") {
        let (_, v) = get("/version".into(), None).await;
        let optional = [
            ".emulationMajor",
            ".emulationMinor",
            ".minCompatibilityMajor",
            ".minCompatibilityMinor",
        ];
        assert_shape(&r, &v, "", &optional);
    }
}

#[tokio::test]
async fn kube_rs_discovery_consumes_both_forms() {
    use base64::Engine;
    use kube::discovery::{Discovery, Scope};
    let h = harness().await;
    h.wait_ready().await;
    let id = tk::client_cert(&h.client_ca, "kube-rs-client", Some("devs")).expect("cert");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context:\n    cluster: s\n    user: u\ncurrent-context: c\n",
        h.server.addr,
        b64(&h.serving_ca.cert_pem),
        b64(&id.cert_pem),
        b64(&id.key_pem)
    );
    let path = h.dir.path().join("kube-rs.kubeconfig");
    std::fs::write(&path, kc).expect("write");
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let rl = client
        .list_api_group_resources(&format!("{G}/{V}"))
        .await
        .expect("APIResourceList");
    assert_eq!(rl.group_version, format!("{G}/{V}"));
    for discovery in [
        Discovery::new(client.clone())
            .filter(&[G])
            .run()
            .await
            .expect("legacy discovery"),
        Discovery::new(client.clone())
            .filter(&[G])
            .run_aggregated()
            .await
            .expect("aggregated discovery"),
    ] {
        let group = discovery.get(G).expect("group discovered");
        let (ar, caps) = group.recommended_kind("Flunder").expect("Flunder");
        assert_eq!(
            (ar.plural.as_str(), ar.api_version.as_str()),
            ("flunders", "wardle.example.com/v1alpha1")
        );
        assert_eq!(caps.scope, Scope::Namespaced);
        assert!(caps.supports_operation("watch") && caps.supports_operation("deletecollection"));
        assert_eq!(caps.subresources.len(), 1, "status subresource");
        let (_, fcaps) = group.recommended_kind("Fischer").expect("Fischer");
        assert_eq!(fcaps.scope, Scope::Cluster);
    }
    let spec = h.last_sar();
    assert_eq!(spec["user"], "kube-rs-client");
}

#[tokio::test]
async fn recorded_control_plane_requests_are_answered() {
    let Some(dir) = contract_dir() else { return };
    let h = harness().await;
    h.wait_ready().await;
    let text = std::fs::read_to_string(dir.join("aggregated-requests.jsonl")).expect("jsonl");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rec: Value = serde_json::from_str(line).expect("record");
        let method = rec["method"].as_str().expect("method");
        let path = rec["path"].as_str().expect("path");
        let mut headers: Vec<(String, String)> = Vec::new();
        for (k, v) in rec["headers"].as_object().expect("headers") {
            if k == "host" {
                continue;
            }
            match v {
                Value::Array(vs) => {
                    headers.extend(vs.iter().filter_map(|x| Some((k.clone(), x.as_str()?.to_string()))))
                }
                Value::String(s) => headers.push((k.clone(), s.clone())),
                _ => {}
            }
        }
        let hdrs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = rec.get("body").map(|b| match b {
            Value::String(s) => Bytes::from(s.clone()),
            other => Bytes::from(other.to_string()),
        });
        // Watches stream until their timeout; a short one keeps the replay quick.
        // (Replaced, not appended: the first value of a repeated parameter counts, as in Go.)
        let path_owned = if path.contains("watch=true") || path.contains("/watch/") {
            let (base, query) = path.split_once('?').unwrap_or((path, ""));
            let mut q: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("timeoutSeconds="))
                .collect();
            q.push("timeoutSeconds=1");
            format!("{base}?{}", q.join("&"))
        } else {
            path.to_string()
        };
        let (code, resp_headers, _) = h
            .call(Some(&h.front), method, &path_owned, &hdrs, body.unwrap_or_default())
            .await;
        assert!(
            !code.is_redirection() && !code.is_server_error(),
            "{method} {path}: {code}"
        );
        assert!(
            code != StatusCode::UNAUTHORIZED && code != StatusCode::FORBIDDEN,
            "{method} {path}: {code}"
        );
        let discovery_or_openapi = path.starts_with("/openapi") || path == "/apis" || path == format!("/apis/{G}/{V}");
        if discovery_or_openapi {
            assert!(
                code == StatusCode::OK || code == StatusCode::NOT_MODIFIED,
                "{path}: {code}"
            );
        }
        if rec["sender"]
            .as_str()
            .unwrap_or_default()
            .contains("availability probe")
        {
            assert_eq!(code, StatusCode::OK, "the aggregator's probe");
            assert_eq!(resp_headers["content-type"], "application/json");
        }
    }
}

// ---------------------------------------------------------------- OpenAPI

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().expect("$ref is a string").to_string());
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn assert_refs_resolve(doc: &Value) -> usize {
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in &refs {
        let pointer = r.strip_prefix('#').expect("local $ref");
        assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
    }
    refs.len()
}

#[tokio::test]
async fn openapi_documents_are_valid_and_cacheable() {
    let h = harness().await;
    h.wait_ready().await;
    let user = [("x-remote-user", "system:aggregator")];
    let (code, hdrs, body) = h.call(Some(&h.front), "GET", "/openapi/v2", &user, Bytes::new()).await;
    assert_eq!(code, StatusCode::OK);
    let v2: Value = serde_json::from_slice(&body).expect("v2 JSON");
    assert_eq!(v2["swagger"], "2.0");
    assert!(assert_refs_resolve(&v2) > 10);
    let flunder = &v2["definitions"]["com.example.wardle.v1alpha1.Flunder"];
    assert_eq!(
        flunder["x-kubernetes-group-version-kind"],
        json!([{"group": G, "version": V, "kind": "Flunder"}])
    );
    assert_eq!(flunder["properties"]["spec"]["properties"]["size"]["type"], "integer");
    assert!(v2["paths"][format!("/apis/{G}/{V}/namespaces/{{namespace}}/flunders/{{name}}")]["patch"].is_object());
    let etag = hdrs["etag"].to_str().expect("etag").to_string();
    let (code, _, _) = h
        .call(
            Some(&h.front),
            "GET",
            "/openapi/v2",
            &[user[0], ("if-none-match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_MODIFIED);

    // Protobuf only (kubectl's v2 download): 406, never JSON the client cannot parse.
    let pb = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let (code, _, _) = h
        .call(
            Some(&h.front),
            "GET",
            "/openapi/v2",
            &[user[0], ("accept", pb)],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_ACCEPTABLE);

    let (code, _, body) = h.call(Some(&h.front), "GET", "/openapi/v3", &user, Bytes::new()).await;
    assert_eq!(code, StatusCode::OK);
    let index: Value = serde_json::from_slice(&body).expect("index");
    if let Some(r) = reference("openapi-v3-root") {
        let first = r["paths"]
            .as_object()
            .and_then(|m| m.values().next())
            .cloned()
            .expect("entry");
        let ours = index["paths"][format!("apis/{G}/{V}")].clone();
        assert_shape(&first, &ours, "", &[]);
    }
    let url = index["paths"][format!("apis/{G}/{V}")]["serverRelativeURL"]
        .as_str()
        .expect("serverRelativeURL")
        .to_string();
    let (code, hdrs, body) = h.call(Some(&h.front), "GET", &url, &user, Bytes::new()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(hdrs["cache-control"], "public, immutable");
    let v3: Value = serde_json::from_slice(&body).expect("v3 JSON");
    assert_eq!(v3["openapi"], "3.0.0");
    assert!(assert_refs_resolve(&v3) > 10);
    for (path, item) in v3["paths"].as_object().expect("paths") {
        assert!(path.starts_with(&format!("/apis/{G}/{V}/")), "{path}");
        for (method, op) in item.as_object().expect("path item") {
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["responses"]["200"].is_object(), "{method} {path}");
        }
    }
    if let Some(r) = reference("openapi-v3-groupversion") {
        assert_eq!(r["openapi"], v3["openapi"]);
        assert!(r["components"]["schemas"].is_object() && v3["components"]["schemas"].is_object());
    }
    let etag = hdrs["etag"].to_str().expect("etag").to_string();
    let path_only = url.split('?').next().expect("path").to_string();
    let (code, _, _) = h
        .call(
            Some(&h.front),
            "GET",
            &path_only,
            &[user[0], ("if-none-match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_MODIFIED);
    let (code, _, _) = h
        .call(
            Some(&h.front),
            "GET",
            &format!("{path_only}?hash=stale"),
            &user,
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "a stale hash is served, never redirected");
}

// ---------------------------------------------------------------- serving

#[tokio::test]
async fn oversize_bodies_get_413_status() {
    let h = harness().await;
    h.wait_ready().await;
    let id = Some(&h.front);
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        flunders("default"),
        4 * 1024 * 1024
    );
    let (resp, closed) = tk::raw_http1(
        h.server.addr,
        &h.serving_ca.cert_pem,
        id,
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .expect("raw");
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"reason\":\"RequestEntityTooLarge\""), "{resp}");
    assert!(closed);

    // Chunked, no Content-Length: the limit applies while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tk::tls_stream(h.server.addr, &h.serving_ca.cert_pem, id, &[b"http/1.1"])
        .await
        .expect("tls");
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nTransfer-Encoding: chunked\r\n\r\n",
        flunders("default")
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'a'; 512 * 1024];
        for _ in 0..8 {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(())
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    let _ = writer.await;
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
}

/// Sends a 4 MiB POST over HTTP/2 (with or without a declared length) and returns the status
/// and body of the answer. The body is pushed as flow control allows, as kube-apiserver's
/// aggregator proxies it.
async fn oversize_over_h2(h: &H, declare_length: bool) -> (StatusCode, Value) {
    let tls = tk::tls_stream(h.server.addr, &h.serving_ca.cert_pem, Some(&h.front), &[b"h2"])
        .await
        .expect("tls");
    let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let total = 4 * 1024 * 1024;
    let mut req = Request::post(format!("https://127.0.0.1{}", flunders("default")))
        .header("x-remote-user", "admin")
        .header("content-type", "application/json");
    if declare_length {
        req = req.header("content-length", total.to_string());
    }
    let mut client = client.ready().await.expect("ready");
    let (resp, mut body) = client.send_request(req.body(()).expect("req"), false).expect("send");
    let push = tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            body.reserve_capacity(left.min(64 * 1024));
            let Some(Ok(n)) = std::future::poll_fn(|cx| body.poll_capacity(cx)).await else {
                return;
            };
            let n = n.min(left);
            if body.send_data(Bytes::from(vec![b'a'; n]), false).is_err() {
                return;
            }
            left -= n;
        }
        let _ = body.send_data(Bytes::new(), true);
    });
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("an answer within 20 s")
        .expect("a response, not a stream reset");
    let status = resp.status();
    let mut recv = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("the Status body, not a stream reset");
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    push.abort();
    conn.abort();
    (status, serde_json::from_slice(&data).unwrap_or(Value::Null))
}

#[tokio::test]
async fn oversize_bodies_get_413_status_over_http2() {
    // kube-apiserver's aggregator talks HTTP/2 to aggregated servers: a too-large body must get
    // the 413 Status HTTP/1.1 gets, declared or found while reading.
    let h = harness().await;
    h.wait_ready().await;
    for declare_length in [true, false] {
        let (status, body) = oversize_over_h2(&h, declare_length).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared {declare_length}: {body}"
        );
        assert_eq!(body["kind"], "Status", "{body}");
        assert_eq!(body["reason"], "RequestEntityTooLarge", "{body}");
        assert_eq!(body["code"], 413, "{body}");
    }
}

#[tokio::test]
async fn upgrade_requests_are_refused_and_closed() {
    let h = harness().await;
    h.wait_ready().await;
    for path in [
        "/apis".to_string(),
        flunders("default"),
        format!("{}/f1", flunders("default")),
        "/nope".into(),
    ] {
        for upgrade in ["websocket", "SPDY/3.1"] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nX-Remote-Group: system:masters\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
            );
            let (resp, closed) = tk::raw_http1(
                h.server.addr,
                &h.serving_ca.cert_pem,
                Some(&h.front),
                req.as_bytes(),
                Duration::from_secs(5),
            )
            .await
            .expect("raw");
            assert!(resp.starts_with("HTTP/1.1 400"), "{path} {upgrade}: {resp}");
            assert!(!resp.contains(" 101 "), "never switch protocols");
            assert!(resp.contains("\"kind\":\"Status\""));
            assert!(closed, "connection closed after refusing an upgrade");
        }
    }
}

#[tokio::test]
async fn odd_paths_never_redirect() {
    let h = harness().await;
    h.wait_ready().await;
    let corpus = [
        "/apis/",
        "/apis//",
        "//apis",
        "///",
        "/apis/wardle.example.com/",
        "/apis/wardle.example.com/v1alpha1/",
        "/apis/../apis",
        "/apis/./wardle.example.com",
        "/apis/%2e%2e/healthz",
        "/apis/%2E%2E/%2E%2E/etc/passwd",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders/",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/../flunders",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders/a%2Fb",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders/a/b/c/d",
        "/apis/wardle.example.com/v1alpha1/flunders/..",
        "/healthz/",
        "/healthz/../metrics",
        "/openapi/v2/",
        "/openapi/v3/",
        "/openapi/v3/apis/wardle.example.com/v1alpha1/",
        "/%2F",
        "/apis%2Fwardle.example.com",
        "/APIS",
        "/index.html",
        "/debug/pprof/",
        "/.",
        "/..",
        "/%",
        "/apis/%zz",
        "/apis/%00",
        "/apis?x=1",
        "/apis/wardle.example.com/v1alpha1?watch=true",
        "http://evil.example.com/apis",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders/%C0%AE%C0%AE",
    ];
    for path in corpus {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nConnection: close\r\n\r\n");
        let (resp, _) = tk::raw_http1(
            h.server.addr,
            &h.serving_ca.cert_pem,
            Some(&h.front),
            req.as_bytes(),
            Duration::from_secs(5),
        )
        .await
        .expect("raw");
        let status: u16 = resp
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no status line in {resp:?}"));
        assert!(!(300..400).contains(&status), "{path}: redirected ({status})");
        assert!(!resp.to_ascii_lowercase().contains("\r\nlocation:"), "{path}");
        assert!(status < 500, "{path}: {status}");
    }
}

#[tokio::test]
async fn slow_request_headers_time_out() {
    let h = harness().await;
    h.wait_ready().await;
    // Headers never finished: the connection is closed after --header-read-timeout (1 s here).
    let start = Instant::now();
    let (resp, closed) = tk::raw_http1(
        h.server.addr,
        &h.serving_ca.cert_pem,
        None,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("raw");
    assert!(closed, "connection closed");
    assert!(!resp.contains(" 200 "), "{resp}");
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn http2_is_negotiated_with_many_concurrent_streams() {
    let h = harness().await;
    h.wait_ready().await;
    let c = tk::connect(h.server.addr, &h.serving_ca.cert_pem, Some(&h.front), true)
        .await
        .expect("connect");
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    let tk::Conn::H2(send) = c.conn else {
        panic!("h2 expected")
    };
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("https://127.0.0.1/apis/{G}/{V}"))
                .header("x-remote-user", format!("user-{}", i % 10))
                .body(Full::new(Bytes::new()))
                .expect("req");
            send.ready().await.expect("ready");
            send.send_request(req).await.map(|r| r.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("response"), StatusCode::OK);
    }
}

#[tokio::test]
async fn http2_settings_allow_1000_streams_and_no_extended_connect() {
    let h = harness().await;
    h.wait_ready().await;
    let tls = tk::tls_stream(h.server.addr, &h.serving_ca.cert_pem, Some(&h.front), &[b"h2"])
        .await
        .expect("tls");
    let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let mut conn = std::pin::pin!(conn);
    let request = async {
        let mut client = client.clone().ready().await?;
        let req = Request::get(format!("https://127.0.0.1/apis/{G}/{V}"))
            .header("x-remote-user", "a")
            .body(())
            .expect("req");
        let (resp, _) = client.send_request(req, true)?;
        resp.await
    };
    let status = tokio::select! {
        r = request => r.expect("response").status(),
        r = conn.as_mut() => panic!("connection ended early: {r:?}"),
    };
    assert_eq!(status, StatusCode::OK);
    assert!(
        conn.max_concurrent_send_streams() >= 1000,
        "{}",
        conn.max_concurrent_send_streams()
    );
    // No RFC 8441 extended CONNECT: nothing can be upgraded over HTTP/2 either.
    assert!(!client.is_extended_connect_protocol_enabled());
}

#[tokio::test]
async fn serving_cert_hot_reload_keeps_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // kubelet-style layout: `current` is a symlink swapped atomically to a new directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = tk::ca("serving-ca").expect("ca");
    let write_pair = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let leaf = tk::serving_cert(&ca).expect("leaf");
        std::fs::write(d.join("tls.crt"), &leaf.cert_pem).expect("write");
        std::fs::write(d.join("tls.key"), &leaf.key_pem).expect("write");
        tk::leaf_der(&d.join("tls.crt")).expect("der").to_vec()
    };
    let first = write_pair("gen-1");
    std::os::unix::fs::symlink(dir.path().join("gen-1"), dir.path().join("current")).expect("symlink");
    let cert = dir.path().join("current/tls.crt");
    let key = dir.path().join("current/tls.key");
    let h = harness_with(Opts {
        cert_paths: Some((cert, key, ca.clone())),
        kubeconfig: None,
    })
    .await;
    h.wait_ready().await;

    // An HTTP/2 connection and an in-flight (slow) HTTP/1.1 request, both open across the swap.
    let mut h2 = tk::connect(h.server.addr, &ca.cert_pem, Some(&h.front), true)
        .await
        .expect("h2");
    assert_eq!(h2.server_cert, first);
    let (code, _, _) = h2
        .conn
        .call(tk::get(&format!("https://127.0.0.1/apis/{G}/{V}"), &[("x-remote-user", "a")]).expect("req"))
        .await
        .expect("call");
    assert_eq!(code, StatusCode::OK);
    let mut slow = tk::tls_stream(h.server.addr, &ca.cert_pem, Some(&h.front), &[b"http/1.1"])
        .await
        .expect("tls");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        flunders("default")
    );
    slow.write_all(head.as_bytes()).await.expect("write");

    let second = write_pair("gen-2");
    std::os::unix::fs::symlink(dir.path().join("gen-2"), dir.path().join("current.tmp")).expect("symlink");
    std::fs::rename(dir.path().join("current.tmp"), dir.path().join("current")).expect("swap");
    let swapped = Instant::now();
    loop {
        let c = tk::connect(h.server.addr, &ca.cert_pem, None, false)
            .await
            .expect("connect");
        if c.server_cert == second {
            break;
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(2),
            "new connections must see the new certificate within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old connections still work.
    let (code, _, _) = h2
        .conn
        .call(tk::get(&format!("https://127.0.0.1/apis/{G}/{V}"), &[("x-remote-user", "a")]).expect("req"))
        .await
        .expect("old h2 connection still serves");
    assert_eq!(code, StatusCode::OK);
    slow.write_all(b"hello").await.expect("body");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness().await;
    h.wait_ready().await;
    let mut slow = tk::tls_stream(h.server.addr, &h.serving_ca.cert_pem, Some(&h.front), &[b"http/1.1"])
        .await
        .expect("tls");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nContent-Length: 5\r\n\r\n",
        flunders("default")
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.server.drain();
    let (code, _, _) = h.call(None, "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "not ready while draining");
    let (code, _, _) = h.call(None, "GET", "/livez", &[], Bytes::new()).await;
    assert_eq!(code, StatusCode::OK, "still serving while draining");
    h.server.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tk::connect(h.server.addr, &h.serving_ca.cert_pem, None, false)
            .await
            .is_err(),
        "no new connections after shutdown"
    );
    slow.write_all(b"hello").await.expect("body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let H { server, .. } = h;
    tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("server stops");
}

#[tokio::test]
async fn metrics_count_requests_with_bounded_labels() {
    let h = harness().await;
    h.wait_ready().await;
    let _ = h.as_user("GET", &flunders("default"), "m", &[]).await;
    let _ = h.as_user("GET", "/apis/x/y/zzz-unbounded-resource", "m", &[]).await;
    let (code, _, body) = h
        .call(
            Some(&h.front),
            "GET",
            "/metrics",
            &[("x-remote-user", "prom")],
            Bytes::new(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(r#"apiserver_request_total{verb="list",resource="flunders",code="200"} 1"#),
        "{text}"
    );
    assert!(text.contains("apiserver_request_duration_seconds_bucket"), "{text}");
    assert!(!text.contains("zzz-unbounded-resource"));
    let _ = h.dir.path();
}

// ---------------------------------------------------------------- the binary

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn binary_refuses_a_key_that_does_not_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = tk::write_serving_files(dir.path()).expect("files");
    let other = tk::serving_cert(&a.ca).expect("leaf");
    let bad_key = dir.path().join("other.key");
    std::fs::write(&bad_key, other.key_pem).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extension-apiserver"))
        .args(["--standalone", "--bind-address", "127.0.0.1", "--secure-port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert-file")
        .arg(&a.cert)
        .arg("--tls-private-key-file")
        .arg(&bad_key)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private key does not match the certificate"), "{err}");
}

#[tokio::test]
async fn standalone_binary_with_token_file_and_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "tok-alice,alice,uid-1,\"devs,ops\"\ntok-bob,bob,uid-2\n").expect("write");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "- group: devs\n  verbs: [\"*\"]\n  resources: [\"*\"]\n  nonResourcePaths: [\"/apis*\", \"/openapi/*\", \"/version\"]\n- user: bob\n  verbs: [get]\n  nonResourcePaths: [\"/apis*\"]\n",
    )
    .expect("write");
    let client_ca = tk::ca("standalone-client-ca").expect("ca");
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &client_ca.cert_pem).expect("write");
    let front_ca = tk::ca("standalone-front-proxy-ca").expect("ca");
    let front_ca_file = dir.path().join("front-proxy-ca.crt");
    std::fs::write(&front_ca_file, &front_ca.cert_pem).expect("write");
    let port = free_port();
    let certs = dir.path().join("certs");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_extension-apiserver"))
        .args(["--standalone", "--bind-address", "127.0.0.1", "--log-format", "plain"])
        .args(["--secure-port", &port.to_string()])
        .arg("--config")
        .arg(dir.path().join("missing.yaml"))
        .arg("--cert-dir")
        .arg(&certs)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--token-auth-file")
        .arg(&tokens)
        .arg("--authorization-policy-file")
        .arg(&policy)
        .arg("--client-ca-file")
        .arg(&ca_file)
        .arg("--requestheader-client-ca-file")
        .arg(&front_ca_file)
        .args(["--requestheader-allowed-names", "front-proxy-client"])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(15);
    let ca = loop {
        if let Ok(ca) = std::fs::read_to_string(certs.join("ca.crt")) {
            if tk::connect(addr, &ca, None, false).await.is_ok() {
                break ca;
            }
        }
        assert!(Instant::now() < deadline, "standalone server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let call = |id: Option<CertKeyPair>, path: String, headers: Vec<(&'static str, &'static str)>| {
        let ca = ca.clone();
        async move {
            let mut c = tk::connect(addr, &ca, id.as_ref(), false).await.expect("connect");
            c.conn.call(tk::get(&path, &headers).expect("req")).await.expect("call")
        }
    };
    let (code, _, _) = call(None, flunders("default"), vec![("authorization", "Bearer tok-alice")]).await;
    assert_allowed(code, "alice is allowed (no storage yet)");
    let (code, _, body) = call(None, flunders("default"), vec![("authorization", "Bearer tok-bob")]).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&body));
    let (code, _, _) = call(
        None,
        format!("/apis/{G}/{V}"),
        vec![("authorization", "Bearer tok-bob")],
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = call(None, flunders("default"), vec![("authorization", "Bearer wrong")]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = call(
        None,
        flunders("default"),
        vec![("x-remote-user", "alice"), ("x-remote-group", "devs")],
    )
    .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "headers are not trusted without a front-proxy CA"
    );
    let dev = tk::client_cert(&client_ca, "carol", Some("devs")).expect("cert");
    let (code, _, _) = call(Some(dev), flunders("default"), vec![]).await;
    assert_allowed(code, "client certificate in group devs");
    let proxy = tk::client_cert(&front_ca, "front-proxy-client", None).expect("cert");
    let as_erin = vec![("x-remote-user", "erin"), ("x-remote-group", "devs")];
    let (code, _, _) = call(Some(proxy.clone()), flunders("default"), as_erin).await;
    assert_allowed(code, "front-proxy user erin in group devs");
    let (code, _, _) = call(Some(proxy), flunders("default"), vec![("x-remote-user", "erin")]).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "erin without the devs group");

    // SIGTERM: clean exit.
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "{exit:?}");
}
