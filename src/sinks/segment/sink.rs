//! The stream side of the Segment sink: a [`RecordProcessor`] for the shared consumer loop with
//! the `Acknowledged` commit strategy, on the sinks' shared [`PartitionQueues`].
//!
//! Records are decoded and validated one by one (bad ones are dead-lettered at once) and gathered
//! into one open batch per partition. A full or lingering batch is closed and queued; at most one
//! batch per partition is in flight (one ordered stream per partition, so per-user order holds)
//! and at most `max_in_flight_requests` overall. The queues ([`crate::sinks::queue`]) commit
//! only past acknowledged or dead-lettered events, apply flow control, and pause a partition
//! that stays backed up, keeping the group membership through an outage of any length.
//! Revoked partitions' batches are abandoned uncommitted (the next owner re-reads them;
//! deterministic messageIds make Segment drop any re-delivery).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use super::batch::{BatchLimits, RejectReason, SegmentBatch};
use super::delivery::{BatchToDeliver, DeliveryContext};
use super::encoding::encode_event;
use crate::kafka::consumer_loop::ProcessError;
use crate::kafka::context::TopicPartition;
use crate::metrics::metrics;
use crate::schema::SegmentCallCodec;
use crate::sinks::QueuedSink;
use crate::sinks::queue::{Deliver, PartitionQueues, SinkJob};

/// A partition's open batch and the per-event data delivery needs.
pub struct OpenBatch {
    batch: SegmentBatch,
    received_at: Vec<Option<i64>>,
    originals: Vec<Arc<[u8]>>,
    keys: Vec<Option<Arc<[u8]>>>,
}

impl OpenBatch {
    fn new(limits: BatchLimits) -> Self {
        Self {
            batch: SegmentBatch::new(limits),
            received_at: Vec::new(),
            originals: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn into_job(self) -> BatchToDeliver {
        BatchToDeliver {
            batch: self.batch,
            received_at: self.received_at,
            originals: self.originals,
            keys: self.keys,
        }
    }
}

impl SinkJob for OpenBatch {
    fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    fn opened_at(&self) -> Option<Instant> {
        self.batch.opened_at()
    }
}

/// Batches canonical Segment calls per partition and delivers them.
pub struct SegmentSinkProcessor {
    ctx: Arc<DeliveryContext>,
    codec: SegmentCallCodec,
    limits: BatchLimits,
    max_event_bytes: usize,
    queues: PartitionQueues<OpenBatch>,
}

impl SegmentSinkProcessor {
    /// A processor delivering through `ctx`.
    pub fn new(
        ctx: Arc<DeliveryContext>,
        codec: SegmentCallCodec,
        limits: BatchLimits,
        max_event_bytes: usize,
        linger: Duration,
        max_in_flight: usize,
    ) -> Self {
        let c = ctx.clone();
        let deliver: Deliver<OpenBatch> = Arc::new(move |open: OpenBatch| {
            let c = c.clone();
            Box::pin(async move { c.deliver(open.into_job()).await })
        });
        Self {
            ctx,
            codec,
            limits,
            max_event_bytes,
            queues: PartitionQueues::new(
                deliver,
                linger,
                max_in_flight,
                metrics().segment_in_flight_batches.clone(),
            ),
        }
    }
}

impl QueuedSink for SegmentSinkProcessor {
    type Job = OpenBatch;

    fn queues(&mut self) -> &mut PartitionQueues<OpenBatch> {
        &mut self.queues
    }

    fn queues_ref(&self) -> &PartitionQueues<OpenBatch> {
        &self.queues
    }

    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let value = record.payload().unwrap_or_default();
        let mut call = match self.codec.decode(value) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .queues
                    .reject(
                        &self.ctx.dead_letters,
                        record,
                        "undecodable",
                        &e.to_string(),
                    )
                    .await;
            }
        };
        let received_at = call.origin.received_at;
        let event = match encode_event(&mut call, self.max_event_bytes) {
            Ok(e) => e.at(record.partition(), record.offset()),
            Err(invalid) => {
                return self
                    .queues
                    .reject(
                        &self.ctx.dead_letters,
                        record,
                        invalid.reason.as_str(),
                        &invalid.detail,
                    )
                    .await;
            }
        };
        let tp: TopicPartition = (record.topic().to_string(), record.partition());
        let limits = self.limits;
        let mut pending = Some(event);
        while let Some(event) = pending.take() {
            let open = self
                .queues
                .open_mut(&tp)
                .get_or_insert_with(|| OpenBatch::new(limits));
            match open.batch.push(event) {
                Ok(()) => {
                    open.received_at.push(received_at);
                    open.originals.push(value.into());
                    open.keys.push(record.key().map(Into::into));
                    self.queues.took(&tp, record.offset() + 1);
                }
                Err(rejected) if rejected.reason == RejectReason::TooLarge => {
                    return self
                        .queues
                        .reject(
                            &self.ctx.dead_letters,
                            record,
                            "too_large",
                            "the event does not fit in an empty request body",
                        )
                        .await;
                }
                Err(rejected) => {
                    self.queues.close(&tp);
                    pending = Some(rejected.event);
                }
            }
        }
        if self.queues.open(&tp).is_some_and(|o| o.batch.is_full()) {
            self.queues.close(&tp);
        }
        self.queues.after_record(&tp).await
    }
}
