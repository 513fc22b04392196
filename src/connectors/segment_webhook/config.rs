//! `[segment_webhook]`: where the endpoint listens, the secrets Segment signs with, and its limits.
//! The keys mirror `[pendo_webhook]` where they mean the same; authentication differs (Segment
//! signs the body instead of sending a secret), so there is no scheme or path token here.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::connectors::webhook::listener::HttpLimits;
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
    /// Largest accepted event in bytes, at most [`crate::config::MAX_RAW_RECORD_BYTES`] (each event
    /// is one record of the raw topic). A request holding a larger event is refused as a whole
    /// with 413 naming the event, and kept in the dead-letter topic.
    pub max_event_bytes: usize,
    /// Most events in one request (413 beyond). Segment's Actions batches hold at most 4,000.
    pub max_events_per_request: usize,
    /// Requests handled (and waiting for Kafka) at once; more get 503 at once.
    pub max_in_flight_requests: usize,
    /// Bytes of request bodies held at once, the memory bound of this role's requests (default
    /// 256 MiB, at least `max_body_bytes`): a request that would exceed it gets 503 with
    /// `Retry-After` before its body is read.
    pub max_in_flight_bytes: usize,
    /// Longest time to receive a request's head (request line and headers), in ms, counted from
    /// the connection's accept, or from the first byte of a further request on a kept-alive
    /// connection; the connection is closed then. Default 10 s.
    pub header_read_timeout_ms: u64,
    /// Longest time to receive a whole request body once its headers are in, in ms: answered 408
    /// and the connection closed then, so a stalled sender holds its received bytes of
    /// `max_in_flight_bytes` no longer. One deadline for the whole body (not a minimum rate): it
    /// bounds what a stalled peer holds whatever it sends. Default 30 s: a 32 MiB Actions batch (the default limit) then needs 1.1 MB/s; Segment sends from its data centres and gives up on an answer after 5 s anyway.
    pub body_read_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request, in ms, before it is
    /// closed. Default 75 s: longer than the 60 s idle timeout of ingress-nginx's upstream
    /// keep-alive and of AWS load balancers, so such a proxy closes an idle connection first and
    /// never sends a request on one the role is closing.
    pub idle_timeout_ms: u64,
    /// Most connections open at once (each holds a file descriptor); one more is answered 503
    /// and closed at once, never queued. Default 2048.
    pub max_connections: usize,
    /// How long a request may wait for Kafka before it is answered 503, in ms. Below Segment's
    /// 5 s answer deadline, so Segment gets a 503 to retry on rather than a timeout.
    pub ack_timeout_ms: u64,
    /// `Retry-After` on 503, in seconds.
    pub retry_after_seconds: u64,
    /// How long a Kafka transaction collects concurrent requests before committing, in ms.
    pub linger_ms: u64,
    /// Transactional producers taking turns (one collects while another commits).
    pub transaction_producers: usize,
    /// Pause of a producer between its commit and its next transaction, in ms.
    pub transaction_cooldown_ms: u64,
    /// A transaction commits once it holds this many events...
    pub max_transaction_records: usize,
    /// ... or this many bytes.
    pub max_transaction_bytes: usize,
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
            max_event_bytes: crate::config::MAX_RAW_RECORD_BYTES,
            max_events_per_request: 4_000,
            max_in_flight_requests: 512,
            max_in_flight_bytes: 256 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 75_000,
            max_connections: 2048,
            ack_timeout_ms: 4_000,
            retry_after_seconds: 5,
            linger_ms: 3,
            transaction_producers: 2,
            transaction_cooldown_ms: 4,
            max_transaction_records: 20_000,
            max_transaction_bytes: 16 * 1024 * 1024,
        }
    }
}

impl SegmentWebhookConfig {
    /// The listener's connection limits from these settings.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits::from_settings(
            self.header_read_timeout_ms,
            self.body_read_timeout_ms,
            self.idle_timeout_ms,
            self.max_connections,
        )
    }
}
