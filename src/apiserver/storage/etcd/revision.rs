//! etcd's current revision for consistent reads, one etcd request per batch of readers.
//!
//! Every get, list and watch without a resourceVersion first confirms etcd's revision (see
//! [`super::EtcdStore::etcd_revision`]); asked once per read, that round trip, not the watch
//! cache, bounds how many reads a server answers. A reader therefore joins the *next* request
//! that starts after it arrived, never one already on its way (whose answer may predate a
//! write acknowledged before the reader came), so concurrent readers share one linearizable
//! read per round trip, as etcd itself batches the ReadIndex requests of its clients.

use super::super::{Result, StorageError};
use super::EtcdStore;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// What every reader of a batch gets: the revision, or the request's failure by kind (the
/// errors of [`EtcdStore::etcd_revision`]: 503, 504 or 500).
type Answer = std::result::Result<u64, Failure>;

#[derive(Clone, Debug)]
enum Failure {
    Unavailable(String),
    Timeout(String),
    Backend(String),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Failure {
        match e {
            StorageError::Unavailable(m) => Failure::Unavailable(m),
            StorageError::Timeout(m) => Failure::Timeout(m),
            StorageError::Backend(m) => Failure::Backend(m),
            e => Failure::Backend(e.to_string()),
        }
    }
}

impl From<Failure> for StorageError {
    fn from(f: Failure) -> StorageError {
        match f {
            Failure::Unavailable(m) => StorageError::Unavailable(m),
            Failure::Timeout(m) => StorageError::Timeout(m),
            Failure::Backend(m) => StorageError::Backend(m),
        }
    }
}

/// Readers waiting for the next request.
#[derive(Default)]
pub(super) struct Batcher {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// A task is sending requests for the waiting readers.
    running: bool,
    waiting: Vec<oneshot::Sender<Answer>>,
}

impl EtcdStore {
    /// etcd's current revision, confirmed by a request sent after this call began.
    pub(super) async fn batched_revision(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut p = self.shared.revisions.pending.lock().map_err(|_| StorageError::Closed)?;
            p.waiting.push(tx);
            !std::mem::replace(&mut p.running, true)
        };
        if start {
            // A task of its own: a reader that gives up (its client went away) must not take
            // the batch's request down with it.
            tokio::spawn(rounds(self.clone()));
        }
        // A reader that came while a request was on its way waits for that one and its own;
        // it still gets its answer (or 504) within one request timeout, as without batching.
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer.map_err(StorageError::from),
            Ok(Err(_)) => Err(StorageError::Closed),
            Err(_) => Err(super::errors::timed_out(self.timeout)),
        }
    }
}

/// Sends one request for everyone waiting, and again while readers arrived meanwhile.
async fn rounds(store: EtcdStore) {
    loop {
        let batch = {
            let Ok(mut p) = store.shared.revisions.pending.lock() else {
                return;
            };
            if p.waiting.is_empty() {
                p.running = false;
                return;
            }
            std::mem::take(&mut p.waiting)
        };
        let answer: Answer = store.etcd_revision().await.map_err(Failure::from);
        for tx in batch {
            // A reader that stopped waiting dropped its receiver; nothing to do.
            let _ = tx.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EtcdOptions, EtcdStore};
    use crate::apiserver::storage::Store;
    use crate::testing::etcd::Etcd;

    /// Many readers at once, each after a write of its own straight to etcd: each read's
    /// revision covers that write, although the readers share requests.
    #[tokio::test]
    async fn concurrent_consistent_reads_each_see_the_write_before_them() {
        let Some(etcd) = Etcd::start_or_skip("concurrent_consistent_reads_each_see_the_write_before_them").await else {
            return;
        };
        let etcd = etcd.unwrap();
        let store = EtcdStore::connect(EtcdOptions::new(vec![etcd.url().to_string()], "/registry/batched"))
            .await
            .unwrap();
        let raw = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
        let mut readers = Vec::new();
        for i in 0..64 {
            let (store, mut kv) = (store.clone(), raw.kv_client());
            readers.push(tokio::spawn(async move {
                let put = kv.put(format!("/elsewhere/r{i}"), "x", None).await.unwrap();
                let written = u64::try_from(put.header().unwrap().revision()).unwrap();
                let read = store.consistent_rv().await.unwrap();
                assert!(read >= written, "reader {i}: read at {read}, wrote at {written}");
                read
            }));
        }
        let mut reads = Vec::new();
        for r in readers {
            reads.push(r.await.unwrap());
        }
        // A consistent read returns once the cache has reached its revision.
        assert!(store.current_rv() >= *reads.iter().max().unwrap());
    }
}
