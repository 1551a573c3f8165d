//! Namespace lifecycle admission, as kube-apiserver's `NamespaceLifecycle` plugin does it:
//! a create in a namespace that does not exist is 404, in a terminating namespace 403. Without
//! it an object created during namespace deletion would outlive its namespace, because the
//! namespace controller's last deletecollection has already run.
//!
//! Namespaces are followed with a metadata-only reflector (the deletion timestamp is all we
//! need, and it is set exactly when the phase becomes Terminating). A namespace missing from
//! the cache is looked up live before refusing, because a namespace created a moment ago may
//! not have reached the watch yet.

use crate::apiserver::apierrors::Status;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where namespaces come from.
pub enum Namespaces {
    /// Standalone: there is no cluster, so every namespace exists.
    Any,
    /// Followed from kube-apiserver.
    Watched(Box<Watched>),
}

/// The cache of a cluster's namespaces.
pub struct Watched {
    store: Store<PartialObjectMeta<Namespace>>,
    api: Api<Namespace>,
    synced: Arc<AtomicBool>,
    /// The last watch error, shown by `/readyz` while unsynced (usually missing RBAC).
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

/// What the lifecycle check knows of one namespace.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Active,
    Terminating,
    Missing,
}

impl Namespaces {
    /// Starts following the cluster's namespaces in the background.
    pub fn follow(client: kube::Client) -> Arc<Namespaces> {
        let api: Api<Namespace> = Api::all(client.clone());
        let meta: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = reflector(writer, watcher(meta, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let flag = synced.clone();
        let ready = store.clone();
        let last_error: Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let errors = last_error.clone();
        tokio::spawn(async move {
            if ready.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(namespaces = ready.len(), "namespace cache synced");
            }
        });
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(r) = stream.next().await {
                let err = r.err().map(|e| e.to_string());
                if let Some(e) = &err {
                    tracing::warn!(error = %e, "namespace watch failed; retrying with backoff (the server needs get/list/watch on namespaces)");
                }
                if let Ok(mut last) = errors.lock() {
                    *last = err;
                }
            }
        });
        Arc::new(Namespaces::Watched(Box::new(Watched {
            store,
            api,
            synced,
            last_error,
        })))
    }

    /// Why creates cannot be admitted yet (the cache has not synced), if so.
    pub fn not_ready(&self) -> Option<String> {
        let Namespaces::Watched(w) = self else { return None };
        if w.synced.load(Ordering::Relaxed) {
            return None;
        }
        let last = w.last_error.lock().ok().and_then(|l| l.clone());
        Some(match last {
            Some(e) => format!("namespaces not synced yet: {e}"),
            None => "namespaces not synced yet".into(),
        })
    }

    /// Namespace `ns` as admission shows it (`namespaceObject`, the labels that a
    /// `namespaceSelector` selects): its metadata from the cache. `None` standalone or when
    /// the namespace is not (yet) known.
    pub fn object(&self, ns: &str) -> Option<Value> {
        let Namespaces::Watched(w) = self else { return None };
        let m = w.store.get(&ObjectRef::new(ns))?;
        let meta = serde_json::to_value(&m.metadata).ok()?;
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}))
    }

    /// Refuses a create of `name` (of `plural` in `group`) in `ns` when the namespace does not
    /// exist or is terminating.
    pub async fn admit_create(&self, ns: &str, group: &str, plural: &str, name: &str) -> Result<(), Status> {
        let Namespaces::Watched(w) = self else { return Ok(()) };
        if ns.is_empty() {
            return Ok(());
        }
        let state = match w.store.get(&ObjectRef::new(ns)) {
            Some(m) => state_of(m.metadata.deletion_timestamp.is_some()),
            None => match w.api.get_metadata_opt(ns).await {
                Ok(Some(m)) => state_of(m.metadata.deletion_timestamp.is_some()),
                Ok(None) => State::Missing,
                Err(e) => {
                    tracing::warn!(namespace = ns, error = %e, "namespace lookup failed");
                    return Err(Status::internal(format!("unable to look up namespace {ns:?}: {e}")));
                }
            },
        };
        refusal(ns, state, group, plural, name).map_or(Ok(()), Err)
    }
}

fn state_of(deleting: bool) -> State {
    if deleting {
        State::Terminating
    } else {
        State::Active
    }
}

/// kube-apiserver's answers, word for word, so clients that match on them keep working.
fn refusal(ns: &str, state: State, group: &str, plural: &str, name: &str) -> Option<Status> {
    match state {
        State::Active => None,
        State::Missing => Some(Status::not_found("", "namespaces", ns)),
        State::Terminating => {
            let mut details = Map::new();
            details.insert("name".into(), json!(name));
            details.insert("group".into(), json!(group));
            details.insert("kind".into(), json!(plural));
            details.insert(
                "causes".into(),
                Value::Array(vec![json!({
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {ns} is being terminated"),
                    "field": "metadata.namespace",
                })]),
            );
            Some(Status {
                code: http::StatusCode::FORBIDDEN,
                reason: "Forbidden",
                message: format!(
                    "{plural}.{group} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated"
                ),
                details: Some(details),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_match_kube_apiserver() {
        let r = |ns, state| refusal(ns, state, "wardle.example.com", "flunders", "f");
        assert!(r("a", State::Active).is_none());
        let missing = r("no-such-ns", State::Missing).expect("refused").to_json();
        assert_eq!(missing["code"], 404);
        assert_eq!(missing["reason"], "NotFound");
        assert_eq!(missing["message"], "namespaces \"no-such-ns\" not found");
        assert_eq!(missing["details"], json!({"name": "no-such-ns", "kind": "namespaces"}));
        let term = r("old", State::Terminating).expect("refused").to_json();
        assert_eq!(term["code"], 403);
        assert_eq!(term["reason"], "Forbidden");
        assert_eq!(term["details"]["causes"][0]["reason"], "NamespaceTerminating");
        assert_eq!(
            term["message"],
            "flunders.wardle.example.com \"f\" is forbidden: unable to create new content in namespace old because it is being terminated"
        );
        assert_eq!(term["details"]["kind"], "flunders");
    }
}
