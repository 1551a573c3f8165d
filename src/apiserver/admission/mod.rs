//! Admission: what kube-apiserver's admission chain decides about a write after it is
//! authorized and before it is stored. Only namespace lifecycle is implemented.

pub mod namespace_lifecycle;
