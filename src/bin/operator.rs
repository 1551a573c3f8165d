//! The operator binary: flags, logging, admin server, leader election, controller.

use clap::Parser;
use eao::operator::admin::{self, AdminState};
use eao::operator::leader::{LeaderElector, LeaseConfig};
use eao::operator::metrics::Metrics;
use eao::operator::reconcile::build::BuildOptions;
use eao::telemetry::{self, LogFormat};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reconciles ExtensionApiServer objects into everything the Kubernetes aggregation layer needs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "EAO_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "EAO_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log filter used when RUST_LOG is unset.
    #[arg(long, env = "EAO_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Take part in Lease-based leader election (needed with more than one replica).
    #[arg(long, env = "EAO_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "EAO_LEASE_NAME", default_value = "extension-apiserver-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Image of the bundled server, used when an ExtensionApiServer names none.
    #[arg(long, env = "EAO_SERVER_IMAGE", default_value = concat!("extension-apiserver-operator:", env!("CARGO_PKG_VERSION")))]
    server_image: String,
}

/// How often the leader renews its Lease and a standby tries to take it.
const RENEW_INTERVAL: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

fn main() {
    limit_malloc_arenas();
    let args = Args::parse();
    telemetry::init(args.log_format, &args.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        tracing::error!(error = %e, "operator failed");
        std::process::exit(1);
    }
}

/// glibc gives every thread that contends for the heap an arena of its own (up to eight per
/// core) and never moves free memory between arenas. The operator's allocations are small and
/// its work waits on the API server, so one arena costs nothing measurable, while every extra
/// arena keeps free memory of its own resident (`operator-bench`, 1,000 ExtensionApiServers:
/// two arenas instead of eight, about 0.5 MiB less; one instead of two, together with smaller
/// spec structs, 2 MiB less). Set before the runtime's threads exist, since a thread keeps the
/// arena it first got.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot configure a Kubernetes client (in-cluster or KUBECONFIG): {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        }
    });

    let admin = tokio::spawn(admin::serve(
        args.admin_addr,
        AdminState {
            ready: ready.clone(),
            metrics: metrics.clone(),
        },
        stopped(),
    ));

    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("extension-apiserver-operator-{}", std::process::id()));
    let elector = args.leader_elect.then(|| {
        Arc::new(LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            LeaseConfig {
                name: args.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: Duration::from_secs(15),
                renew_interval: RENEW_INTERVAL,
            },
        ))
    });
    if let Some(e) = &elector {
        // A replica standing by is ready (see admin.rs) while it can see that another replica
        // holds the Lease. Otherwise a rolling update, which stops the old pod only once the new
        // one is ready (the chart's single replica gets maxUnavailable 0), would wait forever
        // for a pod that waits for the old pod's Lease.
        loop {
            match e.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {
                    if !ready.swap(true, Ordering::SeqCst) {
                        tracing::info!(lease = %args.lease_name, "another replica leads; standing by");
                    }
                }
                Err(err) => {
                    ready.store(false, Ordering::SeqCst);
                    tracing::warn!(error = %err, "leader election failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW_INTERVAL) => {},
                _ = stopped() => return Ok(()),
            }
        }
        tracing::info!(lease = %args.lease_name, %identity, "became leader");
        // Leading: ready again once the controller's caches are synced.
        ready.store(false, Ordering::SeqCst);
        // Losing the Lease stops the controller: a successor may already be writing.
        let e = e.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            e.hold().await;
            let _ = stop_tx.send(true);
        });
    }

    let reporter = Reporter {
        controller: "extension-apiserver-operator".into(),
        instance: Some(identity),
    };
    let options = BuildOptions {
        default_server_image: args.server_image,
        register_before_available: false,
    };
    eao::operator::controller::run(client, options, metrics, reporter, ready, stopped()).await;
    if let Some(e) = &elector {
        e.release().await;
    }
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = admin.await {
        return Err(format!("admin server failed: {e}").into());
    }
    tracing::info!("stopped");
    Ok(())
}
