//! Fan-out of changes to watchers, with a bounded history for resuming from a resourceVersion.
//! History and broadcast are updated under one lock, so a watcher that replays history and
//! then subscribes sees every event exactly once.
//!
//! Besides events, the broadcast carries two markers the etcd backend's watch cache needs:
//! progress (etcd confirmed every change up to a revision was delivered, so bookmarks may carry
//! it although no event under any prefix had it) and reset (the cache was rebuilt from a fresh
//! list after its etcd watch was compacted past: every open watch ends with 410 Gone, so its
//! client re-lists, as kube-apiserver's cacher ends its watchers when it re-lists).

use super::{EventType, Object, Result, StorageError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One change.
#[derive(Debug)]
pub struct WatchEvent {
    /// Kind of change.
    pub type_: EventType,
    /// Storage key.
    pub key: String,
    /// The object after the change (before it, for deletes, with the delete's resourceVersion).
    pub object: Arc<Object>,
    /// The object before a modification, so a filtered watch can tell an object entering its
    /// selection (ADDED) from one leaving it (DELETED), as kube-apiserver's watch cache does.
    pub prev: Option<Arc<Object>>,
}

impl WatchEvent {
    /// resourceVersion of the change.
    pub fn rv(&self) -> u64 {
        self.object.rv
    }
}

struct State {
    history: VecDeque<Arc<WatchEvent>>,
    /// Every event with rv > `compacted` is in `history`.
    compacted: u64,
    /// The newest version published, by an event or a progress marker: every change up to it
    /// is in `history` (or older than `compacted`).
    top: u64,
}

/// What the broadcast carries.
#[derive(Clone, Debug)]
enum Msg {
    Event(Arc<WatchEvent>),
    /// Every change up to this version has been published.
    Progress(u64),
    /// The history was dropped and restarts at this version: open watches end with Gone.
    Reset(u64),
}

/// The hub.
pub(super) struct Hub {
    state: Mutex<State>,
    tx: broadcast::Sender<Msg>,
    capacity: usize,
}

/// Events for one watcher: first the replayed history, then live ones.
pub struct WatchStream {
    replay: VecDeque<Arc<WatchEvent>>,
    rx: broadcast::Receiver<Msg>,
    /// Set once the stream answered Gone: it has nothing more to say.
    ended: bool,
    prefix: String,
    /// The start version: a live event at or below it is already in the watcher's state (a
    /// list answered at that version may include writes not yet published to the hub).
    from_rv: u64,
    /// The newest history entry when the watch began: once the replay is drained, every
    /// change up to it has been seen.
    replay_top: u64,
    /// The newest resourceVersion of any change this stream has passed, under its prefix or
    /// not: bookmarks carry it, so a watcher of a quiet resource keeps up with the server's
    /// version (kube-apiserver's bookmarks carry its watch cache's version, which follows
    /// etcd's revision across all resources) instead of falling out of the history.
    seen_rv: u64,
}

impl WatchStream {
    /// The newest resourceVersion whose changes this stream has fully delivered or skipped.
    pub fn seen_rv(&self) -> u64 {
        self.seen_rv
    }

    /// The next event under the prefix. `Err(Gone)` means the watcher fell too far behind (its
    /// buffer overflowed) and must re-list, as a kube-apiserver watcher would.
    pub async fn next(&mut self) -> Option<Result<Arc<WatchEvent>>> {
        loop {
            if self.ended {
                return None;
            }
            if self.replay.is_empty() {
                self.seen_rv = self.seen_rv.max(self.replay_top);
            }
            let ev = match self.replay.pop_front() {
                Some(ev) => ev,
                None => match self.rx.recv().await {
                    Ok(Msg::Event(ev)) => ev,
                    Ok(Msg::Progress(rv)) => {
                        self.seen_rv = self.seen_rv.max(rv);
                        continue;
                    }
                    Ok(Msg::Reset(oldest)) => {
                        self.ended = true;
                        return Some(Err(StorageError::Gone {
                            requested: self.seen_rv,
                            oldest,
                        }));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.ended = true;
                        return Some(Err(StorageError::Gone {
                            requested: 0,
                            oldest: 0,
                        }));
                    }
                },
            };
            if ev.rv() <= self.from_rv {
                continue;
            }
            self.seen_rv = self.seen_rv.max(ev.rv());
            if ev.key.starts_with(&self.prefix) {
                return Some(Ok(ev));
            }
        }
    }
}

impl Hub {
    pub(super) fn new(capacity: usize, current_rv: u64) -> Hub {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Hub {
            state: Mutex::new(State {
                history: VecDeque::with_capacity(capacity),
                compacted: current_rv,
                top: current_rv,
            }),
            tx,
            capacity,
        }
    }

    /// Records and broadcasts committed events, in resourceVersion order.
    pub(super) fn publish(&self, events: Vec<Arc<WatchEvent>>) {
        let Ok(mut st) = self.state.lock() else { return };
        for ev in events {
            if st.history.len() == self.capacity {
                if let Some(old) = st.history.pop_front() {
                    st.compacted = old.rv();
                }
            }
            st.top = st.top.max(ev.rv());
            st.history.push_back(ev.clone());
            // No receivers is fine.
            let _ = self.tx.send(Msg::Event(ev));
        }
    }

    /// Records that every change up to `rv` has been published (an etcd progress
    /// notification), so watchers' bookmarks may carry it.
    pub(super) fn progress(&self, rv: u64) {
        let Ok(mut st) = self.state.lock() else { return };
        if rv > st.top {
            st.top = rv;
            let _ = self.tx.send(Msg::Progress(rv));
        }
    }

    /// Drops the history: it restarts at `rv`, and every open watch ends with Gone.
    pub(super) fn reset(&self, rv: u64) {
        let Ok(mut st) = self.state.lock() else { return };
        st.history.clear();
        st.compacted = rv;
        st.top = rv;
        let _ = self.tx.send(Msg::Reset(rv));
    }

    /// The oldest resourceVersion a watch can start from.
    pub(super) fn oldest(&self) -> u64 {
        self.state.lock().map(|s| s.compacted).unwrap_or(0)
    }

    /// For keys under `prefix` from `lower` on that changed after `at`, their state at `at`
    /// (`None`: they did not exist). Complete for `at` not older than [`Hub::oldest`].
    pub(super) fn state_at(&self, lower: &str, prefix: &str, at: u64) -> BTreeMap<String, Option<Arc<Object>>> {
        let mut out = BTreeMap::new();
        let Ok(st) = self.state.lock() else { return out };
        // The first change after `at` of each key tells its state before.
        // History is in version order: start at the first change after `at`.
        let first = st.history.partition_point(|e| e.rv() <= at);
        for ev in st.history.range(first..) {
            if ev.key.as_str() < lower || !ev.key.starts_with(prefix) || out.contains_key(&ev.key) {
                continue;
            }
            let before = match ev.type_ {
                EventType::Added => None,
                EventType::Modified | EventType::Deleted => ev.prev.clone(),
            };
            out.insert(ev.key.clone(), before);
        }
        out
    }

    /// A watch of `prefix` that sees every change after `from_rv`.
    pub(super) fn watch(&self, prefix: &str, from_rv: u64) -> Result<WatchStream> {
        let st = self.state.lock().map_err(|_| StorageError::Closed)?;
        if from_rv < st.compacted {
            return Err(StorageError::Gone {
                requested: from_rv,
                oldest: st.compacted,
            });
        }
        let replay = st
            .history
            .iter()
            .filter(|e| e.rv() > from_rv && e.key.starts_with(prefix))
            .cloned()
            .collect();
        let rx = self.tx.subscribe();
        let replay_top = st.top.max(from_rv);
        Ok(WatchStream {
            replay,
            rx,
            ended: false,
            prefix: prefix.to_string(),
            from_rv,
            replay_top,
            seen_rv: from_rv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(key: &str, rv: u64) -> Arc<WatchEvent> {
        Arc::new(WatchEvent {
            type_: EventType::Added,
            key: key.into(),
            object: Object::new(json!({"metadata": {"name": key}}), rv),
            prev: None,
        })
    }

    async fn next_rv(s: &mut WatchStream) -> u64 {
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), s.next()).await;
        got.ok().flatten().and_then(|r| r.ok()).map_or(0, |e| e.rv())
    }

    #[tokio::test]
    async fn live_events_at_or_below_the_start_are_not_sent_again() {
        // A list may answer at a version whose events the writer has not published yet: the
        // watch that follows it must skip them when they arrive.
        let hub = Hub::new(16, 0);
        hub.publish(vec![ev("/a/1", 1)]);
        let mut s = hub.watch("/a/", 3).expect("watch");
        hub.publish(vec![ev("/a/2", 2), ev("/a/3", 3), ev("/a/4", 4)]);
        assert_eq!(next_rv(&mut s).await, 4);
    }

    #[tokio::test]
    async fn a_quiet_prefix_follows_the_server_version() {
        let hub = Hub::new(8, 0);
        let mut s = hub.watch("/quiet/", 0).expect("watch");
        // More writes elsewhere than the history holds, read as they come (as a watch does).
        for chunk in [1..=10, 11..=20] {
            hub.publish(chunk.map(|rv| ev("/busy/x", rv)).collect());
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), s.next()).await;
            assert_eq!(s.seen_rv() % 10, 0);
        }
        hub.publish(vec![ev("/quiet/q", 21)]);
        assert_eq!(next_rv(&mut s).await, 21);
        hub.publish((22..=30).map(|rv| ev("/busy/x", rv)).collect());
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), s.next()).await;
        assert_eq!(s.seen_rv(), 30);
        // Resuming from that version works, though the quiet prefix's last change is gone.
        assert!(hub.watch("/quiet/", 21).is_err());
        assert!(hub.watch("/quiet/", s.seen_rv()).is_ok());
        // A new watch has seen the history up to its newest entry once it has replayed.
        let mut fresh = hub.watch("/quiet/", 25).expect("watch");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), fresh.next()).await;
        assert_eq!(fresh.seen_rv(), 30);
    }

    #[tokio::test]
    async fn progress_moves_a_watchers_version_after_the_events_before_it() {
        let hub = Hub::new(8, 0);
        let mut s = hub.watch("/a/", 0).expect("watch");
        hub.publish(vec![ev("/a/1", 1)]);
        hub.progress(5);
        // A progress at or below what was published says nothing new.
        hub.progress(3);
        assert_eq!(next_rv(&mut s).await, 1);
        assert_eq!(s.seen_rv(), 1, "the progress comes after the event before it");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), s.next()).await;
        assert_eq!(s.seen_rv(), 5);
        hub.publish(vec![ev("/a/6", 6)]);
        assert_eq!(next_rv(&mut s).await, 6);
        // A watch that starts after the progress has seen up to it once its replay is done.
        hub.progress(9);
        let mut late = hub.watch("/a/", 6).expect("watch");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), late.next()).await;
        assert_eq!(late.seen_rv(), 9);
    }

    #[tokio::test]
    async fn a_reset_ends_open_watches_with_gone_and_restarts_the_history() {
        let hub = Hub::new(8, 0);
        hub.publish(vec![ev("/a/1", 1), ev("/a/2", 2)]);
        let mut s = hub.watch("/a/", 2).expect("watch");
        hub.reset(10);
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), s.next()).await;
        match got {
            Ok(Some(Err(StorageError::Gone { requested, oldest }))) => assert_eq!((requested, oldest), (2, 10)),
            other => panic!("expected Gone, got {other:?}"),
        }
        assert!(s.next().await.is_none(), "an ended watch stays ended");
        assert!(matches!(hub.watch("/a/", 2), Err(StorageError::Gone { .. })));
        let mut after = hub.watch("/a/", 10).expect("a watch from the new version");
        hub.publish(vec![ev("/a/3", 11)]);
        assert_eq!(next_rv(&mut after).await, 11);
    }
}
