//! Deletion: what owner references cannot remove. The cluster-scoped children and the
//! kube-system RoleBinding carry owner labels and are deleted here, under the finalizer.

use super::context::Context;
use super::names::{Names, KUBE_SYSTEM};
use crate::crd::ExtensionApiServer;
use crate::operator::error::Result;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Deletes the cluster-scoped children and the kube-system RoleBinding, found by their owner
/// labels. Missing objects are fine.
pub async fn cleanup(eas: &ExtensionApiServer, ctx: &Context) -> Result<Action> {
    let names = Names::of(eas);
    let selector = names.owner_selector();
    let client = &ctx.client;
    let mut deleted = 0;
    deleted += delete_labelled(&Api::<APIService>::all(client.clone()), &selector).await?;
    deleted += delete_labelled(&Api::<ClusterRoleBinding>::all(client.clone()), &selector).await?;
    deleted += delete_labelled(&Api::<ClusterRole>::all(client.clone()), &selector).await?;
    deleted += delete_labelled(&Api::<RoleBinding>::namespaced(client.clone(), KUBE_SYSTEM), &selector).await?;
    ctx.publish(
        eas,
        EventType::Normal,
        "CleanedUp",
        format!("deleted {deleted} cluster-scoped and kube-system objects"),
    )
    .await;
    ctx.metrics.forget_cert_expiry(&names.namespace, &names.owner);
    Ok(Action::await_change())
}

/// Deletes `name`; one already gone is not an error.
pub async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_labelled<K>(api: &Api<K>, selector: &str) -> Result<usize>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let list = api.list(&ListParams::default().labels(selector)).await?;
    for obj in &list.items {
        if let Some(name) = &obj.meta().name {
            delete_ignoring_missing(api, name).await?;
        }
    }
    Ok(list.items.len())
}
