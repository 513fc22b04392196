//! `[pendo_webhook]`: where the endpoint listens, how senders authenticate, and its limits.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::connectors::webhook::listener::HttpLimits;
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
    /// Largest accepted event in bytes, at most [`crate::config::MAX_RAW_RECORD_BYTES`] (each event
    /// is one record of the raw topic). A request holding a larger event is refused as a whole
    /// with 413 naming the event, and kept in the dead-letter topic.
    pub max_event_bytes: usize,
    /// Most events in one request (413 beyond).
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
    /// bounds what a stalled peer holds whatever it sends. Default 30 s: a 1 MiB body (the default limit) then needs 35 KB/s, far below any real sender.
    pub body_read_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request, in ms, before it is
    /// closed. Default 75 s: longer than the 60 s idle timeout of ingress-nginx's upstream
    /// keep-alive and of AWS load balancers, so such a proxy closes an idle connection first and
    /// never sends a request on one the role is closing.
    pub idle_timeout_ms: u64,
    /// Most connections open at once (each holds a file descriptor); one more is answered 503
    /// and closed at once, never queued. Default 2048.
    pub max_connections: usize,
    /// How long a request may wait for Kafka before it is answered 503, in ms.
    pub ack_timeout_ms: u64,
    /// `Retry-After` on 503, in seconds.
    pub retry_after_seconds: u64,
    /// How long a Kafka transaction collects concurrent requests before committing, in ms.
    pub linger_ms: u64,
    /// Transactional producers taking turns (one collects while another commits).
    pub transaction_producers: usize,
    /// Pause of a producer between its commit and its next transaction, in ms (lets the broker
    /// finish the commit markers; see `kafka/transactional_appender.rs`).
    pub transaction_cooldown_ms: u64,
    /// A transaction commits once it holds this many events...
    pub max_transaction_records: usize,
    /// ... or this many bytes.
    pub max_transaction_bytes: usize,
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
            max_event_bytes: crate::config::MAX_RAW_RECORD_BYTES,
            max_events_per_request: 10_000,
            max_in_flight_requests: 512,
            max_in_flight_bytes: 256 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 75_000,
            max_connections: 2048,
            ack_timeout_ms: 5_000,
            retry_after_seconds: 5,
            linger_ms: 3,
            transaction_producers: 2,
            transaction_cooldown_ms: 4,
            max_transaction_records: 20_000,
            max_transaction_bytes: 16 * 1024 * 1024,
        }
    }
}

impl PendoWebhookConfig {
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
