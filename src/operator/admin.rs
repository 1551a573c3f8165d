//! The admin server: `/livez`, `/readyz` (ready once the caches have synced and, with leader
//! election, this replica leads or is standing by) and `/metrics`.

use crate::operator::metrics::Metrics;
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(state: &AdminState, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let resp = router(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ready_only_after_sync_and_metrics_exposed() {
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::default()),
        };
        assert_eq!(get(&state, "/livez").await.0, StatusCode::OK);
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::SeqCst);
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);
        let (code, body) = get(&state, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("eao_reconciles_total"), "{body}");
        assert!(body.ends_with("# EOF\n"));
    }
}
