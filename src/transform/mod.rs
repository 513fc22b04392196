//! Transformers: consume raw source records and produce canonical Avro records, exactly once.
//!
//! `mapping` is the data-driven Pendo -> Segment mapping file; `pendo_event` reads the Pendo
//! envelope; `message_id` derives deterministic ids; `pendo_to_segment` applies the mapping to one
//! event; `transform_pendo` is the role (the shared consumer loop in transactional mode).

pub mod json_path;
pub mod mapping;
pub mod message_id;
pub mod pendo_to_segment;
pub mod transform_pendo;
