//! Wiring of the controller: which objects are watched and how they map to owners.

use crate::crd::ExtensionApiServer;
use crate::operator::metrics::Metrics;
use crate::operator::reconcile::build::BuildOptions;
use crate::operator::reconcile::names::{MANAGER, OWNER_NAMESPACE_LABEL, OWNER_NAME_LABEL};
use crate::operator::reconcile::{error_policy, reconcile, system_clock, Context};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, reflector, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Maps a labelled child (cluster-scoped ones and the kube-system RoleBinding) to its owner.
fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<ExtensionApiServer>> {
    let labels = obj.meta().labels.as_ref()?;
    let ns = labels.get(OWNER_NAMESPACE_LABEL)?;
    let name = labels.get(OWNER_NAME_LABEL)?;
    Some(ObjectRef::new(name).within(ns))
}

/// Runs the controller until `shutdown` completes. `ready` is set once the caches synced.
pub async fn run(
    client: Client,
    options: BuildOptions,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Only our children are cached: every one carries the managed-by label.
    let ours = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // The main reflector is ours, so readiness comes from the watch itself: the initial list is
    // in the cache when `InitDone` passes. (Waiting on `Store::wait_until_ready` beside the
    // controller does not work: its one-shot channel wakes only the last of two waiters, so
    // this task was never woken and `/readyz` stayed false.)
    let (store, writer) = reflector::store();
    let main = reflector(
        writer,
        watcher(
            Api::<ExtensionApiServer>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone)) && !ready.swap(true, Ordering::SeqCst) {
            tracing::info!("caches synced");
        }
    })
    .applied_objects();
    let controller = Controller::for_stream(main, store.clone())
        .owns(Api::<Secret>::all(client.clone()), ours.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), ours.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), ours.clone())
        .owns(Api::<Service>::all(client.clone()), ours.clone())
        .owns(Api::<Deployment>::all(client.clone()), ours.clone())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), ours.clone())
        .watches(Api::<APIService>::all(client.clone()), ours.clone(), owner_of)
        .watches(Api::<ClusterRole>::all(client.clone()), ours.clone(), owner_of)
        .watches(Api::<ClusterRoleBinding>::all(client.clone()), ours.clone(), owner_of)
        .watches(
            Api::<RoleBinding>::namespaced(client.clone(), crate::operator::reconcile::names::KUBE_SYSTEM),
            ours,
            owner_of,
        );
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        options,
        clock: system_clock(),
        store: Some(store.clone()),
        probe: crate::operator::reconcile::probe::tls_probe(),
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(namespace = ?obj.namespace, name = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_api::FakeApi;
    use std::time::{Duration, Instant};

    /// `/readyz` depends on this flag; it must turn true once the initial list is cached, even
    /// with no ExtensionApiServer at all (no reconcile ever runs then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_once_the_initial_list_is_cached() {
        let api = FakeApi::default();
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            api.client_with_latency(Duration::from_millis(200)),
            BuildOptions {
                default_server_image: "server:test".into(),
            },
            Arc::new(Metrics::default()),
            Reporter {
                controller: "test".into(),
                instance: None,
            },
            ready.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the controller never reported its caches synced"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listed = api
            .take_requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == "/apis/aggregation.dev/v1alpha1/extensionapiservers");
        assert!(listed, "ready before the ExtensionApiServers were listed");
        let _ = stop.send(());
        assert!(
            tokio::time::timeout(Duration::from_secs(20), task).await.is_ok(),
            "controller did not stop"
        );
    }
}
