//! CEL for admission: webhooks' `matchConditions` and ValidatingAdmissionPolicies'
//! expressions, in the same environment as the schema's rules (the standard library plus
//! Kubernetes'), over `object`, `oldObject`, `request`, `params` and `namespaceObject`.
//!
//! Objects reach CEL without a schema: integers are ints and other numbers doubles, as kube's
//! unstructured conversion gives them; an absent object is `null`.

use super::Attributes;
use crate::apiserver::resources::{cel_compile, cel_context, cel_error, cel_unsupported, to_cel};
use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedEntryExpr, LiteralValue, MapEntryExpr};
use kube_cel::cel::{IdedExpr, Program, Value as Cel};
use serde_json::Value;
use std::sync::Arc;

/// A compiled expression.
pub type Compiled = Arc<Program>;

/// Compiles `src`; programs are cached by source.
pub fn compile(src: &str) -> Result<Compiled, String> {
    cel_compile(src)
}

/// A JSON value as admission expressions see it.
pub fn value(v: &Value) -> Cel {
    to_cel(v, None)
}

/// The variables every admission expression has: `object`, `oldObject` and `request` (for the
/// request's own version).
pub fn request_vars(a: &Attributes, version: &str) -> Vec<(&'static str, Cel)> {
    let request = a.request(version);
    let obj = |k: &str| request.get(k).map(value).unwrap_or(Cel::Null);
    vec![
        ("object", obj("object")),
        ("oldObject", obj("oldObject")),
        ("request", value(&request)),
    ]
}

/// Evaluates `p` with `vars`; a runtime error is returned in cel-go's words.
pub fn eval(p: &Program, vars: &[(&str, Cel)]) -> Result<Cel, String> {
    eval_expr(p.expression(), vars)
}

/// Evaluates the expression `e` (as [`eval`] does a program).
pub fn eval_expr(e: &IdedExpr, vars: &[(&str, Cel)]) -> Result<Cel, String> {
    cel_context(|ctx| {
        for (k, v) in vars {
            ctx.add_variable_from_value(*k, v.clone());
        }
        Cel::resolve(e, ctx).map_err(|e| cel_error(&e))
    })
}

/// Parses `src` allowing message construction (MutatingAdmissionPolicy's `Object{...}` and
/// `JSONPatch{...}`), rewritten by [`structs_as_maps`] so that it can be evaluated.
pub fn compile_with_structs(src: &str) -> Result<IdedExpr, String> {
    let p = Program::compile(src).map_err(|e| e.to_string())?;
    let e = structs_as_maps(p.expression());
    match cel_unsupported(&e) {
        Some(why) => Err(why.to_string()),
        None => Ok(e),
    }
}

/// The key under which [`structs_as_maps`] keeps a construction's type name.
pub const TYPE_KEY: &str = "\u{1}type";

/// `e` with every message construction `Type{field: value, ...}` (which cel-rust cannot
/// evaluate) turned into the map `{'field': value, ...}`, at any depth. The type name is kept
/// under [`TYPE_KEY`], for kube's check that `Object.spec{...}` sits under `spec`.
pub fn structs_as_maps(e: &IdedExpr) -> IdedExpr {
    let r = structs_as_maps;
    let entry = |en: &IdedEntryExpr| IdedEntryExpr {
        id: en.id,
        expr: match &en.expr {
            EntryExpr::MapEntry(me) => EntryExpr::MapEntry(MapEntryExpr {
                key: r(&me.key),
                value: r(&me.value),
                optional: me.optional,
            }),
            EntryExpr::StructField(f) => EntryExpr::MapEntry(MapEntryExpr {
                key: IdedExpr {
                    id: en.id,
                    expr: Expr::Literal(LiteralValue::String(f.field.as_str().into())),
                },
                value: r(&f.value),
                optional: f.optional,
            }),
        },
    };
    let expr = match &e.expr {
        Expr::Struct(st) => {
            let literal = |s: &str| IdedExpr {
                id: e.id,
                expr: Expr::Literal(LiteralValue::String(s.into())),
            };
            let type_name = IdedEntryExpr {
                id: e.id,
                expr: EntryExpr::MapEntry(MapEntryExpr {
                    key: literal(TYPE_KEY),
                    value: literal(&st.type_name),
                    optional: false,
                }),
            };
            Expr::Map(kube_cel::cel::common::ast::MapExpr {
                entries: std::iter::once(type_name).chain(st.entries.iter().map(entry)).collect(),
            })
        }
        Expr::Map(m) => Expr::Map(kube_cel::cel::common::ast::MapExpr {
            entries: m.entries.iter().map(entry).collect(),
        }),
        Expr::List(l) => {
            let mut l = l.clone();
            l.elements = l.elements.iter().map(r).collect();
            Expr::List(l)
        }
        Expr::Call(c) => {
            let mut c = c.clone();
            c.target = c.target.as_deref().map(|t| Box::new(r(t)));
            c.args = c.args.iter().map(r).collect();
            Expr::Call(c)
        }
        Expr::Select(sel) => {
            let mut sel = sel.clone();
            sel.operand = Box::new(r(&sel.operand));
            Expr::Select(sel)
        }
        Expr::Comprehension(c) => {
            let mut c = c.clone();
            c.iter_range = r(&c.iter_range);
            c.accu_init = r(&c.accu_init);
            c.loop_cond = r(&c.loop_cond);
            c.loop_step = r(&c.loop_step);
            c.result = r(&c.result);
            Expr::Comprehension(c)
        }
        other => other.clone(),
    };
    IdedExpr { id: e.id, expr }
}

/// Evaluates a condition that must give a bool.
pub fn eval_bool(p: &Program, vars: &[(&str, Cel)]) -> Result<bool, String> {
    match eval(p, vars)? {
        Cel::Bool(b) => Ok(b),
        other => Err(format!("expression must evaluate to bool but got {}", other.type_of())),
    }
}

/// A CEL value as JSON (for composed `variables` and messages); values with no JSON form
/// (types, functions) are `null`.
pub fn to_json(c: &Cel) -> Value {
    match c {
        Cel::Null => Value::Null,
        Cel::Bool(b) => Value::Bool(*b),
        Cel::Int(i) => Value::from(*i),
        Cel::UInt(u) => Value::from(*u),
        Cel::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Cel::String(s) => Value::String(s.to_string()),
        Cel::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Cel::List(l) => Value::Array(l.iter().map(to_json).collect()),
        Cel::Map(m) => Value::Object(m.map.iter().map(|(k, v)| (key_string(k), to_json(v))).collect()),
        Cel::Timestamp(t) => Value::String(t.to_rfc3339()),
        Cel::Duration(d) => Value::String(format!("{}s", d.num_milliseconds() as f64 / 1000.0)),
        _ => Value::Null,
    }
}

fn key_string(k: &kube_cel::cel::objects::Key) -> String {
    use kube_cel::cel::objects::Key;
    match k {
        Key::String(s) => s.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::admission::attributes::tests::attrs;

    #[test]
    fn conditions_see_the_request() {
        let a = attrs();
        let vars = request_vars(&a, "v1beta1");
        let t = |src: &str| eval_bool(&compile(src).expect("compiles"), &vars);
        assert_eq!(t("request.operation == 'CREATE'"), Ok(true));
        assert_eq!(t("object.metadata.name == 'f' && oldObject == null"), Ok(true));
        assert_eq!(t("request.userInfo.username.startsWith('al')"), Ok(true));
        assert_eq!(t("'system:authenticated' in request.userInfo.groups"), Ok(true));
        assert!(t("object.spec.x == 1").is_err(), "no such key is an error");
        assert!(t("1 + 1").is_err(), "not a bool");
        let v = eval(&compile("{'a': [1, 2.5, 'x']}").expect("compiles"), &vars).expect("evaluates");
        assert_eq!(to_json(&v), serde_json::json!({"a": [1, 2.5, "x"]}));
    }
}
