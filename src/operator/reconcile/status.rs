//! Status: conditions and certificate facts built only from what was observed and applied,
//! written with server-side apply when (and only when) they differ from what is stored.

use super::apply::Applied;
use super::certs::CertPlan;
use super::conditions::{self, reasons, types, Cond};
use super::context::Context;
use super::names::{Names, FIELD_MANAGER};
use super::probe;
use super::rotation;
use crate::crd::{CertificateInfo, CertificatesStatus, ExtensionApiServer, ExtensionApiServerStatus, RotationStatus};
use crate::operator::error::Result;
use crate::pki::{self, CertFacts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::Api;

/// The status to write after an apply (complete or stopped by a failure).
pub struct Desired {
    /// Every condition, `Ready` last.
    pub conditions: Vec<Cond>,
    /// Certificate facts.
    pub certificates: Option<CertificatesStatus>,
    /// Names of the APIServices applied.
    pub api_services: Vec<String>,
}

impl Desired {
    /// Whether `Ready` is true.
    pub fn is_ready(&self) -> bool {
        self.conditions.last().is_some_and(Cond::is_true)
    }

    /// Replaces the condition of `cond`'s type (adds it if absent) and recomputes `Ready`.
    pub fn replace_condition(&mut self, cond: Cond) {
        self.conditions.retain(|c| c.type_ != types::READY);
        match self.conditions.iter_mut().find(|c| c.type_ == cond.type_) {
            Some(c) => *c = cond,
            None => self.conditions.push(cond),
        }
        self.conditions.push(conditions::ready(&self.conditions));
    }
}

/// Builds the status from the plan and what the apply produced (or, past a failure, what the
/// caches show). Publishes the conflict Event.
pub async fn after_apply(
    ctx: &Context,
    eas: &ExtensionApiServer,
    names: &Names,
    aggregation: Cond,
    observation: Option<&Result<Vec<probe::Observed>, String>>,
    plan: &CertPlan,
    applied: &Applied,
) -> Desired {
    let dns_names = pki::service_dns_names(&names.service, &names.namespace);
    let mut certs_message = format!(
        "serving certificate for {} valid until {}; renewal due {}",
        dns_names[0],
        plan.serving.not_after_rfc3339(),
        pki::rfc3339(plan.serving_renewal)
    );
    let rotation_state = &plan.certs.ca_state;
    if rotation_state.phase != rotation::Phase::Stable {
        certs_message.push_str(&format!("; CA rotation in phase {}", rotation_state.phase.as_str()));
        if let Some(Err(e)) = observation {
            certs_message.push_str(&format!(" (cannot observe the replicas yet: {e})"));
        }
    }
    // Only what is in place counts: a certificate that could not be stored is not ready.
    let certs_cond = match (&applied.failure, applied.secrets_applied) {
        (Some(f), false) => Cond::fail(types::CERTIFICATES_READY, &f.reason, f.describe()),
        _ => Cond::ok(types::CERTIFICATES_READY, reasons::CERTIFICATES_VALID, certs_message),
    };
    let children_cond = match &applied.failure {
        Some(f) => Cond::fail(types::CHILDREN_APPLIED, &f.reason, f.describe()),
        None => Cond::ok(
            types::CHILDREN_APPLIED,
            reasons::APPLIED,
            "every child object is applied",
        ),
    };
    let deployment_cond = match &applied.deployment {
        Some(d) => conditions::deployment_available(d),
        None => Cond::unknown(
            types::DEPLOYMENT_AVAILABLE,
            reasons::DEPLOYMENT_PENDING,
            "the Deployment does not exist yet",
        ),
    };
    let api_cond = if !applied.conflicts.is_empty() {
        let msg = applied.conflicts.join("; ");
        ctx.publish(eas, EventType::Warning, reasons::API_SERVICE_CONFLICT, msg.clone())
            .await;
        Cond::fail(types::API_SERVICE_AVAILABLE, reasons::API_SERVICE_CONFLICT, msg)
    } else if !applied.waiting.is_empty() {
        let deployment = format!("{}/{}", names.namespace, names.workload);
        conditions::api_services_waiting(&applied.waiting, &deployment)
    } else if applied.api_services.is_empty() && applied.failure.is_some() {
        Cond::unknown(
            types::API_SERVICE_AVAILABLE,
            reasons::API_SERVICE_PENDING,
            "no APIService is registered yet",
        )
    } else {
        conditions::api_services_available(&applied.api_services)
    };
    let mut conds = vec![aggregation, certs_cond, children_cond, deployment_cond, api_cond];
    conds.extend(conditions::storage_durable(&eas.spec));
    conds.push(conditions::ready(&conds));
    let certificates = CertificatesStatus {
        ca: Some(cert_info(&plan.ca)),
        serving: Some(cert_info(&plan.serving)),
        bundle: plan.bundle.iter().map(cert_info).collect(),
        next_serving_renewal: Some(pki::rfc3339(plan.serving_renewal)),
        next_ca_rotation: plan.ca_rotation.map(pki::rfc3339),
        rotation: (rotation_state.phase != rotation::Phase::Stable).then(|| RotationStatus {
            phase: rotation_state.phase.as_str().to_string(),
            since: pki::rfc3339(rotation_state.since),
            reason: rotation_state.reason.clone(),
        }),
    };
    Desired {
        conditions: conds,
        certificates: if applied.secrets_applied {
            Some(certificates)
        } else {
            eas.status.as_ref().and_then(|s| s.certificates.clone())
        },
        api_services: applied
            .api_services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect(),
    }
}

/// Reports an invalid spec as `Ready=False` with a Warning Event; the rest of the status is
/// kept as it was.
pub async fn report_invalid_spec(
    ctx: &Context,
    eas: &ExtensionApiServer,
    names: &Names,
    problems: Vec<String>,
    now: i64,
) -> Result<()> {
    let message = problems.join("; ");
    ctx.publish(eas, EventType::Warning, reasons::INVALID_SPEC, message.clone())
        .await;
    let previous = eas.status.clone().unwrap_or_default();
    let desired = Desired {
        conditions: vec![Cond::fail(types::READY, reasons::INVALID_SPEC, message)],
        certificates: previous.certificates,
        api_services: previous.api_services,
    };
    write(ctx, eas, names, desired, now).await
}

/// Sets `CertificatesReady=False` (and `Ready`) with a Warning Event; nothing was applied.
pub async fn report_certificate_problem(
    ctx: &Context,
    eas: &ExtensionApiServer,
    names: &Names,
    aggregation: Cond,
    reason: &str,
    message: String,
    now: i64,
) -> Result<()> {
    ctx.publish(eas, EventType::Warning, reason, message.clone()).await;
    let previous = eas.status.clone().unwrap_or_default();
    let mut conds = vec![aggregation, Cond::fail(types::CERTIFICATES_READY, reason, message)];
    conds.push(conditions::ready(&conds));
    let desired = Desired {
        conditions: conds,
        certificates: previous.certificates,
        api_services: previous.api_services,
    };
    write(ctx, eas, names, desired, now).await
}

fn cert_info(f: &CertFacts) -> CertificateInfo {
    CertificateInfo {
        not_after: f.not_after_rfc3339(),
        serial: f.serial_hex.clone(),
        sha256_fingerprint: f.sha256_hex.clone(),
    }
}

/// Writes the status unless it is already what is stored.
pub async fn write(ctx: &Context, eas: &ExtensionApiServer, names: &Names, desired: Desired, now: i64) -> Result<()> {
    let previous = eas.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::from_second(now).unwrap_or_default());
    let status = ExtensionApiServerStatus {
        observed_generation: eas.metadata.generation,
        conditions: conditions::to_conditions(&desired.conditions, &previous.conditions, eas.metadata.generation, &now),
        versions: conditions::versions_column(&eas.spec),
        api_services: desired.api_services,
        certificates: desired.certificates,
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
