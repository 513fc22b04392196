//! How an Avro datum is framed in a Kafka record value.
//!
//! The default is Avro **single-object encoding** (`C3 01`, the 8-byte little-endian CRC-64-AVRO
//! fingerprint of the writer schema, the datum), so any Avro library can decode a record with the
//! `.avsc` files in `schemas/` alone. The Confluent framing (magic `0`, 4-byte big-endian schema
//! id, datum) is the seam for a schema registry: the id comes from configuration today, from a
//! registry client later; nothing else changes.

use apache_avro::Schema;
use apache_avro::rabin::Rabin;

/// The framing written in front of each datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `C3 01` + Rabin fingerprint: self-describing against `schemas/`.
    SingleObject,
    /// `00` + schema id (big-endian): what Confluent-compatible registries and their serdes expect.
    Confluent {
        /// The id under which the writer schema is registered.
        schema_id: u32,
    },
}

/// Why a record value could not be unframed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Too short or the wrong magic bytes: not produced by this framing.
    #[error("not {expected}: the value does not start with its magic bytes")]
    BadMagic {
        /// The framing that was expected.
        expected: &'static str,
    },
    /// Framed, but written with a schema this process does not know.
    #[error("written with an unknown schema ({found}); known: {known}")]
    UnknownSchema {
        /// Fingerprint or id found in the value.
        found: String,
        /// What this reader knows.
        known: String,
    },
}

/// A parsed schema with its single-object fingerprint, ready to frame and unframe datums.
///
/// With [`FramedSchema::parse_shipped_with_history`] it also knows the released older versions
/// of the schema (`schemas/<name>.vN.avsc`): a single-object value written with one of their
/// fingerprints is read with that writer schema and resolved to the current one (Avro schema
/// resolution: a field added since gets its default). Confluent framing knows only the configured
/// id.
#[derive(Debug, Clone)]
pub struct FramedSchema {
    schema: &'static Schema,
    fingerprint: [u8; 8],
    format: WireFormat,
    history: Vec<([u8; 8], &'static Schema)>,
}

/// The schema a datum was written with, as found in its frame.
#[derive(Debug, Clone, Copy)]
pub enum WriterSchema {
    /// The current schema: read as is.
    Current,
    /// An older released version: read with it, then resolve to the current schema.
    Older(&'static Schema),
}

const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

impl FramedSchema {
    /// Parses `avsc` (a schema shipped in `schemas/`). Panics on an invalid schema: they are
    /// compiled into the binary and covered by tests, so a bad one is a build defect.
    ///
    /// The schema is leaked: codecs are created a few times per process and keep
    /// `'static` readers and writers, so no schema resolution happens per record.
    pub fn parse_shipped(avsc: &str, format: WireFormat) -> Self {
        let (schema, fingerprint) = parse_leaked(avsc);
        Self {
            schema,
            fingerprint,
            format,
            history: Vec::new(),
        }
    }

    /// [`FramedSchema::parse_shipped`] that also reads values written with the `older` released
    /// versions of the schema (single-object framing: found by fingerprint, resolved to
    /// `current`). Panics if an older version and the current one cannot read each other (a
    /// build defect: an incompatible schema change).
    pub fn parse_shipped_with_history(current: &str, older: &[&str], format: WireFormat) -> Self {
        let mut framed = Self::parse_shipped(current, format);
        for avsc in older {
            let (schema, fingerprint) = parse_leaked(avsc);
            apache_avro::schema_compatibility::SchemaCompatibility::mutual_read(
                schema,
                framed.schema,
            )
            .expect("the current schema reads every released version");
            framed.history.push((fingerprint, schema));
        }
        framed
    }

    /// The parsed schema.
    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// The CRC-64-AVRO fingerprint of the schema's canonical form, as written (little-endian).
    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }

    /// The framing this schema writes.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Writes the frame header in front of a datum.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        match self.format {
            WireFormat::SingleObject => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&self.fingerprint);
            }
            WireFormat::Confluent { schema_id } => {
                out.push(0);
                out.extend_from_slice(&schema_id.to_be_bytes());
            }
        }
    }

    /// Checks the frame of `value` and returns the datum bytes after it; only the current
    /// schema's fingerprint is accepted (see [`FramedSchema::writer_and_datum`] for history).
    pub fn datum<'a>(&self, value: &'a [u8]) -> Result<&'a [u8], FrameError> {
        match self.writer_and_datum(value)? {
            (WriterSchema::Current, datum) => Ok(datum),
            (WriterSchema::Older(_), _) => Err(FrameError::UnknownSchema {
                found: hex(&value[2..10]),
                known: hex(&self.fingerprint),
            }),
        }
    }

    /// Checks the frame of `value`: which schema wrote it (the current one, or an older
    /// released version given to [`FramedSchema::parse_shipped_with_history`]) and the datum
    /// bytes after the frame.
    pub fn writer_and_datum<'a>(
        &self,
        value: &'a [u8],
    ) -> Result<(WriterSchema, &'a [u8]), FrameError> {
        match self.format {
            WireFormat::SingleObject => {
                if value.len() < 10 || value[..2] != SINGLE_OBJECT_MAGIC {
                    return Err(FrameError::BadMagic {
                        expected: "Avro single-object encoding",
                    });
                }
                if value[2..10] == self.fingerprint {
                    return Ok((WriterSchema::Current, &value[10..]));
                }
                match self.history.iter().find(|(fp, _)| value[2..10] == *fp) {
                    Some((_, schema)) => Ok((WriterSchema::Older(schema), &value[10..])),
                    None => Err(FrameError::UnknownSchema {
                        found: hex(&value[2..10]),
                        known: std::iter::once(&self.fingerprint)
                            .chain(self.history.iter().map(|(fp, _)| fp))
                            .map(|fp| hex(fp))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
            WireFormat::Confluent { schema_id } => {
                if value.len() < 5 || value[0] != 0 {
                    return Err(FrameError::BadMagic {
                        expected: "the Confluent wire format",
                    });
                }
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                if id != schema_id {
                    return Err(FrameError::UnknownSchema {
                        found: format!("schema id {id}"),
                        known: format!("schema id {schema_id}"),
                    });
                }
                Ok((WriterSchema::Current, &value[5..]))
            }
        }
    }
}

/// Parses and leaks a shipped schema; returns it with its single-object fingerprint.
fn parse_leaked(avsc: &str) -> (&'static Schema, [u8; 8]) {
    let schema: &'static Schema = Box::leak(Box::new(
        Schema::parse_str(avsc).expect("a shipped schema parses"),
    ));
    let fp = Schema::parse_str(&spec_canonical_form(schema))
        .expect("a canonical form parses")
        .fingerprint::<Rabin>();
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&fp.bytes[..8]);
    (schema, fingerprint)
}

/// The Parsing Canonical Form as the Avro specification defines it. apache-avro 0.22 keeps a
/// primitive with a logical type as `{"type":"long"}`, where the specification (and Java,
/// fastavro, ...) strip it to `"long"`; fingerprints must match theirs, or other libraries cannot
/// find our writer schema.
pub fn spec_canonical_form(schema: &Schema) -> String {
    let mut form = schema.canonical_form();
    for primitive in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        form = form.replace(
            &format!("{{\"type\":\"{primitive}\"}}"),
            &format!("\"{primitive}\""),
        );
    }
    form
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVSC: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;

    #[test]
    fn single_object_header_is_magic_plus_little_endian_fingerprint() {
        let s = FramedSchema::parse_shipped(AVSC, WireFormat::SingleObject);
        let mut out = Vec::new();
        s.write_header(&mut out);
        assert_eq!(&out[..2], &[0xC3, 0x01]);
        assert_eq!(&out[2..], &s.fingerprint());
        out.extend_from_slice(b"\x02x");
        assert_eq!(s.datum(&out).unwrap(), b"\x02x");
    }

    #[test]
    fn fingerprints_follow_the_specification_for_logical_types() {
        // Cross-checked with fastavro (tests/avro_independent_decoder.rs): the canonical form of
        // a timestamp-millis long is "long".
        let s = FramedSchema::parse_shipped(
            r#"{"type":"record","name":"T","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
            WireFormat::SingleObject,
        );
        let plain = FramedSchema::parse_shipped(
            r#"{"type":"record","name":"T","fields":[{"name":"t","type":"long"}]}"#,
            WireFormat::SingleObject,
        );
        assert_eq!(s.fingerprint(), plain.fingerprint());
        // The spec's own example: the fingerprint of "null" is 0x63DD24E7CC258F8A.
        let null = FramedSchema::parse_shipped(r#""null""#, WireFormat::SingleObject);
        assert_eq!(
            u64::from_le_bytes(null.fingerprint()),
            0x63DD_24E7_CC25_8F8A
        );
        let call = FramedSchema::parse_shipped(
            crate::schema::segment_call::SEGMENT_CALL_AVSC,
            WireFormat::SingleObject,
        );
        assert_eq!(hex(&call.fingerprint()), "ae9c77536302ad45");
    }

    #[test]
    fn wrong_fingerprint_and_magic_are_named() {
        let s = FramedSchema::parse_shipped(AVSC, WireFormat::SingleObject);
        let mut out = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        assert!(matches!(
            s.datum(&out),
            Err(FrameError::UnknownSchema { .. })
        ));
        out[0] = b'{';
        let e = s.datum(&out).unwrap_err();
        assert!(e.to_string().contains("single-object"), "{e}");
    }

    #[test]
    fn confluent_framing_round_trips_and_checks_the_id() {
        let s = FramedSchema::parse_shipped(AVSC, WireFormat::Confluent { schema_id: 42 });
        let mut out = Vec::new();
        s.write_header(&mut out);
        assert_eq!(out, vec![0, 0, 0, 0, 42]);
        out.push(7);
        assert_eq!(s.datum(&out).unwrap(), &[7]);
        let other = FramedSchema::parse_shipped(AVSC, WireFormat::Confluent { schema_id: 43 });
        assert!(other.datum(&out).is_err());
    }
}
