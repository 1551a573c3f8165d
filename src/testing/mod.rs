//! Test support that needs more than the library itself: a real Kubernetes control plane
//! (etcd, kube-apiserver, kube-controller-manager) for integration tests. Compiled for the
//! library's own tests and with the `test-support` feature.

mod certs;
pub mod controlplane;
pub mod netns;
