//! Output forms picked by the Accept header: plain objects, `as=Table` (what kubectl asks for)
//! and `as=PartialObjectMetadata[List]` (what kube-controller-manager's metadata informers ask
//! for), encoded as JSON or YAML. Protobuf is never produced: an offer of it is skipped for the
//! next one; an Accept header with nothing we produce is answered 406, as kube-apiserver does.

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

/// The encoding of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Yaml,
}

/// The media types we answer with, for the 406 message.
const ACCEPTED: &str = "application/json, application/yaml";

/// The first offer of the Accept header that we can produce: its form and encoding. No Accept
/// (or an empty one) means JSON objects; offers we cannot produce are skipped; none left is 406.
pub fn negotiate(headers: &HeaderMap) -> Result<(Form, Encoding), Status> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.trim().is_empty() {
        return Ok((Form::Object, Encoding::Json));
    }
    for offer in accept.split(',') {
        let params: Vec<&str> = offer.split(';').map(str::trim).collect();
        let encoding = match params.first().copied().unwrap_or_default() {
            "application/json" | "*/*" | "application/*" => Encoding::Json,
            "application/yaml" => Encoding::Yaml,
            _ => continue,
        };
        let is = |k: &str, v: &str| params.iter().any(|p| *p == format!("{k}={v}"));
        if is("as", "Table") && is("g", "meta.k8s.io") {
            return Ok((Form::Table, encoding));
        }
        if (is("as", "PartialObjectMetadata") || is("as", "PartialObjectMetadataList")) && is("g", "meta.k8s.io") {
            return Ok((Form::Metadata, encoding));
        }
        if !params.iter().any(|p| p.starts_with("as=")) {
            return Ok((Form::Object, encoding));
        }
    }
    Err(Status::not_acceptable(ACCEPTED))
}

/// `resp` re-encoded as YAML when it is a whole JSON answer (a watch stays JSON lines).
pub async fn encode(
    encoding: Encoding,
    resp: http::Response<crate::apiserver::body::Body>,
) -> http::Response<crate::apiserver::body::Body> {
    use http_body_util::BodyExt;
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if encoding != Encoding::Yaml || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return Status::internal("cannot read the answer to re-encode it").into_response();
    };
    let yaml = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| serde_yaml::to_string(&v).ok());
    let Some(yaml) = yaml else {
        return Status::internal("cannot encode the answer as YAML").into_response();
    };
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/yaml"),
    );
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Response::from_parts(parts, crate::apiserver::body::full(yaml))
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
        negotiate(&h).expect("acceptable").0
    }

    #[test]
    fn yaml_is_served_and_nothing_acceptable_is_406() {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, "application/yaml".parse().expect("header"));
        assert_eq!(negotiate(&h).expect("yaml"), (Form::Object, Encoding::Yaml));
        h.insert(http::header::ACCEPT, "text/html".parse().expect("header"));
        assert_eq!(negotiate(&h).expect_err("406").code, http::StatusCode::NOT_ACCEPTABLE);
        h.insert(http::header::ACCEPT, "".parse().expect("header"));
        assert_eq!(negotiate(&h).expect("empty").1, Encoding::Json);
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
