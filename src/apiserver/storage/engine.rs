//! The embedded store: an in-memory index in front of redb, with one writer thread doing
//! group commits.

use super::watch::{Hub, WatchEvent, WatchStream};
use super::{EventType, ListPage, Object, Preconditions, Result, StorageError};
use base64::Engine as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RV_KEY: &str = "resourceVersion";

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Events kept for watch resumption; older resourceVersions answer 410 Gone.
    pub history: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            history: 10_000,
            max_batch: 1024,
        }
    }
}

enum OpKind {
    Create(Value),
    Update(Value, Preconditions),
    Delete(Preconditions),
}

type Reply = oneshot::Sender<Result<Arc<Object>>>;

struct Op {
    key: String,
    kind: OpKind,
    reply: Reply,
}

struct Inner {
    objects: RwLock<BTreeMap<String, Arc<Object>>>,
    rv: AtomicU64,
    hub: Hub,
    /// The error of the last commit, cleared by the next successful one: a full or failing
    /// disk makes `/readyz` fail rather than leave a pod that accepts writes it cannot keep.
    last_error: std::sync::Mutex<Option<String>>,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Op>,
}

fn backend<E: std::fmt::Display>(e: E) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// kube-apiserver's continue token: the version the first page read, and the key to resume
/// at. `rv` is -1 in the token an expired one is traded for: "continue at the latest version".
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ContinueToken {
    v: String,
    pub(super) rv: i64,
    pub(super) start: String,
}

pub(super) fn encode_continue(rv: i64, start: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
}

pub(super) fn decode_continue(token: &str) -> Result<ContinueToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| StorageError::BadContinue(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| StorageError::BadContinue(e.to_string()))
}

impl Storage {
    /// Opens (or creates) the store in `dir`, loading every object into memory.
    pub fn open(dir: &Path, opts: StorageOptions) -> Result<Storage> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        // A small page cache: reads are served from memory above, so redb only needs pages for
        // writes, and a leaf page it no longer caches is one read from the OS's page cache. With
        // 8 MiB the cache filled up and the server held 53.7 MiB with 10,000 objects of 1 KiB,
        // over the 50 MiB target; with 2 MiB, 47.7 MiB, for writes ~25% slower in a bulk load
        // (8,500 creates/s instead of 11,000; `eas-bench --verbs create,update`, README).
        let db = redb::Builder::new()
            .set_cache_size(2 << 20)
            .create(dir.join("data.redb"))
            .map_err(backend)?;
        // Create the tables so reads of a fresh store work.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let mut objects = BTreeMap::new();
        let mut rv = 0;
        {
            let read = db.begin_read().map_err(backend)?;
            let table = read.open_table(OBJECTS).map_err(backend)?;
            for entry in table.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let value: Value = serde_json::from_slice(v.value()).map_err(backend)?;
                let obj_rv = value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                objects.insert(k.value().to_string(), Object::new(value, obj_rv));
            }
            let meta = read.open_table(META).map_err(backend)?;
            if let Some(v) = meta.get(RV_KEY).map_err(backend)? {
                rv = v.value();
            }
        }
        let inner = Arc::new(Inner {
            objects: RwLock::new(objects),
            rv: AtomicU64::new(rv),
            hub: Hub::new(opts.history, rv),
            last_error: Default::default(),
        });
        let (tx, rx) = mpsc::channel(opts.max_batch * 4);
        let writer_inner = inner.clone();
        let max_batch = opts.max_batch;
        std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer(db, writer_inner, rx, max_batch))
            .map_err(backend)?;
        Ok(Storage { inner, tx })
    }

    /// The resourceVersion of the last committed write.
    pub fn current_rv(&self) -> u64 {
        self.inner.rv.load(Ordering::SeqCst)
    }

    /// Why the store cannot take writes now, if it cannot: its writer stopped, or the last
    /// commit failed.
    pub fn unhealthy(&self) -> Option<String> {
        if self.tx.is_closed() {
            return Some("the storage writer has stopped".into());
        }
        self.inner.last_error.lock().ok()?.clone()
    }

    /// The oldest resourceVersion a watch can start from.
    pub fn oldest_rv(&self) -> u64 {
        self.inner.hub.oldest()
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.inner.objects.read().map(|o| o.len()).unwrap_or(0)
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object at `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Object>> {
        self.inner.objects.read().ok()?.get(key).cloned()
    }

    /// Lists objects under `prefix` that pass `keep`, in key order, at most `limit` of them,
    /// continuing after a previous page's token. A continuation reads the data as it was at
    /// the first page's version, undoing later changes from the watch history, so the pages
    /// of one list are one snapshot as with etcd. A token older than the history is refused
    /// with `ContinueExpired`, which carries a token to go on at the latest version, as
    /// kube-apiserver answers a compacted one.
    pub fn list(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: Option<&str>,
        keep: impl Fn(&Object) -> bool,
    ) -> Result<ListPage> {
        let objects = self.inner.objects.read().map_err(|_| StorageError::Closed)?;
        let current = self.inner.rv.load(Ordering::SeqCst);
        list_snapshot(&objects, current, &self.inner.hub, prefix, limit, continue_token, &keep)
    }

    /// Objects under `prefix` as they were at `at` (an `Exact` list): read as the
    /// continuation of a list begun at `at`, from its first key.
    pub fn list_at(
        &self,
        prefix: &str,
        at: u64,
        limit: Option<usize>,
        keep: impl Fn(&Object) -> bool,
    ) -> Result<ListPage> {
        let token = encode_continue(i64::try_from(at).unwrap_or(i64::MAX).max(1), prefix);
        self.list(prefix, limit, Some(&token), keep)
    }

    /// Watches changes under `prefix` after `from_rv` (the current version when `None`).
    pub fn watch(&self, prefix: &str, from_rv: Option<u64>) -> Result<WatchStream> {
        let from = from_rv.unwrap_or_else(|| self.current_rv());
        self.inner.hub.watch(prefix, from)
    }

    async fn submit(&self, key: &str, kind: OpKind) -> Result<Arc<Object>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op {
                key: key.to_string(),
                kind,
                reply,
            })
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Creates `key`; fails with `AlreadyExists`. Returns after the write is durable.
    pub async fn create(&self, key: &str, value: Value) -> Result<Arc<Object>> {
        self.submit(key, OpKind::Create(value)).await
    }

    /// Replaces `key` if the preconditions hold.
    pub async fn update(&self, key: &str, value: Value, pre: Preconditions) -> Result<Arc<Object>> {
        self.submit(key, OpKind::Update(value, pre)).await
    }

    /// Deletes `key` if the preconditions hold; returns its last state.
    pub async fn delete(&self, key: &str, pre: Preconditions) -> Result<Arc<Object>> {
        self.submit(key, OpKind::Delete(pre)).await
    }
}

/// A page of the objects under `prefix` (see [`Storage::list`]), read from an in-memory index
/// at version `current` whose changes are all in `hub`'s history (the caller holds the index's
/// read lock, and writers publish to the hub under its write lock). Shared with the etcd
/// backend's watch cache.
pub(super) fn list_snapshot(
    objects: &BTreeMap<String, Arc<Object>>,
    current: u64,
    hub: &Hub,
    prefix: &str,
    limit: Option<usize>,
    continue_token: Option<&str>,
    keep: &dyn Fn(&Object) -> bool,
) -> Result<ListPage> {
    let token = match continue_token {
        Some(t) => {
            let token = decode_continue(t)?;
            if !token.start.starts_with(prefix) {
                return Err(StorageError::BadContinue("token is for another list".into()));
            }
            if token.rv == 0 {
                // etcd3's store: 0 is no version at all (a token of another kind).
                return Err(StorageError::BadContinue(
                    "incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
                ));
            }
            Some(token)
        }
        None => None,
    };
    let (start, at) = match &token {
        Some(t) if t.rv > 0 => {
            let at = t.rv.unsigned_abs();
            if at < hub.oldest() {
                return Err(StorageError::ContinueExpired(encode_continue(-1, &t.start)));
            }
            (Some(t.start.clone()), at.min(current))
        }
        Some(t) => (Some(t.start.clone()), current),
        None => (None, current),
    };
    let lower = start.unwrap_or_else(|| prefix.to_string());
    // Keys changed after `at`, with their state at `at` (None: absent then).
    let undone = if at < current {
        hub.state_at(&lower, prefix, at)
    } else {
        BTreeMap::new()
    };
    let range = || {
        objects
            .range::<String, _>((Bound::Included(lower.clone()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
    };
    // Only a continuation with changes since its first page merges the undone state in; a
    // plain list walks the objects as they are, without copying keys.
    let merged: Option<BTreeMap<&String, Option<&Arc<Object>>>> = (!undone.is_empty()).then(|| {
        range()
            .filter(|(k, _)| !undone.contains_key(*k))
            .map(|(k, o)| (k, Some(o)))
            .chain(undone.iter().map(|(k, o)| (k, o.as_ref())))
            .collect()
    });
    let mut snapshot: Box<dyn Iterator<Item = (&String, &Arc<Object>)>> = match &merged {
        Some(m) => Box::new(m.iter().filter_map(|(k, o)| Some((*k, (*o)?)))),
        None => Box::new(range()),
    };
    let mut items = Vec::new();
    let mut next = None;
    let mut remaining = 0u64;
    while let Some((k, obj)) = snapshot.next() {
        if !keep(obj) {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            // The page is full and this object starts the next one. What remains counts every
            // object from here on, matching or not, as etcd counts a range: the list handler
            // shows the count only when nothing is filtered, so matching the rest against the
            // selector would be work thrown away.
            next = Some(k.clone());
            remaining = u64::try_from(snapshot.by_ref().count()).map_or(u64::MAX, |n| n + 1);
            break;
        }
        items.push(obj.clone());
    }
    let at_signed = i64::try_from(at).unwrap_or(i64::MAX);
    Ok(ListPage {
        items,
        continue_token: next.map(|k| encode_continue(at_signed, &k)),
        remaining: (remaining > 0).then_some(remaining),
        rv: at,
    })
}

pub(super) fn check(current: Option<&Arc<Object>>, pre: &Preconditions) -> Result<()> {
    let Some(cur) = current else {
        return Err(StorageError::NotFound);
    };
    if let Some(rv) = pre.resource_version {
        if cur.rv != rv {
            return Err(StorageError::Conflict(format!(
                "the object has been modified; please apply your changes to the latest version and try again \
                 (resourceVersion {rv} is not the current {})",
                cur.rv
            )));
        }
    }
    if let Some(uid) = &pre.uid {
        if cur.uid() != Some(uid.as_str()) {
            return Err(StorageError::Conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                cur.uid().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The writer: takes every queued write, decides each against the current state plus the
/// batch so far, commits them in one durable transaction, then makes them visible, notifies
/// watchers and answers the callers, in that order.
fn writer(db: Database, inner: Arc<Inner>, mut rx: mpsc::Receiver<Op>, max_batch: usize) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = vec![first];
        while ops.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let base_rv = inner.rv.load(Ordering::SeqCst);
        let mut rv = base_rv;
        let mut overlay: HashMap<String, Option<Arc<Object>>> = HashMap::new();
        let mut results: Vec<(Reply, Result<Arc<WatchEvent>>)> = Vec::new();
        {
            let objects = match inner.objects.read() {
                Ok(o) => o,
                Err(_) => return,
            };
            for op in ops {
                let current = match overlay.get(&op.key) {
                    Some(v) => v.clone(),
                    None => objects.get(&op.key).cloned(),
                };
                let outcome = match op.kind {
                    OpKind::Create(value) => {
                        if current.is_some() {
                            Err(StorageError::AlreadyExists)
                        } else {
                            rv += 1;
                            Ok((EventType::Added, Object::new(value, rv)))
                        }
                    }
                    OpKind::Update(value, pre) => check(current.as_ref(), &pre).map(|_| {
                        rv += 1;
                        (EventType::Modified, Object::new(value, rv))
                    }),
                    OpKind::Delete(pre) => check(current.as_ref(), &pre).map(|_| {
                        rv += 1;
                        let last = current.as_ref().map(|c| c.value()).unwrap_or(Value::Null);
                        (EventType::Deleted, Object::new(last, rv))
                    }),
                };
                let event = outcome.map(|(type_, object)| {
                    overlay.insert(op.key.clone(), (type_ != EventType::Deleted).then(|| object.clone()));
                    Arc::new(WatchEvent {
                        type_,
                        key: op.key.clone(),
                        object,
                        // The state before a change or a delete, so a list can be read as of an
                        // earlier version.
                        prev: (type_ != EventType::Added).then_some(current).flatten(),
                    })
                });
                results.push((op.reply, event));
            }
        }
        let committed = if rv == base_rv {
            Ok(())
        } else {
            commit(&db, &overlay, rv)
        };
        if let Ok(mut last) = inner.last_error.lock() {
            *last = committed.as_ref().err().map(|e| e.to_string());
        }
        if let Err(e) = committed {
            tracing::error!(error = %e, "storage commit failed");
            for (reply, _) in results {
                let _ = reply.send(Err(StorageError::Backend(e.to_string())));
            }
            continue;
        }
        let events: Vec<_> = results.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect();
        if let Ok(mut objects) = inner.objects.write() {
            for (k, v) in overlay {
                match v {
                    Some(obj) => objects.insert(k, obj),
                    None => objects.remove(&k),
                };
            }
            inner.rv.store(rv, Ordering::SeqCst);
            // Still under the lock: a list's snapshot finds every change it sees in the history.
            inner.hub.publish(events);
        }
        for (reply, result) in results {
            let _ = reply.send(result.map(|e| e.object.clone()));
        }
    }
}

fn commit(db: &Database, overlay: &HashMap<String, Option<Arc<Object>>>, rv: u64) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(OBJECTS)?;
        for (k, v) in overlay {
            match v {
                Some(obj) => {
                    table.insert(k.as_str(), obj.json.as_ref())?;
                }
                None => {
                    table.remove(k.as_str())?;
                }
            }
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(RV_KEY, rv)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
