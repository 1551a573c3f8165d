//! The Helm chart (`charts/extension-apiserver-operator`), the examples and the Dockerfile.
//!
//! The chart is linted and rendered with `helm` (installed into `.tools/bin/` by
//! `scripts/install-test-tools.sh`, or named by `HELM`) with the default values and with every
//! `ci/*-values.yaml`. Every rendered document is parsed into its `k8s-openapi` type, nothing
//! may be lost in the parse (a misspelt field would be), and the objects are checked against the
//! operator's code: the RBAC against `eao::operator::rbac`, the CRD against `crds/`.
//!
//! Without helm, the tests fail under CI (env `CI` set) and are skipped with a note elsewhere.

use eao::crd::ExtensionApiServer;
use eao::operator::rbac;
use eao::testing::tools::{chart_dir, helm_path, root, OPERATOR_BINARY};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const RELEASE: &str = "eao";
const NAMESPACE: &str = "eao-system";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The helm binary: `$HELM`, else `.tools/bin/helm`. None (with a note) when absent outside CI.
fn helm() -> Option<PathBuf> {
    let path = helm_path();
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "helm not found at {}: CI must run `bash scripts/install-test-tools.sh` first",
            path.display()
        );
    }
    eprintln!(
        "note: skipping Helm chart test, helm not found at {} (run `bash scripts/install-test-tools.sh`)",
        path.display()
    );
    None
}

fn run_helm(helm: &Path, args: &[String]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {} failed ({}):\n{stdout}\n{stderr}",
            args.join(" "),
            out.status
        ))
    }
}

/// `helm template` of the chart with extra arguments (`-f file`, `--set k=v`).
fn template(helm: &Path, extra: &[&str]) -> Result<String, String> {
    let mut args: Vec<String> = ["template", RELEASE]
        .iter()
        .map(|s| s.to_string())
        .chain([chart_dir().display().to_string()])
        .chain(["--namespace", NAMESPACE].iter().map(|s| s.to_string()))
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    run_helm(helm, &args)
}

/// The `ci/*-values.yaml` files, sorted.
fn ci_values_files() -> Vec<PathBuf> {
    let dir = chart_dir().join("ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    files
}

/// The non-empty documents of a multi-document YAML stream.
fn documents(stream: &str) -> Vec<Yaml> {
    serde_yaml::Deserializer::from_str(stream)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{stream}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Asserts that everything in `have` (the YAML as written) is in `back` (after a round trip
/// through the typed struct): a field the type does not know would be dropped.
fn assert_subset(have: &Json, back: &Json, path: &str) {
    match (have, back) {
        (Json::Object(h), Json::Object(b)) => {
            for (k, v) in h {
                let Some(bv) = b.get(k) else {
                    panic!("{path}.{k} is not a field of the type (misspelt or misplaced?)");
                };
                assert_subset(v, bv, &format!("{path}.{k}"));
            }
        }
        (Json::Array(h), Json::Array(b)) => {
            assert_eq!(h.len(), b.len(), "{path}: list length changed in the parse");
            for (i, (hv, bv)) in h.iter().zip(b).enumerate() {
                assert_subset(hv, bv, &format!("{path}[{i}]"));
            }
        }
        // Typed fields such as JSONSchemaProps.maximum are f64: 65535 comes back as 65535.0.
        (Json::Number(h), Json::Number(b)) => assert_eq!(h.as_f64(), b.as_f64(), "{path}: number changed in the parse"),
        _ => assert_eq!(have, back, "{path}: value changed in the parse"),
    }
}

/// Parses a document into `T` and checks that no field was lost.
fn typed<T: DeserializeOwned + Serialize>(doc: &Yaml, what: &str) -> T {
    let value: T = serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}\n{doc:?}"));
    let have = serde_json::to_value(doc).expect("YAML converts to JSON");
    let back = serde_json::to_value(&value).expect("typed value serializes");
    assert_subset(&have, &back, what);
    value
}

/// Every object the chart rendered, by kind.
#[derive(Default, Debug)]
struct Rendered {
    deployments: Vec<Deployment>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    service_accounts: Vec<ServiceAccount>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    crds: Vec<CustomResourceDefinition>,
    service_monitors: Vec<Json>,
}

fn parse_rendered(stream: &str, mode: &str) -> Rendered {
    let mut r = Rendered::default();
    for doc in documents(stream) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let what = format!("{mode}: {kind} {name}");
        match kind.as_str() {
            "Deployment" => r.deployments.push(typed(&doc, &what)),
            "ClusterRole" => r.cluster_roles.push(typed(&doc, &what)),
            "ClusterRoleBinding" => r.cluster_role_bindings.push(typed(&doc, &what)),
            "Role" => r.roles.push(typed(&doc, &what)),
            "RoleBinding" => r.role_bindings.push(typed(&doc, &what)),
            "ServiceAccount" => r.service_accounts.push(typed(&doc, &what)),
            "Service" => r.services.push(typed(&doc, &what)),
            "PodDisruptionBudget" => r.pdbs.push(typed(&doc, &what)),
            "CustomResourceDefinition" => r.crds.push(typed(&doc, &what)),
            "ServiceMonitor" => {
                assert_eq!(doc["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"), "{what}");
                r.service_monitors
                    .push(serde_json::to_value(&doc).expect("YAML converts to JSON"));
            }
            other => panic!("{what}: the chart renders a kind this test does not check: {other:?}"),
        }
        if kind != "CustomResourceDefinition" && kind != "ClusterRole" && kind != "ClusterRoleBinding" {
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                Some(NAMESPACE),
                "{what}: namespaced objects go to the release namespace"
            );
        }
    }
    r
}

/// Values merged the way Helm merges `-f` files over values.yaml.
fn merge(base: &mut Yaml, over: &Yaml) {
    match (base, over) {
        (Yaml::Mapping(b), Yaml::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_mapping() && v.is_mapping() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn values(file: Option<&Path>) -> Yaml {
    let mut v: Yaml = serde_yaml::from_str(&read(&chart_dir().join("values.yaml"))).expect("values.yaml parses");
    if let Some(f) = file {
        let over: Yaml = serde_yaml::from_str(&read(f)).expect("values file parses");
        merge(&mut v, &over);
    }
    v
}

fn app_version() -> String {
    let chart: Yaml = serde_yaml::from_str(&read(&chart_dir().join("Chart.yaml"))).expect("Chart.yaml parses");
    chart["appVersion"]
        .as_str()
        .expect("Chart.yaml has appVersion")
        .to_string()
}

fn all_rules(r: &Rendered) -> Vec<&PolicyRule> {
    r.cluster_roles
        .iter()
        .flat_map(|c| c.rules.iter().flatten())
        .chain(r.roles.iter().flat_map(|c| c.rules.iter().flatten()))
        .collect()
}

fn assert_no_wildcards(rules: &[&PolicyRule], mode: &str) {
    for r in rules {
        let lists = [
            Some(&r.verbs),
            r.api_groups.as_ref(),
            r.resources.as_ref(),
            r.resource_names.as_ref(),
            r.non_resource_urls.as_ref(),
        ];
        for list in lists.into_iter().flatten() {
            assert!(!list.iter().any(|s| s.contains('*')), "{mode}: wildcard in {r:?}");
        }
    }
}

fn subject_is_operator_sa(subjects: &Option<Vec<Subject>>, sa: &str, mode: &str) {
    let subjects = subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{mode}: {subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount", "{mode}");
    assert_eq!(subjects[0].name, sa, "{mode}");
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "{mode}");
}

fn committed_crd() -> CustomResourceDefinition {
    let text = read(&root().join(eao::operator::crdgen::CRD_FILE));
    let docs = documents(&text);
    assert_eq!(docs.len(), 1, "{} holds one document", eao::operator::crdgen::CRD_FILE);
    typed(&docs[0], eao::operator::crdgen::CRD_FILE)
}

/// The rendered CRD without what the chart adds (labels, the keep annotation).
fn without_chart_metadata(crd: &CustomResourceDefinition) -> CustomResourceDefinition {
    let mut crd = crd.clone();
    crd.metadata.labels = None;
    if let Some(a) = crd.metadata.annotations.as_mut() {
        a.remove("helm.sh/resource-policy");
        if a.is_empty() {
            crd.metadata.annotations = None;
        }
    }
    crd
}

/// Checks one rendering against the values it was made with.
fn check_rendering(r: &Rendered, vals: &Yaml, mode: &str) {
    let replicas = vals["replicaCount"].as_i64().expect("replicaCount");
    let allow_user_rules = vals["rbac"]["allowUserRules"].as_bool().expect("rbac.allowUserRules");
    let user_roles = vals["rbac"]["userRoles"].as_bool().expect("rbac.userRoles");
    let monitor = vals["metrics"]["serviceMonitor"]["enabled"]
        .as_bool()
        .expect("serviceMonitor.enabled");
    let metrics_service = monitor
        || vals["metrics"]["service"]["enabled"]
            .as_bool()
            .expect("service.enabled");
    let admin_port = vals["adminPort"].as_i64().expect("adminPort") as i32;
    let repo = vals["image"]["repository"].as_str().expect("image.repository");
    let tag = vals["image"]["tag"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let image = format!("{repo}:{}", tag.unwrap_or_else(app_version));

    // ServiceAccount.
    assert_eq!(r.service_accounts.len(), 1, "{mode}: one ServiceAccount");
    let sa = r.service_accounts[0]
        .metadata
        .name
        .clone()
        .expect("ServiceAccount name");

    // RBAC: exactly the rules of eao::operator::rbac, bound to the operator's ServiceAccount.
    assert_eq!(r.cluster_roles.len(), 1, "{mode}: one ClusterRole");
    let mut want = rbac::operator_cluster_rules();
    if allow_user_rules {
        want.extend(rbac::user_rules_escalation());
    }
    if user_roles {
        want.extend(rbac::user_roles_grant());
    }
    let cluster_role = &r.cluster_roles[0];
    assert_eq!(
        cluster_role.rules.as_ref(),
        Some(&want),
        "{mode}: ClusterRole rules differ from eao::operator::rbac::operator_cluster_rules(); run `cargo run --bin crdgen`"
    );
    assert_eq!(r.cluster_role_bindings.len(), 1, "{mode}: one ClusterRoleBinding");
    let crb = &r.cluster_role_bindings[0];
    assert_eq!(crb.role_ref.kind, "ClusterRole", "{mode}");
    assert_eq!(Some(&crb.role_ref.name), cluster_role.metadata.name.as_ref(), "{mode}");
    subject_is_operator_sa(&crb.subjects, &sa, mode);

    assert_eq!(r.roles.len(), 1, "{mode}: one Role");
    let role = &r.roles[0];
    assert_eq!(
        role.rules.as_ref(),
        Some(&rbac::operator_namespace_rules()),
        "{mode}: Role rules differ from eao::operator::rbac::operator_namespace_rules()"
    );
    assert_eq!(r.role_bindings.len(), 1, "{mode}: one RoleBinding");
    let rb = &r.role_bindings[0];
    assert_eq!(rb.role_ref.kind, "Role", "{mode}");
    assert_eq!(Some(&rb.role_ref.name), role.metadata.name.as_ref(), "{mode}");
    subject_is_operator_sa(&rb.subjects, &sa, mode);

    // Least privilege: no wildcard; escalate only for rbac.allowUserRules or rbac.userRoles,
    // and bind without resourceNames only for rbac.allowUserRules.
    let rules = all_rules(r);
    assert_no_wildcards(&rules, mode);
    for rule in &rules {
        let has = |verb: &str| rule.verbs.iter().any(|v| v == verb);
        assert!(!has("impersonate"), "{mode}: {rule:?}");
        if !allow_user_rules {
            assert!(
                !has("escalate") || (user_roles && **rule == rbac::user_roles_grant()[0]),
                "{mode}: escalate without rbac.allowUserRules or rbac.userRoles: {rule:?}"
            );
            if has("bind") {
                assert!(
                    rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                    "{mode}: bind must name its roles: {rule:?}"
                );
            }
        }
    }
    assert_eq!(
        rules.iter().any(|rule| rule.verbs.iter().any(|v| v == "escalate")),
        allow_user_rules || user_roles,
        "{mode}: escalate is granted exactly when rbac.allowUserRules or rbac.userRoles"
    );

    // The operator Deployment.
    assert_eq!(r.deployments.len(), 1, "{mode}: one Deployment");
    let deploy = &r.deployments[0];
    let spec = deploy.spec.as_ref().expect("Deployment spec");
    assert_eq!(spec.replicas, Some(replicas as i32), "{mode}: replicas");
    let selector = spec.selector.match_labels.clone().expect("Deployment selector");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "{mode}: the selector matches the pod labels"
        );
    }
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(sa.as_str()), "{mode}");
    assert_eq!(pod.containers.len(), 1, "{mode}: one container");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(image.as_str()),
        "{mode}: image (tag defaults to appVersion)"
    );
    assert_eq!(
        c.command.as_deref(),
        Some(&[OPERATOR_BINARY.to_string()][..]),
        "{mode}: command"
    );
    let args = c.args.clone().unwrap_or_default();
    let has_arg = |a: &str| args.iter().any(|x| x == a);
    for want in [
        format!("--admin-addr=0.0.0.0:{admin_port}"),
        format!("--log-format={}", vals["logFormat"].as_str().expect("logFormat")),
        format!("--server-image={image}"),
    ] {
        assert!(has_arg(&want), "{mode}: {want} in {args:?}");
    }
    let leader_elect = has_arg("--leader-elect");
    if replicas > 1 {
        assert!(
            leader_elect,
            "{mode}: leader election with {replicas} replicas: {args:?}"
        );
    }
    assert_eq!(
        leader_elect,
        replicas > 1
            || vals["leaderElection"]["enabled"]
                .as_bool()
                .expect("leaderElection.enabled"),
        "{mode}: --leader-elect"
    );
    if leader_elect {
        assert!(has_arg("--lease-namespace=$(POD_NAMESPACE)"), "{mode}: {args:?}");
        assert!(has_arg("--pod-name=$(POD_NAME)"), "{mode}: {args:?}");
    }
    let env = c.env.clone().unwrap_or_default();
    for (name, field) in [("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{mode}: env {name}"));
        let path = var
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(path, Some(field), "{mode}: {name} from the downward API");
    }
    let ports = c.ports.clone().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("admin") && p.container_port == admin_port),
        "{mode}: port admin {admin_port}: {ports:?}"
    );
    for (probe, path) in [(&c.liveness_probe, "/livez"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path), "{mode}");
        assert_eq!(get.port, IntOrString::String("admin".into()), "{mode}");
    }
    assert!(
        c.resources.as_ref().is_some_and(|r| r.requests.is_some()),
        "{mode}: resource requests"
    );

    // The restricted securityContext.
    let sc = c.security_context.as_ref().expect("container securityContext");
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(
        sc.run_as_non_root.or(psc.run_as_non_root),
        Some(true),
        "{mode}: runAsNonRoot"
    );
    assert_ne!(sc.run_as_user.or(psc.run_as_user), Some(0), "{mode}: not root");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{mode}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{mode}: allowPrivilegeEscalation"
    );
    assert_ne!(sc.privileged, Some(true), "{mode}: privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{mode}: drop ALL");
    assert!(
        caps.add.as_ref().is_none_or(|a| a.is_empty()),
        "{mode}: no added capabilities"
    );
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(psc.seccomp_profile.as_ref())
        .expect("seccompProfile");
    assert_eq!(seccomp.type_, "RuntimeDefault", "{mode}: seccomp");
    assert_ne!(pod.host_network, Some(true), "{mode}");

    // PodDisruptionBudget exactly when there is more than one replica.
    assert_eq!(
        r.pdbs.len(),
        usize::from(replicas > 1),
        "{mode}: PodDisruptionBudget iff replicaCount > 1"
    );
    for pdb in &r.pdbs {
        let s = pdb.spec.as_ref().expect("PDB spec");
        assert_eq!(
            s.selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(selector.clone()),
            "{mode}"
        );
        assert!(
            s.min_available.is_some() != s.max_unavailable.is_some(),
            "{mode}: {s:?}"
        );
    }

    // Metrics Service and ServiceMonitor.
    assert_eq!(
        r.services.len(),
        usize::from(metrics_service),
        "{mode}: metrics Service"
    );
    for svc in &r.services {
        let s = svc.spec.as_ref().expect("Service spec");
        for (k, v) in s.selector.as_ref().expect("Service selector") {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{mode}: the Service selects the operator pods"
            );
        }
        let ports = s.ports.as_deref().unwrap_or_default();
        assert_eq!(ports.len(), 1, "{mode}");
        assert_eq!(ports[0].name.as_deref(), Some("metrics"), "{mode}");
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("admin".into())),
            "{mode}"
        );
    }
    assert_eq!(r.service_monitors.len(), usize::from(monitor), "{mode}: ServiceMonitor");
    for sm in &r.service_monitors {
        let endpoint = &sm["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "metrics", "{mode}");
        assert_eq!(endpoint["path"], "/metrics", "{mode}");
        let svc_labels = r.services[0].metadata.labels.clone().unwrap_or_default();
        let match_labels = sm["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
        assert!(!match_labels.is_empty(), "{mode}");
        for (k, v) in match_labels {
            assert_eq!(
                svc_labels.get(k).map(String::as_str),
                v.as_str(),
                "{mode}: the ServiceMonitor selects the Service"
            );
        }
    }

    // The CRD: the committed crds/ file, as generated from the code, kept on uninstall.
    assert_eq!(r.crds.len(), 1, "{mode}: one CRD");
    let crd = &r.crds[0];
    assert_eq!(
        without_chart_metadata(crd),
        committed_crd(),
        "{mode}: the chart's CRD differs from crds/; run `cargo run --bin crdgen`"
    );
    assert_eq!(
        without_chart_metadata(crd),
        ExtensionApiServer::crd(),
        "{mode}: the CRD differs from the code"
    );
    let keep = crd
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("helm.sh/resource-policy"));
    assert_eq!(
        keep.map(String::as_str),
        Some("keep"),
        "{mode}: crds.keep is on by default"
    );
}

#[test]
fn helm_lint_passes_in_every_mode() {
    let Some(helm) = helm() else { return };
    let chart = chart_dir().display().to_string();
    let mut modes: Vec<Vec<String>> = vec![vec![]];
    modes.extend(
        ci_values_files()
            .iter()
            .map(|f| vec!["--values".into(), f.display().to_string()]),
    );
    for extra in modes {
        let mut args = vec!["lint".to_string(), "--strict".into(), chart.clone()];
        args.extend(extra);
        let out = run_helm(&helm, &args).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn ci_values_cover_every_mode() {
    let files = ci_values_files();
    let vals: Vec<Yaml> = files.iter().map(|f| values(Some(f))).collect();
    let any = |pred: &dyn Fn(&Yaml) -> bool| vals.iter().any(pred);
    assert!(
        any(&|v| v["replicaCount"].as_i64() == Some(1) && v["rbac"]["allowUserRules"] == false),
        "a default mode"
    );
    assert!(
        any(&|v| v["replicaCount"].as_i64().is_some_and(|n| n > 1)),
        "an HA mode"
    );
    assert!(any(&|v| v["rbac"]["allowUserRules"] == true), "an allowUserRules mode");
    assert!(
        any(&|v| v["rbac"]["userRoles"] == false && v["rbac"]["allowUserRules"] == false),
        "a mode without any escalate"
    );
    assert!(
        any(&|v| v["metrics"]["serviceMonitor"]["enabled"] == true),
        "a monitoring mode"
    );
}

#[test]
fn rendered_chart_matches_the_code_in_every_mode() {
    let Some(helm) = helm() else { return };
    let mut modes: Vec<(String, Option<PathBuf>)> = vec![("default values".into(), None)];
    modes.extend(
        ci_values_files()
            .into_iter()
            .map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), Some(f))),
    );
    for (mode, file) in modes {
        let extra: Vec<String> = file
            .iter()
            .flat_map(|f| ["--values".to_string(), f.display().to_string()])
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = template(&helm, &extra).unwrap_or_else(|e| panic!("{e}"));
        let rendered = parse_rendered(&out, &mode);
        check_rendering(&rendered, &values(file.as_deref()), &mode);
    }
}

#[test]
fn crds_can_be_left_out_or_not_kept() {
    let Some(helm) = helm() else { return };
    let out = template(&helm, &["--set", "crds.enabled=false"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(parse_rendered(&out, "crds.enabled=false").crds.is_empty());

    let out = template(&helm, &["--set", "crds.keep=false"]).unwrap_or_else(|e| panic!("{e}"));
    let r = parse_rendered(&out, "crds.keep=false");
    assert_eq!(r.crds.len(), 1);
    let annotations = r.crds[0].metadata.annotations.clone().unwrap_or_default();
    assert!(!annotations.contains_key("helm.sh/resource-policy"), "{annotations:?}");
    assert_eq!(without_chart_metadata(&r.crds[0]), committed_crd());
}

#[test]
fn leader_election_follows_replicas() {
    let Some(helm) = helm() else { return };
    let args_of = |extra: &[&str]| {
        let out = template(&helm, extra).unwrap_or_else(|e| panic!("{e}"));
        let r = parse_rendered(&out, &extra.join(" "));
        let pod = r.deployments[0].spec.clone().unwrap().template.spec.unwrap();
        (pod.containers[0].args.clone().unwrap_or_default(), r.pdbs.len())
    };
    let (args, pdbs) = args_of(&["--set", "replicaCount=2", "--set", "leaderElection.enabled=false"]);
    assert!(
        args.iter().any(|a| a == "--leader-elect"),
        "forced on above one replica: {args:?}"
    );
    assert_eq!(pdbs, 1);
    let (args, pdbs) = args_of(&["--set", "leaderElection.enabled=false"]);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--leader-elect") || a.starts_with("--lease")),
        "{args:?}"
    );
    assert_eq!(pdbs, 0);
}

#[test]
fn image_tag_and_server_image_can_be_set() {
    let Some(helm) = helm() else { return };
    let container = |extra: &[&str]| {
        let out = template(&helm, extra).unwrap_or_else(|e| panic!("{e}"));
        let r = parse_rendered(&out, &extra.join(" "));
        r.deployments[0].spec.clone().unwrap().template.spec.unwrap().containers[0].clone()
    };
    let c = container(&[
        "--set",
        "image.repository=registry.example/eao",
        "--set",
        "image.tag=v9",
    ]);
    assert_eq!(c.image.as_deref(), Some("registry.example/eao:v9"));
    assert!(c
        .args
        .unwrap()
        .contains(&"--server-image=registry.example/eao:v9".to_string()));
    let c = container(&["--set", "serverImage=registry.example/server:v1"]);
    assert_eq!(c.image, Some(format!("extension-apiserver-operator:{}", app_version())));
    assert!(c
        .args
        .unwrap()
        .contains(&"--server-image=registry.example/server:v1".to_string()));
}

#[test]
fn values_schema_refuses_unknown_and_mistyped_values() {
    let Some(helm) = helm() else { return };
    for bad in [
        "replicaCount=three",
        "unknownValue=1",
        "image.pullPolicy=Sometimes",
        "logFormat=xml",
        "rbac.allowUserRules=maybe",
        "crds.kepe=true",
    ] {
        let res = template(&helm, &["--set", bad]);
        assert!(res.is_err(), "values.schema.json accepted --set {bad}");
    }
}

/// The leaf paths of values.yaml: every one must be described by values.schema.json.
fn leaf_paths(v: &Yaml, prefix: &str, out: &mut Vec<(String, Yaml)>) {
    match v {
        Yaml::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().expect("string keys");
                let p = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(v, &p, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

#[test]
fn values_schema_covers_every_value() {
    let schema: Json =
        serde_json::from_str(&read(&chart_dir().join("values.schema.json"))).expect("values.schema.json parses");
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown top-level values are refused"
    );
    let mut leaves = Vec::new();
    leaf_paths(&values(None), "", &mut leaves);
    let mut described = BTreeMap::new();
    for (path, _) in &leaves {
        let mut node = &schema;
        for part in path.split('.') {
            // Free-form Kubernetes objects (securityContext, resources.limits) end the walk.
            if node.get("properties").is_none() && node["type"] == "object" {
                break;
            }
            node = node
                .get("properties")
                .and_then(|p| p.get(part))
                .unwrap_or_else(|| panic!("values.schema.json does not describe `{path}`"));
            assert!(
                node.get("description").is_some(),
                "values.schema.json: `{path}` has no description"
            );
        }
        described.insert(path.clone(), node.clone());
    }
    assert!(described.contains_key("rbac.allowUserRules"));
    assert!(described.contains_key("rbac.userRoles"));
}

#[test]
fn values_document_the_user_rules_trade_off() {
    let text = read(&chart_dir().join("values.yaml"));
    let at = text
        .find("allowUserRules: false")
        .expect("rbac.allowUserRules defaults to false");
    let comment = &text[..at];
    let comment = &comment[comment
        .rfind("create: true")
        .expect("rbac.create before allowUserRules")..];
    assert!(comment.contains("escalate"), "values.yaml explains the escalate grant");
    assert!(
        comment.contains("ANY PERMISSION"),
        "values.yaml states the privilege trade-off"
    );
}

fn example(name: &str) -> Vec<Yaml> {
    documents(&read(&root().join("examples").join(name)))
}

/// Parses an example's ExtensionApiServer and checks what the schema's CEL rules would.
fn example_server(name: &str) -> ExtensionApiServer {
    let docs = example(name);
    let mut servers = Vec::new();
    for doc in &docs {
        match doc["kind"].as_str() {
            Some("Namespace") => {
                let _: k8s_openapi::api::core::v1::Namespace = typed(doc, name);
            }
            Some("ExtensionApiServer") => servers.push(typed::<ExtensionApiServer>(doc, name)),
            other => panic!("{name}: unexpected kind {other:?}"),
        }
    }
    assert_eq!(servers.len(), 1, "{name}: one ExtensionApiServer");
    let eas = servers.remove(0);
    let ns = eas.metadata.namespace.clone().expect("namespaced");
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Namespace" && d["metadata"]["name"].as_str() == Some(&ns)),
        "{name}: the example creates its namespace {ns}"
    );
    let spec = &eas.spec;
    assert!(
        spec.server.is_some() != spec.image.is_some(),
        "{name}: exactly one of server and image"
    );
    let versions: Vec<&str> = spec.versions.iter().map(|v| v.name.as_str()).collect();
    for res in spec.server.iter().flat_map(|s| &s.resources) {
        for v in &res.versions {
            assert!(
                versions.contains(&v.name.as_str()),
                "{name}: {} version {} not in spec.versions",
                res.kind,
                v.name
            );
        }
    }
    let rules: Vec<&PolicyRule> = spec.rules.iter().collect();
    assert_no_wildcards(&rules, name);
    eas
}

#[test]
fn wardle_example_serves_flunders_and_fischers() {
    let eas = example_server("wardle.yaml");
    assert_eq!(eas.spec.group, "wardle.example.com");
    assert_eq!(
        eas.spec.versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["v1alpha1"]
    );
    let server = eas.spec.server.as_ref().expect("bundled server");
    let kinds: Vec<&str> = server.resources.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["Flunder", "Fischer"]);
    for r in &server.resources {
        let v = &r.versions[0];
        assert!(v.open_api_v3_schema.is_some(), "{} has a schema", r.kind);
        assert!(
            !v.additional_printer_columns.is_empty(),
            "{} has printer columns",
            r.kind
        );
    }
    // NOTES.txt points at this example by name and namespace.
    let notes = read(&chart_dir().join("templates/NOTES.txt"));
    let name = eas.metadata.name.as_deref().unwrap();
    let ns = eas.metadata.namespace.as_deref().unwrap();
    assert!(notes.contains("kubectl apply -f examples/wardle.yaml"), "NOTES.txt");
    assert!(
        notes.contains(&format!("eas/{name} -n {ns}")),
        "NOTES.txt waits for the example"
    );
    assert!(notes.contains("kubectl get flunders"), "NOTES.txt");
}

#[test]
fn metrics_server_example_brings_its_own_image() {
    let eas = example_server("metrics-server.yaml");
    assert_eq!(eas.spec.group, "metrics.k8s.io");
    assert_eq!(eas.spec.versions[0].name, "v1beta1");
    let image = eas.spec.image.as_ref().expect("image server");
    assert_eq!(image.image, "registry.k8s.io/metrics-server/metrics-server:v0.7.2");
    assert_eq!(image.port, 10250);
    assert!(image.pass_tls_flags);
    assert!(!eas.spec.rules.is_empty(), "metrics-server needs its own rules");
}

#[test]
fn external_ca_example_parses() {
    let eas = example_server("external-ca.yaml");
    let certs = eas.spec.certificates.as_ref().expect("certificate settings");
    assert_eq!(certs.ca_secret_ref.as_ref().map(|r| r.name.as_str()), Some("my-ca"));
    assert!(
        eao::operator::reconcile::validate::validate(&eas.spec).is_ok(),
        "{:?}",
        eao::operator::reconcile::validate::validate(&eas.spec)
    );
}

#[test]
fn etcd_example_runs_three_replicas_on_etcd() {
    let eas = example_server("etcd.yaml");
    assert_eq!(eas.spec.replicas, Some(3));
    let storage = eas
        .spec
        .server
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .expect("storage");
    assert!(storage.embedded.is_none());
    let etcd = storage.etcd.as_ref().expect("etcd storage");
    assert_eq!(etcd.endpoints.len(), 3);
    assert_eq!(etcd.secret_ref.as_ref().map(|r| r.name.as_str()), Some("etcd-client"));
    assert!(
        eao::operator::reconcile::validate::validate(&eas.spec).is_ok(),
        "{:?}",
        eao::operator::reconcile::validate::validate(&eas.spec)
    );
    // The Secret the example's comment creates, under the key names the operator mounts.
    let text = read(&root().join("examples/etcd.yaml"));
    for key in eao::operator::reconcile::build::pod::ETCD_SECRET_KEYS {
        assert!(text.contains(&format!("--from-file={key}=")), "{key}");
    }
}

#[test]
fn dockerfile_puts_binaries_where_the_chart_and_operator_expect_them() {
    let dockerfile = read(&root().join("Dockerfile"));
    for path in [OPERATOR_BINARY, eao::serverconfig::SERVER_BINARY] {
        let name = path.rsplit('/').next().unwrap();
        assert!(
            dockerfile.contains(&format!("--bin {name}")),
            "Dockerfile builds {name}"
        );
        assert!(
            dockerfile
                .lines()
                .any(|l| l.starts_with("COPY --from=builder") && l.trim_end().ends_with(path)),
            "Dockerfile installs {path}"
        );
    }
    assert!(
        dockerfile.lines().any(|l| l.trim() == "USER 65532:65532"),
        "Dockerfile runs as non-root 65532"
    );
    let deployment = read(&chart_dir().join("templates/deployment.yaml"));
    assert!(
        deployment.contains(OPERATOR_BINARY),
        "the chart runs the operator binary"
    );
}

#[test]
fn notes_tell_the_user_what_to_apply_next() {
    let Some(helm) = helm() else { return };
    // `--dry-run=client` renders NOTES.txt without a cluster.
    let args: Vec<String> = [
        "install",
        RELEASE,
        &chart_dir().display().to_string(),
        "-n",
        NAMESPACE,
        "--dry-run=client",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_helm(&helm, &args).unwrap_or_else(|e| panic!("{e}"));
    let notes = &out[out.find("NOTES:").expect("helm prints the NOTES")..];
    for want in [
        "kubectl apply -f examples/wardle.yaml",
        "kubectl wait --for=condition=Ready eas/wardle -n wardle-system",
        "kubectl get flunders",
    ] {
        assert!(notes.contains(want), "NOTES lack `{want}`:\n{notes}");
    }
    assert!(
        !notes.contains("WARNING"),
        "no allowUserRules warning by default:\n{notes}"
    );
}
