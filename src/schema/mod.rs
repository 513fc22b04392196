//! The Avro records on the canonical and id-mapping topics, and how they are framed.
//!
//! The schemas live in `schemas/*.avsc` (compiled in); `schemas/README.md` holds the encoding and
//! the evolution rules. One file per record type, plus the framing (`wire_format`).

pub mod avro_binary;
pub mod id_mapping;
pub mod pendo_metadata_update;
pub mod pendo_segment_change;
pub mod segment_call;
pub mod wire_format;

pub use id_mapping::{IdMapping, IdMappingCodec};
pub use pendo_metadata_update::{PendoMetadataUpdate, PendoMetadataUpdateCodec};
pub use pendo_segment_change::{PendoSegmentChange, PendoSegmentChangeCodec};
pub use segment_call::{CallBody, CallContext, Origin, PageContext, SegmentCall, SegmentCallCodec};
pub use wire_format::{FrameError, FramedSchema, WireFormat};
