//! LIST: a page of a collection (label and field selectors, `limit`/`continue`), at the
//! consistency the `resourceVersion` parameters ask for (see [`super::consistency`]).

use super::{consistency, json_response, output, value_response, Cx, StorageHandler};
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::{self, Object, StorageError};
use http::{Response, StatusCode};
use serde_json::{json, Value};

impl StorageHandler {
    pub(super) async fn list(&self, cx: &Cx) -> Result<Response<Body>, Status> {
        let exact = consistency::check_list(cx, self.storage.as_ref()).await?;
        let sel = cx.selector()?;
        // kube reads limit as an int64 and pages only when it is positive, and not at
        // resourceVersion "0": that list comes whole from its watch cache.
        let limit = match cx.q("limit") {
            "" => None,
            l => match l.parse::<i64>() {
                Ok(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Ok(_) => None,
                Err(_) => return Err(Status::bad_request(format!("invalid limit {l:?}"))),
            },
        }
        .filter(|_| cx.q("resourceVersion") != "0");
        let cont = Some(cx.q("continue")).filter(|c| !c.is_empty());
        let keep = |o: &Object| sel.matches(o);
        let prefix = cx.prefix();
        // A version older than the store's own history is read from its backend while that
        // still has it (etcd until it compacts); then 410 Expired.
        let page = match exact {
            // As of a past version: etcd reads at that revision until it is compacted.
            Some(want) => match self.storage.list_at(&prefix, want, limit, &keep) {
                Ok(p) => Ok(p),
                Err(StorageError::ContinueExpired(_)) => {
                    let token = storage::continue_at(&prefix, want);
                    self.storage.list_expired(&prefix, limit, &token, &keep).await
                }
                Err(e) => Err(e),
            }
            .map_err(|e| match e {
                StorageError::ContinueExpired(_) => consistency::exact_gone(want, self.storage.current_rv()),
                e => cx.storage_err("", e),
            })?,
            None => match self.storage.list(&prefix, limit, cont, keep) {
                Ok(p) => p,
                Err(StorageError::ContinueExpired(fresh)) => match cont {
                    Some(token) => match self.storage.list_expired(&prefix, limit, token, &keep).await {
                        Ok(p) => p,
                        Err(StorageError::ContinueExpired(fresh)) => return Ok(expired_continue(&fresh)),
                        Err(e) => return Err(cx.storage_err("", e)),
                    },
                    None => return Ok(expired_continue(&fresh)),
                },
                Err(e) => return Err(cx.storage_err("", e)),
            },
        };
        let mut meta = json!({"resourceVersion": page.rv.to_string()});
        if let Some(c) = &page.continue_token {
            meta["continue"] = json!(c);
        }
        if let Some(n) = page.remaining.filter(|_| sel.is_empty()) {
            meta["remainingItemCount"] = json!(n);
        }
        let values: Vec<Value> = if cx.form == output::Form::Object {
            Vec::new()
        } else {
            page.items.iter().map(|o| o.value()).collect()
        };
        if let Some(v) = output::list(cx, cx.form, &values, meta.clone())? {
            return Ok(value_response(StatusCode::OK, &v));
        }
        // A plain list always says `continue`, empty on the last page, as the CRD handler's does.
        if meta.get("continue").is_none() {
            meta["continue"] = json!("");
        }
        // Items are stored serialized; splice them in rather than re-parse every object.
        let mut out = Vec::with_capacity(page.items.iter().map(|o| o.json.len() + 1).sum::<usize>() + 256);
        out.extend_from_slice(
            format!(
                "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
                json!(cx.list_kind()),
                json!(cx.api_version),
                meta
            )
            .as_bytes(),
        );
        for (i, o) in page.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&cx.bytes_of(o));
        }
        out.extend_from_slice(b"]}");
        Ok(json_response(StatusCode::OK, out))
    }
}

/// kube-apiserver's answer to a continue token older than its storage's history (etcd3's
/// `handleCompactedErrorForPaging`): 410 Expired whose Status carries, in `metadata.continue`,
/// a token that goes on after the same key at the latest version.
fn expired_continue(fresh: &str) -> Response<Body> {
    let status = Status::expired(INCONSISTENT_CONTINUE);
    let mut body = status.to_json();
    body["metadata"]["continue"] = json!(fresh);
    let (parts, _) = status.into_response().into_parts();
    Response::from_parts(
        parts,
        crate::apiserver::body::full(bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default())),
    )
}

const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_expired_continue_carries_a_fresh_token_in_the_status() {
        let r = expired_continue("tok");
        assert_eq!(r.status(), StatusCode::GONE);
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "Expired");
        assert_eq!(v["code"], 410);
        assert_eq!(v["metadata"], json!({"continue": "tok"}));
    }
}
