//! The per-record work of `transform-pendo`: map one raw Pendo event, write its Segment calls
//! (or its dead letter) into the open Kafka transaction, count what was seen.

use std::collections::HashMap;

use prometheus::IntCounter;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};

use crate::idmap::IdMapTable;
use crate::kafka::consumer_loop::{ProcessError, RecordProcessor};
use crate::kafka::headers;
use crate::kafka::transactional_output::TransactionalOutput;
use crate::metrics::{BoundedLabel, metrics};
use crate::schema::SegmentCallCodec;
use crate::transform::pendo_to_segment::{MapOutcome, PendoToSegment};

/// Distinct kinds tracked in metric labels before `_other`.
const MAX_KIND_LABELS: usize = 200;
/// Distinct field names tracked in metric labels before `_other`.
const MAX_FIELD_LABELS: usize = 500;

/// Topics the processor writes to.
pub struct OutputTopics {
    /// `canonical.segment-calls`.
    pub calls: String,
    /// `dlq.transform-pendo`.
    pub dlq: String,
    /// Raw topic name -> `origin.source` of its calls.
    pub sources: Vec<(String, String)>,
}

/// Maps raw Pendo records to canonical Segment calls inside the loop's transaction.
pub struct PendoTransformProcessor {
    stage: &'static str,
    mapper: PendoToSegment,
    codec: SegmentCallCodec,
    ids: IdMapTable,
    output: TransactionalOutput,
    topics: OutputTopics,
    kinds: BoundedLabel,
    fields: BoundedLabel,
    buf: Vec<u8>,
    /// Counter handles by (kind, outcome): label lookups hash strings, once per pair is enough.
    outcome_counters: HashMap<String, [Option<IntCounter>; 4]>,
    call_counters: HashMap<&'static str, IntCounter>,
}

impl PendoTransformProcessor {
    /// A processor writing through `output`.
    pub fn new(
        stage: &'static str,
        mapper: PendoToSegment,
        codec: SegmentCallCodec,
        ids: IdMapTable,
        output: TransactionalOutput,
        topics: OutputTopics,
    ) -> Self {
        Self {
            stage,
            mapper,
            codec,
            ids,
            output,
            topics,
            kinds: BoundedLabel::new(MAX_KIND_LABELS),
            fields: BoundedLabel::new(MAX_FIELD_LABELS),
            buf: Vec::with_capacity(2048),
            outcome_counters: HashMap::new(),
            call_counters: HashMap::new(),
        }
    }

    fn dead_letter(
        &self,
        record: &BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        let partition = record.partition().to_string();
        let offset = record.offset().to_string();
        let now = headers::now_millis().to_string();
        let mut h: Vec<(&str, &[u8])> = vec![
            (headers::DLQ_REASON, reason.as_bytes()),
            (headers::DLQ_DETAIL, detail.as_bytes()),
            (headers::DLQ_STAGE, self.stage.as_bytes()),
            (headers::DLQ_TIME, now.as_bytes()),
            (headers::DLQ_SOURCE_TOPIC, record.topic().as_bytes()),
            (headers::DLQ_SOURCE_PARTITION, partition.as_bytes()),
            (headers::DLQ_SOURCE_OFFSET, offset.as_bytes()),
        ];
        // Keep the connector's headers (received-at, request id...) for the investigation.
        if let Some(original) = record.headers() {
            for header in original.iter() {
                if !header.key.starts_with("dlq-") {
                    h.push((header.key, header.value.unwrap_or_default()));
                }
            }
        }
        self.output
            .send(
                &self.topics.dlq,
                record.key(),
                record.payload().unwrap_or_default(),
                &h,
            )
            .map_err(|e| ProcessError::new("produce", format!("dead letter: {e}")))?;
        metrics()
            .dead_letters
            .with_label_values(&[self.stage, reason])
            .inc();
        Ok(())
    }
}

fn received_at(record: &BorrowedMessage<'_>) -> Option<i64> {
    let h = record.headers()?;
    h.iter()
        .find(|x| x.key == headers::RECEIVED_AT)
        .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse().ok())
}

impl RecordProcessor for PendoTransformProcessor {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let m = metrics();
        let raw = record.payload().unwrap_or_default();
        let (outcome, obs) = self.mapper.map(raw, received_at(record), &self.ids);
        let kind = self.kinds.label(if obs.kind.is_empty() {
            "none"
        } else {
            &obs.kind
        });
        if obs.unknown_kind {
            m.unknown_kinds.with_label_values(&[self.stage, kind]).inc();
        }
        for field in &obs.unknown_fields {
            let field = self.fields.label(field);
            m.unknown_fields
                .with_label_values(&[self.stage, kind, field])
                .inc();
        }
        let outcome_label = match outcome {
            MapOutcome::Calls(mut calls) => {
                let source = self
                    .topics
                    .sources
                    .iter()
                    .find(|(t, _)| t == record.topic())
                    .map(|(_, s)| s.as_str());
                for call in &mut calls {
                    if let Some(s) = source {
                        s.clone_into(&mut call.origin.source);
                    }
                    self.buf.clear();
                    self.codec
                        .encode(call, &mut self.buf)
                        .map_err(|e| ProcessError::new("encode", e))?;
                    self.output
                        .send(
                            &self.topics.calls,
                            call.kafka_key().map(str::as_bytes),
                            &self.buf,
                            &[(headers::EVENT_KIND, obs.kind.as_bytes())],
                        )
                        .map_err(|e| ProcessError::new("produce", e.to_string()))?;
                    let stage = self.stage;
                    self.call_counters
                        .entry(call.body.call_type())
                        .or_insert_with(|| {
                            m.transform_calls
                                .with_label_values(&[stage, call.body.call_type()])
                        })
                        .inc();
                }
                "mapped"
            }
            MapOutcome::Filtered(_) => "filtered",
            MapOutcome::Dropped => "dropped",
            MapOutcome::DeadLetter { reason, detail } => {
                self.dead_letter(record, reason, &detail)?;
                "dead_lettered"
            }
        };
        let slot = match outcome_label {
            "mapped" => 0,
            "filtered" => 1,
            "dropped" => 2,
            _ => 3,
        };
        if !self.outcome_counters.contains_key(kind) {
            self.outcome_counters
                .insert(kind.to_string(), Default::default());
        }
        let slots = self.outcome_counters.get_mut(kind).expect("inserted");
        slots[slot]
            .get_or_insert_with(|| {
                m.transform_events
                    .with_label_values(&[self.stage, kind, outcome_label])
            })
            .inc();
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        // Output is in the transaction; the loop commits it with the offsets.
        Ok(())
    }
}
