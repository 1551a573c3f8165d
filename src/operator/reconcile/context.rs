//! What every reconcile shares: the client, the Event recorder, metrics, the builders' inputs,
//! a clock, the caches (of all ExtensionApiServers and of the children), the per-object
//! back-off and the certificate probe.

use super::build::BuildOptions;
use super::cache::Caches;
use super::probe;
use crate::crd::ExtensionApiServer;
use crate::operator::events::Recorder;
use crate::operator::metrics::Metrics;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Source of the current time, in Unix seconds; replaced by a fixed clock in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| jiff::Timestamp::now().as_second())
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The one Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Inputs of the builders.
    pub options: BuildOptions,
    /// Clock.
    pub clock: Clock,
    /// Cache of all ExtensionApiServers, to detect two claiming the same group/version.
    pub store: Option<Store<ExtensionApiServer>>,
    /// Observes which certificate each server replica presents (during a CA rotation).
    pub probe: probe::LeafProbe,
    /// The children as the watches last delivered them.
    pub caches: Caches,
    /// Retry delays per ExtensionApiServer.
    pub backoff: Backoff,
    /// Set once `apiregistration.k8s.io/v1` was seen served: it does not go away, so it is not
    /// asked again on every reconcile.
    pub registration_served: Arc<AtomicBool>,
}

impl Context {
    /// The same context with another client (one that counts a reconcile's requests).
    pub fn with_client(&self, client: Client) -> Context {
        Context {
            client,
            recorder: self.recorder.clone(),
            metrics: self.metrics.clone(),
            options: self.options.clone(),
            clock: self.clock.clone(),
            store: self.store.clone(),
            probe: self.probe.clone(),
            caches: self.caches.clone(),
            backoff: self.backoff.clone(),
            registration_served: self.registration_served.clone(),
        }
    }

    /// Publishes an Event about `eas`. An Event that cannot be written must not fail the
    /// reconcile, so a failure is only logged.
    pub async fn publish(&self, eas: &ExtensionApiServer, type_: EventType, reason: &str, note: String) {
        if let Err(e) = self.recorder.publish(type_, reason, &note, &eas.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }
}

/// Exponential back-off with jitter, per ExtensionApiServer: transient failures (409, 429, 5xx,
/// an unreachable API server) retry after 1 s, 2 s, 4 s, … up to 5 minutes, each delay scaled by
/// a random factor in [0.75, 1.25) so many objects failing together do not retry together.
/// Failures that need a human (403, 422, …) retry every minute: a fix of the operator's RBAC
/// sends no event that would trigger a reconcile.
#[derive(Clone, Default)]
pub struct Backoff {
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

/// First delay after a transient failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay after transient failures.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Delay after a failure that needs a change elsewhere.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(60);

impl Backoff {
    /// The delay before retrying `key` after one more failure.
    pub fn next(&self, key: &str, transient: bool) -> Duration {
        if !transient {
            return PERMANENT_RETRY;
        }
        let n = {
            let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (n - 1).min(16));
        exp.min(BACKOFF_MAX).mul_f64(jitter())
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &str) {
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key);
    }
}

/// A factor in [0.75, 1.25), from the randomly keyed SipHash the standard library seeds.
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    0.75 + (h.finish() % 1000) as f64 / 2000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let b = Backoff::default();
        let d1 = b.next("a", true);
        let d2 = b.next("a", true);
        let d3 = b.next("a", true);
        assert!((0.75..1.25).contains(&d1.as_secs_f64()), "{d1:?}");
        assert!((1.5..2.5).contains(&d2.as_secs_f64()), "{d2:?}");
        assert!((3.0..5.0).contains(&d3.as_secs_f64()), "{d3:?}");
        for _ in 0..20 {
            b.next("a", true);
        }
        assert!(b.next("a", true) < Duration::from_secs(376));
        assert!(b.next("b", true) < Duration::from_secs(2), "per object");
        b.reset("a");
        assert!(b.next("a", true) < Duration::from_secs(2));
        assert_eq!(b.next("a", false), PERMANENT_RETRY);
    }
}
