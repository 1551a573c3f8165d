//! `watch=true`: newline-delimited JSON events streamed until the timeout, the client leaving,
//! or server shutdown. Errors after the 200 (a too-old resourceVersion, a watcher that fell
//! behind) are ERROR events carrying a Status, as kube-apiserver sends them.

use super::output::{self, Form};
use super::table;
use super::Cx;
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::{Body, BoxError};
use crate::apiserver::storage::{EventType, Object, StorageError, Store, WatchEvent};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often a watch that allows bookmarks gets one: kube-apiserver's cacher sends them
/// "roughly every minute" (its `bookmarkFrequency`).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// The cacher also sends one this long before the watch's deadline, so the client can resume
/// from there.
const BOOKMARK_BEFORE_DEADLINE: Duration = Duration::from_secs(2);
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

/// kube's `validateWatchOptions`: watch-list parameters go together.
fn check_options(cx: &Cx) -> Result<(), Status> {
    let send_initial = flag(cx, "sendInitialEvents");
    let rvm = cx.q("resourceVersionMatch");
    let mut causes: Vec<(String, String)> = Vec::new();
    let field = || "resourceVersionMatch".to_string();
    if send_initial.is_some() && rvm != "NotOlderThan" {
        causes.push((
            field(),
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
        ));
    }
    if !rvm.is_empty() {
        if send_initial.is_none() {
            causes.push((
                field(),
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".into(),
            ));
        }
        if rvm != "NotOlderThan" {
            causes.push((
                field(),
                format!("Unsupported value: {rvm:?}: supported values: \"NotOlderThan\""),
            ));
        }
        if !cx.q("continue").is_empty() {
            causes.push((
                field(),
                "Forbidden: resourceVersionMatch is forbidden when continue is provided".into(),
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid("meta.k8s.io", "ListOptions", "", &causes))
    }
}

/// A boolean parameter, `None` when absent, read as Kubernetes reads query booleans (see
/// [`go_query_bool`](crate::apiserver::request::go_query_bool)).
fn flag(cx: &Cx, key: &str) -> Option<bool> {
    cx.query.get(key).map(|v| crate::apiserver::request::go_query_bool(v))
}

/// Encodes events in the form the client asked for.
struct Render {
    cx: Cx,
    /// What Table rows carry.
    include: table::IncludeObject,
    /// Table watches carry column definitions in their first event only.
    columns_sent: bool,
}

impl Render {
    fn event(&mut self, type_: &str, o: &Object) -> Bytes {
        match self.cx.form {
            Form::Object => line(type_, &self.cx.bytes_of(o)),
            Form::Metadata => line(type_, &to_vec(&output::partial(&o.value()))),
            Form::Table => {
                let meta = json!({"resourceVersion": o.rv.to_string()});
                let t = table::table(&self.cx, &[o.value()], meta, !self.columns_sent, self.include);
                self.columns_sent = true;
                line(type_, &to_vec(&t))
            }
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = match self.cx.form {
            Form::Object => json!({"kind": self.cx.res.kind, "apiVersion": self.cx.api_version, "metadata": meta}),
            Form::Metadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
            }
            Form::Table => {
                json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": null, "rows": []})
            }
        };
        line("BOOKMARK", &to_vec(&obj))
    }

    /// What a watch filtered by `matches` sees of a change: kube-apiserver's watch cache sends an
    /// object that starts matching as ADDED and one that stops matching as DELETED (with its last
    /// matching content at the new resourceVersion), and nothing when neither side matches.
    fn change(&mut self, ev: &WatchEvent, matches: impl Fn(&Object) -> bool) -> Option<Bytes> {
        let now = matches(&ev.object);
        let before = match (&ev.type_, &ev.prev) {
            (EventType::Modified, Some(p)) => matches(p),
            _ => now,
        };
        match (before, now) {
            (true, true) => Some(self.event(ev.type_.as_str(), &ev.object)),
            (false, true) => Some(self.event(EventType::Added.as_str(), &ev.object)),
            (true, false) => {
                let prev = ev.prev.as_ref()?;
                let gone = Object::new(prev.value(), ev.rv());
                Some(self.event(EventType::Deleted.as_str(), &gone))
            }
            (false, false) => None,
        }
    }
}

fn to_vec(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Starts a watch and answers 200 with its stream; errors found before streaming are Status
/// responses (a bad selector) or ERROR events (Gone).
pub fn serve(storage: &dyn Store, cx: &Cx, shutdown: watch::Receiver<bool>) -> Response<Body> {
    let sel = match cx.selector() {
        Ok(s) => s,
        Err(s) => return s.into_response(),
    };
    let include = match table::include_object(cx.q("includeObject")) {
        Ok(i) => i,
        Err(s) => return s.into_response(),
    };
    if let Err(s) = check_options(cx) {
        return s.into_response();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let bookmarks = flag(cx, "allowWatchBookmarks") == Some(true);
    let timeout = cx
        .q("timeoutSeconds")
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let prefix = cx.prefix();
    let rv_param = cx.q("resourceVersion").to_string();
    // `sendInitialEvents` given: it alone decides whether the current state comes first.
    let send_initial_param = flag(cx, "sendInitialEvents");
    let send_initial = send_initial_param == Some(true);
    let mut render = Render {
        cx: cx.clone(),
        include,
        columns_sent: false,
    };

    // The starting point and the synthetic ADDED events, decided before answering so that a
    // watch established after a write sees it.
    let mut initial: Vec<Bytes> = Vec::new();
    let start = match rv_param.as_str() {
        // Unset or "0": current state as ADDED events, then changes (kube-apiserver semantics).
        "" | "0" => None,
        s => match super::consistency::parse_rv(s) {
            Ok(v) => Some(v),
            Err(e) => return super::consistency::unparsable_rv(e).into_response(),
        },
    };
    let stream = if send_initial || (start.is_none() && send_initial_param.is_none()) {
        match storage.list(&prefix, None, None, |o| sel.matches(o)) {
            Ok(page) => {
                initial.extend(page.items.iter().map(|o| render.event("ADDED", o)));
                // kube-apiserver ends the initial events with this bookmark whenever it sends
                // them (a watch-list, or a watch from "" or "0") to a client that allows
                // bookmarks.
                if bookmarks {
                    initial.push(render.bookmark(page.rv, true));
                }
                storage.watch(&prefix, Some(page.rv))
            }
            Err(e) => Err(e),
        }
    } else {
        // From the given version, or (sendInitialEvents=false without one) from now.
        storage.watch(&prefix, Some(start.unwrap_or_else(|| storage.current_rv())))
    };

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
        let mut shutdown = shutdown;
        let end = tokio::time::Instant::now() + timeout;
        let deadline = tokio::time::sleep_until(end);
        tokio::pin!(deadline);
        let last_call = end.checked_sub(BOOKMARK_BEFORE_DEADLINE);
        let next_bookmark = |now: tokio::time::Instant| match last_call {
            Some(l) if now < l => Some((now + BOOKMARK_EVERY).min(l)),
            _ => None,
        };
        let mut bookmark_at = next_bookmark(tokio::time::Instant::now()).filter(|_| bookmarks);
        loop {
            let bookmark_due = async {
                match bookmark_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = &mut deadline => return,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                _ = tx.closed() => return,
                _ = bookmark_due => {
                    // The newest version the stream has passed, changes to other resources
                    // included: the client resumes from the server's version, not from the
                    // last change of a quiet resource, which may have left the history.
                    if tx.send(render.bookmark(stream.seen_rv(), false)).await.is_err() { return; }
                    bookmark_at = next_bookmark(tokio::time::Instant::now());
                    continue;
                }
            };
            let out = match ev {
                None => return,
                Some(Err(e)) => {
                    // Fell behind the broadcast buffer, or the storage's history restarted
                    // (its watch cache re-listed): the client must re-list.
                    let why = match e {
                        StorageError::Gone { requested, oldest } if oldest > 0 => {
                            format!("too old resource version: {requested} ({oldest})")
                        }
                        _ => "too old resource version: watcher fell behind".to_string(),
                    };
                    let s = Status::expired(why);
                    let _ = tx.send(error_line(&s)).await;
                    return;
                }
                Some(Ok(ev)) => match render.change(&ev, |o| sel.matches(o)) {
                    Some(l) => l,
                    None => continue,
                },
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
