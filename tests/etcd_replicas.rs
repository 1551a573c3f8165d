//! The bundled server with etcd storage and three replicas on a real control plane, served
//! through kube-apiserver's aggregation layer (issue 12).
//!
//! The operator runs from the chart and renders the server Deployment from
//! `spec.server.storage.etcd` (endpoints, client-certificate Secret) with `replicas: 3`; the
//! stand-in kubelet runs its three pods, each in a network namespace of its own (they all
//! listen on the server port), against one etcd serving https with client-certificate
//! authentication on a host address the pods reach. kube-apiserver's aggregator picks one of
//! the three ready endpoints per request, so every read below may land on any replica: the
//! test checks that writes are read back at once (consistent reads), that a watch sees
//! changes in order, that a stale resourceVersion conflicts, that a crashed replica costs no
//! acknowledged object, and that the PodDisruptionBudget is there.
//!
//! Without `KUBEBUILDER_ASSETS` the test prints why it is skipped and passes.

use eao::pki::{self, LeafSpec};
use eao::testing::certs;
use eao::testing::controlplane::{etcd_command_on, kubectl_path, ControlPlane, EtcdServerTls};
use eao::testing::etcd::etcd_binary;
use eao::testing::harness::{pod_logs, Harness, OPERATOR, OP_NS};
use eao::testing::netns::Process;
use eao::testing::pod::RunningPod;
use eao::testing::tools::{helm_path, pod_options, OPERATOR_BINARY};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NS: &str = "etcd-replicas";
const EAS: &str = "widgets";
const GROUP: &str = "widgets.example.com";
const TIMEOUT: Duration = Duration::from_secs(180);
/// Objects created (and read back) before the crash.
const OBJECTS: usize = 8;
/// Reads of each object right after its create: with three endpoints picked at random, a
/// replica that served a stale read would be hit with overwhelming likelihood.
const READS_AFTER_CREATE: usize = 12;

/// An etcd member serving https with client-certificate authentication on `ip` (a host
/// address the pods' namespaces reach), and the client Secret's files.
struct TlsEtcd {
    process: Process,
    url: String,
    /// ca.crt, tls.crt, tls.key for the Secret.
    files: [(String, PathBuf); 3],
}

fn start_etcd(cp: &ControlPlane, binary: &Path) -> TlsEtcd {
    let ip = cp.addr().ip();
    let dir = cp.dir().join("replicas-etcd");
    std::fs::create_dir_all(&dir).expect("etcd dir");
    let ca = certs::ca("etcd-ca").expect("etcd CA");
    let serving = pki::issue_leaf(
        &ca,
        &LeafSpec {
            common_name: "etcd".into(),
            ip_addresses: vec![ip],
            server_auth: true,
            ..Default::default()
        },
        Duration::from_secs(3600),
        certs::now(),
    )
    .expect("etcd serving certificate");
    let client = certs::client_cert(&ca, "extension-apiserver", None).expect("etcd client certificate");
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write certificate");
        p
    };
    let ca_file = write("ca.crt", &ca.cert_pem);
    let (cert, key) = (
        write("server.crt", &serving.cert_pem),
        write("server.key", &serving.key_pem),
    );
    let files = [
        ("ca.crt".to_string(), ca_file.clone()),
        ("tls.crt".to_string(), write("client.crt", &client.cert_pem)),
        ("tls.key".to_string(), write("client.key", &client.key_pem)),
    ];
    let free = |ip: IpAddr| {
        TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let IpAddr::V4(ip4) = ip else {
        panic!("the control plane's address {ip} is not IPv4")
    };
    let tls = EtcdServerTls {
        cert,
        key,
        client_ca: ca_file.clone(),
    };
    let (cmd, client_url) = etcd_command_on(
        binary,
        &dir.join("data"),
        ip4,
        (free(ip), free(IpAddr::from([127, 0, 0, 1]))),
        Some(&tls),
    );
    let process = Process::spawn("etcd", cmd, &dir.join("etcd.log")).expect("start etcd");
    TlsEtcd {
        process,
        url: client_url,
        files,
    }
}

/// The test's view of the cluster and the pods it runs, for commands and diagnostics.
struct Cluster {
    cp: &'static ControlPlane,
    operator: Option<RunningPod>,
    server: Option<RunningPod>,
    etcd: Option<TlsEtcd>,
}

impl Harness for Cluster {
    fn control_plane(&self) -> &ControlPlane {
        self.cp
    }

    fn patience(&self) -> Duration {
        TIMEOUT
    }

    fn diagnostics(&self) -> String {
        let mut d = pod_logs(&[
            ("operator", self.operator.as_ref(), 30),
            ("server", self.server.as_ref(), 30),
        ]);
        if let Some(e) = &self.etcd {
            d.push_str(&format!("etcd {}:\n{}\n", e.url, e.process.log_tail(20)));
        }
        d.push_str(&self.shown(&["get", "deploy,rs,pods,endpointslices,pdb", "-n", NS, "-o", "wide"]));
        d.push_str(&self.shown(&["get", "eas", EAS, "-n", NS, "-o", "yaml"]));
        d.push_str(&self.shown(&["get", "apiservice", &format!("v1.{GROUP}"), "-o", "yaml"]));
        d
    }
}

fn widget(name: &str, size: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "Widget",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"size": size},
    }))
    .expect("a Widget")
}

fn size(o: &DynamicObject) -> Option<i64> {
    o.data["spec"]["size"].as_i64()
}

/// Creates a Widget and reads it back [`READS_AFTER_CREATE`] times through the aggregator:
/// each read, whichever replica serves it, sees the acknowledged write.
async fn create_and_read_back(api: &Api<DynamicObject>, name: &str, size_value: i64) -> Result<String, kube::Error> {
    let created = api.create(&PostParams::default(), &widget(name, size_value)).await?;
    let rv = created.metadata.resource_version.clone().unwrap_or_default();
    for i in 0..READS_AFTER_CREATE {
        let got = api.get(name).await?;
        assert_eq!(
            (
                got.metadata.uid.as_deref(),
                got.metadata.resource_version.as_deref(),
                size(&got)
            ),
            (created.metadata.uid.as_deref(), Some(rv.as_str()), Some(size_value)),
            "read {i} of {name} right after its create"
        );
    }
    Ok(rv)
}

/// Successful Widget GETs each replica counted (its `/metrics`, read directly at the pod IP
/// with the admin's client certificate; the replicas' serving certificate names the Service,
/// not the pod IP, so it is not verified here).
async fn widget_gets_per_replica(cp: &ControlPlane, ips: &BTreeSet<String>) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for ip in ips {
        let kc = kube::config::Kubeconfig::read_from(cp.kubeconfig()).expect("admin kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("admin config");
        config.cluster_url = format!("https://{ip}:{}", eao::serverconfig::SERVER_PORT)
            .parse()
            .expect("pod URL");
        config.accept_invalid_certs = true;
        config.root_cert = None;
        let client = kube::Client::try_from(config).expect("client for one replica");
        let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
        let text = client.request_text(req).await.expect("the replica's /metrics");
        let gets: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{")
                    && l.contains("verb=\"get\"")
                    && l.contains("resource=\"widgets\"")
                    && l.contains("code=\"200\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        counts.insert(ip.clone(), gets);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_storage_three_replicas_serve_through_the_aggregator() {
    let Some(cp) = ControlPlane::shared("etcd_storage_three_replicas_serve_through_the_aggregator").await else {
        return;
    };
    let etcd_bin = etcd_binary().expect("KUBEBUILDER_ASSETS holds etcd");
    assert!(
        helm_path().is_file(),
        "helm not found at {}: run `make tools`",
        helm_path().display()
    );
    assert!(kubectl_path().is_file(), "kubectl not found: run `make tools`");
    let started = Instant::now();
    let mut c = Cluster {
        cp,
        operator: None,
        server: None,
        etcd: Some(start_etcd(cp, &etcd_bin)),
    };
    let etcd_url = c.etcd.as_ref().map(|e| e.url.clone()).unwrap_or_default();
    let etcd_addr = etcd_url.trim_start_matches("https://").to_string();
    c.eventually("etcd accepts connections", || TcpStream::connect(&etcd_addr).ok())
        .await;

    // 1. The namespace and the client Secret, the operator from the chart.
    c.kubectl_ok(&["create", "namespace", NS]);
    let mut secret = vec!["create", "secret", "generic", "etcd-client", "-n", NS];
    let from_files: Vec<String> = c
        .etcd
        .as_ref()
        .map(|e| {
            e.files
                .iter()
                .map(|(k, p)| format!("--from-file={k}={}", p.display()))
                .collect()
        })
        .unwrap_or_default();
    secret.extend(from_files.iter().map(String::as_str));
    c.kubectl_ok(&secret);
    c.install_chart(&[]);
    let client = cp.client().await.expect("admin client");
    let op_deployment = Api::<Deployment>::namespaced(client.clone(), OP_NS)
        .get(OPERATOR)
        .await
        .expect("the chart made the operator Deployment");
    let op_binary = env!("CARGO_BIN_EXE_extension-apiserver-operator");
    c.operator = Some(
        RunningPod::start(cp, &op_deployment, pod_options(op_binary, &[], OPERATOR_BINARY))
            .expect("operator pod runner"),
    );

    // 2. Three replicas on etcd, each pod in a network namespace of its own.
    let eas = json!({
        "apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
        "metadata": {"name": EAS, "namespace": NS},
        "spec": {
            "group": GROUP, "versions": [{"name": "v1"}], "replicas": 3,
            "server": {
                "logFormat": "plain",
                "storage": {"etcd": {"endpoints": [etcd_url], "secretRef": {"name": "etcd-client"}}},
                "resources": [{"kind": "Widget", "plural": "widgets", "scope": "Namespaced",
                    "versions": [{"name": "v1", "openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}}}}]}],
            },
        },
    });
    c.kubectl_ok_in(&["apply", "-f", "-"], Some(&eas.to_string()));
    let server_deployment = c
        .eventually("the operator creates the server Deployment", || {
            let out = c.kubectl(&["get", "deployment", EAS, "-n", NS, "-o", "json"]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Deployment>(&out.stdout).ok())
                .flatten()
        })
        .await;
    let args = server_deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    assert!(args.contains(&format!("--etcd-servers={etcd_url}")), "{args:?}");
    let server_binary = env!("CARGO_BIN_EXE_extension-apiserver");
    c.server = Some(
        RunningPod::start_own_network(
            cp,
            &server_deployment,
            pod_options(server_binary, &["EAS_KUBECONFIG"], eao::serverconfig::SERVER_BINARY),
        )
        .expect("server pod runner"),
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("eas/{EAS}"),
        "-n",
        NS,
        "--timeout=180s",
    ]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Available",
        &format!("apiservice/v1.{GROUP}"),
        "--timeout=180s",
    ]);
    // Three ready endpoints at three distinct addresses: the aggregator balances over them.
    let endpoint_ips = |c: &Cluster| -> BTreeSet<String> {
        let v = c.json(&[
            "get",
            "endpointslices",
            "-n",
            NS,
            "-l",
            &format!("kubernetes.io/service-name={EAS}"),
        ]);
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
            .collect()
    };
    c.eventually("three ready endpoints", || (endpoint_ips(&c).len() == 3).then_some(()))
        .await;

    // 3. Writes and reads through the aggregator.
    let ar = ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let mut acknowledged: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..OBJECTS {
        let name = format!("w-{i}");
        let size_value = i as i64 + 1;
        if let Err(e) = create_and_read_back(&api, &name, size_value).await {
            panic!("create and read back {name}: {e}\n{}", c.diagnostics());
        }
        acknowledged.insert(name, size_value);
    }
    // The aggregator spread those reads over the three replicas: each served some of them.
    let per_replica = widget_gets_per_replica(cp, &endpoint_ips(&c)).await;
    assert!(
        per_replica.len() == 3 && per_replica.values().all(|n| *n > 0.0),
        "Widget GETs by replica: {per_replica:?}"
    );
    let listed = api.list(&ListParams::default()).await.expect("list widgets");
    let names: BTreeSet<String> = listed.items.iter().filter_map(|o| o.metadata.name.clone()).collect();
    assert_eq!(names, acknowledged.keys().cloned().collect::<BTreeSet<_>>());
    // kubectl sees the same list through discovery and the aggregator.
    let out = c.kubectl_ok(&["get", "widgets", "-n", NS, "-o", "name"]);
    assert_eq!(out.lines().count(), OBJECTS, "{out}");

    // A watch from the list's resourceVersion sees a create, an update and a delete made after
    // it was opened, in that order.
    let list_rv = listed.metadata.resource_version.clone().expect("list resourceVersion");
    let wp = WatchParams::default().timeout(120);
    let mut watch = api.watch(&wp, &list_rv).await.expect("open watch").boxed();
    let created = api
        .create(&PostParams::default(), &widget("watched", 1))
        .await
        .expect("create watched");
    let mut changed = created.clone();
    changed.data["spec"]["size"] = json!(2);
    api.replace("watched", &PostParams::default(), &changed)
        .await
        .expect("update watched");
    api.delete("watched", &Default::default())
        .await
        .expect("delete watched");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(60), watch.try_next())
            .await
            .unwrap_or_else(|_| panic!("watch: no event within 60s after {seen:?}\n{}", c.diagnostics()))
            .expect("watch stream")
            .expect("watch stream open");
        match event {
            WatchEvent::Added(o) if o.metadata.name.as_deref() == Some("watched") => seen.push(("ADDED", size(&o))),
            WatchEvent::Modified(o) if o.metadata.name.as_deref() == Some("watched") => {
                seen.push(("MODIFIED", size(&o)))
            }
            WatchEvent::Deleted(o) if o.metadata.name.as_deref() == Some("watched") => seen.push(("DELETED", size(&o))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    assert_eq!(seen, [("ADDED", Some(1)), ("MODIFIED", Some(2)), ("DELETED", Some(2))]);
    drop(watch);

    // An update carrying a resourceVersion that is no longer current conflicts.
    let first = api.get("w-0").await.expect("get w-0");
    let mut bigger = first.clone();
    bigger.data["spec"]["size"] = json!(10);
    api.replace("w-0", &PostParams::default(), &bigger)
        .await
        .expect("update w-0");
    acknowledged.insert("w-0".into(), 10);
    let mut stale = first.clone();
    stale.data["spec"]["size"] = json!(20);
    match api.replace("w-0", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a stale resourceVersion must conflict, got {other:?}"),
    }

    // 4. One replica crashes (SIGKILL); the runner restarts it. Requests keep being served:
    //    creates go on from the kill until the replica is back, each retried until
    //    acknowledged (the aggregator may pick the dead endpoint until its EndpointSlice says
    //    NotReady), and no acknowledged object may be lost.
    let pods = c.json(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        &format!("app.kubernetes.io/instance={EAS}"),
    ]);
    let victim = pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no server pod\n{}", c.diagnostics()))
        .to_string();
    let runner = c.server.as_ref().expect("server runner");
    runner.kill_container(&victim);
    let restarted = |c: &Cluster| -> bool {
        let v = c.json(&["get", "pod", &victim, "-n", NS]);
        let status = &v["status"]["containerStatuses"][0];
        status["restartCount"] == 1 && status["ready"] == true
    };
    let (mut failed_attempts, mut created_after_kill, mut saw_exit) = (0, 0, false);
    let window = Instant::now();
    loop {
        let name = format!("after-crash-{created_after_kill}");
        let size_value = 100 + created_after_kill as i64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match create_and_read_back(&api, &name, size_value).await {
                Ok(_) => break,
                // A create whose answer was lost may have been applied: then it exists.
                Err(kube::Error::Api(s)) if s.code == 409 && api.get_opt(&name).await.ok().flatten().is_some() => break,
                Err(e) => {
                    failed_attempts += 1;
                    assert!(
                        Instant::now() < deadline,
                        "{name} not created within 60s after the crash: {e}\n{}",
                        c.diagnostics()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        acknowledged.insert(name, size_value);
        created_after_kill += 1;
        let runner = c.server.as_ref().expect("server runner");
        saw_exit |= runner.pods().iter().any(|p| p.name == victim && p.restarts >= 1);
        if saw_exit && created_after_kill >= OBJECTS && restarted(&c) {
            break;
        }
        assert!(
            window.elapsed() < TIMEOUT,
            "the crashed replica is not back within {TIMEOUT:?} (exit seen: {saw_exit})\n{}",
            c.diagnostics()
        );
    }
    c.eventually("three ready endpoints again", || {
        (endpoint_ips(&c).len() == 3).then_some(())
    })
    .await;
    // Every acknowledged object, with its last acknowledged content, on every read.
    for round in 0..3 {
        let listed = api.list(&ListParams::default()).await.expect("list after the crash");
        let got: BTreeMap<String, i64> = listed
            .items
            .iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, size(o)?)))
            .collect();
        assert_eq!(got, acknowledged, "list round {round} after the crash");
    }
    for (name, size_value) in &acknowledged {
        let got = api.get(name).await.expect("get after the crash");
        assert_eq!(size(&got), Some(*size_value), "{name}");
    }

    // 5. The PodDisruptionBudget of several replicas.
    let pdb = c.json(&["get", "pdb", EAS, "-n", NS]);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    assert!(pdb["spec"]["minAvailable"].is_null(), "{pdb}");
    let selector = pdb["spec"]["selector"]["matchLabels"].clone();
    let template_labels = server_deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in selector.as_object().into_iter().flatten() {
        assert_eq!(template_labels.get(k).map(String::as_str), v.as_str(), "{pdb}");
    }
    assert_eq!(pdb["status"]["expectedPods"].as_i64().unwrap_or(3), 3, "{pdb}");

    eprintln!(
        "etcd with three replicas passed in {:.1}s ({created_after_kill} creates while a replica \
         crashed and restarted, {failed_attempts} attempt(s) failed and were retried)",
        started.elapsed().as_secs_f64()
    );
    // The ExtensionApiServer goes while the operator runs (its finalizer); the pods, the
    // operator and etcd stop on drop, the shared control plane at exit.
    c.kubectl_ok(&["delete", "eas", EAS, "-n", NS, "--timeout=120s"]);
    c.server = None;
}
