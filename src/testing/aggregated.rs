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
        }
    }
}

/// A running aggregated server.
pub struct AggregatedServer {
    process: Process,
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

        let mut cmd = Command::new(opts.binary);
        cmd.arg(format!("--bind-address={}", cp.inner_ip()))
            .arg(format!("--secure-port={}", opts.port))
            .arg("--log-format=plain")
            .arg(format!("--config={}", dir.join("config.yaml").display()))
            .arg(format!("--tls-cert-file={}", dir.join("tls.crt").display()))
            .arg(format!("--tls-private-key-file={}", dir.join("tls.key").display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .args(&opts.extra_args);
        let process = cp.spawn_in_netns(cmd)?;

        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem);
        let mut objects = cp.service_for_netns(ns, svc, opts.port);
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
            process,
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

    /// The server's log file.
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// The last `lines` of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(self.process.log(), lines)
    }

    /// Fails when the server has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.process.check_running()
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
        self.process.kill();
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
/// (`binary`) serves them in `wardle.example.com` through the aggregation layer. Panics on
/// failure.
pub async fn wardle_beside_crds(cp: &ControlPlane, binary: &Path, crd_group: &str) -> AggregatedServer {
    let timeout = Duration::from_secs(90);
    let kubectl = |args: Vec<String>, stdin: Option<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = cp.run_kubectl(&args, stdin.as_deref(), timeout).await;
        assert!(ok, "kubectl {args:?}: {err}");
    };
    let crds = crds_from_config(crate::apiserver::STANDALONE_CONFIG, crd_group).to_string();
    kubectl(vec!["apply".into(), "-f".into(), "-".into()], Some(crds)).await;
    let server = AggregatedServer::start(cp, ServeOptions::wardle(binary))
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
