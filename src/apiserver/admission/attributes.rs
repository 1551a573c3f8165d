//! What admission knows about one write: k8s.io/apiserver's `admission.Attributes`, and the
//! `admission.k8s.io/v1` `AdmissionRequest` that webhooks receive and policies see as
//! `request`.

use crate::apiserver::authn::UserInfo;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};

/// The operation, as admission names it (a patch or an apply is an `UPDATE`, or a `CREATE`
/// when an apply creates the object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// A group, version and resource (or kind).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub resource: String,
}

/// One write as admission sees it.
#[derive(Debug, Clone)]
pub struct Attributes {
    /// A fresh UID per request (webhooks must echo it).
    pub uid: String,
    pub operation: Operation,
    /// The resource and version of the URL.
    pub resource: Gvr,
    /// Its kind: `resource` of this [`Gvr`] holds the kind.
    pub kind: Gvr,
    /// `status`, or empty.
    pub subresource: String,
    /// Every version the server serves this resource in, for `matchPolicy: Equivalent`: the
    /// versions differ only in `apiVersion`, so each is an equivalent of the others.
    pub versions: Vec<String>,
    /// Whether the resource is namespaced.
    pub namespaced: bool,
    pub namespace: String,
    /// The object's name (empty for a create by `generateName`, as in kube: the name is given
    /// after admission has mutated the object).
    pub name: String,
    /// The new object (none for a delete).
    pub object: Option<Value>,
    /// The object before the write (none for a create).
    pub old_object: Option<Value>,
    pub user: UserInfo,
    pub dry_run: bool,
    /// `CreateOptions`, `UpdateOptions`, `PatchOptions` or `DeleteOptions`, as sent.
    pub options: Value,
    /// `Warning` headers for the response, shared with the request's own.
    pub warnings: Arc<Mutex<Vec<String>>>,
    /// The declared `openAPIV3Schema` of the request's version, if any (MutatingAdmissionPolicy
    /// merges apply configurations by it).
    pub schema: Option<Arc<Value>>,
}

impl Attributes {
    /// Adds a `Warning` header to the response.
    pub fn warn(&self, text: String) {
        if let Ok(mut w) = self.warnings.lock() {
            w.push(text);
        }
    }

    /// The labels of the object, or of the old object for a delete.
    pub fn labels(&self, old: bool) -> Option<&Map<String, Value>> {
        let o = if old {
            self.old_object.as_ref()
        } else {
            self.object.as_ref()
        };
        o?.pointer("/metadata/labels")?.as_object()
    }

    /// The `AdmissionRequest` for these attributes, with `version` standing for the request's
    /// own version (the one a webhook's rule matched, under `matchPolicy: Equivalent`).
    pub fn request(&self, version: &str) -> Value {
        let at = |v: &Option<Value>| match v {
            Some(o) => {
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.insert("apiVersion".into(), json!(format!("{}/{version}", self.resource.group)));
                }
                o
            }
            None => Value::Null,
        };
        let gvk = |g: &Gvr, v: &str| json!({"group": g.group, "version": v, "kind": g.resource});
        let gvr = |g: &Gvr, v: &str| json!({"group": g.group, "version": v, "resource": g.resource});
        let mut user = json!({"username": self.user.name});
        if !self.user.uid.is_empty() {
            user["uid"] = json!(self.user.uid);
        }
        if !self.user.groups.is_empty() {
            user["groups"] = json!(self.user.groups);
        }
        if !self.user.extra.is_empty() {
            user["extra"] = json!(self.user.extra);
        }
        let mut r = json!({
            "uid": self.uid,
            "kind": gvk(&self.kind, version),
            "resource": gvr(&self.resource, version),
            "requestKind": gvk(&self.kind, &self.kind.version),
            "requestResource": gvr(&self.resource, &self.resource.version),
            "name": self.name,
            "operation": self.operation.as_str(),
            "userInfo": user,
            "object": at(&self.object),
            "oldObject": at(&self.old_object),
            "dryRun": self.dry_run,
            "options": self.options,
        });
        if let Some(m) = r.as_object_mut() {
            // Go's omitempty.
            if !self.subresource.is_empty() {
                m.insert("subResource".into(), json!(self.subresource));
                m.insert("requestSubResource".into(), json!(self.subresource));
            }
            if !self.namespace.is_empty() {
                m.insert("namespace".into(), json!(self.namespace));
            }
            if self.name.is_empty() {
                m.remove("name");
            }
        }
        r
    }
}

/// A fresh request UID.
pub fn new_uid() -> String {
    crate::apiserver::resources::uuid()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn attrs() -> Attributes {
        Attributes {
            uid: new_uid(),
            operation: Operation::Create,
            resource: Gvr {
                group: "wardle.example.com".into(),
                version: "v1beta1".into(),
                resource: "flunders".into(),
            },
            kind: Gvr {
                group: "wardle.example.com".into(),
                version: "v1beta1".into(),
                resource: "Flunder".into(),
            },
            subresource: String::new(),
            versions: vec!["v1alpha1".into(), "v1beta1".into()],
            namespaced: true,
            namespace: "ns".into(),
            name: "f".into(),
            object: Some(
                json!({"apiVersion": "wardle.example.com/v1beta1", "kind": "Flunder", "metadata": {"name": "f"}}),
            ),
            old_object: None,
            user: UserInfo {
                name: "alice".into(),
                groups: vec!["system:authenticated".into()],
                ..Default::default()
            },
            dry_run: false,
            options: json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
            warnings: Default::default(),
            schema: None,
        }
    }

    #[test]
    fn requests_are_shaped_like_admission_v1() {
        let a = attrs();
        let r = a.request("v1alpha1");
        assert_eq!(
            r["kind"],
            json!({"group": "wardle.example.com", "version": "v1alpha1", "kind": "Flunder"})
        );
        assert_eq!(r["requestKind"]["version"], "v1beta1");
        assert_eq!(r["resource"]["resource"], "flunders");
        assert_eq!(r["object"]["apiVersion"], "wardle.example.com/v1alpha1");
        assert_eq!(r["oldObject"], Value::Null);
        assert_eq!(r["operation"], "CREATE");
        assert_eq!(r["namespace"], "ns");
        assert_eq!(
            r["userInfo"],
            json!({"username": "alice", "groups": ["system:authenticated"]})
        );
        assert!(r.get("subResource").is_none());
        assert_eq!(r["uid"].as_str().map(str::len), Some(36));
        assert_ne!(new_uid(), new_uid());
    }
}
