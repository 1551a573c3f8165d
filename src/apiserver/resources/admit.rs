//! The verbs' side of admission: the [`Attributes`] of a write, and the two phases with what
//! the verbs must do around them (a mutated object is pruned and defaulted again, as kube
//! decodes what a webhook returns).

use super::{Cx, StorageHandler};
use crate::apiserver::admission::attributes::{new_uid, Gvr};
use crate::apiserver::admission::{Attributes, Operation};
use crate::apiserver::apierrors::Status;
use crate::crd::ResourceScope;
use serde_json::{json, Value};
use std::sync::Arc;

impl Cx {
    /// The `*Options` of this write, as admission shows them.
    fn admission_options(&self, op: Operation) -> Value {
        let kind = match (op, self.verb.as_str()) {
            (Operation::Delete, _) => "DeleteOptions",
            (_, "patch") => "PatchOptions",
            (Operation::Create, _) => "CreateOptions",
            _ => "UpdateOptions",
        };
        let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
        if self.dry_run() {
            o["dryRun"] = json!(["All"]);
        }
        if op != Operation::Delete {
            // As sent (kube shows the options as decoded from the query, not the manager
            // it defaults from the User-Agent).
            if !self.q("fieldManager").is_empty() {
                o["fieldManager"] = json!(self.q("fieldManager"));
            }
            if !self.q("fieldValidation").is_empty() {
                o["fieldValidation"] = json!(self.q("fieldValidation"));
            }
            if self.verb == "patch" && !self.q("force").is_empty() {
                o["force"] = json!(super::apply::force(self));
            }
        }
        o
    }

    fn attributes(&self, op: Operation, name: &str, object: Option<&Value>, old: Option<&Value>) -> Attributes {
        let version = self.api_version.rsplit('/').next().unwrap_or_default().to_string();
        Attributes {
            uid: new_uid(),
            operation: op,
            resource: Gvr {
                group: self.group.clone(),
                version: version.clone(),
                resource: self.res.plural.clone(),
            },
            kind: Gvr {
                group: self.group.clone(),
                version,
                resource: self.res.kind.clone(),
            },
            subresource: if self.status_sub {
                "status".into()
            } else {
                String::new()
            },
            versions: self.res.versions.iter().map(|v| v.name.clone()).collect(),
            namespaced: self.res.scope == ResourceScope::Namespaced,
            namespace: self.namespace.clone(),
            name: name.to_string(),
            object: object.cloned(),
            old_object: old.cloned(),
            user: self.user.clone(),
            dry_run: self.dry_run(),
            options: self.admission_options(op),
            warnings: self.warnings.clone(),
            schema: self.schema().map(|s| Arc::new(s.clone())),
        }
    }
}

impl StorageHandler {
    /// The mutating phase for `v` (the object about to be written): what the plugins change
    /// is pruned and defaulted again before validation.
    pub(super) async fn admit_mutate(
        &self,
        cx: &Cx,
        op: Operation,
        v: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Status> {
        if self.admission.is_idle() {
            return Ok(());
        }
        let name = super::object::name_of(v);
        let mut a = cx.attributes(op, &name, Some(v), old);
        self.admission.mutate(&mut a).await?;
        if let Some(mut next) = a.object.take() {
            if next != *v {
                cx.at_version(&mut next);
                cx.prune_and_default(&mut next);
                *v = next;
            }
        }
        Ok(())
    }

    /// The validating phase for a write of `v` over `old` (`v` is none for a delete).
    pub(super) async fn admit_validate(
        &self,
        cx: &Cx,
        op: Operation,
        name: &str,
        v: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<(), Status> {
        if self.admission.is_idle() {
            return Ok(());
        }
        let a = cx.attributes(op, name, v, old);
        self.admission.validate(&a).await
    }

    /// Both phases for a delete of `old`: mutating plugins are told (they cannot change a
    /// deletion), then validating ones judge.
    pub(super) async fn admit_delete(&self, cx: &Cx, name: &str, old: &Value) -> Result<(), Status> {
        if self.admission.is_idle() {
            return Ok(());
        }
        let mut a = cx.attributes(Operation::Delete, name, None, Some(old));
        self.admission.mutate(&mut a).await?;
        a.object = None;
        self.admission.validate(&a).await
    }
}
