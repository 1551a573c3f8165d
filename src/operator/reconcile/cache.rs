//! Caches of the children, fed by the controller's watches, so a reconcile reads nothing from
//! the API server and writes only what differs.
//!
//! Every child kind has one reflector store holding only objects with our managed-by label
//! (APIServices: all of them, there are few, so a foreign one is seen too). Objects are stored
//! slimmed ([`slim`]): what a reconcile reads (identity, labels, owner references, a Secret's
//! data, a Deployment's status, an APIService) and, in the annotation [`OWNED_FINGERPRINT`], the
//! [`fingerprint`](super::fingerprint) of the fields our field manager owns. Everything else
//! (managedFields, kubectl's copy of the object, a Deployment's spec, a role's rules) is dropped:
//! at 1,000 ExtensionApiServers the full children were most of the operator's memory.
//!
//! "Unchanged" ([`unchanged`]) means: the fingerprint of the desired object equals the cached
//! one, i.e. what server-side apply records as ours is exactly what we would apply. A field the
//! spec no longer sets is still ours until the next apply, so it too makes a difference.

use super::fingerprint;
use super::names::FIELD_MANAGER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Annotation on every child: SHA-256 of the object the operator last applied.
pub const DESIRED_HASH_ANNOTATION: &str = "aggregation.dev/desired-hash";
/// Annotation on cached copies only (never written to the cluster): the fingerprint of the
/// fields our field manager owns in the live object.
pub const OWNED_FINGERPRINT: &str = "aggregation.dev/cached-owned-fingerprint";
/// kubectl's copy of the whole object; never read by the operator.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Opens once every cache has its initial list, so no reconcile mistakes a cache that is still
/// loading for missing children (and re-applies all of them after every restart).
#[derive(Debug)]
pub struct SyncGate {
    remaining: AtomicUsize,
    notify: Notify,
}

impl SyncGate {
    /// A gate waiting for `caches` initial lists.
    pub fn new(caches: usize) -> Arc<Self> {
        Arc::new(SyncGate {
            remaining: AtomicUsize::new(caches),
            notify: Notify::new(),
        })
    }

    /// A gate that is already open (tests that fill the caches by hand).
    pub fn open() -> Arc<Self> {
        Self::new(0)
    }

    /// Records one cache's first initial list; call once per cache.
    pub fn synced_one(&self) {
        let before = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before <= 1 {
            self.notify.notify_waiters();
        }
    }

    /// Whether every cache has synced.
    pub fn is_open(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) == 0
    }

    /// Waits until every cache has synced.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

/// The stores of every child kind and of the authentication ConfigMap.
#[derive(Clone)]
pub struct Caches {
    /// CA and serving Secrets.
    pub secrets: Store<Secret>,
    /// Server ServiceAccounts.
    pub service_accounts: Store<ServiceAccount>,
    /// Bundled-server ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// Services.
    pub services: Store<Service>,
    /// Deployments (with status: availability gates the APIService).
    pub deployments: Store<Deployment>,
    /// Data PersistentVolumeClaims.
    pub claims: Store<PersistentVolumeClaim>,
    /// ClusterRoles.
    pub cluster_roles: Store<ClusterRole>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Store<ClusterRoleBinding>,
    /// RoleBindings in kube-system.
    pub role_bindings: Store<RoleBinding>,
    /// Every APIService of the cluster, ours or not.
    pub api_services: Store<APIService>,
    /// kube-system/extension-apiserver-authentication.
    pub auth_config: Store<ConfigMap>,
    /// Open once all of the above have their initial list.
    pub gate: Arc<SyncGate>,
}

/// The writing halves of [`Caches`], for the reflectors (or a test filling them).
pub struct Writers {
    pub secrets: reflector::store::Writer<Secret>,
    pub service_accounts: reflector::store::Writer<ServiceAccount>,
    pub config_maps: reflector::store::Writer<ConfigMap>,
    pub services: reflector::store::Writer<Service>,
    pub deployments: reflector::store::Writer<Deployment>,
    pub claims: reflector::store::Writer<PersistentVolumeClaim>,
    pub cluster_roles: reflector::store::Writer<ClusterRole>,
    pub cluster_role_bindings: reflector::store::Writer<ClusterRoleBinding>,
    pub role_bindings: reflector::store::Writer<RoleBinding>,
    pub api_services: reflector::store::Writer<APIService>,
    pub auth_config: reflector::store::Writer<ConfigMap>,
}

/// Number of stores in [`Caches`], i.e. initial lists the gate waits for.
pub const CACHE_COUNT: usize = 11;

/// New empty caches whose gate waits for `CACHE_COUNT` initial lists.
pub fn caches(gate: Arc<SyncGate>) -> (Caches, Writers) {
    let (secrets, w_secrets) = reflector::store();
    let (service_accounts, w_sa) = reflector::store();
    let (config_maps, w_cm) = reflector::store();
    let (services, w_svc) = reflector::store();
    let (deployments, w_dep) = reflector::store();
    let (claims, w_pvc) = reflector::store();
    let (cluster_roles, w_cr) = reflector::store();
    let (cluster_role_bindings, w_crb) = reflector::store();
    let (role_bindings, w_rb) = reflector::store();
    let (api_services, w_as) = reflector::store();
    let (auth_config, w_auth) = reflector::store();
    (
        Caches {
            secrets,
            service_accounts,
            config_maps,
            services,
            deployments,
            claims,
            cluster_roles,
            cluster_role_bindings,
            role_bindings,
            api_services,
            auth_config,
            gate,
        },
        Writers {
            secrets: w_secrets,
            service_accounts: w_sa,
            config_maps: w_cm,
            services: w_svc,
            deployments: w_dep,
            claims: w_pvc,
            cluster_roles: w_cr,
            cluster_role_bindings: w_crb,
            role_bindings: w_rb,
            api_services: w_as,
            auth_config: w_auth,
        },
    )
}

/// A child kind with a store in [`Caches`].
pub trait Cached: Resource<DynamicType = ()> + Clone + Serialize + 'static {
    /// The store of this kind.
    fn store(caches: &Caches) -> &Store<Self>;
}

macro_rules! cached {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl Cached for $kind {
            fn store(caches: &Caches) -> &Store<Self> {
                &caches.$field
            }
        })*
    };
}

cached!(
    Secret => secrets,
    ServiceAccount => service_accounts,
    ConfigMap => config_maps,
    Service => services,
    Deployment => deployments,
    PersistentVolumeClaim => claims,
    ClusterRole => cluster_roles,
    ClusterRoleBinding => cluster_role_bindings,
    RoleBinding => role_bindings,
    APIService => api_services,
);

impl Caches {
    /// The cached object `namespace/name` (cluster-scoped: `namespace` None).
    pub fn get<K: Cached>(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut key = ObjectRef::<K>::new(name);
        if let Some(ns) = namespace {
            key = key.within(ns);
        }
        K::store(self).get(&key)
    }
}

/// What a cache keeps of an object the operator never writes (the authentication ConfigMap,
/// ExtensionApiServers): everything but `managedFields` and kubectl's copy of the object, which
/// are often half an object's size.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// What a child cache keeps: the fingerprint of our fields, then only what a reconcile reads
/// ([`Slim`]).
pub fn slim<K: Resource + Serialize + Slim>(obj: &mut K) {
    let owned = serde_json::to_value(&*obj)
        .ok()
        .and_then(|v| fingerprint::owned(&v, FIELD_MANAGER));
    strip(obj);
    let meta = obj.meta_mut();
    // Annotations stay: they are small, and a Secret's carry the rotation state.
    match owned {
        Some(f) => {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(OWNED_FINGERPRINT.to_string(), f);
        }
        None => {
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(OWNED_FINGERPRINT);
            }
        }
    }
    obj.slim();
}

/// The part of a child kind that no reconcile reads, dropped from the cache.
pub trait Slim {
    /// Drops it.
    fn slim(&mut self) {}
}

/// Read: the data (the CA and serving certificates and keys).
impl Slim for Secret {}
/// Read: spec (caBundle) and status (availability).
impl Slim for APIService {}

impl Slim for Deployment {
    /// The status (availability) is read; the spec is in the fingerprint.
    fn slim(&mut self) {
        self.spec = None;
    }
}

impl Slim for ServiceAccount {
    fn slim(&mut self) {
        self.secrets = None;
        self.image_pull_secrets = None;
    }
}

impl Slim for ConfigMap {
    fn slim(&mut self) {
        self.data = None;
        self.binary_data = None;
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        self.spec = None;
        self.status = None;
    }
}

impl Slim for PersistentVolumeClaim {
    fn slim(&mut self) {
        self.spec = None;
        self.status = None;
    }
}

impl Slim for ClusterRole {
    fn slim(&mut self) {
        self.rules = None;
        self.aggregation_rule = None;
    }
}

impl Slim for ClusterRoleBinding {
    fn slim(&mut self) {
        self.subjects = None;
        self.role_ref = Default::default();
    }
}

impl Slim for RoleBinding {
    fn slim(&mut self) {
        self.subjects = None;
        self.role_ref = Default::default();
    }
}

/// Hash of the desired object, as stored in [`DESIRED_HASH_ANNOTATION`].
pub fn desired_hash<K: Serialize>(desired: &K) -> String {
    let bytes = serde_json::to_vec(desired).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether applying `desired` (which already carries its hash annotation) would change nothing
/// we own in the object `cached` (slimmed by [`slim`]).
pub fn unchanged<K: Serialize + Resource>(desired: &K, cached: &K) -> bool {
    let Some(have) = cached
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNED_FINGERPRINT))
    else {
        return false;
    };
    serde_json::to_value(desired).is_ok_and(|d| fingerprint::desired(&d) == *have)
}

/// Config of the watches of our children: only objects with our managed-by label.
pub fn ours() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={}", super::names::MANAGER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slim_keeps_the_fingerprint_of_our_fields_and_drops_the_spec() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "labels": {"a": "b"}, "annotations": {"x": "y"},
                         "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply",
                                            "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"availableReplicas": 1}}))
        .unwrap();
        slim(&mut d);
        assert!(d.spec.is_none() && d.metadata.managed_fields.is_none());
        assert_eq!(d.status.as_ref().and_then(|s| s.available_replicas), Some(1));
        let want: Deployment = serde_json::from_value(
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 2, "selector": {}, "template": {}}}),
        )
        .unwrap();
        assert!(unchanged(&want, &d));
        let other: Deployment = serde_json::from_value(
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 3, "selector": {}, "template": {}}}),
        )
        .unwrap();
        assert!(!unchanged(&other, &d));
        assert_eq!(
            d.metadata.labels.as_ref().map(|l| l.len()),
            Some(1),
            "labels map owners"
        );
    }

    #[test]
    fn strip_drops_managed_fields_and_last_applied() {
        let mut s = Secret::default();
        s.metadata.managed_fields = Some(vec![Default::default()]);
        s.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string()), ("k".into(), "v".into())].into());
        strip(&mut s);
        assert!(s.metadata.managed_fields.is_none());
        assert_eq!(s.metadata.annotations.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn gate_opens_after_every_cache() {
        let gate = SyncGate::new(2);
        assert!(!gate.is_open());
        gate.synced_one();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait().await });
        gate.synced_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("gate opened")
            .unwrap();
        gate.synced_one();
        assert!(gate.is_open());
    }
}
