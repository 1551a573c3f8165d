//! The storage interface the API layer programs against, implemented by the embedded redb
//! engine and the etcd backend alike: a global, monotonic resourceVersion, compare-and-swap
//! writes, key-prefix lists with continue tokens, watches that resume from a resourceVersion
//! or fail with `Gone`, and consistent reads that reflect every acknowledged write.

use super::{ListPage, Object, Preconditions, Result, WatchStream};
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// A store of JSON objects under string keys.
pub trait Store: Send + Sync {
    /// The resourceVersion of the last committed write.
    fn current_rv(&self) -> u64;
    /// The object at `key`.
    fn get(&self, key: &str) -> Option<Arc<Object>>;
    /// Objects under `prefix` that pass `keep`, paginated (see [`super::Storage::list`]).
    fn list_filtered(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: Option<&str>,
        keep: &dyn Fn(&Object) -> bool,
    ) -> Result<ListPage>;
    /// Objects under `prefix` that pass `keep` as they were at `at`, paginated;
    /// `ContinueExpired` when `at` is older than the retained history.
    fn list_at(&self, prefix: &str, at: u64, limit: Option<usize>, keep: &dyn Fn(&Object) -> bool) -> Result<ListPage>;
    /// A list whose continue token `list_filtered` refused with `ContinueExpired` (its version
    /// is older than the store's own history), read from the backend at that version while
    /// the backend still has it, as kube-apiserver reads etcd until it compacts; else
    /// `ContinueExpired` with the token to go on at the latest version. The embedded store has
    /// no other history than its own, so it answers as `list_filtered` did.
    fn list_expired<'a>(
        &'a self,
        prefix: &'a str,
        limit: Option<usize>,
        continue_token: &'a str,
        keep: &'a (dyn Fn(&Object) -> bool + Sync),
    ) -> BoxFuture<'a, Result<ListPage>> {
        Box::pin(std::future::ready(self.list_filtered(
            prefix,
            limit,
            Some(continue_token),
            keep,
        )))
    }
    /// Changes under `prefix` after `from_rv` (now when `None`).
    fn watch(&self, prefix: &str, from_rv: Option<u64>) -> Result<WatchStream>;
    /// Creates `key`; `AlreadyExists` when it exists. Durable when it returns.
    fn create<'a>(&'a self, key: &'a str, value: Value) -> BoxFuture<'a, Result<Arc<Object>>>;
    /// Replaces `key` if `pre` holds.
    fn update<'a>(&'a self, key: &'a str, value: Value, pre: Preconditions) -> BoxFuture<'a, Result<Arc<Object>>>;
    /// Removes `key` if `pre` holds, returning its last state.
    fn delete<'a>(&'a self, key: &'a str, pre: Preconditions) -> BoxFuture<'a, Result<Arc<Object>>>;
    /// Why the store cannot take writes now, if it cannot (for `/readyz`).
    fn unhealthy(&self) -> Option<String>;
    /// Prepares a consistent read (`resourceVersion=""`): returns once reads reflect every
    /// write acknowledged before the call, through this store or any other on the same
    /// backend, with the version they reflect at least. The embedded store is the only writer
    /// of its data, so it is always current; the etcd store confirms etcd's revision and
    /// waits for its cache (`TooLargeResourceVersion` when the cache does not catch up).
    fn consistent_rv(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(std::future::ready(Ok(self.current_rv())))
    }
    /// Waits up to `timeout` until the store has reached version `rv` (one a client saw from
    /// another server, say); whether it has. The etcd store asks etcd for progress meanwhile,
    /// since `rv` may be a revision of no change under its prefix.
    fn wait_for_rv(&self, rv: u64, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            while self.current_rv() < rv {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        })
    }
}

impl dyn Store + '_ {
    /// [`Store::list_filtered`] with any closure.
    pub fn list(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: Option<&str>,
        keep: impl Fn(&Object) -> bool,
    ) -> Result<ListPage> {
        self.list_filtered(prefix, limit, continue_token, &keep)
    }
}

impl Store for super::Storage {
    fn current_rv(&self) -> u64 {
        super::Storage::current_rv(self)
    }
    fn get(&self, key: &str) -> Option<Arc<Object>> {
        super::Storage::get(self, key)
    }
    fn list_filtered(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: Option<&str>,
        keep: &dyn Fn(&Object) -> bool,
    ) -> Result<ListPage> {
        super::Storage::list(self, prefix, limit, continue_token, keep)
    }
    fn list_at(&self, prefix: &str, at: u64, limit: Option<usize>, keep: &dyn Fn(&Object) -> bool) -> Result<ListPage> {
        super::Storage::list_at(self, prefix, at, limit, keep)
    }
    fn watch(&self, prefix: &str, from_rv: Option<u64>) -> Result<WatchStream> {
        super::Storage::watch(self, prefix, from_rv)
    }
    fn create<'a>(&'a self, key: &'a str, value: Value) -> BoxFuture<'a, Result<Arc<Object>>> {
        Box::pin(super::Storage::create(self, key, value))
    }
    fn update<'a>(&'a self, key: &'a str, value: Value, pre: Preconditions) -> BoxFuture<'a, Result<Arc<Object>>> {
        Box::pin(super::Storage::update(self, key, value, pre))
    }
    fn delete<'a>(&'a self, key: &'a str, pre: Preconditions) -> BoxFuture<'a, Result<Arc<Object>>> {
        Box::pin(super::Storage::delete(self, key, pre))
    }
    fn unhealthy(&self) -> Option<String> {
        super::Storage::unhealthy(self)
    }
}
