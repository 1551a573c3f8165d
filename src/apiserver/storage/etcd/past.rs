//! Lists at a revision older than the watch cache's history, read from etcd: a continuation
//! of a list begun before the cache's history (or before it re-listed) goes on at the first
//! page's revision as long as etcd keeps it, as kube-apiserver's continuations read etcd. Once
//! etcd has compacted that revision, the answer is kube's: `ContinueExpired` with a token that
//! goes on after the same key at the latest version.

use super::super::engine::{decode_continue, encode_continue};
use super::super::{ListPage, Object, Result, StorageError};
use super::cache::{decode, prefix_end};
use super::{backend, EtcdStore};
use etcd_client::GetOptions;
use std::sync::Arc;

/// Keys read per request.
const PAGE: i64 = 500;

/// What etcd answers a read at a compacted revision (kube matches it by this text too:
/// `rpctypes.ErrCompacted`).
const COMPACTED: &str = "required revision has been compacted";

impl EtcdStore {
    pub(super) async fn list_past(
        &self,
        prefix: &str,
        limit: Option<usize>,
        continue_token: &str,
        keep: &(dyn Fn(&Object) -> bool + Sync),
    ) -> Result<ListPage> {
        let token = decode_continue(continue_token)?;
        let Some(at) = u64::try_from(token.rv).ok().filter(|at| *at > 0) else {
            // Not a token of an earlier version: the cache answers it.
            return self.cache().list(prefix, limit, Some(continue_token), keep);
        };
        if !token.start.starts_with(prefix) {
            return Err(StorageError::BadContinue("token is for another list".into()));
        }
        let end = prefix_end(format!("{}{prefix}", self.prefix).as_bytes());
        let mut from = format!("{}{}", self.prefix, token.start).into_bytes();
        let mut items: Vec<Arc<Object>> = Vec::new();
        let mut next = None;
        let mut remaining = None;
        'pages: loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(token.rv);
            let mut kv = self.kv.clone();
            let resp = match tokio::time::timeout(self.timeout, kv.get(from.clone(), Some(opts))).await {
                Err(_) => return Err(super::errors::timed_out(self.timeout)),
                Ok(Err(e)) if e.to_string().contains(COMPACTED) => {
                    return Err(StorageError::ContinueExpired(encode_continue(-1, &token.start)));
                }
                Ok(Err(e)) => return Err(super::errors::request_error(e)),
                Ok(Ok(resp)) => resp,
            };
            for (i, item) in resp.kvs().iter().enumerate() {
                let key = item.key_str().map_err(backend)?;
                let Some(key) = key.strip_prefix(self.prefix.as_str()) else {
                    continue;
                };
                let object = decode(item.value(), item.mod_revision())?;
                if !keep(&object) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() == l) {
                    next = Some(key.to_string());
                    // etcd counts every key of the range, not only those it returned: the
                    // keys from this one on are what remains, as kube's etcd3 store says
                    // (the list handler drops it when a selector filtered the items).
                    let before = u64::try_from(i).unwrap_or(u64::MAX);
                    remaining = u64::try_from(resp.count()).ok().and_then(|c| c.checked_sub(before));
                    break 'pages;
                }
                items.push(object);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(ListPage {
            items,
            rv: at,
            continue_token: next.map(|k| encode_continue(token.rv, &k)),
            remaining,
        })
    }
}
