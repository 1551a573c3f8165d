//! An etcd cluster of several members on free loopback ports, for failover tests: each member
//! has its own data directory and ports, and can be killed and restarted on the same ones (a
//! restarted member rejoins from its data, as after a crash). Everything is removed on drop.
//!
//! The binary is found as [`super::etcd::etcd_binary`] finds it; without one,
//! [`EtcdCluster::start_or_skip`] prints one line and the test returns early.

use super::netns::{Error, Process};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the members may take to form the cluster.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

/// How the members run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Whether etcd fsyncs its WAL (its default). Test data need not survive a power cut, and
    /// fsync dominates etcd's latency on CI disks; a benchmark of durable writes wants it.
    pub fsync: bool,
    /// 50 ms heartbeats and a 500 ms election timeout, so a failover test takes seconds;
    /// otherwise etcd's defaults (100 ms / 1 s).
    pub quick_elections: bool,
}

impl Tuning {
    /// For tests: no fsync, quick elections.
    pub const TEST: Tuning = Tuning {
        fsync: false,
        quick_elections: true,
    };
    /// As etcd runs by default: fsync, default election timing.
    pub const DEFAULT: Tuning = Tuning {
        fsync: true,
        quick_elections: false,
    };
}

/// A running cluster; members are numbered from 0.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: PathBuf,
    token: String,
    tuning: Tuning,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members, or prints why `test` is skipped and returns `None` without etcd.
    pub async fn start_or_skip(test: &str, n: usize) -> Option<Result<EtcdCluster, Error>> {
        let Some(binary) = super::etcd::etcd_binary() else {
            eprintln!(
                "skipping {test}: no etcd (set KUBEBUILDER_ASSETS to a directory with etcd, e.g. ../shared/k8s/bin, \
                 or install Debian's etcd-server)"
            );
            return None;
        };
        Some(EtcdCluster::start(&binary, n).await)
    }

    /// Starts `n` members of a new cluster tuned for tests ([`Tuning::TEST`]) and waits until
    /// each answers.
    pub async fn start(binary: &Path, n: usize) -> Result<EtcdCluster, Error> {
        EtcdCluster::start_tuned(binary, n, Tuning::TEST).await
    }

    /// Starts `n` members of a new cluster run as `tuning` says and waits until each answers.
    pub async fn start_tuned(binary: &Path, n: usize, tuning: Tuning) -> Result<EtcdCluster, Error> {
        let seq = super::netns::next_seq();
        let dir = std::env::temp_dir().join(format!("eao-etcd-cluster-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut members = Vec::new();
        for i in 0..n {
            let (client, peer) = (super::testkit::free_port()?, super::testkit::free_port()?);
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{client}"),
                peer_url: format!("http://127.0.0.1:{peer}"),
                data: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                process: None,
            });
        }
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            dir,
            token: format!("eao-{}-{seq}", std::process::id()),
            tuning,
            members,
        };
        // All first: a member waits for a quorum of its peers before it answers.
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .args([
                "--listen-client-urls",
                &m.client_url,
                "--advertise-client-urls",
                &m.client_url,
            ])
            .args([
                "--listen-peer-urls",
                &m.peer_url,
                "--initial-advertise-peer-urls",
                &m.peer_url,
            ])
            // Ignored by a member restarted on its data directory, which knows its cluster.
            .arg(format!("--initial-cluster={initial}"))
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", &self.token])
            .args(["--log-level", "warn"]);
        if self.tuning.quick_elections {
            cmd.args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        }
        if !self.tuning.fsync {
            cmd.arg("--unsafe-no-fsync");
        }
        let process = Process::spawn(&m.name, cmd, &m.log)?;
        self.members[i].process = Some(process);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if let Some(p) = self.members[i].process.as_mut() {
                p.check_running()?;
            }
            let url = self.members[i].client_url.clone();
            let ready = async move {
                let mut c = etcd_client::Client::connect([&url], None).await?;
                // A member answers its status once it has a leader.
                let status = c.status().await?;
                Ok::<_, etcd_client::Error>(status.leader() != 0)
            };
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(2), ready).await {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "etcd member {i} not ready after {READY_TIMEOUT:?}; log:\n{}",
                    super::netns::tail(&self.members[i].log, 30)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The pids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.process.as_ref().map(|p| p.id()))
            .collect()
    }

    /// SIGKILLs member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
        }
    }

    /// Restarts member `i` on its ports and data, and waits until it has rejoined.
    pub async fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    /// The index of the current leader, as the running members report it.
    pub async fn leader(&self) -> Result<usize, Error> {
        let mut ids = Vec::new();
        let mut leader = 0;
        for m in &self.members {
            if m.process.is_none() {
                ids.push(None);
                continue;
            }
            let status = async {
                let mut c = etcd_client::Client::connect([&m.client_url], None).await?;
                c.status().await
            };
            match tokio::time::timeout(Duration::from_secs(2), status).await {
                Ok(Ok(s)) => {
                    ids.push(s.header().map(|h| h.member_id()));
                    leader = leader.max(s.leader());
                }
                _ => ids.push(None),
            }
        }
        ids.iter()
            .position(|id| *id == Some(leader) && leader != 0)
            .ok_or_else(|| format!("no running member is the leader ({leader:x})").into())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
