//! extension-apiserver-operator: an operator that reconciles `ExtensionApiServer` objects into
//! everything the Kubernetes aggregation layer needs, and the building blocks of the bundled server.

pub mod admin;
pub mod apiserver;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod fake_api;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod rbac;
pub mod reconcile;
pub mod serverconfig;
pub mod storage;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
pub mod validate;
