//! The `FieldsV1` encoding of a [`FieldSet`], as `metadata.managedFields` stores it: a tree
//! of objects keyed `f:`/`k:`/`v:`/`i:`, `{}` at the leaves, and `"."` marking a node that is
//! itself a member and also has members below it.

use super::fields::{display, FieldSet, Path};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<String, Node>,
}

/// The `FieldsV1` JSON of a set.
pub fn to_fields_v1(s: &FieldSet) -> Value {
    let mut root = Node::default();
    for p in s {
        let mut n = &mut root;
        for k in p {
            n = n.children.entry(k.clone()).or_default();
        }
        n.member = true;
    }
    node_json(&root)
}

fn node_json(n: &Node) -> Value {
    let mut m = Map::new();
    // A member with children says so with ".", which Go writes first.
    if n.member && !n.children.is_empty() {
        m.insert(".".into(), Value::Object(Map::new()));
    }
    for (k, c) in &n.children {
        m.insert(k.clone(), node_json(c));
    }
    Value::Object(m)
}

/// The set of a `FieldsV1` JSON value; `Err` when it is not a tree of objects.
pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
    let mut out = FieldSet::new();
    read_node(v, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn read_node(v: &Value, p: &mut Path, out: &mut FieldSet) -> Result<(), String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("expected an object at {}", display(p)))?;
    if o.is_empty() && !p.is_empty() {
        out.insert(p.clone());
    }
    for (k, c) in o {
        if k == "." {
            if !p.is_empty() {
                out.insert(p.clone());
            }
            continue;
        }
        if !["f:", "k:", "v:", "i:"].iter().any(|pre| k.starts_with(pre)) {
            return Err(format!("unexpected key {k:?} at {}", display(p)));
        }
        p.push(k.clone());
        read_node(c, p, out)?;
        p.pop();
    }
    Ok(())
}
