//! A standalone etcd for storage tests: one member on free loopback ports, its data in a
//! temporary directory, killed and removed on drop.
//!
//! The binary is `$KUBEBUILDER_ASSETS/etcd` (the envtest convention, `../shared/k8s/bin` in CI)
//! or `etcd` on `PATH` (Debian's `etcd-server`); without either, [`Etcd::start_or_skip`]
//! prints one line and the test returns early.

use super::controlplane::etcd_command;
use super::netns::{Error, Process};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running etcd.
#[derive(Debug)]
pub struct Etcd {
    process: Process,
    dir: PathBuf,
    url: String,
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

impl Etcd {
    /// Starts etcd, or prints why `test` is skipped and returns `None` when there is none.
    pub async fn start_or_skip(test: &str) -> Option<Result<Etcd, Error>> {
        let Some(binary) = etcd_binary() else {
            eprintln!(
                "skipping {test}: no etcd (set KUBEBUILDER_ASSETS to a directory with etcd, e.g. ../shared/k8s/bin, \
                 or install Debian's etcd-server)"
            );
            return None;
        };
        Some(Etcd::start(&binary).await)
    }

    /// Starts `binary` and waits until it answers.
    pub async fn start(binary: &Path) -> Result<Etcd, Error> {
        let dir = std::env::temp_dir().join(format!("eao-etcd-{}-{}", std::process::id(), super::netns::next_seq()));
        std::fs::create_dir_all(&dir)?;
        let (cmd, url) = etcd_command(binary, &dir.join("data"))?;
        let process = Process::spawn("etcd", cmd, &dir.join("etcd.log"))?;
        let mut etcd = Etcd { process, dir, url };
        let started = Instant::now();
        loop {
            etcd.process.check_running()?;
            let ready = async {
                let mut c = etcd_client::Client::connect([&etcd.url], None).await?;
                c.status().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), ready).await {
                return Ok(etcd);
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "etcd not ready after {READY_TIMEOUT:?}; log:\n{}",
                    etcd.process.log_tail(30)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its client URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
