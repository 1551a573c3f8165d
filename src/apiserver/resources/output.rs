//! Output forms picked by the Accept header: plain objects, `as=Table` (what kubectl asks for)
//! and `as=PartialObjectMetadata[List]` (what kube-controller-manager's metadata informers ask
//! for). Protobuf is never produced; JSON answers every offer.

use super::{table, Cx};
use crate::apiserver::apierrors::Status;
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

/// One object in `form`; `None` for plain objects (served as stored).
pub fn one(cx: &Cx, form: Form, obj: &Value) -> Result<Option<Value>, Status> {
    Ok(match form {
        Form::Object => None,
        Form::Metadata => Some(partial(obj)),
        Form::Table => Some(table::table(
            cx,
            std::slice::from_ref(obj),
            json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)}),
            true,
            table::include_object(cx.q("includeObject"))?,
        )),
    })
}

/// A list page in `form`; `None` for plain lists.
pub fn list(cx: &Cx, form: Form, items: &[Value], list_meta: Value) -> Result<Option<Value>, Status> {
    Ok(match form {
        Form::Object => None,
        Form::Metadata => Some(json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "items": items.iter().map(partial).collect::<Vec<_>>(),
        })),
        Form::Table => Some(table::table(
            cx,
            items,
            list_meta,
            true,
            table::include_object(cx.q("includeObject"))?,
        )),
    })
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
