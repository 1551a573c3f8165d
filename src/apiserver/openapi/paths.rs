//! Paths: the operations of each declared resource in one group-version (get, list, watch,
//! create, update, patch, delete, deletecollection, the status subresource and the
//! all-namespaces list), with the parameters and responses kube-apiserver documents.

use super::schemas::{list_schema, object_schema};
use super::{camel, definition_name, Flavor, META};
use crate::apiserver::discovery::{has_status, resources_in};
use crate::crd::ResourceScope;
use crate::serverconfig::ServerConfig;
use serde_json::{json, Map, Value};

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
pub(super) fn group_version(
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
