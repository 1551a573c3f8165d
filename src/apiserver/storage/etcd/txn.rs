//! Writes: etcd transactions that compare the key's `mod_revision`, as kube-apiserver's etcd3
//! store does, then wait until the watch cache has seen them.

use super::super::engine::check;
use super::super::{Object, Preconditions, Result, StorageError};
use super::cache::decode;
use super::{backend, errors, EtcdStore};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde_json::Value;
use std::sync::Arc;

/// Most attempts of one update or delete that keeps losing races to other writers.
const MAX_ATTEMPTS: usize = 32;

/// The value as stored: the resourceVersion is the key's revision, not part of the JSON.
fn encode(value: &mut Value) -> Result<Vec<u8>> {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(value).map_err(backend)
}

impl EtcdStore {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `txn`, within the request timeout. A request the client could not even send (the
    /// member it picked refused the connection: it is down, and the client's balancer has not
    /// noticed yet) is sent again, to another member; any other failure is returned, since
    /// the transaction may have been applied.
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut kv = self.kv.clone();
            match tokio::time::timeout_at(deadline, kv.txn(txn.clone())).await {
                Err(_) => return Err(errors::timed_out(self.timeout)),
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) if never_sent(&e) && tokio::time::Instant::now() + RESEND < deadline => {
                    tokio::time::sleep(RESEND).await;
                }
                Ok(Err(e)) => return Err(errors::request_error(e)),
            }
        }
    }

    /// Waits until the cache has seen the write committed at `rev`, so the writer reads it.
    /// A timeout is an error although the write was committed: the caller cannot tell, as
    /// with any write whose answer was lost.
    async fn seen(&self, rev: u64) -> Result<()> {
        self.shared
            .cache
            .wait_for(rev, self.timeout, false)
            .await
            .map_err(|e| match e {
                StorageError::TooLargeResourceVersion { current, .. } => StorageError::Timeout(format!(
                    "revision {rev} was committed, but the watch cache has reached only {current} within {:?}",
                    self.timeout
                )),
                e => e,
            })
    }

    /// The object as etcd has it now.
    async fn fetch(&self, key: &str) -> Result<Option<Arc<Object>>> {
        let resp = self.txn(Txn::new().and_then([TxnOp::get(self.key(key), None)])).await?;
        first_get(&resp)
    }

    /// Creates `key`: a transaction on `mod_revision == 0`.
    pub(super) async fn create_(&self, key: &str, mut value: Value) -> Result<Arc<Object>> {
        let bytes = encode(&mut value)?;
        let k = self.key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, bytes, None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists);
        }
        let rev = revision(&resp);
        self.seen(rev).await?;
        Ok(Object::new(value, rev))
    }

    /// Replaces (`Some(value)`) or deletes (`None`) `key` if `pre` holds: checked against the
    /// state read, then written on `mod_revision ==` that state's, retried when another writer
    /// got there first.
    pub(super) async fn write(&self, key: &str, mut value: Option<Value>, pre: Preconditions) -> Result<Arc<Object>> {
        let bytes = value.as_mut().map(encode).transpose()?;
        let k = self.key(key);
        // The cache first (usually current); etcd's own state once the cache proved stale.
        let mut current = self.shared.cache.get(key);
        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let cur = match (check(current.as_ref(), &pre), &current) {
                (Ok(()), Some(cur)) => cur.clone(),
                (Err(e), _) if fresh => return Err(e),
                _ if fresh => return Err(StorageError::NotFound),
                _ => {
                    current = self.fetch(key).await?;
                    fresh = true;
                    continue;
                }
            };
            let op = match &bytes {
                Some(b) => TxnOp::put(k.clone(), b.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            };
            let rev = i64::try_from(cur.rv).unwrap_or(i64::MAX);
            let txn = Txn::new()
                .when([Compare::mod_revision(k.clone(), CompareOp::Equal, rev)])
                .and_then([op])
                .or_else([TxnOp::get(k.clone(), None)]);
            let resp = self.txn(txn).await?;
            if resp.succeeded() {
                let rev = revision(&resp);
                self.seen(rev).await?;
                return Ok(match value {
                    Some(v) => Object::new(v, rev),
                    None => Object::new(cur.value(), rev),
                });
            }
            // Another writer (or a stale cache): decide again on etcd's current state.
            current = first_get(&resp)?;
            fresh = true;
        }
        Err(StorageError::Conflict(format!(
            "gave up on {key} after {MAX_ATTEMPTS} attempts lost to concurrent writers"
        )))
    }
}

/// Pause before sending a request that could not be sent again.
const RESEND: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether the request failed before reaching etcd: the connection to the member was refused.
fn never_sent(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn revision(resp: &etcd_client::TxnResponse) -> u64 {
    resp.header().map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

/// The object of the transaction's first get, if the key exists.
fn first_get(resp: &etcd_client::TxnResponse) -> Result<Option<Arc<Object>>> {
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return match get.kvs().first() {
                Some(kv) => decode(kv.value(), kv.mod_revision()).map(Some),
                None => Ok(None),
            };
        }
    }
    Ok(None)
}
