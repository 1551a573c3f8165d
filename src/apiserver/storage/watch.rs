//! Fan-out of changes to watchers, with a bounded history for resuming from a resourceVersion.
//! History and broadcast are updated under one lock, so a watcher that replays history and
//! then subscribes sees every event exactly once.

use super::{EventType, Object, Result, StorageError};
use std::collections::VecDeque;
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
}

/// The hub.
pub(super) struct Hub {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
    capacity: usize,
}

/// Events for one watcher: first the replayed history, then live ones.
pub struct WatchStream {
    replay: VecDeque<Arc<WatchEvent>>,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    prefix: String,
}

impl WatchStream {
    /// The next event under the prefix. `Err(Gone)` means the watcher fell too far behind (its
    /// buffer overflowed) and must re-list, as a kube-apiserver watcher would.
    pub async fn next(&mut self) -> Option<Result<Arc<WatchEvent>>> {
        loop {
            let ev = match self.replay.pop_front() {
                Some(ev) => ev,
                None => match self.rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some(Err(StorageError::Gone {
                            requested: 0,
                            oldest: 0,
                        }))
                    }
                },
            };
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
            st.history.push_back(ev.clone());
            // No receivers is fine.
            let _ = self.tx.send(ev);
        }
    }

    /// The oldest resourceVersion a watch can start from.
    pub(super) fn oldest(&self) -> u64 {
        self.state.lock().map(|s| s.compacted).unwrap_or(0)
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
        Ok(WatchStream {
            replay,
            rx,
            prefix: prefix.to_string(),
        })
    }
}
