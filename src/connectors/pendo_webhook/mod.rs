//! Role `pendo-webhook`: receives Pendo's URL-webhook deliveries and stores each event, byte
//! for byte, on `pendo.raw.webhook`, keyed by visitor id (account id when there is no visitor).

pub mod config;
pub mod envelope;

use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderName;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::Config;
use crate::connectors::webhook::auth::SharedSecrets;
use crate::connectors::webhook::role::{self, WebhookRoleSpec};
use crate::connectors::webhook::server::WebhookAuth;
use crate::kafka::topics::TopicId;

/// The role's name.
pub const ROLE: &str = "pendo-webhook";

/// Builds the role. Refuses to start without a secret unless `insecure_no_auth`.
pub fn task(
    config: &Config,
    insecure_no_auth: bool,
) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let c = config.pendo_webhook.clone();
    let auth = if c.secrets.is_empty() {
        role::without_secret(
            ROLE,
            "pendo_webhook",
            "PENDO_WEBHOOK_SECRET",
            insecure_no_auth,
        )?
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
    Ok(role::task(
        config,
        WebhookRoleSpec {
            role: ROLE,
            section: "pendo_webhook",
            listen: c.listen,
            path: c.path,
            auth,
            max_body_bytes: c.max_body_bytes,
            max_events_per_request: c.max_events_per_request,
            // Pendo authenticates the whole request (a shared secret), so batches are fine.
            accept_batches: true,
            ack_timeout: Duration::from_millis(c.ack_timeout_ms),
            limits: c.limits,
            topic: TopicId::PendoRawWebhook,
            dlq_topic: TopicId::DlqPendoWebhook,
            identify: envelope::identify,
        },
    ))
}
