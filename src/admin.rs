//! The admin server: `/livez`, `/readyz` (ready once the caches have synced and, with leader
//! election, this replica leads or is standing by) and `/metrics`.

use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// State shared with the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// Set once the controller's caches have synced.
    pub ready: Arc<AtomicBool>,
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(jiff::Timestamp::now().as_second()),
    )
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/healthz", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin routes until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
