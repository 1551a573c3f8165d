//! Discovery documents: `/apis`, `/apis/<g>`, `/apis/<g>/<v>`, and aggregated discovery
//! (`apidiscovery.k8s.io` v2 and v2beta1) on `/apis` chosen by `Accept`.
//!
//! Everything is rendered once at start from the [`ServerConfig`]; serving is a lookup.

use crate::crd::{ResourceScope, ServedResource};
use crate::serverconfig::ServerConfig;
use base64::Engine;
use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeMap;

/// The aggregated discovery media type parameters.
pub const AGGREGATED_GROUP: &str = "apidiscovery.k8s.io";
/// The aggregated discovery list kind.
pub const AGGREGATED_KIND: &str = "APIGroupDiscoveryList";

/// Verbs of a storage-backed resource, sorted as k8s lists them.
pub const RESOURCE_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Verbs of the `status` subresource.
pub const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// What a client's `Accept` header selects for a discovery document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryFormat {
    /// Plain JSON (`APIGroupList` and friends).
    Legacy,
    /// Aggregated discovery `apidiscovery.k8s.io/v2`.
    AggregatedV2,
    /// Aggregated discovery `apidiscovery.k8s.io/v2beta1`.
    AggregatedV2Beta1,
}

/// Picks the first media range of `accept` this server can produce. `None` means 406.
/// A missing header means plain JSON (the aggregator's availability probe sends none).
pub fn negotiate(accept: Option<&str>, aggregated_allowed: bool) -> Option<DiscoveryFormat> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Some(DiscoveryFormat::Legacy);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let mime = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: BTreeMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_string()))
            .collect();
        if params
            .get("q")
            .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        {
            continue;
        }
        if !matches!(mime.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        match (params.get("g"), params.get("v"), params.get("as")) {
            (None, None, None) => return Some(DiscoveryFormat::Legacy),
            (Some(g), Some(v), Some(a)) if aggregated_allowed && g == AGGREGATED_GROUP && a == AGGREGATED_KIND => {
                match v.as_str() {
                    "v2" => return Some(DiscoveryFormat::AggregatedV2),
                    "v2beta1" => return Some(DiscoveryFormat::AggregatedV2Beta1),
                    _ => continue,
                }
            }
            _ => continue,
        }
    }
    None
}

/// Whether `accept` allows plain JSON (no header does). Clients that only take protobuf (kubectl's
/// OpenAPI v2 download) get a 406 instead of JSON they would fail to parse.
pub fn accepts_json(accept: Option<&str>) -> bool {
    negotiate(accept, false).is_some()
}

/// `StorageVersionHash` of k8s: base64 of the first 8 bytes of SHA-256 of `group/version/kind`.
pub fn storage_version_hash(group: &str, version: &str, kind: &str) -> String {
    let digest = Sha256::digest(format!("{group}/{version}/{kind}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

/// The quoted strong ETag k8s uses for discovery and OpenAPI: upper-case hex SHA-512.
pub fn etag(body: &[u8]) -> String {
    format!("\"{}\"", crate::pki::hex(&Sha512::digest(body)).to_ascii_uppercase())
}

/// A rendered JSON document and its ETag.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Body.
    pub body: Bytes,
    /// Quoted ETag.
    pub etag: String,
}

impl Doc {
    /// Renders `v` as compact JSON.
    pub fn new(v: &impl serde::Serialize) -> Self {
        let body = Bytes::from(serde_json::to_vec(v).unwrap_or_default());
        let etag = etag(&body);
        Doc { body, etag }
    }
}

/// All discovery documents of the server.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The group name.
    pub group: String,
    /// `/apis`.
    pub group_list: Doc,
    /// `/apis/<group>`.
    pub api_group: Doc,
    /// `/apis/<group>/<version>` per version.
    pub resource_lists: BTreeMap<String, Doc>,
    /// Aggregated discovery v2.
    pub aggregated_v2: Doc,
    /// Aggregated discovery v2beta1.
    pub aggregated_v2beta1: Doc,
}

fn is_namespaced(r: &ServedResource) -> bool {
    r.scope == ResourceScope::Namespaced
}

/// The singular name, defaulting to the lower-cased kind.
pub fn singular(r: &ServedResource) -> String {
    r.singular.clone().unwrap_or_else(|| r.kind.to_ascii_lowercase())
}

/// Resources served in `version`.
pub fn resources_in<'a>(cfg: &'a ServerConfig, version: &'a str) -> impl Iterator<Item = &'a ServedResource> + 'a {
    cfg.resources.iter().filter(move |r| serves_version(r, version))
}

/// Whether `r` is served in `version`.
pub fn serves_version(r: &ServedResource, version: &str) -> bool {
    r.versions.iter().any(|v| v.name == version)
}

/// The version objects of `resource` are stored in: the highest-priority version declaring it.
pub fn storage_version<'a>(cfg: &'a ServerConfig, r: &ServedResource) -> &'a str {
    cfg.versions
        .iter()
        .find(|v| r.versions.iter().any(|rv| rv.name == **v))
        .map(String::as_str)
        .unwrap_or_default()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Discovery {
    /// Renders every document for `cfg`.
    pub fn new(cfg: &ServerConfig) -> Self {
        let gv = |v: &str| GroupVersionForDiscovery {
            group_version: format!("{}/{v}", cfg.group),
            version: v.to_string(),
        };
        let group = APIGroup {
            name: cfg.group.clone(),
            versions: cfg.versions.iter().map(|v| gv(v)).collect(),
            preferred_version: cfg.versions.first().map(|v| gv(v)),
            server_address_by_client_cidrs: None,
        };
        let group_list = APIGroupList {
            groups: vec![group.clone()],
        };
        let mut resource_lists = BTreeMap::new();
        for v in &cfg.versions {
            let mut resources = Vec::new();
            for r in resources_in(cfg, v) {
                resources.push(APIResource {
                    name: r.plural.clone(),
                    singular_name: singular(r),
                    namespaced: is_namespaced(r),
                    kind: r.kind.clone(),
                    verbs: strings(&RESOURCE_VERBS),
                    short_names: (!r.short_names.is_empty()).then(|| r.short_names.clone()),
                    categories: (!r.categories.is_empty()).then(|| r.categories.clone()),
                    storage_version_hash: Some(storage_version_hash(&cfg.group, storage_version(cfg, r), &r.kind)),
                    group: None,
                    version: None,
                });
                if has_status(r) {
                    resources.push(APIResource {
                        name: format!("{}/status", r.plural),
                        singular_name: String::new(),
                        namespaced: is_namespaced(r),
                        kind: r.kind.clone(),
                        verbs: strings(&STATUS_VERBS),
                        short_names: None,
                        categories: None,
                        storage_version_hash: None,
                        group: None,
                        version: None,
                    });
                }
            }
            resources.sort_by(|a, b| a.name.cmp(&b.name));
            let list = APIResourceList {
                group_version: format!("{}/{v}", cfg.group),
                resources,
            };
            resource_lists.insert(v.clone(), Doc::new(&list));
        }
        Discovery {
            group: cfg.group.clone(),
            group_list: Doc::new(&group_list),
            api_group: Doc::new(&group),
            resource_lists,
            aggregated_v2: Doc::new(&aggregated(cfg, "v2")),
            aggregated_v2beta1: Doc::new(&aggregated(cfg, "v2beta1")),
        }
    }
}

/// Whether the resource has a `status` subresource.
pub fn has_status(r: &ServedResource) -> bool {
    r.subresources.as_ref().is_some_and(|s| s.status.is_some())
}

/// `APIGroupDiscoveryList` for the group, in the shape of apidiscovery.k8s.io/`api_version`.
fn aggregated(cfg: &ServerConfig, api_version: &str) -> Value {
    let versions: Vec<Value> = cfg
        .versions
        .iter()
        .map(|v| {
            let mut resources: Vec<Value> = resources_in(cfg, v)
                .map(|r| {
                    let kind = json!({"group": "", "version": "", "kind": r.kind});
                    let mut res = json!({
                        "resource": r.plural,
                        "responseKind": kind,
                        "scope": if is_namespaced(r) { "Namespaced" } else { "Cluster" },
                        "singularResource": singular(r),
                        "verbs": RESOURCE_VERBS,
                    });
                    let obj = res.as_object_mut().expect("literal object");
                    if !r.short_names.is_empty() {
                        obj.insert("shortNames".into(), json!(r.short_names));
                    }
                    if !r.categories.is_empty() {
                        obj.insert("categories".into(), json!(r.categories));
                    }
                    if has_status(r) {
                        obj.insert(
                            "subresources".into(),
                            json!([{"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS}]),
                        );
                    }
                    res
                })
                .collect();
            resources.sort_by(|a, b| a["resource"].as_str().cmp(&b["resource"].as_str()));
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({
        "kind": AGGREGATED_KIND,
        "apiVersion": format!("{AGGREGATED_GROUP}/{api_version}"),
        "metadata": {},
        "items": [{"metadata": {"name": cfg.group}, "versions": versions}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_version_hash_matches_reference() {
        assert_eq!(
            storage_version_hash("wardle.example.com", "v1alpha1", "Flunder"),
            "UHqNx5H3K7A="
        );
        assert_eq!(
            storage_version_hash("wardle.example.com", "v1alpha1", "Fischer"),
            "YS5qRiSxzNM="
        );
    }

    #[test]
    fn accept_negotiation() {
        use DiscoveryFormat::*;
        let aggregator = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(Some(aggregator), true), Some(AggregatedV2));
        assert_eq!(negotiate(Some(aggregator), false), Some(Legacy));
        assert_eq!(
            negotiate(
                Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"),
                true
            ),
            Some(AggregatedV2Beta1)
        );
        assert_eq!(negotiate(None, true), Some(Legacy));
        assert_eq!(negotiate(Some("*/*"), true), Some(Legacy));
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf"), true), None);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf,application/json"), true),
            Some(Legacy)
        );
    }
}
