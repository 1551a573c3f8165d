//! Whether etcd answers now: a linearizable read every second, as kube-apiserver's `etcd`
//! readiness check does. The watch cache alone notices an outage only once its stream breaks
//! and keeps serving what it has; the server uses this to fail requests at once (503) and to
//! report `/readyz` while etcd is away, and the store catches up by itself when it is back.

use super::{errors, EtcdOptions};
use crate::apiserver::storage::{Result, StorageError};
use etcd_client::GetOptions;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time between two checks.
const INTERVAL: Duration = Duration::from_secs(1);

/// The latest answer of the check, kept current by a background task.
pub struct Probe {
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// Checks once, then keeps checking in the background (on a connection of its own, so a
    /// store's busy watch cannot hide a dead endpoint).
    pub async fn start(opts: &EtcdOptions) -> Result<Probe> {
        let mut kv = opts.client().await?.kv_client();
        let key = opts.prefix.clone().into_bytes();
        let timeout = opts.request_timeout;
        let error = Arc::new(Mutex::new(None));
        check(&mut kv, &key, timeout, &error).await;
        let state = error.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(INTERVAL).await;
                check(&mut kv, &key, timeout, &state).await;
            }
        });
        Ok(Probe {
            error,
            task: task.abort_handle(),
        })
    }

    /// Why etcd is unreachable, if it was at the last check.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok()?.clone()
    }
}

async fn check(kv: &mut etcd_client::KvClient, key: &[u8], timeout: Duration, state: &Mutex<Option<String>>) {
    // One key, keys only: cheap for etcd, yet it needs a quorum (a linearizable read).
    let read = kv.get(key, Some(GetOptions::new().with_keys_only().with_limit(1)));
    let failure = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(errors::request_error(e)),
        Err(_) => Some(errors::timed_out(timeout)),
    };
    let now = failure.map(|e| match e {
        StorageError::Unavailable(why) | StorageError::Timeout(why) | StorageError::Backend(why) => why,
        e => e.to_string(),
    });
    let Ok(mut slot) = state.lock() else { return };
    match (&*slot, &now) {
        (None, Some(why)) => {
            tracing::warn!(error = %why, "etcd unreachable: storage requests fail with 503 until it answers")
        }
        (Some(_), None) => tracing::info!("etcd reachable again"),
        _ => {}
    }
    *slot = now;
}
