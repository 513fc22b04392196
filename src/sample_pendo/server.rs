//! The sample API's routes (axum), over [`SampleData`] behind a lock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::data::SampleData;
use super::pipeline;
use crate::kafka::headers::now_millis;

type Shared = Arc<Mutex<SampleData>>;

/// Serves the sample API on `listen` until `shutdown` resolves; one visitor changes every
/// `change_every` (none: the data stays as generated).
pub async fn serve(
    listen: SocketAddr,
    change_every: Option<Duration>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data: Shared = Arc::new(Mutex::new(SampleData::generate(now_millis())));
    if let Some(every) = change_every {
        let data = data.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let id = data.lock().expect("sample data").change(now_millis());
                tracing::info!(visitor = %id, "sample Pendo data: a visitor moved on");
            }
        });
    }
    let app = Router::new()
        .route("/api/v1/token/verify", get(verify))
        .route("/api/v1/aggregation", post(aggregation))
        .route("/api/v1/{kind}", get(catalog))
        .with_state(data);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(listen = %listener.local_addr()?, "sample Pendo API serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Any non-empty key is accepted (the sample has no accounts); none is refused as Pendo does.
fn refused(headers: &HeaderMap) -> Option<Response> {
    match headers.get(crate::pendo_api::client::KEY_HEADER) {
        Some(k) if !k.is_empty() => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                "missing x-pendo-integration-key".to_string(),
            )
                .into_response(),
        ),
    }
}

async fn verify(headers: HeaderMap) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    axum::Json(json!({"valid": true})).into_response()
}

async fn aggregation(State(data): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")).into_response();
        }
    };
    let result = pipeline::run(&data.lock().expect("sample data"), &body);
    match result {
        Ok(rows) => axum::Json(json!({"results": rows})).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn catalog(
    State(data): State<Shared>,
    headers: HeaderMap,
    Path(kind): Path<String>,
) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    match data.lock().expect("sample data").catalog(&kind) {
        Some(items) => axum::Json(Value::Array(items.to_vec())).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no catalogue {kind}")).into_response(),
    }
}
