//! `[pendo_sink]`: batching and retry settings of the Pendo sink, and the metadata endpoint
//! resolved from `[pendo]` (region or explicit `base_url`).
//!
//! Pendo publishes no rate limits or batch limits for its bulk metadata endpoint, so the
//! defaults are modest (`docs/external-apis.md`, "Pendo REST API").

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schema::pendo_metadata_update::PendoEntity;

/// Section name used in validation messages.
const SECTION: &str = "pendo_sink";

/// Settings of the Pendo sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PendoSinkConfig {
    /// Most distinct visitors/accounts in one request (after coalescing).
    pub max_batch_entities: usize,
    /// Longest an update waits for its batch to fill before the batch is sent, in ms.
    pub linger_ms: u64,
    /// Deadline of one HTTP request, in ms; past it the attempt is retried.
    pub request_timeout_ms: u64,
    /// Requests to Pendo in flight at once (at most one per Kafka partition, so writes to the
    /// same visitor are never raced: Pendo answers 409 to concurrent writes).
    pub max_in_flight_requests: usize,
    /// First retry delay, in ms (doubled per attempt, jittered).
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in ms.
    pub backoff_max_ms: u64,
    /// Longest pause honoured from a `Retry-After` header, in seconds.
    pub retry_after_cap_s: u64,
    /// Send `?create=true`: Pendo creates visitors/accounts it does not know instead of
    /// reporting them missing (missing ones are dead-lettered when this is off).
    pub create: bool,
    /// Requests per second sent at most (Pendo publishes no limit; third parties report a
    /// leaky bucket answering 429); unset means no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_requests_per_s: Option<u32>,
    /// Pendo Segments: distinct visitors of one segment in a batch before it is sent (after
    /// coalescing, last write per visitor wins).
    pub segment_batch_visitors: usize,
    /// Pendo Segments: visitors per request at most (`POST /api/v1/segment/upload`,
    /// `PATCH /api/v1/segment/{id}/visitor`; Segment's own destination sends 1,000).
    pub segment_request_visitors: usize,
    /// Pendo Segments: longest a membership change waits for its batch to fill, in ms.
    /// Segment's own destination syncs every 2-3 hours; seconds keep Pendo fresh while a
    /// burst (an audience's first sync) still costs one request per 1,000 changes.
    pub segment_linger_ms: u64,
    /// Write each request (`{"method", "path", "body"}`) as one JSON line to this file instead
    /// of sending it to Pendo, answered as a full success: the reverse flow without a Pendo
    /// subscription (`[pendo]` still names a region and any key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_file: Option<std::path::PathBuf>,
}

impl Default for PendoSinkConfig {
    fn default() -> Self {
        Self {
            max_batch_entities: 500,
            linger_ms: 1_000,
            request_timeout_ms: 30_000,
            max_in_flight_requests: 2,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            retry_after_cap_s: 300,
            create: false,
            rate_limit_requests_per_s: None,
            segment_batch_visitors: 1_000,
            segment_request_visitors: 1_000,
            segment_linger_ms: 3_000,
            dry_run_file: None,
        }
    }
}

impl PendoSinkConfig {
    /// Checks the values serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let range = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{SECTION}.{key} must be between {min} and {max}, got {value}"
                ))
            }
        };
        range(
            "max_batch_entities",
            self.max_batch_entities as u64,
            1,
            10_000,
        )?;
        range("request_timeout_ms", self.request_timeout_ms, 100, 600_000)?;
        range(
            "max_in_flight_requests",
            self.max_in_flight_requests as u64,
            1,
            64,
        )?;
        range("backoff_max_ms", self.backoff_max_ms, 1, 3_600_000)?;
        range(
            "backoff_initial_ms",
            self.backoff_initial_ms,
            1,
            self.backoff_max_ms,
        )?;
        range("retry_after_cap_s", self.retry_after_cap_s, 1, 3_600)?;
        range(
            "segment_batch_visitors",
            self.segment_batch_visitors as u64,
            1,
            100_000,
        )?;
        range(
            "segment_request_visitors",
            self.segment_request_visitors as u64,
            1,
            10_000,
        )?;
        range("segment_linger_ms", self.segment_linger_ms, 0, 3_600_000)?;
        if self.rate_limit_requests_per_s == Some(0) {
            return Err(format!(
                "{SECTION}.rate_limit_requests_per_s must be at least 1 (leave it unset for no limit)"
            ));
        }
        Ok(())
    }

    /// [`Self::segment_linger_ms`] as a duration.
    pub fn segment_linger(&self) -> Duration {
        Duration::from_millis(self.segment_linger_ms)
    }

    /// [`Self::linger_ms`] as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

/// `POST` URL creating a Pendo Segment from a list of visitors.
pub fn segment_create_url(base: &str) -> String {
    format!("{base}/api/v1/segment/upload")
}

/// `PATCH` URL changing the visitors of Pendo Segment `id`.
pub fn segment_patch_url(base: &str, id: &str) -> String {
    let id: String = url_escape(id);
    format!("{base}/api/v1/segment/{id}/visitor")
}

/// `GET` URL listing Pendo Segments (used only to recover a segment created just before a crash).
pub fn segment_list_url(base: &str) -> String {
    format!("{base}/api/v1/segment")
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `POST` URL of the bulk metadata endpoint for `entity` and `group` (`custom` or `agent`).
pub fn metadata_url(base: &str, entity: PendoEntity, group: &str, create: bool) -> String {
    let kind = match entity {
        PendoEntity::Visitor => "visitor",
        PendoEntity::Account => "account",
    };
    let query = if create { "?create=true" } else { "" };
    format!("{base}/api/v1/metadata/{kind}/{group}/value{query}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PendoConfig, PendoRegion};
    use crate::pendo_api::base_url;
    use crate::secret::Secret;

    #[test]
    fn urls_follow_the_region_or_the_explicit_base() {
        let p = |region, base: Option<&str>| PendoConfig {
            region,
            base_url: base.map(str::to_string),
            integration_key: Secret::inline("k"),
        };
        assert_eq!(
            base_url(&p(PendoRegion::Eu, None)),
            "https://app.eu.pendo.io"
        );
        assert_eq!(
            base_url(&p(PendoRegion::Jpn, None)),
            "https://app.jpn.pendo.io"
        );
        assert_eq!(
            base_url(&p(PendoRegion::Us, Some("http://127.0.0.1:9/"))),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            metadata_url("http://h", PendoEntity::Account, "agent", true),
            "http://h/api/v1/metadata/account/agent/value?create=true"
        );
    }

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        PendoSinkConfig::default().validate().unwrap();
        let c = PendoSinkConfig {
            max_in_flight_requests: 0,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .contains("pendo_sink.max_in_flight_requests")
        );
        let c = PendoSinkConfig {
            rate_limit_requests_per_s: Some(0),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .contains("pendo_sink.rate_limit_requests_per_s")
        );
        let e = toml::from_str::<PendoSinkConfig>("max_batch = 1").unwrap_err();
        assert!(e.to_string().contains("max_batch"));
    }
}
