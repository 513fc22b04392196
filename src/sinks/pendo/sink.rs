//! The stream side of the Pendo sink: a [`RecordProcessor`] for the shared consumer loop with
//! the `Acknowledged` commit strategy, on the sinks' shared [`PartitionQueues`] (the Segment
//! sink's queue discipline).
//!
//! Updates are decoded and checked one by one (bad ones dead-lettered at once) and merged into
//! one open [`PendoJob`] per partition, coalescing updates of the same visitor/account. A job is
//! closed when one of its batches holds `max_batch_entities` items or it lingered. At most one
//! job per partition is in flight, so writes to one visitor are never concurrent (Pendo answers
//! 409 to that), and at most `max_in_flight_requests` overall; offsets are committed only past
//! jobs whose every update was applied or dead-lettered. Revoked partitions' jobs are abandoned
//! uncommitted (writes are idempotent, so a re-read only repeats them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use super::audience_lists::AudienceListState;
use super::delivery::PendoDeliveryContext;
use super::encoding::{Contributor, PendoJob, validate_update};
use super::segments::validate_change;
use crate::kafka::consumer_loop::ProcessError;
use crate::kafka::context::{RevocationBarrier, TopicPartition};
use crate::metrics::metrics;
use crate::schema::{PendoMetadataUpdateCodec, PendoSegmentChangeCodec};
use crate::sinks::QueuedSink;
use crate::sinks::queue::{Deliver, PartitionQueues, SinkJob};

impl SinkJob for PendoJob {
    fn is_empty(&self) -> bool {
        PendoJob::is_empty(self)
    }

    fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    fn linger(&self) -> Option<Duration> {
        self.linger
    }

    /// Metadata updates go as soon as the input is drained; a job holding Pendo Segment changes
    /// keeps its (segment) linger, so a trickle of audience changes is not one segment rewrite
    /// each.
    fn sends_when_drained(&self) -> bool {
        self.segments.values().all(|b| b.is_empty())
    }
}

/// How the sink reads `canonical.pendo-segment-changes` (when an audience targets a Pendo
/// Segment).
pub struct SegmentInput {
    /// The topic's name.
    pub topic: String,
    /// Decoder.
    pub codec: PendoSegmentChangeCodec,
    /// Distinct visitors of one segment before its batch is closed.
    pub batch_visitors: usize,
    /// Longest a change waits for its batch.
    pub linger: Duration,
}

/// Batches Pendo metadata updates per partition and writes them.
pub struct PendoSinkProcessor {
    ctx: Arc<PendoDeliveryContext>,
    codec: PendoMetadataUpdateCodec,
    max_batch_entities: usize,
    segment_input: Option<SegmentInput>,
    queues: PartitionQueues<PendoJob>,
}

impl PendoSinkProcessor {
    /// A processor delivering through `ctx`.
    pub fn new(
        ctx: Arc<PendoDeliveryContext>,
        codec: PendoMetadataUpdateCodec,
        max_batch_entities: usize,
        linger: Duration,
        max_in_flight: usize,
    ) -> Self {
        let c = ctx.clone();
        let deliver: Deliver<PendoJob> = Arc::new(move |job| {
            let c = c.clone();
            Box::pin(async move { c.deliver(job).await })
        });
        Self {
            ctx,
            codec,
            max_batch_entities: max_batch_entities.max(1),
            segment_input: None,
            queues: PartitionQueues::new(
                deliver,
                linger,
                max_in_flight,
                metrics().pendo_sink_in_flight.clone(),
            ),
        }
    }

    /// Also reads Pendo Segment changes from `input.topic`.
    pub fn with_segments(mut self, input: SegmentInput) -> Self {
        self.segment_input = Some(input);
        self
    }

    async fn process_segment_change(
        &mut self,
        record: &BorrowedMessage<'_>,
    ) -> Result<(), ProcessError> {
        let input = self.segment_input.as_ref().expect("checked by the caller");
        let value = record.payload().unwrap_or_default();
        let change = match input.codec.decode(value) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .queues
                    .reject(&self.ctx.dead_letters, record, "undecodable", &e)
                    .await;
            }
        };
        if let Err(e) = validate_change(&change) {
            return self
                .queues
                .reject(&self.ctx.dead_letters, record, "invalid_update", &e)
                .await;
        }
        let (max, linger) = (input.batch_visitors.max(1), input.linger);
        let tp: TopicPartition = (record.topic().to_string(), record.partition());
        let contributor = Contributor::of(record, change.origin.received_at);
        let (coalesced, size) = self
            .queues
            .open_mut(&tp)
            .get_or_insert_with(PendoJob::default)
            .push_segment(change, contributor, linger);
        self.queues.took(&tp, record.offset() + 1);
        if coalesced {
            metrics().pendo_sink_updates_coalesced.inc();
        }
        if size >= max {
            self.queues.close(&tp);
        }
        self.queues.after_record(&tp).await
    }

    /// Reads the audience-list state of `partition` before its first record with list changes
    /// is taken after an assignment (a job computes lists from it when delivered).
    async fn ensure_lists_loaded(
        &self,
        state: &AudienceListState,
        partition: i32,
    ) -> Result<(), ProcessError> {
        if state.is_loaded(partition) {
            return Ok(());
        }
        let n = state
            .load(partition)
            .await
            .map_err(|e| ProcessError::new("audience_list_state", e))?;
        tracing::info!(
            partition,
            entities = n,
            topic = state.topic(),
            "audience-list state read"
        );
        Ok(())
    }
}

impl QueuedSink for PendoSinkProcessor {
    type Job = PendoJob;

    fn queues(&mut self) -> &mut PartitionQueues<PendoJob> {
        &mut self.queues
    }

    fn queues_ref(&self) -> &PartitionQueues<PendoJob> {
        &self.queues
    }

    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        if self
            .segment_input
            .as_ref()
            .is_some_and(|i| i.topic == record.topic())
        {
            return self.process_segment_change(record).await;
        }
        let value = record.payload().unwrap_or_default();
        let update = match self.codec.decode(value) {
            Ok(u) => u,
            Err(e) => {
                return self
                    .queues
                    .reject(&self.ctx.dead_letters, record, "undecodable", &e)
                    .await;
            }
        };
        if let Err(e) = validate_update(&update) {
            return self
                .queues
                .reject(&self.ctx.dead_letters, record, "invalid_update", &e)
                .await;
        }
        if !update.list_changes.is_empty() {
            let Some(state) = self.ctx.audience_lists.clone() else {
                return self
                    .queues
                    .reject(
                        &self.ctx.dead_letters,
                        record,
                        "invalid_update",
                        "the update carries audience-list changes but this pendo-sink keeps no audience lists: set transform_segment.mapping.field_mode = \"audience_list\" (or \"both\") in its configuration too",
                    )
                    .await;
            };
            self.ensure_lists_loaded(&state, record.partition()).await?;
        }
        let tp: TopicPartition = (record.topic().to_string(), record.partition());
        let contributor = Contributor::of(record, update.origin.received_at);
        let (coalesced, size) = self
            .queues
            .open_mut(&tp)
            .get_or_insert_with(PendoJob::default)
            .push(update, contributor);
        self.queues.took(&tp, record.offset() + 1);
        if coalesced {
            metrics().pendo_sink_updates_coalesced.inc();
        }
        if size >= self.max_batch_entities {
            self.queues.close(&tp);
        }
        self.queues.after_record(&tp).await
    }

    fn revocation_barrier(&self) -> Option<RevocationBarrier> {
        let state = self.ctx.audience_lists.clone()?;
        let source_topic = self.ctx.source_topic.clone();
        Some(Arc::new(move |partitions: &[TopicPartition]| {
            let ps: Vec<i32> = partitions
                .iter()
                .filter(|(t, _)| *t == source_topic)
                .map(|(_, p)| *p)
                .collect();
            state.fence(&ps);
        }))
    }

    fn partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        if let Some(state) = &self.ctx.audience_lists {
            let ps: Vec<i32> = partitions
                .iter()
                .filter(|(t, _)| *t == self.ctx.source_topic)
                .map(|(_, p)| *p)
                .collect();
            state.revoke(&ps);
        }
    }
}
