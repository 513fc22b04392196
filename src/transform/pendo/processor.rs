//! The per-record work of `transform-pendo`: map raw Pendo events, write their Segment calls
//! (or their dead letters) into the open Kafka transaction, count what was seen.
//!
//! Mapping (JSON parse, rules, Avro encoding) is CPU work that is independent per record, so it
//! runs in batches on blocking worker threads while the consumer keeps reading: `process` only
//! copies the record into the current batch; full batches are mapped in the background, several
//! at once; results are written to the transaction strictly in input order. Nothing becomes
//! visible before the loop commits the transaction, which is preceded by `checkpoint`, which
//! waits for every batch — so batching adds no visible latency and changes no guarantee.
//! Revoked partitions' records are dropped wherever they are (batch, in flight).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use prometheus::IntCounter;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers, OwnedHeaders};
use rustc_hash::FxHashMap;
use tokio::task::JoinHandle;

use crate::idmap::IdMapTable;
use crate::kafka::consumer_loop::{ProcessError, RecordProcessor};
use crate::kafka::context::TopicPartition;
use crate::kafka::dead_letter::{DeadLetterSource, send_dead_letter};
use crate::kafka::headers;
use crate::kafka::transactional_output::TransactionalOutput;
use crate::metrics::{BoundedLabel, metrics};
use crate::schema::SegmentCallCodec;
use crate::transform::pendo_to_segment::{MapOutcome, Observations, PendoToSegment};
use crate::transform::received_at::received_at_of;
use crate::transform::tracking_plan::TrackingPlan;

/// Distinct kinds tracked in metric labels before `_other`.
const MAX_KIND_LABELS: usize = 200;
/// Distinct field names tracked in metric labels before `_other`.
const MAX_FIELD_LABELS: usize = 500;
/// Distinct event names in tracking-plan violation labels before `_other` (unplanned events
/// are named by the input).
const MAX_PLAN_EVENT_LABELS: usize = 500;
/// A batch is mapped once it holds this many bytes, whatever its record count (bounds memory
/// together with the number of batches in flight).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Topics the processor writes to.
pub struct OutputTopics {
    /// `canonical.segment-calls`.
    pub calls: String,
    /// `dlq.transform-pendo`.
    pub dlq: String,
    /// Raw topic name -> `origin.source` of its calls.
    pub sources: Vec<(String, String)>,
}

/// How mapping work is spread.
#[derive(Debug, Clone, Copy)]
pub struct Parallelism {
    /// Records per batch.
    pub batch_records: usize,
    /// Batches mapped at once (worker threads busy at once).
    pub batches_in_flight: usize,
}

impl Default for Parallelism {
    fn default() -> Self {
        Self {
            batch_records: 512,
            batches_in_flight: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// A raw record copied out of the consumer, waiting to be mapped.
struct RawRecord {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
    received_at: Option<i64>,
}

/// One encoded canonical record.
struct Encoded {
    key: Option<String>,
    value: Vec<u8>,
    call_type: &'static str,
}

enum Mapped {
    Calls(Vec<Encoded>),
    Filtered,
    Dropped,
    DeadLetter {
        reason: &'static str,
        detail: String,
    },
}

struct MappedRecord {
    raw: RawRecord,
    result: Mapped,
    obs: Observations,
    /// Tracking-plan violations of the event's calls: (event, rule).
    violations: Vec<(String, &'static str)>,
}

/// What the worker threads share.
struct MappingCore {
    mapper: PendoToSegment,
    codec: SegmentCallCodec,
    ids: IdMapTable,
    sources: Vec<(String, String)>,
    plan: Option<TrackingPlan>,
}

impl MappingCore {
    fn map_batch(&self, batch: Vec<RawRecord>) -> Vec<MappedRecord> {
        let mut out = Vec::with_capacity(batch.len());
        for raw in batch {
            let (outcome, obs) = self.mapper.map(&raw.payload, raw.received_at, &self.ids);
            let mut violations = Vec::new();
            let result = match outcome {
                MapOutcome::Calls(mut calls) => {
                    let source = self
                        .sources
                        .iter()
                        .find(|(t, _)| **t == *raw.topic)
                        .map(|(_, s)| s.as_str());
                    let mut encoded = Vec::with_capacity(calls.len());
                    let mut failed = None;
                    let mut refused = None;
                    for call in &mut calls {
                        if let Some(s) = source {
                            s.clone_into(&mut call.origin.source);
                        }
                        if let Some(check) = self.plan.as_ref().and_then(|p| p.check(call)) {
                            violations
                                .extend(check.violations.iter().map(|v| (v.event.clone(), v.rule)));
                            if check.dead_letter && refused.is_none() {
                                refused = Some(check.detail(call));
                            }
                        }
                        if refused.is_some() {
                            // The event goes to the dead-letter topic whole; the rest of its
                            // calls are still checked, so every violation is counted.
                            continue;
                        }
                        let mut value = Vec::with_capacity(512);
                        if let Err(e) = self.codec.encode(call, &mut value) {
                            failed = Some(e);
                            break;
                        }
                        encoded.push(Encoded {
                            key: call.kafka_key().map(str::to_string),
                            value,
                            call_type: call.body.call_type(),
                        });
                    }
                    match (refused, failed) {
                        (Some(detail), _) => Mapped::DeadLetter {
                            reason: "tracking_plan_violation",
                            detail,
                        },
                        // Our own record does not fit our own schema: a defect, but one event's
                        // defect must not stop the pipeline. Keep the event for a replay.
                        (None, Some(e)) => Mapped::DeadLetter {
                            reason: "encode_error",
                            detail: format!("the mapped call does not encode: {e}"),
                        },
                        (None, None) => Mapped::Calls(encoded),
                    }
                }
                MapOutcome::Filtered(_) => Mapped::Filtered,
                MapOutcome::Dropped => Mapped::Dropped,
                MapOutcome::DeadLetter { reason, detail } => Mapped::DeadLetter { reason, detail },
            };
            out.push(MappedRecord {
                raw,
                result,
                obs,
                violations,
            });
        }
        out
    }
}

struct InFlight {
    task: JoinHandle<Vec<MappedRecord>>,
    /// Partitions revoked while this batch was being mapped: their results are dropped.
    discard: HashSet<TopicPartition>,
}

/// Maps raw Pendo records to canonical Segment calls inside the loop's transaction.
pub struct PendoTransformProcessor {
    role: &'static str,
    core: Arc<MappingCore>,
    output: TransactionalOutput,
    calls_topic: String,
    dlq_topic: String,
    parallelism: Parallelism,
    batch: Vec<RawRecord>,
    batch_bytes: usize,
    in_flight: VecDeque<InFlight>,
    topic_names: FxHashMap<String, Arc<str>>,
    kinds: BoundedLabel,
    fields: BoundedLabel,
    plan_events: BoundedLabel,
    /// Violation counters by (event label, rule).
    violation_counters: FxHashMap<(String, &'static str), IntCounter>,
    /// The `mapping-fingerprint` header of every canonical record.
    fingerprint: String,
    /// Counter handles by kind and outcome: label lookups hash strings, once per pair is enough.
    outcome_counters: FxHashMap<String, [Option<IntCounter>; 4]>,
    call_counters: FxHashMap<&'static str, IntCounter>,
}

impl PendoTransformProcessor {
    /// A processor writing through `output`, mapping `parallelism` records at once.
    pub fn with_parallelism(
        role: &'static str,
        mapper: PendoToSegment,
        codec: SegmentCallCodec,
        ids: IdMapTable,
        output: TransactionalOutput,
        topics: OutputTopics,
        parallelism: Parallelism,
    ) -> Self {
        let fingerprint = mapper.fingerprint();
        Self {
            role,
            fingerprint,
            core: Arc::new(MappingCore {
                mapper,
                codec,
                ids,
                sources: topics.sources,
                plan: None,
            }),
            output,
            calls_topic: topics.calls,
            dlq_topic: topics.dlq,
            parallelism: Parallelism {
                batch_records: parallelism.batch_records.max(1),
                batches_in_flight: parallelism.batches_in_flight.max(1),
            },
            batch: Vec::new(),
            batch_bytes: 0,
            in_flight: VecDeque::new(),
            topic_names: FxHashMap::default(),
            kinds: BoundedLabel::new(MAX_KIND_LABELS),
            fields: BoundedLabel::new(MAX_FIELD_LABELS),
            plan_events: BoundedLabel::new(MAX_PLAN_EVENT_LABELS),
            violation_counters: FxHashMap::default(),
            outcome_counters: FxHashMap::default(),
            call_counters: FxHashMap::default(),
        }
    }

    /// Checks every call against `plan` (policies included). Call before the first record.
    pub fn with_tracking_plan(mut self, plan: Option<TrackingPlan>) -> Self {
        let core = Arc::get_mut(&mut self.core).expect("no record processed yet");
        self.fingerprint = combined_fingerprint(
            &core.mapper.fingerprint(),
            plan.as_ref().map(TrackingPlan::fingerprint),
        );
        core.plan = plan;
        self
    }

    /// The fingerprint stamped on every record (`mapping-fingerprint` header).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The fingerprint of the mapping and the settings that shape calls, without the plan.
    pub fn mapping_fingerprint(&self) -> String {
        self.core.mapper.fingerprint()
    }

    /// The tracking plan's fingerprint, when a plan is checked.
    pub fn plan_fingerprint(&self) -> Option<&str> {
        self.core.plan.as_ref().map(TrackingPlan::fingerprint)
    }

    /// Hands the current batch to a worker thread.
    fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let core = self.core.clone();
        self.in_flight.push_back(InFlight {
            task: tokio::task::spawn_blocking(move || core.map_batch(batch)),
            discard: HashSet::new(),
        });
    }

    /// Waits for the oldest batch and writes its results.
    async fn emit_oldest(&mut self) -> Result<(), ProcessError> {
        let Some(job) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let results = job
            .task
            .await
            .map_err(|e| ProcessError::new("mapping", format!("mapping worker failed: {e}")))?;
        for r in results {
            if !job.discard.is_empty()
                && job
                    .discard
                    .contains(&(r.raw.topic.to_string(), r.raw.partition))
            {
                continue;
            }
            self.emit(r)?;
        }
        Ok(())
    }

    /// Writes one mapped record's output into the transaction and counts it.
    fn emit(&mut self, r: MappedRecord) -> Result<(), ProcessError> {
        let m = metrics();
        let role = self.role;
        let kind = self.kinds.label(if r.obs.kind.is_empty() {
            "none"
        } else {
            &r.obs.kind
        });
        let kind: &str = &kind;
        if r.obs.unknown_kind {
            m.unknown_kinds.with_label_values(&[role, kind]).inc();
        }
        for field in &r.obs.unknown_fields {
            let field = self.fields.label(field);
            m.unknown_fields
                .with_label_values(&[role, kind, &field])
                .inc();
        }
        for (event, rule) in &r.violations {
            let event = self.plan_events.label(event);
            let key = (event.into_owned(), *rule);
            if let Some(c) = self.violation_counters.get(&key) {
                c.inc();
            } else {
                let c = m
                    .tracking_plan_violations
                    .with_label_values(&[key.0.as_str(), key.1]);
                c.inc();
                self.violation_counters.insert(key, c);
            }
        }
        // One header: each costs the broker and the producer per record (a second one cost
        // 20 % of the throughput in `cargo bench --bench transform_pendo`). The kind is in the
        // record itself (`origin.kind`).
        let record_headers = [(headers::MAPPING_FINGERPRINT, self.fingerprint.as_bytes())];
        // Every call must fit the canonical topic before any of the event's calls is written.
        let result = match r.result {
            Mapped::Calls(calls) => {
                let too_large = calls.iter().find_map(|c| {
                    self.output
                        .limits()
                        .check(
                            &self.calls_topic,
                            c.key.as_deref().map(str::as_bytes),
                            &c.value,
                            record_headers,
                        )
                        .err()
                });
                match too_large {
                    None => Mapped::Calls(calls),
                    Some(e) => Mapped::DeadLetter {
                        reason: "output_too_large",
                        detail: e.to_string(),
                    },
                }
            }
            other => other,
        };
        let (slot, outcome) = match result {
            Mapped::Calls(calls) => {
                for call in calls {
                    self.output
                        .send(
                            &self.calls_topic,
                            call.key.as_deref().map(str::as_bytes),
                            &call.value,
                            &record_headers,
                        )
                        .map_err(|e| ProcessError::new("produce", e.to_string()))?;
                    self.call_counters
                        .entry(call.call_type)
                        .or_insert_with(|| {
                            m.transform_calls.with_label_values(&[role, call.call_type])
                        })
                        .inc();
                }
                (0, "mapped")
            }
            Mapped::Filtered => (1, "filtered"),
            Mapped::Dropped => (2, "dropped"),
            Mapped::DeadLetter { reason, detail } => {
                self.dead_letter(&r.raw, reason, &detail)?;
                (3, "dead_lettered")
            }
        };
        if !self.outcome_counters.contains_key(kind) {
            self.outcome_counters
                .insert(kind.to_string(), Default::default());
        }
        let slots = self.outcome_counters.get_mut(kind).expect("inserted");
        slots[slot]
            .get_or_insert_with(|| m.transform_events.with_label_values(&[role, kind, outcome]))
            .inc();
        Ok(())
    }

    fn dead_letter(&self, raw: &RawRecord, reason: &str, detail: &str) -> Result<(), ProcessError> {
        send_dead_letter(
            &self.output,
            &self.dlq_topic,
            self.role,
            &DeadLetterSource {
                topic: &raw.topic,
                partition: raw.partition,
                offset: raw.offset,
                key: raw.key.as_deref(),
                payload: &raw.payload,
                headers: raw.headers.as_ref(),
            },
            reason,
            detail,
        )
    }

    fn topic_name(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topic_names.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = topic.into();
        self.topic_names.insert(topic.to_string(), t.clone());
        t
    }
}

/// The fingerprint of a mapper with a tracking plan: one value for both, so one header and one
/// label say which rules made a call. Without a plan it is the mapper's own.
pub fn combined_fingerprint(mapper: &str, plan: Option<&str>) -> String {
    match plan {
        None => mapper.to_string(),
        Some(plan) => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(b"pendo-segment/mapping+plan/v1\0");
            h.update(mapper.as_bytes());
            h.update(b"\0");
            h.update(plan.as_bytes());
            crate::transform::canonical_json::hex16(&h.finalize())
        }
    }
}

impl RecordProcessor for PendoTransformProcessor {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let payload = record.payload().unwrap_or_default().to_vec();
        self.batch_bytes += payload.len();
        let topic = self.topic_name(record.topic());
        // Read once; copied only when there are any (a copy is an allocation and a free in
        // librdkafka per record; they are kept for dead letters only).
        let record_headers = record.headers().filter(|h| h.count() > 0);
        self.batch.push(RawRecord {
            topic,
            partition: record.partition(),
            offset: record.offset(),
            key: record.key().map(<[u8]>::to_vec),
            payload,
            received_at: record_headers.and_then(received_at_of),
            headers: record_headers.map(|h| h.detach()),
        });
        if self.batch.len() >= self.parallelism.batch_records || self.batch_bytes >= MAX_BATCH_BYTES
        {
            self.submit();
        }
        // Write finished batches in order; wait when too many are in flight (bounded memory).
        while self.in_flight.front().is_some_and(|j| j.task.is_finished())
            || self.in_flight.len() > self.parallelism.batches_in_flight
        {
            self.emit_oldest().await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        // Everything processed so far goes into the transaction before the loop commits it.
        self.submit();
        while !self.in_flight.is_empty() {
            self.emit_oldest().await?;
        }
        Ok(())
    }

    fn partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        let revoked: HashSet<&TopicPartition> = partitions.iter().collect();
        self.batch
            .retain(|r| !revoked.contains(&(r.topic.to_string(), r.partition)));
        self.batch_bytes = self.batch.iter().map(|r| r.payload.len()).sum();
        for job in &mut self.in_flight {
            job.discard.extend(partitions.iter().cloned());
        }
    }
}
