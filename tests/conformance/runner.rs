//! Runs one case of the corpus against one backend: substitutes the placeholders, sends each
//! request through kube-apiserver (directly for the CRD, through the aggregator for the bundled
//! server), and records the normalized answers.

use super::normalize::normalize;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One case: requests that run in order in a fresh namespace.
#[derive(Deserialize, Clone, Debug)]
pub struct Case {
    /// Unique name; the allowlist refers to it.
    pub name: String,
    /// The requests.
    pub steps: Vec<Step>,
}

/// One request.
#[derive(Deserialize, Clone, Debug)]
pub struct Step {
    /// HTTP method.
    #[serde(default = "get")]
    pub method: String,
    /// Path and query, with placeholders.
    pub path: String,
    /// A JSON body (written in YAML), with placeholders in its strings.
    #[serde(default)]
    pub body: Option<Value>,
    /// A body sent as it is written (malformed JSON, YAML for apply).
    #[serde(default)]
    pub raw: Option<String>,
    /// Content-Type; `application/json` when a body is given.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Accept header.
    #[serde(default)]
    pub accept: Option<String>,
    /// Whether this is a watch: its events are collected while `then` runs.
    #[serde(default)]
    pub watch: bool,
    /// Requests made while the watch is open.
    #[serde(default)]
    pub then: Vec<Step>,
    /// Stop reading the watch after this many events (it ends at its timeoutSeconds otherwise).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Not compared (setup whose answer is not the point, such as a wait).
    #[serde(default)]
    pub setup: bool,
    /// Wait this long before sending (milliseconds).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Text that replaces `{repeated}` in `raw`, for bodies too long to write out.
    #[serde(default)]
    pub repeat: Option<Repeat>,
}

/// `text` written `times` times, separated by `join`.
#[derive(Deserialize, Clone, Debug)]
pub struct Repeat {
    pub text: String,
    pub times: usize,
    #[serde(default)]
    pub join: String,
}

fn get() -> String {
    "GET".into()
}

/// One backend: where its resources are served.
#[derive(Clone)]
pub struct Backend {
    /// Its API group.
    pub group: String,
    /// The admin client (kube-apiserver, which proxies the aggregated group).
    pub client: kube::Client,
}

/// What a step answered, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `METHOD path` as sent (for reports).
    pub request: String,
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: String,
    /// The body, normalized (JSON), or its text.
    pub body: Value,
    /// Watch events, normalized.
    pub events: Vec<Value>,
}

/// Values earlier answers gave, for placeholders.
#[derive(Default)]
struct Vars {
    rvs: Vec<Option<String>>,
    last_rv: Option<String>,
    last_continue: Option<String>,
    last_uid: Option<String>,
    last_name: Option<String>,
}

impl Vars {
    fn record(&mut self, body: &Value) {
        let meta = body.get("metadata");
        let rv = meta
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if rv.is_some() {
            self.last_rv = rv.clone();
        }
        self.rvs.push(rv);
        if let Some(c) = meta.and_then(|m| m.get("continue")).and_then(Value::as_str) {
            self.last_continue = Some(c.to_string());
        }
        if let Some(u) = meta.and_then(|m| m.get("uid")).and_then(Value::as_str) {
            self.last_uid = Some(u.to_string());
        }
        if let Some(n) = meta.and_then(|m| m.get("name")).and_then(Value::as_str) {
            self.last_name = Some(n.to_string());
        }
    }
}

fn substitute(s: &str, group: &str, ns: &str, vars: &Vars) -> String {
    let mut out = s
        .replace("{nsapi}", &format!("/apis/{group}/v1/namespaces/{ns}"))
        .replace("{api}", &format!("/apis/{group}/v1"))
        .replace("{apiVersion}", &format!("{group}/v1"))
        .replace("{group}", group)
        .replace("{ns}", ns);
    let last_rv = vars.last_rv.clone().unwrap_or_default();
    let future = last_rv.parse::<u64>().map(|r| r + 1_000_000).unwrap_or(0);
    out = out.replace("{rv_future}", &future.to_string());
    for (i, rv) in vars.rvs.iter().enumerate() {
        out = out.replace(&format!("{{rv:{i}}}"), rv.as_deref().unwrap_or(""));
    }
    out.replace("{rv}", &last_rv)
        .replace("{continue}", &percent(vars.last_continue.as_deref().unwrap_or("")))
        .replace("{uid}", vars.last_uid.as_deref().unwrap_or(""))
        .replace("{name}", vars.last_name.as_deref().unwrap_or(""))
}

/// Percent-encodes a continue token for a query string.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request(step: &Step, group: &str, ns: &str, vars: &Vars) -> Result<http::Request<kube::client::Body>, String> {
    let path = substitute(&step.path, group, ns, vars);
    let mut b = http::Request::builder().method(step.method.as_str()).uri(&path);
    if let Some(a) = &step.accept {
        b = b.header(http::header::ACCEPT, a.as_str());
    }
    let body = match (&step.body, &step.raw) {
        (Some(v), _) => Some(substitute(&v.to_string(), group, ns, vars)),
        (None, Some(raw)) => {
            let raw = match &step.repeat {
                Some(r) => raw.replace("{repeated}", &vec![r.text.as_str(); r.times].join(&r.join)),
                None => raw.clone(),
            };
            Some(substitute(&raw, group, ns, vars))
        }
        (None, None) => None,
    };
    if body.is_some() || step.content_type.is_some() {
        let ct = step.content_type.as_deref().unwrap_or("application/json");
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    b.body(kube::client::Body::from(body.unwrap_or_default().into_bytes()))
        .map_err(|e| format!("request {path}: {e}"))
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Runs `case` against `backend` in namespace `ns` (created first).
pub async fn run(case: &Case, backend: &Backend, ns: &str, groups: &[&str]) -> Result<Vec<(bool, Answer)>, String> {
    let mut vars = Vars::default();
    let mut answers = Vec::new();
    for step in &case.steps {
        run_step(step, backend, ns, groups, &mut vars, &mut answers).await?;
    }
    Ok(answers)
}

async fn run_step(
    step: &Step,
    backend: &Backend,
    ns: &str,
    groups: &[&str],
    vars: &mut Vars,
    answers: &mut Vec<(bool, Answer)>,
) -> Result<(), String> {
    if step.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.sleep_ms)).await;
    }
    let req = request(step, &backend.group, ns, vars)?;
    let line = format!("{} {}", step.method, step.path);
    let resp = backend.client.send(req).await.map_err(|e| format!("{line}: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut body = resp.into_body();
    if step.watch && status == 200 {
        // Read the stream in the background while the nested steps run.
        let max = step.max_events.unwrap_or(usize::MAX);
        let reader = tokio::spawn(async move {
            let mut buf = Vec::<u8>::new();
            let mut events = Vec::new();
            while events.len() < max {
                match tokio::time::timeout(Duration::from_secs(20), body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                                events.push(parse(&line));
                            }
                        }
                    }
                    _ => break,
                }
            }
            // kube ends every JSON body with a newline, the bundled server does not: a last
            // line without one (a list answered to a watch request) is kept too.
            if events.len() < max && buf.iter().any(|b| !b.is_ascii_whitespace()) {
                events.push(parse(&buf));
            }
            events
        });
        for nested in &step.then {
            Box::pin(run_step(nested, backend, ns, groups, vars, answers)).await?;
        }
        let mut events = reader.await.map_err(|e| format!("{line}: watch reader: {e}"))?;
        for e in &mut events {
            normalize(e, groups);
        }
        answers.push((
            !step.setup,
            Answer {
                request: line,
                status,
                content_type,
                body: Value::Null,
                events,
            },
        ));
        return Ok(());
    }
    let bytes: Bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| format!("{line}: no complete answer within 30 s"))?
        .map_err(|e| format!("{line}: {e}"))?
        .to_bytes();
    // YAML answers are compared as the data they encode.
    let mut value = if content_type.starts_with("application/yaml") {
        serde_yaml::from_slice(&bytes).unwrap_or_else(|_| parse(&bytes))
    } else {
        parse(&bytes)
    };
    vars.record(&value);
    normalize(&mut value, groups);
    answers.push((
        !step.setup,
        Answer {
            request: line,
            status,
            content_type,
            body: value,
            events: Vec::new(),
        },
    ));
    Ok(())
}

/// How many answers a case records (nested watch steps included).
pub fn count_steps(case: &Case) -> usize {
    fn count(steps: &[Step]) -> usize {
        steps.iter().map(|s| 1 + count(&s.then)).sum()
    }
    count(&case.steps)
}

/// The allowlist: `<case>#<step>` → why that step's difference is accepted.
pub type Allowlist = BTreeMap<String, String>;
