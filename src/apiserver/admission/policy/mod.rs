//! ValidatingAdmissionPolicy: the cluster's policies and bindings
//! (`admissionregistration.k8s.io/v1`), applied to this server's writes as kube-apiserver's
//! `ValidatingAdmissionPolicy` plugin applies them to its own (k8s.io/apiserver
//! `pkg/admission/plugin/policy/validating`).
//!
//! Policies and bindings are followed with reflectors; every change rebuilds a snapshot of
//! the parsed and compiled policies with their bindings, which writes read without waiting.
//! Per write ([`Policies::check`]): each policy whose `matchConstraints` select the request,
//! then each of its bindings whose `matchResources` do, is evaluated once per param
//! ([`params`]) by [`eval`]; failed validations are acted on by the binding's
//! `validationActions` (Deny refuses, Warn adds a `Warning` header, Audit logs), and the first
//! denial is the answer, in kube's words.
//!
//! This file is over 500 lines because parsing, the snapshot and the dispatch loop share the
//! same few types and read best together; the unit tests are in `tests.rs`.
//!
//! Not supported: the `authorizer` variable (an expression that uses it fails, under the
//! policy's `failurePolicy`); `namespaceObject` carries the namespace's metadata and phase (no
//! spec); audit annotations are log lines (the server keeps no audit log).

pub mod eval;
pub mod matching;
pub mod params;

use super::metrics::{PolicyLabels, METRICS};
use super::namespace_lifecycle::Namespaces;
use super::{Attributes, Plugin};
use crate::apiserver::apierrors::Status;
use eval::{Annotation, Decision, Expr, Input, Program, Validation};
use futures::future::BoxFuture;
use futures::StreamExt;
use http::StatusCode;
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use params::{KubeParams, ParamKind, ParamSource};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// A policy as read: its name, constraints, param kind and compiled expressions.
pub struct Policy {
    pub name: String,
    /// `matchConstraints` (required by the API; a policy without is a configuration error).
    pub constraints: Option<Value>,
    pub param_kind: Option<ParamKind>,
    pub program: Program,
}

/// A binding as read.
pub struct Binding {
    pub name: String,
    pub policy: String,
    pub param_ref: Option<Value>,
    pub match_resources: Option<Value>,
    pub actions: Vec<String>,
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn list<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn name_of(obj: &Value) -> Result<String, String> {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "no metadata.name".to_string())
}

impl Policy {
    /// Reads a policy object; expressions that do not compile are kept (they fail when
    /// evaluated, under the policy's `failurePolicy`, as in kube) and logged.
    pub fn parse(obj: &Value) -> Result<Policy, String> {
        let name = name_of(obj)?;
        let spec = obj.get("spec").filter(|s| s.is_object()).ok_or("no spec")?;
        let named = |k: &str, expr: &str| -> Result<Vec<(String, Expr)>, String> {
            list(spec, k)
                .iter()
                .map(|x| {
                    let n = text(x, "name").unwrap_or_default();
                    let e = text(x, expr).ok_or_else(|| format!("{k}: {expr} missing"))?;
                    Ok((n, Expr::new(&e)))
                })
                .collect()
        };
        let validations = list(spec, "validations")
            .iter()
            .map(|v| {
                Ok(Validation {
                    expr: Expr::new(&text(v, "expression").ok_or("validations: expression missing")?),
                    message: text(v, "message"),
                    message_expression: text(v, "messageExpression")
                        .filter(|m| !m.is_empty())
                        .map(|m| Expr::new(&m)),
                    reason: text(v, "reason").filter(|r| !r.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let audit_annotations = list(spec, "auditAnnotations")
            .iter()
            .map(|a| {
                Ok((
                    text(a, "key").unwrap_or_default(),
                    Expr::new(&text(a, "valueExpression").ok_or("auditAnnotations: valueExpression missing")?),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let param_kind = spec.get("paramKind").filter(|p| p.is_object()).map(|p| ParamKind {
            api_version: text(p, "apiVersion").unwrap_or_default(),
            kind: text(p, "kind").unwrap_or_default(),
        });
        let program = Program {
            ignore_failures: spec.get("failurePolicy").and_then(Value::as_str) == Some("Ignore"),
            match_conditions: named("matchConditions", "expression")?,
            variables: named("variables", "expression")?,
            validations,
            audit_annotations,
        };
        let p = Policy {
            name,
            constraints: spec.get("matchConstraints").filter(|c| c.is_object()).cloned(),
            param_kind,
            program,
        };
        for e in p.expressions() {
            if let Some(err) = e.error() {
                tracing::warn!(policy = %p.name, expression = %e.src, error = %err, "admission policy expression does not compile here; it fails under the policy's failurePolicy");
            }
        }
        Ok(p)
    }

    fn expressions(&self) -> impl Iterator<Item = &Expr> {
        let p = &self.program;
        p.match_conditions
            .iter()
            .chain(&p.variables)
            .chain(&p.audit_annotations)
            .map(|(_, e)| e)
            .chain(
                p.validations
                    .iter()
                    .flat_map(|v| std::iter::once(&v.expr).chain(&v.message_expression)),
            )
    }
}

impl Binding {
    pub fn parse(obj: &Value) -> Result<Binding, String> {
        let name = name_of(obj)?;
        let spec = obj.get("spec").filter(|s| s.is_object()).ok_or("no spec")?;
        Ok(Binding {
            name,
            policy: text(spec, "policyName")
                .filter(|p| !p.is_empty())
                .ok_or("no spec.policyName")?,
            param_ref: spec.get("paramRef").filter(|p| p.is_object()).cloned(),
            match_resources: spec.get("matchResources").filter(|m| m.is_object()).cloned(),
            actions: list(spec, "validationActions")
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        })
    }
}

/// A policy with its bindings (`P` is a ValidatingAdmissionPolicy here, a
/// MutatingAdmissionPolicy in [`super::mutating`]).
pub struct Hook<P = Policy> {
    pub name: String,
    pub policy: Arc<P>,
    pub bindings: Vec<Arc<Binding>>,
}

/// What writes are judged by: the policies that have bindings, by name.
pub struct Snapshot<P = Policy> {
    pub hooks: Vec<Hook<P>>,
    /// Whether any binding exists.
    pub bindings: bool,
}

impl<P> Default for Snapshot<P> {
    fn default() -> Self {
        Snapshot {
            hooks: Vec::new(),
            bindings: false,
        }
    }
}

impl Snapshot<Policy> {
    /// Builds the snapshot of ValidatingAdmissionPolicies.
    pub fn build(policies: &[Value], bindings: &[Value]) -> Snapshot {
        Snapshot::build_with(policies, bindings, Policy::parse)
    }
}

impl<P> Snapshot<P> {
    /// Builds the snapshot from the objects as read; objects that do not parse are logged
    /// and skipped, bindings of policies that do not exist are skipped (as in kube).
    pub fn build_with(policies: &[Value], bindings: &[Value], parse: fn(&Value) -> Result<P, String>) -> Snapshot<P> {
        let mut parsed_bindings: Vec<Arc<Binding>> = bindings
            .iter()
            .filter_map(|b| match Binding::parse(b) {
                Ok(b) => Some(Arc::new(b)),
                Err(e) => {
                    tracing::warn!(binding = ?b.pointer("/metadata/name"), error = %e, "admission policy binding skipped");
                    None
                }
            })
            .collect();
        parsed_bindings.sort_by(|a, b| a.name.cmp(&b.name));
        let mut hooks: Vec<Hook<P>> = Vec::new();
        for p in policies {
            let name = p.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let mine: Vec<Arc<Binding>> = parsed_bindings.iter().filter(|b| b.policy == name).cloned().collect();
            if mine.is_empty() {
                continue;
            }
            match parse(p) {
                Ok(policy) => hooks.push(Hook {
                    name: name.to_string(),
                    policy: Arc::new(policy),
                    bindings: mine,
                }),
                Err(e) => tracing::warn!(policy = name, error = %e, "admission policy skipped"),
            }
        }
        hooks.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            hooks,
            bindings: !bindings.is_empty(),
        }
    }
}

/// The namespace object of a name, as [`Namespaces::object`] gives it.
pub type NamespaceLookup = Box<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// The cluster's admission policies of one kind and their bindings: ValidatingAdmissionPolicies
/// (`P` = [`Policy`]), or MutatingAdmissionPolicies ([`super::mutating`]).
pub struct Policies<P = Policy> {
    namespaces: NamespaceLookup,
    params: Box<dyn ParamSource>,
    snapshot: RwLock<Arc<Snapshot<P>>>,
    stores: Option<(Store<DynamicObject>, Store<DynamicObject>)>,
    parse: fn(&Value) -> Result<P, String>,
    synced: [AtomicBool; 2],
    last_error: Mutex<Option<String>>,
}

impl Policies {
    /// Starts following the ValidatingAdmissionPolicies and bindings of the cluster.
    pub fn follow(client: kube::Client, namespaces: Arc<Namespaces>) -> Arc<Policies> {
        let pol = ApiResource::erase::<ValidatingAdmissionPolicy>(&());
        let bind = ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&());
        Policies::follow_with(client, namespaces, pol, bind, Policy::parse)
    }
}

impl<P: Send + Sync + 'static> Policies<P> {
    /// Starts following the policies `pol` and bindings `bind` of the cluster, read by `parse`.
    pub fn follow_with(
        client: kube::Client,
        namespaces: Arc<Namespaces>,
        pol: ApiResource,
        bind: ApiResource,
        parse: fn(&Value) -> Result<P, String>,
    ) -> Arc<Policies<P>> {
        let pol_writer = reflector::store::Writer::new(pol.clone());
        let bind_writer = reflector::store::Writer::new(bind.clone());
        let (pol_store, bind_store) = (pol_writer.as_reader(), bind_writer.as_reader());
        let policies = Arc::new(Policies {
            namespaces: Box::new(move |ns| namespaces.object(ns)),
            params: Box::new(KubeParams::new(client.clone())),
            snapshot: RwLock::default(),
            stores: Some((pol_store, bind_store)),
            parse,
            synced: [AtomicBool::new(false), AtomicBool::new(false)],
            last_error: Mutex::default(),
        });
        for (i, (ar, writer)) in [(pol, pol_writer), (bind, bind_writer)].into_iter().enumerate() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let weak = Arc::downgrade(&policies);
            tokio::spawn(follow_kind(api, writer, weak, i, ar.kind.clone()));
        }
        policies
    }

    /// For tests: a fixed snapshot and param source.
    pub fn fixed(namespaces: NamespaceLookup, params: Box<dyn ParamSource>, snapshot: Snapshot<P>) -> Policies<P> {
        Policies {
            namespaces,
            params,
            snapshot: RwLock::new(Arc::new(snapshot)),
            stores: None,
            parse: |_| Err("a fixed snapshot".into()),
            synced: [AtomicBool::new(true), AtomicBool::new(true)],
            last_error: Mutex::default(),
        }
    }

    fn rebuild(&self) {
        let Some((p, b)) = &self.stores else { return };
        let values = |s: &Store<DynamicObject>| -> Vec<Value> {
            s.state()
                .iter()
                .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
                .collect()
        };
        // The policy and the binding watches rebuild from their own tasks. Reading both stores
        // under the write lock serialises the rebuilds, so the last one to run has seen both
        // events: otherwise a policy and its binding arriving together could each be read
        // without the other, and the snapshot stay without them until the next change.
        let Ok(mut s) = self.snapshot.write() else { return };
        let snap = Snapshot::build_with(&values(p), &values(b), self.parse);
        tracing::debug!(policies = snap.hooks.len(), "admission policy snapshot rebuilt");
        *s = Arc::new(snap);
    }

    pub(crate) fn current(&self) -> Arc<Snapshot<P>> {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// `namespaceObject` for the request's namespace (`None` for cluster-scoped requests or
    /// an unknown namespace).
    pub(crate) fn namespace_of(&self, a: &Attributes) -> Option<Value> {
        if a.namespace.is_empty() {
            None
        } else {
            (self.namespaces)(&a.namespace).map(namespace_object)
        }
    }

    /// Why the policies cannot be applied yet, if so.
    pub(crate) fn sync_state(&self) -> Option<String> {
        if self.synced.iter().all(|s| s.load(Ordering::Relaxed)) {
            return None;
        }
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        Some(match last {
            Some(e) => format!("policies and bindings not synced yet: {e}"),
            None => "policies and bindings not synced yet".into(),
        })
    }

    /// Which of the `bindings` of `p` (and which params) apply to `a`, in kube's
    /// `policyDispatcher` order: the policy's `matchConstraints`, its `paramKind`, then per
    /// binding its `matchResources` and params. `None` when the policy does not match; else the
    /// version the rules matched and the steps (invocations and configuration errors, in order).
    pub(crate) async fn select<'h>(
        &self,
        a: &Attributes,
        p: &Policy,
        bindings: &'h [Arc<Binding>],
        ns: Option<&Value>,
    ) -> Option<(String, Vec<Step<'h>>)> {
        let param_kind = p.param_kind.as_ref();
        let Some(constraints) = &p.constraints else {
            let err = "policy contained no match constraints, a required field".to_string();
            return Some((String::new(), vec![Step::Error(None, err)]));
        };
        let version = match matching::matches(constraints, a, ns) {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(e) => return Some((String::new(), vec![Step::Error(None, e)])),
        };
        let namespaced_params = match param_kind {
            None => false,
            Some(k) => match self.params.namespaced(k).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "paramKind discovery failed");
                    let err = format!("failed to find resource referenced by paramKind: '{}'", k.shown());
                    return Some((version, vec![Step::Error(None, err)]));
                }
            },
        };
        let mut steps = Vec::new();
        for b in bindings {
            if let Some(mr) = &b.match_resources {
                match matching::matches(mr, a, ns) {
                    Ok(Some(_)) => {}
                    Ok(None) => continue,
                    Err(e) => {
                        steps.push(Step::Error(Some(b), e));
                        continue;
                    }
                }
            }
            match params::collect(
                self.params.as_ref(),
                param_kind,
                namespaced_params,
                b.param_ref.as_ref(),
                &a.namespace,
            )
            .await
            {
                Ok(ps) => steps.extend(ps.into_iter().map(|param| Step::Invoke(b, param))),
                Err(e) => steps.push(Step::Error(Some(b), e)),
            }
        }
        Some((version, steps))
    }
}

/// One step of a policy's dispatch ([`Policies::select`]).
pub(crate) enum Step<'h> {
    /// A configuration error of the policy (no binding) or of a binding.
    Error(Option<&'h Binding>, String),
    /// The binding applies, with this param (`null` when none).
    Invoke(&'h Binding, Value),
}

impl Policies {
    /// The validating phase for one write.
    pub async fn check(&self, a: &Attributes) -> Result<(), Status> {
        let snap = self.current();
        if snap.hooks.is_empty() {
            return Ok(());
        }
        let ns = self.namespace_of(a);
        let mut denied: Vec<(String, Option<String>)> = Vec::new();
        for hook in &snap.hooks {
            self.check_policy(a, hook, ns.as_ref(), &mut denied).await;
        }
        match denied.into_iter().next() {
            Some((message, reason)) => Err(denial(a, message, reason.as_deref())),
            None => Ok(()),
        }
    }

    async fn check_policy(
        &self,
        a: &Attributes,
        hook: &Hook,
        ns: Option<&Value>,
        denied: &mut Vec<(String, Option<String>)>,
    ) {
        let p = &hook.policy;
        let count = |binding: &str, action: &str| count(&p.name, binding, action);
        let Some((version, steps)) = self.select(a, p, &hook.bindings, ns).await else {
            return;
        };
        let request = a.request(&version);
        for step in steps {
            let (b, param) = match step {
                Step::Error(b, e) => {
                    config_error(p, b.map(|b| b.name.as_str()), e, denied);
                    continue;
                }
                Step::Invoke(b, param) => (b, param),
            };
            let input = Input::new(&request, param, ns.cloned().unwrap_or(Value::Null));
            let out = p.program.validate(&input);
            let mut actions: Vec<&str> = Vec::new();
            for (i, d) in out.decisions.iter().enumerate() {
                match d {
                    Decision::Admit => {}
                    Decision::AdmitError(e) => {
                        tracing::info!(policy = %p.name, binding = %b.name, error = %e, "ValidatingAdmissionPolicy failed and was ignored (failurePolicy: Ignore)");
                        actions.push("error");
                    }
                    Decision::Deny { message, reason, .. } => {
                        for action in &b.actions {
                            match action.as_str() {
                                "Deny" => {
                                    denied.push((
                                            format!(
                                                "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
                                                p.name, b.name
                                            ),
                                            reason.clone(),
                                        ));
                                    actions.push("deny");
                                }
                                "Warn" => {
                                    a.warn(format!(
                                            "Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {message}",
                                            p.name, b.name
                                        ));
                                    actions.push("warn");
                                }
                                "Audit" => {
                                    let value = json!([{
                                        "message": message, "policy": p.name, "binding": b.name,
                                        "expressionIndex": i, "validationActions": b.actions,
                                    }]);
                                    tracing::info!(
                                        target: "audit",
                                        annotation = "validation.policy.admission.k8s.io/validation_failure",
                                        value = %value,
                                        "ValidatingAdmissionPolicy audit"
                                    );
                                    actions.push("audit");
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            for ann in &out.annotations {
                match ann {
                    Annotation::Publish(key, value) => {
                        let value: String = value.chars().take(10 * 1024).collect();
                        tracing::info!(target: "audit", annotation = %format!("{}/{key}", p.name), value = %value, "ValidatingAdmissionPolicy audit annotation");
                    }
                    Annotation::Error(message) => {
                        denied.push((
                            format!(
                                "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
                                p.name, b.name
                            ),
                            None,
                        ));
                        actions.push("deny");
                    }
                }
            }
            if actions.is_empty() {
                actions.push("allow");
            }
            actions.sort_unstable();
            actions.dedup();
            for act in actions {
                count(&b.name, act);
            }
        }
    }
}

/// Counts one policy check.
fn count(policy: &str, binding: &str, action: &str) {
    METRICS
        .policy_checks
        .get_or_create(&PolicyLabels {
            policy: policy.to_string(),
            policy_binding: binding.to_string(),
            enforcement_action: action.to_string(),
        })
        .inc();
}

/// `addConfigError`: a misconfiguration denies the request under `failurePolicy: Fail` and
/// is ignored under `Ignore`.
fn config_error(p: &Policy, binding: Option<&str>, err: String, denied: &mut Vec<(String, Option<String>)>) {
    count(&p.name, binding.unwrap_or_default(), "error");
    tracing::warn!(policy = %p.name, binding = ?binding, error = %err, "ValidatingAdmissionPolicy misconfigured");
    if p.program.ignore_failures {
        return;
    }
    let message = match binding {
        None => format!(
            "ValidatingAdmissionPolicy '{}' denied request: failed to configure policy: {err}",
            p.name
        ),
        Some(b) => format!(
            "ValidatingAdmissionPolicy '{}' with binding '{b}' denied request: failed to configure binding: {err}",
            p.name
        ),
    };
    denied.push((message, None));
}

async fn follow_kind<P: Send + Sync + 'static>(
    api: Api<DynamicObject>,
    writer: reflector::store::Writer<DynamicObject>,
    policies: Weak<Policies<P>>,
    index: usize,
    kind: String,
) {
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let Some(p) = policies.upgrade() else { return };
        match ev {
            Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => {}
            Ok(_) => {
                if !p.synced[index].swap(true, Ordering::Relaxed) {
                    tracing::info!(kind = %kind, "admission policy cache synced");
                }
                if let Ok(mut e) = p.last_error.lock() {
                    *e = None;
                }
                p.rebuild();
            }
            Err(e) if not_served(&e) => {
                // A cluster that does not serve the kind (MutatingAdmissionPolicy before
                // Kubernetes 1.36, or with its API turned off) has no such policies, as
                // kube-apiserver then runs no such plugin: nothing to wait for. The watcher
                // keeps retrying with backoff, so the kind is followed once it is served.
                if !p.synced[index].swap(true, Ordering::Relaxed) {
                    tracing::info!(kind = %kind, error = %e, "admission policy kind not served by the cluster; none apply");
                }
            }
            Err(e) => {
                tracing::warn!(kind = %kind, error = %e, "watch failed; retrying with backoff (the server needs get/list/watch on it)");
                if let Ok(mut last) = p.last_error.lock() {
                    *last = Some(format!("{kind}: {e}"));
                }
            }
        }
    }
}

/// Whether the cluster answered that it does not serve the kind (404 to the list).
fn not_served(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

/// `namespaceObject`: the namespace's metadata, without its type or managed fields, and its
/// phase (Terminating exactly when it is being deleted); its spec is not known here.
pub(crate) fn namespace_object(mut ns: Value) -> Value {
    let deleting = ns.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null());
    ns["status"] = json!({"phase": if deleting { "Terminating" } else { "Active" }});
    if let Some(m) = ns.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    if let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("ownerReferences");
        meta.remove("finalizers");
    }
    ns
}

/// kube's `admission.NewForbidden(a, why)`.
pub(crate) fn forbidden(a: &Attributes, why: &str) -> Status {
    // kube-apiserver 1.36 names the resource without the subresource here (a status update
    // is refused as `flunders.<group> "x" is forbidden: ...`).
    let resource = &a.resource.resource;
    let meta = |k: &str| {
        a.object
            .as_ref()
            .and_then(|o| o.pointer(&format!("/metadata/{k}")))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = if !a.name.is_empty() {
        a.name.clone()
    } else {
        meta("name")
            .or_else(|| meta("generateName"))
            .unwrap_or_else(|| "Unknown".into())
    };
    Status::forbidden(&a.resource.group, resource, &name, why)
}

/// kube's refusal: `admission.NewForbidden` with the decision's reason and its code.
fn denial(a: &Attributes, message: String, reason: Option<&str>) -> Status {
    let mut s = forbidden(a, &message);
    let (code, reason) = match reason.unwrap_or("Invalid") {
        "Forbidden" => (StatusCode::FORBIDDEN, "Forbidden"),
        "Unauthorized" => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        "RequestEntityTooLarge" => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
    };
    s.code = code;
    s.reason = reason;
    if let Some(d) = s.details.as_mut() {
        d.insert("causes".into(), json!([{"message": message}]));
    }
    s
}

impl Plugin for Policies {
    fn name(&self) -> &'static str {
        "ValidatingAdmissionPolicy"
    }

    fn validate<'a>(&'a self, a: &'a Attributes) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(self.check(a))
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
