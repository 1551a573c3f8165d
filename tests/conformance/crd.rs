//! The CRDs that make kube-apiserver serve the same resources as the bundled server: same kinds,
//! names, scope, schema, subresources and printer columns, in another group.

use eao::crd::ResourceScope;
use eao::serverconfig::ServerConfig;
use serde_json::{json, Value};

/// One CRD per declared resource of `config`, in `group`.
pub fn crds(config: &ServerConfig, group: &str) -> Vec<Value> {
    config
        .resources
        .iter()
        .map(|r| {
            let versions: Vec<Value> = r
                .versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut version = json!({
                        "name": v.name,
                        "served": true,
                        "storage": i == 0,
                        "schema": {"openAPIV3Schema": v.open_api_v3_schema.clone()
                            .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}))},
                    });
                    if let Some(sub) = &r.subresources {
                        version["subresources"] = serde_json::to_value(sub).unwrap_or_default();
                    }
                    if !v.additional_printer_columns.is_empty() {
                        version["additionalPrinterColumns"] =
                            serde_json::to_value(&v.additional_printer_columns).unwrap_or_default();
                    }
                    version
                })
                .collect();
            let mut names = json!({
                "kind": r.kind,
                "plural": r.plural,
                "singular": r.singular.clone().unwrap_or_else(|| r.kind.to_lowercase()),
            });
            if !r.short_names.is_empty() {
                names["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                names["categories"] = json!(r.categories);
            }
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{}.{group}", r.plural)},
                "spec": {
                    "group": group,
                    "scope": match r.scope { ResourceScope::Namespaced => "Namespaced", ResourceScope::Cluster => "Cluster" },
                    "names": names,
                    "versions": versions,
                },
            })
        })
        .collect()
}
