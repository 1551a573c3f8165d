//! OpenAPI documents generated from the declared resources: `/openapi/v2` (Swagger 2.0, all
//! versions), `/openapi/v3` (the index) and `/openapi/v3/apis/<g>/<v>` (OpenAPI 3.0).
//!
//! kube-apiserver merges these into the cluster's documents; one invalid document breaks
//! `kubectl apply` for everyone, so every `$ref` points at a definition we ship (tests check).
//! Standard types (ObjectMeta, ListMeta, Status, DeleteOptions, ...) come from k8s-openapi's
//! schemas, named as kube-apiserver names them.
//!
//! This file assembles the documents; `schemas.rs` builds the definitions and `paths.rs` the
//! operations of each group-version.

mod paths;
mod schemas;

use super::discovery::Doc;
use crate::serverconfig::ServerConfig;
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

fn title(cfg: &ServerConfig) -> Value {
    json!({"title": cfg.group, "version": env!("CARGO_PKG_VERSION")})
}

impl OpenApi {
    /// Renders every document for `cfg`.
    pub fn new(cfg: &ServerConfig) -> Self {
        let mut v2_paths = Map::new();
        let mut v2_defs = schemas::standard_definitions(Flavor::V2);
        for v in &cfg.versions {
            paths::group_version(Flavor::V2, cfg, v, &mut v2_paths, &mut v2_defs);
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
            let mut defs = schemas::standard_definitions(Flavor::V3);
            paths::group_version(Flavor::V3, cfg, v, &mut paths, &mut defs);
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
