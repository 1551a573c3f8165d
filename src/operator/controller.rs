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
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
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
    let controller = Controller::new(
        Api::<ExtensionApiServer>::all(client.clone()),
        watcher::Config::default(),
    )
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
    let store = controller.store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        options,
        clock: system_clock(),
        store: Some(store.clone()),
        probe: crate::operator::reconcile::probe::tls_probe(),
    });
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            tracing::info!("caches synced");
            ready.store(true, Ordering::SeqCst);
        }
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
