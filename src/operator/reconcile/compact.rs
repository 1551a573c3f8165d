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

    /// The record's body: what a reconcile reads of `all` (the object as JSON), by default
    /// [`Kept::FIELDS`] as compact JSON; `None` when there is nothing to keep.
    fn encode(_obj: &Self, mut all: Map<String, Value>) -> Option<Vec<u8>> {
        let kept: Map<String, Value> = Self::FIELDS
            .iter()
            .filter_map(|f| all.remove(*f).map(|v| (f.to_string(), v)))
            .collect();
        (!kept.is_empty()).then(|| serde_json::to_vec(&kept).ok()).flatten()
    }

    /// The object [`Kept::encode`]'s body describes (metadata is filled in afterwards).
    fn decode(body: &[u8]) -> Self {
        // The body was serialised from a `Self`, so it parses back; an empty object is the fallback.
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// Length-prefixed byte strings (the [`Packed`] format) for [`Kept::encode`] implementations.
pub fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    // Longer fields cannot come from the API server (its objects are at most 3 MiB).
    let len = u32::try_from(b.len()).unwrap_or(ABSENT - 1).min(ABSENT - 1);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&b[..len as usize]);
}

/// The next byte string [`put_bytes`] wrote at the front of `rest`, if whole.
pub fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let (value, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
    *rest = tail;
    Some(value)
}

/// What is kept of one object, as read from its [`Packed`] record.
#[derive(Default)]
struct Compact<'a> {
    resource_version: Option<&'a str>,
    /// Whether `app.kubernetes.io/managed-by` names the operator.
    managed: bool,
    owner_namespace: Option<&'a str>,
    owner_name: Option<&'a str>,
    fingerprint: Option<&'a str>,
    /// [`Kept::FIELDS`] as a JSON object, when the kind keeps any and the object has them.
    body: Option<&'a [u8]>,
    /// The operator's annotations, but the desired hash (which no reconcile reads).
    annotations: Vec<(&'a str, &'a str)>,
}

/// A [`Compact`] in one allocation: each field as a little-endian `u32` length ([`ABSENT`] for
/// none) and its bytes, in the struct's order, the annotations last as key and value pairs.
/// One allocation an object instead of one a field: at 1,000 ExtensionApiServers (11,000
/// records) the allocator's overhead per allocation and the map's wider slots were megabytes.
struct Packed(Box<[u8]>);

const ABSENT: u32 = u32::MAX;

impl Compact<'_> {
    fn pack(&self) -> Packed {
        let mut buf = Vec::new();
        let mut put = |v: Option<&[u8]>| match v {
            None => buf.extend_from_slice(&ABSENT.to_le_bytes()),
            Some(b) => put_bytes(&mut buf, b),
        };
        put(self.resource_version.map(str::as_bytes));
        put(self.managed.then_some(&[][..]));
        put(self.owner_namespace.map(str::as_bytes));
        put(self.owner_name.map(str::as_bytes));
        put(self.fingerprint.map(str::as_bytes));
        put(self.body);
        for (k, v) in &self.annotations {
            put(Some(k.as_bytes()));
            put(Some(v.as_bytes()));
        }
        Packed(buf.into_boxed_slice())
    }
}

impl Packed {
    fn unpack(&self) -> Compact<'_> {
        let mut rest: &[u8] = &self.0;
        let mut field = || -> Option<Option<&[u8]>> {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len);
            if len == ABSENT {
                rest = tail;
                return Some(None);
            }
            let (value, tail) = tail.split_at_checked(len as usize)?;
            rest = tail;
            Some(Some(value))
        };
        // Every text field was packed from a `str`.
        fn text(b: Option<&[u8]>) -> Option<&str> {
            b.and_then(|b| std::str::from_utf8(b).ok())
        }
        let mut c = Compact {
            resource_version: text(field().flatten()),
            managed: field().flatten().is_some(),
            owner_namespace: text(field().flatten()),
            owner_name: text(field().flatten()),
            fingerprint: text(field().flatten()),
            body: field().flatten(),
            annotations: Vec::new(),
        };
        while let (Some(k), Some(v)) = (field().flatten(), field().flatten()) {
            if let (Some(k), Some(v)) = (text(Some(k)), text(Some(v))) {
                c.annotations.push((k, v));
            }
        }
        c
    }
}

#[derive(Default)]
struct Inner {
    objects: HashMap<Box<str>, Packed>,
    /// The initial list being received (between `Init` and `InitDone`).
    buffer: Option<HashMap<Box<str>, Packed>>,
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

fn compact<K: Kept>(obj: &K) -> (Box<str>, Packed) {
    let meta = obj.meta();
    let label = |l: &str| meta.labels.as_ref().and_then(|m| m.get(l)).map(String::as_str);
    let json = serde_json::to_value(obj).unwrap_or(Value::Null);
    let fingerprint = fingerprint::owned(&json, FIELD_MANAGER);
    let body = match json {
        Value::Object(all) if !K::FIELDS.is_empty() => K::encode(obj, all),
        _ => None,
    };
    let compact = Compact {
        resource_version: meta.resource_version.as_deref(),
        managed: label(MANAGED_BY) == Some(MANAGER),
        owner_namespace: label(OWNER_NAMESPACE_LABEL),
        owner_name: label(OWNER_NAME_LABEL),
        fingerprint: fingerprint.as_deref(),
        body: body.as_deref(),
        annotations: meta
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(OUR_ANNOTATIONS) && *k != DESIRED_HASH_ANNOTATION)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    };
    (
        key(meta.namespace.as_deref(), meta.name.as_deref().unwrap_or_default()),
        compact.pack(),
    )
}

fn rebuild<K: Kept>(key: &str, packed: &Packed) -> K {
    let c = packed.unpack();
    let mut obj: K = c.body.map(K::decode).unwrap_or_default();
    let meta = obj.meta_mut();
    match key.split_once('/') {
        Some((ns, name)) => {
            meta.namespace = Some(ns.to_string());
            meta.name = Some(name.to_string());
        }
        None => meta.name = Some(key.to_string()),
    }
    meta.resource_version = c.resource_version.map(str::to_string);
    let mut labels = BTreeMap::new();
    if c.managed {
        labels.insert(MANAGED_BY.to_string(), MANAGER.to_string());
    }
    for (l, v) in [
        (OWNER_NAMESPACE_LABEL, c.owner_namespace),
        (OWNER_NAME_LABEL, c.owner_name),
    ] {
        if let Some(v) = v {
            labels.insert(l.to_string(), v.to_string());
        }
    }
    meta.labels = (!labels.is_empty()).then_some(labels);
    let mut annotations: BTreeMap<String, String> = c
        .annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(f) = c.fingerprint {
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
    fn a_packed_record_reads_back_every_field() {
        let c = Compact {
            resource_version: Some("42"),
            managed: true,
            owner_namespace: Some(""),
            owner_name: None,
            fingerprint: Some("ab12"),
            body: Some(br#"{"data":{}}"#),
            annotations: vec![("aggregation.dev/a", ""), ("aggregation.dev/b", "x\u{0}y")],
        };
        let packed = c.pack();
        let back = packed.unpack();
        assert_eq!(back.resource_version, Some("42"));
        assert!(back.managed);
        assert_eq!(back.owner_namespace, Some(""), "empty is not absent");
        assert_eq!(back.owner_name, None);
        assert_eq!(back.fingerprint, Some("ab12"));
        assert_eq!(back.body, Some(&br#"{"data":{}}"#[..]));
        assert_eq!(back.annotations, c.annotations);
        let packed = Compact::default().pack();
        let empty = packed.unpack();
        assert!(!empty.managed && empty.resource_version.is_none() && empty.annotations.is_empty());
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
