//! The stream side of the Segment sink: a [`RecordProcessor`] for the shared consumer loop
//! (consumer-offset commits).
//!
//! Records are decoded and validated one by one (bad ones are dead-lettered at once), gathered
//! into one open batch per partition, and a full or lingering batch is handed to a delivery task.
//! At most one batch per partition is in flight (one ordered stream per partition, so per-user
//! order holds) and at most `max_in_flight_requests` overall. `checkpoint` sends the open batches
//! and waits until every batch is delivered or dead-lettered; only then does the loop commit the
//! offsets, so an offset is never committed over an unacknowledged event. Revoked partitions'
//! open batches are dropped (their records are re-read by the next owner; deterministic
//! messageIds make Segment drop any re-delivery).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use tokio::task::JoinHandle;

use super::batch::{BatchLimits, RejectReason, SegmentBatch};
use super::delivery::{BatchToDeliver, DeliveryContext, DeliveryError, dead_letter};
use super::encoding::encode_event;
use crate::kafka::consumer_loop::{ProcessError, RecordProcessor};
use crate::kafka::context::TopicPartition;
use crate::metrics::metrics;
use crate::schema::SegmentCallCodec;

struct OpenBatch {
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
}

/// Batches canonical Segment calls per partition and delivers them.
pub struct SegmentSinkProcessor {
    ctx: Arc<DeliveryContext>,
    codec: SegmentCallCodec,
    limits: BatchLimits,
    max_event_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    open: HashMap<TopicPartition, OpenBatch>,
    in_flight: HashMap<TopicPartition, JoinHandle<Result<(), DeliveryError>>>,
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
        Self {
            ctx,
            codec,
            limits,
            max_event_bytes,
            linger,
            max_in_flight: max_in_flight.max(1),
            open: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    async fn reject(
        &self,
        record: &BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        dead_letter(
            &self.ctx.dlq,
            &self.ctx.dlq_topic,
            self.ctx.stage,
            record.topic(),
            (record.partition(), record.offset()),
            record.key(),
            record.payload().unwrap_or_default(),
            reason,
            detail,
        )
        .await
        .map_err(|e| ProcessError::new("produce", e.0))
    }

    async fn join(handle: JoinHandle<Result<(), DeliveryError>>) -> Result<(), ProcessError> {
        let r = handle
            .await
            .map_err(|e| ProcessError::new("delivery", format!("delivery task failed: {e}")))?
            .map_err(|e| ProcessError::new("produce", e.0));
        metrics().segment_in_flight_batches.dec();
        r
    }

    /// Hands the open batch of `tp` to a delivery task (after its previous one finished).
    async fn dispatch(&mut self, tp: &TopicPartition) -> Result<(), ProcessError> {
        let Some(open) = self.open.remove(tp) else {
            return Ok(());
        };
        if open.batch.is_empty() {
            return Ok(());
        }
        if let Some(previous) = self.in_flight.remove(tp) {
            Self::join(previous).await?;
        }
        while self.in_flight.len() >= self.max_in_flight {
            let key = self
                .in_flight
                .iter()
                .find(|(_, h)| h.is_finished())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| self.in_flight.keys().next().cloned().expect("non-empty"));
            let h = self.in_flight.remove(&key).expect("present");
            Self::join(h).await?;
        }
        let ctx = self.ctx.clone();
        metrics().segment_in_flight_batches.inc();
        let job = BatchToDeliver {
            batch: open.batch,
            received_at: open.received_at,
            originals: open.originals,
            keys: open.keys,
        };
        self.in_flight.insert(
            tp.clone(),
            tokio::spawn(async move { ctx.deliver(job).await }),
        );
        Ok(())
    }
}

impl RecordProcessor for SegmentSinkProcessor {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let value = record.payload().unwrap_or_default();
        let mut call = match self.codec.decode(value) {
            Ok(c) => c,
            Err(e) => return self.reject(record, "undecodable", &e.to_string()).await,
        };
        let received_at = call.origin.received_at;
        let event = match encode_event(&mut call, self.max_event_bytes) {
            Ok(e) => e.at(record.partition(), record.offset()),
            Err(invalid) => {
                return self
                    .reject(record, invalid.reason.as_str(), &invalid.detail)
                    .await;
            }
        };
        let tp: TopicPartition = (record.topic().to_string(), record.partition());
        let limits = self.limits;
        let original: Arc<[u8]> = value.into();
        let key: Option<Arc<[u8]>> = record.key().map(Into::into);
        let mut pending = Some(event);
        while let Some(event) = pending.take() {
            let open = self
                .open
                .entry(tp.clone())
                .or_insert_with(|| OpenBatch::new(limits));
            match open.batch.push(event) {
                Ok(()) => {
                    open.received_at.push(received_at);
                    open.originals.push(original.clone());
                    open.keys.push(key.clone());
                }
                Err(rejected) if rejected.reason == RejectReason::TooLarge => {
                    return self
                        .reject(
                            record,
                            "too_large",
                            "the event does not fit in an empty request body",
                        )
                        .await;
                }
                Err(rejected) => {
                    self.dispatch(&tp).await?;
                    pending = Some(rejected.event);
                }
            }
        }
        if self.open.get(&tp).is_some_and(|o| o.batch.is_full()) {
            self.dispatch(&tp).await?;
        }
        // Lingering batches of other partitions go out too.
        let lingering: Vec<TopicPartition> = self
            .open
            .iter()
            .filter(|(_, o)| {
                o.batch
                    .opened_at()
                    .is_some_and(|t| t.elapsed() >= self.linger)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for tp in lingering {
            self.dispatch(&tp).await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        let open: Vec<TopicPartition> = self.open.keys().cloned().collect();
        for tp in open {
            self.dispatch(&tp).await?;
        }
        let in_flight: Vec<_> = self.in_flight.drain().map(|(_, h)| h).collect();
        for h in in_flight {
            Self::join(h).await?;
        }
        Ok(())
    }

    fn partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.open.remove(tp);
        }
    }
}
