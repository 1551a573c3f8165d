//! A bundled server served through the real aggregation layer of a test [`ControlPlane`]: the
//! identity the operator gives its servers (a ServiceAccount with exactly the RBAC the operator
//! grants, a TokenRequest token), a serving certificate for `<service>.<namespace>.svc`, the
//! process inside the control plane's network namespace, a selector-less Service with a
//! hand-made EndpointSlice (no kubelet publishes one), and one APIService per version that
//! trusts the server's CA (never `insecureSkipTLSVerify`).
//!
//! Dropping an [`AggregatedServer`] deletes its APIServices first: an unavailable APIService left
//! behind makes the namespace controller's discovery fail for every later namespace deletion.

use super::controlplane::{ControlPlane, Credentials};
use super::netns::{tail, Error, Process};
use crate::crd::KeyAlgorithm;
use crate::operator::rbac::{bundled_server_rules, AUTH_DELEGATOR, AUTH_READER};
use crate::pki::{self, CertKeyPair};
use crate::serverconfig::ServerConfig;
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the APIServices may take to turn Available.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What to serve and where.
pub struct ServeOptions<'a> {
    /// The `extension-apiserver` binary (`env!("CARGO_BIN_EXE_extension-apiserver")` in tests).
    pub binary: &'a Path,
    /// The namespace of the Service and ServiceAccount (created when missing).
    pub namespace: &'a str,
    /// The Service name, also the prefix of the cluster-scoped RBAC names.
    pub service: &'a str,
    /// The server configuration (group, versions, resources).
    pub config_yaml: &'a str,
    /// The port inside the network namespace; distinct per server sharing a control plane.
    pub port: u16,
    /// Extra flags for the server.
    pub extra_args: Vec<String>,
    /// Where the server keeps its objects.
    pub storage: Storage,
    /// How many server processes serve the Service, on ports `port`, `port + 1`, ... (one
    /// EndpointSlice each). More than one needs [`Storage::Etcd`]: replicas on embedded stores
    /// would each have their own objects.
    pub replicas: u16,
}

/// Where a bundled server under test keeps its objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// The embedded store in the server's data directory.
    #[default]
    Embedded,
    /// The control plane's own etcd ([`ControlPlane::etcd_url`]) under the prefix
    /// `/eas-test/<namespace>/<service>`, which all replicas of one server share.
    ///
    /// The control plane's etcd rather than one more etcd process: it is already running and
    /// reachable from the network namespace, and a distinct prefix keeps the data apart from
    /// kube-apiserver's `/registry` and from other servers'. Revisions are shared with
    /// kube-apiserver's writes, and a run that spans kube-apiserver's compaction (every five
    /// minutes) meets it, as on a cluster's etcd.
    Etcd,
}

impl Storage {
    /// Both backends, embedded first: the suites that run once per backend iterate this.
    pub const ALL: [Storage; 2] = [Storage::Embedded, Storage::Etcd];

    /// A short name for test output and resource names.
    pub fn name(self) -> &'static str {
        match self {
            Storage::Embedded => "embedded",
            Storage::Etcd => "etcd",
        }
    }
}

impl<'a> ServeOptions<'a> {
    /// The wardle example (`STANDALONE_CONFIG`) as `wardle-system/wardle-api` on port 8443.
    pub fn wardle(binary: &'a Path) -> ServeOptions<'a> {
        ServeOptions {
            binary,
            namespace: "wardle-system",
            service: "wardle-api",
            config_yaml: crate::apiserver::STANDALONE_CONFIG,
            port: 8443,
            extra_args: vec![],
            storage: Storage::Embedded,
            replicas: 1,
        }
    }
}

/// A running aggregated server.
pub struct AggregatedServer {
    /// One per replica, in port order.
    processes: Vec<Process>,
    /// `https://<inner ip>:<port>` of each replica.
    replica_urls: Vec<String>,
    /// The name the serving certificate is for (`<service>.<namespace>.svc`).
    server_name: String,
    api_services: Vec<String>,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// The CA the APIServices trust.
    pub ca: CertKeyPair,
    /// The server's files: certificates, config, kubeconfig, data directory.
    pub dir: PathBuf,
}

fn kubectl_with_stdin(mut cmd: Command, stdin: &str) -> Result<(), Error> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    child.stdin.take().ok_or("kubectl stdin")?.write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("kubectl failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

impl AggregatedServer {
    /// Starts the server and waits until every APIService of its config is Available.
    pub async fn start(cp: &ControlPlane, opts: ServeOptions<'_>) -> Result<AggregatedServer, Error> {
        let config = ServerConfig::from_yaml(opts.config_yaml)?;
        let (ns, svc) = (opts.namespace, opts.service);
        if opts.replicas == 0 || (opts.replicas > 1 && opts.storage != Storage::Etcd) {
            return Err(format!("{} replicas on {:?} storage", opts.replicas, opts.storage).into());
        }
        let sa = format!("{svc}-server");
        let client = cp.client().await?;

        // Identity: exactly the RBAC the operator grants the servers it deploys.
        let subject = json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]);
        let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": format!("{svc}-auth-delegator")},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AUTH_DELEGATOR},
             "subjects": subject},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": format!("{svc}-auth-reader"), "namespace": "kube-system"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AUTH_READER},
             "subjects": subject},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": format!("{svc}-server")}, "rules": bundled_server_rules()},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": format!("{svc}-server")},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{svc}-server")},
             "subjects": subject},
        ]});
        let mut apply = cp.kubectl();
        apply.args(["apply", "--server-side", "--field-manager=eao-test", "-f", "-"]);
        kubectl_with_stdin(apply, &rbac.to_string())?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let token = sas
            .create_token_request(
                &sa,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![],
                        expiration_seconds: Some(24 * 3600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?
            .status
            .ok_or("TokenRequest without status")?
            .token;

        // Files: serving certificate for the Service name, config, kubeconfig.
        let dir = cp.dir().join(format!("server-{ns}-{svc}"));
        std::fs::create_dir_all(&dir)?;
        let now = jiff::Timestamp::now().as_second();
        let ca = pki::generate_ca(
            &format!("{svc}-ca"),
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(24 * 3600),
            now,
        )?;
        let serving = pki::issue_serving(
            &ca,
            &pki::service_dns_names(svc, ns),
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(24 * 3600),
            now,
        )?;
        std::fs::write(dir.join("tls.crt"), &serving.cert_pem)?;
        std::fs::write(dir.join("tls.key"), &serving.key_pem)?;
        std::fs::write(dir.join("config.yaml"), opts.config_yaml)?;
        let kubeconfig = dir.join("kubeconfig");
        cp.write_kubeconfig(&kubeconfig, &Credentials::Token(token))?;

        let mut processes = Vec::new();
        let mut replica_urls = Vec::new();
        for i in 0..opts.replicas {
            let port = opts.port + i;
            let mut cmd = Command::new(opts.binary);
            cmd.arg(format!("--bind-address={}", cp.inner_ip()))
                .arg(format!("--secure-port={port}"))
                .arg("--log-format=plain")
                .arg(format!("--config={}", dir.join("config.yaml").display()))
                .arg(format!("--tls-cert-file={}", dir.join("tls.crt").display()))
                .arg(format!("--tls-private-key-file={}", dir.join("tls.key").display()))
                .arg(format!("--kubeconfig={}", kubeconfig.display()));
            match opts.storage {
                Storage::Embedded => cmd.arg(format!("--data-dir={}", dir.join("data").display())),
                Storage::Etcd => cmd
                    .arg(format!("--etcd-servers={}", cp.etcd_url()))
                    .arg(format!("--etcd-prefix=/eas-test/{ns}/{svc}")),
            };
            cmd.args(&opts.extra_args);
            processes.push(cp.spawn_in_netns(cmd)?);
            replica_urls.push(format!("https://{}:{port}", cp.inner_ip()));
        }

        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem);
        let mut objects = cp.service_for_netns(ns, svc, opts.port);
        let items = objects["items"]
            .as_array_mut()
            .ok_or("service_for_netns returns a List")?;
        let slice = items
            .last()
            .cloned()
            .ok_or("service_for_netns returns an EndpointSlice")?;
        for i in 1..opts.replicas {
            let mut more = slice.clone();
            more["metadata"]["name"] = json!(format!("{svc}-netns-{i}"));
            more["ports"][0]["port"] = json!(opts.port + i);
            items.push(more);
        }
        let mut api_services = Vec::new();
        // Versions are listed highest priority first; the APIServices say the same.
        for (i, v) in config.versions.iter().enumerate() {
            let name = format!("{v}.{}", config.group);
            let version_priority = 100 - i as i32;
            objects["items"]
                .as_array_mut()
                .ok_or("service_for_netns returns a List")?
                .push(
                    json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": name},
                 "spec": {"group": config.group, "version": v,
                          "groupPriorityMinimum": 1000, "versionPriority": version_priority,
                          "service": {"name": svc, "namespace": ns, "port": 443}, "caBundle": ca_bundle}}),
                );
            api_services.push(name);
        }
        let server = AggregatedServer {
            processes,
            replica_urls,
            server_name: format!("{svc}.{ns}.svc"),
            api_services,
            kubeconfig: cp.kubeconfig().to_path_buf(),
            kubectl: super::controlplane::kubectl_path(),
            ca,
            dir,
        };
        let mut apply = cp.kubectl();
        apply.args(["apply", "--server-side", "--field-manager=eao-test", "-f", "-"]);
        kubectl_with_stdin(apply, &objects.to_string())?;
        server.wait_available(&client).await?;
        if opts.storage == Storage::Etcd {
            // The server says which storage it opened; a flag it ignored would leave the suite
            // passing on the embedded store.
            for p in &server.processes {
                let log = std::fs::read_to_string(p.log())?;
                if !log.contains("storage: etcd") {
                    return Err(format!("{} does not report etcd storage:\n{log}", p.log().display()).into());
                }
            }
        }
        Ok(server)
    }

    async fn wait_available(&self, client: &kube::Client) -> Result<(), Error> {
        let api: Api<APIService> = Api::all(client.clone());
        let started = Instant::now();
        for name in &self.api_services {
            loop {
                let conditions = api
                    .get_opt(name)
                    .await?
                    .and_then(|s| s.status)
                    .and_then(|s| s.conditions)
                    .unwrap_or_default();
                if conditions.iter().any(|c| c.type_ == "Available" && c.status == "True") {
                    break;
                }
                if started.elapsed() > AVAILABLE_TIMEOUT {
                    return Err(format!(
                        "APIService {name} not Available within {AVAILABLE_TIMEOUT:?}: {conditions:?}\nserver log:\n{}",
                        self.log_tail(30)
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The log file of the (first) server.
    pub fn log(&self) -> &Path {
        self.processes[0].log()
    }

    /// The last `lines` of each replica's log.
    pub fn log_tail(&self, lines: usize) -> String {
        if let [only] = self.processes.as_slice() {
            return tail(only.log(), lines);
        }
        let logs = self.processes.iter().enumerate();
        logs.map(|(i, p)| format!("replica {i}:\n{}", tail(p.log(), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails when a replica has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.processes.iter_mut().try_for_each(Process::check_running)
    }

    /// An admin client (the control plane's admin certificate, which the server accepts through
    /// the client CA kube-apiserver publishes) for each replica directly, not through the
    /// aggregator: to see what every replica answers.
    pub async fn replica_clients(&self, cp: &ControlPlane) -> Result<Vec<kube::Client>, Error> {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca.cert_pem);
        let mut clients = Vec::new();
        for url in &self.replica_urls {
            let mut kc = kube::config::Kubeconfig::read_from(cp.kubeconfig())?;
            for named in &mut kc.clusters {
                let cluster = named.cluster.get_or_insert_with(Default::default);
                cluster.server = Some(url.clone());
                cluster.certificate_authority_data = Some(ca.clone());
                cluster.tls_server_name = Some(self.server_name.clone());
            }
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            clients.push(kube::Client::try_from(config)?);
        }
        Ok(clients)
    }

    /// The APIService names, one per served version.
    pub fn api_services(&self) -> &[String] {
        &self.api_services
    }
}

impl Drop for AggregatedServer {
    fn drop(&mut self) {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["delete", "apiservice", "--ignore-not-found", "--wait=false"])
            .args(&self.api_services)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
        self.processes.iter_mut().for_each(Process::kill);
    }
}

/// The CRDs for the resources of a bundled server's configuration, in `crd_group`, so that
/// kube-apiserver serves the same resources for differential tests. Short
/// names and categories are left out: they would make `fl` and `kubectl get all` ambiguous.
pub fn crds_from_config(config_yaml: &str, crd_group: &str) -> Value {
    let config: Value = serde_yaml::from_str(config_yaml).unwrap_or_default();
    let items: Vec<Value> = config["resources"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let plural = r["plural"].as_str().unwrap_or_default();
            let kind = r["kind"].as_str().unwrap_or_default();
            let mut names = json!({"kind": kind, "plural": plural});
            if let Some(s) = r.get("singular") {
                names["singular"] = s.clone();
            }
            let versions: Vec<Value> = r["versions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut out = json!({
                        "name": v["name"], "served": true, "storage": i == 0,
                        "schema": {"openAPIV3Schema": v["openAPIV3Schema"]},
                    });
                    if let Some(s) = r.get("subresources") {
                        out["subresources"] = s.clone();
                    }
                    if let Some(c) = v.get("additionalPrinterColumns") {
                        out["additionalPrinterColumns"] = c.clone();
                    }
                    out
                })
                .collect();
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{plural}.{crd_group}")},
                "spec": {"group": crd_group, "names": names,
                         "scope": r.get("scope").and_then(Value::as_str).unwrap_or("Namespaced"),
                         "versions": versions},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The setup the admission tests share: kube-apiserver serves the standalone configuration's
/// resources as CRDs in `crd_group` (waited for until Established), and the bundled server
/// (`binary`, on `storage`) serves them in `wardle.example.com` through the aggregation layer.
/// Panics on failure.
pub async fn wardle_beside_crds(
    cp: &ControlPlane,
    binary: &Path,
    crd_group: &str,
    storage: Storage,
) -> AggregatedServer {
    let timeout = Duration::from_secs(90);
    let kubectl = |args: Vec<String>, stdin: Option<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = cp.run_kubectl(&args, stdin.as_deref(), timeout).await;
        assert!(ok, "kubectl {args:?}: {err}");
    };
    let crds = crds_from_config(crate::apiserver::STANDALONE_CONFIG, crd_group).to_string();
    kubectl(vec!["apply".into(), "-f".into(), "-".into()], Some(crds)).await;
    let server = AggregatedServer::start(
        cp,
        ServeOptions {
            storage,
            ..ServeOptions::wardle(binary)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("aggregated server: {e}"));
    let wait = ["wait", "--for=condition=Established", "--timeout=60s"].map(String::from);
    let names = ["flunders", "fischers"].map(|r| format!("crd/{r}.{crd_group}"));
    kubectl(wait.into_iter().chain(names).collect(), None).await;
    server
}

/// Sends a JSON request (`body`, if any) with `client` and gives the answer's status code,
/// headers and body. Panics when there is no answer within 90 seconds.
pub async fn send_json(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(
            body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        ))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(90), client.send(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (code, headers) = (resp.status().as_u16(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (code, headers, bytes)
}

/// The URL of the Flunders of `ns` in `group` (`v1alpha1`).
pub fn flunders(group: &str, ns: &str) -> String {
    format!("/apis/{group}/v1alpha1/namespaces/{ns}/flunders")
}

/// A `v1alpha1` Flunder of `group` named `name` with `spec`.
pub fn flunder(group: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": format!("{group}/v1alpha1"), "kind": "Flunder", "metadata": {"name": name}, "spec": spec})
}
