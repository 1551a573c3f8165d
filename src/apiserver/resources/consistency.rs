//! `resourceVersion` and `resourceVersionMatch` on a list, as kube-apiserver reads them:
//! - unset, `"0"` or `NotOlderThan` N ≤ current: the current state;
//! - N beyond the current version: wait briefly for it (a client that read from another
//!   replica), then 504 `ResourceVersionTooLarge`, which client-go retries;
//! - `Exact` N: the state at N, rebuilt from the event history while N is in it, else 410
//!   Expired (as etcd answers a compacted revision).
//!
//! Unset (and no continue token) is a consistent read, for gets and watches too: it reflects
//! every write acknowledged before it, made through any server on the same storage (see
//! [`Store::consistent_rv`]).

use super::Cx;
use crate::apiserver::apierrors::Status;
use crate::apiserver::storage::{StorageError, Store};
use http::StatusCode;
use serde_json::{json, Map};
use std::time::Duration;

/// How long a list waits for a resourceVersion it has not reached (kube-apiserver: 3 s).
const WAIT_FOR_RV: Duration = Duration::from_secs(3);

/// What the storage answers a continue token given with a resourceVersion.
const CONTINUE_WITH_RV: &str = "specifying resource version is not allowed when using continue";

/// Checks the list's version options against the store, waiting for a future version.
/// Returns the version an `Exact` list must be served at.
pub async fn check_list(cx: &Cx, store: &dyn Store) -> Result<Option<u64>, Status> {
    let rv = cx.q("resourceVersion");
    let rv_match = cx.q("resourceVersionMatch");
    let cont = cx.q("continue");
    // kube's `ValidateListOptions`: every problem at once, in its order.
    let mut causes: Vec<(String, String)> = Vec::new();
    let forbid = |field: &str, why: &str| (field.to_string(), format!("Forbidden: {why}"));
    if !rv_match.is_empty() {
        if rv.is_empty() {
            causes.push(forbid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !cont.is_empty() {
            causes.push(forbid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if !matches!(rv_match, "Exact" | "NotOlderThan") {
            causes.push((
                "resourceVersionMatch".into(),
                format!("Unsupported value: {rv_match:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""),
            ));
        }
        if rv_match == "Exact" && rv == "0" {
            causes.push(forbid(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if cx.query.contains_key("sendInitialEvents") {
        causes.push(forbid("sendInitialEvents", "sendInitialEvents is forbidden for list"));
    }
    if !causes.is_empty() {
        return Err(Status::invalid("meta.k8s.io", "ListOptions", "", &causes));
    }
    if !cont.is_empty() && !rv.is_empty() && rv != "0" {
        // The storage's check, after the token itself was read (a bad token is named first).
        store
            .list(&cx.prefix(), Some(1), Some(cont), |_| false)
            .map_err(|e| match e {
                StorageError::BadContinue(_) => cx.storage_err("", e),
                _ => Status::bad_request(CONTINUE_WITH_RV),
            })?;
        return Err(Status::bad_request(CONTINUE_WITH_RV));
    }
    let exact = rv_match == "Exact";
    if rv.is_empty() && cont.is_empty() {
        consistent_read(store).await?;
        return Ok(None);
    }
    if rv.is_empty() || rv == "0" {
        return Ok(None);
    }
    let want = parse_rv(rv).map_err(|e| Status::bad_request(format!("invalid resource version: {e}")))?;
    if !store.wait_for_rv(want, WAIT_FOR_RV).await {
        return Err(too_large(want, store.current_rv()));
    }
    Ok(exact.then_some(want))
}

/// Waits until `store` reflects every acknowledged write, as kube-apiserver's consistent
/// read from its watch cache does; 504 "Too large resource version" (which clients retry)
/// when the store does not catch up in time.
pub async fn consistent_read(store: &dyn Store) -> Result<(), Status> {
    store.consistent_rv().await.map(|_| ()).map_err(|e| match e {
        StorageError::TooLargeResourceVersion { requested, current } => too_large(requested, current),
        e => Status::internal(e.to_string()),
    })
}

/// A resourceVersion as kube's `APIObjectVersioner` parses it (`""` and `"0"` are 0), or its
/// error in Go's words: `strconv.ParseUint` takes ASCII digits only, no sign.
pub fn parse_rv(rv: &str) -> Result<u64, String> {
    if rv.is_empty() {
        return Ok(0);
    }
    let why = if !rv.bytes().all(|b| b.is_ascii_digit()) {
        "invalid syntax"
    } else {
        match rv.parse::<u64>() {
            Ok(v) => return Ok(v),
            Err(_) => "value out of range",
        }
    };
    Err(format!(
        "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: {why}"
    ))
}

/// What kube answers a get or watch whose resourceVersion does not parse: the storage's
/// error reaches the handler unconverted, so it is a 500 with no reason.
pub fn unparsable_rv(message: String) -> Status {
    Status {
        code: StatusCode::INTERNAL_SERVER_ERROR,
        reason: "",
        message,
        details: None,
    }
}

/// The answer to an `Exact` list of a version that is no longer the current one.
pub fn exact_gone(want: u64, current: u64) -> Status {
    Status::expired(format!("too old resource version: {want} ({current})"))
}

pub fn too_large(want: u64, current: u64) -> Status {
    let mut details = Map::new();
    details.insert(
        "causes".into(),
        json!([{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]),
    );
    details.insert("retryAfterSeconds".into(), json!(1));
    Status {
        code: StatusCode::GATEWAY_TIMEOUT,
        reason: "Timeout",
        message: format!("Too large resource version: {want}, current: {current}"),
        details: Some(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_versions_parse_as_go_parses_them() {
        assert_eq!(parse_rv(""), Ok(0));
        assert_eq!(parse_rv("42"), Ok(42));
        let bad = parse_rv("abc").expect_err("letters");
        assert_eq!(
            bad,
            "resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert!(parse_rv("+5").expect_err("sign").ends_with("invalid syntax"));
        assert!(parse_rv("99999999999999999999")
            .expect_err("too big")
            .ends_with("value out of range"));
    }
}
