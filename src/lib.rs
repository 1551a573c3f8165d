//! extension-apiserver-operator: an operator that reconciles `ExtensionApiServer` objects into
//! everything the Kubernetes aggregation layer needs, and the building blocks of the bundled server.

pub mod apiserver;
pub mod crd;
pub mod crdgen;
pub mod pki;
pub mod rbac;
pub mod serverconfig;
