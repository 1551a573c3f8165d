//! The operator wing: the controller, its reconcile pipeline, leader election, the admin
//! server (`/live`, `/ready`, `/metrics`), the RBAC it needs and grants, and `crdgen`.

pub mod admin;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod requests;
