//! The cost of a CEL rule, bounded before it runs.
//!
//! kube-apiserver meters every CEL evaluation (cel-go's runtime cost tracking) and stops a rule
//! past `PerCallLimit`, and a request's rules past `RuntimeCELCostBudget`
//! (k8s.io/apiserver/pkg/apis/cel/config.go). The `cel` crate has no meter, so a rule is
//! costed here from its syntax tree and the sizes of the actual values it iterates over, and
//! refused before it runs when that bound is over the limit: a rule can never hang a request.
//!
//! The bound follows cel-go's model (about one unit per node evaluated, comprehension bodies
//! once per element, linear list and string functions by their size), but it is an upper
//! bound: comprehensions are counted in full even where evaluation would stop early.

use kube_cel::cel::common::ast::{EntryExpr, Expr};
use kube_cel::cel::IdedExpr;
use serde_json::Value;
use std::collections::HashMap;

/// `PerCallLimit`: the most one rule may cost.
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// `RuntimeCELCostBudget`: the most all the rules of one request may cost together.
pub const REQUEST_BUDGET: u64 = 10_000_000;

/// Functions whose cost grows with the size of their receiver or first argument (cel-go and
/// the Kubernetes libraries charge these by the length of the string or list).
const LINEAR: [&str; 22] = [
    "@in",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "find",
    "findAll",
    "split",
    "join",
    "replace",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "trim",
    "sum",
    "min",
    "max",
    "isSorted",
    "_==_",
    "_!=_",
    "format",
];

/// What a variable of the rule may stand for: the values it takes (every element of the
/// list a comprehension iterates), or nothing known.
type Env<'a> = HashMap<String, Vec<&'a Value>>;

/// The cost bound of `expr` with `self` (and `oldSelf`) bound to these values.
pub fn bound(expr: &IdedExpr, this: &Value, old: Option<&Value>) -> u64 {
    let mut env: Env = HashMap::new();
    env.insert("self".into(), vec![this]);
    if let Some(o) = old {
        env.insert("oldSelf".into(), vec![o]);
    }
    // Lists built by the rule itself (`split`, `map`, literals) are at most as long as what
    // the object holds: its nodes plus the bytes of its strings.
    let fallback = weight(this) + old.map(weight).unwrap_or(0);
    Coster { fallback }.cost(expr, &env)
}

/// The cost bound of `expr` with named variables bound to these values (admission
/// expressions: `object`, `oldObject`, `request`, `params`, ...).
pub fn bound_vars(expr: &IdedExpr, vars: &[(&str, &Value)]) -> u64 {
    let mut env: Env = HashMap::new();
    for (k, v) in vars {
        env.insert((*k).to_string(), vec![*v]);
    }
    let fallback = vars.iter().map(|(_, v)| weight(v)).sum();
    Coster { fallback }.cost(expr, &env)
}

/// Nodes plus string bytes: the largest a value derived from `v` can be.
fn weight(v: &Value) -> u64 {
    match v {
        Value::String(s) => 1 + s.len() as u64,
        Value::Array(a) => 1 + a.iter().map(weight).sum::<u64>(),
        Value::Object(m) => 1 + m.iter().map(|(k, x)| k.len() as u64 + weight(x)).sum::<u64>(),
        _ => 1,
    }
}

/// The size cel-go's cost model uses for a value: elements of a list or map, bytes / 10 of a
/// string (strings are compared and scanned ten bytes to a unit).
fn size(v: &Value) -> u64 {
    match v {
        Value::String(s) => (s.len() as u64).div_ceil(10),
        Value::Array(a) => a.len() as u64,
        Value::Object(m) => m.len() as u64,
        _ => 1,
    }
}

struct Coster {
    fallback: u64,
}

impl Coster {
    /// The values `expr` may evaluate to, when it is a path from a known variable.
    fn resolve<'a>(&self, expr: &IdedExpr, env: &Env<'a>) -> Option<Vec<&'a Value>> {
        match &expr.expr {
            Expr::Ident(name) => env.get(name).cloned(),
            Expr::Select(s) => {
                let base = self.resolve(&s.operand, env)?;
                // Field names arrive escaped (`__dash__`); the raw name is tried too.
                let field = super::cel::unescape(&s.field);
                Some(base.into_iter().filter_map(|b| b.get(&field)).collect())
            }
            _ => None,
        }
    }

    /// The largest size `expr` may have.
    fn size_of(&self, expr: &IdedExpr, env: &Env) -> u64 {
        match &expr.expr {
            Expr::List(l) => l.elements.len() as u64,
            Expr::Literal(_) => 1,
            _ => match self.resolve(expr, env) {
                Some(vals) => vals.iter().map(|v| size(v)).max().unwrap_or(0),
                None => self.fallback,
            },
        }
    }

    fn cost(&self, expr: &IdedExpr, env: &Env) -> u64 {
        match &expr.expr {
            // cel-go: constants are free, each identifier or field lookup costs one.
            Expr::Unspecified | Expr::Literal(_) => 0,
            Expr::Ident(_) => 1,
            Expr::Select(s) => 1 + self.cost(&s.operand, env),
            Expr::List(l) => l.elements.iter().fold(1, |c, e| c.saturating_add(self.cost(e, env))),
            Expr::Map(m) => m.entries.iter().fold(1, |c, e| match &e.expr {
                EntryExpr::MapEntry(me) => c
                    .saturating_add(self.cost(&me.key, env))
                    .saturating_add(self.cost(&me.value, env)),
                EntryExpr::StructField(f) => c.saturating_add(self.cost(&f.value, env)),
            }),
            Expr::Struct(s) => s.entries.iter().fold(1, |c, e| match &e.expr {
                EntryExpr::MapEntry(me) => c.saturating_add(self.cost(&me.value, env)),
                EntryExpr::StructField(f) => c.saturating_add(self.cost(&f.value, env)),
            }),
            Expr::Call(call) => {
                let args = |from: usize| {
                    call.args[from.min(call.args.len())..]
                        .iter()
                        .fold(0u64, |c, a| c.saturating_add(self.cost(a, env)))
                };
                match call.func_name.as_str() {
                    // Only one branch runs: the dearer one bounds it.
                    "_?_:_" => {
                        let cond = call.args.first().map_or(0, |a| self.cost(a, env));
                        let branch = call.args[1.min(call.args.len())..]
                            .iter()
                            .map(|a| self.cost(a, env))
                            .max()
                            .unwrap_or(0);
                        return cond.saturating_add(branch);
                    }
                    // Logic costs nothing of its own in cel-go.
                    "_&&_" | "_||_" | "!_" | "@not_strictly_false" => return args(0),
                    _ => {}
                }
                let mut c = args(0);
                if let Some(t) = &call.target {
                    c = c.saturating_add(self.cost(t, env));
                }
                if LINEAR.contains(&call.func_name.as_str()) {
                    // The receiver of a method, else the operands (`x in list`: the list).
                    let operands: Vec<&IdedExpr> = match &call.target {
                        Some(t) => vec![t.as_ref()],
                        None => call.args.iter().collect(),
                    };
                    let sizes = operands.iter().map(|o| self.size_of(o, env));
                    // An equality stops at the shorter side, so a known side bounds it.
                    let n = if matches!(call.func_name.as_str(), "_==_" | "_!=_") {
                        sizes.min()
                    } else {
                        sizes.max()
                    }
                    .unwrap_or(0);
                    c.saturating_add(n.max(1))
                } else {
                    c.saturating_add(1)
                }
            }
            Expr::Comprehension(comp) => {
                let n = self.size_of(&comp.iter_range, env);
                let mut inner = env.clone();
                match self.resolve(&comp.iter_range, env) {
                    // A list's elements; a map's keys are strings, whose sizes do not matter.
                    Some(vals) => {
                        let elems: Vec<&Value> = vals
                            .iter()
                            .filter_map(|v| v.as_array())
                            .flat_map(|a| a.iter())
                            .collect();
                        inner.insert(comp.iter_var.clone(), elems);
                    }
                    None => {
                        inner.remove(&comp.iter_var);
                    }
                }
                inner.remove(&comp.accu_var);
                let body = self
                    .cost(&comp.loop_cond, &inner)
                    .saturating_add(self.cost(&comp.loop_step, &inner));
                self.cost(&comp.iter_range, env)
                    .saturating_add(self.cost(&comp.accu_init, env))
                    .saturating_add(n.saturating_mul(body))
                    .saturating_add(self.cost(&comp.result, &inner))
            }
        }
    }
}

/// Why cel-rust cannot evaluate `expr`, if so: it panics on message construction
/// (`Type{field: ...}`, as in `JSONPatch{...}`) and on struct fields in map literals, so such
/// expressions are refused when compiled instead of aborting a request.
pub fn unsupported(expr: &IdedExpr) -> Option<&'static str> {
    fn all<'a>(mut es: impl Iterator<Item = &'a IdedExpr>) -> Option<&'static str> {
        es.find_map(unsupported)
    }
    match &expr.expr {
        Expr::Unspecified => Some("an unspecified expression"),
        Expr::Struct(_) => Some("message construction (Type{field: value}) is not supported"),
        Expr::Literal(_) | Expr::Ident(_) => None,
        Expr::Select(s) => unsupported(&s.operand),
        Expr::List(l) => all(l.elements.iter()),
        Expr::Map(m) => m.entries.iter().find_map(|e| match &e.expr {
            EntryExpr::MapEntry(me) => unsupported(&me.key).or_else(|| unsupported(&me.value)),
            EntryExpr::StructField(_) => Some("message construction (Type{field: value}) is not supported"),
        }),
        Expr::Call(c) => c.target.as_deref().and_then(unsupported).or_else(|| all(c.args.iter())),
        Expr::Comprehension(c) => all([&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result].into_iter()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_construction_is_refused_not_evaluated() {
        let p = |src: &str| kube_cel::cel::Program::compile(src).expect("parses");
        assert!(unsupported(p("JSONPatch{op: 'add'}").expression()).is_some());
        assert!(unsupported(p("[1, 2].map(x, Object{a: x})").expression()).is_some());
        assert!(unsupported(p("self.a.all(x, x > 1) && {'k': [1]}.size() == 1").expression()).is_none());
    }

    /// Against kube-apiserver (the conformance Gauge's `values` rule): 300 and 500 distinct
    /// items pass under the per-call limit, 700 and 1000 are over it. The bound agrees on 300,
    /// 700 and 1000; at 500 it is over (about 5 units per inner step where kube meters 2 to 4).
    #[test]
    fn the_bound_is_near_kubes_metered_cost() {
        let p = kube_cel::cel::Program::compile("self.all(x, self.exists_one(y, y == x))").expect("compiles");
        let at = |n: usize| {
            let v: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
            bound(p.expression(), &serde_json::json!(v), None)
        };
        assert!(at(700) > PER_CALL_LIMIT && at(1000) > PER_CALL_LIMIT);
        assert!(at(300) < PER_CALL_LIMIT);
    }
}
