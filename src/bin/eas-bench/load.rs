//! Load phases: N connections × M streams issuing one verb for a fixed time, either as fast as
//! answers come (closed loop, to find the peak) or paced to a target rate.
//!
//! Paced workers send on a fixed schedule and measure latency from the *scheduled* send time,
//! so a server that falls behind shows its queueing delay in p99 instead of silently lowering
//! the offered rate (coordinated omission).

use crate::client::{call, resource_version, Endpoint, H2};
use crate::resource::Resource;
use crate::Error;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A benchmarked request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// LIST of the 1000-object namespace.
    List,
    /// GET with `resourceVersion=0` ("any version"): served from the watch cache as it
    /// stands, without confirming the store's revision (on etcd: no round trip to etcd).
    GetCached,
    /// LIST with `resourceVersion=0` (see [`Verb::GetCached`]).
    ListCached,
    /// POST of a new object (acknowledged once durable).
    Create,
    /// PUT with the current resourceVersion; conflicts re-read and are counted apart.
    Update,
    /// GET /apis/<group>/<version>.
    Discovery,
}

/// Everything the phases share.
pub struct Bench {
    pub ep: Endpoint,
    pub res: Resource,
    pub object_size: usize,
    pub conns: usize,
    pub streams: usize,
    pub duration: Duration,
    /// Objects updated concurrently; 0 = one per worker (no conflicts by construction).
    pub update_keys: usize,
    /// Distinguishes object names of this run from earlier runs against the same server.
    pub run_id: String,
}

/// Objects LISTed by the list phase.
pub const LIST_OBJECTS: usize = 1000;

/// The result of one phase.
#[derive(Default)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub conflicts: u64,
    pub elapsed: Duration,
    /// Sorted latencies of successful requests.
    pub lat: Vec<Duration>,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, o: Outcome) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.conflicts += o.conflicts;
        self.lat.extend(o.lat);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

fn describe(code: StatusCode, body: &[u8]) -> String {
    let b = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("{code}: {b}")
}

impl Bench {
    /// Creates `count` objects `<prefix>-<i>` in `ns` with `concurrency` writers; existing ones
    /// (from an earlier run against the same server) count as created.
    pub async fn create_many(
        self: &Arc<Self>,
        ns: &str,
        prefix: &str,
        count: usize,
        concurrency: usize,
    ) -> Result<Duration, Error> {
        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut h2s = Vec::new();
        for _ in 0..self.conns.max(1) {
            h2s.push(self.ep.connect().await?);
        }
        let mut tasks = Vec::new();
        for w in 0..concurrency.max(1) {
            let mut h2 = h2s[w % h2s.len()].clone();
            let (b, next, ns, prefix) = (self.clone(), next.clone(), ns.to_string(), prefix.to_string());
            tasks.push(tokio::spawn(async move {
                let path = b.res.collection(&ns);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, Error>(());
                    }
                    let name = format!("{prefix}-{i}");
                    let body = b.res.body(&ns, &name, b.object_size, None, i as u64);
                    let (code, resp) = call(&mut h2, b.ep.req(Method::POST, &path, body)?).await?;
                    if code != StatusCode::CREATED && code != StatusCode::CONFLICT {
                        return Err(format!("create {name}: {}", describe(code, &resp)).into());
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(start.elapsed())
    }

    /// The objects the phases read: the LIST set (whose first member GET reads).
    pub async fn prepare_reads(self: &Arc<Self>) -> Result<(), Error> {
        let ns = self.res.ns("list");
        self.create_many(&ns, "l", LIST_OBJECTS, 64).await?;
        Ok(())
    }

    /// Runs `verb` for the configured duration, paced to `rate` requests/s when given.
    pub async fn phase(self: &Arc<Self>, verb: Verb, rate: Option<f64>, tag: &str) -> Result<Outcome, Error> {
        let workers = self.conns * self.streams;
        if verb == Verb::Update {
            let keys = if self.update_keys == 0 {
                workers
            } else {
                self.update_keys
            };
            self.create_many(&self.res.ns("update"), "u", keys, 64).await?;
        }
        let mut h2s = Vec::new();
        for _ in 0..self.conns {
            h2s.push(self.ep.connect().await?);
        }
        // Room for every worker to get ready (an update worker reads its object first).
        let t0 = Instant::now() + Duration::from_millis(300);
        let deadline = t0 + self.duration;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let worker = Worker {
                b: self.clone(),
                h2: h2s[w / self.streams].clone(),
                verb,
                w,
                workers,
                tag: tag.to_string(),
            };
            tasks.push(tokio::spawn(worker.run(rate, t0, deadline)));
        }
        let mut out = Outcome::default();
        for t in tasks {
            out.merge(t.await?);
        }
        out.elapsed = Instant::now()
            .saturating_duration_since(t0)
            .min(self.duration.mul_f64(1.5));
        out.lat.sort_unstable();
        Ok(out)
    }
}

struct Worker {
    b: Arc<Bench>,
    h2: H2,
    verb: Verb,
    w: usize,
    workers: usize,
    tag: String,
}

/// What one request did.
enum Done {
    Ok,
    Conflict,
    Failed(String),
}

impl Worker {
    async fn run(mut self, rate: Option<f64>, t0: Instant, deadline: Instant) -> Outcome {
        let mut out = Outcome::default();
        let interval = rate.map(|r| Duration::from_secs_f64(self.workers as f64 / r.max(1e-3)));
        // Spread the workers' schedules evenly over one interval.
        let mut next = t0 + interval.map_or(Duration::ZERO, |i| i.mul_f64(self.w as f64 / self.workers as f64));
        let mut rv: Option<String> = None;
        let mut seq = 0u64;
        // The first read of the updated object is setup, not part of the first measured update.
        if self.verb == Verb::Update {
            let (_, _, path) = self.update_target();
            rv = self.read_rv(&path).await.ok();
        }
        tokio::time::sleep_until(t0.into()).await;
        loop {
            let start = match interval {
                Some(i) => {
                    if next >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                    let s = next;
                    next += i;
                    s
                }
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    now
                }
            };
            seq += 1;
            let done = match self.one(&mut rv, seq).await {
                Ok(d) => d,
                Err(e) => Done::Failed(e.to_string()),
            };
            match done {
                Done::Ok => {
                    out.ok += 1;
                    out.lat.push(start.elapsed());
                }
                Done::Conflict => out.conflicts += 1,
                Done::Failed(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                    // A broken connection would otherwise spin.
                    if self.h2.is_closed() {
                        break;
                    }
                }
            }
        }
        out
    }

    async fn one(&mut self, rv: &mut Option<String>, seq: u64) -> Result<Done, Error> {
        let b = self.b.clone();
        let (method, path, body, want) = match self.verb {
            Verb::Get => (
                Method::GET,
                b.res.item(&b.res.ns("list"), "l-0"),
                Bytes::new(),
                StatusCode::OK,
            ),
            Verb::List => (
                Method::GET,
                b.res.collection(&b.res.ns("list")),
                Bytes::new(),
                StatusCode::OK,
            ),
            Verb::GetCached => (
                Method::GET,
                format!("{}?resourceVersion=0", b.res.item(&b.res.ns("list"), "l-0")),
                Bytes::new(),
                StatusCode::OK,
            ),
            Verb::ListCached => (
                Method::GET,
                format!("{}?resourceVersion=0", b.res.collection(&b.res.ns("list"))),
                Bytes::new(),
                StatusCode::OK,
            ),
            Verb::Discovery => (
                Method::GET,
                format!("/apis/{}", b.res.group_version),
                Bytes::new(),
                StatusCode::OK,
            ),
            Verb::Create => {
                let ns = b.res.ns("create");
                let name = format!("c{}-{}-{}-{seq}", b.run_id, self.tag, self.w);
                let body = b.res.body(&ns, &name, b.object_size, None, seq);
                (Method::POST, b.res.collection(&ns), body, StatusCode::CREATED)
            }
            Verb::Update => {
                let (ns, name, path) = self.update_target();
                let cur = match rv.take() {
                    Some(v) => v,
                    None => self.read_rv(&path).await?,
                };
                let body = b.res.body(&ns, &name, b.object_size, Some(&cur), seq);
                let (code, resp) = call(&mut self.h2, b.ep.req(Method::PUT, &path, body)?).await?;
                return Ok(match code {
                    StatusCode::OK => {
                        *rv = resource_version(&resp).map(str::to_string);
                        Done::Ok
                    }
                    // Lost a race with another worker on the same key: the next try re-reads.
                    StatusCode::CONFLICT => Done::Conflict,
                    c => Done::Failed(describe(c, &resp)),
                });
            }
        };
        let (code, resp) = call(&mut self.h2, b.ep.req(method, &path, body)?).await?;
        Ok(if code == want {
            Done::Ok
        } else {
            Done::Failed(describe(code, &resp))
        })
    }

    /// The object this worker updates: its own, or one of `update_keys` shared ones.
    fn update_target(&self) -> (String, String, String) {
        let ns = self.b.res.ns("update");
        let keys = if self.b.update_keys == 0 {
            self.workers
        } else {
            self.b.update_keys
        };
        let name = format!("u-{}", self.w % keys);
        let path = self.b.res.item(&ns, &name);
        (ns, name, path)
    }

    async fn read_rv(&mut self, path: &str) -> Result<String, Error> {
        let (code, resp) = call(&mut self.h2, self.b.ep.req(Method::GET, path, Bytes::new())?).await?;
        if code != StatusCode::OK {
            return Err(describe(code, &resp).into());
        }
        resource_version(&resp)
            .map(str::to_string)
            .ok_or_else(|| "no resourceVersion in object".into())
    }
}
