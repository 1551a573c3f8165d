//! extension-apiserver-operator, as a library with two wings that never import each other:
//!
//! - [`operator`]: the kube-rs controller that reconciles `ExtensionApiServer` objects into
//!   everything the aggregation layer needs (certificates, Deployment, RBAC, APIServices).
//! - [`apiserver`]: the bundled aggregated API server (`extension-apiserver`), with its filter
//!   chain, resource handlers and storage.
//!
//! What both wings share is the contract between them: the CRD ([`crd`]), the configuration
//! file the operator renders and the server reads ([`serverconfig`]), certificates ([`pki`])
//! and logging ([`telemetry`]). Test doubles and the test kit live in [`testing`], compiled only
//! with the `test-support` feature.

pub mod apiserver;
pub mod crd;
pub mod operator;
pub mod pki;
pub mod serverconfig;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
