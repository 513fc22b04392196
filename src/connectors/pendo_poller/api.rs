//! Reads from Pendo's REST API with the hygiene Pendo's unpublished limits call for: one
//! request at a time under a client-side rate limit, retries with jittered backoff on
//! 429/5xx/timeouts honouring `Retry-After`, and no fast retrying of a wrong key or region (that
//! needs an operator: the role goes not ready, names the setting, and tries again slowly).

use std::time::Duration;

use serde_json::Value;

use super::config::PendoPollerConfig;
use crate::config::PendoConfig;
use crate::http::outcome::Outcome;
use crate::http::rate_limit::TokenBucket;
use crate::http::retry::RetryPolicy;
use crate::metrics::metrics;
use crate::pendo_api::client::{PendoClient, PendoResponse, classify};

/// Why a read did not produce rows.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key is refused (401/403): retrying cannot help.
    #[error(
        "Pendo refused the integration key ({answer}): check pendo.integration_key (it needs \
         read access) and pendo.region (a key works only in its own region; base URL {base})"
    )]
    Unauthorized {
        /// The answer, without the key.
        answer: String,
        /// Where the request went.
        base: String,
    },
    /// Still failing after every attempt, or an answer that will not change by retrying.
    #[error("{endpoint}: {reason}")]
    Failed {
        /// Which read.
        endpoint: String,
        /// The last answer.
        reason: String,
    },
    /// Shutdown was requested while waiting.
    #[error("stopped")]
    Stopped,
}

/// One Pendo subscription, read politely.
pub struct PendoApi {
    client: PendoClient,
    bucket: TokenBucket,
    retry: RetryPolicy,
    max_attempts: u32,
}

impl PendoApi {
    /// A reader for `pendo` with `poller`'s limits.
    pub fn new(pendo: &PendoConfig, poller: &PendoPollerConfig) -> Result<Self, String> {
        Ok(Self {
            client: PendoClient::with_limits(
                pendo,
                Duration::from_millis(poller.request_timeout_ms),
                Duration::from_secs(poller.retry_after_cap_s),
            )?,
            bucket: TokenBucket::with_capacity(poller.requests_per_s, 1),
            retry: RetryPolicy {
                initial: Duration::from_millis(poller.backoff_initial_ms),
                max: Duration::from_millis(poller.backoff_max_ms),
            },
            max_attempts: poller.max_attempts,
        })
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        self.client.base()
    }

    /// `GET /api/v1/token/verify`; a refused key is [`ApiError::Unauthorized`].
    pub async fn verify_key(&self) -> Result<(), ApiError> {
        self.bucket.acquire(1).await;
        let r = self.client.verify_key().await;
        count("token_verify", &r);
        match classify(r.status) {
            Outcome::Success => Ok(()),
            Outcome::AuthFailure => Err(self.unauthorized(&r)),
            _ => Err(ApiError::Failed {
                endpoint: "token/verify".into(),
                reason: r.describe(),
            }),
        }
    }

    /// Runs an aggregation `pipeline` and returns its rows. `source` labels metrics.
    pub async fn aggregate(&self, source: &str, pipeline: Value) -> Result<Vec<Value>, ApiError> {
        let body = serde_json::json!({
            "response": {"mimeType": "application/json"},
            "request": {"pipeline": pipeline},
        });
        let body = serde_json::to_vec(&body).expect("JSON values serialise");
        let url = format!("{}/api/v1/aggregation", self.client.base());
        let endpoint = format!("aggregation:{source}");
        let answer = self
            .with_retries(&endpoint, || self.client.post(&url, body.clone()))
            .await?;
        let rows = parse_rows(&answer, true).map_err(|reason| ApiError::Failed {
            endpoint: endpoint.clone(),
            reason,
        })?;
        metrics()
            .pendo_api_rows
            .with_label_values(&[source])
            .inc_by(rows.len() as u64);
        Ok(rows)
    }

    /// `GET /api/v1/<kind>` (feature, page, guide, tracktype): the whole catalogue list.
    pub async fn catalog(&self, kind: &str) -> Result<Vec<Value>, ApiError> {
        let url = format!("{}/api/v1/{kind}", self.client.base());
        let endpoint = format!("catalog:{kind}");
        let answer = self
            .with_retries(&endpoint, || self.client.get(&url))
            .await?;
        let rows = parse_rows(&answer, false).map_err(|reason| ApiError::Failed {
            endpoint: endpoint.clone(),
            reason,
        })?;
        metrics()
            .pendo_api_rows
            .with_label_values(&[kind])
            .inc_by(rows.len() as u64);
        Ok(rows)
    }

    async fn with_retries<F, Fut>(&self, endpoint: &str, send: F) -> Result<Vec<u8>, ApiError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = PendoResponse>,
    {
        let mut retry = self.retry.start(None);
        loop {
            let attempt = retry.attempt().await;
            self.bucket.acquire(1).await;
            let r = send().await;
            count(endpoint, &r);
            match classify(r.status) {
                Outcome::Success => return Ok(r.body),
                Outcome::AuthFailure => return Err(self.unauthorized(&r)),
                Outcome::Retry if attempt < self.max_attempts => {
                    let wait = retry.after_failure(r.retry_after);
                    tracing::warn!(endpoint, answer = %r.describe(), attempt,
                        wait_ms = wait.delay.as_millis() as u64, "Pendo read failed; retrying");
                    wait.elapse().await;
                }
                _ => {
                    return Err(ApiError::Failed {
                        endpoint: endpoint.into(),
                        reason: format!("{} (attempt {attempt})", r.describe()),
                    });
                }
            }
        }
    }

    fn unauthorized(&self, r: &PendoResponse) -> ApiError {
        ApiError::Unauthorized {
            answer: r.describe(),
            base: self.client.base().to_string(),
        }
    }
}

fn count(endpoint: &str, r: &PendoResponse) {
    let status = crate::http::outcome::status_label(r.status);
    // The endpoint label is one of a fixed set (aggregation sources, catalogue kinds).
    metrics()
        .pendo_api_requests
        .with_label_values(&[endpoint, &status])
        .inc();
}

/// The rows of an answer: `{"results": [...]}` for aggregations, a bare array for catalogues.
fn parse_rows(body: &[u8], aggregation: bool) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the answer is not JSON ({e}; {} bytes, starts {:?})",
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(120)])
        )
    })?;
    let rows = if aggregation {
        match v {
            Value::Object(mut o) => o.remove("results"),
            _ => None,
        }
    } else {
        Some(v)
    };
    match rows {
        Some(Value::Array(rows)) => Ok(rows),
        Some(Value::Null) => Ok(Vec::new()),
        _ => Err("unexpected answer shape (expected a list of rows)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_defensively() {
        assert_eq!(
            parse_rows(br#"{"results":[{"a":1}]}"#, true).unwrap().len(),
            1
        );
        assert_eq!(parse_rows(br#"{"results":null}"#, true).unwrap().len(), 0);
        assert!(parse_rows(br#"{"rows":[]}"#, true).is_err());
        assert!(
            parse_rows(b"<html>", true)
                .unwrap_err()
                .contains("not JSON")
        );
        assert_eq!(parse_rows(br#"[{"id":"f"}]"#, false).unwrap().len(), 1);
    }
}
