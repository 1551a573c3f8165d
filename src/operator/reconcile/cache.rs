//! Caches of the children, fed by the controller's watches, so a reconcile reads nothing from
//! the API server and writes only what differs.
//!
//! Every child kind has one reflector store holding only objects with our managed-by label
//! (APIServices: all of them, there are few, so a foreign one is seen too). Objects are stored
//! stripped ([`strip`]): without `managedFields` and kubectl's last-applied annotation, the two
//! largest parts of most objects that the operator never reads. Secret data is kept: it is the
//! operator's own CA and serving certificate, which the certificate plan needs.
//!
//! "Unchanged" ([`unchanged`]) means: every field of the desired object has the same value in the
//! cached one (server defaults and other managers' fields are ignored), and the cached object
//! carries the hash of the desired object in [`DESIRED_HASH_ANNOTATION`], so a field the spec no
//! longer sets (which a field-by-field comparison cannot see) still causes an apply.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Annotation on every child: SHA-256 of the object the operator last applied.
pub const DESIRED_HASH_ANNOTATION: &str = "aggregation.dev/desired-hash";
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

/// What a cache keeps of an object: everything but `managedFields` and kubectl's copy of the
/// object, which the operator never reads and which are often half an object's size.
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

/// Whether applying `desired` (which already carries its hash annotation) to `cached` would
/// change nothing we manage.
pub fn unchanged<K: Serialize>(desired: &K, cached: &K) -> bool {
    match (serde_json::to_value(desired), serde_json::to_value(cached)) {
        (Ok(d), Ok(c)) => contains(&c, &d),
        _ => false,
    }
}

/// Whether every field of `want` is in `have` with the same value. Lists must have the same
/// length, element by element (a list we set is ours as a whole, or keyed by name in order).
/// Empty maps and lists and nulls in `want` match absence: the API server drops them.
fn contains(have: &Value, want: &Value) -> bool {
    match want {
        Value::Null => true,
        Value::Object(w) => match have {
            Value::Object(h) => w.iter().all(|(k, wv)| match h.get(k) {
                Some(hv) => contains(hv, wv),
                None => is_empty(wv),
            }),
            Value::Null => is_empty(want),
            _ => false,
        },
        Value::Array(w) => match have {
            Value::Array(h) => h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv)),
            Value::Null => w.is_empty(),
            _ => false,
        },
        _ => have == want,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
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
    fn server_defaults_and_foreign_fields_are_ignored() {
        let want = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}},
                          "metadata": {"labels": {}, "annotations": {"h": "1"}}});
        let have = json!({"spec": {"replicas": 1, "progressDeadlineSeconds": 600,
                                   "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]}}},
                          "metadata": {"annotations": {"h": "1", "other": "y"}, "resourceVersion": "7"}});
        assert!(contains(&have, &want));
        let mut drifted = have.clone();
        drifted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        assert!(!contains(&drifted, &want));
        let mut extra = have.clone();
        extra["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "b"}));
        assert!(!contains(&extra, &want), "a list is compared as a whole");
        let mut old_hash = have;
        old_hash["metadata"]["annotations"]["h"] = json!("0");
        assert!(!contains(&old_hash, &want));
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
