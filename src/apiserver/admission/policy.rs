//! ValidatingAdmissionPolicy: not evaluated yet.

use super::namespace_lifecycle::Namespaces;
use super::Plugin;
use std::sync::Arc;

/// The cluster's ValidatingAdmissionPolicies and their bindings.
pub struct Policies {
    _namespaces: Arc<Namespaces>,
}

impl Policies {
    /// Starts following the policies and bindings of the cluster.
    pub fn follow(_client: kube::Client, namespaces: Arc<Namespaces>) -> Arc<Policies> {
        Arc::new(Policies {
            _namespaces: namespaces,
        })
    }
}

impl Plugin for Policies {
    fn name(&self) -> &'static str {
        "ValidatingAdmissionPolicy"
    }

    fn configured(&self) -> bool {
        false
    }
}
