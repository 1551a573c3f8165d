//! Definitions: k8s-openapi's standard types, and the object and list schemas of each
//! declared resource (its declared schema plus `apiVersion`, `kind`, `metadata` and the GVK
//! extension), in the spelling of the document's flavor.

use super::{definition_name, Flavor, META};
use crate::crd::ServedResource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResourceList, DeleteOptions, ListMeta, ObjectMeta, Status};
use serde_json::{json, Map, Value};

/// k8s-openapi schemas of the standard types, with their referenced definitions.
pub(super) fn standard_definitions(flavor: Flavor) -> Map<String, Value> {
    let mut settings = schemars::generate::SchemaSettings::openapi3();
    settings.definitions_path = match flavor {
        Flavor::V2 => "#/definitions/".into(),
        Flavor::V3 => "#/components/schemas/".into(),
    };
    let mut generator = settings.into_generator();
    generator.subschema_for::<ObjectMeta>();
    generator.subschema_for::<ListMeta>();
    generator.subschema_for::<Status>();
    generator.subschema_for::<DeleteOptions>();
    generator.subschema_for::<APIResourceList>();
    let mut defs = generator.take_definitions(true);
    if flavor == Flavor::V2 {
        for v in defs.values_mut() {
            v2_compatible(v);
        }
    }
    defs
}

/// Removes what Swagger 2.0 cannot say, as kube-apiserver's CRD v2 conversion does.
fn v2_compatible(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["oneOf", "anyOf", "not", "nullable"] {
                m.remove(k);
            }
            if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                m.remove("type");
            }
            for child in m.values_mut() {
                v2_compatible(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(v2_compatible),
        _ => {}
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "version": version, "kind": kind}])
}

const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESCRIPTION: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// The object schema: the declared schema plus apiVersion, kind, metadata and the GVK extension.
pub(super) fn object_schema(flavor: Flavor, group: &str, version: &str, r: &ServedResource) -> Value {
    let declared = r
        .versions
        .iter()
        .find(|v| v.name == version)
        .and_then(|v| v.open_api_v3_schema.clone());
    let mut schema = match declared {
        Some(Value::Object(m)) => m,
        _ => {
            let mut m = Map::new();
            m.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
            m
        }
    };
    schema.insert("type".into(), json!("object"));
    let props = schema
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut props = props;
    // The descriptions kube-apiserver publishes for a CRD, word for word (`kubectl explain`).
    props.insert(
        "apiVersion".into(),
        json!({"type": "string", "description": API_VERSION_DESCRIPTION}),
    );
    props.insert(
        "kind".into(),
        json!({"type": "string", "description": KIND_DESCRIPTION}),
    );
    let metadata = match flavor {
        // A `$ref` cannot carry a description in OpenAPI v2; v3 wraps it in `allOf`.
        Flavor::V2 => flavor.reference(&format!("{META}.ObjectMeta")),
        Flavor::V3 => {
            json!({"description": METADATA_DESCRIPTION, "allOf": [flavor.reference(&format!("{META}.ObjectMeta"))]})
        }
    };
    props.insert("metadata".into(), metadata);
    schema.insert("properties".into(), Value::Object(props));
    schema.insert("x-kubernetes-group-version-kind".into(), gvk(group, version, &r.kind));
    let mut v = Value::Object(schema);
    if flavor == Flavor::V2 {
        v2_compatible(&mut v);
    }
    v
}

pub(super) fn list_schema(flavor: Flavor, group: &str, version: &str, r: &ServedResource) -> Value {
    json!({
        "description": format!("{}List is a list of {}.", r.kind, r.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "items": {"type": "array", "items": flavor.reference(&definition_name(group, version, &r.kind))},
            "metadata": flavor.reference(&format!("{META}.ListMeta")),
        },
        "x-kubernetes-group-version-kind": gvk(group, version, &format!("{}List", r.kind)),
    })
}
