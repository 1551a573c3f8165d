//! Fills the operator's caches ([`crate::operator::reconcile::cache`]) from a [`FakeApi`], as
//! the watches would once every event is delivered, so reconcile tests see the caches a
//! running controller sees and can assert the exact (smaller) request sequence.

use super::fake_api::FakeApi;
use crate::operator::reconcile::cache::{self, Writers};
use crate::operator::reconcile::names::MANAGER;
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

/// Replaces the content of a cache (through `apply`) with the objects at paths matching
/// `pattern` that pass `keep`, as a watch's initial list does.
fn fill<K>(api: &FakeApi, mut apply: impl FnMut(&Event<K>), pattern: &str, keep: impl Fn(&Value) -> bool)
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
    apply(&Event::Init);
    for mut obj in objects {
        obj["apiVersion"] = Value::String(K::api_version(&()).into_owned());
        obj["kind"] = Value::String(K::kind(&()).into_owned());
        if let Ok(k) = serde_json::from_value::<K>(obj) {
            apply(&Event::InitApply(k));
        }
    }
    apply(&Event::InitDone);
}

/// Makes every cache hold what `api` holds now.
pub fn sync(api: &FakeApi, w: &mut Writers) {
    let ns = |kind: &str| format!("/api/v1/namespaces/*/{kind}/*");
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    fill(
        api,
        |e: &Event<_>| w.secrets.apply_watcher_event(e),
        &ns("secrets"),
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.service_accounts.apply_watcher_event(e),
        &ns("serviceaccounts"),
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.config_maps.apply_watcher_event(e),
        &ns("configmaps"),
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.services.apply_watcher_event(e),
        &ns("services"),
        ours,
    );
    let deployments = "/apis/apps/v1/namespaces/*/deployments/*";
    fill(
        api,
        |e: &Event<_>| w.deployments.apply_watcher_event(e),
        deployments,
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.claims.apply_watcher_event(e),
        &ns("persistentvolumeclaims"),
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.disruption_budgets.apply_watcher_event(e),
        "/apis/policy/v1/namespaces/*/poddisruptionbudgets/*",
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.cluster_roles.apply_watcher_event(e),
        &format!("{rbac}/clusterroles/*"),
        ours,
    );
    fill(
        api,
        |e: &Event<_>| w.cluster_role_bindings.apply_watcher_event(e),
        &format!("{rbac}/clusterrolebindings/*"),
        ours,
    );
    let rb = format!("{rbac}/namespaces/kube-system/rolebindings/*");
    fill(api, |e: &Event<_>| w.role_bindings.apply_watcher_event(e), &rb, ours);
    let api_services = "/apis/apiregistration.k8s.io/v1/apiservices/*";
    fill(
        api,
        |e: &Event<_>| w.api_services.apply_watcher_event(e),
        api_services,
        |_| true,
    );
    let auth = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
    fill(
        api,
        |e: &Event<_>| w.auth_config.apply_watcher_event(&e.clone().modify(cache::strip)),
        auth,
        |_| true,
    );
}
