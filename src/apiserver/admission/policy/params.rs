//! Params: the objects a binding's `paramRef` selects for a policy's `paramKind`, collected as
//! k8s.io/apiserver's `generic.CollectParams` does.
//!
//! They are read from kube-apiserver with the server's own client (a live get or list per
//! request that a parameterized policy matches, where kube-apiserver reads an informer), so
//! the server's ServiceAccount needs `get` and `list` on the param resource. A read that
//! fails for another reason than "not found" (for example missing RBAC) is a configuration
//! error of the binding, decided by the policy's `failurePolicy`, as in kube.

use crate::apiserver::admission::selector;
use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::discovery::Scope;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A policy's `paramKind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamKind {
    pub api_version: String,
    pub kind: String,
}

impl ParamKind {
    fn gvk(&self) -> GroupVersionKind {
        let (group, version) = self.api_version.split_once('/').unwrap_or(("", &self.api_version));
        GroupVersionKind::gvk(group, version, &self.kind)
    }

    /// `schema.GroupVersionKind.String()`: `group/version, Kind=kind`.
    pub fn shown(&self) -> String {
        let g = self.gvk();
        format!("{}/{}, Kind={}", g.group, g.version, g.kind)
    }
}

/// Where params are read from.
pub trait ParamSource: Send + Sync {
    /// Whether the kind is namespaced; an error when the kind is not served.
    fn namespaced<'a>(&'a self, kind: &'a ParamKind) -> BoxFuture<'a, Result<bool, String>>;
    /// One param by name (`None`: not found).
    fn get<'a>(
        &'a self,
        kind: &'a ParamKind,
        ns: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, String>>;
    /// Every param of the kind (in `ns`).
    fn list<'a>(&'a self, kind: &'a ParamKind, ns: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Value>, String>>;
}

/// The params of a binding: `[null]` when the policy takes none (or the binding gives no
/// `paramRef`), else the selected objects (possibly none, under
/// `parameterNotFoundAction: Allow`); an error is the binding's configuration error.
pub async fn collect(
    source: &dyn ParamSource,
    kind: Option<&ParamKind>,
    namespaced: bool,
    param_ref: Option<&Value>,
    request_ns: &str,
) -> Result<Vec<Value>, String> {
    let (Some(kind), Some(r)) = (kind, param_ref) else {
        return Ok(vec![Value::Null]);
    };
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let ns = if namespaced {
        let ns = if s("namespace").is_empty() {
            request_ns
        } else {
            s("namespace")
        };
        if ns.is_empty() {
            return Err(
                "cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".into(),
            );
        }
        Some(ns)
    } else {
        if !s("namespace").is_empty() {
            return Err("paramRef.namespace must not be provided for a cluster-scoped `paramKind`".into());
        }
        None
    };
    let sel = r.get("selector").filter(|v| !v.is_null());
    let params = if !s("name").is_empty() {
        if sel.is_some() {
            return Err("paramRef.name and paramRef.selector are mutually exclusive".into());
        }
        source.get(kind, ns, s("name")).await?.into_iter().collect()
    } else if let Some(sel) = sel {
        let mut out = Vec::new();
        for p in source.list(kind, ns).await? {
            if selector::matches(Some(sel), p.pointer("/metadata/labels").and_then(Value::as_object))? {
                out.push(p);
            }
        }
        out
    } else {
        return Err("one of name or selector must be provided".into());
    };
    if params.is_empty() && s("parameterNotFoundAction") == "Deny" {
        return Err("no params found for policy binding with `Deny` parameterNotFoundAction".into());
    }
    Ok(params)
}

/// Params read from kube-apiserver.
pub struct KubeParams {
    client: kube::Client,
    /// Discovered kinds; a failed discovery is remembered for [`RETRY`] so that writes a
    /// misconfigured policy matches do not each ask again.
    kinds: Mutex<HashMap<ParamKind, Discovered>>,
}

/// A param kind's resource and whether it is namespaced, or why discovery failed and when.
type Discovered = Result<(ApiResource, bool), (String, Instant)>;

/// How long a failed discovery of a param kind stands.
const RETRY: Duration = Duration::from_secs(5);

impl KubeParams {
    pub fn new(client: kube::Client) -> KubeParams {
        KubeParams {
            client,
            kinds: Mutex::default(),
        }
    }

    async fn resource(&self, kind: &ParamKind) -> Result<(ApiResource, bool), String> {
        match self.kinds.lock().ok().and_then(|k| k.get(kind).cloned()) {
            Some(Ok(r)) => return Ok(r),
            Some(Err((e, at))) if at.elapsed() < RETRY => return Err(e),
            _ => {}
        }
        let r = kube::discovery::pinned_kind(&self.client, &kind.gvk())
            .await
            .map(|(ar, caps)| (ar, caps.scope == Scope::Namespaced))
            .map_err(|e| e.to_string());
        if let Ok(mut k) = self.kinds.lock() {
            k.insert(kind.clone(), r.clone().map_err(|e| (e, Instant::now())));
        }
        r
    }

    async fn api(&self, kind: &ParamKind, ns: Option<&str>) -> Result<Api<DynamicObject>, String> {
        let (ar, _) = self.resource(kind).await?;
        Ok(match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        })
    }
}

/// A client error in kube-apiserver's words where it gave some.
fn words(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message,
        other => other.to_string(),
    }
}

impl ParamSource for KubeParams {
    fn namespaced<'a>(&'a self, kind: &'a ParamKind) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move { self.resource(kind).await.map(|(_, n)| n) })
    }

    fn get<'a>(
        &'a self,
        kind: &'a ParamKind,
        ns: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, String>> {
        Box::pin(async move {
            let api = self.api(kind, ns).await?;
            match api.get_opt(name).await {
                Ok(o) => Ok(o.and_then(|o| serde_json::to_value(o).ok())),
                Err(e) => Err(words(e)),
            }
        })
    }

    fn list<'a>(&'a self, kind: &'a ParamKind, ns: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Value>, String>> {
        Box::pin(async move {
            let api = self.api(kind, ns).await?;
            let list = api.list(&ListParams::default()).await.map_err(words)?;
            Ok(list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Params in memory: `(namespace, object)`; kinds other than `ConfigMap` are not served.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub objects: Vec<(String, Value)>,
        pub namespaced: bool,
        pub fail: Option<String>,
    }

    impl ParamSource for Fake {
        fn namespaced<'a>(&'a self, kind: &'a ParamKind) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move {
                if kind.kind == "ConfigMap" {
                    Ok(self.namespaced)
                } else {
                    Err("no such kind".into())
                }
            })
        }
        fn get<'a>(
            &'a self,
            _: &'a ParamKind,
            ns: Option<&'a str>,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Value>, String>> {
            Box::pin(async move {
                if let Some(e) = &self.fail {
                    return Err(e.clone());
                }
                Ok(self
                    .objects
                    .iter()
                    .find(|(n, o)| ns.is_none_or(|ns| ns == n) && o["metadata"]["name"] == name)
                    .map(|(_, o)| o.clone()))
            })
        }
        fn list<'a>(&'a self, _: &'a ParamKind, ns: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Value>, String>> {
            Box::pin(async move {
                if let Some(e) = &self.fail {
                    return Err(e.clone());
                }
                Ok(self
                    .objects
                    .iter()
                    .filter(|(n, _)| ns.is_none_or(|ns| ns == n))
                    .map(|(_, o)| o.clone())
                    .collect())
            })
        }
    }

    pub(crate) fn cm(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {}})
    }

    #[tokio::test]
    async fn params_are_collected_as_kube_collects_them() {
        let kind = ParamKind {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
        };
        assert_eq!(kind.shown(), "/v1, Kind=ConfigMap");
        let src = Fake {
            objects: vec![
                ("ns".into(), cm("a", json!({"role": "limits"}))),
                ("ns".into(), cm("b", json!({"role": "limits"}))),
                ("other".into(), cm("c", json!({"role": "limits"}))),
            ],
            namespaced: true,
            fail: None,
        };
        let c = |r: Value, ns: &'static str| {
            let src = &src;
            let kind = kind.clone();
            async move { collect(src, Some(&kind), true, Some(&r), ns).await }
        };
        // No paramKind or no paramRef: one null param.
        assert_eq!(
            collect(&src, None, true, Some(&json!({"name": "a"})), "ns").await,
            Ok(vec![Value::Null])
        );
        assert_eq!(
            collect(&src, Some(&kind), true, None, "ns").await,
            Ok(vec![Value::Null])
        );
        // By name, in the request's namespace or the named one.
        assert_eq!(c(json!({"name": "a"}), "ns").await.map(|v| v.len()), Ok(1));
        assert_eq!(c(json!({"name": "c"}), "ns").await, Ok(vec![]));
        assert_eq!(
            c(json!({"name": "c", "namespace": "other"}), "ns")
                .await
                .map(|v| v.len()),
            Ok(1)
        );
        assert_eq!(
            c(json!({"name": "zz", "parameterNotFoundAction": "Deny"}), "ns").await,
            Err("no params found for policy binding with `Deny` parameterNotFoundAction".into())
        );
        assert_eq!(
            c(json!({"name": "zz", "parameterNotFoundAction": "Allow"}), "ns").await,
            Ok(vec![])
        );
        // By selector.
        assert_eq!(
            c(json!({"selector": {"matchLabels": {"role": "limits"}}}), "ns")
                .await
                .map(|v| v.len()),
            Ok(2)
        );
        assert_eq!(c(json!({"selector": {}}), "other").await.map(|v| v.len()), Ok(1));
        // Misconfiguration.
        assert_eq!(
            c(json!({"name": "a"}), "").await,
            Err("cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".into())
        );
        assert!(c(json!({"name": "a", "selector": {}}), "ns").await.is_err());
        assert!(c(json!({}), "ns").await.is_err());
        let cluster = collect(
            &src,
            Some(&kind),
            false,
            Some(&json!({"name": "a", "namespace": "ns"})),
            "ns",
        )
        .await;
        assert_eq!(
            cluster,
            Err("paramRef.namespace must not be provided for a cluster-scoped `paramKind`".into())
        );
        // A failed read is an error, not "not found".
        let failing = Fake {
            fail: Some("configmaps is forbidden".into()),
            namespaced: true,
            ..Default::default()
        };
        assert_eq!(
            collect(
                &failing,
                Some(&kind),
                true,
                Some(&json!({"name": "a", "parameterNotFoundAction": "Allow"})),
                "ns"
            )
            .await,
            Err("configmaps is forbidden".into())
        );
    }
}
