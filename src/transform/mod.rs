//! Transformers: consume raw source records and produce canonical Avro records, exactly once.
//!
//! `mapping` is the data-driven Pendo -> Segment mapping file; `lazy_json` reads an event only
//! as deep as the mapping does (the rest is copied through as text); `message_id` derives
//! deterministic ids; `tracking_plan` (with `json_schema`) checks calls against the
//! marketing team's tracking plan; `canonical_json` gives mappings and plans their
//! fingerprints; `mapping_diff` compares what two mappings make of one event (for
//! `mapping preview`); `received_at` reads the connectors' receive time from a record's
//! headers; `pendo_to_segment` applies the mapping to one event; `catalog` holds
//! the Pendo names it joins in (from `pendo.catalog`); `pendo`
//! is the role (the shared consumer loop in transactional mode, started by
//! `transactional_role`, which both transformer roles share).
//! The reverse flow: `segment_to_pendo` maps one Segment audience event to Pendo metadata
//! updates; `segment` is its role. Both write dead letters through
//! [`crate::kafka::dead_letter`].

pub mod canonical_json;
pub mod catalog;
pub mod json_path;
pub mod json_schema;
pub mod lazy_json;
pub mod mapping;
pub mod mapping_diff;
pub mod message_id;
pub mod pendo;
pub mod pendo_to_segment;
pub mod received_at;
pub mod segment;
pub mod segment_rules;
pub mod segment_to_pendo;
pub mod tracking_plan;
pub mod transactional_role;
