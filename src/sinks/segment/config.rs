//! `[segment_sink]`: batching, retry, rate-limit and timeout settings of the Segment sink.
//!
//! Where and with which key to send is [`SegmentConfig`] (`[segment]`), shared with other roles.
//! The defaults follow Segment's documented limits with the official clients' headroom
//! (`docs/external-apis.md`, "Segment HTTP Tracking API").

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::batch::ENVELOPE_BYTES;
use crate::config::{SegmentConfig, SegmentRegion};

/// Section name used in validation messages.
const SECTION: &str = "segment_sink";

/// Base URL of Segment's US region.
pub const US_BASE_URL: &str = "https://api.segment.io";
/// Base URL of Segment's EU region.
pub const EU_BASE_URL: &str = "https://events.eu1.segmentapis.com";
/// Path of the batch endpoint.
pub const BATCH_PATH: &str = "/v1/batch";

/// Segment drops (with a 200) every event past this one in a batch.
pub const SEGMENT_MAX_BATCH_EVENTS: usize = 2_500;
/// Segment refuses (400) request bodies over 500 KB.
pub const SEGMENT_MAX_BATCH_BYTES: usize = 500_000;
/// Segment refuses (400) events over 32 KB.
pub const SEGMENT_MAX_EVENT_BYTES: usize = 32 * 1024;

/// Settings of the Segment sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentSinkConfig {
    /// Most events in one request (1 to 2,500): Segment silently drops events past 2,500.
    pub max_batch_events: usize,
    /// Most bytes in one request body, envelope and `sentAt` included, measured uncompressed
    /// (at most 500,000). The default keeps the Python client's headroom under Segment's 500 KB.
    pub max_batch_bytes: usize,
    /// Largest event as sent (with `context.library`), at most 32,768; larger events are
    /// dead-lettered, never sent. The default leaves room for Segment measuring differently.
    pub max_event_bytes: usize,
    /// Longest an event waits for its batch to fill before the batch is sent, in ms.
    pub linger_ms: u64,
    /// Compress request bodies (`Content-Encoding: gzip`): less egress, a little CPU.
    pub gzip: bool,
    /// Deadline of one HTTP request (connect to last response byte), in ms; past it the attempt
    /// counts as a network error and is retried.
    pub request_timeout_ms: u64,
    /// Requests to Segment in flight at once.
    pub max_in_flight_requests: usize,
    /// First retry delay, in ms (doubled per attempt, jittered).
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in ms.
    pub backoff_max_ms: u64,
    /// Longest pause honoured from a `Retry-After` header, in seconds (the official clients
    /// cap it at 300).
    pub retry_after_cap_s: u64,
    /// Events per second sent at most (Segment's workspace limit is about 1,000); unset means
    /// no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_events_per_s: Option<u32>,
    /// Requests per second sent at most; unset means no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_requests_per_s: Option<u32>,
    /// When set, request bodies are appended to this file as JSON lines instead of being sent
    /// (for trying the pipeline without a Segment workspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_file: Option<PathBuf>,
}

impl Default for SegmentSinkConfig {
    fn default() -> Self {
        Self {
            max_batch_events: SEGMENT_MAX_BATCH_EVENTS,
            max_batch_bytes: 475_000,
            max_event_bytes: 32_000,
            linger_ms: 500,
            gzip: false,
            request_timeout_ms: 10_000,
            max_in_flight_requests: 4,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            retry_after_cap_s: 300,
            rate_limit_events_per_s: None,
            rate_limit_requests_per_s: None,
            dry_run_file: None,
        }
    }
}

impl SegmentSinkConfig {
    /// Checks the values serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let range = |key: &str, value: u64, min: u64, max: u64, why: &str| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{SECTION}.{key} must be between {min} and {max}{why}, got {value}"
                ))
            }
        };
        range(
            "max_batch_events",
            self.max_batch_events as u64,
            1,
            SEGMENT_MAX_BATCH_EVENTS as u64,
            " (Segment silently drops events past 2,500 per batch)",
        )?;
        range(
            "max_event_bytes",
            self.max_event_bytes as u64,
            1024,
            SEGMENT_MAX_EVENT_BYTES as u64,
            " (Segment's per-event limit is 32 KB)",
        )?;
        range(
            "max_batch_bytes",
            self.max_batch_bytes as u64,
            (self.max_event_bytes + ENVELOPE_BYTES) as u64,
            SEGMENT_MAX_BATCH_BYTES as u64,
            " (the largest event plus the envelope must fit; Segment's limit is 500 KB)",
        )?;
        range(
            "request_timeout_ms",
            self.request_timeout_ms,
            100,
            600_000,
            "",
        )?;
        range(
            "max_in_flight_requests",
            self.max_in_flight_requests as u64,
            1,
            64,
            "",
        )?;
        range("backoff_max_ms", self.backoff_max_ms, 1, 3_600_000, "")?;
        range(
            "backoff_initial_ms",
            self.backoff_initial_ms,
            1,
            self.backoff_max_ms,
            " (at most backoff_max_ms)",
        )?;
        range("retry_after_cap_s", self.retry_after_cap_s, 1, 3_600, "")?;
        for (key, value) in [
            ("rate_limit_events_per_s", self.rate_limit_events_per_s),
            ("rate_limit_requests_per_s", self.rate_limit_requests_per_s),
        ] {
            if value == Some(0) {
                return Err(format!(
                    "{SECTION}.{key} must be at least 1 (leave it unset for no limit)"
                ));
            }
        }
        Ok(())
    }

    /// [`Self::linger_ms`] as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`Self::retry_after_cap_s`] as a duration.
    pub fn retry_after_cap(&self) -> Duration {
        Duration::from_secs(self.retry_after_cap_s)
    }
}

/// The full `/v1/batch` URL for `segment`: the explicit `endpoint` when set (a base URL; one
/// that already ends in `/v1/batch` is kept as is), else the region's base URL. Trailing slashes
/// are ignored.
pub fn endpoint(segment: &SegmentConfig) -> String {
    let base = match (&segment.endpoint, segment.region) {
        (Some(e), _) => e.trim().trim_end_matches('/'),
        (None, SegmentRegion::Us) => US_BASE_URL,
        (None, SegmentRegion::Eu) => EU_BASE_URL,
    };
    if base.ends_with(BATCH_PATH) {
        base.to_string()
    } else {
        format!("{base}{BATCH_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn segment(region: SegmentRegion, endpoint: Option<&str>) -> SegmentConfig {
        SegmentConfig {
            region,
            endpoint: endpoint.map(str::to_string),
            write_key: Secret::inline("k"),
        }
    }

    #[test]
    fn endpoint_resolves_region_and_explicit_urls() {
        assert_eq!(
            endpoint(&segment(SegmentRegion::Us, None)),
            "https://api.segment.io/v1/batch"
        );
        assert_eq!(
            endpoint(&segment(SegmentRegion::Eu, None)),
            "https://events.eu1.segmentapis.com/v1/batch"
        );
        for e in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080//",
            "http://127.0.0.1:8080/v1/batch",
            "http://127.0.0.1:8080/v1/batch/",
        ] {
            assert_eq!(
                endpoint(&segment(SegmentRegion::Eu, Some(e))),
                "http://127.0.0.1:8080/v1/batch",
                "{e}"
            );
        }
        assert_eq!(
            endpoint(&segment(
                SegmentRegion::Us,
                Some("https://proxy.example/segment/")
            )),
            "https://proxy.example/segment/v1/batch"
        );
    }

    #[test]
    fn defaults_are_valid_and_follow_segment_limits() {
        let c = SegmentSinkConfig::default();
        c.validate().unwrap();
        assert_eq!(c.max_batch_events, 2_500);
        assert_eq!(c.max_batch_bytes, 475_000);
        assert_eq!(c.max_event_bytes, 32_000);
        assert_eq!(c.backoff_initial_ms, 500);
        assert_eq!(c.backoff_max_ms, 60_000);
        assert_eq!(c.retry_after_cap(), Duration::from_secs(300));
        assert!(!c.gzip && c.dry_run_file.is_none());
    }

    #[test]
    fn validation_names_the_key() {
        type Breaks = fn(&mut SegmentSinkConfig);
        let bad: [(&str, Breaks); 9] = [
            ("max_batch_events", |c| c.max_batch_events = 2_501),
            ("max_batch_events", |c| c.max_batch_events = 0),
            ("max_batch_bytes", |c| c.max_batch_bytes = 500_001),
            ("max_batch_bytes", |c| c.max_batch_bytes = 32_000),
            ("max_event_bytes", |c| c.max_event_bytes = 32_769),
            ("backoff_initial_ms", |c| c.backoff_initial_ms = 70_000),
            ("max_in_flight_requests", |c| c.max_in_flight_requests = 0),
            ("rate_limit_events_per_s", |c| {
                c.rate_limit_events_per_s = Some(0)
            }),
            ("request_timeout_ms", |c| c.request_timeout_ms = 0),
        ];
        for (key, breaks) in bad {
            let mut c = SegmentSinkConfig::default();
            breaks(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(&format!("segment_sink.{key} ")), "{key}: {e}");
        }
        let edge = SegmentSinkConfig {
            max_batch_events: 2_500,
            max_batch_bytes: 500_000,
            max_event_bytes: 32_768,
            ..SegmentSinkConfig::default()
        };
        edge.validate().unwrap();
    }

    #[test]
    fn toml_is_strict_and_partial_sections_take_defaults() {
        let c: SegmentSinkConfig = toml::from_str("gzip = true\nlinger_ms = 50").unwrap();
        assert!(c.gzip);
        assert_eq!(c.linger(), Duration::from_millis(50));
        assert_eq!(c.max_batch_events, 2_500);
        let e = toml::from_str::<SegmentSinkConfig>("max_batch_event = 10").unwrap_err();
        assert!(e.to_string().contains("max_batch_event"), "{e}");
    }
}
