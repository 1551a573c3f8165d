//! Certificate rotation against the real bundled server binary, with zero failed requests.
//!
//! Clients open a new TLS connection for every request and verify the server against the
//! *published* bundle (what the APIService `caBundle` would hold), as kube-apiserver does. The
//! test drives the operator's own planning code (`certs::plan`, with the rotation state
//! machine) on a fake clock, writes the serving Secret the way kubelet updates a mounted
//! Secret (an atomic `..data` symlink swap), publishes the bundle the operator would publish,
//! and observes the served leaf with the operator's probe. It runs a serving rotation and then
//! a full CA rotation, and asserts that no request failed.

use eao::crd::KeyAlgorithm;
use eao::operator::reconcile::certs::{self, Force, PlanInputs};
use eao::operator::reconcile::probe;
use eao::operator::reconcile::rotation::{CaState, Phase};
use eao::operator::reconcile::validate::CertSettings;
use eao::pki::{self, CertKeyPair};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const SERVICE_DNS: &str = "wardle.wardle-system.svc";

/// The operator's view: the CA Secret and serving Secret it would have written.
struct Operator {
    ca_secret: Option<Secret>,
    serving_secret: Option<Secret>,
    now: i64,
}

impl Operator {
    /// One reconcile's certificate decisions; returns the new bundle, the leaf and the phase.
    fn reconcile(
        &mut self,
        force: Option<Force>,
        published: bool,
        served_by_active: bool,
    ) -> (String, CertKeyPair, Phase) {
        let names = vec![SERVICE_DNS.to_string(), format!("{SERVICE_DNS}.cluster.local")];
        let s = CertSettings::default();
        let plan = certs::plan(&PlanInputs {
            ca_secret: self.ca_secret.as_ref(),
            serving_secret: self.serving_secret.as_ref(),
            external: None,
            settings: &s,
            dns_names: &names,
            ca_common_name: "rotation-test-ca",
            now: self.now,
            force,
            published,
            published_bundle: None,
            served_by_active,
        })
        .expect("plan");
        let state: &CaState = &plan.certs.ca_state;
        self.ca_secret = Some(Secret {
            metadata: kube::api::ObjectMeta {
                annotations: Some(state.to_annotations()),
                ..Default::default()
            },
            data: Some(state.to_data()),
            ..Default::default()
        });
        let data = BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(plan.certs.serving.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(plan.certs.serving.key_pem.clone().into_bytes()),
            ),
        ]);
        self.serving_secret = Some(Secret {
            data: Some(data),
            ..Default::default()
        });
        (plan.certs.bundle_pem.clone(), plan.certs.serving.clone(), state.phase)
    }

    fn active_ca(&self) -> String {
        CaState::from_secret(self.ca_secret.as_ref())
            .active
            .map(|a| a.cert_pem)
            .unwrap_or_default()
    }
}

/// Writes the serving files as kubelet updates a mounted Secret: a new timestamped directory,
/// then an atomic rename of the `..data` symlink, so both files change together.
fn write_mounted(dir: &Path, pair: &CertKeyPair, generation: u32) {
    let target = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(target.join("tls.key"), &pair.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET over a fresh TLS connection that trusts exactly `bundle`.
async fn get_once(port: u16, bundle: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pki::pem_certs_to_der(bundle).map_err(|e| e.to_string())? {
        roots.add(CertificateDer::from(der)).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(SERVICE_DNS).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/apis/wardle.example.com/v1alpha1")
        .header("host", SERVICE_DNS)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(())
}

async fn wait_served(port: u16, leaf_pem: &str) {
    let want = pki::pem_certs_to_der(leaf_pem).unwrap().remove(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if probe::handshake(&format!("127.0.0.1:{port}"), SERVICE_DNS).await.ok() == Some(want.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not pick up the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running server and clients that keep sending requests against the published bundle.
struct Rig {
    port: u16,
    dir: tempfile::TempDir,
    mounted: PathBuf,
    generation: u32,
    published: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<RwLock<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    _server: tokio::process::Child,
}

impl Rig {
    async fn start(bundle: String, leaf: &CertKeyPair) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mounted: PathBuf = dir.path().join("serving-cert");
        std::fs::create_dir_all(&mounted).unwrap();
        write_mounted(&mounted, leaf, 0);
        let port = free_port();
        let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_extension-apiserver"))
            .args(["--standalone", "--bind-address", "127.0.0.1", "--log-format", "plain"])
            .args(["--secure-port", &port.to_string()])
            .arg("--config")
            .arg(dir.path().join("missing-so-embedded.yaml"))
            .arg("--cert-dir")
            .arg(dir.path().join("unused"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-cert-file")
            .arg(mounted.join("tls.crt"))
            .arg("--tls-private-key-file")
            .arg(mounted.join("tls.key"))
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start extension-apiserver");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match get_once(port, &bundle).await {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "server did not come up: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut rig = Rig {
            port,
            dir,
            mounted,
            generation: 0,
            published: Arc::new(RwLock::new(bundle)),
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failures: Arc::default(),
            clients: Vec::new(),
            _server: server,
        };
        for _ in 0..4 {
            let (stop, ok, failures, published) = (
                rig.stop.clone(),
                rig.ok.clone(),
                rig.failures.clone(),
                rig.published.clone(),
            );
            rig.clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let bundle = published.read().unwrap().clone();
                    match get_once(port, &bundle).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.write().unwrap().push(e),
                    }
                }
            }));
        }
        rig
    }

    /// What the APIService caBundle holds.
    fn publish(&self, bundle: String) {
        *self.published.write().unwrap() = bundle;
    }

    /// What the mounted Secret holds.
    fn mount(&mut self, leaf: &CertKeyPair) {
        self.generation += 1;
        write_mounted(&self.mounted, leaf, self.generation);
    }

    /// Stops the clients; returns (succeeded, failures).
    async fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients.drain(..) {
            c.await.unwrap();
        }
        let _ = self.dir.path();
        let failures = self.failures.read().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn pause() -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_and_ca_rotation_with_zero_failed_requests() {
    let mut op = Operator {
        ca_secret: None,
        serving_secret: None,
        // Real time: the certificates must be valid for the real TLS clients.
        now: jiff::Timestamp::now().as_second(),
    };
    let (bundle, leaf, phase) = op.reconcile(None, false, false);
    assert_eq!(phase, Phase::Stable);
    let mut rig = Rig::start(bundle, &leaf).await;
    let port = rig.port;

    // Serving rotation: a new leaf from the published CA.
    pause().await;
    let (bundle, leaf2, _) = op.reconcile(Some(Force::Serving), true, false);
    rig.publish(bundle);
    rig.mount(&leaf2);
    wait_served(port, &leaf2.cert_pem).await;
    pause().await;

    // CA rotation, step 1: publish both CAs; the leaf stays.
    let (bundle, same_leaf, phase) = op.reconcile(Some(Force::Ca), true, false);
    assert_eq!(phase, Phase::Publishing);
    assert_eq!(same_leaf.cert_pem, leaf2.cert_pem);
    assert_eq!(pki::pem_certs_to_der(&bundle).unwrap().len(), 2);
    rig.publish(bundle);
    pause().await;

    // Step 2: once published and settled, the new CA signs a new leaf; both stay published.
    op.now += 10;
    let (bundle, leaf3, phase) = op.reconcile(None, true, false);
    assert_eq!(phase, Phase::Overlap);
    assert_ne!(leaf3.cert_pem, leaf2.cert_pem);
    rig.publish(bundle);
    rig.mount(&leaf3);
    pause().await;

    // Step 3: the old CA goes only once the replica is observed serving the new leaf.
    op.now += 600;
    let (bundle, _, phase) = op.reconcile(None, true, false);
    assert_eq!(phase, Phase::Overlap, "not observed yet: the old CA stays");
    rig.publish(bundle);
    wait_served(port, &leaf3.cert_pem).await;
    let observed = vec![probe::Observed {
        endpoint: format!("127.0.0.1:{port}"),
        leaf: probe::handshake(&format!("127.0.0.1:{port}"), SERVICE_DNS).await,
    }];
    let served = probe::all_signed_by(&observed, &op.active_ca());
    assert!(served, "the probe sees the new CA's leaf");
    let (bundle, _, phase) = op.reconcile(None, true, served);
    assert_eq!(phase, Phase::Stable);
    assert_eq!(pki::pem_certs_to_der(&bundle).unwrap().len(), 1, "old CA removed");
    rig.publish(bundle);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (ok, failures) = rig.finish().await;
    println!("rotation: {ok} requests succeeded, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "the clients kept running throughout ({ok} requests)");
}

/// The same rig catches the field failure: swapping the CA in caBundle before the pods see
/// the new Secret (kubelet's delay, here one second) fails requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_ca_swap_is_caught_by_the_rig() {
    let now = jiff::Timestamp::now().as_second();
    let alg = KeyAlgorithm::EcdsaP256;
    let names = [SERVICE_DNS.to_string()];
    let ca1 = pki::generate_ca("naive-1", alg, pki::DEFAULT_CA_VALIDITY, now).unwrap();
    let ca2 = pki::generate_ca("naive-2", alg, pki::DEFAULT_CA_VALIDITY, now).unwrap();
    let leaf1 = pki::issue_serving(&ca1, &names, alg, pki::DEFAULT_SERVING_VALIDITY, now).unwrap();
    let leaf2 = pki::issue_serving(&ca2, &names, alg, pki::DEFAULT_SERVING_VALIDITY, now).unwrap();
    let mut rig = Rig::start(ca1.cert_pem.clone(), &leaf1).await;
    pause().await;
    rig.publish(ca2.cert_pem.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.mount(&leaf2);
    wait_served(rig.port, &leaf2.cert_pem).await;
    pause().await;
    let (ok, failures) = rig.finish().await;
    println!("naive swap: {ok} requests succeeded, {} failed", failures.len());
    assert!(!failures.is_empty(), "the rig must detect an unsafe rotation");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("UnknownIssuer") || f.contains("invalid peer certificate")),
        "{failures:?}"
    );
}
