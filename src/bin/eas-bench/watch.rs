//! Watch fan-out: many watch streams on one namespace, a paced writer, and for every event at
//! every watcher the time from the write's send and acknowledgement to its receipt.

use crate::client::{call, find_string_field, resource_version, H2};
use crate::load::Bench;
use crate::resource::SEQ_KEY;
use crate::Error;
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the watchers did.
pub struct WatchOutcome {
    pub watchers: usize,
    pub writes: u64,
    pub write_rate: f64,
    pub delivered: u64,
    pub expected: u64,
    pub errors: u64,
    /// Sorted: receipt minus the write's acknowledgement (0 when the event beat the answer).
    pub from_ack: Vec<Duration>,
    /// Sorted: receipt minus the write's send.
    pub from_send: Vec<Duration>,
}

/// Watch options.
pub struct WatchOpts {
    pub watchers: usize,
    /// Watch streams per connection; the server allows 1000 concurrent streams per connection.
    pub per_conn: usize,
    /// Writes per second.
    pub rate: f64,
    pub duration: Duration,
    /// Object size of the writes (small by default: every event is sent to every watcher, and
    /// the client decrypting them shares the CPUs with the server).
    pub object_size: usize,
}

struct Receipts {
    seqs: Vec<(u64, Instant)>,
    errors: u64,
}

pub async fn run(b: &Arc<Bench>, o: &WatchOpts) -> Result<WatchOutcome, Error> {
    let ns = b.res.ns("watch");
    let coll = b.res.collection(&ns);
    let mut writer = b.ep.connect().await?;
    let (code, body) = call(
        &mut writer,
        b.ep.req(Method::GET, &format!("{coll}?limit=1"), Bytes::new())?,
    )
    .await?;
    if code != StatusCode::OK {
        return Err(format!("list {coll}: {code}").into());
    }
    let rv = resource_version(&body)
        .ok_or("list without resourceVersion")?
        .to_string();

    let opened = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let per_conn = o.per_conn.clamp(1, 999);
    let mut tasks = Vec::new();
    let mut h2: Option<H2> = None;
    for i in 0..o.watchers {
        if i % per_conn == 0 {
            h2 = Some(b.ep.connect().await?);
        }
        let Some(mut h2) = h2.clone() else { continue };
        let req = b.ep.req(
            Method::GET,
            &format!("{coll}?watch=true&resourceVersion={rv}"),
            Bytes::new(),
        )?;
        let (opened, received, mut stop) = (opened.clone(), received.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            h2.ready().await?;
            let resp = h2.send_request(req).await?;
            if resp.status() != StatusCode::OK {
                return Err::<Receipts, Error>(format!("watch: {}", resp.status()).into());
            }
            opened.fetch_add(1, Ordering::Relaxed);
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            let mut r = Receipts {
                seqs: Vec::new(),
                errors: 0,
            };
            let key = format!("\"{SEQ_KEY}\":\"");
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let Some(frame) = frame else { break };
                let Ok(data) = frame?.into_data() else { continue };
                // One timestamp per frame: every line in it arrived together.
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|c| *c == b'\n') {
                    let line = buf.split_to(pos + 1);
                    if line.starts_with(b"{\"type\":\"ERROR\"") {
                        r.errors += 1;
                    }
                    if let Some(seq) = find_string_field(&line, key.as_bytes()).and_then(|s| s.parse().ok()) {
                        r.seqs.push((seq, now));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(r)
        }));
    }
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < o.watchers {
        if Instant::now() > open_deadline || tasks.iter().any(|t| t.is_finished()) {
            let _ = stop_tx.send(true);
            return Err(format!(
                "only {} of {} watches opened",
                opened.load(Ordering::Relaxed),
                o.watchers
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The writer alternates creating an object and updating the one it just created, paced to
    // the rate, one write at a time (each waits for its acknowledgement).
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(1e-3));
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let mut next = t0;
    let mut writes: Vec<(Instant, Instant)> = Vec::new();
    let mut last: Option<(String, String)> = None;
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let seq = writes.len() as u64;
        let (method, path, body, want, name) = match last.take() {
            Some((name, rv)) => {
                let body = b.res.body(&ns, &name, o.object_size, Some(&rv), seq);
                (Method::PUT, b.res.item(&ns, &name), body, StatusCode::OK, name)
            }
            None => {
                let name = format!("w{}-{seq}", b.run_id);
                let body = b.res.body(&ns, &name, o.object_size, None, seq);
                (Method::POST, coll.clone(), body, StatusCode::CREATED, name)
            }
        };
        let created = method == Method::POST;
        let sent = Instant::now();
        let (code, resp) = call(&mut writer, b.ep.req(method, &path, body)?).await?;
        let acked = Instant::now();
        if code != want {
            let _ = stop_tx.send(true);
            return Err(format!("watch writer: {code}: {}", String::from_utf8_lossy(&resp)).into());
        }
        writes.push((sent, acked));
        if created {
            last = resource_version(&resp).map(|rv| (name, rv.to_string()));
        }
    }
    let write_time = t0.elapsed();

    // Let the last events arrive.
    let expected = writes.len() as u64 * o.watchers as u64;
    let drain = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);

    let mut out = WatchOutcome {
        watchers: o.watchers,
        writes: writes.len() as u64,
        write_rate: writes.len() as f64 / write_time.as_secs_f64(),
        delivered: 0,
        expected,
        errors: 0,
        from_ack: Vec::new(),
        from_send: Vec::new(),
    };
    for t in tasks {
        let r = t.await??;
        out.errors += r.errors;
        for (seq, at) in r.seqs {
            let Some((sent, acked)) = writes.get(seq as usize) else {
                continue;
            };
            out.delivered += 1;
            out.from_ack.push(at.saturating_duration_since(*acked));
            out.from_send.push(at.saturating_duration_since(*sent));
        }
    }
    out.from_ack.sort_unstable();
    out.from_send.sort_unstable();
    Ok(out)
}
