//! The operations HTTP server every process runs: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (every component is ready).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::health::Readiness;
use crate::metrics::metrics;
use crate::shutdown::Shutdown;

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let (ready, components) = readiness.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "components": components })),
    )
}

/// The router, separate from binding so tests can serve it anywhere.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Binds `listen` and serves until `shutdown` fires. Returns the bound address (port 0 = any).
pub async fn serve(
    listen: SocketAddr,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "ops server listening (/metrics, /healthz, /readyz)");
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router(readiness))
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "ops server stopped");
        }
    });
    Ok((addr, task))
}
