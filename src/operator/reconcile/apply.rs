//! Apply: server-side apply of the built children, one field manager, forced. Each apply is
//! recorded as created, updated (by a spec change) or repaired (drift), with an Event and a
//! metric. APIServices another owner holds, or an older rival claims, are not written.

use super::build::Children;
use super::cleanup::delete_ignoring_missing;
use super::context::Context;
use super::names::{self, labelled_owner, Names, FIELD_MANAGER, KUBE_SYSTEM};
use super::observe::Before;
use crate::crd::ExtensionApiServer;
use crate::operator::error::{Error, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

#[path = "apply_roles.rs"]
mod roles;

/// What applying one object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// It did not exist.
    Created,
    /// It existed and our apply changed it.
    Updated,
    /// Nothing changed.
    Unchanged,
}

impl Change {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        }
    }
}

/// What applying the children produced.
pub struct Applied {
    /// The Deployment as applied.
    pub deployment: Deployment,
    /// Our APIServices as applied.
    pub api_services: Vec<APIService>,
    /// Why some APIServices were not written.
    pub conflicts: Vec<String>,
}

/// Applies the children of one ExtensionApiServer.
pub struct Applier<'a> {
    /// Shared state.
    pub ctx: &'a Context,
    /// The owner.
    pub eas: &'a ExtensionApiServer,
    /// Whether the spec changed since the last status (an update is then no repair).
    pub spec_changed: bool,
}

impl Applier<'_> {
    /// Server-side applies one object and records what changed. `before` is the object as
    /// last read, so a change of resourceVersion tells a repair (or update) from a no-op.
    async fn apply<K>(&self, api: &Api<K>, obj: &K, before: Option<K>) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let name = obj.meta().name.clone().ok_or(Error::MissingField("metadata.name"))?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let after = api.patch(&name, &params, &Patch::Apply(obj)).await?;
        let change = match &before {
            None => Change::Created,
            Some(b) if b.meta().resource_version != after.meta().resource_version => Change::Updated,
            Some(_) => Change::Unchanged,
        };
        let what = format!("{} {}", K::kind(&()), describe(after.meta()));
        match change {
            Change::Created => {
                self.ctx
                    .publish(self.eas, EventType::Normal, "Created", format!("created {what}"))
                    .await;
            }
            Change::Updated if self.spec_changed => {
                self.ctx
                    .publish(self.eas, EventType::Normal, "Updated", format!("updated {what}"))
                    .await;
            }
            Change::Updated => {
                // The spec did not change, so someone else changed the object: drift, now repaired.
                self.ctx
                    .publish(
                        self.eas,
                        EventType::Normal,
                        "Repaired",
                        format!("repaired {what}, which had drifted from the spec"),
                    )
                    .await;
            }
            Change::Unchanged => {}
        }
        self.ctx.metrics.count_apply(K::kind(&()).as_ref(), change.as_str());
        Ok(after)
    }

    async fn get_and_apply<K>(&self, api: &Api<K>, obj: &K) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let name = obj.meta().name.clone().ok_or(Error::MissingField("metadata.name"))?;
        let before = api.get_opt(&name).await?;
        self.apply(api, obj, before).await
    }

    /// Applies every child, in dependency order: Secrets before the Deployment that mounts
    /// them, RBAC before the APIService that makes the server reachable.
    pub async fn apply_children(&self, names: &Names, children: Children, before: Before) -> Result<Applied> {
        let Before {
            ca_secret: ca_before,
            serving_secret: serving_before,
            api_services: api_services_before,
        } = before;
        let client = &self.ctx.client;
        let ns = names.namespace.as_str();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        self.apply(&secrets, &children.ca_secret, ca_before).await?;
        self.apply(&secrets, &children.serving_secret, serving_before).await?;
        self.get_and_apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), ns),
            &children.service_account,
        )
        .await?;
        if let Some(cm) = &children.config_map {
            self.get_and_apply(&Api::<ConfigMap>::namespaced(client.clone(), ns), cm)
                .await?;
        }
        if let Some(claim) = &children.data_claim {
            self.get_and_apply(&Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns), claim)
                .await?;
        }
        self.get_and_apply(&Api::<Service>::namespaced(client.clone(), ns), &children.service)
            .await?;
        let deployment = self
            .get_and_apply(&Api::<Deployment>::namespaced(client.clone(), ns), &children.deployment)
            .await?;
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        self.get_and_apply(&cluster_roles, &children.cluster_role).await?;
        let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
        self.get_and_apply(&crbs, &children.cluster_role_binding).await?;
        self.get_and_apply(&crbs, &children.auth_delegator_binding).await?;
        let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), KUBE_SYSTEM);
        self.get_and_apply(&rbs, &children.auth_reader_binding).await?;

        let api_services: Api<APIService> = Api::all(client.clone());
        let me = format!("{}/{}", names.namespace, names.owner);
        let mut applied = Vec::new();
        let mut conflicts = Vec::new();
        for (svc, before) in children.api_services.iter().zip(api_services_before) {
            let name = svc.metadata.name.clone().unwrap_or_default();
            if let Some(existing) = &before {
                let owner = labelled_owner(existing.labels());
                if owner.as_deref() != Some(me.as_str()) {
                    let who = owner
                        .map(|o| format!("ExtensionApiServer {o}"))
                        .unwrap_or_else(|| "an object not managed by this operator".to_string());
                    conflicts.push(format!("APIService {name} already exists and belongs to {who}"));
                    continue;
                }
            } else if let Some(other) = self.rival_claim(&name) {
                conflicts.push(format!(
                    "APIService {name} is also claimed by ExtensionApiServer {other}"
                ));
                continue;
            }
            applied.push(self.apply(&api_services, svc, before).await?);
        }
        // Versions removed from the spec leave APIServices behind; remove ours.
        let wanted: Vec<_> = children
            .api_services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        let ours = api_services
            .list(&ListParams::default().labels(&names.owner_selector()))
            .await?;
        for stale in ours.items.iter().filter(|s| !wanted.contains(&s.name_any())) {
            delete_ignoring_missing(&api_services, &stale.name_any()).await?;
            self.ctx
                .publish(
                    self.eas,
                    EventType::Normal,
                    "Deleted",
                    format!("deleted APIService {}, no longer in spec.versions", stale.name_any()),
                )
                .await;
        }
        // User roles (see build_roles.rs): one self-contained step, whose refusal by RBAC (the
        // chart's rbac.userRoles=false) is a Warning Event, not a failed reconcile.
        if let Err(why) = self
            .apply_user_roles(names, &children.user_roles, conflicts.is_empty())
            .await?
        {
            self.ctx
                .publish(self.eas, EventType::Warning, "UserRolesSkipped", why)
                .await;
        }
        Ok(Applied {
            deployment,
            api_services: applied,
            conflicts,
        })
    }

    /// Another ExtensionApiServer that wants the same APIService and was created first
    /// (ties broken by namespace/name), so exactly one of two rivals proceeds.
    fn rival_claim(&self, api_service: &str) -> Option<String> {
        let store = self.ctx.store.as_ref()?;
        let key = |e: &ExtensionApiServer| {
            (
                e.metadata.creation_timestamp.clone().map(|t| t.0),
                e.namespace(),
                e.name_any(),
            )
        };
        let mine = key(self.eas);
        store
            .state()
            .into_iter()
            .filter(|o| o.metadata.uid != self.eas.metadata.uid && o.metadata.deletion_timestamp.is_none())
            .filter(|o| {
                o.spec
                    .versions
                    .iter()
                    .any(|v| names::api_service_name(&o.spec.group, &v.name) == api_service)
            })
            .filter(|o| key(o) < mine)
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .next()
    }
}

fn describe(meta: &kube::api::ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.clone().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}
