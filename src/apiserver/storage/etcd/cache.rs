//! The watch cache: every object under the prefix, kept current by one etcd watch, with a
//! bounded history of events ([`Hub`]) for lists at an earlier revision and resumed watches.
//!
//! Failures, as kube-apiserver's cacher handles them: a broken watch (etcd unreachable, its
//! member gone) is re-established from the cache's revision, so no event is missed or
//! repeated; a watch compacted past (the cache fell further behind than etcd keeps history)
//! cannot resume, so the cache re-lists the prefix at a new revision, replaces its contents
//! and ends every open watch with 410 Gone, and its clients re-list. Progress notifications,
//! requested periodically and whenever a reader waits for a revision, move the cache's
//! revision to etcd's although nothing under the prefix changed: bookmarks then carry it, and
//! a consistent read that confirmed a revision with etcd can be answered from the cache.

use super::super::engine::list_snapshot;
use super::super::watch::{Hub, WatchEvent};
use super::super::{EventType, ListPage, Object, Result, StorageError};
use super::backend;
use etcd_client::{Client, GetOptions, WatchOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Keys read per request when loading the cache.
const LOAD_PAGE: i64 = 500;
/// Pause before re-establishing a broken watch.
const RETRY: Duration = Duration::from_millis(200);
/// How often a reader waiting for a revision asks etcd for progress (kube-apiserver's
/// progress requester: 100 ms).
const NUDGE: Duration = Duration::from_millis(100);

type Objects = BTreeMap<String, Arc<Object>>;

pub(super) struct Cache {
    objects: RwLock<Objects>,
    /// The revision the cache reflects.
    rv: AtomicU64,
    pub(super) hub: Hub,
    /// `rv`, for writers and readers waiting to see a revision.
    seen: tokio::sync::watch::Sender<u64>,
    /// Why the cache is not following etcd, while it is not.
    error: Mutex<Option<String>>,
    /// Asks the follower for a progress notification from etcd.
    progress_wanted: tokio::sync::Notify,
    /// Times the cache was rebuilt from a fresh list after its watch was compacted past.
    relists: AtomicU64,
}

/// The first key after every key under `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An object read from etcd: its JSON with the key's `mod_revision` as resourceVersion.
pub(super) fn decode(value: &[u8], rev: i64) -> Result<Arc<Object>> {
    let value: Value = serde_json::from_slice(value).map_err(backend)?;
    Ok(Object::new(value, u64::try_from(rev).unwrap_or(0)))
}

/// The objects under `prefix` at one revision (etcd's current one), and that revision.
async fn load(client: &Client, prefix: &str, timeout: Duration) -> Result<(Objects, u64)> {
    let mut kv = client.kv_client();
    let end = prefix_end(prefix.as_bytes());
    let mut objects = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut rev = 0i64;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(LOAD_PAGE);
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let resp = tokio::time::timeout(timeout, kv.get(from.clone(), Some(opts)))
            .await
            .map_err(|_| backend("loading the cache timed out"))?
            .map_err(backend)?;
        if rev == 0 {
            rev = resp.header().map_or(0, |h| h.revision());
        }
        for item in resp.kvs() {
            let key = item.key_str().map_err(backend)?;
            let Some(key) = key.strip_prefix(prefix) else { continue };
            objects.insert(key.to_string(), decode(item.value(), item.mod_revision())?);
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((objects, u64::try_from(rev).unwrap_or(0)))
}

/// How a watch of the prefix ended.
enum Ended {
    /// It can resume from the cache's revision.
    Broken(String),
    /// etcd no longer has the revision after the cache's: re-list.
    Compacted(i64),
}

impl Cache {
    /// Loads the objects under `prefix` at one revision and follows them from there, asking
    /// etcd for progress every `progress_every`.
    pub(super) async fn start(
        client: Client,
        prefix: String,
        history: usize,
        timeout: Duration,
        progress_every: Duration,
    ) -> Result<(Arc<Cache>, tokio::task::AbortHandle)> {
        let (objects, rv) = load(&client, &prefix, timeout).await?;
        let cache = Arc::new(Cache {
            objects: RwLock::new(objects),
            rv: AtomicU64::new(rv),
            hub: Hub::new(history, rv),
            seen: tokio::sync::watch::Sender::new(rv),
            error: Mutex::new(None),
            progress_wanted: tokio::sync::Notify::new(),
            relists: AtomicU64::new(0),
        });
        let task = tokio::spawn(follow(cache.clone(), client, prefix, timeout, progress_every));
        Ok((cache, task.abort_handle()))
    }

    pub(super) fn rv(&self) -> u64 {
        self.rv.load(Ordering::SeqCst)
    }

    pub(super) fn get(&self, key: &str) -> Option<Arc<Object>> {
        self.objects.read().ok()?.get(key).cloned()
    }

    pub(super) fn list(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: Option<&str>,
        keep: &dyn Fn(&Object) -> bool,
    ) -> Result<ListPage> {
        let objects = self.objects.read().map_err(|_| StorageError::Closed)?;
        list_snapshot(&objects, self.rv(), &self.hub, prefix, limit, continue_token, keep)
    }

    pub(super) fn error(&self) -> Option<String> {
        self.error.lock().ok()?.clone()
    }

    /// Times the cache was rebuilt after its watch was compacted past.
    pub(super) fn relists(&self) -> u64 {
        self.relists.load(Ordering::SeqCst)
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = e;
        }
    }

    /// Waits until the cache reflects revision `rev`, asking etcd for progress meanwhile (at
    /// once when `nudge_now`, else after a first [`NUDGE`]): a revision of a write elsewhere in
    /// etcd reaches the cache only as progress, while the revision of a write under the prefix
    /// comes with its event, so a writer need not ask. `TooLargeResourceVersion` when the
    /// cache has not reached `rev` within `timeout`.
    pub(super) async fn wait_for(&self, rev: u64, timeout: Duration, nudge_now: bool) -> Result<()> {
        let mut rx = self.seen.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        if !nudge_now && *rx.borrow_and_update() < rev {
            let first = (tokio::time::Instant::now() + NUDGE).min(deadline);
            let _ = tokio::time::timeout_at(first, rx.wait_for(|seen| *seen >= rev)).await;
        }
        loop {
            if *rx.borrow_and_update() >= rev {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StorageError::TooLargeResourceVersion {
                    requested: rev,
                    current: self.rv(),
                });
            }
            self.progress_wanted.notify_one();
            let nudge = (tokio::time::Instant::now() + NUDGE).min(deadline);
            if let Ok(Err(_)) = tokio::time::timeout_at(nudge, rx.changed()).await {
                return Err(StorageError::Closed);
            }
        }
    }

    /// Replaces the contents with a fresh list at `rv`; open watches end with Gone.
    fn replace(&self, fresh: Objects, rv: u64) {
        let Ok(mut objects) = self.objects.write() else { return };
        *objects = fresh;
        self.rv.store(rv, Ordering::SeqCst);
        self.relists.fetch_add(1, Ordering::SeqCst);
        self.hub.reset(rv);
        drop(objects);
        self.seen.send_replace(rv);
    }

    /// Applies one watch response's events (all of one or more revisions, in order), or moves
    /// to `progress` when there are none (a progress notification: every change up to it has
    /// been sent).
    fn apply(&self, prefix: &str, events: &[etcd_client::Event], progress: Option<u64>) {
        let Ok(mut objects) = self.objects.write() else { return };
        let mut rv = self.rv();
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let rev = u64::try_from(kv.mod_revision()).unwrap_or(0);
            // Even a change skipped below is one the cache has passed.
            rv = rv.max(rev);
            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) else {
                continue;
            };
            let prev = objects.get(key).cloned();
            match ev.event_type() {
                etcd_client::EventType::Put => {
                    let object = match decode(kv.value(), kv.mod_revision()) {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::warn!(key, error = %e, "etcd holds a value that is not JSON; skipped");
                            continue;
                        }
                    };
                    objects.insert(key.to_string(), object.clone());
                    let type_ = if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    out.push(Arc::new(WatchEvent {
                        type_,
                        key: key.to_string(),
                        object,
                        prev,
                    }));
                }
                etcd_client::EventType::Delete => {
                    objects.remove(key);
                    let last = prev.or_else(|| {
                        let p = ev.prev_kv()?;
                        decode(p.value(), p.mod_revision()).ok()
                    });
                    if let Some(last) = last {
                        out.push(Arc::new(WatchEvent {
                            type_: EventType::Deleted,
                            key: key.to_string(),
                            object: Object::new(last.value(), rev),
                            prev: Some(last),
                        }));
                    }
                }
            }
        }
        if let Some(p) = progress {
            rv = rv.max(p);
        }
        self.rv.store(rv, Ordering::SeqCst);
        // Under the lock, as the embedded store does: a list sees every change it reflects in
        // the history.
        self.hub.publish(out);
        self.hub.progress(rv);
        drop(objects);
        self.seen.send_replace(rv);
    }
}

/// Follows etcd from the cache's revision on: re-establishes a broken watch, re-lists when the
/// watch was compacted past.
async fn follow(cache: Arc<Cache>, client: Client, prefix: String, timeout: Duration, progress_every: Duration) {
    loop {
        match watch_once(&cache, client.clone(), &prefix, timeout, progress_every).await {
            Ended::Broken(why) => {
                // Once per outage, not once per attempt.
                if cache.error().as_deref() != Some(why.as_str()) {
                    tracing::warn!(prefix, "{why}; resuming from revision {}", cache.rv() + 1);
                }
                cache.set_error(Some(why));
            }
            Ended::Compacted(at) => {
                let why = format!(
                    "the etcd watch from revision {} was compacted (at {at}); re-listing {prefix}",
                    cache.rv() + 1
                );
                tracing::warn!("{why}");
                cache.set_error(Some(why));
                match load(&client, &prefix, timeout).await {
                    Ok((objects, rv)) => {
                        cache.replace(objects, rv);
                        tracing::info!(prefix, rv, "watch cache re-listed; open watches ended with 410");
                        continue;
                    }
                    Err(e) => cache.set_error(Some(format!("re-listing {prefix} after a compaction failed: {e}"))),
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One etcd watch from the revision after the cache's, applied until it ends.
async fn watch_once(
    cache: &Cache,
    mut client: Client,
    prefix: &str,
    timeout: Duration,
    progress_every: Duration,
) -> Ended {
    let next = cache.rv() + 1;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_progress_notify()
        .with_start_revision(i64::try_from(next).unwrap_or(i64::MAX));
    let (mut requests, mut responses) =
        match tokio::time::timeout(timeout, client.watch(prefix.as_bytes(), Some(opts))).await {
            Ok(Ok(stream)) => stream.split(),
            Ok(Err(e)) => return Ended::Broken(format!("cannot watch etcd: {e}")),
            Err(_) => return Ended::Broken(format!("cannot watch etcd: no answer within {timeout:?}")),
        };
    let mut tick = tokio::time::interval(progress_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        let resp = tokio::select! {
            r = responses.message() => r,
            _ = cache.progress_wanted.notified() => {
                if let Err(e) = requests.request_progress().await {
                    return Ended::Broken(format!("the etcd watch failed: {e}"));
                }
                continue;
            }
            _ = tick.tick() => {
                if let Err(e) = requests.request_progress().await {
                    return Ended::Broken(format!("the etcd watch failed: {e}"));
                }
                continue;
            }
        };
        let resp = match resp {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ended::Broken("the etcd watch ended".into()),
            Err(e) => return Ended::Broken(format!("the etcd watch failed: {e}")),
        };
        if resp.compact_revision() > 0 {
            return Ended::Compacted(resp.compact_revision());
        }
        if resp.canceled() {
            return Ended::Broken(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
        }
        cache.set_error(None);
        if resp.created() {
            continue;
        }
        // A response without events is a progress notification: every change up to its
        // header's revision has been delivered.
        let progress = resp
            .events()
            .is_empty()
            .then(|| resp.header().map(|h| u64::try_from(h.revision()).unwrap_or(0)))
            .flatten();
        cache.apply(prefix, resp.events(), progress);
    }
}
