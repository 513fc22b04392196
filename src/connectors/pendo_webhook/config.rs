//! `[pendo_webhook]`: where the endpoint listens, how senders authenticate, and its limits.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::connectors::webhook::limits::WebhookLimits;
use crate::secret::Secret;

/// Settings of the `pendo-webhook` role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PendoWebhookConfig {
    /// Address of the webhook listener. Use `0.0.0.0:8080` in containers.
    pub listen: SocketAddr,
    /// Path of the endpoint.
    pub path: String,
    /// Shared secrets; any of them is accepted (rotation). Required unless `--insecure-no-auth`;
    /// each at least [`crate::config::MIN_WEBHOOK_SECRET_BYTES`] long.
    pub secrets: Vec<Secret>,
    /// Header carrying the secret.
    pub auth_header: String,
    /// Scheme before the secret in that header; empty for the bare secret.
    pub auth_scheme: String,
    /// Also accept the secret as the last path segment (`<path>/<secret>`), for senders that
    /// cannot set headers. This puts the secret into the URL, and so into the access logs of
    /// every proxy, load balancer and ingress on the way (the role never logs it): prefer the
    /// header, and turn this off once senders use it.
    pub path_token: bool,
    /// Largest accepted body in bytes (413 beyond). At most
    /// [`crate::config::MAX_WEBHOOK_BODY_BYTES`]. Memory: up to `max_in_flight_requests` bodies of
    /// this size are held at once.
    pub max_body_bytes: usize,
    /// Most events in one request (413 beyond).
    pub max_events_per_request: usize,
    /// How long a request may wait for Kafka before it is answered 503, in ms.
    pub ack_timeout_ms: u64,
    /// Memory, connection and transaction bounds (the same keys in every webhook section).
    #[serde(flatten)]
    pub limits: WebhookLimits,
}

impl Default for PendoWebhookConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/webhooks/pendo".to_string(),
            secrets: Vec::new(),
            auth_header: "authorization".to_string(),
            auth_scheme: "Bearer".to_string(),
            path_token: true,
            max_body_bytes: 1024 * 1024,
            max_events_per_request: 10_000,
            ack_timeout_ms: 5_000,
            limits: WebhookLimits::default(),
        }
    }
}
