//! Apply: server-side apply of the built children, one field manager, forced, and only of those
//! that differ from the cached copy (see [`super::cache`]): a reconcile of an unchanged object
//! sends no write and no read. Each apply is recorded as created, updated (by a spec change) or
//! repaired (drift), with an Event and a metric.
//!
//! APIServices another owner holds, or an older rival claims, are not written. An APIService is
//! first registered only once the server Deployment has an available replica: an APIService
//! pointing at no server makes discovery fail for every client of the cluster and blocks
//! namespace deletion. Once registered it is kept (and updated) whatever the Deployment does, as
//! kube-apiserver keeps its own; the `APIServiceAvailable` condition then explains the impact.
//!
//! A PodDisruptionBudget exists only with several replicas; scaling to one deletes it.
//!
//! The first failing request stops the apply (children are applied in dependency order) and is
//! reported as an [`ApplyFailure`], never as a bare error, so it reaches the status.

use super::build::Children;
use super::cache::{self, Cached, DESIRED_HASH_ANNOTATION};
use super::cleanup::delete_ignoring_missing;
use super::context::Context;
use super::names::{self, labelled_owner, Names, FIELD_MANAGER, KUBE_SYSTEM};
use crate::crd::ExtensionApiServer;
use crate::operator::error::Error;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
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

/// A request of the apply that failed, as the status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyFailure {
    /// The object, e.g. `ClusterRole aggregation.dev:ns:name`.
    pub what: String,
    /// The cause as the API server names it (`Forbidden`, `Conflict`, `Invalid`, …).
    pub reason: String,
    /// The API server's message.
    pub message: String,
    /// Whether retrying soon may help (409, 429, 5xx, no answer).
    pub transient: bool,
    /// How long the API server asked us to wait (`retryAfterSeconds` of a 429 or 5xx Status,
    /// which kube-apiserver's priority and fairness also sends as `Retry-After`).
    pub retry_after: Option<std::time::Duration>,
}

impl ApplyFailure {
    /// The failure of a request about `what`.
    pub fn new(what: String, err: &Error) -> Self {
        let (reason, message, transient) = match err {
            Error::Kube(kube::Error::Api(s)) => {
                let reason = if s.reason.is_empty() {
                    reason_for_code(s.code).to_string()
                } else {
                    s.reason.clone()
                };
                (reason, s.message.clone(), is_transient(s.code))
            }
            Error::Kube(e) => ("APIUnreachable".to_string(), e.to_string(), true),
            other => ("ApplyFailed".to_string(), other.to_string(), false),
        };
        ApplyFailure {
            what,
            reason,
            message,
            transient,
            retry_after: match err {
                Error::Kube(e) => retry_after(e),
                _ => None,
            },
        }
    }

    /// The condition message: which object, then the API's words.
    pub fn describe(&self) -> String {
        format!("applying {} failed: {}", self.what, self.message)
    }
}

/// The delay a throttling or failing API server asked for, if any.
pub fn retry_after(e: &kube::Error) -> Option<std::time::Duration> {
    match e {
        kube::Error::Api(s) => s
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|n| *n > 0)
            .map(|n| std::time::Duration::from_secs(n.into())),
        _ => None,
    }
}

/// Codes worth retrying soon: the object changed under us, the server is throttling, or it
/// failed.
pub fn is_transient(code: u16) -> bool {
    code == 409 || code == 429 || code >= 500
}

fn reason_for_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        c if c >= 500 => "InternalError",
        _ => "ApplyFailed",
    }
}

/// What applying the children produced, and what was observed of the rest.
#[derive(Default)]
pub struct Applied {
    /// Whether both Secrets are in place (applied or unchanged).
    pub secrets_applied: bool,
    /// The Deployment as applied, else as cached.
    pub deployment: Option<Deployment>,
    /// Our APIServices as applied, else as cached.
    pub api_services: Vec<APIService>,
    /// Why some APIServices were not written.
    pub conflicts: Vec<String>,
    /// APIServices not registered yet because no server replica is available.
    pub waiting: Vec<String>,
    /// The request that stopped the apply.
    pub failure: Option<ApplyFailure>,
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
    /// Server-side applies `desired` unless the cached copy already matches it, and records
    /// what changed. The cached copy tells a create from a repair (or update).
    async fn apply<K>(&self, api: &Api<K>, desired: &K) -> Result<K, ApplyFailure>
    where
        K: Cached + DeserializeOwned + Debug,
    {
        let what = format!("{} {}", K::kind(&()), describe(desired.meta()));
        let name = desired
            .meta()
            .name
            .clone()
            .ok_or_else(|| ApplyFailure::new(what.clone(), &Error::MissingField("metadata.name")))?;
        let mut obj = desired.clone();
        let hash = cache::desired_hash(desired);
        obj.meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(DESIRED_HASH_ANNOTATION.to_string(), hash);
        let cached = self.ctx.caches.get::<K>(desired.meta().namespace.as_deref(), &name);
        if let Some(c) = &cached {
            if cache::unchanged(&obj, c.as_ref()) {
                self.ctx
                    .metrics
                    .count_apply(K::kind(&()).as_ref(), Change::Unchanged.as_str());
                return Ok(c.as_ref().clone());
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let after = api
            .patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| ApplyFailure::new(what.clone(), &e.into()))?;
        let change = match &cached {
            None => Change::Created,
            Some(b) if b.meta().resource_version != after.meta().resource_version => Change::Updated,
            Some(_) => Change::Unchanged,
        };
        let (reason, note) = match change {
            Change::Created => ("Created", format!("created {what}")),
            Change::Updated if self.spec_changed => ("Updated", format!("updated {what}")),
            // The spec did not change, so someone else changed the object: drift, now repaired.
            Change::Updated => ("Repaired", format!("repaired {what}, which had drifted from the spec")),
            Change::Unchanged => ("", String::new()),
        };
        if !reason.is_empty() {
            self.ctx.publish(self.eas, EventType::Normal, reason, note).await;
        }
        self.ctx.metrics.count_apply(K::kind(&()).as_ref(), change.as_str());
        Ok(after)
    }

    /// Applies every child, in dependency order: Secrets before the Deployment that mounts
    /// them, RBAC before the APIService that makes the server reachable. Stops at the first
    /// failure, which the result carries.
    pub async fn apply_children(&self, names: &Names, children: Children) -> Applied {
        let me = format!("{}/{}", names.namespace, names.owner);
        let mut out = Applied {
            deployment: self
                .ctx
                .caches
                .get::<Deployment>(Some(&names.namespace), &names.workload)
                .map(|d| d.as_ref().clone()),
            api_services: children
                .api_services
                .iter()
                .filter_map(|s| self.ctx.caches.get::<APIService>(None, &s.name_any()))
                .filter(|s| labelled_owner(s.labels()).as_deref() == Some(me.as_str()))
                .map(|s| s.as_ref().clone())
                .collect(),
            ..Default::default()
        };
        if let Err(f) = self.apply_all(names, children, &mut out).await {
            out.failure = Some(f);
        }
        out
    }

    async fn apply_all(&self, names: &Names, children: Children, out: &mut Applied) -> Result<(), ApplyFailure> {
        let client = &self.ctx.client;
        let ns = names.namespace.as_str();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        self.apply(&secrets, &children.ca_secret).await?;
        self.apply(&secrets, &children.serving_secret).await?;
        out.secrets_applied = true;
        self.apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), ns),
            &children.service_account,
        )
        .await?;
        if let Some(cm) = &children.config_map {
            self.apply(&Api::<ConfigMap>::namespaced(client.clone(), ns), cm)
                .await?;
        }
        if let Some(claim) = &children.data_claim {
            self.apply(&Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns), claim)
                .await?;
        }
        self.apply(&Api::<Service>::namespaced(client.clone(), ns), &children.service)
            .await?;
        let deployment = self
            .apply(&Api::<Deployment>::namespaced(client.clone(), ns), &children.deployment)
            .await?;
        let available = deployment
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            > 0;
        out.deployment = Some(deployment);
        self.apply_disruption_budget(names, children.disruption_budget.as_ref())
            .await?;
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        self.apply(&cluster_roles, &children.cluster_role).await?;
        let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
        self.apply(&crbs, &children.cluster_role_binding).await?;
        self.apply(&crbs, &children.auth_delegator_binding).await?;
        let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), KUBE_SYSTEM);
        self.apply(&rbs, &children.auth_reader_binding).await?;

        let api_services: Api<APIService> = Api::all(client.clone());
        let me = format!("{}/{}", names.namespace, names.owner);
        let mut applied = Vec::new();
        for svc in &children.api_services {
            let name = svc.name_any();
            let existing = self.ctx.caches.get::<APIService>(None, &name);
            if let Some(existing) = &existing {
                let owner = labelled_owner(existing.labels());
                if owner.as_deref() != Some(me.as_str()) {
                    let who = owner
                        .map(|o| format!("ExtensionApiServer {o}"))
                        .unwrap_or_else(|| "an object not managed by this operator".to_string());
                    out.conflicts
                        .push(format!("APIService {name} already exists and belongs to {who}"));
                    continue;
                }
            } else if let Some(other) = self.rival_claim(&name) {
                out.conflicts.push(format!(
                    "APIService {name} is also claimed by ExtensionApiServer {other}"
                ));
                continue;
            } else if !available && !self.ctx.options.register_before_available {
                out.waiting.push(name);
                continue;
            }
            applied.push(self.apply(&api_services, svc).await?);
        }
        out.api_services = applied;
        self.remove_stale_api_services(names, &children, &api_services).await?;
        // User roles (see build_roles.rs): one self-contained step, whose refusal by RBAC (the
        // chart's rbac.userRoles=false) is a Warning Event, not a failed reconcile.
        if let Err(why) = self
            .apply_user_roles(names, &children.user_roles, out.conflicts.is_empty())
            .await?
        {
            self.ctx
                .publish(self.eas, EventType::Warning, "UserRolesSkipped", why)
                .await;
        }
        Ok(())
    }

    /// Applies the budget of several replicas; without one (scaled to a single replica), deletes
    /// ours if the cache still shows it, since a budget for one pod would block every drain of
    /// its node.
    async fn apply_disruption_budget(
        &self,
        names: &Names,
        desired: Option<&PodDisruptionBudget>,
    ) -> Result<(), ApplyFailure> {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.ctx.client.clone(), &names.namespace);
        if let Some(pdb) = desired {
            return self.apply(&api, pdb).await.map(drop);
        }
        let me = format!("{}/{}", names.namespace, names.owner);
        let Some(stale) = self
            .ctx
            .caches
            .get::<PodDisruptionBudget>(Some(&names.namespace), &names.workload)
        else {
            return Ok(());
        };
        if labelled_owner(stale.labels()).as_deref() != Some(me.as_str()) {
            return Ok(());
        }
        let what = format!("PodDisruptionBudget {}/{}", names.namespace, names.workload);
        delete_ignoring_missing(&api, &names.workload)
            .await
            .map_err(|e| ApplyFailure::new(what.clone(), &e))?;
        let note = format!("deleted {what}: one replica needs none");
        self.ctx.publish(self.eas, EventType::Normal, "Deleted", note).await;
        Ok(())
    }

    /// Versions removed from the spec leave APIServices behind; removes ours (found in the cache).
    async fn remove_stale_api_services(
        &self,
        names: &Names,
        children: &Children,
        api: &Api<APIService>,
    ) -> Result<(), ApplyFailure> {
        let me = format!("{}/{}", names.namespace, names.owner);
        let wanted: Vec<String> = children.api_services.iter().map(|s| s.name_any()).collect();
        let stale: Vec<String> = self
            .ctx
            .caches
            .api_services
            .state()
            .iter()
            .filter(|s| labelled_owner(s.labels()).as_deref() == Some(me.as_str()))
            .map(|s| s.name_any())
            .filter(|n| !wanted.contains(n))
            .collect();
        for name in stale {
            delete_ignoring_missing(api, &name)
                .await
                .map_err(|e| ApplyFailure::new(format!("APIService {name}"), &e))?;
            let note = format!("deleted APIService {name}, no longer in spec.versions");
            self.ctx.publish(self.eas, EventType::Normal, "Deleted", note).await;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, retry: u32) -> Error {
        let s: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": "TooManyRequests",
            "message": "too many requests", "details": {"retryAfterSeconds": retry}
        }))
        .expect("status");
        Error::Kube(kube::Error::Api(Box::new(s)))
    }

    #[test]
    fn throttling_is_transient_and_its_retry_after_is_kept() {
        let f = ApplyFailure::new("Service ns/x".into(), &api_error(429, 7));
        assert!(f.transient);
        assert_eq!(f.reason, "TooManyRequests");
        assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(7)));
        assert_eq!(ApplyFailure::new("x".into(), &api_error(429, 0)).retry_after, None);
        let forbidden = ApplyFailure::new("x".into(), &api_error(403, 0));
        assert!(!forbidden.transient);
    }
}
