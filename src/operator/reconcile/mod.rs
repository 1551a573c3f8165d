//! Reconciling an `ExtensionApiServer`, as a pipeline with one call per stage:
//!
//! validate (pure) → observe (caches, reads only) → plan certificates (pure) → build children
//! (pure) → apply (server-side apply of what differs from the cache, one field manager) →
//! status (from what was applied and observed, written only when it changes).
//!
//! A failed apply is no error of the reconcile: it becomes `ChildrenApplied=False` and
//! `Ready=False` with the API server's reason and message, a Warning Event, and a retry after a
//! per-object back-off. Deletion runs [`cleanup`] under the finalizer `aggregation.dev/cleanup`.

pub mod aggregation;
pub mod apply;
pub mod build;
pub mod cache;
pub mod certs;
pub mod cleanup;
pub mod compact;
pub mod conditions;
pub mod context;
pub mod fingerprint;
pub mod names;
pub mod observe;
pub mod probe;
pub mod rotation;
pub mod settings;
pub mod status;
pub mod validate;

pub use context::{system_clock, Clock, Context};

use crate::crd::ExtensionApiServer;
use crate::operator::error::{Error, Result};
use conditions::reasons;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, ResourceExt};
use names::{Names, FINALIZER};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait between reconciles of a healthy object (a backstop; watches drive the rest).
const RESYNC: Duration = Duration::from_secs(3600);
/// Wait between reconciles while something is not ready yet.
const NOT_READY_RESYNC: Duration = Duration::from_secs(60);

/// Entry point for the controller. Waits until the caches have synced (a cache still loading
/// would look like missing children), and counts the requests this reconcile sends.
pub async fn reconcile(eas: Arc<ExtensionApiServer>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches.gate.wait().await;
    let counts = crate::operator::requests::RequestCounts::default();
    let counting = Arc::new(ctx.with_client(crate::operator::requests::counting_client(
        ctx.client.clone(),
        counts.clone(),
    )));
    // Boxed: the pipeline's future is large, and test threads have small stacks.
    let result = Box::pin(reconcile_counted(eas, counting)).await;
    ctx.metrics.observe_requests(&counts);
    result
}

async fn reconcile_counted(eas: Arc<ExtensionApiServer>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let ns = eas.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ExtensionApiServer> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, eas, |event| async {
        match event {
            FinalizerEvent::Apply(eas) => run(&eas, &ctx).await,
            FinalizerEvent::Cleanup(eas) => cleanup::cleanup(&eas, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed(), result.as_ref().err());
    result
}

/// Backs off per object, exponentially with jitter (errors that reach here are API failures
/// outside the apply: reading a user's CA, writing the status, the finalizer).
pub fn error_policy(eas: Arc<ExtensionApiServer>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?eas.namespace(), name = %eas.name_any(), error = %err, "reconcile failed");
    use kube::runtime::finalizer::Error as F;
    let inner = match err {
        Error::Finalizer(f) => match f.as_ref() {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            _ => err,
        },
        e => e,
    };
    let transient = match inner {
        Error::Kube(kube::Error::Api(s)) => apply::is_transient(s.code),
        _ => true,
    };
    let asked = match inner {
        Error::Kube(e) => apply::retry_after(e),
        _ => None,
    };
    Action::requeue(retry_delay(ctx.backoff.next(&backoff_key(&eas), transient), asked))
}

/// The back-off delay, but never sooner than the API server asked (`Retry-After`).
fn retry_delay(backoff: std::time::Duration, asked: Option<std::time::Duration>) -> std::time::Duration {
    asked.map_or(backoff, |a| backoff.max(a))
}

fn backoff_key(eas: &ExtensionApiServer) -> String {
    format!("{}/{}", eas.namespace().unwrap_or_default(), eas.name_any())
}

/// The pipeline for an object that is not being deleted.
async fn run(eas: &ExtensionApiServer, ctx: &Context) -> Result<Action> {
    let names = Names::of(eas);
    let now = (ctx.clock)();

    let validated = match validate::validate(&eas.spec) {
        Ok(v) => v,
        Err(problems) => {
            status::report_invalid_spec(ctx, eas, &names, problems, now).await?;
            // Nothing to retry until the spec changes.
            return Ok(Action::await_change());
        }
    };

    let observed = match observe::observe(ctx, eas, &names).await? {
        Ok(o) => o,
        Err(p) => {
            let reason = reasons::CA_SECRET_INVALID;
            status::report_certificate_problem(ctx, eas, &names, p.aggregation, reason, p.message, now).await?;
            return Ok(Action::requeue(NOT_READY_RESYNC));
        }
    };
    if let Some(e) = &observed.bad_force {
        ctx.publish(eas, EventType::Warning, "RotationRequestInvalid", e.clone())
            .await;
        clear_rotate_annotation(ctx, &names).await?;
    }

    let dns_names = crate::pki::service_dns_names(&names.service, &names.namespace);
    let ca_cn = format!("extension-apiserver-ca@{}/{}", names.namespace, names.owner);
    let plan = match certs::plan(&certs::PlanInputs {
        ca_secret: observed.before.ca_secret.as_ref(),
        serving_secret: observed.before.serving_secret.as_ref(),
        external: observed.external.as_ref(),
        settings: &validated.certs,
        dns_names: &dns_names,
        ca_common_name: &ca_cn,
        now,
        force: observed.force,
        published: observed.published,
        published_bundle: observed.published_bundle.as_deref(),
        served_by_active: observed.served_by_active,
    }) {
        Ok(p) => p,
        Err(e) => {
            let (reason, msg) = (reasons::CERTIFICATES_FAILED, format!("cannot issue certificates: {e}"));
            let aggregation = observed.aggregation;
            status::report_certificate_problem(ctx, eas, &names, aggregation, reason, msg, now).await?;
            return Err(e.into());
        }
    };
    if let Some(problem) = &plan.rotation.problem {
        let (aggregation, reason) = (observed.aggregation, reasons::CA_SECRET_INVALID);
        status::report_certificate_problem(ctx, eas, &names, aggregation, reason, problem.clone(), now).await?;
        return Ok(Action::requeue(NOT_READY_RESYNC));
    }
    announce_plan(ctx, eas, &names, &plan).await;

    let children = build::build(eas, &names, &plan.certs, &ctx.options);

    let previous = eas.status.clone().unwrap_or_default();
    let applier = apply::Applier {
        ctx,
        eas,
        spec_changed: previous.observed_generation != eas.metadata.generation,
    };
    let observe::Observed {
        aggregation,
        observation,
        etcd_secret_problem,
        ..
    } = observed;
    let applied = applier.apply_children(&names, children).await;
    // Only now that the new certificates are stored is the request done.
    if plan.force_consumed && applied.secrets_applied {
        clear_rotate_annotation(ctx, &names).await?;
        let note = format!("acted on {}; the annotation was removed", certs::ROTATE_ANNOTATION);
        ctx.publish(eas, EventType::Normal, "RotationRequestDone", note).await;
    }
    if let Some(f) = &applied.failure {
        tracing::warn!(namespace = %names.namespace, name = %names.owner, reason = %f.reason, "{}", f.describe());
        ctx.publish(eas, EventType::Warning, &f.reason, f.describe()).await;
        let desired = status::after_apply(ctx, eas, &names, aggregation, observation.as_ref(), &plan, &applied).await;
        status::write(ctx, eas, &names, desired, now).await?;
        let delay = retry_delay(ctx.backoff.next(&backoff_key(eas), f.transient), f.retry_after);
        return Ok(Action::requeue(delay));
    }
    ctx.backoff.reset(&backoff_key(eas));

    let mut desired = status::after_apply(ctx, eas, &names, aggregation, observation.as_ref(), &plan, &applied).await;
    // Everything is applied all the same: once the Secret exists, kubelet mounts it and the
    // pods start without another reconcile; until then the status says what is missing.
    if let Some(problem) = etcd_secret_problem {
        let reason = reasons::ETCD_SECRET_INVALID;
        ctx.publish(eas, EventType::Warning, reason, problem.clone()).await;
        let cond = conditions::Cond::fail(conditions::types::DEPLOYMENT_AVAILABLE, reason, problem);
        desired.replace_condition(cond);
    }
    let resync = if desired.is_ready() { RESYNC } else { NOT_READY_RESYNC };
    status::write(ctx, eas, &names, desired, now).await?;
    Ok(Action::requeue(resync.min(plan.next_wakeup(now))))
}

/// Events and metrics for what the certificate plan decided.
async fn announce_plan(ctx: &Context, eas: &ExtensionApiServer, names: &Names, plan: &certs::CertPlan) {
    for (reason, note) in &plan.rotation.events {
        ctx.publish(eas, EventType::Normal, reason, note.clone()).await;
    }
    if let Some(r) = &plan.new_serving {
        let note = format!("issued a new serving certificate: {r}");
        ctx.publish(eas, EventType::Normal, "CertificateIssued", note).await;
    }
    ctx.metrics
        .set_cert_expiry(&names.namespace, &names.owner, "ca", plan.ca.not_after);
    ctx.metrics
        .set_cert_expiry(&names.namespace, &names.owner, "serving", plan.serving.not_after);
}

async fn clear_rotate_annotation(ctx: &Context, names: &Names) -> Result<()> {
    let api: Api<ExtensionApiServer> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {certs::ROTATE_ANNOTATION: null}}});
    api.patch(&names.owner, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
