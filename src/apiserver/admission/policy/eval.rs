//! One ValidatingAdmissionPolicy evaluated for one request and one param, as
//! k8s.io/apiserver's `policy/validating` `validator.Validate` does it: `matchConditions`,
//! then the `validations` (with their messages), then the `auditAnnotations`, all over
//! `object`, `oldObject`, `request`, `params`, `namespaceObject` and the composed `variables`.
//!
//! Costs are bounded before each expression runs (`cel_cost`), with kube's per-expression
//! limit and per-evaluation budget, so an expression can never hang a request.

use crate::apiserver::admission::cel;
use crate::apiserver::resources::{cel_cost_bound, CEL_PER_CALL_LIMIT, CEL_REQUEST_BUDGET};
use kube_cel::cel::common::ast::{EntryExpr, Expr as Ast};
use kube_cel::cel::objects::Key;
use kube_cel::cel::{IdedExpr, Value as Cel};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// `celconfig.MaxEvaluatedMessageExpressionSizeBytes`.
const MAX_MESSAGE_BYTES: usize = 5 * 1024;

/// One expression of a policy, compiled when the policy was read.
#[derive(Clone)]
pub struct Expr {
    pub src: String,
    program: Result<Arc<IdedExpr>, String>,
}

impl Expr {
    pub fn new(src: &str) -> Expr {
        Expr {
            src: src.to_string(),
            program: cel::compile(src).map(|p| Arc::new(p.expression().clone())),
        }
    }

    /// A MutatingAdmissionPolicy's mutation: message construction (`Object{...}`,
    /// `JSONPatch{...}`) is allowed, and evaluates to maps ([`cel::structs_as_maps`]).
    pub fn mutation(src: &str) -> Expr {
        Expr {
            src: src.to_string(),
            program: cel::compile_with_structs(src).map(Arc::new),
        }
    }

    /// The compile error, if any.
    pub fn error(&self) -> Option<&str> {
        self.program.as_ref().err().map(String::as_str)
    }
}

/// One entry of `validations`.
#[derive(Clone)]
pub struct Validation {
    pub expr: Expr,
    pub message: Option<String>,
    pub message_expression: Option<Expr>,
    pub reason: Option<String>,
}

/// The evaluable part of a policy.
#[derive(Clone, Default)]
pub struct Program {
    /// `failurePolicy: Ignore` (the default, Fail, is false).
    pub ignore_failures: bool,
    pub match_conditions: Vec<(String, Expr)>,
    pub variables: Vec<(String, Expr)>,
    pub validations: Vec<Validation>,
    pub audit_annotations: Vec<(String, Expr)>,
}

/// The outcome of one validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Admit,
    /// Admitted although it could not be evaluated (`failurePolicy: Ignore`).
    AdmitError(String),
    /// Denied: a false validation, or an error under `failurePolicy: Fail` (`error`).
    Deny {
        message: String,
        reason: Option<String>,
        error: bool,
    },
}

/// The outcome of one audit annotation.
#[derive(Debug, Clone, PartialEq)]
pub enum Annotation {
    Publish(String, String),
    /// An evaluation error under `failurePolicy: Fail`: denies the request.
    Error(String),
}

/// What evaluating a policy gave.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    pub annotations: Vec<Annotation>,
}

/// The variables of one evaluation, as JSON (for costs) and as CEL.
pub struct Input {
    pub vars: Vec<(&'static str, Value)>,
}

impl Input {
    /// `request` is the AdmissionRequest for the matched version; `params` and `namespace`
    /// are `null` when absent.
    pub fn new(request: &Value, params: Value, namespace: Value) -> Input {
        let get = |k: &str| request.get(k).cloned().unwrap_or(Value::Null);
        // kube's `request` variable leaves the objects out (they are `object` and `oldObject`).
        let mut req = request.clone();
        // Nor does it carry the request's UID (`cel.CreateAdmissionRequest` leaves it empty).
        if let Some(m) = req.as_object_mut() {
            m.remove("object");
            m.remove("oldObject");
            m.insert("uid".into(), Value::String(String::new()));
        }
        Input {
            vars: vec![
                ("object", get("object")),
                ("oldObject", get("oldObject")),
                ("request", req),
                ("params", params),
                ("namespaceObject", namespace),
            ],
        }
    }
}

/// Why an expression gave no value.
enum Failure {
    /// Its own error, worded as kube's `expression '...' resulted in error: ...`.
    Expr(String),
    /// The evaluation's budget is spent: nothing further runs.
    Budget,
}

const OUT_OF_BUDGET: &str =
    "validation failed due to running out of cost budget, no further validation rules will be run";

struct Evaluator<'a> {
    program: &'a Program,
    json: Vec<(&'static str, Value)>,
    cel: Vec<(&'static str, Cel)>,
    /// Composed variables, computed on first use: the value (and its JSON, for costs).
    variables: Vec<Option<Result<(Cel, Value), String>>>,
    budget: u64,
}

/// The names under `variables.` that `e` uses, or `None` when it uses `variables` otherwise
/// (then every variable is computed).
fn referenced(e: &IdedExpr, out: &mut Vec<String>) -> bool {
    match &e.expr {
        Ast::Ident(n) => n != "variables",
        Ast::Select(s) => {
            if let Ast::Ident(n) = &s.operand.expr {
                if n == "variables" {
                    out.push(s.field.clone());
                    return true;
                }
            }
            referenced(&s.operand, out)
        }
        Ast::Call(c) => {
            c.target.as_ref().is_none_or(|t| referenced(t, out)) && c.args.iter().all(|a| referenced(a, out))
        }
        Ast::List(l) => l.elements.iter().all(|x| referenced(x, out)),
        Ast::Map(m) => m.entries.iter().all(|en| match &en.expr {
            EntryExpr::MapEntry(me) => referenced(&me.key, out) && referenced(&me.value, out),
            EntryExpr::StructField(f) => referenced(&f.value, out),
        }),
        Ast::Struct(s) => s.entries.iter().all(|en| match &en.expr {
            EntryExpr::MapEntry(me) => referenced(&me.key, out) && referenced(&me.value, out),
            EntryExpr::StructField(f) => referenced(&f.value, out),
        }),
        Ast::Comprehension(c) => {
            referenced(&c.iter_range, out)
                && referenced(&c.accu_init, out)
                && referenced(&c.loop_cond, out)
                && referenced(&c.loop_step, out)
                && referenced(&c.result, out)
        }
        Ast::Literal(_) | Ast::Unspecified => true,
    }
}

impl<'a> Evaluator<'a> {
    fn new(program: &'a Program, input: &Input) -> Evaluator<'a> {
        Evaluator {
            program,
            cel: input.vars.iter().map(|(k, v)| (*k, cel::value(v))).collect(),
            json: input.vars.clone(),
            variables: vec![None; program.variables.len()],
            budget: CEL_REQUEST_BUDGET,
        }
    }

    /// Computes the variables `p` uses (and those they use).
    fn prepare(&mut self, p: &IdedExpr, depth: usize) {
        let mut names = Vec::new();
        let all = !referenced(p, &mut names);
        let wanted: Vec<usize> = (0..self.program.variables.len())
            .filter(|i| all || names.contains(&self.program.variables[*i].0))
            .collect();
        for i in wanted {
            if self.variables[i].is_some() || depth > 32 {
                continue;
            }
            let (name, e) = &self.program.variables[i];
            let v = match &e.program {
                Err(err) => Err(format!("composited variable {name:?} fails to compile: {err}")),
                Ok(prog) => {
                    let prog = prog.clone();
                    self.prepare(&prog, depth + 1);
                    match self.raw(&prog) {
                        Ok(c) => {
                            let j = cel::to_json(&c);
                            Ok((c, j))
                        }
                        Err(err) => Err(format!("composited variable {name:?} fails to evaluate: {err}")),
                    }
                }
            };
            self.variables[i] = Some(v);
        }
    }

    /// The `variables` map as far as computed; an error of a variable the expression uses is
    /// the expression's error.
    fn variables_value(&self, p: &IdedExpr) -> Result<(Cel, Value), String> {
        let mut names = Vec::new();
        let all = !referenced(p, &mut names);
        let mut cel_map: HashMap<Key, Cel> = HashMap::new();
        let mut json = serde_json::Map::new();
        for (i, (name, _)) in self.program.variables.iter().enumerate() {
            match &self.variables[i] {
                Some(Ok((c, j))) => {
                    cel_map.insert(Key::String(Arc::new(name.clone())), c.clone());
                    json.insert(name.clone(), j.clone());
                }
                Some(Err(e)) if all || names.contains(name) => return Err(e.clone()),
                _ => {}
            }
        }
        Ok((Cel::from(cel_map), Value::Object(json)))
    }

    /// Runs `p` (costed) and gives its value or cel-go's error text.
    fn raw(&mut self, p: &IdedExpr) -> Result<Cel, String> {
        let (vars_cel, vars_json) = self.variables_value(p)?;
        let mut json: Vec<(&str, &Value)> = self.json.iter().map(|(k, v)| (*k, v)).collect();
        json.push(("variables", &vars_json));
        let cost = cel_cost_bound(p, &json);
        if cost > CEL_PER_CALL_LIMIT {
            return Err("operation cancelled: actual cost limit exceeded".into());
        }
        if cost > self.budget {
            return Err(OUT_OF_BUDGET.into());
        }
        self.budget -= cost;
        let mut vars = self.cel.clone();
        vars.push(("variables", vars_cel));
        cel::eval_expr(p, &vars)
    }

    /// Runs one expression of the policy.
    fn run(&mut self, e: &Expr) -> Result<Cel, Failure> {
        let prog = match &e.program {
            Ok(p) => p.clone(),
            Err(err) => return Err(Failure::Expr(format!("compilation error: {err}"))),
        };
        self.prepare(&prog, 0);
        match self.raw(&prog) {
            Ok(v) => Ok(v),
            Err(err) if err == OUT_OF_BUDGET => Err(Failure::Budget),
            Err(err) => Err(Failure::Expr(format!(
                "expression '{}' resulted in error: {err}",
                e.src
            ))),
        }
    }
}

impl Program {
    fn error_decision(&self, message: String) -> Decision {
        if self.ignore_failures {
            Decision::AdmitError(message)
        } else {
            Decision::Deny {
                message,
                reason: None,
                error: true,
            }
        }
    }

    /// The `matchConditions`: whether all hold (any false skips the policy), or their
    /// errors, aggregated as kube's `utilerrors.NewAggregate` words them.
    fn match_conditions_hold(&self, ev: &mut Evaluator<'_>) -> Result<bool, String> {
        let mut errors = Vec::new();
        for (_, c) in &self.match_conditions {
            match ev.run(c) {
                Ok(Cel::Bool(false)) => return Ok(false),
                Ok(Cel::Bool(true)) => {}
                Ok(other) => errors.push(format!(
                    "expression '{}' resulted in error: no such overload: expected bool, got {}",
                    c.src,
                    other.type_of()
                )),
                Err(Failure::Expr(m)) => errors.push(m),
                Err(Failure::Budget) => errors.push(OUT_OF_BUDGET.to_string()),
            }
        }
        match errors.len() {
            0 => Ok(true),
            1 => Err(errors.remove(0)),
            _ => Err(format!("[{}]", errors.join(", "))),
        }
    }

    /// Whether the `matchConditions` hold for `input` (errors whatever the failure policy).
    pub fn matches(&self, input: &Input) -> Result<bool, String> {
        self.match_conditions_hold(&mut Evaluator::new(self, input))
    }

    /// Evaluates one expression `e` (a mutation) over `input` and the `variables`, under the
    /// per-evaluation budget; errors in kube's words.
    pub fn evaluate(&self, input: &Input, e: &Expr) -> Result<Cel, String> {
        match Evaluator::new(self, input).run(e) {
            Ok(v) => Ok(v),
            Err(Failure::Expr(m)) => Err(m),
            Err(Failure::Budget) => Err(OUT_OF_BUDGET.into()),
        }
    }

    /// `validator.Validate`.
    pub fn validate(&self, input: &Input) -> Outcome {
        let mut ev = Evaluator::new(self, input);

        // matchConditions: any false skips the policy, else errors go by the failure policy.
        if !self.match_conditions.is_empty() {
            match self.match_conditions_hold(&mut ev) {
                Ok(true) => {}
                Ok(false) => return Outcome::default(),
                Err(_) if self.ignore_failures => return Outcome::default(),
                Err(message) => {
                    return Outcome {
                        decisions: vec![self.error_decision(message)],
                        annotations: vec![],
                    }
                }
            }
            ev.budget = CEL_REQUEST_BUDGET;
        }

        let mut results = Vec::with_capacity(self.validations.len());
        for v in &self.validations {
            match ev.run(&v.expr) {
                Err(Failure::Budget) => {
                    return Outcome {
                        decisions: vec![self.error_decision(OUT_OF_BUDGET.into())],
                        annotations: vec![],
                    }
                }
                r => results.push(r),
            }
        }
        let mut decisions = Vec::with_capacity(results.len());
        for (v, r) in self.validations.iter().zip(results) {
            let d = match r {
                Err(Failure::Expr(m)) => self.error_decision(m),
                Err(Failure::Budget) => self.error_decision(OUT_OF_BUDGET.into()),
                Ok(Cel::Bool(true)) => Decision::Admit,
                Ok(_) => {
                    let mut message = String::new();
                    if let Some(me) = &v.message_expression {
                        if let Ok(Cel::String(s)) = ev.run(me) {
                            let s = s.trim();
                            if s.len() <= MAX_MESSAGE_BYTES && !s.contains('\n') {
                                message = s.to_string();
                            }
                        }
                    }
                    if message.is_empty() {
                        if let Some(m) = v.message.as_deref().filter(|m| !m.is_empty()) {
                            message = m.trim().to_string();
                        }
                    }
                    if message.is_empty() {
                        message = format!("failed expression: {}", v.expr.src.trim());
                    }
                    Decision::Deny {
                        message,
                        reason: Some(v.reason.clone().unwrap_or_else(|| "Invalid".into())),
                        error: false,
                    }
                }
            };
            decisions.push(d);
        }

        // auditAnnotations, with a budget of their own.
        ev.budget = CEL_REQUEST_BUDGET;
        let mut annotations = Vec::new();
        for (key, e) in &self.audit_annotations {
            let a = match ev.run(e) {
                Ok(Cel::String(s)) if !s.trim().is_empty() => Some(Annotation::Publish(key.clone(), s.trim().to_string())),
                Ok(Cel::String(_)) | Ok(Cel::Null) => None,
                Ok(other) => Some(Annotation::Error(format!(
                    "valueExpression '{}' resulted in unsupported return type: {}. Return type must be either string or null.",
                    e.src,
                    other.type_of()
                ))),
                Err(Failure::Expr(m)) => Some(Annotation::Error(m)),
                Err(Failure::Budget) => {
                    if self.ignore_failures {
                        break;
                    }
                    return Outcome {
                        decisions: vec![self.error_decision(OUT_OF_BUDGET.into())],
                        annotations,
                    };
                }
            };
            match a {
                Some(Annotation::Error(_)) if self.ignore_failures => {}
                Some(a) => annotations.push(a),
                None => {}
            }
        }
        Outcome { decisions, annotations }
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
