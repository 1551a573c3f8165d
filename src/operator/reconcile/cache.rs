//! Caches of the children, fed by the controller's watches, so a reconcile reads nothing from
//! the API server and writes only what differs.
//!
//! Every child kind has one [`CompactStore`] holding only objects with our managed-by label
//! (APIServices: all of them, there are few, so a foreign one is seen too). What is kept is
//! what a reconcile reads (identity, owner labels, our annotations, a Secret's data, a
//! Deployment's status, an APIService) and, in the annotation [`OWNED_FINGERPRINT`], the
//! [`fingerprint`](super::fingerprint) of the fields our field manager owns. Everything else
//! (managedFields, kubectl's copy of the object, a Deployment's spec, a role's rules) is dropped:
//! at 1,000 ExtensionApiServers the full children were most of the operator's memory.
//!
//! "Unchanged" ([`unchanged`]) means: the fingerprint of the desired object equals the cached
//! one, i.e. what server-side apply records as ours is exactly what we would apply. A field the
//! spec no longer sets is still ours until the next apply, so it too makes a difference.

use super::compact::{CompactStore, Kept};
use super::fingerprint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use k8s_openapi::ByteString;
use kube::runtime::reflector::{self, Store};
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
    pub secrets: CompactStore<Secret>,
    /// Server ServiceAccounts.
    pub service_accounts: CompactStore<ServiceAccount>,
    /// Bundled-server ConfigMaps.
    pub config_maps: CompactStore<ConfigMap>,
    /// Services.
    pub services: CompactStore<Service>,
    /// Deployments (with status: availability gates the APIService).
    pub deployments: CompactStore<Deployment>,
    /// Data PersistentVolumeClaims.
    pub claims: CompactStore<PersistentVolumeClaim>,
    /// PodDisruptionBudgets (several replicas only).
    pub disruption_budgets: CompactStore<PodDisruptionBudget>,
    /// ClusterRoles.
    pub cluster_roles: CompactStore<ClusterRole>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: CompactStore<ClusterRoleBinding>,
    /// RoleBindings in kube-system.
    pub role_bindings: CompactStore<RoleBinding>,
    /// Every APIService of the cluster, ours or not.
    pub api_services: CompactStore<APIService>,
    /// kube-system/extension-apiserver-authentication.
    pub auth_config: Store<ConfigMap>,
    /// Open once all of the above have their initial list.
    pub gate: Arc<SyncGate>,
}

/// The writing halves of [`Caches`], for the watches (or a test filling them).
pub struct Writers {
    pub secrets: CompactStore<Secret>,
    pub service_accounts: CompactStore<ServiceAccount>,
    pub config_maps: CompactStore<ConfigMap>,
    pub services: CompactStore<Service>,
    pub deployments: CompactStore<Deployment>,
    pub claims: CompactStore<PersistentVolumeClaim>,
    pub disruption_budgets: CompactStore<PodDisruptionBudget>,
    pub cluster_roles: CompactStore<ClusterRole>,
    pub cluster_role_bindings: CompactStore<ClusterRoleBinding>,
    pub role_bindings: CompactStore<RoleBinding>,
    pub api_services: CompactStore<APIService>,
    pub auth_config: reflector::store::Writer<ConfigMap>,
}

/// Something a watch's events are written to.
pub trait Sink<K>: Send + 'static {
    /// Records one event.
    fn apply(&mut self, event: &watcher::Event<K>);
}

impl<K: Kept + Send + Sync + 'static> Sink<K> for CompactStore<K> {
    fn apply(&mut self, event: &watcher::Event<K>) {
        self.apply_watcher_event(event);
    }
}

/// A typed store written with each object passed through a function first.
pub struct Slimming<K: Resource<DynamicType = ()> + Clone + 'static>(pub reflector::store::Writer<K>, pub fn(&mut K));

impl<K> Sink<K> for Slimming<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn apply(&mut self, event: &watcher::Event<K>) {
        self.0.apply_watcher_event(&event.clone().modify(self.1));
    }
}

/// Number of stores in [`Caches`], i.e. initial lists the gate waits for.
pub const CACHE_COUNT: usize = 12;

/// New empty caches whose gate waits for `CACHE_COUNT` initial lists.
pub fn caches(gate: Arc<SyncGate>) -> (Caches, Writers) {
    let (auth_config, w_auth) = reflector::store();
    let caches = Caches {
        secrets: CompactStore::default(),
        service_accounts: CompactStore::default(),
        config_maps: CompactStore::default(),
        services: CompactStore::default(),
        deployments: CompactStore::default(),
        claims: CompactStore::default(),
        disruption_budgets: CompactStore::default(),
        cluster_roles: CompactStore::default(),
        cluster_role_bindings: CompactStore::default(),
        role_bindings: CompactStore::default(),
        api_services: CompactStore::default(),
        auth_config,
        gate,
    };
    let writers = Writers {
        secrets: caches.secrets.clone(),
        service_accounts: caches.service_accounts.clone(),
        config_maps: caches.config_maps.clone(),
        services: caches.services.clone(),
        deployments: caches.deployments.clone(),
        claims: caches.claims.clone(),
        disruption_budgets: caches.disruption_budgets.clone(),
        cluster_roles: caches.cluster_roles.clone(),
        cluster_role_bindings: caches.cluster_role_bindings.clone(),
        role_bindings: caches.role_bindings.clone(),
        api_services: caches.api_services.clone(),
        auth_config: w_auth,
    };
    (caches, writers)
}

/// A child kind with a store in [`Caches`].
pub trait Cached: Kept + Clone + 'static {
    /// The cached object `namespace/name` (cluster-scoped: `namespace` None).
    fn cached(caches: &Caches, namespace: Option<&str>, name: &str) -> Option<Arc<Self>>;
}

macro_rules! cached {
    ($($kind:ident => $field:ident keeps [$($f:literal),*]),* $(,)?) => {
        $(cached!(@kept $kind [$($f),*]);
        impl Cached for $kind {
            fn cached(caches: &Caches, namespace: Option<&str>, name: &str) -> Option<Arc<Self>> {
                caches.$field.get(namespace, name)
            }
        })*
    };
    // A Secret keeps its data as raw bytes (below).
    (@kept Secret [$($f:literal),*]) => {};
    (@kept $kind:ident [$($f:literal),*]) => {
        impl Kept for $kind {
            const FIELDS: &'static [&'static str] = &[$($f),*];
        }
    };
}

/// A Secret's data as key and value byte strings, not as base64 in JSON: the certificates and
/// keys are most of what the operator keeps per ExtensionApiServer, and base64 is a third
/// larger (`operator-bench`).
impl Kept for Secret {
    const FIELDS: &'static [&'static str] = &["data"];

    fn encode(obj: &Secret, _all: serde_json::Map<String, serde_json::Value>) -> Option<Vec<u8>> {
        let data = obj.data.as_ref()?;
        let mut buf = Vec::new();
        for (k, v) in data {
            super::compact::put_bytes(&mut buf, k.as_bytes());
            super::compact::put_bytes(&mut buf, &v.0);
        }
        Some(buf)
    }

    fn decode(mut body: &[u8]) -> Secret {
        let mut data = std::collections::BTreeMap::new();
        while let (Some(k), Some(v)) = (
            super::compact::take_bytes(&mut body),
            super::compact::take_bytes(&mut body),
        ) {
            data.insert(String::from_utf8_lossy(k).into_owned(), ByteString(v.to_vec()));
        }
        Secret {
            data: Some(data),
            ..Secret::default()
        }
    }
}

// What a reconcile reads beyond identity and fingerprint: the certificates and keys, the
// availability, the published caBundle and the availability of each version.
cached!(
    Secret => secrets keeps ["data"],
    Deployment => deployments keeps ["status"],
    APIService => api_services keeps ["spec", "status"],
    ServiceAccount => service_accounts keeps [],
    ConfigMap => config_maps keeps [],
    Service => services keeps [],
    PersistentVolumeClaim => claims keeps [],
    PodDisruptionBudget => disruption_budgets keeps [],
    ClusterRole => cluster_roles keeps [],
    ClusterRoleBinding => cluster_role_bindings keeps [],
    RoleBinding => role_bindings keeps [],
);

impl Caches {
    /// The cached object `namespace/name` (cluster-scoped: `namespace` None).
    pub fn get<K: Cached>(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        K::cached(self, namespace, name)
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

/// Hash of the desired object, as stored in [`DESIRED_HASH_ANNOTATION`].
pub fn desired_hash<K: Serialize>(desired: &K) -> String {
    let bytes = serde_json::to_vec(desired).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether applying `desired` (which already carries its hash annotation) would change nothing
/// we own in the object `cached` (as a [`CompactStore`] rebuilds it).
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
    use crate::operator::reconcile::names::FIELD_MANAGER;
    use serde_json::json;

    #[test]
    fn deployments_keep_status_and_the_fingerprint_of_our_fields_not_the_spec() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns", "resourceVersion": "5",
                         "labels": {"a": "b", "app.kubernetes.io/managed-by": crate::operator::reconcile::names::MANAGER},
                         "annotations": {"x": "y", DESIRED_HASH_ANNOTATION: "h"},
                         "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply",
                                            "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"availableReplicas": 1}}))
        .unwrap();
        let store = CompactStore::<Deployment>::default();
        store.apply_watcher_event(&watcher::Event::Apply(d));
        let d = store.get(Some("ns"), "d").expect("cached");
        assert!(d.spec.is_none() && d.metadata.managed_fields.is_none());
        assert_eq!(d.status.as_ref().and_then(|s| s.available_replicas), Some(1));
        assert_eq!(d.metadata.resource_version.as_deref(), Some("5"));
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
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            vec![OWNED_FINGERPRINT],
            "neither foreign annotations nor the desired hash"
        );
    }

    #[test]
    fn secret_data_is_kept_as_bytes_and_reads_back_exactly() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let mut data = std::collections::BTreeMap::new();
        data.insert("bin".to_string(), ByteString(all_bytes.clone()));
        data.insert("empty".to_string(), ByteString(Vec::new()));
        data.insert(
            "tls.crt".to_string(),
            ByteString(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
        );
        let secret = Secret {
            data: Some(data.clone()),
            ..Secret::default()
        };
        let body = <Secret as Kept>::encode(&secret, serde_json::Map::new()).expect("a body");
        let json = serde_json::to_vec(&serde_json::json!({"data": &secret.data})).unwrap();
        assert!(
            body.len() < json.len() * 4 / 5,
            "{} bytes against {} as JSON",
            body.len(),
            json.len()
        );
        assert_eq!(<Secret as Kept>::decode(&body).data, Some(data));

        let store = CompactStore::<Secret>::default();
        store.apply_watcher_event(&watcher::Event::Apply(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("none".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Secret::default()
        }));
        assert_eq!(store.get(Some("ns"), "none").expect("cached").data, None);
    }

    #[test]
    fn secrets_keep_their_data_and_our_annotations() {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s-ca", "namespace": "ns",
                         "annotations": {"aggregation.dev/ca-rotation-phase": "Overlap", "other": "x"}},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}))
        .unwrap();
        let store = CompactStore::<Secret>::default();
        store.apply_watcher_event(&watcher::Event::Apply(s));
        let s = store.get(Some("ns"), "s-ca").expect("cached");
        let data = s.data.clone().unwrap_or_default();
        assert_eq!(data.get("tls.crt").map(|b| b.0.as_slice()), Some(&b"cert"[..]));
        assert_eq!(data.get("tls.key").map(|b| b.0.as_slice()), Some(&b"key"[..]));
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get("aggregation.dev/ca-rotation-phase").map(String::as_str),
            Some("Overlap")
        );
        assert!(!annotations.contains_key("other"));
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
