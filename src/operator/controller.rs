//! Wiring of the controller: which objects are watched, what is cached, and how they map to
//! owners.
//!
//! - the ExtensionApiServers: the main reflector (ours, so readiness follows its initial list);
//! - every child kind, labelled as ours: one reflector each ([`cache`]), stripped of
//!   `managedFields`, also triggering the owner (owner reference, or owner labels for
//!   cluster-scoped children and the kube-system RoleBinding);
//! - **every** APIService, so one deleted by its foreign owner is taken over at once: mapped to
//!   the ExtensionApiServers claiming its group/version (there are few APIServices);
//! - Secrets, metadata only and not cached, so a `caSecretRef` or etcd `secretRef` Secret that
//!   changes (or appears) triggers the ExtensionApiServers naming it without holding every
//!   Secret of the cluster in memory;
//! - kube-system/extension-apiserver-authentication: cached; a change reconciles everything.

use crate::crd::ExtensionApiServer;
use crate::operator::events::Recorder;
use crate::operator::metrics::Metrics;
use crate::operator::reconcile::build::BuildOptions;
use crate::operator::reconcile::cache::{self, Caches, Sink, Slimming, SyncGate, CACHE_COUNT};
use crate::operator::reconcile::names::{
    api_service_name, labelled_owner, KUBE_SYSTEM, OWNER_NAMESPACE_LABEL, OWNER_NAME_LABEL,
};
use crate::operator::reconcile::{aggregation, error_policy, reconcile, system_clock, Context};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Events within this window trigger one reconcile: creating a server's children sends a burst
/// of a dozen watch events, and each reconcile in the burst would see caches half updated.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles at once. Unbounded, a thousand new objects would open a TLS connection each
/// (kube's client speaks HTTP/1.1, one request per connection at a time) and keep tens of MiB of
/// buffers; a few are enough to keep the API server busy.
const CONCURRENCY: u16 = 8;

/// Maps a labelled child (cluster-scoped ones and the kube-system RoleBinding) to its owner.
fn owner_of<K: Resource>(obj: &K) -> Option<ObjectRef<ExtensionApiServer>> {
    let labels = obj.meta().labels.as_ref()?;
    let ns = labels.get(OWNER_NAMESPACE_LABEL)?;
    let name = labels.get(OWNER_NAME_LABEL)?;
    Some(ObjectRef::new(name).within(ns))
}

/// A watch of `api` whose events go to `sink` (a cache), that opens its part of `gate` after its
/// first initial list and yields every object it touches (stripped of managedFields), for the
/// controller to map to owners.
fn cached_stream<K>(
    api: Api<K>,
    config: watcher::Config,
    mut sink: impl Sink<K>,
    gate: Arc<SyncGate>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let synced = AtomicBool::new(false);
    watcher(api, config)
        .default_backoff()
        .inspect(move |event| {
            if let Ok(ev) = event {
                // Before stripping: the cache's fingerprint reads managedFields.
                sink.apply(ev);
            }
            if matches!(event, Ok(watcher::Event::InitDone)) && !synced.swap(true, Ordering::SeqCst) {
                gate.synced_one();
            }
        })
        .modify(cache::strip::<K>)
        .touched_objects()
}

/// The ExtensionApiServers an APIService concerns: its labelled owner, and any that claims
/// its name (so a foreign one going away is taken over at once).
fn claimants(store: &Store<ExtensionApiServer>, svc: &APIService) -> Vec<ObjectRef<ExtensionApiServer>> {
    let name = svc.name_any();
    let mut refs: Vec<_> = store
        .state()
        .iter()
        .filter(|e| {
            e.spec
                .versions
                .iter()
                .any(|v| api_service_name(&e.spec.group, &v.name) == name)
        })
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect();
    if labelled_owner(svc.labels()).is_some() {
        refs.extend(owner_of(svc));
    }
    refs
}

/// The ExtensionApiServers whose `spec.certificates.caSecretRef` or
/// `spec.server.storage.etcd.secretRef` names this Secret.
fn secret_users(
    store: &Store<ExtensionApiServer>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ExtensionApiServer>> {
    let (ns, name) = (secret.namespace(), secret.name_any());
    store
        .state()
        .iter()
        .filter(|e| e.namespace() == ns)
        .filter(|e| {
            let ca = e.spec.certificates.as_ref().and_then(|c| c.ca_secret_ref.as_ref());
            let etcd = crate::operator::reconcile::build::pod::etcd(e).and_then(|s| s.secret_ref.as_ref());
            ca.into_iter().chain(etcd).any(|r| r.name == name)
        })
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect()
}

/// Runs the controller until `shutdown` completes. `ready` is set once every cache synced.
pub async fn run(
    client: Client,
    options: BuildOptions,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ours = cache::ours();
    // The children's caches and the main one.
    let gate = SyncGate::new(CACHE_COUNT + 1);
    let (caches, w) = cache::caches(gate.clone());
    tokio::spawn({
        let gate = gate.clone();
        async move {
            gate.wait().await;
            if !ready.swap(true, Ordering::SeqCst) {
                tracing::info!("caches synced");
            }
        }
    });
    // The main reflector is ours, so readiness comes from the watch itself: the initial list is
    // in the cache when `InitDone` passes. (Waiting on `Store::wait_until_ready` beside the
    // controller does not work: its one-shot channel wakes only the last of two waiters.)
    let (store, writer) = reflector::store();
    let main_synced = AtomicBool::new(false);
    let main = reflector(
        writer,
        watcher(
            Api::<ExtensionApiServer>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        // managedFields of a status-writing object are as large as the rest of it.
        .modify(cache::strip::<ExtensionApiServer>),
    )
    .inspect({
        let gate = gate.clone();
        move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) && !main_synced.swap(true, Ordering::SeqCst) {
                gate.synced_one();
            }
        }
    })
    .applied_objects();
    let c = &client;
    let g = || gate.clone();
    let auth_config = watcher::Config::default().fields(&format!("metadata.name={}", aggregation::AUTH_CONFIG_MAP));
    let auth_changes = cached_stream(
        Api::<ConfigMap>::namespaced(c.clone(), KUBE_SYSTEM),
        auth_config,
        Slimming(w.auth_config, cache::strip),
        g(),
    )
    .filter_map(|r| futures::future::ready(r.ok().map(|_| ())));
    let not_ours = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by!={}",
        crate::operator::reconcile::names::MANAGER
    ));
    let foreign_secrets = watcher(Api::<PartialObjectMeta<Secret>>::all(c.clone()), not_ours)
        .default_backoff()
        .touched_objects();
    let (s1, s2) = (store.clone(), store.clone());
    let controller = Controller::for_stream(main, store.clone())
        .with_config(ControllerConfig::default().debounce(DEBOUNCE).concurrency(CONCURRENCY))
        .owns_stream(cached_stream(
            Api::<Secret>::all(c.clone()),
            ours.clone(),
            w.secrets,
            g(),
        ))
        .owns_stream(cached_stream(
            Api::<ServiceAccount>::all(c.clone()),
            ours.clone(),
            w.service_accounts,
            g(),
        ))
        .owns_stream(cached_stream(
            Api::<ConfigMap>::all(c.clone()),
            ours.clone(),
            w.config_maps,
            g(),
        ))
        .owns_stream(cached_stream(
            Api::<Service>::all(c.clone()),
            ours.clone(),
            w.services,
            g(),
        ))
        .owns_stream(cached_stream(
            Api::<Deployment>::all(c.clone()),
            ours.clone(),
            w.deployments,
            g(),
        ))
        .owns_stream(cached_stream(
            Api::<PersistentVolumeClaim>::all(c.clone()),
            ours.clone(),
            w.claims,
            g(),
        ))
        .owns_stream(cached_stream(
            Api::<PodDisruptionBudget>::all(c.clone()),
            ours.clone(),
            w.disruption_budgets,
            g(),
        ))
        .watches_stream(
            cached_stream(
                Api::<APIService>::all(c.clone()),
                watcher::Config::default(),
                w.api_services,
                g(),
            ),
            move |svc| claimants(&s1, &svc),
        )
        .watches_stream(
            cached_stream(Api::<ClusterRole>::all(c.clone()), ours.clone(), w.cluster_roles, g()),
            |o| owner_of(&o),
        )
        .watches_stream(
            cached_stream(
                Api::<ClusterRoleBinding>::all(c.clone()),
                ours.clone(),
                w.cluster_role_bindings,
                g(),
            ),
            |o| owner_of(&o),
        )
        .watches_stream(
            cached_stream(
                Api::<RoleBinding>::namespaced(c.clone(), KUBE_SYSTEM),
                ours,
                w.role_bindings,
                g(),
            ),
            |o| owner_of(&o),
        )
        .watches_stream(foreign_secrets, move |s| secret_users(&s2, &s))
        .reconcile_all_on(auth_changes);
    let ctx = Arc::new(context(client, options, metrics, reporter, store, caches));
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

fn context(
    client: Client,
    options: BuildOptions,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    store: Store<ExtensionApiServer>,
    caches: Caches,
) -> Context {
    Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        options,
        clock: system_clock(),
        store: Some(store),
        probe: crate::operator::reconcile::probe::tls_probe(),
        caches,
        backoff: Default::default(),
        registration_served: Default::default(),
    }
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
                register_before_available: false,
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
