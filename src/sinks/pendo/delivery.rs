//! Delivering one job (a partition's closed batch: one request per entity kind and field
//! group) until every update in it is either applied by Pendo or written to `dlq.pendo-sink`
//! — only then may the sink commit past it.
//!
//! Per request: wait out a sink-wide `Retry-After` pause, send, classify. Network errors,
//! timeouts, 408/409/429 and 5xx are retried with jittered exponential backoff (the shared
//! [`Backoff`]); 401/403 and wrong endpoints are retried the same way but logged as errors
//! naming `pendo.integration_key` / `pendo.region`, since only an operator can fix them —
//! nothing is dropped or dead-lettered for them. A 2xx is read item by item
//! ([`parse_outcome`]): failed items are dead-lettered (every record merged into them), an
//! answer of unknown shape makes the whole request count as failed and retried. A 400 splits
//! the request until the refused item is alone, and that item is dead-lettered.

use std::collections::HashMap;

use super::audience_lists::{AudienceListState, Lists, apply_changes, encode_lists, state_key};
use super::config::metadata_url;
use super::encoding::{Contributor, EntityWrite, GroupBatch, ItemFailure, PendoJob, parse_outcome};
use crate::http::outcome::Outcome;
use crate::http::retry::Pacing;
use crate::internal_events::{FailedAttempt, PendoWriteRetried, emit};
use crate::kafka::record_size::{fits, record_bytes};
use crate::kafka::topics::TopicId;
use crate::metrics::metrics;
use crate::pendo_api::client::PendoClient;
use crate::schema::PendoMetadataUpdateCodec;
use crate::schema::pendo_metadata_update::PendoEntity;
use crate::sinks::dead_letter::SinkDeadLetters;
use crate::sinks::queue::DeliveryError;

/// What every delivery task shares.
pub struct PendoDeliveryContext {
    /// The HTTP client.
    pub client: PendoClient,
    /// `?create=true` on writes.
    pub create: bool,
    /// Rate limit, sink-wide `Retry-After` pause and backoff of every request to Pendo.
    pub pacing: Pacing,
    /// Dead letters (`dlq.pendo-sink`).
    pub dead_letters: SinkDeadLetters,
    /// The consumed topic (dead letters' source header).
    pub source_topic: String,
    /// Stage name.
    pub role: &'static str,
    /// Pendo Segments' ids and locks (when an audience targets a Pendo Segment).
    pub segments: Option<std::sync::Arc<super::segments::SegmentState>>,
    /// Visitors per Pendo Segment request at most.
    pub segment_request_visitors: usize,
    /// `canonical.pendo-segment-changes` (dead letters' source header).
    pub segment_source_topic: String,
    /// Current audience lists (when `transform_segment.field_mode` writes the list field).
    pub audience_lists: Option<std::sync::Arc<AudienceListState>>,
    /// Decodes a refused coalesced item's records again, to send them one by one.
    pub codec: PendoMetadataUpdateCodec,
}

/// Counts one answer of Pendo (or its absence) in `pendo_segment_pendo_sink_requests_total` and
/// times it in `pendo_segment_pendo_sink_request_duration_seconds`: every write of the sink is
/// counted here.
pub(super) fn answered(r: &crate::pendo_api::client::PendoResponse) {
    let m = metrics();
    m.pendo_sink_requests
        .with_label_values(&[&crate::http::outcome::status_label(r.status)])
        .inc();
    m.pendo_sink_request_duration
        .observe(r.elapsed.as_secs_f64());
}

/// Whether a refused item is worth sending again record by record: it merged several records
/// and Pendo refused its content (`rejected`, e.g. one record's field that does not exist), so
/// the other records may be fine. Not for `missing` (the entity is unknown to every record) nor
/// for audience lists (each record's list depends on the ones before it).
fn is_isolatable(f: &ItemFailure, w: &EntityWrite) -> bool {
    f.reason == "rejected" && w.contributors.len() > 1 && w.list_changes.is_empty()
}

impl PendoDeliveryContext {
    /// Delivers every request of `job` (see the module docs). Errors only when a dead letter
    /// cannot be written.
    pub async fn deliver(&self, mut job: PendoJob) -> Result<(), DeliveryError> {
        let too_large = self.resolve_lists(&mut job);
        for (w, detail) in too_large {
            self.dead_letter_write(&w, "audience_lists_too_large", &detail)
                .await?;
        }
        for (_, batch) in job.groups {
            self.deliver_group(batch).await?;
        }
        // One segment after the other: never two requests to one segment in flight.
        for (_, batch) in job.segments {
            self.deliver_segment(batch).await?;
        }
        Ok(())
    }

    /// Audience lists: applies each entity's deltas, in record order, to its current lists
    /// (one job per partition is in flight, so the previous job's state is in memory) and puts
    /// the full lists of the fields they touch into the item's values. Batches of one job are
    /// resolved in order over a job-local overlay, so an entity in two batches (two field
    /// groups) sees its own earlier deltas.
    ///
    /// An entity whose lists would no longer fit one record of the state topic (thousands of
    /// long audience keys) is taken out of the job and returned with the reason, to be
    /// dead-lettered: its state stays as it was, and the job never waits for a state write
    /// Kafka would refuse for ever.
    fn resolve_lists(&self, job: &mut PendoJob) -> Vec<(EntityWrite, String)> {
        let Some(state) = &self.audience_lists else {
            return Vec::new();
        };
        let limit = TopicId::StatePendoAudienceLists.max_message_bytes();
        let mut overlay: HashMap<String, Lists> = HashMap::new();
        let mut refused = Vec::new();
        for batch in job.groups.values_mut() {
            let entity = batch.entity;
            let mut too_large: HashMap<String, String> = HashMap::new();
            for w in &mut batch.writes {
                if w.list_changes.is_empty() {
                    continue;
                }
                let p = w.contributors.first().map_or(0, |c| c.partition);
                let key = state_key(entity, &w.id);
                let current = overlay
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| state.current(p, &key));
                let (lists, values) = apply_changes(&current, &w.list_changes);
                let bytes = record_bytes(Some(key.as_bytes()), &encode_lists(&lists), []);
                if !fits(bytes, limit) {
                    too_large.insert(
                        w.id.clone(),
                        format!(
                            "the entity's audience lists would be {bytes} bytes, more than one record of {} holds ({limit}); the update is not applied",
                            state.topic()
                        ),
                    );
                    continue;
                }
                w.values.extend(values);
                overlay.insert(key, lists.clone());
                w.list_state = Some(lists);
            }
            if !too_large.is_empty() {
                for w in batch.remove_writes(|w| too_large.contains_key(&w.id)) {
                    let detail = too_large.remove(&w.id).unwrap_or_default();
                    refused.push((w, detail));
                }
            }
        }
        refused
    }

    /// After Pendo applied the items `applied`: their new audience lists are written to the
    /// state topic (all at once) and acknowledged (each retried until it is) before the job
    /// may report its offsets done. Dead-lettered items are not in `applied`: their state
    /// stays as it was.
    async fn record_lists(&self, entity: PendoEntity, applied: &[&EntityWrite]) {
        let Some(state) = &self.audience_lists else {
            return;
        };
        let writes = applied.iter().filter_map(|w| {
            let lists = w.list_state.as_ref()?;
            let p = w.contributors.first().map_or(0, |c| c.partition);
            let key = state_key(entity, &w.id);
            Some(async move { state.record(p, &key, lists).await })
        });
        futures::future::join_all(writes).await;
    }

    async fn deliver_group(&self, batch: GroupBatch) -> Result<(), DeliveryError> {
        let m = metrics();
        let url = metadata_url(self.client.base(), batch.entity, &batch.group, self.create);
        // Depth-first so items keep their order when a batch is split.
        let mut work = vec![batch];
        while let Some(batch) = work.pop() {
            let mut retry = self.pacing.start();
            loop {
                retry.attempt_of(batch.len()).await;
                let r = self.client.post(&url, batch.body()).await;
                answered(&r);
                let retry_reason = match r.outcome() {
                    Outcome::Success => {
                        let sent: Vec<&str> = batch.writes.iter().map(|w| w.id.as_str()).collect();
                        match parse_outcome(&r.body, &sent) {
                            Ok(failures) => {
                                m.pendo_sink_backpressure.set(0);
                                let mut applied = Vec::new();
                                let mut isolate = Vec::new();
                                for w in &batch.writes {
                                    match failures.iter().find(|f| f.id == w.id) {
                                        Some(f) if is_isolatable(f, w) => isolate.push(w),
                                        Some(f) => {
                                            self.dead_letter_write(w, f.reason, &f.detail).await?
                                        }
                                        None => {
                                            applied.push(w);
                                            m.pendo_sink_updates_written
                                                .with_label_values(&[batch.id_key()])
                                                .inc()
                                        }
                                    }
                                }
                                self.record_lists(batch.entity, &applied).await;
                                // Records coalesced into a refused item are sent again one by
                                // one (in order, stack: last pushed is sent first), so only
                                // the ones Pendo refuses are dead-lettered.
                                for w in &isolate {
                                    m.pendo_sink_retries
                                        .with_label_values(&["isolating_refused_item"])
                                        .inc();
                                    tracing::warn!(role = self.role, id = %w.id, records = w.contributors.len(),
                                        "Pendo refused a coalesced item; its records are sent one by one to find the refused ones");
                                    for single in self
                                        .one_batch_per_record(&batch, w)
                                        .await?
                                        .into_iter()
                                        .rev()
                                    {
                                        work.push(single);
                                    }
                                }
                                break;
                            }
                            Err(e) => {
                                tracing::error!(role = self.role, problem = %e, answer = %r.describe(),
                                    "Pendo's answer has an unknown shape; the whole request is retried");
                                "unknown_answer"
                            }
                        }
                    }
                    Outcome::Invalid => {
                        match batch.split() {
                            Ok((first, second)) => {
                                work.push(second);
                                work.push(first);
                            }
                            Err(single) => {
                                for w in &single.writes {
                                    self.dead_letter_write(w, "rejected", &r.describe()).await?;
                                }
                            }
                        }
                        break;
                    }
                    outcome => outcome.as_str(),
                };
                let wait = retry.after_failure(r.retry_after);
                emit(PendoWriteRetried {
                    role: self.role,
                    request: "metadata",
                    reason: retry_reason,
                    attempt: FailedAttempt {
                        outcome: r.outcome(),
                        answer: &r.describe(),
                        retry_in: wait.delay,
                        peer_asked: wait.peer_asked,
                    },
                });
                wait.elapse().await;
            }
        }
        Ok(())
    }

    /// One single-item batch per record merged into `w`, in record order: each record decoded
    /// again from its original bytes (one that no longer decodes is dead-lettered).
    async fn one_batch_per_record(
        &self,
        batch: &GroupBatch,
        w: &EntityWrite,
    ) -> Result<Vec<GroupBatch>, DeliveryError> {
        let mut out = Vec::with_capacity(w.contributors.len());
        for c in &w.contributors {
            match self.codec.decode(&c.original) {
                Ok(update) => {
                    let mut single = GroupBatch::new(batch.entity, &batch.group);
                    single.push(update, c.clone());
                    out.push(single);
                }
                Err(e) => {
                    let one = EntityWrite {
                        contributors: vec![c.clone()],
                        ..w.clone()
                    };
                    self.dead_letter_write(&one, "undecodable", &e).await?;
                }
            }
        }
        Ok(out)
    }

    async fn dead_letter_write(
        &self,
        w: &EntityWrite,
        reason: &str,
        detail: &str,
    ) -> Result<(), DeliveryError> {
        self.dead_letter_contributors(&self.source_topic, &w.contributors, reason, detail)
            .await
    }

    /// Dead-letters every record merged into a refused item, read from `source_topic`.
    pub(super) async fn dead_letter_contributors(
        &self,
        source_topic: &str,
        contributors: &[Contributor],
        reason: &str,
        detail: &str,
    ) -> Result<(), DeliveryError> {
        for c in contributors {
            self.dead_letters
                .write(
                    source_topic,
                    (c.partition, c.offset),
                    c.key.as_deref(),
                    &c.original,
                    reason,
                    detail,
                )
                .await?;
        }
        Ok(())
    }
}
