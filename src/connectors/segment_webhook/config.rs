//! `[segment_webhook]`: where the endpoint listens, the secrets Segment signs with, and its limits.
//! The keys mirror `[pendo_webhook]` where they mean the same; authentication differs (Segment
//! signs the body instead of sending a secret), so there is no scheme or path token here.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::connectors::webhook::limits::WebhookLimits;
use crate::secret::Secret;

/// Settings of the `segment-webhook` role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentWebhookConfig {
    /// Address of the webhook listener (default port 8081, beside pendo-webhook's 8080, so
    /// `run --all` can run both). Use `0.0.0.0:8081` in containers.
    pub listen: SocketAddr,
    /// Path of the endpoint.
    pub path: String,
    /// Shared secrets of the Segment destination; a signature made with any of them is accepted
    /// (rotation). Required unless `--insecure-no-auth`; each at least
    /// [`crate::config::MIN_WEBHOOK_SECRET_BYTES`] long.
    pub secrets: Vec<Secret>,
    /// Header carrying the hex HMAC-SHA1 signature.
    pub signature_header: String,
    /// Whether a JSON array body (an Actions batch) is accepted. Segment's signature covers only
    /// the first element of a batch, so the other elements are not authenticated: whoever
    /// captured one signed delivery can append events to it. `false` refuses every array body
    /// with 400 (nothing stored, not even in the dead-letter topic, since its sender is not
    /// authenticated for it); use it when the destination sends one event per request. Default
    /// `true`, so batching destinations keep working.
    pub accept_batches: bool,
    /// Largest accepted body in bytes (413 beyond). Default 32 MiB, at most
    /// [`crate::config::MAX_WEBHOOK_BODY_BYTES`]: an Actions batch holds up to 4,000 events of up
    /// to 32 KB each, far more than one Kafka record, and each of its events is stored as a record
    /// of its own. Memory: up to `max_in_flight_requests` bodies of this size are held at once.
    pub max_body_bytes: usize,
    /// Most events in one request (413 beyond). Segment's Actions batches hold at most 4,000.
    pub max_events_per_request: usize,
    /// How long a request may wait for Kafka before it is answered 503, in ms. Below Segment's
    /// 5 s answer deadline, so Segment gets a 503 to retry on rather than a timeout.
    pub ack_timeout_ms: u64,
    /// Memory, connection and transaction bounds (the same keys in every webhook section).
    #[serde(flatten)]
    pub limits: WebhookLimits,
}

impl Default for SegmentWebhookConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            path: "/webhooks/segment".to_string(),
            secrets: Vec::new(),
            signature_header: "x-signature".to_string(),
            accept_batches: true,
            max_body_bytes: 32 * 1024 * 1024,
            max_events_per_request: 4_000,
            ack_timeout_ms: 4_000,
            limits: WebhookLimits::default(),
        }
    }
}
