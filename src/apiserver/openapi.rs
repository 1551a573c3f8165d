//! OpenAPI documents generated from the declared resources: `/openapi/v2` (Swagger 2.0, all
//! versions), `/openapi/v3` (the index) and `/openapi/v3/apis/<g>/<v>` (OpenAPI 3.0).
//!
//! kube-apiserver merges these into the cluster's documents; one invalid document breaks
//! `kubectl apply` for everyone, so every `$ref` points at a definition we ship (tests check).
//! Standard types (ObjectMeta, ListMeta, Status, DeleteOptions, ...) come from k8s-openapi's
//! schemas, named as kube-apiserver names them.

use super::discovery::{has_status, resources_in, Doc};
use crate::crd::{ResourceScope, ServedResource};
use crate::serverconfig::ServerConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResourceList, DeleteOptions, ListMeta, ObjectMeta, Status};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// Swagger 2.0 or OpenAPI 3.0: where definitions live and how parameters/bodies are spelled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V2,
    V3,
}

impl Flavor {
    fn reference(self, name: &str) -> Value {
        match self {
            Flavor::V2 => json!({"$ref": format!("#/definitions/{name}")}),
            Flavor::V3 => json!({"$ref": format!("#/components/schemas/{name}")}),
        }
    }
}

/// All OpenAPI documents of the server.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// `/openapi/v2`.
    pub v2: Doc,
    /// `/openapi/v3`.
    pub v3_index: Doc,
    /// `/openapi/v3/apis/<g>/<v>`, keyed by `apis/<g>/<v>`.
    pub v3: BTreeMap<String, Doc>,
}

/// The definition name of a kind, as kube-apiserver names CRD kinds: reversed group, version, kind.
pub fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// k8s-openapi schemas of the standard types, with their referenced definitions.
fn standard_definitions(flavor: Flavor) -> Map<String, Value> {
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

/// The object schema: the declared schema plus apiVersion, kind, metadata and the GVK extension.
fn object_schema(flavor: Flavor, group: &str, version: &str, r: &ServedResource) -> Value {
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
    schema
        .entry("description")
        .or_insert_with(|| json!(format!("{} is a {group} resource.", r.kind)));
    let props = schema
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut props = props;
    props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
    props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
    props.insert("metadata".into(), flavor.reference(&format!("{META}.ObjectMeta")));
    schema.insert("properties".into(), Value::Object(props));
    schema.insert("x-kubernetes-group-version-kind".into(), gvk(group, version, &r.kind));
    let mut v = Value::Object(schema);
    if flavor == Flavor::V2 {
        v2_compatible(&mut v);
    }
    v
}

fn list_schema(flavor: Flavor, group: &str, version: &str, r: &ServedResource) -> Value {
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

/// One operation, with its parameters, body and 200 response in the flavor's spelling.
struct Op<'a> {
    method: &'a str,
    action: &'a str,
    id: String,
    description: String,
    response: Value,
    body: Option<Value>,
    query: &'a [&'a str],
}

fn param(flavor: Flavor, name: &str, location: &str) -> Value {
    let required = location == "path";
    match flavor {
        Flavor::V2 => {
            json!({"name": name, "in": location, "type": "string", "required": required, "uniqueItems": true})
        }
        Flavor::V3 => {
            json!({"name": name, "in": location, "required": required, "schema": {"type": "string", "uniqueItems": true}})
        }
    }
}

fn operation(flavor: Flavor, op: &Op<'_>, path_params: &[&str], tag: &str, gvk_v: &Value) -> Value {
    let mut params: Vec<Value> = path_params.iter().map(|p| param(flavor, p, "path")).collect();
    params.extend(op.query.iter().map(|q| param(flavor, q, "query")));
    let mut o = json!({
        "tags": [tag],
        "description": op.description,
        "operationId": op.id,
        "parameters": params,
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": gvk_v,
    });
    let obj = o.as_object_mut().expect("literal object");
    let media = ["application/json", "application/yaml"];
    match flavor {
        Flavor::V2 => {
            obj.insert(
                "responses".into(),
                json!({"200": {"description": "OK", "schema": op.response}, "401": {"description": "Unauthorized"}}),
            );
            obj.insert("produces".into(), json!(media));
            obj.insert("schemes".into(), json!(["https"]));
            if let Some(b) = &op.body {
                if let Some(p) = obj.get_mut("parameters").and_then(Value::as_array_mut) {
                    p.push(json!({"name": "body", "in": "body", "required": true, "schema": b}));
                }
                let consumes = if op.method == "patch" {
                    json!([
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/apply-patch+yaml"
                    ])
                } else {
                    json!(["*/*"])
                };
                obj.insert("consumes".into(), consumes);
            }
        }
        Flavor::V3 => {
            let content: Map<String, Value> = media
                .iter()
                .map(|m| (m.to_string(), json!({"schema": op.response})))
                .collect();
            obj.insert(
                "responses".into(),
                json!({"200": {"description": "OK", "content": content}, "401": {"description": "Unauthorized"}}),
            );
            if let Some(b) = &op.body {
                let types: &[&str] = if op.method == "patch" {
                    &[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/apply-patch+yaml",
                    ]
                } else {
                    &["*/*"]
                };
                let content: Map<String, Value> = types.iter().map(|m| (m.to_string(), json!({"schema": b}))).collect();
                obj.insert("requestBody".into(), json!({"required": true, "content": content}));
            }
        }
    }
    o
}

/// Paths and definitions of one group-version.
fn group_version(
    flavor: Flavor,
    cfg: &ServerConfig,
    version: &str,
    paths: &mut Map<String, Value>,
    defs: &mut Map<String, Value>,
) {
    let group = &cfg.group;
    let tag = {
        let c = camel(group);
        let mut chars = c.chars();
        let first = chars
            .next()
            .map(|f| f.to_ascii_lowercase().to_string())
            .unwrap_or_default();
        format!("{first}{}_{version}", chars.as_str())
    };
    let prefix = format!("/apis/{group}/{version}");
    let op_base = format!("{}{}", camel(group), camel(version));
    paths.insert(
        format!("{prefix}/"),
        json!({"get": operation(flavor, &Op {
            method: "get", action: "get", id: format!("get{op_base}APIResources"),
            description: "get available resources".into(),
            response: flavor.reference(&format!("{META}.APIResourceList")), body: None, query: &[],
        }, &[], &tag, &Value::Null)}),
    );
    let status_ref = flavor.reference(&format!("{META}.Status"));
    let list_query: &[&str] = &[
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "watch",
        "allowWatchBookmarks",
        "sendInitialEvents",
    ];
    let write_query: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
    let patch_query: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
    for r in resources_in(cfg, version) {
        let def = definition_name(group, version, &r.kind);
        let list_def = format!("{def}List");
        defs.insert(def.clone(), object_schema(flavor, group, version, r));
        defs.insert(list_def.clone(), list_schema(flavor, group, version, r));
        let obj = flavor.reference(&def);
        let list = flavor.reference(&list_def);
        let gvk_v = json!({"group": group, "version": version, "kind": r.kind});
        let namespaced = r.scope == ResourceScope::Namespaced;
        let scope = if namespaced { "Namespaced" } else { "" };
        let kind = &r.kind;
        let (collection, ns_params): (String, &[&str]) = if namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                &["namespace"],
            )
        } else {
            (format!("{prefix}/{}", r.plural), &[])
        };
        let mut item_params: Vec<&str> = ns_params.to_vec();
        item_params.push("name");
        let op = |method: &'static str,
                  action: &'static str,
                  verb: &str,
                  what: &str,
                  response: &Value,
                  body: Option<&Value>,
                  query: &'static [&'static str]| Op {
            method,
            action,
            id: format!("{verb}{op_base}{scope}{kind}{what}"),
            description: format!("{action} {kind}"),
            response: response.clone(),
            body: body.cloned(),
            query,
        };
        let mut coll = Map::new();
        coll.insert(
            "get".into(),
            operation(
                flavor,
                &op("get", "list", "list", "", &list, None, list_query),
                ns_params,
                &tag,
                &gvk_v,
            ),
        );
        coll.insert(
            "post".into(),
            operation(
                flavor,
                &op("post", "post", "create", "", &obj, Some(&obj), write_query),
                ns_params,
                &tag,
                &gvk_v,
            ),
        );
        coll.insert(
            "delete".into(),
            operation(
                flavor,
                &op(
                    "delete",
                    "deletecollection",
                    "deleteCollection",
                    "",
                    &status_ref,
                    None,
                    list_query,
                ),
                ns_params,
                &tag,
                &gvk_v,
            ),
        );
        paths.insert(collection.clone(), Value::Object(coll));
        let mut item = Map::new();
        item.insert(
            "get".into(),
            operation(
                flavor,
                &op("get", "get", "read", "", &obj, None, &[]),
                &item_params,
                &tag,
                &gvk_v,
            ),
        );
        item.insert(
            "put".into(),
            operation(
                flavor,
                &op("put", "put", "replace", "", &obj, Some(&obj), write_query),
                &item_params,
                &tag,
                &gvk_v,
            ),
        );
        item.insert(
            "patch".into(),
            operation(
                flavor,
                &op(
                    "patch",
                    "patch",
                    "patch",
                    "",
                    &obj,
                    Some(&json!({"type": "object"})),
                    patch_query,
                ),
                &item_params,
                &tag,
                &gvk_v,
            ),
        );
        item.insert(
            "delete".into(),
            operation(
                flavor,
                &op(
                    "delete",
                    "delete",
                    "delete",
                    "",
                    &status_ref,
                    None,
                    &["dryRun", "gracePeriodSeconds", "propagationPolicy"],
                ),
                &item_params,
                &tag,
                &gvk_v,
            ),
        );
        paths.insert(format!("{collection}/{{name}}"), Value::Object(item));
        if has_status(r) {
            let mut st = Map::new();
            st.insert(
                "get".into(),
                operation(
                    flavor,
                    &op("get", "get", "read", "Status", &obj, None, &[]),
                    &item_params,
                    &tag,
                    &gvk_v,
                ),
            );
            st.insert(
                "put".into(),
                operation(
                    flavor,
                    &op("put", "put", "replace", "Status", &obj, Some(&obj), write_query),
                    &item_params,
                    &tag,
                    &gvk_v,
                ),
            );
            st.insert(
                "patch".into(),
                operation(
                    flavor,
                    &op(
                        "patch",
                        "patch",
                        "patch",
                        "Status",
                        &obj,
                        Some(&json!({"type": "object"})),
                        patch_query,
                    ),
                    &item_params,
                    &tag,
                    &gvk_v,
                ),
            );
            paths.insert(format!("{collection}/{{name}}/status"), Value::Object(st));
        }
        if namespaced {
            let all = operation(
                flavor,
                &op("get", "list", "list", "ForAllNamespaces", &list, None, list_query),
                &[],
                &tag,
                &gvk_v,
            );
            let id = format!("list{op_base}{kind}ForAllNamespaces");
            let mut all = all;
            all["operationId"] = json!(id);
            paths.insert(format!("{prefix}/{}", r.plural), json!({"get": all}));
        }
    }
}

fn title(cfg: &ServerConfig) -> Value {
    json!({"title": cfg.group, "version": env!("CARGO_PKG_VERSION")})
}

impl OpenApi {
    /// Renders every document for `cfg`.
    pub fn new(cfg: &ServerConfig) -> Self {
        let mut v2_paths = Map::new();
        let mut v2_defs = standard_definitions(Flavor::V2);
        for v in &cfg.versions {
            group_version(Flavor::V2, cfg, v, &mut v2_paths, &mut v2_defs);
        }
        let v2 = json!({
            "swagger": "2.0",
            "info": title(cfg),
            "paths": v2_paths,
            "definitions": v2_defs,
        });
        let mut v3 = BTreeMap::new();
        let mut index = Map::new();
        for v in &cfg.versions {
            let mut paths = Map::new();
            let mut defs = standard_definitions(Flavor::V3);
            group_version(Flavor::V3, cfg, v, &mut paths, &mut defs);
            let doc = json!({
                "openapi": "3.0.0",
                "info": title(cfg),
                "paths": paths,
                "components": {"schemas": defs},
            });
            let key = format!("apis/{}/{v}", cfg.group);
            let doc = Doc::new(&doc);
            let hash = doc.etag.trim_matches('"').to_string();
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            );
            v3.insert(key, doc);
        }
        OpenApi {
            v2: Doc::new(&v2),
            v3_index: Doc::new(&json!({"paths": index})),
            v3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kube_apiserver() {
        assert_eq!(
            definition_name("wardle.example.com", "v1alpha1", "Flunder"),
            "com.example.wardle.v1alpha1.Flunder"
        );
        assert_eq!(camel("wardle.example.com"), "WardleExampleCom");
    }
}
