//! The caches of the children: per object its resourceVersion, owner labels, the
//! [`fingerprint`] of our fields, the operator's own annotations and, for the few kinds a
//! reconcile reads beyond that ([`Kept::FIELDS`]: a Secret's data, a Deployment's status, an
//! APIService), those fields as compact JSON. A typed object, even emptied, keeps a 2 KiB
//! `ObjectMeta` with two B-tree maps and an `Arc` per field: at 1,000 ExtensionApiServers the
//! typed caches were most of the operator's memory.
//!
//! Reads rebuild a typed object holding just that, so the apply code reads every cache the same
//! way and never sees a field the cache did not keep.

use super::cache::{DESIRED_HASH_ANNOTATION, OWNED_FINGERPRINT};
use super::fingerprint;
use super::names::{FIELD_MANAGER, MANAGER, OWNER_NAMESPACE_LABEL, OWNER_NAME_LABEL};
use kube::runtime::watcher;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotations of ours that a reconcile reads back (a Secret's carry the rotation state).
const OUR_ANNOTATIONS: &str = "aggregation.dev/";

/// A kind with a compact cache.
pub trait Kept: Resource<DynamicType = ()> + Default + Serialize + DeserializeOwned {
    /// Top-level fields outside `metadata` that a reconcile reads, kept as JSON.
    const FIELDS: &'static [&'static str] = &[];
}

/// What is kept of one object.
struct Compact {
    resource_version: Option<Box<str>>,
    /// Whether `app.kubernetes.io/managed-by` names the operator.
    managed: bool,
    owner_namespace: Option<Box<str>>,
    owner_name: Option<Box<str>>,
    fingerprint: Option<Box<str>>,
    /// The operator's annotations, but the desired hash (which no reconcile reads).
    annotations: Box<[(Box<str>, Box<str>)]>,
    /// [`Kept::FIELDS`] as a JSON object, when the kind keeps any and the object has them.
    body: Option<Box<[u8]>>,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<Box<str>, Compact>,
    /// The initial list being received (between `Init` and `InitDone`).
    buffer: Option<HashMap<Box<str>, Compact>>,
}

/// A store of compact records, filled from watch events; cheap to clone (shared).
pub struct CompactStore<K> {
    inner: Arc<RwLock<Inner>>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for CompactStore<K> {
    fn clone(&self) -> Self {
        CompactStore {
            inner: self.inner.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Default for CompactStore<K> {
    fn default() -> Self {
        CompactStore {
            inner: Arc::default(),
            kind: PhantomData,
        }
    }
}

fn key(namespace: Option<&str>, name: &str) -> Box<str> {
    match namespace {
        Some(ns) => format!("{ns}/{name}").into_boxed_str(),
        None => name.into(),
    }
}

impl<K: Kept> CompactStore<K> {
    /// Applies a watch event, as a reflector's writer does (the initial list replaces the
    /// content only once complete).
    pub fn apply_watcher_event(&self, event: &watcher::Event<K>) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        match event {
            watcher::Event::Init => inner.buffer = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                let (k, c) = compact(obj);
                inner.buffer.get_or_insert_with(HashMap::new).insert(k, c);
            }
            watcher::Event::InitDone => {
                if let Some(mut objects) = inner.buffer.take() {
                    objects.shrink_to_fit();
                    inner.objects = objects;
                }
            }
            watcher::Event::Apply(obj) => {
                let (k, c) = compact(obj);
                inner.objects.insert(k, c);
            }
            watcher::Event::Delete(obj) => {
                let meta = obj.meta();
                let k = key(meta.namespace.as_deref(), meta.name.as_deref().unwrap_or_default());
                inner.objects.remove(&k);
            }
        }
    }

    /// The object `namespace/name`, as far as kept.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let inner = self.inner.read().ok()?;
        let k = key(namespace, name);
        inner.objects.get(&k).map(|c| Arc::new(rebuild(&k, c)))
    }

    /// Every object, as far as kept.
    pub fn state(&self) -> Vec<Arc<K>> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        inner.objects.iter().map(|(k, c)| Arc::new(rebuild(k, c))).collect()
    }
}

fn compact<K: Kept>(obj: &K) -> (Box<str>, Compact) {
    let meta = obj.meta();
    let label = |l: &str| meta.labels.as_ref().and_then(|m| m.get(l)).map(|v| v.as_str().into());
    let json = serde_json::to_value(obj).unwrap_or(Value::Null);
    let fingerprint = fingerprint::owned(&json, FIELD_MANAGER).map(String::into_boxed_str);
    let body = match json {
        Value::Object(mut all) if !K::FIELDS.is_empty() => {
            let kept: Map<String, Value> = K::FIELDS
                .iter()
                .filter_map(|f| all.remove(*f).map(|v| (f.to_string(), v)))
                .collect();
            (!kept.is_empty())
                .then(|| serde_json::to_vec(&kept).ok())
                .flatten()
                .map(Vec::into_boxed_slice)
        }
        _ => None,
    };
    let annotations = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(OUR_ANNOTATIONS) && *k != DESIRED_HASH_ANNOTATION)
        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
        .collect();
    let compact = Compact {
        resource_version: meta.resource_version.as_deref().map(Into::into),
        managed: meta.labels.as_ref().and_then(|m| m.get(MANAGED_BY)).map(String::as_str) == Some(MANAGER),
        owner_namespace: label(OWNER_NAMESPACE_LABEL),
        owner_name: label(OWNER_NAME_LABEL),
        fingerprint,
        annotations,
        body,
    };
    (
        key(meta.namespace.as_deref(), meta.name.as_deref().unwrap_or_default()),
        compact,
    )
}

fn rebuild<K: Kept>(key: &str, c: &Compact) -> K {
    // The body was serialised from a `K`, so it parses back; an empty object is the fallback.
    let mut obj: K = c
        .body
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let meta = obj.meta_mut();
    match key.split_once('/') {
        Some((ns, name)) => {
            meta.namespace = Some(ns.to_string());
            meta.name = Some(name.to_string());
        }
        None => meta.name = Some(key.to_string()),
    }
    meta.resource_version = c.resource_version.as_deref().map(str::to_string);
    let mut labels = BTreeMap::new();
    if c.managed {
        labels.insert(MANAGED_BY.to_string(), MANAGER.to_string());
    }
    for (l, v) in [
        (OWNER_NAMESPACE_LABEL, &c.owner_namespace),
        (OWNER_NAME_LABEL, &c.owner_name),
    ] {
        if let Some(v) = v {
            labels.insert(l.to_string(), v.to_string());
        }
    }
    meta.labels = (!labels.is_empty()).then_some(labels);
    let mut annotations: BTreeMap<String, String> =
        c.annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if let Some(f) = c.fingerprint.as_deref() {
        annotations.insert(OWNED_FINGERPRINT.to_string(), f.to_string());
    }
    meta.annotations = (!annotations.is_empty()).then_some(annotations);
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::reconcile::names::labelled_owner;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use kube::ResourceExt;
    use serde_json::json;

    fn role(name: &str, rv: &str) -> ClusterRole {
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": rv,
                         "labels": {MANAGED_BY: MANAGER, OWNER_NAMESPACE_LABEL: "ns", OWNER_NAME_LABEL: "s", "other": "x"},
                         "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:rules": {}}}]},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}))
        .unwrap()
    }

    #[test]
    fn keeps_identity_owner_and_fingerprint_and_follows_the_initial_list() {
        let store = CompactStore::<ClusterRole>::default();
        store.apply_watcher_event(&watcher::Event::Apply(role("old", "1")));
        store.apply_watcher_event(&watcher::Event::Init);
        store.apply_watcher_event(&watcher::Event::InitApply(role("r", "7")));
        assert!(
            store.get(None, "old").is_some(),
            "replaced only once the list is complete"
        );
        store.apply_watcher_event(&watcher::Event::InitDone);
        assert!(store.get(None, "old").is_none());
        let r = store.get(None, "r").expect("cached");
        assert_eq!(r.resource_version().as_deref(), Some("7"));
        assert_eq!(labelled_owner(r.labels()).as_deref(), Some("ns/s"));
        let want: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}))
        .unwrap();
        assert!(super::super::cache::unchanged(&want, r.as_ref()));
        store.apply_watcher_event(&watcher::Event::Delete(role("r", "8")));
        assert!(store.state().is_empty());
    }
}
