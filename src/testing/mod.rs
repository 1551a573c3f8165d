//! Test doubles, the test kit and the real-control-plane harness, shared by unit tests,
//! integration tests and the benchmarks. Compiled only with the `test-support` feature
//! (integration tests enable it through the package's dev-dependency on itself).

pub mod aggregated;
pub mod certs;
pub mod cluster_pki;
pub mod controlplane;
pub mod etcd;
pub mod etcd_cluster;
pub mod fake_api;
pub mod fake_caches;
pub mod harness;
pub mod kube_double;
pub mod netns;
pub mod pod;
pub mod pod_env;
pub mod pod_status;
pub mod pod_volumes;
pub mod tcp_proxy;
pub mod testkit;
pub mod tools;
pub mod webhook;
