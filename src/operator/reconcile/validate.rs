//! Checks of a spec that go beyond what the CRD schema enforces at admission (and repeat the
//! schema's own checks, so that an object admitted under an older CRD still gets a clear
//! condition instead of a failed apply).

use super::build::roles::is_kubernetes_group;
pub use super::settings::{CertSettings, DEFAULT_OVERLAP};
use crate::crd::{
    EtcdStorage, ExtensionApiServerSpec, MAX_ETCD_ENDPOINTS, RESERVED_POD_ANNOTATIONS, RESERVED_POD_LABELS,
};
use crate::pki::{parse_duration, DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY};
use std::collections::BTreeSet;
use std::time::Duration;

/// A spec that passed validation, with defaults resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// Certificate settings.
    pub certs: CertSettings,
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_version_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else { return false };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let tail = &rest[digits..];
    if tail.is_empty() {
        return true;
    }
    let Some(n) = tail.strip_prefix("alpha").or_else(|| tail.strip_prefix("beta")) else {
        return false;
    };
    !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
}

/// Validates a spec; the error lists every problem, each naming the field to fix.
pub fn validate(spec: &ExtensionApiServerSpec) -> Result<Validated, Vec<String>> {
    let mut problems = Vec::new();
    if !is_dns_subdomain(&spec.group) {
        problems.push(format!(
            "spec.group {:?} must be a DNS-1123 subdomain such as wardle.example.com",
            spec.group
        ));
    }
    match (&spec.server, &spec.image) {
        (Some(_), Some(_)) | (None, None) => problems.push(
            "exactly one of spec.server (the bundled server) or spec.image (your own server image) must be set".into(),
        ),
        _ => {}
    }
    if spec.versions.is_empty() {
        problems.push("spec.versions must name at least one version".into());
    }
    let mut seen = BTreeSet::new();
    for (i, v) in spec.versions.iter().enumerate() {
        if !is_version_name(&v.name) {
            problems.push(format!(
                "spec.versions[{i}].name {:?} must look like v1, v1beta2 or v2alpha1",
                v.name
            ));
        }
        if !seen.insert(v.name.as_str()) {
            problems.push(format!("spec.versions[{i}].name {:?} is listed twice", v.name));
        }
        if !(1..=20000).contains(&v.group_priority_minimum) {
            problems.push(format!(
                "spec.versions[{i}].groupPriorityMinimum must be between 1 and 20000"
            ));
        }
        if !(1..=1000).contains(&v.version_priority) {
            problems.push(format!("spec.versions[{i}].versionPriority must be between 1 and 1000"));
        }
    }
    if let Some(server) = &spec.server {
        let mut plurals = BTreeSet::new();
        for (i, r) in server.resources.iter().enumerate() {
            if !plurals.insert(r.plural.as_str()) {
                problems.push(format!(
                    "spec.server.resources[{i}].plural {:?} is declared twice",
                    r.plural
                ));
            }
            for (j, rv) in r.versions.iter().enumerate() {
                if !seen.contains(rv.name.as_str()) {
                    problems.push(format!(
                        "spec.server.resources[{i}].versions[{j}].name {:?} is not one of spec.versions",
                        rv.name
                    ));
                }
            }
        }
    }
    if let Some(img) = &spec.image {
        if img.image.trim().is_empty() {
            problems.push("spec.image.image must name a container image".into());
        }
        if !(1..=65535).contains(&img.port) {
            problems.push("spec.image.port must be between 1 and 65535".into());
        }
    }
    if spec.replicas.is_some_and(|r| r < 0) {
        problems.push("spec.replicas must not be negative".into());
    }
    // Embedded storage is one data directory in one pod: a second replica would serve other
    // data. Only etcd is shared by every replica.
    if spec.server.is_some() && spec.replicas.is_some_and(|r| r > 1) && etcd_storage(spec).is_none() {
        problems.push(
            "spec.replicas: the bundled server runs more than one replica only with etcd storage; set spec.server.storage.etcd, or set spec.replicas to 1".into(),
        );
    }
    pod_and_storage(spec, &mut problems);
    user_roles(spec, &mut problems);
    let certs = cert_settings(spec, &mut problems);
    if problems.is_empty() {
        Ok(Validated { certs })
    } else {
        Err(problems)
    }
}

/// `spec.pod` and the bundled server's storage, as the schema checks them.
fn pod_and_storage(spec: &ExtensionApiServerSpec, problems: &mut Vec<String>) {
    if let Some(pod) = &spec.pod {
        for key in RESERVED_POD_LABELS.iter().filter(|k| pod.labels.contains_key(**k)) {
            problems.push(format!(
                "spec.pod.labels must not set {key:?}: the operator's own labels select the server pods"
            ));
        }
        for key in RESERVED_POD_ANNOTATIONS
            .iter()
            .filter(|k| pod.annotations.contains_key(**k))
        {
            problems.push(format!(
                "spec.pod.annotations must not set {key:?}: the operator sets it"
            ));
        }
        if spec.server.is_some() && !(pod.volumes.is_empty() && pod.volume_mounts.is_empty()) {
            problems.push(
                "spec.pod.volumes and spec.pod.volumeMounts are for your own image (spec.image); the bundled server takes none"
                    .into(),
            );
        }
        for v in pod
            .volumes
            .iter()
            .filter(|v| ["serving-cert", "config", "data"].contains(&v.name.as_str()))
        {
            problems.push(format!(
                "spec.pod.volumes: the name {:?} is the operator's own; choose another",
                v.name
            ));
        }
    }
    let embedded = spec
        .server
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .and_then(|s| s.embedded.as_ref());
    if embedded.is_some_and(|e| e.ephemeral && (e.size.is_some() || e.storage_class_name.is_some())) {
        problems.push(
            "spec.server.storage.embedded: size and storageClassName configure the PersistentVolumeClaim, which ephemeral: true replaces with an emptyDir; set one or the other".into(),
        );
    }
    if let Some(etcd) = etcd_storage(spec) {
        if embedded.is_some() {
            problems.push("spec.server.storage: set either embedded or etcd, not both".into());
        }
        etcd_settings(etcd, problems);
    }
}

/// `spec.server.storage.etcd`, when the bundled server uses it.
fn etcd_storage(spec: &ExtensionApiServerSpec) -> Option<&EtcdStorage> {
    spec.server.as_ref()?.storage.as_ref()?.etcd.as_ref()
}

/// Whether `s` is what the schema admits as an endpoint: `http://` or `https://`, then a
/// host (and port) with no path, query, fragment, comma or space. The commas matter most:
/// the endpoints reach the server comma-separated in one flag.
pub fn is_etcd_endpoint(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && !r
                .chars()
                .any(|c| matches!(c, '/' | '?' | '#' | ',') || c.is_whitespace())
    })
}

fn etcd_settings(etcd: &EtcdStorage, problems: &mut Vec<String>) {
    if etcd.endpoints.is_empty() || etcd.endpoints.len() > MAX_ETCD_ENDPOINTS {
        problems.push(format!(
            "spec.server.storage.etcd.endpoints must list between 1 and {MAX_ETCD_ENDPOINTS} endpoints"
        ));
    }
    for (i, e) in etcd.endpoints.iter().enumerate() {
        if !is_etcd_endpoint(e) {
            problems.push(format!(
                "spec.server.storage.etcd.endpoints[{i}] {e:?} must be an http:// or https:// URL with a host and port and nothing else, such as https://etcd-0.etcd:2379"
            ));
        }
    }
    if etcd.secret_ref.is_none() && etcd.endpoints.iter().any(|e| e.starts_with("https://")) {
        problems.push(
            "spec.server.storage.etcd: https:// endpoints need secretRef, a Secret with ca.crt (to verify etcd), tls.crt and tls.key".into(),
        );
    }
    if etcd.prefix.as_ref().is_some_and(|p| !p.starts_with('/')) {
        problems.push("spec.server.storage.etcd.prefix must start with /".into());
    }
}

/// User roles extend everyone's `view`/`edit`/`admin`: never for Kubernetes' own groups, where
/// they would hand out access to built-in APIs (webhooks, RBAC, certificates).
fn user_roles(spec: &ExtensionApiServerSpec, problems: &mut Vec<String>) {
    let resources = super::build::user_role_resources(spec);
    if !resources.is_empty() && is_kubernetes_group(&spec.group) {
        // Only reached when spec.userRoles asks for them: by default there are none for such groups.
        problems.push(format!(
            "spec.userRoles: {:?} is a Kubernetes API group, and roles aggregated into view/edit/admin for it could grant access to Kubernetes' own resources; set spec.userRoles.enabled to false (or serve a group of your own domain)",
            spec.group
        ));
    }
}

fn cert_settings(spec: &ExtensionApiServerSpec, problems: &mut Vec<String>) -> CertSettings {
    let c = spec.certificates.clone().unwrap_or_default();
    let mut duration = |field: &str, value: &Option<String>, default: Duration| match value {
        None => default,
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            problems.push(format!("spec.certificates.{field}: {e}"));
            default
        }),
    };
    let serving_validity = duration("servingValidity", &c.serving_validity, DEFAULT_SERVING_VALIDITY);
    let ca_validity = duration("caValidity", &c.ca_validity, DEFAULT_CA_VALIDITY);
    let mut optional =
        |field: &str, value: &Option<String>| value.as_ref().map(|_| duration(field, value, Duration::ZERO));
    let serving_renew_before = optional("servingRenewBefore", &c.serving_renew_before);
    let ca_renew_before = optional("caRenewBefore", &c.ca_renew_before);
    let ca_overlap = optional("caOverlap", &c.ca_overlap).unwrap_or(DEFAULT_OVERLAP);
    if serving_renew_before.is_some_and(|r| r >= serving_validity) {
        problems.push("spec.certificates.servingRenewBefore must be shorter than servingValidity".into());
    }
    if ca_renew_before.is_some_and(|r| r >= ca_validity) {
        problems.push("spec.certificates.caRenewBefore must be shorter than caValidity".into());
    }
    if serving_validity < Duration::from_secs(3600) {
        problems.push("spec.certificates.servingValidity must be at least 1h".into());
    }
    if ca_validity <= serving_validity {
        problems.push("spec.certificates.caValidity must be longer than servingValidity".into());
    }
    CertSettings {
        key_algorithm: c.key_algorithm.unwrap_or_default(),
        serving_validity,
        serving_renew_before,
        ca_validity,
        ca_renew_before,
        ca_overlap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CertificatesSpec, ImageServer, KeyAlgorithm};

    use crate::crd::wardle_spec as spec;

    #[test]
    fn valid_spec_gets_defaults() {
        let v = validate(&spec()).unwrap();
        assert_eq!(v.certs, CertSettings::default());
        assert_eq!(v.certs.key_algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(v.certs.serving_validity, DEFAULT_SERVING_VALIDITY);
        assert_eq!(v.certs.ca_validity, DEFAULT_CA_VALIDITY);
    }

    #[test]
    fn version_names() {
        for ok in ["v1", "v12", "v1beta2", "v2alpha1"] {
            assert!(is_version_name(ok), "{ok}");
        }
        for bad in [
            "1", "v", "v0", "v01", "v1beta", "v1gamma1", "V1", "v1beta01", "v1-beta1",
        ] {
            assert!(!is_version_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut s = spec();
        s.group = "Not_A_Group".into();
        s.image = Some(Box::new(ImageServer {
            image: "x".into(),
            image_pull_policy: None,
            command: vec![],
            args: vec![],
            env: vec![],
            port: 70000,
            pass_tls_flags: true,
            readiness_path: "/readyz".into(),
            restart_on_certificate_change: true,
        }));
        s.versions.push(s.versions[0].clone());
        s.versions[0].version_priority = 0;
        s.certificates = Some(Box::new(CertificatesSpec {
            serving_validity: Some("10m".into()),
            ca_validity: Some("soon".into()),
            ..Default::default()
        }));
        let problems = validate(&s).unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "spec.group",
            "exactly one of spec.server",
            "listed twice",
            "versionPriority",
            "spec.image.port",
            "servingValidity must be at least 1h",
            "spec.certificates.caValidity: invalid duration",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn embedded_storage_means_one_replica() {
        let mut s = spec();
        s.replicas = Some(2);
        let all = validate(&s).unwrap_err().join("\n");
        assert!(all.contains("more than one replica only with etcd storage"), "{all}");
        s.replicas = Some(1);
        assert!(validate(&s).is_ok());
    }

    fn with_storage(storage: serde_json::Value) -> ExtensionApiServerSpec {
        let mut s = spec();
        s.server.as_mut().unwrap().storage = Some(serde_json::from_value(storage).unwrap());
        s
    }

    #[test]
    fn etcd_storage_allows_replicas_and_is_checked_like_the_schema() {
        let mut s = with_storage(
            serde_json::json!({"etcd": {"endpoints": ["https://etcd-0.etcd:2379", "http://10.0.0.1:2379"],
                                                             "secretRef": {"name": "etcd-client"}}}),
        );
        s.replicas = Some(3);
        assert!(validate(&s).is_ok());
        s.server
            .as_mut()
            .unwrap()
            .storage
            .as_mut()
            .unwrap()
            .etcd
            .as_mut()
            .unwrap()
            .secret_ref = None;
        let all = validate(&s).unwrap_err().join("\n");
        assert!(all.contains("https:// endpoints need secretRef"), "{all}");
        let mut s = with_storage(serde_json::json!({
            "embedded": {"ephemeral": true},
            "etcd": {"endpoints": ["etcd:2379", "https://a:2379,https://b:2379", "https://etcd:2379/v3"],
                     "prefix": "registry"}}));
        s.replicas = Some(3);
        let all = validate(&s).unwrap_err().join("\n");
        for needle in [
            "set either embedded or etcd, not both",
            "endpoints[0] \"etcd:2379\" must be an http:// or https:// URL",
            "endpoints[1]",
            "endpoints[2]",
            "prefix must start with /",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(
            !all.contains("spec.replicas"),
            "etcd is set, so replicas may be 3: {all}"
        );
        let none = with_storage(serde_json::json!({"etcd": {"endpoints": []}}));
        assert!(validate(&none).unwrap_err()[0].contains("between 1 and 16"));
    }

    #[test]
    fn pod_settings_and_storage_are_checked_like_the_schema() {
        let mut s = spec();
        s.pod = Some(
            serde_json::from_value(serde_json::json!({
                "labels": {"app.kubernetes.io/instance": "other", "team": "a"},
                "annotations": {"aggregation.dev/serving-cert-sha256": "x"},
                "volumes": [{"name": "data", "emptyDir": {}}],
            }))
            .unwrap(),
        );
        s.server.as_mut().unwrap().storage =
            Some(serde_json::from_value(serde_json::json!({"embedded": {"ephemeral": true, "size": "1Gi"}})).unwrap());
        let all = validate(&s).unwrap_err().join("\n");
        for needle in [
            "spec.pod.labels must not set \"app.kubernetes.io/instance\"",
            "spec.pod.annotations must not set \"aggregation.dev/serving-cert-sha256\"",
            "spec.pod.volumes and spec.pod.volumeMounts are for your own image",
            "the name \"data\" is the operator's own",
            "ephemeral: true replaces",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("team"), "{all}");
    }

    #[test]
    fn user_roles_are_refused_for_kubernetes_groups() {
        for (group, k8s) in [
            ("apps", true),
            ("admissionregistration.k8s.io", true),
            ("k8s.io", true),
            ("metrics.k8s.io", true),
            ("example.kubernetes.io", true),
            ("wardle.example.com", false),
            ("notk8s.io", false),
        ] {
            assert_eq!(is_kubernetes_group(group), k8s, "{group}");
        }
        let mut s = spec();
        s.group = "admissionregistration.k8s.io".into();
        s.server.as_mut().unwrap().resources = vec![serde_json::from_value(serde_json::json!({
            "kind": "Widget", "plural": "widgets", "versions": [{"name": "v1alpha1"}]
        }))
        .unwrap()];
        assert!(validate(&s).is_ok(), "by default no roles for a Kubernetes group");
        assert!(crate::operator::reconcile::build::user_role_resources(&s).is_empty());
        s.user_roles = Some(crate::crd::UserRoles {
            enabled: true,
            resources: vec!["mutatingwebhookconfigurations".into()],
        });
        let all = validate(&s).unwrap_err().join("\n");
        assert!(
            all.contains("spec.userRoles: \"admissionregistration.k8s.io\" is a Kubernetes API group"),
            "{all}"
        );
        s.user_roles.as_mut().unwrap().enabled = false;
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn resource_versions_must_be_declared() {
        let mut s = spec();
        let r: crate::crd::ServedResource = serde_json::from_value(serde_json::json!({
            "kind": "Flunder", "plural": "flunders", "versions": [{"name": "v1"}]
        }))
        .unwrap();
        s.server.as_mut().unwrap().resources = vec![r.clone(), r];
        let all = validate(&s).unwrap_err().join("\n");
        assert!(all.contains("\"v1\" is not one of spec.versions"), "{all}");
        assert!(all.contains("declared twice"), "{all}");
    }
}
