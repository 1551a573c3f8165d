//! The store under the local server: its embedded one, or etcd (one member or a cluster of
//! three on loopback) started here in a temporary directory, removed when the bench ends.

use crate::stats::rss_kib;
use crate::Error;
use eao::testing::etcd::etcd_binary;
use eao::testing::etcd_cluster::{EtcdCluster, Tuning};

/// Where the local server keeps its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    /// The embedded store in a fresh data dir.
    Embedded,
    /// One etcd member.
    Etcd,
    /// A cluster of three etcd members on loopback.
    Etcd3,
}

impl Storage {
    /// Members of the etcd cluster; 0 for the embedded store.
    pub fn members(self) -> usize {
        match self {
            Storage::Embedded => 0,
            Storage::Etcd => 1,
            Storage::Etcd3 => 3,
        }
    }
}

/// A running etcd cluster for the server.
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts the members `storage` asks for (none for the embedded store), with fsync unless
    /// `no_fsync`. The binary is found as the tests find it: `$KUBEBUILDER_ASSETS/etcd`, else
    /// `etcd` on `PATH`.
    pub async fn start(storage: Storage, no_fsync: bool) -> Result<Option<Etcd>, Error> {
        let n = storage.members();
        if n == 0 {
            return Ok(None);
        }
        let binary = etcd_binary().ok_or(
            "--storage etcd needs an etcd binary: set KUBEBUILDER_ASSETS to a directory holding etcd \
             (e.g. ../shared/k8s/bin) or put etcd on PATH",
        )?;
        let tuning = Tuning {
            fsync: !no_fsync,
            ..Tuning::DEFAULT
        };
        let cluster = EtcdCluster::start_tuned(&binary, n, tuning)
            .await
            .map_err(|e| format!("starting {n} etcd member(s) ({}): {e}", binary.display()))?;
        eprintln!(
            "etcd: {} ({n} member(s), fsync {}), {}",
            binary.display(),
            if no_fsync { "off" } else { "on" },
            cluster.urls().join(",")
        );
        Ok(Some(Etcd { cluster }))
    }

    /// Client URLs, for `--etcd-servers`.
    pub fn urls(&self) -> Vec<String> {
        self.cluster.urls()
    }

    /// The members' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.cluster.pids()
    }

    /// `VmRSS` of every member, in KiB.
    pub fn rss_kib(&self) -> Vec<Option<u64>> {
        self.cluster.pids().into_iter().map(rss_kib).collect()
    }
}

/// The members' RSS as one cell: the sum, and each member's when there are several.
pub fn describe_rss(each: &[Option<u64>]) -> String {
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let known: Vec<u64> = each.iter().flatten().copied().collect();
    if known.len() != each.len() || known.is_empty() {
        return "n/a".into();
    }
    let total = mib(known.iter().sum());
    if known.len() == 1 {
        return total;
    }
    let parts: Vec<String> = known.iter().map(|k| mib(*k)).collect();
    format!("{total} ({} members: {})", known.len(), parts.join(" + "))
}

#[cfg(test)]
mod tests {
    use super::describe_rss;

    #[test]
    fn rss_of_one_member_is_its_own() {
        assert_eq!(describe_rss(&[Some(2048)]), "2.0 MiB");
    }

    #[test]
    fn rss_of_a_cluster_is_the_sum_with_each_member() {
        assert_eq!(
            describe_rss(&[Some(1024), Some(2048), Some(512)]),
            "3.5 MiB (3 members: 1.0 MiB + 2.0 MiB + 0.5 MiB)"
        );
    }

    #[test]
    fn rss_of_a_member_that_is_gone_is_unknown() {
        assert_eq!(describe_rss(&[Some(1024), None]), "n/a");
        assert_eq!(describe_rss(&[]), "n/a");
    }
}
