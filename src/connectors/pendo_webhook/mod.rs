//! Role `pendo-webhook`: receives Pendo's URL-webhook deliveries and stores each event, byte
//! for byte, on `pendo.raw.webhook`, keyed by visitor id (account id when there is no visitor).

pub mod config;
pub mod envelope;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderName;
use tokio::sync::Semaphore;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::Config;
use crate::connectors::webhook::auth::SharedSecrets;
use crate::connectors::webhook::server::{self, WebhookAuth, WebhookEndpoint, WebhookMetrics};
use crate::kafka::client_config;
use crate::kafka::topics::TopicId;
use crate::kafka::transactional_appender::{AppenderSettings, TransactionalAppender};

/// The role's name.
pub const ROLE: &str = "pendo-webhook";

/// Builds the role. Refuses to start without a secret unless `insecure_no_auth`.
pub fn task(
    config: &Config,
    insecure_no_auth: bool,
) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let c = config.pendo_webhook.clone();
    let auth = if c.secrets.is_empty() {
        if !insecure_no_auth {
            anyhow::bail!(
                "pendo-webhook has no secret: set pendo_webhook.secrets (e.g. [{{ env = \"PENDO_WEBHOOK_SECRET\" }}]) \
                 or start with --insecure-no-auth to accept unauthenticated deliveries"
            );
        }
        WebhookAuth::Disabled
    } else {
        WebhookAuth::SharedSecret {
            secrets: SharedSecrets::new(c.secrets.clone()),
            header: HeaderName::from_bytes(c.auth_header.as_bytes()).with_context(|| {
                format!(
                    "pendo_webhook.auth_header {:?} is not a valid header name",
                    c.auth_header
                )
            })?,
            scheme: c.auth_scheme.clone(),
            path_token: c.path_token,
        }
    };
    let producer = client_config::transactional_producer(config, ROLE, c.max_body_bytes);
    let topic: Arc<str> = config.topic_name(TopicId::PendoRawWebhook).into();
    let dlq_topic: Arc<str> = config.topic_name(TopicId::DlqPendoWebhook).into();
    Ok(move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            if matches!(auth, WebhookAuth::Disabled) {
                tracing::warn!(
                    "pendo-webhook accepts UNAUTHENTICATED deliveries (--insecure-no-auth)"
                );
            }
            let appender = TransactionalAppender::start(
                producer,
                AppenderSettings {
                    stage: ROLE,
                    linger: Duration::from_millis(c.linger_ms),
                    max_records: c.max_transaction_records,
                    max_bytes: c.max_transaction_bytes,
                    queue_capacity: c.max_in_flight_requests,
                    job_deadline: Duration::from_millis(c.ack_timeout_ms),
                    txn_timeout: Duration::from_millis(c.ack_timeout_ms),
                    producers: c.transaction_producers,
                    cooldown: Duration::from_millis(c.transaction_cooldown_ms),
                },
                env.readiness.register("pendo-webhook:kafka"),
            );
            let endpoint = Arc::new(WebhookEndpoint {
                role: ROLE,
                path: c.path.clone(),
                auth,
                max_body_bytes: c.max_body_bytes,
                max_events: c.max_events_per_request,
                in_flight: Semaphore::new(c.max_in_flight_requests),
                retry_after_seconds: c.retry_after_seconds,
                topic,
                dlq_topic,
                identify: envelope::identify,
                appender: appender.clone(),
                metrics: WebhookMetrics::new(ROLE),
            });
            let http_ready = env.readiness.register("pendo-webhook:http");
            let (_, http) = server::serve(c.listen, endpoint, env.shutdown.clone())
                .await
                .with_context(|| format!("cannot listen on pendo_webhook.listen {}", c.listen))?;
            http_ready.set_ready(true);
            let served = http.await;
            http_ready.set_ready(false);
            // Every request has been answered; commit what is open and stop the producer.
            appender.close().await;
            served
                .context("webhook server task")?
                .context("webhook server")?;
            Ok(())
        })
    })
}
