//! A kind of admission configuration followed from kube-apiserver with a reflector (watched,
//! not polled), and whether its first list has arrived.

use futures::StreamExt;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The cached objects of one kind.
pub struct Followed<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq,
{
    pub store: Store<K>,
    synced: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    what: &'static str,
}

impl<K> Followed<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Hash + Eq + Clone,
{
    /// Starts following `api` in the background. `what` names the kind in logs and readiness.
    pub fn start(api: Api<K>, what: &'static str) -> Followed<K> {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let last_error: Arc<Mutex<Option<String>>> = Default::default();
        let stream = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let (flag, ready) = (synced.clone(), store.clone());
        tokio::spawn(async move {
            if ready.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(kind = what, objects = ready.len(), "admission configuration synced");
            }
        });
        let errors = last_error.clone();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(r) = stream.next().await {
                let err = r.err().map(|e| e.to_string());
                if let Some(e) = &err {
                    tracing::warn!(kind = what, error = %e, "watch failed; retrying with backoff (the server needs get/list/watch on it)");
                }
                if let Ok(mut last) = errors.lock() {
                    *last = err;
                }
            }
        });
        Followed {
            store,
            synced,
            last_error,
            what,
        }
    }

    /// A cache holding `objects`, synced, that follows nothing (for tests).
    pub fn fixed(objects: Vec<K>, what: &'static str) -> Followed<K> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Followed {
            store,
            synced: Arc::new(AtomicBool::new(true)),
            last_error: Default::default(),
            what,
        }
    }

    /// Why the cache cannot be used yet, if so.
    pub fn not_ready(&self) -> Option<String> {
        if self.synced.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        Some(match last {
            Some(e) => format!("{} not synced yet: {e}", self.what),
            None => format!("{} not synced yet", self.what),
        })
    }

    /// The objects, sorted by name (the order kube-apiserver calls webhooks in).
    pub fn sorted(&self) -> Vec<Arc<K>> {
        let mut all = self.store.state();
        all.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        all
    }
}
