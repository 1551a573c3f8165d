//! Output forms picked by the Accept header: plain objects, `as=Table` (what kubectl asks for)
//! and `as=PartialObjectMetadata[List]` (what kube-controller-manager's metadata informers ask
//! for). Protobuf is never produced; JSON answers every offer.

use super::Cx;
use http::HeaderMap;
use serde_json::{json, Value};

/// The requested form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Object,
    Table,
    Metadata,
}

/// The first `as=` form of the Accept header that we can produce; objects otherwise.
pub fn negotiate(headers: &HeaderMap) -> Form {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for offer in accept.split(',') {
        let params: Vec<&str> = offer.split(';').map(str::trim).collect();
        let media = params.first().copied().unwrap_or_default();
        if media != "application/json" && media != "*/*" && media != "application/*" {
            continue;
        }
        let is = |k: &str, v: &str| params.iter().any(|p| *p == format!("{k}={v}"));
        if is("as", "Table") && is("g", "meta.k8s.io") {
            return Form::Table;
        }
        if (is("as", "PartialObjectMetadata") || is("as", "PartialObjectMetadataList")) && is("g", "meta.k8s.io") {
            return Form::Metadata;
        }
        if !params.iter().any(|p| p.starts_with("as=")) {
            return Form::Object;
        }
    }
    Form::Object
}

pub fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// A simple `.a.b` JSONPath, which is what printer columns use in practice.
fn lookup<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.').filter(|s| !s.is_empty()) {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

fn table(cx: &Cx, items: &[Value], list_meta: Value) -> Value {
    table_with(cx, items, list_meta, true)
}

/// A Table; `columns: false` leaves `columnDefinitions` null, which is how kube-apiserver sends
/// every watch event after the first (kubectl keeps the first event's columns).
pub fn table_with(cx: &Cx, items: &[Value], list_meta: Value, with_columns: bool) -> Value {
    let columns = cx
        .res
        .versions
        .iter()
        .find(|v| format!("{}/{}", cx.group, v.name) == cx.api_version)
        .map(|v| v.additional_printer_columns.clone())
        .unwrap_or_default();
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in &columns {
        defs.push(json!({"name": c.name, "type": c.type_, "format": c.format.clone().unwrap_or_default(), "description": c.description.clone().unwrap_or_default(), "priority": c.priority}));
    }
    defs.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            for c in &columns {
                cells.push(lookup(o, &c.json_path).cloned().unwrap_or(Value::Null));
            }
            cells.push(o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null));
            json!({"cells": cells, "object": partial(o)})
        })
        .collect();
    let defs = if with_columns { json!(defs) } else { Value::Null };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

/// One object in `form`; `None` for plain objects (served as stored).
pub fn one(cx: &Cx, form: Form, obj: &Value) -> Option<Value> {
    match form {
        Form::Object => None,
        Form::Metadata => Some(partial(obj)),
        Form::Table => Some(table(
            cx,
            std::slice::from_ref(obj),
            json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)}),
        )),
    }
}

/// A list page in `form`; `None` for plain lists.
pub fn list(cx: &Cx, form: Form, items: &[Value], list_meta: Value) -> Option<Value> {
    match form {
        Form::Object => None,
        Form::Metadata => Some(json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "items": items.iter().map(partial).collect::<Vec<_>>(),
        })),
        Form::Table => Some(table(cx, items, list_meta)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(accept: &str) -> Form {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, accept.parse().expect("header"));
        negotiate(&h)
    }

    #[test]
    fn accept_forms() {
        assert_eq!(form("application/json"), Form::Object);
        assert_eq!(
            form("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            Form::Table
        );
        // kube-controller-manager offers protobuf first; JSON metadata is what we answer.
        assert_eq!(
            form("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"),
            Form::Metadata
        );
        assert_eq!(form("application/json;as=Unknown;g=x,application/json"), Form::Object);
    }
}
