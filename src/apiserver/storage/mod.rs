//! Storage of the bundled server: a durable, embedded key-value store with a global, monotonic
//! resourceVersion, compare-and-swap writes, and watches with a bounded history.
//!
//! Why redb: it is a pure-Rust, ACID, copy-on-write B-tree store whose commits are durable when
//! `commit()` returns (checksummed pages, no WAL to replay), with no C dependency and one file.
//! The whole data set is also kept in memory (a `BTreeMap` of pre-serialized objects), so reads
//! and lists never touch the disk; writes go through one writer task that commits every queued
//! write in one transaction (group commit), which turns one fsync per write into one per batch.
//!
//! Objects are JSON values; the API layer owns Kubernetes semantics (uid, generation, managed
//! fields, validation). Storage owns `metadata.resourceVersion`.

mod engine;
mod etcd;
mod store;
mod watch;

pub use engine::{Storage, StorageOptions};
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls, Probe as EtcdProbe};
pub use store::Store;
pub use watch::{WatchEvent, WatchStream};

use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// The continue token of a list of `prefix` at version `at` from its first key: what an
/// `Exact` list whose version left the store's history hands to [`Store::list_expired`].
pub fn continue_at(prefix: &str, at: u64) -> String {
    engine::encode_continue(i64::try_from(at).unwrap_or(i64::MAX).max(1), prefix)
}

/// A stored object, serialized once when written so that every reader and watcher shares the
/// bytes. Only the JSON and the metadata that lists and watches filter on stay in memory; the
/// full value is parsed when needed, which keeps 10,000 objects of 1 KiB near 15 MiB.
#[derive(Debug)]
pub struct Object {
    /// The object as JSON, with `metadata.resourceVersion` set.
    pub json: Bytes,
    /// The resourceVersion of the write that produced it.
    pub rv: u64,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, empty for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.labels`.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Object {
    /// Wraps a value written at `rv` (setting its resourceVersion).
    pub fn new(mut value: Value, rv: u64) -> Arc<Object> {
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        // serde_json grows its buffer by doubling, and `Bytes::from(Vec)` keeps the spare
        // capacity for as long as the object is stored: a 1.1 KiB object would hold a 2 KiB
        // allocation. Copying into an exact allocation saves ~0.9 KiB per such object.
        let json = Bytes::copy_from_slice(&serde_json::to_vec(&value).unwrap_or_default());
        let text = |p: &str| value.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        let labels = value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Arc::new(Object {
            name: text("/metadata/name"),
            namespace: text("/metadata/namespace"),
            uid: text("/metadata/uid"),
            labels,
            json,
            rv,
        })
    }

    /// The full object.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// `metadata.uid`, if any.
    pub fn uid(&self) -> Option<&str> {
        (!self.uid.is_empty()).then_some(self.uid.as_str())
    }
}

/// Kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted; the object is its last state.
    Deleted,
}

impl EventType {
    /// The watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// Preconditions of an update or delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object must be at this resourceVersion.
    pub resource_version: Option<u64>,
    /// The object must have this uid.
    pub uid: Option<String>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Objects in key order.
    pub items: Vec<Arc<Object>>,
    /// The resourceVersion the list reflects.
    pub rv: u64,
    /// Opaque token for the next page, when there is one.
    pub continue_token: Option<String>,
    /// Objects after this page, matching or not (as etcd counts a range). Only a list without
    /// a selector shows it (as `remainingItemCount`); with one, kube leaves it unset.
    pub remaining: Option<u64>,
}

/// Storage errors; the API layer maps them to `metav1.Status`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key exists.
    #[error("already exists")]
    AlreadyExists,
    /// The key does not exist.
    #[error("not found")]
    NotFound,
    /// A precondition (resourceVersion or uid) failed.
    #[error("precondition failed: {0}")]
    Conflict(String),
    /// The requested resourceVersion is older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// What was asked for.
        requested: u64,
        /// The oldest resourceVersion still available.
        oldest: u64,
    },
    /// The store has not reached a version it was asked for, or one its backend confirmed,
    /// in time (kube-apiserver's 504 "Too large resource version", which clients retry).
    #[error("too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The version waited for.
        requested: u64,
        /// The version reached.
        current: u64,
    },
    /// A continue token older than the history; the token to go on at the latest version.
    #[error("continue token expired")]
    ContinueExpired(String),
    /// A malformed continue token.
    #[error("invalid continue token: {0}")]
    BadContinue(String),
    /// The database failed.
    #[error("storage failure: {0}")]
    Backend(String),
    /// The database cannot be reached now (etcd down or unreachable); worth retrying.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database did not answer in time; the write may or may not have happened.
    #[error("storage timeout: {0}")]
    Timeout(String),
    /// The store is shutting down.
    #[error("storage is closed")]
    Closed,
}

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
