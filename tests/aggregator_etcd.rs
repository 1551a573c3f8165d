//! The kubectl scenarios of `tests/aggregator.rs` with the bundled server on etcd, three
//! replicas behind one Service: every scenario again, compared with kube-apiserver serving the
//! same resources as CRDs, while the aggregator spreads the requests over the replicas.

#[path = "aggregator.rs"]
mod aggregator_scenarios;
