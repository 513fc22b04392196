//! Role `segment-webhook`: receives Segment webhook-destination deliveries (Classic: one event
//! per request; Actions: one event or a JSON array of them) and stores each event, byte for byte,
//! on `segment.raw.webhook`, keyed by user (see [`envelope`]), for the reverse flow.
//!
//! Senders are authenticated by `X-Signature`, the hex HMAC-SHA1 of the body with the
//! destination's shared secret (of the first element for an array body); everything else (limits,
//! dead-lettering of bad bodies, 2xx only after Kafka committed) is the shared webhook code.

pub mod config;
pub mod envelope;

use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderName;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::Config;
use crate::connectors::webhook::role::{self, WebhookRoleSpec};
use crate::connectors::webhook::server::WebhookAuth;
use crate::connectors::webhook::signature::SignatureSecrets;
use crate::kafka::topics::TopicId;

/// The role's name.
pub const ROLE: &str = "segment-webhook";

/// Builds the role. Refuses to start without a secret unless `insecure_no_auth`.
pub fn task(
    config: &Config,
    insecure_no_auth: bool,
) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let c = config.segment_webhook.clone();
    let auth = if c.secrets.is_empty() {
        role::without_secret(
            ROLE,
            "segment_webhook",
            "SEGMENT_WEBHOOK_SECRET",
            insecure_no_auth,
        )?
    } else {
        WebhookAuth::HmacSha1Signature {
            secrets: SignatureSecrets::new(&c.secrets),
            header: HeaderName::from_bytes(c.signature_header.as_bytes()).with_context(|| {
                format!(
                    "segment_webhook.signature_header {:?} is not a valid header name",
                    c.signature_header
                )
            })?,
        }
    };
    Ok(role::task(
        config,
        WebhookRoleSpec {
            role: ROLE,
            section: "segment_webhook",
            listen: c.listen,
            path: c.path,
            auth,
            max_body_bytes: c.max_body_bytes,
            max_events_per_request: c.max_events_per_request,
            accept_batches: c.accept_batches,
            ack_timeout: Duration::from_millis(c.ack_timeout_ms),
            limits: c.limits,
            topic: TopicId::SegmentRawWebhook,
            dlq_topic: TopicId::DlqSegmentWebhook,
            identify: envelope::identify,
        },
    ))
}
