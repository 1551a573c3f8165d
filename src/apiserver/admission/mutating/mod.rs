//! MutatingAdmissionPolicy: the cluster's policies and bindings
//! (`admissionregistration.k8s.io/v1`), applied to this server's writes in the mutating phase
//! as kube-apiserver's `MutatingAdmissionPolicy` plugin applies them to its own
//! (k8s.io/apiserver `pkg/admission/plugin/policy/mutating`).
//!
//! Following, matching, params, `matchConditions` and `variables` are the
//! ValidatingAdmissionPolicy's ([`super::policy`]). Per write: every binding (and param) of
//! every matching policy is an invocation; its `matchConditions` are checked against the
//! object as it is then, and its `mutations` run in order, each seeing the object as the
//! previous one left it: a `JSONPatch` expression's patch is applied, an
//! `ApplyConfiguration` expression's object merged in ([`patch`]). An error (a configuration
//! error, a failing expression or patch) refuses the write in kube's words under
//! `failurePolicy: Fail` and is ignored under `Ignore`. Invocations of policies with
//! `reinvocationPolicy: IfNeeded` run once more when a later invocation changed the object.
//!
//! Message construction is evaluated as maps that keep the type names, which are checked
//! against the field path as kube checks them ([`patch::constructed`]).
//!
//! Simplified: an apply configuration is merged by the version's declared schema with this
//! server's apply merge (no field ownership, as in kube), refusing undeclared fields and atomic
//! lists, maps and structs as kube does, but without kube's typed conversion of every value;
//! `jsonpatch.escapeKey` and `authorizer` are not available; reinvocation is within this
//! plugin only (a later webhook's change does not reinvoke a policy); JSON Patch errors other
//! than removing a missing key are worded by the `json-patch` crate (after kube's
//! `JSON Patch: `).

pub mod patch;

use super::namespace_lifecycle::Namespaces;
use super::policy::eval::{Expr, Input};
use super::policy::{forbidden, Binding, Hook, Policies, Policy, Step};
use super::{Attributes, Operation, Plugin};
use crate::apiserver::apierrors::Status;
use futures::future::BoxFuture;
use kube::api::ApiResource;
use serde_json::{json, Value};
use std::sync::Arc;

/// One entry of `mutations`.
pub enum Mutation {
    JsonPatch(Expr),
    ApplyConfiguration(Expr),
    /// A patch type this server does not know (kube's API refuses them).
    Unknown(String),
}

/// A MutatingAdmissionPolicy as read: the parts it shares with a ValidatingAdmissionPolicy
/// (name, constraints, param kind, failure policy, matchConditions, variables), its
/// mutations and whether it asks to be reinvoked.
pub struct MutatingPolicy {
    pub base: Policy,
    pub mutations: Vec<Mutation>,
    pub reinvoke: bool,
}

impl MutatingPolicy {
    pub fn parse(obj: &Value) -> Result<MutatingPolicy, String> {
        let base = Policy::parse(obj)?;
        let spec = &obj["spec"];
        let expr = |m: &Value, k: &str| -> Result<Expr, String> {
            m.pointer(&format!("/{k}/expression"))
                .and_then(Value::as_str)
                .map(Expr::mutation)
                .ok_or_else(|| format!("mutations: {k}.expression missing"))
        };
        let mutations = spec
            .get("mutations")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|m| match m.get("patchType").and_then(Value::as_str) {
                Some("JSONPatch") => expr(m, "jsonPatch").map(Mutation::JsonPatch),
                Some("ApplyConfiguration") => expr(m, "applyConfiguration").map(Mutation::ApplyConfiguration),
                other => Ok(Mutation::Unknown(other.unwrap_or_default().to_string())),
            })
            .collect::<Result<Vec<_>, String>>()?;
        for m in &mutations {
            if let Mutation::JsonPatch(e) | Mutation::ApplyConfiguration(e) = m {
                if let Some(err) = e.error() {
                    tracing::warn!(policy = %base.name, expression = %e.src, error = %err, "MutatingAdmissionPolicy expression does not compile here; it fails under the policy's failurePolicy");
                }
            }
        }
        Ok(MutatingPolicy {
            base,
            mutations,
            reinvoke: spec.get("reinvocationPolicy").and_then(Value::as_str) == Some("IfNeeded"),
        })
    }
}

/// The cluster's MutatingAdmissionPolicies and their bindings.
pub type MutatingPolicies = Policies<MutatingPolicy>;

/// Starts following the MutatingAdmissionPolicies and bindings of the cluster.
pub fn follow(client: kube::Client, namespaces: Arc<Namespaces>) -> Arc<MutatingPolicies> {
    let ar = |kind: &str, plural: &str| ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Policies::follow_with(
        client,
        namespaces,
        ar("MutatingAdmissionPolicy", "mutatingadmissionpolicies"),
        ar("MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings"),
        MutatingPolicy::parse,
    )
}

/// kube's `generic.PolicyError`: who refused, why, and the Status reason it carries.
struct PolicyError {
    policy: String,
    binding: Option<String>,
    message: String,
    /// `Invalid` for errors of an invocation; none for configuration errors.
    reason: Option<&'static str>,
    ignored: bool,
}

impl PolicyError {
    fn text(&self) -> String {
        match &self.binding {
            Some(b) => format!(
                "policy '{}' with binding '{b}' denied request: {}",
                self.policy, self.message
            ),
            None => format!("policy {:?} denied request: {}", self.policy, self.message),
        }
    }
}

/// One policy, binding and param that apply to the write.
struct Invocation<'h> {
    hook: &'h Hook<MutatingPolicy>,
    binding: &'h Binding,
    param: Value,
    /// The version the policy sees the object in.
    version: String,
}

/// Runs `inv`'s matchConditions and mutations on `a.object`; returns whether the object
/// changed. Errors are pushed to `errors`.
fn invoke(inv: &Invocation<'_>, a: &mut Attributes, ns: &Value, errors: &mut Vec<PolicyError>) -> bool {
    let p = &inv.hook.policy;
    let error = |message: String| PolicyError {
        policy: p.base.name.clone(),
        binding: Some(inv.binding.name.clone()),
        message,
        reason: Some("Invalid"),
        ignored: p.base.program.ignore_failures,
    };
    let input = |a: &Attributes| Input::new(&a.request(&inv.version), inv.param.clone(), ns.clone());
    match p.base.program.matches(&input(a)) {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            errors.push(error(e));
            return false;
        }
    }
    let Some(before) = a.object.clone() else { return false };
    let own_version = before.get("apiVersion").cloned();
    for m in &p.mutations {
        let result = match m {
            Mutation::JsonPatch(e) | Mutation::ApplyConfiguration(e) => {
                p.base.program.evaluate(&input(a), e).and_then(|v| {
                    let Some(obj) = a.object.as_mut() else { return Ok(()) };
                    // The patch applies to the object in the version the policy saw.
                    obj["apiVersion"] = json!(format!("{}/{}", a.resource.group, inv.version));
                    let r = match m {
                        Mutation::JsonPatch(_) => patch::json_patch(obj, &v),
                        _ => patch::apply_configuration(obj, &v, a.schema.as_deref()),
                    };
                    if let (Some(o), Some(v)) = (obj.as_object_mut(), &own_version) {
                        o.insert("apiVersion".into(), v.clone());
                    }
                    r
                })
            }
            Mutation::Unknown(t) => Err(format!("unsupported patch type: {t:?}")),
        };
        if let Err(e) = result {
            tracing::info!(policy = %p.base.name, binding = %inv.binding.name, error = %e, "MutatingAdmissionPolicy mutation failed");
            errors.push(error(e));
        }
    }
    a.object.as_ref() != Some(&before)
}

impl MutatingPolicies {
    /// The mutating phase for one write.
    pub async fn admit(&self, a: &mut Attributes) -> Result<(), Status> {
        // There is no object to mutate for a delete.
        if a.operation == Operation::Delete || a.object.is_none() {
            return Ok(());
        }
        let snap = self.current();
        if snap.hooks.is_empty() {
            return Ok(());
        }
        let ns = self.namespace_of(a);
        let mut errors: Vec<PolicyError> = Vec::new();
        let mut invocations: Vec<Invocation<'_>> = Vec::new();
        for hook in &snap.hooks {
            let p = &hook.policy.base;
            let Some((version, steps)) = self.select(a, p, &hook.bindings, ns.as_ref()).await else {
                continue;
            };
            for step in steps {
                match step {
                    Step::Error(b, e) => errors.push(PolicyError {
                        policy: p.name.clone(),
                        binding: b.map(|b| b.name.clone()),
                        message: match b {
                            None => format!("failed to configure policy: {e}"),
                            Some(_) => format!("failed to configure binding: {e}"),
                        },
                        reason: None,
                        ignored: p.program.ignore_failures,
                    }),
                    Step::Invoke(binding, param) => invocations.push(Invocation {
                        hook,
                        binding,
                        param,
                        version: version.clone(),
                    }),
                }
            }
        }
        let ns = ns.unwrap_or(Value::Null);
        // Which invocations ran and asked to be reinvoked, and whether a later one changed
        // the object after them.
        let mut ran_then_changed = vec![false; invocations.len()];
        for (i, inv) in invocations.iter().enumerate() {
            if invoke(inv, a, &ns, &mut errors) {
                for r in ran_then_changed.iter_mut().take(i) {
                    *r = true;
                }
            }
        }
        // A refusal ends the request before any reinvocation, as kube's dispatch returns it.
        if errors.iter().any(|e| !e.ignored) {
            return refusal(a, errors);
        }
        for (i, inv) in invocations.iter().enumerate() {
            if inv.hook.policy.reinvoke && ran_then_changed[i] {
                invoke(inv, a, &ns, &mut errors);
            }
        }
        refusal(a, errors)
    }
}

/// The dispatcher's answer: the errors not ignored (`failurePolicy: Ignore`) refuse the
/// request as kube refuses it: `admission.NewForbidden`, its message and reason replaced by
/// the first error's, every error a cause.
fn refusal(a: &Attributes, errors: Vec<PolicyError>) -> Result<(), Status> {
    let failed: Vec<&PolicyError> = errors.iter().filter(|e| !e.ignored).collect();
    let Some(first) = failed.first() else {
        return Ok(());
    };
    let mut s = forbidden(a, "admission request denied by policy");
    s.message = first.text();
    if let Some(r) = first.reason {
        s.reason = r;
    }
    if let Some(d) = s.details.as_mut() {
        let causes: Vec<Value> = failed.iter().map(|e| json!({"message": e.text()})).collect();
        d.insert("causes".into(), Value::Array(causes));
    }
    Err(s)
}

impl Plugin for MutatingPolicies {
    fn name(&self) -> &'static str {
        "MutatingAdmissionPolicy"
    }

    fn mutate<'a>(&'a self, a: &'a mut Attributes) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(self.admit(a))
    }

    fn not_ready(&self) -> Option<String> {
        self.sync_state()
    }

    fn configured(&self) -> bool {
        self.current().bindings
    }
}

#[cfg(test)]
mod tests;
