//! The per-record work of `transform-segment`: map one raw Segment event, write its Pendo
//! metadata updates, learned id mappings or dead letter into the loop's open transaction, and
//! count the outcome.
//!
//! Unlike `transform-pendo`, records are mapped inline, one at a time: the reverse flow carries
//! audience changes (bursts of thousands on a backfill, not a firehose) and mapping is a JSON
//! parse plus one Avro encoding, so the forward processor's worker-thread batching would add
//! complexity without need. Everything written becomes visible only when the loop commits the
//! transaction together with the input offsets, so `checkpoint` has nothing to flush.

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use crate::config::{SchemaConfig, SchemaId};
use crate::idmap::BiIdMap;
use crate::kafka::consumer_loop::{ProcessError, RecordProcessor};
use crate::kafka::dead_letter::{DeadLetterSource, send_dead_letter};
use crate::kafka::headers;
use crate::kafka::transactional_output::TransactionalOutput;
use crate::metrics::{BoundedLabel, metrics};
use crate::schema::pendo_metadata_update::PendoEntity;
use crate::schema::{IdMappingCodec, PendoMetadataUpdateCodec, PendoSegmentChangeCodec};
use crate::transform::received_at::received_at;
use crate::transform::segment_to_pendo::{SegmentOutcome, SegmentToPendo};

/// Distinct kinds tracked in metric labels before `_other`.
const MAX_KIND_LABELS: usize = 50;

/// Topics the processor writes to.
pub struct SegmentOutputTopics {
    /// `canonical.pendo-updates`.
    pub updates: String,
    /// `canonical.pendo-segment-changes` (keyed by audience key).
    pub segment_changes: String,
    /// `idmap.visitor-to-user` (learned mappings).
    pub idmap: String,
    /// `dlq.transform-segment`.
    pub dlq: String,
}

/// Maps raw Segment records to Pendo metadata updates inside the loop's transaction.
pub struct SegmentTransformProcessor {
    role: &'static str,
    mapper: SegmentToPendo,
    codec: PendoMetadataUpdateCodec,
    segment_codec: PendoSegmentChangeCodec,
    idmap_codec: IdMappingCodec,
    ids: BiIdMap,
    output: TransactionalOutput,
    topics: SegmentOutputTopics,
    kinds: BoundedLabel,
}

impl SegmentTransformProcessor {
    /// A processor writing through `output` in the wire formats of `schema`, resolving
    /// visitors with `ids`.
    pub fn new(
        role: &'static str,
        mapper: SegmentToPendo,
        schema: &SchemaConfig,
        ids: BiIdMap,
        output: TransactionalOutput,
        topics: SegmentOutputTopics,
    ) -> Self {
        Self {
            codec: PendoMetadataUpdateCodec::new(schema.wire_format(SchemaId::PendoMetadataUpdate)),
            segment_codec: PendoSegmentChangeCodec::new(
                schema.wire_format(SchemaId::PendoSegmentChange),
            ),
            idmap_codec: IdMappingCodec::new(schema.wire_format(SchemaId::IdMapping)),
            kinds: BoundedLabel::new(MAX_KIND_LABELS),
            role,
            mapper,
            ids,
            output,
            topics,
        }
    }

    fn send(&self, topic: &str, key: &str, value: &[u8], kind: &str) -> Result<(), ProcessError> {
        self.output
            .send(
                topic,
                Some(key.as_bytes()),
                value,
                &[(headers::EVENT_KIND, kind.as_bytes())],
            )
            .map_err(|e| ProcessError::new("produce", e.to_string()))
    }

    /// Encodes and writes the outputs of one event. An output that does not encode (our own
    /// defect) or would not fit its topic is returned as a dead-letter reason and detail, before
    /// anything of the event is written, so one event can never stop the role.
    fn write_outputs(
        &self,
        updates: &[crate::schema::PendoMetadataUpdate],
        segment_changes: &[crate::schema::PendoSegmentChange],
        mappings: &[crate::schema::IdMapping],
        kind: &str,
    ) -> Result<Result<(), (&'static str, String)>, ProcessError> {
        let encode_error = |what: &str, e: &dyn std::fmt::Display| {
            Ok(Err((
                "encode_error",
                format!("the {what} does not encode: {e}"),
            )))
        };
        // Encode everything first: an event's outputs are written all or not at all.
        let mut encoded = Vec::with_capacity(updates.len() + mappings.len());
        for u in updates {
            match self.codec.encode_to_vec(u) {
                Ok(v) => encoded.push((&self.topics.updates, u.entity_id.as_str(), v, u.entity)),
                Err(e) => return encode_error("update", &e),
            }
        }
        // Keyed by audience key: every change of one audience lands in one partition, so the
        // sink (one job in flight per partition) never writes one Pendo Segment concurrently.
        let mut changes = Vec::with_capacity(segment_changes.len());
        for c in segment_changes {
            match self.segment_codec.encode_to_vec(c) {
                Ok(v) => changes.push((c.audience_key.as_str(), v)),
                Err(e) => return encode_error("segment change", &e),
            }
        }
        let mut learned = Vec::with_capacity(mappings.len());
        for m in mappings {
            match self.idmap_codec.encode_to_vec(m) {
                Ok(v) => learned.push((m.visitor_id.as_str(), v)),
                Err(e) => return encode_error("id mapping", &e),
            }
        }
        // Every record must fit its topic (values and ids come from the event).
        let kind_header = [(headers::EVENT_KIND, kind.as_bytes())];
        let all = encoded
            .iter()
            .map(|(t, k, v, _)| (t.as_str(), *k, v))
            .chain(
                changes
                    .iter()
                    .map(|(k, v)| (self.topics.segment_changes.as_str(), *k, v)),
            )
            .chain(
                learned
                    .iter()
                    .map(|(k, v)| (self.topics.idmap.as_str(), *k, v)),
            );
        for (topic, key, value) in all {
            if let Err(e) =
                self.output
                    .limits()
                    .check(topic, Some(key.as_bytes()), value, kind_header)
            {
                return Ok(Err(("output_too_large", e.to_string())));
            }
        }
        let m = metrics();
        for (topic, key, value, entity) in &encoded {
            self.send(topic, key, value, kind)?;
            let call = match entity {
                PendoEntity::Visitor => "visitor_update",
                PendoEntity::Account => "account_update",
            };
            m.transform_calls
                .with_label_values(&[self.role, call])
                .inc();
        }
        for (key, value) in &changes {
            self.send(&self.topics.segment_changes, key, value, kind)?;
            m.transform_calls
                .with_label_values(&[self.role, "segment_change"])
                .inc();
        }
        for (key, value) in &learned {
            self.send(&self.topics.idmap, key, value, kind)?;
            m.transform_calls
                .with_label_values(&[self.role, "id_mapping"])
                .inc();
        }
        Ok(Ok(()))
    }
}

impl RecordProcessor for SegmentTransformProcessor {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let payload = record.payload().unwrap_or_default();
        let (outcome, kind) = self.mapper.map(payload, received_at(record), &self.ids);
        let kind = self.kinds.label(&kind).to_string();
        let dead_letter = |reason: &str, detail: &str| {
            send_dead_letter(
                &self.output,
                &self.topics.dlq,
                self.role,
                &DeadLetterSource {
                    topic: record.topic(),
                    partition: record.partition(),
                    offset: record.offset(),
                    key: record.key(),
                    payload,
                    headers: record.headers().map(|h| h.detach()).as_ref(),
                },
                reason,
                detail,
            )
        };
        let outcome = match outcome {
            SegmentOutcome::Updates {
                updates,
                segment_changes,
                mappings,
            } => match self.write_outputs(&updates, &segment_changes, &mappings, &kind)? {
                Ok(()) => "mapped",
                Err((reason, detail)) => {
                    dead_letter(reason, &detail)?;
                    "dead_lettered"
                }
            },
            SegmentOutcome::Ignored { mappings } => {
                if let Err((reason, detail)) = self.write_outputs(&[], &[], &mappings, &kind)? {
                    dead_letter(reason, &detail)?;
                    "dead_lettered"
                } else {
                    "ignored"
                }
            }
            SegmentOutcome::Dropped => "dropped",
            SegmentOutcome::DeadLetter { reason, detail } => {
                dead_letter(reason, &detail)?;
                "dead_lettered"
            }
        };
        metrics()
            .transform_events
            .with_label_values(&[self.role, &kind, outcome])
            .inc();
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        // Every output was written into the open transaction as its record was processed.
        Ok(())
    }
}
