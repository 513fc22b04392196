//! The limits and the Kafka cadence every webhook section shares, written once and flattened into
//! `[pendo_webhook]` and `[segment_webhook]` (the keys sit directly in each section). Only the
//! limits whose right value follows the sender (largest body, events per request, the answer
//! deadline) stay in each section, with their own defaults and reasons.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::listener::HttpLimits;

/// Memory, connection and transaction bounds of one webhook role. Flattened into its section, so
/// an unknown key there is still refused by the section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct WebhookLimits {
    /// Largest accepted event in bytes, at most [`crate::config::MAX_RAW_RECORD_BYTES`] (each event
    /// is one record of the raw topic). A request holding a larger event is refused as a whole
    /// with 413 naming the event, and kept in the dead-letter topic.
    pub max_event_bytes: usize,
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
    /// bounds what a stalled peer holds whatever it sends. Default 30 s: a body of pendo-webhook's
    /// default limit (1 MiB) then needs 35 KB/s, one of segment-webhook's (32 MiB) 1.1 MB/s; Segment
    /// sends from its data centres and gives up on an answer after 5 s anyway.
    pub body_read_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request, in ms, before it is
    /// closed. Default 75 s: longer than the 60 s idle timeout of ingress-nginx's upstream
    /// keep-alive and of AWS load balancers, so such a proxy closes an idle connection first and
    /// never sends a request on one the role is closing.
    pub idle_timeout_ms: u64,
    /// Most connections open at once (each holds a file descriptor); one more is answered 503
    /// and closed at once, never queued. Default 2048.
    pub max_connections: usize,
    /// `Retry-After` on 503, in seconds.
    pub retry_after_seconds: u64,
    /// How long a Kafka transaction collects concurrent requests before committing, in ms.
    pub linger_ms: u64,
    /// Transactional producers taking turns (one collects while another commits).
    pub transaction_producers: usize,
    /// Pause of a producer between its commit and its next transaction, in ms (lets the broker
    /// finish the commit markers; see `kafka/transactional_appender.rs`). It also sets how many
    /// transactions a busy webhook asks of the broker: 15 ms (was 4) cut them enough that the
    /// whole forward path on one 2-core machine went from ~10,000 to ~12,300 events/s, while
    /// the webhook alone stayed within its targets (24,000 events/s, p99 24 ms).
    pub transaction_cooldown_ms: u64,
    /// A transaction commits once it holds this many events...
    pub max_transaction_records: usize,
    /// ... or this many bytes.
    pub max_transaction_bytes: usize,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: crate::config::MAX_RAW_RECORD_BYTES,
            max_in_flight_requests: 512,
            max_in_flight_bytes: 256 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 75_000,
            max_connections: 2048,
            retry_after_seconds: 5,
            linger_ms: 3,
            transaction_producers: 2,
            transaction_cooldown_ms: 15,
            max_transaction_records: 20_000,
            max_transaction_bytes: 16 * 1024 * 1024,
        }
    }
}

impl WebhookLimits {
    /// The listener's connection limits from these settings.
    pub fn http(&self) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}
