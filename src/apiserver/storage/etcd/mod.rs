//! The etcd backend of [`Store`](super::Store), modelled on kube-apiserver's etcd3 store: one
//! key per object (`<prefix><key>`, the object's JSON as value), resourceVersion = etcd
//! revision (an object's is its key's `mod_revision`), creates as a transaction on
//! `mod_revision == 0`, updates and deletes as transactions on the `mod_revision` they read, so
//! preconditions and optimistic concurrency hold across every server on the same etcd.
//!
//! Reads are served by a watch cache (the objects under the prefix, kept current by one etcd
//! watch, plus a bounded event history): gets, lists, continuations and watches, with the
//! embedded store's list code ([`super::engine::list_snapshot`]). A write returns once the
//! cache has seen its revision, so a client reads its own writes. What goes to etcd:
//! - a consistent read (`resourceVersion=""`) first confirms etcd's current revision (a
//!   count-only read of the key named by the prefix, a linearizable read, shared by the
//!   readers that arrived while the previous one was on its way: see [`revision`]), then
//!   waits until the cache has reached it, as kube-apiserver's consistent list from cache
//!   does;
//! - continuations and `Exact` lists older than the cache's history are read from etcd at
//!   their revision until etcd compacts it, then answer 410 with a fresh token (see [`past`]).
//!
//! The cache recovers by itself from a broken watch (it resumes from its revision) and from a
//! compacted one (it re-lists and ends open watches with 410; see [`cache`]). With several
//! endpoints the client balances over them; a request that could not be sent to a dead member
//! goes to another, and a request that failed after it was sent is returned as an error (it
//! may have been applied), never retried behind the caller's back.

mod cache;
mod errors;
mod past;
mod probe;
mod revision;
mod tls;
mod txn;

pub use probe::Probe;
pub use tls::EtcdTls;

use super::{ListPage, Object, Preconditions, Result, StorageError, Store, WatchStream};
use cache::Cache;
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix of every key this store owns (kube-apiserver's `--etcd-prefix`, e.g. `/registry/<group>`).
    pub prefix: String,
    /// Events kept for watch resumption; older resourceVersions answer 410 Gone.
    pub history: usize,
    /// Longest wait for one etcd request, and for the cache to see a write.
    pub request_timeout: Duration,
    /// How often the cache asks etcd for a progress notification while nothing under the
    /// prefix changes, so its revision (and watchers' bookmarks) follow etcd's.
    pub progress_every: Duration,
    /// TLS for `https://` endpoints; `None` for plain `http://`.
    pub tls: Option<EtcdTls>,
}

impl EtcdOptions {
    /// Defaults for `endpoints` and `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            prefix: prefix.into(),
            history: 10_000,
            request_timeout: Duration::from_secs(10),
            progress_every: Duration::from_secs(5),
            tls: None,
        }
    }

    /// A client of these endpoints. The connection itself is lazy: an unreachable etcd or a
    /// refused certificate shows in the first request.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        let mut connect = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster refuses requests and ends watches instead of
            // answering from a stale state; the client then goes to another member.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            connect = connect.with_tls(tls.options());
        }
        tokio::time::timeout(
            self.request_timeout,
            etcd_client::Client::connect(&self.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| backend("connect timed out"))?
        .map_err(backend)
    }
}

/// Stops the cache's watch when the last handle goes.
struct Shared {
    cache: Arc<Cache>,
    follower: tokio::task::AbortHandle,
    /// Consistent readers waiting for etcd's revision.
    revisions: revision::Batcher,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// The store. Cheap to clone; several stores (in one process or many) may share one etcd.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
    kv: etcd_client::KvClient,
    prefix: String,
    timeout: Duration,
}

pub(super) fn backend<E: std::fmt::Display>(e: E) -> StorageError {
    StorageError::Backend(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Connects, loads the objects under the prefix into the cache and starts following them.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore> {
        let client = opts.client().await?;
        let (cache, follower) = Cache::start(
            client.clone(),
            opts.prefix.clone(),
            opts.history,
            opts.request_timeout,
            opts.progress_every,
        )
        .await?;
        Ok(EtcdStore {
            shared: Arc::new(Shared {
                cache,
                follower,
                revisions: revision::Batcher::default(),
            }),
            kv: client.kv_client(),
            prefix: opts.prefix,
            timeout: opts.request_timeout,
        })
    }

    fn cache(&self) -> &Cache {
        &self.shared.cache
    }

    /// The oldest resourceVersion a watch can start from.
    pub fn oldest_rv(&self) -> u64 {
        self.cache().hub.oldest()
    }

    /// Times the cache was rebuilt from a fresh list after its etcd watch was compacted past.
    pub fn relists(&self) -> u64 {
        self.cache().relists()
    }

    /// etcd's current revision, read with a linearizable count-only read of the one key named
    /// by the prefix (the member confirms its revision with the leader). Any key gives the
    /// store's revision in the response header; a single key keeps the cost of the read
    /// independent of how many objects there are, where counting the whole prefix walks
    /// every key under it, once per batch of readers. Retried within the request timeout,
    /// since it changes nothing.
    async fn etcd_revision(&self) -> Result<u64> {
        let opts = etcd_client::GetOptions::new().with_count_only();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut kv = self.kv.clone();
            let attempt = tokio::time::timeout_at(deadline, kv.get(self.prefix.as_bytes(), Some(opts.clone()))).await;
            let err = match attempt {
                Ok(Ok(resp)) => return Ok(resp.header().map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))),
                Ok(Err(e)) => errors::request_error(e),
                Err(_) => errors::timed_out(self.timeout),
            };
            // Unreachable (503) or too slow (504), as the last attempt found it.
            if tokio::time::Instant::now() + RETRY_READ >= deadline {
                return Err(err);
            }
            tokio::time::sleep(RETRY_READ).await;
        }
    }
}

/// Pause between attempts of a read that failed.
const RETRY_READ: Duration = Duration::from_millis(100);

impl Store for EtcdStore {
    fn current_rv(&self) -> u64 {
        self.cache().rv()
    }
    fn get(&self, key: &str) -> Option<Arc<Object>> {
        self.cache().get(key)
    }
    fn list_filtered(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: Option<&str>,
        keep: &dyn Fn(&Object) -> bool,
    ) -> Result<ListPage> {
        self.cache().list(prefix, limit, continue_token, keep)
    }
    fn list_at(&self, prefix: &str, at: u64, limit: Option<usize>, keep: &dyn Fn(&Object) -> bool) -> Result<ListPage> {
        let token = super::engine::encode_continue(i64::try_from(at).unwrap_or(i64::MAX).max(1), prefix);
        self.cache().list(prefix, limit, Some(&token), keep)
    }
    fn list_expired<'a>(
        &'a self,
        prefix: &'a str,
        limit: Option<usize>,
        continue_token: &'a str,
        keep: &'a (dyn Fn(&Object) -> bool + Sync),
    ) -> BoxFuture<'a, Result<ListPage>> {
        Box::pin(self.list_past(prefix, limit, continue_token, keep))
    }
    fn watch(&self, prefix: &str, from_rv: Option<u64>) -> Result<WatchStream> {
        let from = from_rv.unwrap_or_else(|| self.cache().rv());
        self.cache().hub.watch(prefix, from)
    }
    fn create<'a>(&'a self, key: &'a str, value: Value) -> BoxFuture<'a, Result<Arc<Object>>> {
        Box::pin(self.create_(key, value))
    }
    fn update<'a>(&'a self, key: &'a str, value: Value, pre: Preconditions) -> BoxFuture<'a, Result<Arc<Object>>> {
        Box::pin(self.write(key, Some(value), pre))
    }
    fn delete<'a>(&'a self, key: &'a str, pre: Preconditions) -> BoxFuture<'a, Result<Arc<Object>>> {
        Box::pin(self.write(key, None, pre))
    }
    fn unhealthy(&self) -> Option<String> {
        self.cache().error()
    }
    fn consistent_rv(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let rev = self.batched_revision().await?;
            self.cache().wait_for(rev, self.timeout, true).await?;
            Ok(rev)
        })
    }
    fn wait_for_rv(&self, rv: u64, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.cache().wait_for(rv, timeout, true).await.is_ok() })
    }
}
