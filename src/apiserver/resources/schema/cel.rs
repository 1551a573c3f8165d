//! `x-kubernetes-validations`: the CEL rules of a structural schema, evaluated as
//! apiextensions-apiserver's `pkg/apiserver/schema/cel` does after the schema's own
//! validation, and worded as it words their failures.
//!
//! Evaluation uses the `cel` crate (cel-rust) with the Kubernetes CEL libraries of `kube-cel`.
//! Costs are bounded before a rule runs (see [`super::cel_cost`]).

use super::cel_cost;
use super::validation::{json_eq, show_value, Cause};
use super::{additional, items, property};
use kube_cel::cel::objects::{Key, Map, OptionalValue};
use kube_cel::cel::{Context, ExecutionError, Program, Value as Cel};
use kube_cel::KubeCelExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

const VALIDATIONS: &str = "x-kubernetes-validations";

/// Whether any schema node declares rules, so objects of rule-less schemas skip the walk.
pub fn has_rules(s: &Value) -> bool {
    match s {
        Value::Object(m) => m.contains_key(VALIDATIONS) || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// The rules of `schema` (and its `messageExpression`s) that do not compile, as
/// `(rule, error)`: kube-apiserver refuses such a CRD; here they are logged when the
/// configuration is loaded, and every write they would judge gets an internal-error cause.
pub fn rule_problems(schema: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![schema];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                for r in m.get(VALIDATIONS).and_then(Value::as_array).into_iter().flatten() {
                    for k in ["rule", "messageExpression"] {
                        if let Some(src) = r.get(k).and_then(Value::as_str) {
                            if let Err(e) = compile(src) {
                                out.push((src.to_string(), e));
                            }
                        }
                    }
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// Appends the failures of the rules of `schema` on `obj` (updated from `old`) to `causes`.
pub fn validate(obj: &Value, old: Option<&Value>, schema: &Value, causes: &mut Vec<Cause>) {
    if !has_rules(schema) {
        return;
    }
    // Type, length, count, required and enum violations leave the object unfit for its rules
    // (and void the cost bounds they were admitted with), so kube runs no rule then and says
    // so (`hasBlockingErr`).
    let blocking = causes.iter().any(|(_, m)| {
        ["Too long", "Too many", "Required value", "Unsupported value"]
            .iter()
            .any(|p| m.starts_with(p))
            || m.contains(" in body must be of type ")
    });
    if blocking {
        causes.push((
            "<nil>".into(),
            "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
        ));
        return;
    }
    let mut w = Walker {
        causes,
        budget: cel_cost::REQUEST_BUDGET,
        stopped: false,
    };
    w.node(obj, old, schema, "", true);
}

/// Compiled programs by source: rules come from the configuration, so the set is small, and
/// parsing once per rule instead of per request keeps writes cheap.
type Compiled = Result<Arc<Program>, String>;
static PROGRAMS: LazyLock<Mutex<HashMap<String, Compiled>>> = LazyLock::new(Default::default);

pub(crate) fn compile(src: &str) -> Compiled {
    let mut cache = PROGRAMS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = cache.get(src) {
        return p.clone();
    }
    // Bounded in case configurations churn through many rules over a long run.
    if cache.len() >= 4096 {
        cache.clear();
    }
    let p =
        Program::compile(src)
            .map_err(|e| e.to_string())
            .and_then(|p| match cel_cost::unsupported(p.expression()) {
                Some(why) => Err(why.to_string()),
                None => Ok(Arc::new(p)),
            });
    cache.insert(src.to_string(), p.clone());
    p
}

thread_local! {
    /// The standard library plus Kubernetes' (registering it is too dear to do per rule).
    static BASE: Context<'static> = {
        let mut c = Context::default();
        c.register_all();
        c
    };
}

/// Runs `f` in a fresh scope of the base environment (the standard and Kubernetes libraries).
pub(crate) fn with_context<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
    BASE.with(|base| {
        let mut ctx = base.new_inner_scope();
        f(&mut ctx)
    })
}

/// One rule as declared.
struct Rule<'a> {
    rule: &'a str,
    message: Option<&'a str>,
    message_expression: Option<&'a str>,
    reason: Option<&'a str>,
    field_path: Option<&'a str>,
    optional_old_self: bool,
}

impl<'a> Rule<'a> {
    fn parse(v: &'a Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|x| !x.is_empty());
        Some(Rule {
            rule: s("rule")?,
            message: s("message"),
            message_expression: s("messageExpression"),
            reason: s("reason"),
            field_path: s("fieldPath"),
            optional_old_self: v.get("optionalOldSelf").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// `ruleErrorString`.
    fn shown(&self) -> &str {
        self.rule.trim()
    }

    /// `ruleMessageOrDefault`.
    fn message_or_default(&self) -> String {
        match self.message {
            Some(m) => m.trim().to_string(),
            None => format!("failed rule: {}", self.shown()),
        }
    }
}

struct Walker<'c> {
    causes: &'c mut Vec<Cause>,
    /// What is left of the request's `RuntimeCELCostBudget`.
    budget: u64,
    /// Out of budget: kube runs no further rule.
    stopped: bool,
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// The schema's `type`.
fn type_of(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or_default()
}

impl Walker<'_> {
    fn node(&mut self, v: &Value, old: Option<&Value>, s: &Value, path: &str, root: bool) {
        if self.stopped {
            return;
        }
        // Ratcheting: a value equal to its old self is not held against the write, except by
        // transition rules, which are about the change (kube's `shouldRatchetError`).
        let unchanged = old.is_some_and(|o| json_eq(o, v));
        if let Some(rules) = s.get(VALIDATIONS).and_then(Value::as_array) {
            for r in rules.iter().filter_map(Rule::parse) {
                self.rule(&r, v, old, s, path, root, unchanged);
                if self.stopped {
                    return;
                }
            }
        }
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if root && k == "metadata" {
                        continue;
                    }
                    if let Some(c) = property(s, k).or_else(|| additional(s)) {
                        self.node(x, old.and_then(|o| o.get(k)), c, &join(path, k), false);
                    }
                }
            }
            Value::Array(a) => {
                let Some(it) = items(s) else { return };
                // Only items of a map list have an old self: the old item with the same keys.
                let keys: Vec<&str> = match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("map") => s
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                let key_of = |x: &Value| -> String {
                    let vals: Vec<Value> = keys.iter().map(|k| x.get(*k).cloned().unwrap_or(Value::Null)).collect();
                    Value::Array(vals).to_string()
                };
                let before: HashMap<String, &Value> = old
                    .and_then(Value::as_array)
                    .filter(|_| !keys.is_empty())
                    .map(|b| b.iter().map(|y| (key_of(y), y)).collect())
                    .unwrap_or_default();
                for (i, x) in a.iter().enumerate() {
                    let o = if before.is_empty() {
                        None
                    } else {
                        before.get(&key_of(x)).copied()
                    };
                    self.node(x, o, it, &format!("{path}[{i}]"), false);
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(&mut self, r: &Rule, v: &Value, old: Option<&Value>, s: &Value, path: &str, root: bool, unchanged: bool) {
        let program = match compile(r.rule) {
            Ok(p) => p,
            Err(e) => {
                // kube refuses such a CRD; a configuration that slipped through says so here.
                self.causes.push((
                    path.to_string(),
                    format!("Internal error: rule does not compile: {}: {e}", r.shown()),
                ));
                return;
            }
        };
        let transition = program.references().has_variable("oldSelf");
        if transition && old.is_none() && !r.optional_old_self {
            return;
        }
        if unchanged && !transition {
            return;
        }
        // A failed rule shows the value when it is a scalar, and omits lists and objects
        // (`field.OmitValueType`); errors of the evaluation itself show the schema type. A
        // failure on the root object is at a nil path, which prints as `<nil>`.
        let at = |p: &str| {
            if p.is_empty() {
                "<nil>".to_string()
            } else {
                p.to_string()
            }
        };
        let ty = type_of(s);
        let invalid = |detail: String| (at(path), format!("Invalid value: {ty:?}: {detail}"));

        // The bound includes the message expression, which kube charges to the same budget.
        let message_program = r.message_expression.and_then(|m| compile(m).ok());
        let this = if root { root_view(v) } else { v.clone() };
        let old_this = old.map(|o| if root { root_view(o) } else { o.clone() });
        let cost = cel_cost::bound(program.expression(), &this, old_this.as_ref());
        // cel-go cancels a call at the per-call limit, so no call charges the budget more.
        if cost.min(cel_cost::PER_CALL_LIMIT) > self.budget {
            self.causes.push(invalid(
                "validation failed due to running out of cost budget, no further validation rules will be run".into(),
            ));
            self.stopped = true;
            return;
        }
        if cost > cel_cost::PER_CALL_LIMIT {
            // cel-go's cancellation, which kube reports with the rule's message and then stops.
            self.causes.push(invalid(format!(
                "'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {}",
                r.message_or_default()
            )));
            self.stopped = true;
            return;
        }
        self.budget -= cost;

        let result = BASE.with(|base| {
            let mut ctx = base.new_inner_scope();
            ctx.add_variable_from_value("self", to_cel(&this, Some(s)));
            // With optionalOldSelf, oldSelf is an optional (empty on create), as in kube.
            match (&old_this, r.optional_old_self) {
                (Some(o), false) => ctx.add_variable_from_value("oldSelf", to_cel(o, Some(s))),
                (Some(o), true) => {
                    ctx.add_variable_from_value("oldSelf", Cel::Opaque(Arc::new(OptionalValue::of(to_cel(o, Some(s))))))
                }
                (None, true) => ctx.add_variable_from_value("oldSelf", Cel::Opaque(Arc::new(OptionalValue::none()))),
                (None, false) => {}
            }
            let outcome = program.execute(&ctx);
            let message = match (&outcome, &message_program) {
                (Ok(Cel::Bool(false)), Some(m)) => {
                    let c = cel_cost::bound(m.expression(), &this, old_this.as_ref());
                    if c <= self.budget {
                        self.budget -= c;
                        match m.execute(&ctx) {
                            // kube falls back to the message for empty or multi-line results.
                            Ok(Cel::String(x)) if !x.trim().is_empty() && !x.contains('\n') => Some(x.to_string()),
                            _ => None,
                        }
                    } else {
                        None
                    }
                }
                _ => None,
            };
            (outcome, message)
        });
        match result {
            (Ok(Cel::Bool(true)), _) => {}
            (Ok(Cel::Bool(false)), message) => {
                let detail = message.unwrap_or_else(|| r.message_or_default());
                let field = match r.field_path {
                    Some(fp) => at(&field_path(path, fp)),
                    None => at(path),
                };
                let text = match r.reason {
                    Some("FieldValueForbidden") => format!("Forbidden: {detail}"),
                    Some("FieldValueRequired") => format!("Required value: {detail}"),
                    Some("FieldValueDuplicate") => "Duplicate value".to_string(),
                    _ => match v {
                        Value::Array(_) | Value::Object(_) => format!("Invalid value: {detail}"),
                        scalar => format!("Invalid value: {}: {detail}", show_value(scalar)),
                    },
                };
                self.causes.push((field, text));
            }
            (Ok(other), _) => self.causes.push(invalid(format!(
                "rule did not evaluate to a bool ({}) for rule: {}",
                other.type_of(),
                r.shown()
            ))),
            (Err(e), _) => self.causes.push(invalid(format!(
                "{} evaluating rule: {}",
                go_error(&e),
                r.message_or_default()
            ))),
        }
    }
}

/// Runtime errors in cel-go's words where they are the same error.
pub(crate) fn go_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        other => other.to_string(),
    }
}

/// A rule's `fieldPath` (`.spec.x`, `.x['a.b']`, `.l[0]`) below the rule's own path.
fn field_path(path: &str, fp: &str) -> String {
    let mut out = path.to_string();
    let mut rest = fp;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out = join(&out, &r[..end]);
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").unwrap_or(r.len());
            out = join(&out, &r[..end]);
            rest = r.get(end + 2..).unwrap_or_default();
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            out = format!("{out}[{}]", &r[..end]);
            rest = r.get(end + 1..).unwrap_or_default();
        } else {
            // Not a path kube would have accepted; name what is left.
            out = join(&out, rest);
            break;
        }
    }
    out
}

/// What a root rule sees: the object with only `name` and `generateName` of its metadata.
fn root_view(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|k, _| k == "name" || k == "generateName");
    }
    v
}

const RESERVED: [&str; 21] = [
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A property name as CEL reaches it (k8s.io/apiserver/pkg/cel's `Escape`); `None` for names
/// no CEL identifier can spell, which rules then cannot see.
pub fn escape(name: &str) -> Option<String> {
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The inverse of [`escape`], for the cost bound's look-ups into the object.
pub fn unescape(name: &str) -> String {
    if let Some(inner) = name.strip_prefix("__").and_then(|n| n.strip_suffix("__")) {
        if RESERVED.contains(&inner) {
            return inner.to_string();
        }
    }
    name.replace("__underscores__", "__")
        .replace("__dot__", ".")
        .replace("__dash__", "-")
        .replace("__slash__", "/")
}

/// A JSON value as CEL sees it under schema `s`: `number` fields are doubles even when whole,
/// `integer` fields ints, property names escaped; map (additionalProperties) keys stay as
/// they are.
pub(crate) fn to_cel(v: &Value, s: Option<&Value>) -> Cel {
    let ty = s.map(type_of).unwrap_or_default();
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if ty == "number" {
                Cel::Float(n.as_f64().unwrap_or_default())
            } else if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or_default())
            }
        }
        // kube gives `date-time` strings to rules as timestamps (a string that does not parse
        // was refused by the schema's format check first).
        Value::String(x) if s.and_then(|s| s.get("format")).and_then(Value::as_str) == Some("date-time") => {
            match chrono::DateTime::parse_from_rfc3339(x) {
                Ok(t) => Cel::Timestamp(t),
                Err(_) => Cel::String(Arc::new(x.clone())),
            }
        }
        Value::String(x) if s.and_then(|s| s.get("format")).and_then(Value::as_str) == Some("duration") => {
            match go_duration(x) {
                Some(d) => Cel::Duration(d),
                None => Cel::String(Arc::new(x.clone())),
            }
        }
        Value::String(x) => Cel::String(Arc::new(x.clone())),
        Value::Array(a) => {
            let it = s.and_then(items);
            Cel::List(Arc::new(a.iter().map(|x| to_cel(x, it)).collect()))
        }
        Value::Object(m) => {
            let mut out: HashMap<Key, Cel> = HashMap::new();
            for (k, x) in m {
                let (name, child) = match s.and_then(|s| property(s, k)) {
                    Some(p) => match escape(k) {
                        Some(e) => (e, Some(p)),
                        None => continue,
                    },
                    None => (k.clone(), s.and_then(additional)),
                };
                out.insert(Key::String(Arc::new(name)), to_cel(x, child));
            }
            Cel::Map(Map { map: Arc::new(out) })
        }
    }
}

/// A Go `time.ParseDuration` string (`1h30m`, `-1.5s`, `300ms`, `0`), which kube gives to
/// rules as a duration for `format: duration`.
fn go_duration(x: &str) -> Option<chrono::Duration> {
    let (neg, mut rest) = match x.as_bytes().first() {
        Some(b'-') => (true, &x[1..]),
        Some(b'+') => (false, &x[1..]),
        _ => (false, x),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += n * scale;
        rest = &rest[unit_end..];
    }
    // Go refuses what overflows an int64 of nanoseconds.
    if nanos > i64::MAX as f64 {
        return None;
    }
    let d = chrono::Duration::nanoseconds(nanos as i64);
    Some(if neg { -d } else { d })
}

#[cfg(test)]
#[path = "cel_tests.rs"]
mod tests;
