//! `PendoMetadataUpdate`: set metadata fields of one Pendo visitor or account, on
//! `canonical.pendo-updates` (schema `schemas/pendo_metadata_update.avsc`). Written by the
//! reverse-flow transformer and read by the Pendo sink (issue #7). Written by hand (a fixed,
//! deterministic byte layout); read through apache-avro, which also resolves older versions.

use std::collections::BTreeMap;

use apache_avro::types::Value;

use super::avro_binary::AvroWriter;
use super::segment_call::Fields;
use super::wire_format::{FramedSchema, WireFormat, WriterSchema};

/// The shipped schema text (v2: `listChanges` added).
pub const PENDO_METADATA_UPDATE_AVSC: &str =
    include_str!("../../schemas/pendo_metadata_update.avsc");

/// The first released version (without `listChanges`): values written with it in retained or
/// replayed data are still read (schema resolution gives `listChanges = []`).
pub const PENDO_METADATA_UPDATE_V1_AVSC: &str =
    include_str!("../../schemas/pendo_metadata_update.v1.avsc");

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

/// One membership delta of a list-valued field (`field_mode = "audience_list"`): the Pendo
/// sink keeps each entity's current list and writes it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListChange {
    /// The list-valued Pendo field (e.g. `segment_audiences`).
    pub field: String,
    /// The list item (e.g. an audience key).
    pub key: String,
    /// `true`: the key is in the list from now on; `false`: it is not.
    pub member: bool,
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
    /// List membership deltas, applied in order by the Pendo sink (empty in records written
    /// with the v1 schema).
    pub list_changes: Vec<ListChange>,
}

/// Encodes and decodes `PendoMetadataUpdate` values.
pub struct PendoMetadataUpdateCodec {
    framed: FramedSchema,
}

impl PendoMetadataUpdateCodec {
    /// A codec writing `format`.
    pub fn new(format: WireFormat) -> Self {
        Self {
            framed: FramedSchema::parse_shipped_with_history(
                PENDO_METADATA_UPDATE_AVSC,
                &[PENDO_METADATA_UPDATE_V1_AVSC],
                format,
            ),
        }
    }

    /// The framed Avro encoding of `u`. Written field by field in schema order, the map in key
    /// order, so one update always encodes to the same bytes (apache-avro writes a map from a
    /// `HashMap`, in no fixed order; a dead letter could then not be compared with its record).
    pub fn encode_to_vec(&self, u: &PendoMetadataUpdate) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(128);
        self.framed.write_header(&mut out);
        let w = &mut AvroWriter::new(&mut out);
        w.string(&u.update_id);
        w.long(match u.entity {
            PendoEntity::Visitor => 0,
            PendoEntity::Account => 1,
        });
        w.string(&u.entity_id);
        w.string(&u.field_group);
        // `values`: a map of ["null", "boolean", "long", "double", "string", array<string>].
        w.block(u.values.iter(), |w, (k, v)| {
            w.string(k);
            match v {
                FieldValue::Null => w.branch(0),
                FieldValue::Bool(b) => {
                    w.branch(1);
                    w.boolean(*b);
                }
                FieldValue::Long(n) => {
                    w.branch(2);
                    w.long(*n);
                }
                FieldValue::Double(d) => {
                    w.branch(3);
                    w.double(*d);
                }
                FieldValue::Text(s) => {
                    w.branch(4);
                    w.string(s);
                }
                FieldValue::List(l) => {
                    w.branch(5);
                    w.block(l.iter(), |w, s| w.string(s));
                }
            }
        });
        w.string(&u.timestamp);
        let o = &u.origin;
        w.string(&o.source);
        w.opt_string(o.segment_message_id.as_deref());
        w.opt_string(o.audience_key.as_deref());
        w.opt_long(o.received_at);
        w.block(u.list_changes.iter(), |w, c| {
            w.string(&c.field);
            w.string(&c.key);
            w.boolean(c.member);
        });
        Ok(out)
    }

    /// Decodes one framed record value.
    pub fn decode(&self, value: &[u8]) -> Result<PendoMetadataUpdate, String> {
        let (writer, mut datum) = self
            .framed
            .writer_and_datum(value)
            .map_err(|e| e.to_string())?;
        let v = match writer {
            WriterSchema::Current => {
                apache_avro::reader::datum::GenericDatumReader::builder(self.framed.schema())
                    .build()
            }
            WriterSchema::Older(old) => {
                apache_avro::reader::datum::GenericDatumReader::builder(old)
                    .reader_schema(self.framed.schema())
                    .build()
            }
        }
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
        let list_changes = match f.take("listChanges")? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    let mut c = Fields::new(item)?;
                    Ok(ListChange {
                        field: c.string("field")?,
                        key: c.string("key")?,
                        member: match c.take("member")? {
                            Value::Boolean(b) => b,
                            other => {
                                return Err(format!("listChanges.member: unexpected {other:?}"));
                            }
                        },
                    })
                })
                .collect::<Result<_, String>>()?,
            other => return Err(format!("listChanges: unexpected {other:?}")),
        };
        Ok(PendoMetadataUpdate {
            update_id,
            entity,
            entity_id,
            field_group,
            values,
            timestamp,
            origin,
            list_changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(v: Option<String>) -> Value {
        match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(s) => Value::Union(1, Box::new(Value::String(s))),
        }
    }

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
            list_changes: vec![
                ListChange {
                    field: "segment_audiences".into(),
                    key: "a".into(),
                    member: true,
                },
                ListChange {
                    field: "segment_audiences".into(),
                    key: "b".into(),
                    member: false,
                },
            ],
        };
        let bytes = codec.encode_to_vec(&u).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), u);
        // The same update is always the same bytes (the map is written in key order).
        for _ in 0..20 {
            assert_eq!(codec.encode_to_vec(&u.clone()).unwrap(), bytes);
        }
    }

    /// `u` encoded by apache-avro's generic writer: the reference for the hand-written encoder
    /// (with at most one map entry, the map's order cannot differ).
    fn apache_avro_bytes(codec: &PendoMetadataUpdateCodec, u: &PendoMetadataUpdate) -> Vec<u8> {
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
        let record = Value::Record(vec![
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
            (
                "listChanges".into(),
                Value::Array(
                    u.list_changes
                        .iter()
                        .map(|c| {
                            Value::Record(vec![
                                ("field".into(), Value::String(c.field.clone())),
                                ("key".into(), Value::String(c.key.clone())),
                                ("member".into(), Value::Boolean(c.member)),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]);
        let mut out = Vec::new();
        codec.framed.write_header(&mut out);
        apache_avro::writer::datum::GenericDatumWriter::builder(codec.framed.schema())
            .build()
            .unwrap()
            .write_value(&mut out, record)
            .unwrap();
        out
    }

    #[test]
    fn the_hand_written_encoding_is_what_apache_avro_writes() {
        let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
        let base = PendoMetadataUpdate {
            update_id: "seg-1".into(),
            entity: PendoEntity::Visitor,
            entity_id: "v-ü".into(),
            field_group: "agent".into(),
            values: BTreeMap::new(),
            timestamp: "2025-11-28T12:00:00.000Z".into(),
            origin: UpdateOrigin {
                source: "segment.webhook".into(),
                segment_message_id: None,
                audience_key: Some("trial".into()),
                received_at: Some(-1_764_330_000_000),
            },
            list_changes: vec![],
        };
        let mut cases = vec![base.clone()];
        for v in [
            FieldValue::Null,
            FieldValue::Bool(false),
            FieldValue::Long(i64::MIN),
            FieldValue::Double(-0.1),
            FieldValue::Text(String::new()),
            FieldValue::List(vec![]),
            FieldValue::List((0..70).map(|i| format!("k{i}")).collect()),
        ] {
            let mut u = base.clone();
            u.values.insert("f".into(), v);
            cases.push(u);
        }
        let mut lists = base.clone();
        lists.entity = PendoEntity::Account;
        lists.origin = UpdateOrigin::default();
        lists.list_changes = (0..3)
            .map(|i| ListChange {
                field: "segment_audiences".into(),
                key: format!("a{i}"),
                member: i != 1,
            })
            .collect();
        cases.push(lists);
        for u in cases {
            assert_eq!(
                codec.encode_to_vec(&u).unwrap(),
                apache_avro_bytes(&codec, &u),
                "{u:?}"
            );
        }
    }

    /// A record written with the v1 schema (before `listChanges`), framed with v1's
    /// fingerprint, as retained or replayed data holds it.
    fn v1_record(format: WireFormat) -> Vec<u8> {
        let v1 = FramedSchema::parse_shipped(PENDO_METADATA_UPDATE_V1_AVSC, format);
        let value = Value::Record(vec![
            ("updateId".into(), Value::String("seg-v1".into())),
            ("entity".into(), Value::Enum(0, "visitor".into())),
            ("entityId".into(), Value::String("v-1".into())),
            ("fieldGroup".into(), Value::String("custom".into())),
            (
                "values".into(),
                Value::Map(
                    [(
                        "segment_trial".to_string(),
                        Value::Union(1, Box::new(Value::Boolean(true))),
                    )]
                    .into(),
                ),
            ),
            (
                "timestamp".into(),
                Value::String("2025-11-28T12:00:00.000Z".into()),
            ),
            (
                "origin".into(),
                Value::Record(vec![
                    ("source".into(), Value::String("segment.webhook".into())),
                    ("segmentMessageId".into(), opt(Some("m".into()))),
                    ("audienceKey".into(), opt(Some("trial".into()))),
                    ("receivedAt".into(), Value::Union(0, Box::new(Value::Null))),
                ]),
            ),
        ]);
        let mut out = Vec::new();
        v1.write_header(&mut out);
        apache_avro::writer::datum::GenericDatumWriter::builder(v1.schema())
            .build()
            .unwrap()
            .write_value(&mut out, value)
            .unwrap();
        out
    }

    #[test]
    fn a_v1_record_decodes_with_the_current_codec_to_no_list_changes() {
        let bytes = v1_record(WireFormat::SingleObject);
        let current =
            FramedSchema::parse_shipped(PENDO_METADATA_UPDATE_AVSC, WireFormat::SingleObject);
        // Pinned (schemas/README.md; fastavro computes the same): v1 is the fingerprint
        // released before `listChanges`, v2 the current one.
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&bytes[2..10]), "1a447ea603a57d56");
        assert_eq!(hex(&current.fingerprint()), "d29eae2476ab883a");
        let u = PendoMetadataUpdateCodec::new(WireFormat::SingleObject)
            .decode(&bytes)
            .unwrap();
        assert_eq!(u.update_id, "seg-v1");
        assert_eq!(u.entity_id, "v-1");
        assert_eq!(
            u.values,
            BTreeMap::from([("segment_trial".to_string(), FieldValue::Bool(true))])
        );
        assert_eq!(u.origin.audience_key.as_deref(), Some("trial"));
        assert_eq!(u.list_changes, vec![]);
        // An unknown fingerprint is still refused, naming both known ones.
        let mut unknown = bytes.clone();
        unknown[2] ^= 0xff;
        let e = PendoMetadataUpdateCodec::new(WireFormat::SingleObject)
            .decode(&unknown)
            .unwrap_err();
        assert!(e.contains("unknown schema") && e.contains(", "), "{e}");
    }

    #[test]
    fn confluent_framing_knows_only_the_configured_id() {
        let format = WireFormat::Confluent { schema_id: 7 };
        let codec = PendoMetadataUpdateCodec::new(format);
        // Same id, current schema: fine. (Older versions under other ids are not resolved
        // without a registry.)
        let mut other = v1_record(WireFormat::Confluent { schema_id: 6 });
        assert!(codec.decode(&other).is_err());
        other[4] = 7;
        // Read as the current schema, a v1 datum is truncated: refused, never misread as valid.
        assert!(codec.decode(&other).is_err());
    }
}
