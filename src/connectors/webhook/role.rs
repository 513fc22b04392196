//! Starting a webhook role: its group-commit producer, its endpoint and its HTTP listener, with
//! readiness and shutdown. `pendo-webhook` and `segment-webhook` both start through here, so they
//! share one durability and shutdown behaviour: a request is answered 2xx only after Kafka
//! committed its events, and at SIGTERM every accepted request is answered before the producer
//! commits what is open and stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;

use super::limits::WebhookLimits;
use super::server::{self, EventIdentity, WebhookAuth, WebhookEndpoint, WebhookMetrics};
use crate::app::{RoleEnv, RoleFuture};
use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::topics::TopicId;
use crate::kafka::transactional_appender::{AppenderSettings, TransactionalAppender};

/// Everything that differs between webhook roles, resolved from their configuration sections.
pub struct WebhookRoleSpec {
    /// Role name (metrics label, `source` header, `transactional.id`, readiness components).
    pub role: &'static str,
    /// The configuration section, named in error messages (`pendo_webhook`).
    pub section: &'static str,
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Route of the endpoint.
    pub path: String,
    /// How senders authenticate.
    pub auth: WebhookAuth,
    /// Largest accepted body (one request may carry many events).
    pub max_body_bytes: usize,
    /// Most events per request.
    pub max_events_per_request: usize,
    /// Whether a JSON array body (several events) is accepted; `false` refuses it with 400.
    pub accept_batches: bool,
    /// How long a request may wait for Kafka before it is answered 503.
    pub ack_timeout: Duration,
    /// Memory, connection and transaction bounds.
    pub limits: WebhookLimits,
    /// Topic of accepted events.
    pub topic: TopicId,
    /// Topic of rejected bodies.
    pub dlq_topic: TopicId,
    /// Reads key and kind of one event.
    pub identify: fn(&[u8]) -> EventIdentity,
}

/// The authentication of a role without a secret: refused (the configuration error names the
/// setting and the flag), or [`WebhookAuth::Disabled`] with `--insecure-no-auth`. An
/// unauthenticated endpoint that feeds Kafka must never be the silent default.
pub fn without_secret(
    role: &str,
    section: &str,
    env_example: &str,
    insecure_no_auth: bool,
) -> anyhow::Result<WebhookAuth> {
    if !insecure_no_auth {
        anyhow::bail!(
            "{role} has no secret: set {section}.secrets (e.g. [{{ env = \"{env_example}\" }}]) \
             or start with --insecure-no-auth to accept unauthenticated deliveries"
        );
    }
    Ok(WebhookAuth::Disabled)
}

/// Builds the role: the producer configuration now (so configuration errors stop the process
/// before anything starts), the appender and listener when the role runs.
pub fn task(
    config: &Config,
    spec: WebhookRoleSpec,
) -> impl FnOnce(RoleEnv) -> RoleFuture + Send + use<> {
    // Records are events (at most `max_event_bytes`) or dead-letter parts (at most
    // `MAX_DEAD_LETTER_PAYLOAD_BYTES`), never whole bodies: a body larger than a record is many
    // records in one transaction, so the producer's record limit does not grow with the body limit.
    let max_record_bytes = spec
        .limits
        .max_event_bytes
        .max(server::MAX_DEAD_LETTER_PAYLOAD_BYTES);
    let producer = client_config::transactional_producer(config, spec.role, max_record_bytes);
    // Reads back where an undecided commit's records went (never joins or commits a group).
    let reader = client_config::consumer(config, spec.role);
    let topic: Arc<str> = config.topic_name(spec.topic).into();
    let dlq_topic: Arc<str> = config.topic_name(spec.dlq_topic).into();
    move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            let role = spec.role;
            let limits = &spec.limits;
            if matches!(spec.auth, WebhookAuth::Disabled) {
                tracing::warn!("{role} accepts UNAUTHENTICATED deliveries (--insecure-no-auth)");
            }
            let appender = TransactionalAppender::start(
                producer,
                reader,
                AppenderSettings {
                    role,
                    linger: Duration::from_millis(limits.linger_ms),
                    max_records: limits.max_transaction_records,
                    max_bytes: limits.max_transaction_bytes,
                    queue_capacity: limits.max_in_flight_requests,
                    job_deadline: spec.ack_timeout,
                    txn_timeout: spec.ack_timeout,
                    producers: limits.transaction_producers,
                    cooldown: Duration::from_millis(limits.transaction_cooldown_ms),
                    // A commit the broker has not answered within the ack deadline is waited for
                    // as long again: senders wait a few seconds for an answer.
                    decision_wait: spec.ack_timeout,
                    // Senders retry for minutes at most; a few thousand events per undecided
                    // transaction, rarely more than one at a time.
                    undecided_retention: Duration::from_secs(15 * 60),
                    undecided_capacity: 1 << 20,
                },
                env.readiness.register(format!("{role}:kafka")),
            );
            let http_limits = limits.http();
            let endpoint = Arc::new(WebhookEndpoint {
                role,
                path: spec.path,
                auth: spec.auth,
                max_body_bytes: spec.max_body_bytes,
                max_event_bytes: limits.max_event_bytes,
                max_events: spec.max_events_per_request,
                accept_batches: spec.accept_batches,
                in_flight: Semaphore::new(limits.max_in_flight_requests),
                body_budget: Semaphore::new(limits.max_in_flight_bytes),
                body_read_timeout: http_limits.body_read_timeout,
                retry_after_seconds: limits.retry_after_seconds,
                topic,
                dlq_topic,
                identify: spec.identify,
                appender: appender.clone(),
                metrics: WebhookMetrics::new(role),
            });
            let http_ready = env.readiness.register(format!("{role}:http"));
            let (_, http) = server::serve(spec.listen, endpoint, http_limits, env.shutdown.clone())
                .await
                .with_context(|| {
                    format!("cannot listen on {}.listen {}", spec.section, spec.listen)
                })?;
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
    }
}
