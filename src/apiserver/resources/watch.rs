//! `watch=true`: newline-delimited JSON events streamed until the timeout, the client leaving,
//! or server shutdown. Errors after the 200 (a too-old resourceVersion, a watcher that fell
//! behind) are ERROR events carrying a Status, as kube-apiserver sends them.

use super::Cx;
use crate::apiserver::body::{Body, BoxError};
use crate::apiserver::status::Status;
use crate::storage::{Storage, StorageError};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// Longest watch when the client sets no `timeoutSeconds` (kube-apiserver: 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn line(type_: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(type_.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn error_line(s: &Status) -> Bytes {
    line("ERROR", &serde_json::to_vec(&s.to_json()).unwrap_or_default())
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// Starts a watch and answers 200 with its stream; errors found before streaming are Status
/// responses (a bad selector) or ERROR events (Gone).
pub fn serve(storage: &Storage, cx: &Cx, shutdown: watch::Receiver<bool>) -> Response<Body> {
    let sel = match cx.selector() {
        Ok(s) => s,
        Err(s) => return s.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let bookmarks = truthy(cx.q("allowWatchBookmarks"));
    let timeout = cx
        .q("timeoutSeconds")
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let prefix = cx.prefix();
    let rv_param = cx.q("resourceVersion").to_string();
    let send_initial = truthy(cx.q("sendInitialEvents"));
    let kind = cx.res.kind.clone();
    let api_version = cx.api_version.clone();
    let bookmark = move |rv: u64, initial_end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": meta});
        line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
    };

    // The starting point and the synthetic ADDED events, decided before answering so that a
    // watch established after a write sees it.
    let mut initial: Vec<Bytes> = Vec::new();
    let start = match rv_param.as_str() {
        // Unset or "0": current state as ADDED events, then changes (kube-apiserver semantics).
        "" | "0" => None,
        s => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => return Status::bad_request(format!("invalid resource version {s:?}")).into_response(),
        },
    };
    let stream = if start.is_none() || send_initial {
        match storage.list(&prefix, None, None, |o| sel.matches(o)) {
            Ok(page) => {
                initial.extend(page.items.iter().map(|o| line("ADDED", &o.json)));
                if send_initial && bookmarks {
                    initial.push(bookmark(page.rv, true));
                }
                storage.watch(&prefix, Some(page.rv))
            }
            Err(e) => Err(e),
        }
    } else {
        storage.watch(&prefix, start)
    };
    let last_rv = start.unwrap_or_else(|| storage.current_rv());

    tokio::spawn(async move {
        let mut stream = match stream {
            Ok(s) => s,
            Err(StorageError::Gone { requested, oldest }) => {
                let s = Status::expired(format!("too old resource version: {requested} ({oldest})"));
                let _ = tx.send(error_line(&s)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(error_line(&Status::internal(e.to_string()))).await;
                return;
            }
        };
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let mut last_rv = last_rv;
        let mut shutdown = shutdown;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = &mut deadline => return,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() { return; }
                    continue;
                }
            };
            let out = match ev {
                None => return,
                Some(Err(_)) => {
                    // Fell behind the broadcast buffer: the client must re-list.
                    let s = Status::expired("too old resource version: watcher fell behind");
                    let _ = tx.send(error_line(&s)).await;
                    return;
                }
                Some(Ok(ev)) => {
                    last_rv = ev.rv();
                    if !sel.matches(&ev.object) {
                        continue;
                    }
                    line(ev.type_.as_str(), &ev.object.json)
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });

    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    }));
    let mut r = Response::new(body.boxed_unsync());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    r
}
