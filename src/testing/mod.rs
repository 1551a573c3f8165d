//! Test doubles and the test kit, shared by unit tests, integration tests and the benchmarks.
//! Compiled only with the `test-support` feature (integration tests enable it through the
//! package's dev-dependency on itself).

pub mod certs;
pub mod fake_api;
pub mod kube_double;
pub mod testkit;
