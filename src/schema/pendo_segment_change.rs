//! `PendoSegmentChange`: add a visitor to, or remove it from, the Pendo Segment that mirrors one
//! Segment audience, on `canonical.pendo-segment-changes` (schema
//! `schemas/pendo_segment_change.avsc`), keyed by the audience key. Written by the reverse-flow
//! transformer for audiences whose target is a Pendo Segment, read by the Pendo sink. Low volume,
//! so like `PendoMetadataUpdate` it goes through Avro `Value`s.

use apache_avro::types::Value;

use super::segment_call::Fields;
use super::wire_format::{FramedSchema, WireFormat};

/// The shipped schema text.
pub const PENDO_SEGMENT_CHANGE_AVSC: &str = include_str!("../../schemas/pendo_segment_change.avsc");

/// Where a change came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentChangeOrigin {
    /// `segment.webhook`, ...
    pub source: String,
    /// The Segment messageId of the source event.
    pub segment_message_id: Option<String>,
    /// When the connector received the source event (epoch ms).
    pub received_at: Option<i64>,
}

/// One membership change of one visitor in one audience's Pendo Segment.
#[derive(Debug, Clone, PartialEq)]
pub struct PendoSegmentChange {
    /// Deterministic id derived from the source event.
    pub change_id: String,
    /// The Segment audience key (the record key).
    pub audience_key: String,
    /// Name of the Pendo Segment (used on creation).
    pub segment_name: String,
    /// The Pendo visitor id.
    pub visitor_id: String,
    /// `true`: add; `false`: remove.
    pub member: bool,
    /// Source event time, ISO-8601 UTC.
    pub timestamp: String,
    /// Provenance.
    pub origin: SegmentChangeOrigin,
}

/// Encodes and decodes `PendoSegmentChange` values.
pub struct PendoSegmentChangeCodec {
    framed: FramedSchema,
}

impl PendoSegmentChangeCodec {
    /// A codec writing `format`.
    pub fn new(format: WireFormat) -> Self {
        Self {
            framed: FramedSchema::parse_shipped(PENDO_SEGMENT_CHANGE_AVSC, format),
        }
    }

    /// The framed Avro encoding of `c`.
    pub fn encode_to_vec(&self, c: &PendoSegmentChange) -> Result<Vec<u8>, String> {
        let o = &c.origin;
        let value = Value::Record(vec![
            ("changeId".into(), Value::String(c.change_id.clone())),
            ("audienceKey".into(), Value::String(c.audience_key.clone())),
            ("segmentName".into(), Value::String(c.segment_name.clone())),
            ("visitorId".into(), Value::String(c.visitor_id.clone())),
            ("member".into(), Value::Boolean(c.member)),
            ("timestamp".into(), Value::String(c.timestamp.clone())),
            (
                "origin".into(),
                Value::Record(vec![
                    ("source".into(), Value::String(o.source.clone())),
                    (
                        "segmentMessageId".into(),
                        match &o.segment_message_id {
                            None => Value::Union(0, Box::new(Value::Null)),
                            Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
                        },
                    ),
                    (
                        "receivedAt".into(),
                        match o.received_at {
                            None => Value::Union(0, Box::new(Value::Null)),
                            Some(t) => Value::Union(1, Box::new(Value::TimestampMillis(t))),
                        },
                    ),
                ]),
            ),
        ]);
        let mut out = Vec::with_capacity(128);
        self.framed.write_header(&mut out);
        apache_avro::writer::datum::GenericDatumWriter::builder(self.framed.schema())
            .build()
            .map_err(|e| e.to_string())?
            .write_value(&mut out, value)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Decodes one framed record value.
    pub fn decode(&self, value: &[u8]) -> Result<PendoSegmentChange, String> {
        let mut datum = self.framed.datum(value).map_err(|e| e.to_string())?;
        let v = apache_avro::reader::datum::GenericDatumReader::builder(self.framed.schema())
            .build()
            .map_err(|e| e.to_string())?
            .read_value(&mut datum)
            .map_err(|e| format!("not a valid PendoSegmentChange datum: {e}"))?;
        let mut f = Fields::new(v)?;
        let change_id = f.string("changeId")?;
        let audience_key = f.string("audienceKey")?;
        let segment_name = f.string("segmentName")?;
        let visitor_id = f.string("visitorId")?;
        let member = match f.take("member")? {
            Value::Boolean(b) => b,
            other => return Err(format!("member: unexpected {other:?}")),
        };
        let timestamp = f.string("timestamp")?;
        let mut o = Fields::new(f.take("origin")?)?;
        let origin = SegmentChangeOrigin {
            source: o.string("source")?,
            segment_message_id: o.opt_string("segmentMessageId")?,
            received_at: match o.take_opt("receivedAt")? {
                None => None,
                Some(Value::TimestampMillis(t)) | Some(Value::Long(t)) => Some(t),
                Some(other) => return Err(format!("receivedAt: unexpected {other:?}")),
            },
        };
        Ok(PendoSegmentChange {
            change_id,
            audience_key,
            segment_name,
            visitor_id,
            member,
            timestamp,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_one_schemas_readme_and_fastavro_name() {
        let f = FramedSchema::parse_shipped(PENDO_SEGMENT_CHANGE_AVSC, WireFormat::SingleObject);
        let hex: String = f.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "667c312280020ad0");
    }

    #[test]
    fn a_change_round_trips_in_both_wire_formats() {
        for format in [
            WireFormat::SingleObject,
            WireFormat::Confluent { schema_id: 7 },
        ] {
            let codec = PendoSegmentChangeCodec::new(format);
            for (member, origin) in [
                (
                    true,
                    SegmentChangeOrigin {
                        source: "segment.webhook".into(),
                        segment_message_id: Some("m-1".into()),
                        received_at: Some(1_764_340_000_000),
                    },
                ),
                (false, SegmentChangeOrigin::default()),
            ] {
                let c = PendoSegmentChange {
                    change_id: "segment-abc".into(),
                    audience_key: "power_users".into(),
                    segment_name: "Segment: power_users".into(),
                    visitor_id: "v-1".into(),
                    member,
                    timestamp: "2026-11-29T10:00:00.000Z".into(),
                    origin,
                };
                let bytes = codec.encode_to_vec(&c).unwrap();
                assert_eq!(codec.decode(&bytes).unwrap(), c);
            }
        }
    }
}
