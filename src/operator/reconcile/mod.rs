//! Reconciling an `ExtensionApiServer`: validate → plan certificates → build (pure) →
//! apply (server-side apply, one field manager) → status from what was applied.

pub mod aggregation;
pub mod build;
pub mod certs;
pub mod names;
pub mod probe;
pub mod rotation;
pub mod status;
pub mod validate;

use crate::crd::{ExtensionApiServer, ExtensionApiServerStatus};
use crate::operator::error::{Error, Result};
use crate::operator::metrics::Metrics;
use build::{BuildOptions, Children};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use names::{labelled_owner, Names, FIELD_MANAGER, FINALIZER, KUBE_SYSTEM};
use serde::de::DeserializeOwned;
use serde::Serialize;
use status::{reasons, types, Cond};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait between reconciles of a healthy object (a backstop; watches drive the rest).
const RESYNC: Duration = Duration::from_secs(3600);
/// Wait between reconciles while something is not ready yet.
const NOT_READY_RESYNC: Duration = Duration::from_secs(60);

/// Source of the current time, in Unix seconds; replaced by a fixed clock in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| jiff::Timestamp::now().as_second())
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The one Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Inputs of the builders.
    pub options: BuildOptions,
    /// Clock.
    pub clock: Clock,
    /// Cache of all ExtensionApiServers, to detect two claiming the same group/version.
    pub store: Option<Store<ExtensionApiServer>>,
    /// Observes which certificate each server replica presents (during a CA rotation).
    pub probe: probe::LeafProbe,
}

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

/// Entry point for the controller.
pub async fn reconcile(eas: Arc<ExtensionApiServer>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let ns = eas.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ExtensionApiServer> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, eas, |event| async {
        match event {
            FinalizerEvent::Apply(eas) => apply(&eas, &ctx).await,
            FinalizerEvent::Cleanup(eas) => cleanup(&eas, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed(), result.as_ref().err());
    result
}

/// Backs off on transient errors.
pub fn error_policy(eas: Arc<ExtensionApiServer>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?eas.namespace(), name = %eas.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

async fn publish(ctx: &Context, eas: &ExtensionApiServer, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    // An Event that cannot be written must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&ev, &eas.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
}

async fn apply(eas: &ExtensionApiServer, ctx: &Context) -> Result<Action> {
    let names = Names::of(eas);
    let now = (ctx.clock)();
    let generation = eas.metadata.generation;
    let previous = eas.status.clone().unwrap_or_default();

    let validated = match crate::operator::reconcile::validate::validate(&eas.spec) {
        Ok(v) => v,
        Err(problems) => {
            let message = problems.join("; ");
            publish(ctx, eas, EventType::Warning, reasons::INVALID_SPEC, message.clone()).await;
            let conds = vec![Cond::fail(types::READY, reasons::INVALID_SPEC, message)];
            write_status(
                ctx,
                eas,
                &names,
                &conds,
                previous.certificates.clone(),
                previous.api_services.clone(),
                now,
            )
            .await?;
            // Nothing to retry until the spec changes.
            return Ok(Action::await_change());
        }
    };

    let aggregation = aggregation::check(&ctx.client).await?;
    if let Some(w) = &aggregation.warning {
        publish(ctx, eas, EventType::Warning, reasons::FRONT_PROXY_CA_REUSED, w.clone()).await;
    }

    // A manual rotation request; an unknown value is reported and cleared.
    let (force, bad_force) = match eas.annotations().get(certs::ROTATE_ANNOTATION) {
        None => (None, None),
        Some(v) => match certs::Force::parse(v) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        },
    };
    if let Some(e) = &bad_force {
        publish(ctx, eas, EventType::Warning, "RotationRequestInvalid", e.clone()).await;
        clear_rotate_annotation(ctx, &names).await?;
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let ca_before = secrets.get_opt(&names.ca_secret).await?;
    let serving_before = secrets.get_opt(&names.serving_secret).await?;
    let external = match read_external_ca(&secrets, eas).await? {
        Ok(pair) => pair,
        Err(problem) => {
            return report_certificate_problem(
                ctx,
                eas,
                &names,
                aggregation.condition,
                reasons::CA_SECRET_INVALID,
                problem,
                now,
            )
            .await;
        }
    };

    // What the cluster shows today: the published caBundles, and (mid-rotation) the served leaves.
    let api_services: Api<APIService> = Api::all(ctx.client.clone());
    let mut existing = Vec::new();
    for v in &eas.spec.versions {
        existing.push(
            api_services
                .get_opt(&names::api_service_name(&eas.spec.group, &v.name))
                .await?,
        );
    }
    let stored = rotation::CaState::from_secret(ca_before.as_ref());
    let stored_bundle = stored.bundle_pem();
    // Only our APIServices count: one held by someone else (a conflict) is never written, and
    // must not hold a rotation in Publishing forever.
    let me = format!("{}/{}", names.namespace, names.owner);
    let bundle_of = |s: &APIService| {
        s.spec
            .as_ref()
            .and_then(|s| s.ca_bundle.as_ref())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let ours: Vec<Option<&APIService>> = existing
        .iter()
        .filter(|s| {
            s.as_ref()
                .is_none_or(|s| labelled_owner(s.labels()).as_deref() == Some(me.as_str()))
        })
        .map(Option::as_ref)
        .collect();
    let published = !stored_bundle.is_empty()
        && ours
            .iter()
            .all(|s| s.and_then(bundle_of).is_some_and(|b| b == stored_bundle));
    let published_bundle = ours.iter().flatten().find_map(|s| bundle_of(s));
    let mut observation = None;
    if stored.phase == rotation::Phase::Overlap {
        let target = probe::ProbeTarget {
            namespace: names.namespace.clone(),
            service: names.service.clone(),
            port_name: "https".into(),
            server_name: format!("{}.{}.svc", names.service, names.namespace),
        };
        observation = Some((ctx.probe)(ctx.client.clone(), target).await);
    }
    let served_by_active = match (&observation, &stored.active) {
        (Some(Ok(obs)), Some(active)) => probe::all_signed_by(obs, &active.cert_pem),
        _ => false,
    };

    let dns_names = crate::pki::service_dns_names(&names.service, &names.namespace);
    let ca_cn = format!("extension-apiserver-ca@{}/{}", names.namespace, names.owner);
    let plan = match certs::plan(&certs::PlanInputs {
        ca_secret: ca_before.as_ref(),
        serving_secret: serving_before.as_ref(),
        external: external.as_ref(),
        settings: &validated.certs,
        dns_names: &dns_names,
        ca_common_name: &ca_cn,
        now,
        force,
        published,
        published_bundle: published_bundle.as_deref(),
        served_by_active,
    }) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("cannot issue certificates: {e}");
            report_certificate_problem(
                ctx,
                eas,
                &names,
                aggregation.condition,
                reasons::CERTIFICATES_FAILED,
                msg,
                now,
            )
            .await?;
            return Err(e.into());
        }
    };
    if let Some(problem) = &plan.rotation.problem {
        return report_certificate_problem(
            ctx,
            eas,
            &names,
            aggregation.condition,
            reasons::CA_SECRET_INVALID,
            problem.clone(),
            now,
        )
        .await;
    }
    for (reason, note) in &plan.rotation.events {
        publish(ctx, eas, EventType::Normal, reason, note.clone()).await;
    }
    if let Some(r) = &plan.new_serving {
        publish(
            ctx,
            eas,
            EventType::Normal,
            "CertificateIssued",
            format!("issued a new serving certificate: {r}"),
        )
        .await;
    }
    ctx.metrics
        .set_cert_expiry(&names.namespace, &names.owner, "ca", plan.ca.not_after);
    ctx.metrics
        .set_cert_expiry(&names.namespace, &names.owner, "serving", plan.serving.not_after);

    let children = build::build(eas, &names, &plan.certs, &ctx.options);
    let spec_changed = previous.observed_generation != generation;
    let applier = Applier { ctx, eas, spec_changed };
    let applied = applier
        .apply_children(&names, children, ca_before, serving_before, existing)
        .await?;
    // Only now that the new certificates are stored is the request done.
    if plan.force_consumed {
        clear_rotate_annotation(ctx, &names).await?;
        publish(
            ctx,
            eas,
            EventType::Normal,
            "RotationRequestDone",
            format!("acted on {}; the annotation was removed", certs::ROTATE_ANNOTATION),
        )
        .await;
    }

    let mut certs_message = format!(
        "serving certificate for {} valid until {}; renewal due {}",
        dns_names[0],
        plan.serving.not_after_rfc3339(),
        crate::pki::rfc3339(plan.serving_renewal)
    );
    let rotation_state = &plan.certs.ca_state;
    if rotation_state.phase != rotation::Phase::Stable {
        certs_message.push_str(&format!("; CA rotation in phase {}", rotation_state.phase.as_str()));
        if let Some(Err(e)) = &observation {
            certs_message.push_str(&format!(" (cannot observe the replicas yet: {e})"));
        }
    }
    let certs_cond = Cond::ok(types::CERTIFICATES_READY, reasons::CERTIFICATES_VALID, certs_message);
    let api_cond = if applied.conflicts.is_empty() {
        status::api_services_available(&applied.api_services)
    } else {
        let msg = applied.conflicts.join("; ");
        publish(ctx, eas, EventType::Warning, reasons::API_SERVICE_CONFLICT, msg.clone()).await;
        Cond::fail(types::API_SERVICE_AVAILABLE, reasons::API_SERVICE_CONFLICT, msg)
    };
    let mut conds = vec![
        aggregation.condition,
        certs_cond,
        status::deployment_available(&applied.deployment),
        api_cond,
    ];
    let ready = status::ready(&conds);
    let is_ready = ready.is_true();
    conds.push(ready);
    let cert_status = crate::crd::CertificatesStatus {
        ca: Some(cert_info(&plan.ca)),
        serving: Some(cert_info(&plan.serving)),
        bundle: plan.bundle.iter().map(cert_info).collect(),
        next_serving_renewal: Some(crate::pki::rfc3339(plan.serving_renewal)),
        next_ca_rotation: plan.ca_rotation.map(crate::pki::rfc3339),
        rotation: (rotation_state.phase != rotation::Phase::Stable).then(|| crate::crd::RotationStatus {
            phase: rotation_state.phase.as_str().to_string(),
            since: crate::pki::rfc3339(rotation_state.since),
            reason: rotation_state.reason.clone(),
        }),
    };
    let api_service_names = applied
        .api_services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    write_status(ctx, eas, &names, &conds, Some(cert_status), api_service_names, now).await?;

    let resync = if is_ready { RESYNC } else { NOT_READY_RESYNC };
    Ok(Action::requeue(resync.min(plan.next_wakeup(now))))
}

/// Reads the CA named by `spec.certificates.caSecretRef`. The outer error is a failed API call;
/// the inner one a problem the user must fix.
async fn read_external_ca(
    secrets: &Api<Secret>,
    eas: &ExtensionApiServer,
) -> Result<Result<Option<crate::pki::CertKeyPair>, String>> {
    let Some(r) = eas.spec.certificates.as_ref().and_then(|c| c.ca_secret_ref.as_ref()) else {
        return Ok(Ok(None));
    };
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Ok(Err(format!(
            "spec.certificates.caSecretRef: Secret {} not found in namespace {}",
            r.name,
            eas.namespace().unwrap_or_default()
        )));
    };
    Ok(certs::pair_from_secret(&secret).map(Some).ok_or_else(|| {
        format!(
            "spec.certificates.caSecretRef: Secret {} must hold tls.crt and tls.key",
            r.name
        )
    }))
}

/// Sets `CertificatesReady=False` (and `Ready`) and retries later; nothing is applied.
async fn report_certificate_problem(
    ctx: &Context,
    eas: &ExtensionApiServer,
    names: &Names,
    aggregation: Cond,
    reason: &str,
    message: String,
    now: i64,
) -> Result<Action> {
    publish(ctx, eas, EventType::Warning, reason, message.clone()).await;
    let previous = eas.status.clone().unwrap_or_default();
    let conds = vec![aggregation, Cond::fail(types::CERTIFICATES_READY, reason, message)];
    let mut all = conds.clone();
    all.push(status::ready(&conds));
    write_status(ctx, eas, names, &all, previous.certificates, previous.api_services, now).await?;
    Ok(Action::requeue(NOT_READY_RESYNC))
}

async fn clear_rotate_annotation(ctx: &Context, names: &Names) -> Result<()> {
    let api: Api<ExtensionApiServer> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {certs::ROTATE_ANNOTATION: null}}});
    api.patch(&names.owner, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn cert_info(f: &crate::pki::CertFacts) -> crate::crd::CertificateInfo {
    crate::crd::CertificateInfo {
        not_after: f.not_after_rfc3339(),
        serial: f.serial_hex.clone(),
        sha256_fingerprint: f.sha256_hex.clone(),
    }
}

async fn write_status(
    ctx: &Context,
    eas: &ExtensionApiServer,
    names: &Names,
    conds: &[Cond],
    certificates: Option<crate::crd::CertificatesStatus>,
    api_services: Vec<String>,
    now: i64,
) -> Result<()> {
    let previous = eas.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::from_second(now).unwrap_or_default());
    let status = ExtensionApiServerStatus {
        observed_generation: eas.metadata.generation,
        conditions: status::to_conditions(conds, &previous.conditions, eas.metadata.generation, &now),
        api_services,
        certificates,
    };
    if eas.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<ExtensionApiServer> = Api::namespaced(ctx.client.clone(), &names.namespace);
    // Server-side apply, so fields left out (a finished rotation) are removed, which a merge
    // patch would keep.
    let patch = serde_json::json!({
        "apiVersion": "aggregation.dev/v1alpha1",
        "kind": "ExtensionApiServer",
        "status": status,
    });
    api.patch_status(
        &names.owner,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// What applying the children produced.
struct Applied {
    deployment: Deployment,
    api_services: Vec<APIService>,
    conflicts: Vec<String>,
}

struct Applier<'a> {
    ctx: &'a Context,
    eas: &'a ExtensionApiServer,
    spec_changed: bool,
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
                publish(
                    self.ctx,
                    self.eas,
                    EventType::Normal,
                    "Created",
                    format!("created {what}"),
                )
                .await;
            }
            Change::Updated if self.spec_changed => {
                publish(
                    self.ctx,
                    self.eas,
                    EventType::Normal,
                    "Updated",
                    format!("updated {what}"),
                )
                .await;
            }
            Change::Updated => {
                // The spec did not change, so someone else changed the object: drift, now repaired.
                publish(
                    self.ctx,
                    self.eas,
                    EventType::Normal,
                    "Repaired",
                    format!("repaired {what}, which had drifted from the spec"),
                )
                .await;
            }
            Change::Unchanged => {}
        }
        self.ctx.metrics.count_apply(K::kind(&()).as_ref(), change);
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

    async fn apply_children(
        &self,
        names: &Names,
        children: Children,
        ca_before: Option<Secret>,
        serving_before: Option<Secret>,
        api_services_before: Vec<Option<APIService>>,
    ) -> Result<Applied> {
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
            publish(
                self.ctx,
                self.eas,
                EventType::Normal,
                "Deleted",
                format!("deleted APIService {}, no longer in spec.versions", stale.name_any()),
            )
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

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
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

/// Deletes what owner references cannot: the cluster-scoped children and the kube-system
/// RoleBinding, found by their owner labels. Missing objects are fine.
async fn cleanup(eas: &ExtensionApiServer, ctx: &Context) -> Result<Action> {
    let names = Names::of(eas);
    let selector = names.owner_selector();
    let client = &ctx.client;
    let mut deleted = 0;
    deleted += delete_labelled(&Api::<APIService>::all(client.clone()), &selector).await?;
    deleted += delete_labelled(&Api::<ClusterRoleBinding>::all(client.clone()), &selector).await?;
    deleted += delete_labelled(&Api::<ClusterRole>::all(client.clone()), &selector).await?;
    deleted += delete_labelled(&Api::<RoleBinding>::namespaced(client.clone(), KUBE_SYSTEM), &selector).await?;
    publish(
        ctx,
        eas,
        EventType::Normal,
        "CleanedUp",
        format!("deleted {deleted} cluster-scoped and kube-system objects"),
    )
    .await;
    ctx.metrics.forget_cert_expiry(&names.namespace, &names.owner);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests;
