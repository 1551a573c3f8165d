//! Fills the operator's caches ([`crate::operator::reconcile::cache`]) from a [`FakeApi`], as
//! the watches would once every event is delivered, so reconcile tests see the caches a
//! running controller sees and can assert the exact (smaller) request sequence.

use super::fake_api::FakeApi;
use crate::operator::reconcile::cache::{self, Writers};
use crate::operator::reconcile::names::MANAGER;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Whether `path` matches `pattern`, segment by segment, `*` matching any one segment.
fn matches(pattern: &str, path: &str) -> bool {
    let (p, s): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == s.len() && p.iter().zip(&s).all(|(p, s)| *p == "*" || p == s)
}

fn ours(obj: &Value) -> bool {
    obj.pointer("/metadata/labels/app.kubernetes.io~1managed-by")
        .and_then(Value::as_str)
        == Some(MANAGER)
}

/// Replaces the content of `writer` with the objects at paths matching `pattern` that pass
/// `keep`, as a watch's initial list does.
fn fill<K>(api: &FakeApi, writer: &mut Writer<K>, pattern: &str, keep: impl Fn(&Value) -> bool, slim: fn(&mut K))
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
{
    let objects: Vec<Value> = {
        let st = api.state.lock().unwrap_or_else(|e| e.into_inner());
        st.objects
            .iter()
            .filter(|(path, obj)| matches(pattern, path) && keep(obj))
            .map(|(_, obj)| obj.clone())
            .collect()
    };
    writer.apply_watcher_event(&Event::Init);
    for mut obj in objects {
        obj["apiVersion"] = Value::String(K::api_version(&()).into_owned());
        obj["kind"] = Value::String(K::kind(&()).into_owned());
        if let Ok(mut k) = serde_json::from_value::<K>(obj) {
            slim(&mut k);
            writer.apply_watcher_event(&Event::InitApply(k));
        }
    }
    writer.apply_watcher_event(&Event::InitDone);
}

/// Makes every cache hold what `api` holds now.
pub fn sync(api: &FakeApi, w: &mut Writers) {
    fill(api, &mut w.secrets, "/api/v1/namespaces/*/secrets/*", ours, cache::slim);
    fill(
        api,
        &mut w.service_accounts,
        "/api/v1/namespaces/*/serviceaccounts/*",
        ours,
        cache::slim,
    );
    fill(
        api,
        &mut w.config_maps,
        "/api/v1/namespaces/*/configmaps/*",
        ours,
        cache::slim,
    );
    fill(
        api,
        &mut w.services,
        "/api/v1/namespaces/*/services/*",
        ours,
        cache::slim,
    );
    fill(
        api,
        &mut w.deployments,
        "/apis/apps/v1/namespaces/*/deployments/*",
        ours,
        cache::slim,
    );
    fill(
        api,
        &mut w.claims,
        "/api/v1/namespaces/*/persistentvolumeclaims/*",
        ours,
        cache::slim,
    );
    fill(
        api,
        &mut w.cluster_roles,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/*",
        ours,
        cache::slim,
    );
    let crb = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/*";
    fill(api, &mut w.cluster_role_bindings, crb, ours, cache::slim);
    let rb = "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings/*";
    fill(api, &mut w.role_bindings, rb, ours, cache::slim);
    fill(
        api,
        &mut w.api_services,
        "/apis/apiregistration.k8s.io/v1/apiservices/*",
        |_| true,
        cache::slim,
    );
    let auth = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
    fill(api, &mut w.auth_config, auth, |_| true, cache::strip);
}
