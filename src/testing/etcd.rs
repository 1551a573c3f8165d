//! A standalone etcd for storage tests: one member on free loopback ports, its data in a
//! temporary directory, killed and removed on drop. It can serve over https with client
//! certificate authentication ([`Etcd::start_tls`]), and be stopped and restarted on the same
//! data and port ([`Etcd::stop`], [`Etcd::restart`]) to test outages.
//!
//! The binary is `$KUBEBUILDER_ASSETS/etcd` (the envtest convention, `../shared/k8s/bin` in CI)
//! or `etcd` on `PATH` (Debian's `etcd-server`); without either, [`Etcd::start_or_skip`]
//! prints one line and the test returns early.

use super::certs;
use super::controlplane::{etcd_command_at, EtcdServerTls};
use super::netns::{Error, Process};
use crate::apiserver::storage::EtcdTls;
use crate::pki::CertKeyPair;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The certificates of an etcd started with [`Etcd::start_tls`], as files and PEM.
#[derive(Debug)]
pub struct TlsFiles {
    /// The CA of etcd's serving certificate and of the client certificates it accepts.
    pub ca: CertKeyPair,
    /// `ca` as a file (`--etcd-cafile`).
    pub ca_file: PathBuf,
    /// A client certificate signed by `ca`.
    pub client: CertKeyPair,
    /// `client`'s certificate as a file (`--etcd-certfile`).
    pub client_cert_file: PathBuf,
    /// `client`'s key as a file (`--etcd-keyfile`).
    pub client_key_file: PathBuf,
    server: EtcdServerTls,
}

impl TlsFiles {
    fn create(dir: &Path) -> Result<TlsFiles, Error> {
        let ca = certs::ca("etcd-ca")?;
        let serving = certs::serving_cert(&ca)?;
        let client = certs::client_cert(&ca, "extension-apiserver", None)?;
        let write = |name: &str, pem: &str| -> Result<PathBuf, Error> {
            let p = dir.join(name);
            std::fs::write(&p, pem)?;
            Ok(p)
        };
        let ca_file = write("ca.crt", &ca.cert_pem)?;
        let server = EtcdServerTls {
            cert: write("server.crt", &serving.cert_pem)?,
            key: write("server.key", &serving.key_pem)?,
            client_ca: ca_file.clone(),
        };
        Ok(TlsFiles {
            client_cert_file: write("client.crt", &client.cert_pem)?,
            client_key_file: write("client.key", &client.key_pem)?,
            ca_file,
            ca,
            client,
            server,
        })
    }

    /// Client TLS trusting etcd, presenting the client certificate.
    pub fn client_tls(&self) -> EtcdTls {
        EtcdTls {
            ca_pem: self.ca.cert_pem.clone().into_bytes(),
            identity: Some((
                self.client.cert_pem.clone().into_bytes(),
                self.client.key_pem.clone().into_bytes(),
            )),
        }
    }
}

/// A running etcd.
#[derive(Debug)]
pub struct Etcd {
    process: Option<Process>,
    binary: PathBuf,
    dir: PathBuf,
    ports: (u16, u16),
    url: String,
    tls: Option<TlsFiles>,
}

/// The etcd binary: `$KUBEBUILDER_ASSETS/etcd`, else `etcd` on `PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS") {
        let etcd = Path::new(&dir).join("etcd");
        if etcd.is_file() {
            return Some(etcd);
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd, or prints why `test` is skipped and returns `None` when there is none.
    pub async fn start_or_skip(test: &str) -> Option<Result<Etcd, Error>> {
        Some(Etcd::start(&skip_without_etcd(test)?).await)
    }

    /// [`Etcd::start_or_skip`] over https with client certificate authentication.
    pub async fn start_tls_or_skip(test: &str) -> Option<Result<Etcd, Error>> {
        Some(Etcd::start_tls(&skip_without_etcd(test)?).await)
    }

    /// Starts `binary` and waits until it answers.
    pub async fn start(binary: &Path) -> Result<Etcd, Error> {
        Etcd::start_with(binary, false).await
    }

    /// Starts `binary` serving https, requiring a client certificate of [`Etcd::tls`]'s CA.
    pub async fn start_tls(binary: &Path) -> Result<Etcd, Error> {
        Etcd::start_with(binary, true).await
    }

    async fn start_with(binary: &Path, tls: bool) -> Result<Etcd, Error> {
        let dir = std::env::temp_dir().join(format!("eao-etcd-{}-{}", std::process::id(), super::netns::next_seq()));
        std::fs::create_dir_all(&dir)?;
        let tls = if tls { Some(TlsFiles::create(&dir)?) } else { None };
        let mut etcd = Etcd {
            process: None,
            binary: binary.to_path_buf(),
            ports: (free_port()?, free_port()?),
            url: String::new(),
            dir,
            tls,
        };
        etcd.restart().await?;
        Ok(etcd)
    }

    /// Its client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its certificates, when it serves https.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Kills it (SIGKILL); its data stays for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open but nothing answers, as with a hung etcd
    /// or a network partition. [`Etcd::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Resumes it after [`Etcd::freeze`] (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let Some(pid) = self.process.as_ref().and_then(|p| libc::pid_t::try_from(p.id()).ok()) else {
            return;
        };
        // SAFETY: kill(2) takes no pointers; the pid is our own child, not yet reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Starts it (again) on the same data directory and ports and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        let (cmd, url) = etcd_command_at(
            &self.binary,
            &self.dir.join("data"),
            self.ports,
            self.tls.as_ref().map(|t| &t.server),
        );
        self.url = url;
        let process = Process::spawn("etcd", cmd, &self.dir.join("etcd.log"))?;
        let process = self.process.insert(process);
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            let ca = etcd_client::Certificate::from_pem(&tls.ca.cert_pem);
            let id = etcd_client::Identity::from_pem(&tls.client.cert_pem, &tls.client.key_pem);
            options = options.with_tls(etcd_client::TlsOptions::new().ca_certificate(ca).identity(id));
        }
        let started = Instant::now();
        loop {
            process.check_running()?;
            let ready = async {
                let mut c = etcd_client::Client::connect([&self.url], Some(options.clone())).await?;
                c.status().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), ready).await {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!("etcd not ready after {READY_TIMEOUT:?}; log:\n{}", process.log_tail(30)).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn skip_without_etcd(test: &str) -> Option<PathBuf> {
    let binary = etcd_binary();
    if binary.is_none() {
        eprintln!(
            "skipping {test}: no etcd (set KUBEBUILDER_ASSETS to a directory with etcd, e.g. ../shared/k8s/bin, \
             or install Debian's etcd-server)"
        );
    }
    binary
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
