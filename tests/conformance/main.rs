//! Differential conformance: the same resources are served twice on one real control plane, by
//! kube-apiserver itself as CRDs (group `diff-crd.example.com`) and by the bundled server through
//! the aggregator (group `diff.example.com`). Every request of the corpus (`cases.yaml`) goes to
//! both; the answers, normalized (uids, timestamps, resourceVersions, generated names, continue
//! tokens and ages masked, the group renamed), must be equal: status code, content type, body
//! (Status reasons and causes, objects, lists, Tables) and watch events.
//!
//! A difference is either fixed or listed in `allowlist.yaml` with a one-line reason, keyed by
//! `<case>#<step>` (answers count from 0 in the order they are recorded; a watch's own answer
//! comes after the steps it encloses). An entry for
//! a step that no longer differs fails the test too, so the allowlist stays true. A key ending in
//! `@<storage>` (`@embedded`, `@etcd`) holds for that storage of the bundled server only.
//!
//! The suite runs twice, once per storage of the bundled server (the embedded store, and etcd:
//! the control plane's own, under a prefix of its own): every case holds on both. The two runs
//! take turns, since both serve the same group through the same APIServices.
//!
//! Without `KUBEBUILDER_ASSETS` the tests print why they are skipped and pass.

mod crd;
mod normalize;
mod runner;

use eao::serverconfig::ServerConfig;
use eao::testing::aggregated::{AggregatedServer, ServeOptions, Storage};
use eao::testing::controlplane::ControlPlane;
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::Api;
use runner::{Allowlist, Answer, Backend, Case};
use std::path::Path;
use std::time::{Duration, Instant};

const CRD_GROUP: &str = "diff-crd.example.com";
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(DIR).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Installs the CRDs and waits until they are Established.
async fn install_crds(client: &kube::Client, config: &ServerConfig) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::crds(config, CRD_GROUP) {
        let name = crd["metadata"]["name"].as_str().expect("CRD name").to_string();
        api.patch(
            &name,
            &PatchParams::apply("eao-conformance").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
        let established = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(api.clone(), &name, established),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established"))
        .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
    }
}

/// Pretty JSON for a report.
fn show(a: &Answer) -> String {
    let body = if a.events.is_empty() {
        serde_json::to_string_pretty(&a.body).unwrap_or_default()
    } else {
        serde_json::to_string_pretty(&a.events).unwrap_or_default()
    };
    format!("{} {}\n{body}", a.status, a.content_type)
}

/// One run of the suite at a time (see the module comment).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn bundled_server_answers_as_kube_apiserver_does() {
    suite("bundled_server_answers_as_kube_apiserver_does", Storage::Embedded).await;
}

#[tokio::test]
async fn bundled_server_on_etcd_answers_as_kube_apiserver_does() {
    suite("bundled_server_on_etcd_answers_as_kube_apiserver_does", Storage::Etcd).await;
}

/// Runs the corpus against kube-apiserver and the bundled server on `storage`.
async fn suite(test: &str, storage: Storage) {
    let Some(cp) = ControlPlane::shared(test).await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let config_yaml = read("config.yaml");
    let config = ServerConfig::from_yaml(&config_yaml).expect("config.yaml parses");
    let client = cp.client().await.expect("admin client");
    install_crds(&client, &config).await;
    let server = AggregatedServer::start(
        cp,
        ServeOptions {
            binary: Path::new(env!("CARGO_BIN_EXE_extension-apiserver")),
            namespace: "conformance-system",
            service: &format!("diff-api-{}", storage.name()),
            config_yaml: &config_yaml,
            port: 8450 + Storage::ALL.iter().position(|s| *s == storage).unwrap_or(0) as u16,
            extra_args: vec![],
            storage,
            replicas: 1,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("aggregated server: {e}"));

    let cases: Vec<Case> = serde_yaml::from_str(&read("cases.yaml")).expect("cases.yaml parses");
    let allowlist: Allowlist = serde_yaml::from_str(&read("allowlist.yaml")).expect("allowlist.yaml parses");
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name.clone()), "case {} appears twice", c.name);
    }
    for key in allowlist.keys() {
        let case = key.split('#').next().unwrap_or_default();
        assert!(names.contains(case), "allowlist entry {key} names no case");
        if let Some((_, only)) = key.split_once('@') {
            let known = Storage::ALL.iter().any(|s| s.name() == only);
            assert!(known, "allowlist entry {key} names no storage");
        }
    }
    // The entries for this run, keyed `<case>#<step>`.
    let allowlist: Allowlist = allowlist
        .into_iter()
        .filter_map(|(key, reason)| match key.split_once('@') {
            None => Some((key, reason)),
            Some((key, only)) => (only == storage.name()).then(|| (key.to_string(), reason)),
        })
        .collect();
    // `CONFORMANCE_ONLY=cel-` runs only the cases whose names start so, for working on a few;
    // the whole corpus (and every allowlist entry) is checked without it.
    let cases: Vec<Case> = match std::env::var("CONFORMANCE_ONLY") {
        Ok(prefix) if !prefix.is_empty() => cases.into_iter().filter(|c| c.name.starts_with(&prefix)).collect(),
        _ => cases,
    };

    let crd = Backend {
        group: CRD_GROUP.into(),
        client: client.clone(),
    };
    let ours = Backend {
        group: config.group.clone(),
        client: client.clone(),
    };
    let groups = [CRD_GROUP, config.group.as_str()];
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let results: Vec<(String, CaseResult)> = futures::stream::iter(cases.iter().enumerate())
        .map(|(i, case)| {
            let (crd, ours, namespaces) = (crd.clone(), ours.clone(), namespaces.clone());
            async move {
                // Per storage: cluster-scoped objects are named after the namespace, and the
                // other run's objects stay (on the CRD side too).
                let ns = match storage {
                    Storage::Embedded => format!("conf-{i}"),
                    _ => format!("conf-{}-{i}", storage.name()),
                };
                let created = namespaces
                    .patch(
                        &ns,
                        &PatchParams::apply("eao-conformance"),
                        &Patch::Apply(
                            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                        ),
                    )
                    .await;
                if let Err(e) = created {
                    return (case.name.clone(), Err(format!("namespace {ns}: {e}")));
                }
                let (a, b) = tokio::join!(
                    runner::run(case, &crd, &ns, &groups),
                    runner::run(case, &ours, &ns, &groups)
                );
                let diffs = match (a, b) {
                    (Ok(a), Ok(b)) => compare(&a, &b),
                    (Err(e), _) => Err(format!("CRD side: {e}")),
                    (_, Err(e)) => Err(format!("bundled side: {e}")),
                };
                (case.name.clone(), diffs)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut failures = Vec::new();
    let (mut steps, mut differing, mut allowed) = (0, 0, 0);
    for (name, result) in &results {
        let diffs = match result {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("case {name} could not run: {e}"));
                continue;
            }
        };
        steps += cases.iter().find(|c| &c.name == name).map_or(0, runner::count_steps);
        for (step, text) in diffs {
            differing += 1;
            if allowlist.contains_key(&format!("{name}#{step}")) {
                allowed += 1;
            } else {
                failures.push(format!("case {name} differs:\n{text}"));
            }
        }
        for key in allowlist.keys().filter(|k| k.split('#').next() == Some(name.as_str())) {
            let step: Option<usize> = key.split('#').nth(1).and_then(|s| s.parse().ok());
            if !diffs.iter().any(|(s, _)| Some(*s) == step) {
                failures.push(format!(
                    "{key} no longer differs; remove it from allowlist.yaml ({})",
                    allowlist[key]
                ));
            }
        }
    }
    eprintln!(
        "conformance ({} storage): {} cases, {steps} compared steps, {differing} steps differ ({allowed} allowlisted), {} s",
        storage.name(),
        results.len(),
        started.elapsed().as_secs()
    );
    drop(server);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A case's differing steps (index, report), or why it could not run.
type CaseResult = Result<Vec<(usize, String)>, String>;

/// The differences between the two sides' compared answers, by step.
fn compare(crd: &[(bool, Answer)], ours: &[(bool, Answer)]) -> CaseResult {
    if crd.len() != ours.len() {
        return Err(format!(
            "{} answers from kube-apiserver, {} from ours",
            crd.len(),
            ours.len()
        ));
    }
    Ok(crd
        .iter()
        .zip(ours)
        .enumerate()
        .filter(|(_, ((compared, a), (_, b)))| *compared && a != b)
        .map(|(i, ((_, a), (_, b)))| {
            let text = format!(
                "  step {i}: {}\n  --- kube-apiserver (CRD):\n{}\n  --- bundled server:\n{}",
                a.request,
                show(a),
                show(b)
            );
            (i, text)
        })
        .collect())
}
