//! What kubelet and the EndpointSlice controller report, for [`super::pod`]: a Node with a
//! heartbeat, the binding of a Pod to it, the Pod's status, readiness probes, and the
//! EndpointSlices of the Services that select running pods.

use super::netns::Error;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod, Probe, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Node every pod of the runner is bound to.
pub const NODE_NAME: &str = "eao-test-node";
/// Field manager of everything the runner writes.
pub const MANAGER: &str = "eao-test-kubelet";
/// Label on the EndpointSlices the runner publishes (and deletes when it stops).
pub const SLICE_LABEL: &str = "eao.test/pod-runner";

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// Creates the Node when missing and posts its heartbeat: `Ready=True` in its status and a
/// renewed Lease in `kube-node-lease`. Without them kube-controller-manager's node lifecycle
/// controller marks the node unreachable after its grace period (about 50 s), sets every pod
/// on it NotReady, and the pod GC deletes pods bound to nodes that do not exist at all.
pub async fn heartbeat(client: &Client, host_ip: IpAddr) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(NODE_NAME).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}},
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let t = now();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "eao test pod runner", "lastHeartbeatTime": t, "lastTransitionTime": t}],
        "addresses": [{"type": "InternalIP", "address": host_ip.to_string()},
                      {"type": "Hostname", "address": NODE_NAME}],
        "nodeInfo": {"kubeletVersion": "v1.36.2-eao-test", "architecture": "amd64", "operatingSystem": "linux",
                     "bootID": "", "containerRuntimeVersion": "eao-test://0", "kernelVersion": "", "kubeProxyVersion": "",
                     "machineID": "", "osImage": "", "systemUUID": ""},
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let micro = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40, "renewTime": micro}});
    leases
        .patch(NODE_NAME, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease))
        .await?;
    Ok(())
}

/// Binds a pending Pod to [`NODE_NAME`], as the scheduler would (`pods/binding`).
pub async fn bind(pods: &Api<Pod>, pod: &str) -> Result<(), Error> {
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}});
    let _: Value = pods
        .create_subresource("binding", pod, &PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// What the runner knows about one container, for its status.
pub struct ContainerReport<'a> {
    /// The container.
    pub container: &'a Container,
    /// Whether its process runs.
    pub running: bool,
    /// Whether its readiness probe passed.
    pub ready: bool,
    /// How often it was restarted.
    pub restarts: u32,
    /// When the current process started (RFC 3339).
    pub started_at: String,
    /// Exit status of the previous process, if it exited.
    pub last_exit: Option<i32>,
}

/// Patches the Pod's status as kubelet reports it: phase Running, IPs, the PodScheduled,
/// Initialized, PodReadyToStartContainers, ContainersReady and Ready conditions, and the
/// container status. The ReplicaSet and Deployment controllers compute `readyReplicas`,
/// `availableReplicas` and the Deployment's `Available` condition from exactly this.
pub async fn report(
    pods: &Api<Pod>,
    pod: &Pod,
    pod_ip: IpAddr,
    host_ip: IpAddr,
    c: &ContainerReport<'_>,
) -> Result<(), Error> {
    let name = pod.metadata.name.as_deref().ok_or("pod without name")?;
    let ready = c.running && c.ready;
    let flag = |b: bool| if b { "True" } else { "False" };
    // Keep each condition's transition time while its status is unchanged.
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let t = now();
    let cond = |type_: &str, status: &str| {
        let since = previous
            .iter()
            .find(|p| p.type_ == type_ && p.status == status)
            .and_then(|p| p.last_transition_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(|| t.clone());
        json!({"type": type_, "status": status, "lastTransitionTime": since})
    };
    let state = if c.running {
        json!({"running": {"startedAt": c.started_at}})
    } else {
        json!({"waiting": {"reason": "CrashLoopBackOff"}})
    };
    let last_state = match c.last_exit {
        Some(code) => json!({"terminated": {"exitCode": code, "reason": "Error"}}),
        None => json!({}),
    };
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": host_ip.to_string(), "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": pod_ip.to_string(), "podIPs": [{"ip": pod_ip.to_string()}],
        "startTime": pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_else(|| t.clone()),
        "conditions": [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"),
                       cond("PodScheduled", "True"), cond("ContainersReady", flag(ready)), cond("Ready", flag(ready))],
        "containerStatuses": [{
            "name": c.container.name, "image": c.container.image.clone().unwrap_or_default(), "imageID": "",
            "containerID": format!("eao-test://{name}"), "ready": ready, "started": c.running,
            "restartCount": c.restarts, "state": state, "lastState": last_state,
        }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// The container port a probe or Service `targetPort` names (by name or number).
pub fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Accepts any server certificate: kubelet's HTTPS probes do not verify either.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs an `httpGet` probe against `ip` once: success is a status from 200 to 399, as in
/// kubelet. `Err` says why it failed (for diagnostics). Other probe kinds always succeed.
pub async fn probe_once(container: &Container, probe: &Probe, ip: IpAddr) -> Result<(), String> {
    let Some(get) = &probe.http_get else {
        return Ok(());
    };
    let port = resolve_port(container, &get.port).ok_or_else(|| format!("probe port {:?} not found", get.port))?;
    let addr = SocketAddr::new(ip, port);
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.36\r\nConnection: close\r\n\r\n");
    let https = get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        if https {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::IpAddress(ip.into());
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            // A server may close without close_notify; what was read is enough for the status.
            let _ = tls.read_to_end(&mut response).await;
        } else {
            tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            let _ = tcp.read_to_end(&mut response).await;
        }
        Ok::<Vec<u8>, String>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr}{path}: timeout after {timeout:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: no HTTP status in {:?}", text.lines().next()))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("{addr}{path}: HTTP {code}"))
    }
}

/// One running pod as an EndpointSlice endpoint.
pub struct Endpoint<'a> {
    /// The Pod.
    pub pod: &'a Pod,
    /// Its container.
    pub container: &'a Container,
    /// Its address.
    pub ip: IpAddr,
    /// Whether it is Ready.
    pub ready: bool,
}

/// The EndpointSlices the EndpointSlice controller would publish for the Services of
/// `namespace` that select any of `endpoints` (named `<service>-<runner>-<n>`, one per set of
/// ports), as server-side-apply bodies.
pub async fn desired_slices(
    client: &Client,
    namespace: &str,
    runner: &str,
    endpoints: &[Endpoint<'_>],
) -> Result<Vec<Value>, Error> {
    let services = Api::<Service>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await?;
    let mut slices = Vec::new();
    for svc in services.items {
        let (Some(name), Some(spec)) = (svc.metadata.name.clone(), svc.spec.as_ref()) else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let selected: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| {
                let labels = e.pod.metadata.labels.clone().unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        // Pods of different templates may resolve a named targetPort differently; like the
        // EndpointSlice controller, one slice per distinct set of ports.
        let mut by_ports: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for e in selected {
            let ports: Vec<Value> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                    let port = resolve_port(e.container, &target)?;
                    Some(json!({"name": p.name.clone().unwrap_or_default(), "port": port,
                                "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())}))
                })
                .collect();
            let endpoint = json!({"addresses": [e.ip.to_string()], "nodeName": NODE_NAME,
               "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
               "targetRef": {"kind": "Pod", "namespace": namespace, "name": e.pod.metadata.name,
                             "uid": e.pod.metadata.uid}});
            by_ports
                .entry(Value::Array(ports.clone()).to_string())
                .or_insert_with(|| (ports, Vec::new()))
                .1
                .push(endpoint);
        }
        for (i, (ports, eps)) in by_ports.into_values().enumerate() {
            slices.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-{runner}-{i}"), "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": name, SLICE_LABEL: runner,
                                        "endpointslice.kubernetes.io/managed-by": MANAGER}},
                "addressType": "IPv4", "endpoints": eps, "ports": ports}));
        }
    }
    Ok(slices)
}
