//! Observe: read what the cluster shows before anything is written. The aggregation layer's
//! configuration, the stored certificates, a user's own CA, whether the etcd client Secret is
//! there, the published caBundles and (in the middle of a CA rotation) the leaves the server
//! replicas present. Nothing here writes, except Events, and everything but a user's own
//! Secrets (`spec.certificates.caSecretRef`, `spec.server.storage.etcd.secretRef`, not
//! labelled as ours, so not cached) comes from the caches.

use super::aggregation;
use super::build;
use super::certs::{self, Force};
use super::conditions::Cond;
use super::context::Context;
use super::names::{self, labelled_owner, Names};
use super::probe;
use super::rotation::{self, CaState};
use crate::crd::ExtensionApiServer;
use crate::operator::error::Result;
use crate::pki::CertKeyPair;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

/// The stored certificates, as cached.
pub struct Before {
    /// The CA Secret.
    pub ca_secret: Option<Secret>,
    /// The serving-certificate Secret.
    pub serving_secret: Option<Secret>,
}

/// What the cluster shows today.
pub struct Observed {
    /// The `AggregationLayerConfigured` condition.
    pub aggregation: Cond,
    /// A valid `aggregation.dev/rotate` request.
    pub force: Option<Force>,
    /// An invalid one: why, so it is reported and cleared.
    pub bad_force: Option<String>,
    /// The objects as read.
    pub before: Before,
    /// The user's own CA (`spec.certificates.caSecretRef`).
    pub external: Option<CertKeyPair>,
    /// Whether every APIService of ours publishes exactly the stored bundle.
    pub published: bool,
    /// The bundle one of our APIServices publishes now.
    pub published_bundle: Option<String>,
    /// What the replicas serve, observed only in the overlap phase of a CA rotation.
    pub observation: Option<Result<Vec<probe::Observed>, String>>,
    /// Whether every observed replica serves a leaf of the active CA.
    pub served_by_active: bool,
    /// Why the Secret of `spec.server.storage.etcd.secretRef` cannot be mounted (missing, or
    /// without one of its keys): the server pods would not start.
    pub etcd_secret_problem: Option<String>,
}

/// A problem the user must fix before anything can be applied.
pub struct Problem {
    /// The `AggregationLayerConfigured` condition, reported beside the problem.
    pub aggregation: Cond,
    /// What is wrong.
    pub message: String,
}

/// Reads the cluster. The outer error is a failed API call; the inner one a problem with the
/// user's CA Secret.
pub async fn observe(ctx: &Context, eas: &ExtensionApiServer, names: &Names) -> Result<Result<Observed, Problem>> {
    let aggregation = check_aggregation(ctx).await?;
    if let Some(w) = &aggregation.warning {
        ctx.publish(
            eas,
            EventType::Warning,
            super::conditions::reasons::FRONT_PROXY_CA_REUSED,
            w.clone(),
        )
        .await;
    }

    // A manual rotation request; an unknown value is reported and cleared by the caller.
    let (force, bad_force) = match eas.annotations().get(certs::ROTATE_ANNOTATION) {
        None => (None, None),
        Some(v) => match Force::parse(v) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        },
    };

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let cached = |name: &str| {
        ctx.caches
            .get::<Secret>(Some(&names.namespace), name)
            .map(|s| s.as_ref().clone())
    };
    let ca_secret = cached(&names.ca_secret);
    let serving_secret = cached(&names.serving_secret);
    let external = match read_external_ca(&secrets, eas).await? {
        Ok(pair) => pair,
        Err(message) => {
            return Ok(Err(Problem {
                aggregation: aggregation.condition,
                message,
            }))
        }
    };

    let etcd_secret_problem = check_etcd_secret(&secrets, eas).await?;

    // What the cluster shows today: the published caBundles, and (mid-rotation) the served leaves.
    let existing: Vec<Option<APIService>> = eas
        .spec
        .versions
        .iter()
        .map(|v| {
            ctx.caches
                .get::<APIService>(None, &names::api_service_name(&eas.spec.group, &v.name))
                .map(|s| s.as_ref().clone())
        })
        .collect();
    let stored = CaState::from_secret(ca_secret.as_ref());
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
    Ok(Ok(Observed {
        aggregation: aggregation.condition,
        force,
        bad_force,
        before: Before {
            ca_secret,
            serving_secret,
        },
        external,
        published,
        published_bundle,
        observation,
        served_by_active,
        etcd_secret_problem,
    }))
}

/// Checks the Secret named by `spec.server.storage.etcd.secretRef` (a user's, not labelled
/// as ours, so read, not cached): a missing one, or one without `ca.crt`, `tls.crt` or
/// `tls.key`, leaves the server pods waiting for their volume, which only the pod's Events
/// would otherwise tell.
async fn check_etcd_secret(secrets: &Api<Secret>, eas: &ExtensionApiServer) -> Result<Option<String>> {
    let Some(r) = build::pod::etcd(eas).and_then(|e| e.secret_ref.as_ref()) else {
        return Ok(None);
    };
    let field = "spec.server.storage.etcd.secretRef";
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Ok(Some(format!(
            "{field}: Secret {} not found in namespace {}; the server pods cannot start without it",
            r.name,
            eas.namespace().unwrap_or_default()
        )));
    };
    let has = |k: &str| {
        secret.data.as_ref().is_some_and(|d| d.contains_key(k))
            || secret.string_data.as_ref().is_some_and(|d| d.contains_key(k))
    };
    let missing: Vec<&str> = build::pod::ETCD_SECRET_KEYS.into_iter().filter(|k| !has(k)).collect();
    Ok((!missing.is_empty()).then(|| {
        format!(
            "{field}: Secret {} has no {}; it must hold ca.crt, tls.crt and tls.key, and the server pods cannot start without them",
            r.name,
            missing.join(", ")
        )
    }))
}

/// The aggregation-layer checks: the authentication ConfigMap from the cache; whether
/// apiregistration.k8s.io/v1 is served is asked only until it once was.
async fn check_aggregation(ctx: &Context) -> Result<aggregation::AggregationCheck> {
    use std::sync::atomic::Ordering;
    if !ctx.registration_served.load(Ordering::SeqCst) {
        let check = aggregation::check_registration(&ctx.client).await?;
        if let Some(unserved) = check {
            return Ok(unserved);
        }
        ctx.registration_served.store(true, Ordering::SeqCst);
    }
    let key = kube::runtime::reflector::ObjectRef::new(aggregation::AUTH_CONFIG_MAP).within(names::KUBE_SYSTEM);
    let cm = ctx.caches.auth_config.get(&key);
    Ok(aggregation::check_auth_config(cm.as_deref()))
}

/// Reads the CA named by `spec.certificates.caSecretRef`. The outer error is a failed API call;
/// the inner one a problem the user must fix.
async fn read_external_ca(
    secrets: &Api<Secret>,
    eas: &ExtensionApiServer,
) -> Result<Result<Option<CertKeyPair>, String>> {
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
