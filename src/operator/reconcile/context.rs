//! What every reconcile shares: the client, the Event recorder, metrics, the builders' inputs,
//! a clock, the cache of all ExtensionApiServers and the certificate probe.

use super::build::BuildOptions;
use super::probe;
use crate::crd::ExtensionApiServer;
use crate::operator::metrics::Metrics;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use std::sync::Arc;

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
}

impl Context {
    /// Publishes an Event about `eas`. An Event that cannot be written must not fail the
    /// reconcile, so a failure is only logged.
    pub async fn publish(&self, eas: &ExtensionApiServer, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &eas.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }
}
