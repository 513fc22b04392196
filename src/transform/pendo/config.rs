//! `[transform_pendo]`: the mapping file and the identity and size rules of the transformer.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::processor::Parallelism;
use crate::transform::message_id::MAX_PREFIX_LEN;
use crate::transform::pendo_to_segment::{
    DEFAULT_MAX_CALL_BYTES, MapperSettings, UnmappedVisitorPolicy,
};
use crate::transform::tracking_plan::TrackingPlanConfig;

/// Settings of the `transform-pendo` role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformPendoConfig {
    /// The mapping file; the shipped default (`deploy/mappings/pendo-to-segment.toml`) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping_file: Option<PathBuf>,
    /// Visitors with no Segment user id: `visitor_id_as_user_id`, `anonymous_id` or `dlq`.
    pub unmapped_visitor: UnmappedVisitorPolicy,
    /// Namespace of messageIds (`<prefix>-<hash>`), at most 60 characters. Changing it makes
    /// replayed events new to Segment.
    pub message_id_prefix: String,
    /// Visitor ids with this prefix are Pendo's anonymous visitors and always sent as
    /// anonymousId. Empty disables.
    pub anonymous_visitor_prefix: String,
    /// anonymousId of events that carry an account but no visitor: `<prefix><accountId>`.
    pub account_anonymous_id_prefix: String,
    /// Largest Segment call (as sent) in bytes; larger ones dead-letter their event. Segment's
    /// limit is 32 KB.
    pub max_call_bytes: usize,
    /// Records mapped together on one worker thread.
    pub batch_records: usize,
    /// Batches mapped at once (worker threads); 0 = one per CPU.
    pub mapping_threads: usize,
    /// The tracking plan every call is checked against, and what happens to calls that break
    /// it (`docs/tracking-plan.md`).
    pub tracking_plan: TrackingPlanConfig,
}

impl Default for TransformPendoConfig {
    fn default() -> Self {
        let d = MapperSettings::default();
        Self {
            mapping_file: None,
            unmapped_visitor: d.unmapped_visitor,
            message_id_prefix: d.message_id_prefix,
            anonymous_visitor_prefix: d.anonymous_visitor_prefix.unwrap_or_default(),
            account_anonymous_id_prefix: d.account_anonymous_id_prefix,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
            batch_records: 512,
            mapping_threads: 0,
            tracking_plan: TrackingPlanConfig::default(),
        }
    }
}

impl TransformPendoConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.message_id_prefix;
        if p.is_empty() || p.len() > MAX_PREFIX_LEN || !p.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "transform_pendo.message_id_prefix must be 1 to {MAX_PREFIX_LEN} printable ASCII characters, got {p:?}"
            ));
        }
        if self.max_call_bytes < 1024 || self.max_call_bytes > 32 * 1024 {
            return Err(format!(
                "transform_pendo.max_call_bytes must be between 1024 and 32768 (Segment's per-event limit), got {}",
                self.max_call_bytes
            ));
        }
        if self.batch_records == 0 || self.batch_records > 100_000 {
            return Err(format!(
                "transform_pendo.batch_records must be between 1 and 100000, got {}",
                self.batch_records
            ));
        }
        Ok(())
    }

    /// How mapping work is spread over threads.
    pub fn parallelism(&self) -> Parallelism {
        let default = Parallelism::default();
        Parallelism {
            batch_records: self.batch_records,
            batches_in_flight: if self.mapping_threads == 0 {
                default.batches_in_flight
            } else {
                self.mapping_threads
            },
        }
    }

    /// The mapper settings for calls from `source`.
    pub fn mapper_settings(&self, source: &str) -> MapperSettings {
        MapperSettings {
            message_id_prefix: self.message_id_prefix.clone(),
            unmapped_visitor: self.unmapped_visitor,
            anonymous_visitor_prefix: Some(self.anonymous_visitor_prefix.clone())
                .filter(|p| !p.is_empty()),
            account_anonymous_id_prefix: self.account_anonymous_id_prefix.clone(),
            max_call_bytes: self.max_call_bytes,
            source: source.to_string(),
        }
    }
}
