//! `PendoMetadataUpdate`: set metadata fields of one Pendo visitor or account, on
//! `canonical.pendo-updates` (schema `schemas/pendo_metadata_update.avsc`). Written by the
//! reverse-flow transformer and read by the Pendo sink (issue #7); the reverse flow is low
//! volume, so this goes through Avro `Value`s rather than the serde fast path.

use std::collections::BTreeMap;

use apache_avro::types::Value;

use super::segment_call::Fields;
use super::wire_format::{FramedSchema, WireFormat};

/// The shipped schema text.
pub const PENDO_METADATA_UPDATE_AVSC: &str =
    include_str!("../../schemas/pendo_metadata_update.avsc");

/// Which kind of Pendo entity an update targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendoEntity {
    /// A visitor (Segment user).
    Visitor,
    /// An account (Segment group).
    Account,
}

/// A value Pendo metadata fields accept.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Clears the field.
    Null,
    /// Boolean field.
    Bool(bool),
    /// Integer number field.
    Long(i64),
    /// Number field.
    Double(f64),
    /// Text or date field.
    Text(String),
    /// List of keys (e.g. current audience keys).
    List(Vec<String>),
}

/// Where an update came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateOrigin {
    /// `segment.webhook`, ...
    pub source: String,
    /// The Segment messageId of the source event.
    pub segment_message_id: Option<String>,
    /// The audience key, when the update is an audience membership change.
    pub audience_key: Option<String>,
    /// When the connector received the source event (epoch ms).
    pub received_at: Option<i64>,
}

/// One metadata update.
#[derive(Debug, Clone, PartialEq)]
pub struct PendoMetadataUpdate {
    /// Deterministic id derived from the source event.
    pub update_id: String,
    /// Visitor or account.
    pub entity: PendoEntity,
    /// The Pendo visitor or account id.
    pub entity_id: String,
    /// `custom` or `agent`.
    pub field_group: String,
    /// Field -> value.
    pub values: BTreeMap<String, FieldValue>,
    /// Source event time, ISO-8601 UTC.
    pub timestamp: String,
    /// Provenance.
    pub origin: UpdateOrigin,
}

/// Encodes and decodes `PendoMetadataUpdate` values.
pub struct PendoMetadataUpdateCodec {
    framed: FramedSchema,
}

fn opt(v: Option<String>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s))),
    }
}

impl PendoMetadataUpdateCodec {
    /// A codec writing `format`.
    pub fn new(format: WireFormat) -> Self {
        Self {
            framed: FramedSchema::parse_shipped(PENDO_METADATA_UPDATE_AVSC, format),
        }
    }

    /// The framed Avro encoding of `u`.
    pub fn encode_to_vec(&self, u: &PendoMetadataUpdate) -> Result<Vec<u8>, String> {
        let values = u
            .values
            .iter()
            .map(|(k, v)| {
                let branch = match v {
                    FieldValue::Null => Value::Union(0, Box::new(Value::Null)),
                    FieldValue::Bool(b) => Value::Union(1, Box::new(Value::Boolean(*b))),
                    FieldValue::Long(n) => Value::Union(2, Box::new(Value::Long(*n))),
                    FieldValue::Double(d) => Value::Union(3, Box::new(Value::Double(*d))),
                    FieldValue::Text(s) => Value::Union(4, Box::new(Value::String(s.clone()))),
                    FieldValue::List(l) => Value::Union(
                        5,
                        Box::new(Value::Array(l.iter().cloned().map(Value::String).collect())),
                    ),
                };
                (k.clone(), branch)
            })
            .collect();
        let o = &u.origin;
        let value = Value::Record(vec![
            ("updateId".into(), Value::String(u.update_id.clone())),
            (
                "entity".into(),
                match u.entity {
                    PendoEntity::Visitor => Value::Enum(0, "visitor".into()),
                    PendoEntity::Account => Value::Enum(1, "account".into()),
                },
            ),
            ("entityId".into(), Value::String(u.entity_id.clone())),
            ("fieldGroup".into(), Value::String(u.field_group.clone())),
            ("values".into(), Value::Map(values)),
            ("timestamp".into(), Value::String(u.timestamp.clone())),
            (
                "origin".into(),
                Value::Record(vec![
                    ("source".into(), Value::String(o.source.clone())),
                    ("segmentMessageId".into(), opt(o.segment_message_id.clone())),
                    ("audienceKey".into(), opt(o.audience_key.clone())),
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
    pub fn decode(&self, value: &[u8]) -> Result<PendoMetadataUpdate, String> {
        let mut datum = self.framed.datum(value).map_err(|e| e.to_string())?;
        let v = apache_avro::reader::datum::GenericDatumReader::builder(self.framed.schema())
            .build()
            .map_err(|e| e.to_string())?
            .read_value(&mut datum)
            .map_err(|e| format!("not a valid PendoMetadataUpdate datum: {e}"))?;
        let mut f = Fields::new(v)?;
        let update_id = f.string("updateId")?;
        let entity = match f.take("entity")? {
            Value::Enum(0, _) => PendoEntity::Visitor,
            Value::Enum(1, _) => PendoEntity::Account,
            other => return Err(format!("entity: unexpected {other:?}")),
        };
        let entity_id = f.string("entityId")?;
        let field_group = f.string("fieldGroup")?;
        let values = match f.take("values")? {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Union(_, b) => *b,
                        v => v,
                    };
                    let fv = match v {
                        Value::Null => FieldValue::Null,
                        Value::Boolean(b) => FieldValue::Bool(b),
                        Value::Long(n) => FieldValue::Long(n),
                        Value::Double(d) => FieldValue::Double(d),
                        Value::String(s) => FieldValue::Text(s),
                        Value::Array(a) => FieldValue::List(
                            a.into_iter()
                                .map(|x| match x {
                                    Value::String(s) => Ok(s),
                                    other => Err(format!("list item: unexpected {other:?}")),
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        other => return Err(format!("value of {k}: unexpected {other:?}")),
                    };
                    Ok((k, fv))
                })
                .collect::<Result<_, String>>()?,
            other => return Err(format!("values: unexpected {other:?}")),
        };
        let timestamp = f.string("timestamp")?;
        let mut o = Fields::new(f.take("origin")?)?;
        let origin = UpdateOrigin {
            source: o.string("source")?,
            segment_message_id: o.opt_string("segmentMessageId")?,
            audience_key: o.opt_string("audienceKey")?,
            received_at: match o.take_opt("receivedAt")? {
                None => None,
                Some(Value::TimestampMillis(t)) | Some(Value::Long(t)) => Some(t),
                Some(other) => return Err(format!("receivedAt: unexpected {other:?}")),
            },
        };
        Ok(PendoMetadataUpdate {
            update_id,
            entity,
            entity_id,
            field_group,
            values,
            timestamp,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_kind_round_trips() {
        let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
        let mut values = BTreeMap::new();
        values.insert("segment_trial_users".into(), FieldValue::Bool(true));
        values.insert("n".into(), FieldValue::Long(-3));
        values.insert("d".into(), FieldValue::Double(2.5));
        values.insert("t".into(), FieldValue::Text("x".into()));
        values.insert("none".into(), FieldValue::Null);
        values.insert(
            "segment_audiences".into(),
            FieldValue::List(vec!["a".into(), "b".into()]),
        );
        let u = PendoMetadataUpdate {
            update_id: "seg-1".into(),
            entity: PendoEntity::Account,
            entity_id: "acct-1".into(),
            field_group: "custom".into(),
            values,
            timestamp: "2025-11-28T12:00:00.000Z".into(),
            origin: UpdateOrigin {
                source: "segment.webhook".into(),
                segment_message_id: Some("m".into()),
                audience_key: None,
                received_at: Some(5),
            },
        };
        let bytes = codec.encode_to_vec(&u).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), u);
    }
}
