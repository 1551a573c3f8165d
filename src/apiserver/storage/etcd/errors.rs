//! How etcd's failures reach clients: an etcd that cannot be reached is `Unavailable` (503),
//! one that does not answer in time is `Timeout` (504), as kube-apiserver answers them;
//! anything else stays a backend failure (500).

use super::super::StorageError;
use std::time::Duration;

/// gRPC `DEADLINE_EXCEEDED`.
const DEADLINE_EXCEEDED: i32 = 4;
/// gRPC `UNAVAILABLE`: no connection, or etcd has no leader.
const UNAVAILABLE: i32 = 14;

/// The storage error of a failed etcd request.
pub(super) fn request_error(e: etcd_client::Error) -> StorageError {
    match &e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StorageError::Unavailable(format!("etcd: {e}"))
        }
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == UNAVAILABLE => {
            StorageError::Unavailable(format!("etcd: {}", s.message()))
        }
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == DEADLINE_EXCEEDED => {
            StorageError::Timeout(format!("etcd: {}", s.message()))
        }
        _ => super::backend(e),
    }
}

/// The storage error of an etcd request that got no answer within `after`.
pub(super) fn timed_out(after: Duration) -> StorageError {
    StorageError::Timeout(format!("etcd did not answer within {after:?}"))
}
