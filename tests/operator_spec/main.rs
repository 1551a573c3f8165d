//! The spec-side fields of issue 13 on a real control plane (etcd, kube-apiserver 1.36 and
//! kube-controller-manager from `KUBEBUILDER_ASSETS`):
//!
//! - `schema`: the CRD's schema admits `spec.pod`, `spec.userRoles` and the storage settings
//!   and refuses bad values with kube's own 422 causes; `kubectl explain` documents `spec.pod`;
//! - `operator`: the operator, installed with the Helm chart and run with the chart's RBAC
//!   (not as cluster-admin), renders what kube stores (Deployment placement, PVC, user roles,
//!   the Versions column); users bound to the built-in `view`/`edit` reach the bundled server's
//!   resources through the aggregator as those roles allow; and an operator upgrade that
//!   changes the server image keeps every stored object.
//!
//! Without `KUBEBUILDER_ASSETS` each test prints why it is skipped and passes.

mod cluster;
mod edges;
mod operator;
mod schema;

use cluster::{root, Cluster, Harness};
use eao::testing::controlplane::{kubectl_path, ControlPlane};
use std::time::Instant;
use tokio::sync::OnceCell;

/// The CRD from `crds/`, applied once per binary (both tests need it; the chart is installed
/// without its CRD so the two do not fight over who owns it).
static CRD: OnceCell<()> = OnceCell::const_new();

async fn ensure_crd(cp: &'static ControlPlane) {
    CRD.get_or_init(|| async {
        let c = Cluster::new(cp);
        c.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            root().join("crds").to_str().expect("UTF-8 path"),
        ]);
        // Polled: `kubectl wait` fails outright while the CRD has no conditions yet.
        c.eventually("the CRD is Established", || {
            let crd = c.try_json(&["get", "crd", "extensionapiservers.aggregation.dev"])?;
            crd["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
                .then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_schema_accepts_and_rejects_the_new_fields() {
    let Some(cp) = ControlPlane::shared("crd_schema_accepts_and_rejects_the_new_fields").await else {
        return;
    };
    assert!(kubectl_path().is_file(), "kubectl not found: run `make tools`");
    let started = Instant::now();
    ensure_crd(cp).await;
    schema::crd_schema_accepts_and_rejects_the_new_fields(cp).await;
    eprintln!("schema checks passed in {:.1}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_renders_the_spec_grants_user_roles_and_keeps_data_across_an_upgrade() {
    let Some(cp) =
        ControlPlane::shared("operator_renders_the_spec_grants_user_roles_and_keeps_data_across_an_upgrade").await
    else {
        return;
    };
    assert!(kubectl_path().is_file(), "kubectl not found: run `make tools`");
    let started = Instant::now();
    ensure_crd(cp).await;
    operator::scenario(cp).await;
    eprintln!(
        "operator spec scenario passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
