//! The watch cache: every object under the prefix, kept current by one etcd watch, with a
//! bounded history of events ([`Hub`]) for lists at an earlier revision and resumed watches.

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
const RETRY: Duration = Duration::from_millis(500);

pub(super) struct Cache {
    objects: RwLock<BTreeMap<String, Arc<Object>>>,
    /// The revision the cache reflects.
    rv: AtomicU64,
    pub(super) hub: Hub,
    /// `rv`, for writers waiting to see their revision.
    seen: tokio::sync::watch::Sender<u64>,
    /// Why the cache is not following etcd, while it is not.
    error: Mutex<Option<String>>,
    /// Set once the watch was compacted past: the cache can no longer catch up by itself.
    broken: Mutex<Option<String>>,
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

impl Cache {
    /// Loads the objects under `prefix` at one revision and follows them from there.
    pub(super) async fn start(
        client: Client,
        prefix: String,
        history: usize,
        timeout: Duration,
    ) -> Result<(Arc<Cache>, tokio::task::AbortHandle)> {
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
                let Some(key) = key.strip_prefix(&prefix) else { continue };
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
        let rv = u64::try_from(rev).unwrap_or(0);
        let cache = Arc::new(Cache {
            objects: RwLock::new(objects),
            rv: AtomicU64::new(rv),
            hub: Hub::new(history, rv),
            seen: tokio::sync::watch::Sender::new(rv),
            error: Mutex::new(None),
            broken: Mutex::new(None),
        });
        let task = tokio::spawn(follow(cache.clone(), client, prefix));
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
        let broken = self.broken.lock().ok()?.clone();
        broken.or_else(|| self.error.lock().ok()?.clone())
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = e;
        }
    }

    /// Waits until the cache reflects revision `rev`.
    pub(super) async fn wait_for(&self, rev: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.seen.subscribe();
        let outcome = tokio::time::timeout(timeout, rx.wait_for(|seen| *seen >= rev))
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StorageError::Closed),
            Err(_) => Err(backend(format!(
                "revision {rev} was committed, but the watch cache has not seen it within {timeout:?}"
            ))),
        }
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
            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) else {
                continue;
            };
            let rev = u64::try_from(kv.mod_revision()).unwrap_or(0);
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
            rv = rv.max(rev);
        }
        if let Some(p) = progress {
            rv = rv.max(p);
        }
        self.rv.store(rv, Ordering::SeqCst);
        // Under the lock, as the embedded store does: a list sees every change it reflects in
        // the history.
        self.hub.publish(out);
        drop(objects);
        self.seen.send_replace(rv);
    }
}

/// Follows etcd from the cache's revision on, re-establishing the watch when it breaks.
async fn follow(cache: Arc<Cache>, mut client: Client, prefix: String) {
    loop {
        let next = cache.rv() + 1;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(i64::try_from(next).unwrap_or(i64::MAX));
        match client.watch(prefix.as_bytes(), Some(opts)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            let why = format!(
                                "the etcd watch from revision {next} was compacted (at {}); the watch cache \
                                 cannot catch up without a restart",
                                resp.compact_revision()
                            );
                            tracing::error!("{why}");
                            if let Ok(mut b) = cache.broken.lock() {
                                *b = Some(why);
                            }
                            return;
                        }
                        if resp.canceled() {
                            cache.set_error(Some(format!("etcd cancelled the watch: {}", resp.cancel_reason())));
                            break;
                        }
                        cache.set_error(None);
                        if resp.created() {
                            continue;
                        }
                        let progress = resp
                            .events()
                            .is_empty()
                            .then(|| resp.header().map(|h| u64::try_from(h.revision()).unwrap_or(0)))
                            .flatten();
                        cache.apply(&prefix, resp.events(), progress);
                    }
                    Ok(None) => {
                        cache.set_error(Some("the etcd watch ended".into()));
                        break;
                    }
                    Err(e) => {
                        cache.set_error(Some(format!("the etcd watch failed: {e}")));
                        break;
                    }
                }
            },
            Err(e) => cache.set_error(Some(format!("cannot watch etcd: {e}"))),
        }
        tokio::time::sleep(RETRY).await;
    }
}
