//! Admission: what kube-apiserver's admission chain decides about a write after it is
//! authorized and before it is stored, in kube-apiserver's order:
//!
//! 1. namespace lifecycle ([`namespace_lifecycle`], called by the create paths);
//! 2. the mutating phase: MutatingAdmissionPolicies ([`mutating`]), then mutating admission
//!    webhooks ([`webhook`]), one after another, each seeing what the previous ones made of
//!    the object;
//! 3. the validating phase, after the schema's own validation: ValidatingAdmissionPolicies
//!    ([`policy`]), then validating admission webhooks, all of which only judge.
//!
//! The verbs build one [`Attributes`] per write (`resources/admit.rs`) and call
//! [`Admission::mutate`] and [`Admission::validate`]; plugins never see the storage.

pub mod attributes;
pub mod cel;
pub mod metrics;
pub mod mutating;
pub mod namespace_lifecycle;
pub mod policy;
pub mod selector;
pub mod source;
pub mod webhook;

pub use attributes::{Attributes, Operation};

use crate::apiserver::apierrors::Status;
use futures::future::BoxFuture;
use std::sync::Arc;

/// One admission plugin. Both phases default to admitting, so a plugin implements only the
/// phase it takes part in.
pub trait Plugin: Send + Sync {
    /// The plugin's name, for `/readyz` and logs.
    fn name(&self) -> &'static str;

    /// The mutating phase: may change `a.object` (a JSON object with the request's
    /// apiVersion); an error refuses the request.
    fn mutate<'a>(&'a self, _a: &'a mut Attributes) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async { Ok(()) })
    }

    /// The validating phase: judges `a` as it will be stored.
    fn validate<'a>(&'a self, _a: &'a Attributes) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async { Ok(()) })
    }

    /// Why the plugin cannot judge yet (its configuration has not been read), if so. Until it
    /// can, writes are refused, as kube-apiserver refuses them until its admission informers
    /// have synced: admitting them unjudged would bypass the cluster's policy.
    fn not_ready(&self) -> Option<String> {
        None
    }

    /// Whether any configuration could apply to a write (false lets writes skip building
    /// attributes, so a cluster without webhooks or policies costs nothing).
    fn configured(&self) -> bool {
        true
    }
}

/// The chain of plugins the verbs call.
#[derive(Default, Clone)]
pub struct Admission {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Admission {
    /// No plugin: everything is admitted (standalone, and the in-process test doubles).
    pub fn none() -> Admission {
        Admission::default()
    }

    /// The plugins in the order they run in each phase.
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Admission {
        Admission { plugins }
    }

    /// Whether admission has nothing to do: every plugin is ready and none has a
    /// configuration (the verbs then skip building attributes).
    pub fn is_idle(&self) -> bool {
        self.plugins.iter().all(|p| p.not_ready().is_none() && !p.configured())
    }

    /// The first reason a plugin gives for not being ready.
    pub fn not_ready(&self) -> Option<String> {
        self.plugins
            .iter()
            .find_map(|p| p.not_ready().map(|why| format!("{}: {why}", p.name())))
    }

    fn ready(&self, a: &Attributes) -> Result<(), Status> {
        match self.not_ready() {
            // kube-apiserver's words for a write that arrives before admission has synced.
            Some(why) => {
                tracing::warn!(reason = %why, "write refused: admission not ready");
                Err(Status::forbidden(
                    &a.resource.group,
                    &a.resource.resource,
                    &a.name,
                    "not yet ready to handle request",
                ))
            }
            None => Ok(()),
        }
    }

    /// The mutating phase.
    pub async fn mutate(&self, a: &mut Attributes) -> Result<(), Status> {
        self.ready(a)?;
        for p in &self.plugins {
            p.mutate(a).await?;
        }
        Ok(())
    }

    /// The validating phase.
    pub async fn validate(&self, a: &Attributes) -> Result<(), Status> {
        self.ready(a)?;
        for p in &self.plugins {
            p.validate(a).await?;
        }
        Ok(())
    }
}
