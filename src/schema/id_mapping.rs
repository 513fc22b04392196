//! `IdMapping`: one Pendo visitor id -> Segment user id, on the compacted topic
//! `idmap.visitor-to-user` (schema `schemas/id_mapping.avsc`). The record key is the visitor id;
//! a tombstone (null value) deletes the mapping.

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;

use super::segment_call::Fields;
use super::wire_format::{FramedSchema, WireFormat};

/// The shipped schema text.
pub const ID_MAPPING_AVSC: &str = include_str!("../../schemas/id_mapping.avsc");

/// A visitor -> user mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename = "IdMapping")]
pub struct IdMapping {
    /// Pendo visitor id (also the record key).
    #[serde(rename = "visitorId")]
    pub visitor_id: String,
    /// Segment user id.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Who published it (`cli`, `segment-webhook`, ...).
    pub source: String,
    /// When it was published (epoch ms).
    #[serde(rename = "updatedAt")]
    pub updated_at: i64,
}

/// Encodes and decodes `IdMapping` values.
pub struct IdMappingCodec {
    framed: FramedSchema,
}

impl IdMappingCodec {
    /// A codec writing `format`.
    pub fn new(format: WireFormat) -> Self {
        Self {
            framed: FramedSchema::parse_shipped(ID_MAPPING_AVSC, format),
        }
    }

    /// The framed Avro encoding of `m`.
    pub fn encode_to_vec(&self, m: &IdMapping) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(64);
        self.framed.write_header(&mut out);
        GenericDatumWriter::builder(self.framed.schema())
            .build()
            .map_err(|e| e.to_string())?
            .write_ser(&mut out, m)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Decodes one framed record value.
    pub fn decode(&self, value: &[u8]) -> Result<IdMapping, String> {
        let mut datum = self.framed.datum(value).map_err(|e| e.to_string())?;
        let v = apache_avro::reader::datum::GenericDatumReader::builder(self.framed.schema())
            .build()
            .map_err(|e| e.to_string())?
            .read_value(&mut datum)
            .map_err(|e| format!("not a valid IdMapping datum: {e}"))?;
        if !datum.is_empty() {
            return Err("trailing bytes after the IdMapping datum".into());
        }
        let mut f = Fields::new(v)?;
        Ok(IdMapping {
            visitor_id: f.string("visitorId")?,
            user_id: f.string("userId")?,
            source: f.string("source")?,
            updated_at: match f.take("updatedAt")? {
                Value::TimestampMillis(t) | Value::Long(t) => t,
                other => return Err(format!("updatedAt: unexpected {other:?}")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_bytes() {
        let codec = IdMappingCodec::new(WireFormat::SingleObject);
        let m = IdMapping {
            visitor_id: "vis-1".into(),
            user_id: "user-ü".into(),
            source: "cli".into(),
            updated_at: 1_764_330_000_000,
        };
        let bytes = codec.encode_to_vec(&m).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), m);
        assert!(codec.decode(b"vis-1,user-1").is_err());
    }
}
