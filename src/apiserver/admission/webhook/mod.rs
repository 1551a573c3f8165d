//! Admission webhooks: the cluster's `MutatingWebhookConfiguration`s and
//! `ValidatingWebhookConfiguration`s applied to our resources as kube-apiserver applies them
//! to its own (k8s.io/apiserver's `plugin/webhook/{mutating,validating}` dispatchers).
//!
//! - Configurations are followed with watches and called in name order, webhooks in their
//!   configured order.
//! - Mutating webhooks run one after another, each seeing what the previous ones made of the
//!   object; one with `reinvocationPolicy: IfNeeded` is called once more when a later webhook
//!   changed the object after it ran.
//! - Validating webhooks run concurrently; a refusal is reported in configuration order.
//! - A call that fails (unreachable, TLS refused, timed out, an invalid answer) follows
//!   `failurePolicy`: `Fail` refuses the request with a 500 naming the webhook, `Ignore` lets
//!   it through with a log line and `apiserver_admission_webhook_fail_open_total`.

mod call;
mod hook;
mod review;
mod rules;

use super::metrics::{self, METRICS};
use super::namespace_lifecycle::Namespaces;
use super::source::Followed;
use super::{cel, Attributes, Plugin};
use crate::apiserver::apierrors::Status;
use call::Caller;
use futures::future::BoxFuture;
use hook::{FailurePolicy, Hook};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::Api;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Instant;

/// The cluster's webhooks, and how to call them.
pub struct Webhooks {
    mutating: Followed<MutatingWebhookConfiguration>,
    validating: Followed<ValidatingWebhookConfiguration>,
    namespaces: Arc<Namespaces>,
    caller: Caller,
}

/// Why a call did not give a verdict (kube's `ErrCallingWebhook`): judged by the failure policy.
struct CallError(String);

/// What one call decided.
enum Outcome {
    /// The webhook does not apply to this write.
    Skipped,
    /// Admitted; for a mutating webhook, the patch it returned (if any).
    Admitted(Option<Value>),
}

impl Webhooks {
    /// Starts following the webhook configurations of the cluster.
    pub fn follow(client: kube::Client, namespaces: Arc<Namespaces>) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            mutating: Followed::start(Api::all(client.clone()), "mutatingwebhookconfigurations"),
            validating: Followed::start(Api::all(client.clone()), "validatingwebhookconfigurations"),
            namespaces,
            caller: Caller::new(Some(client)),
        })
    }

    fn mutating_hooks(&self) -> Vec<Hook> {
        hooks(&self.mutating, |c, name| {
            c.webhooks.iter().flatten().map(|w| Hook::mutating(name, w)).collect()
        })
    }

    fn validating_hooks(&self) -> Vec<Hook> {
        hooks(&self.validating, |c, name| {
            c.webhooks.iter().flatten().map(|w| Hook::validating(name, w)).collect()
        })
    }

    /// Calls `h` for `a` if it applies; a [`CallError`] is left to the failure policy.
    async fn call(&self, h: &Hook, a: &Attributes) -> Result<Result<Outcome, CallError>, Status> {
        let Some(version) = rules::matched_version(h, a) else {
            return Ok(Ok(Outcome::Skipped));
        };
        let ns = if a.namespaced && !a.namespace.is_empty() && h.namespace_selector.is_some() {
            self.namespaces.object(&a.namespace)
        } else {
            None
        };
        match rules::namespace_selected(h, a, ns.as_ref()).and_then(|n| Ok(n && rules::object_selected(h, a)?)) {
            Ok(true) => {}
            Ok(false) => return Ok(Ok(Outcome::Skipped)),
            Err(e) => return Ok(Err(CallError(format!("invalid selector: {e}")))),
        }
        if !h.match_conditions.is_empty() {
            let vars = cel::request_vars(a, &version);
            for c in &h.match_conditions {
                let r = cel::compile(&c.expression).and_then(|p| cel::eval_bool(&p, &vars));
                match r {
                    Ok(true) => {}
                    Ok(false) => return Ok(Ok(Outcome::Skipped)),
                    Err(e) => {
                        return Ok(Err(CallError(format!(
                            "failed evaluating match condition {:?}: {e}",
                            c.name
                        ))))
                    }
                }
            }
        }
        if a.dry_run && !h.dry_run_safe {
            return Err(Status::bad_request(format!(
                "admission webhook {:?} does not support dry run",
                h.name
            )));
        }
        let Some(review_version) = h.review_version() else {
            return Ok(Err(CallError(format!(
                "webhook does not accept known AdmissionReview versions: {:?}",
                h.review_versions
            ))));
        };
        let body = serde_json::to_vec(&review::request(a, &version, review_version)).unwrap_or_default();
        let labels = metrics::webhook(&h.name, h.mutating, a.operation.as_str());
        let started = Instant::now();
        let answer = self.caller.post(&h.client, h.timeout, body).await;
        METRICS
            .durations
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let verdict = match answer {
            Ok(b) => match review::parse(&b, &a.uid, review_version, h.mutating) {
                Ok(v) => v,
                Err(e) => return Ok(Err(CallError(e))),
            },
            Err(e) => return Ok(Err(CallError(format!("failed to call webhook: {e}")))),
        };
        for w in verdict.warnings {
            a.warn(w);
        }
        for (k, v) in verdict.audit_annotations {
            // There is no audit log here; the annotation is logged under kube's key.
            tracing::info!(webhook = %h.name, annotation = %format!("{}/{k}", h.name), value = %v, uid = %a.uid, "admission audit annotation");
        }
        if !verdict.allowed {
            METRICS.rejections.get_or_create(&labels).inc();
            return Err(denied(&h.name, verdict.status.as_ref()));
        }
        Ok(Ok(Outcome::Admitted(verdict.patch.map(|p| {
            // The patch applies to the object in the version the webhook saw.
            serde_json::json!({"version": version, "patch": p})
        }))))
    }

    /// `failurePolicy` applied to a failed call: `Ok` when the request may go on.
    fn judge_failure(&self, h: &Hook, a: &Attributes, e: CallError) -> Result<(), Status> {
        let message = format!("failed calling webhook {:?}: {}", h.name, e.0);
        match h.failure_policy {
            FailurePolicy::Ignore => {
                tracing::warn!(webhook = %h.name, configuration = %h.configuration, error = %message, "webhook failed and is ignored (failurePolicy: Ignore)");
                METRICS
                    .fail_open
                    .get_or_create(&metrics::webhook(&h.name, h.mutating, a.operation.as_str()))
                    .inc();
                Ok(())
            }
            FailurePolicy::Fail => {
                tracing::warn!(webhook = %h.name, configuration = %h.configuration, error = %message, "webhook failed; request refused (failurePolicy: Fail)");
                Err(internal_error(&message))
            }
        }
    }

    /// Runs one mutating webhook and applies its patch to `a.object`. Returns whether the
    /// object changed.
    async fn mutate_one(&self, h: &Hook, a: &mut Attributes) -> Result<bool, Status> {
        let outcome = match self.call(h, a).await? {
            Ok(o) => o,
            Err(e) => {
                self.judge_failure(h, a, e)?;
                return Ok(false);
            }
        };
        let Outcome::Admitted(Some(p)) = outcome else {
            return Ok(false);
        };
        let (Some(obj), Some(version)) = (a.object.as_mut(), p["version"].as_str()) else {
            return Ok(false);
        };
        let before = obj.clone();
        let own = obj.get("apiVersion").cloned();
        obj["apiVersion"] = Value::String(format!("{}/{version}", a.resource.group));
        let patch: json_patch::Patch = serde_json::from_value(p["patch"].clone())
            .map_err(|e| internal_error(&format!("webhook {:?} returned an invalid JSON patch: {e}", h.name)))?;
        if let Err(e) = json_patch::patch(obj, &patch) {
            *obj = before;
            return Err(internal_error(&format!(
                "webhook {:?} returned a patch that does not apply: {e}",
                h.name
            )));
        }
        if let (Some(m), Some(v)) = (obj.as_object_mut(), own) {
            m.insert("apiVersion".into(), v);
        }
        Ok(*obj != before)
    }
}

/// The webhooks of every configuration, configurations in name order.
fn hooks<K>(configs: &Followed<K>, of: impl Fn(&K, &str) -> Vec<Hook>) -> Vec<Hook>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone,
{
    configs
        .sorted()
        .iter()
        .flat_map(|c| of(c, c.meta().name.as_deref().unwrap_or_default()))
        .collect()
}

/// kube's `NewInternalError`: 500, the cause repeated in `details.causes`.
fn internal_error(message: &str) -> Status {
    let mut details = Map::new();
    details.insert("causes".into(), serde_json::json!([{"message": message}]));
    Status {
        details: Some(details),
        ..Status::internal(format!("Internal error occurred: {message}"))
    }
}

/// kube's `webhookerrors.ToStatusErr`: the webhook's Status with a code of at least 400 and
/// the message prefixed with who denied the request.
fn denied(name: &str, status: Option<&Value>) -> Status {
    let empty = Value::Object(Map::new());
    let s = status.unwrap_or(&empty);
    let by = format!("admission webhook {name:?} denied the request");
    let message = s.get("message").and_then(Value::as_str).filter(|m| !m.is_empty());
    let reason = s.get("reason").and_then(Value::as_str).unwrap_or_default();
    let text = match (message, reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = s.get("code").and_then(Value::as_u64).unwrap_or(0) as u16;
    let mut out = Status::custom(code.max(400), reason, text);
    out.details = s.get("details").and_then(Value::as_object).cloned();
    out
}

impl Plugin for Webhooks {
    fn name(&self) -> &'static str {
        "admission webhooks"
    }

    fn not_ready(&self) -> Option<String> {
        self.mutating.not_ready().or_else(|| self.validating.not_ready())
    }

    fn configured(&self) -> bool {
        !self.mutating.store.is_empty() || !self.validating.store.is_empty()
    }

    fn mutate<'a>(&'a self, a: &'a mut Attributes) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            if a.object.is_none() && a.operation != super::Operation::Delete {
                return Ok(());
            }
            let hooks = self.mutating_hooks();
            // Which webhooks ran, and whether the object changed after each did.
            let mut ran_then_changed = vec![false; hooks.len()];
            for (i, h) in hooks.iter().enumerate() {
                if self.mutate_one(h, a).await? {
                    for r in ran_then_changed.iter_mut().take(i) {
                        *r = true;
                    }
                }
            }
            // One more call for webhooks asking for it whose view of the object is out of date.
            for (i, h) in hooks.iter().enumerate() {
                if h.reinvoke && ran_then_changed[i] {
                    self.mutate_one(h, a).await?;
                }
            }
            Ok(())
        })
    }

    fn validate<'a>(&'a self, a: &'a Attributes) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            let hooks = self.validating_hooks();
            let results = futures::future::join_all(hooks.iter().map(|h| self.call(h, a))).await;
            for (h, r) in hooks.iter().zip(results) {
                match r? {
                    Ok(_) => {}
                    Err(e) => self.judge_failure(h, a, e)?,
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::admission::attributes::tests::attrs;
    use crate::testing::webhook::{Answer, WebhookServer};
    use base64::Engine;
    use serde_json::json;

    /// Adds label `key` unless present.
    fn labeller(key: &'static str) -> impl Fn(&Value) -> Answer {
        move |req: &Value| {
            if req["object"]["metadata"]["labels"].get(key).is_some() {
                return Answer::allow();
            }
            let patch = if req["object"]["metadata"]["labels"].is_object() {
                json!([{"op": "add", "path": format!("/metadata/labels/{key}"), "value": "1"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {key: "1"}}])
            };
            let p = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            Answer {
                response: json!({"allowed": true, "patchType": "JSONPatch", "patch": p}),
                delay: std::time::Duration::ZERO,
            }
        }
    }

    fn mutating(name: &str, hooks: &WebhookServer, path: &str, reinvoke: &str) -> MutatingWebhookConfiguration {
        let ca = base64::engine::general_purpose::STANDARD.encode(&hooks.ca.cert_pem);
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{"name": format!("{name}.test"), "clientConfig": {"url": hooks.url(path), "caBundle": ca},
                "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}],
                "sideEffects": "None", "admissionReviewVersions": ["v1"], "reinvocationPolicy": reinvoke}]
        }))
        .expect("configuration")
    }

    #[tokio::test]
    async fn a_webhook_asking_for_it_is_reinvoked_after_a_later_change() {
        let (a, b) = (labeller("a"), labeller("b"));
        let hooks = WebhookServer::start([127, 0, 0, 1].into(), &[], move |path, req| match path {
            "/a" => a(req),
            _ => b(req),
        })
        .await
        .expect("webhook server");
        let w = Webhooks {
            mutating: Followed::fixed(
                vec![
                    mutating("1-a", &hooks, "/a", "IfNeeded"),
                    mutating("2-b", &hooks, "/b", "Never"),
                ],
                "mutating",
            ),
            validating: Followed::fixed(vec![], "validating"),
            namespaces: Arc::new(Namespaces::Any),
            caller: Caller::new(None),
        };
        let mut at = attrs();
        w.mutate(&mut at).await.expect("admitted");
        assert_eq!(
            at.object.as_ref().map(|o| o["metadata"]["labels"].clone()),
            Some(json!({"a": "1", "b": "1"}))
        );
        // a ran, then b changed the object, so a saw it once more; b asked for nothing.
        assert_eq!((hooks.reviews("/a").len(), hooks.reviews("/b").len()), (2, 1));
        assert_eq!(
            hooks.reviews("/a")[1]["object"]["metadata"]["labels"],
            json!({"a": "1", "b": "1"})
        );

        // With `Never`, one call each.
        let w2 = Webhooks {
            mutating: Followed::fixed(
                vec![
                    mutating("1-a", &hooks, "/a", "Never"),
                    mutating("2-b", &hooks, "/b", "Never"),
                ],
                "mutating",
            ),
            ..w
        };
        let mut at = attrs();
        w2.mutate(&mut at).await.expect("admitted");
        assert_eq!((hooks.reviews("/a").len(), hooks.reviews("/b").len()), (3, 2));
    }

    #[test]
    fn denials_are_worded_as_kube_words_them() {
        let s = denied(
            "deny.example.com",
            Some(&json!({"message": "no", "code": 403, "reason": "Forbidden"})),
        )
        .to_json();
        assert_eq!(
            s["message"],
            "admission webhook \"deny.example.com\" denied the request: no"
        );
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(403), Some("Forbidden"))
        );
        let s = denied("d", None).to_json();
        assert_eq!(
            s["message"],
            "admission webhook \"d\" denied the request without explanation"
        );
        assert_eq!(s["code"], 400);
        let s = denied("d", Some(&json!({"code": 200, "reason": "Custom"}))).to_json();
        assert_eq!(
            (s["code"].as_u64(), s["message"].as_str()),
            (Some(400), Some("admission webhook \"d\" denied the request: Custom"))
        );
        let e = internal_error("failed calling webhook \"w\": failed to call webhook: x").to_json();
        assert_eq!(
            e["message"],
            "Internal error occurred: failed calling webhook \"w\": failed to call webhook: x"
        );
        assert_eq!(
            e["details"]["causes"][0]["message"],
            "failed calling webhook \"w\": failed to call webhook: x"
        );
    }
}
