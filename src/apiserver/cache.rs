//! A small TTL cache with single flight: when an entry is missing or expired, the first caller
//! asks kube-apiserver and concurrent callers for the same key wait for that one answer, so an
//! expiring entry under load costs one TokenReview/SubjectAccessReview, not one per request.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Entries beyond this count trigger a sweep of expired ones.
const SWEEP_ABOVE: usize = 10_000;

struct Entry<V> {
    created: Instant,
    value: OnceCell<V>,
}

/// Answers cached for a fixed time after they were asked for.
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, Arc<Entry<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache keeping answers for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached answer for `key`, or the answer of `fetch` (shared with concurrent callers).
    /// Errors are not cached.
    pub async fn get_or_fetch<E, F, Fut>(&self, key: K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.len() > SWEEP_ABOVE {
                let ttl = self.ttl;
                entries.retain(|_, e| e.created.elapsed() < ttl);
            }
            match entries.get(&key) {
                Some(e) if e.created.elapsed() < self.ttl => e.clone(),
                _ => {
                    let e = Arc::new(Entry {
                        created: Instant::now(),
                        value: OnceCell::new(),
                    });
                    entries.insert(key, e.clone());
                    e
                }
            }
        };
        entry.value.get_or_try_init(fetch).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_misses_fetch_once_and_errors_are_retried() {
        let cache: Arc<TtlCache<&str, u32>> = Arc::new(TtlCache::new(Duration::from_secs(10)));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch("k", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("join"), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let failed = cache.get_or_fetch("e", || async { Err::<u32, _>("down") }).await;
        assert_eq!(failed, Err("down"));
        assert_eq!(cache.get_or_fetch("e", || async { Ok::<_, &str>(1) }).await, Ok(1));
    }

    #[tokio::test]
    async fn entries_expire() {
        let cache: TtlCache<u8, u8> = TtlCache::new(Duration::from_millis(30));
        assert_eq!(cache.get_or_fetch(1, || async { Ok::<_, ()>(1) }).await, Ok(1));
        assert_eq!(cache.get_or_fetch(1, || async { Ok::<_, ()>(2) }).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(cache.get_or_fetch(1, || async { Ok::<_, ()>(3) }).await, Ok(3));
    }
}
