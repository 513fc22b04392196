//! The stream side of the Segment sink: a [`RecordProcessor`] for the shared consumer loop with
//! the `Acknowledged` commit strategy.
//!
//! Records are decoded and validated one by one (bad ones are dead-lettered at once) and gathered
//! into one open batch per partition. A full or lingering batch is closed and queued; at most one
//! batch per partition is in flight (one ordered stream per partition, so per-user order holds)
//! and at most `max_in_flight_requests` overall. Nothing waits for Segment longer than a second:
//! a delivery task reports back when its batch is acknowledged or dead-lettered, and only then
//! does the partition's done offset move past it ([`progress`](RecordProcessor::progress)); the
//! loop commits done offsets only, so an offset is never committed over an unacknowledged event.
//! When two closed batches per in-flight slot are queued and every slot is busy (or four per
//! slot are queued), `process` waits for a slot (flow control while Segment keeps up); if none frees within a second, the partition is backed up:
//! the loop pauses it (bounding memory to that queue plus an open batch per partition), resumes
//! it when it drains, and keeps polling Kafka meanwhile, so the member stays in its group
//! through an outage of any length.
//! Revoked partitions' batches are abandoned uncommitted (the next owner re-reads them;
//! deterministic messageIds make Segment drop any re-delivery).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use tokio::sync::{Notify, mpsc};
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

    fn into_job(self) -> BatchToDeliver {
        BatchToDeliver {
            batch: self.batch,
            received_at: self.received_at,
            originals: self.originals,
            keys: self.keys,
        }
    }
}

/// A closed batch and the offset after the last record it accounts for (its own events and any
/// dead-lettered records between them).
struct ClosedBatch {
    job: BatchToDeliver,
    end: i64,
}

/// One partition's ordered stream of work.
struct PartitionWork {
    /// Tells this assignment's completions from those of an earlier one.
    generation: u64,
    open: Option<OpenBatch>,
    /// Offset after the last record taken in (events in `open`, or dead-lettered since).
    taken_end: Option<i64>,
    queued: VecDeque<ClosedBatch>,
    /// The batch being delivered: its end offset and task.
    in_flight: Option<(i64, JoinHandle<()>)>,
    /// Every record below this offset is acknowledged or dead-lettered.
    done: Option<i64>,
    /// Set when the sink's queue stayed full for [`WAIT_BEFORE_PAUSE`] after a record of this
    /// partition; cleared once this partition has nothing queued and the sink's queue has room.
    /// The partition is paused in between.
    backed_up: bool,
}

impl PartitionWork {
    fn is_idle(&self) -> bool {
        self.open.as_ref().is_none_or(|o| o.batch.is_empty())
            && self.queued.is_empty()
            && self.in_flight.is_none()
    }
}

/// Closed batches queued (all partitions together) per allowed in-flight request before
/// `process` waits while every slot is busy: enough that each slot has a next batch ready.
const QUEUED_PER_SLOT: usize = 2;

/// Closed batches queued per slot before `process` waits even with a slot free. Kafka hands
/// out records a partition at a time, and a partition has one batch in flight at most, so the
/// queue may have to hold batches of a few partitions before one of another partition can use
/// the free slot; this bounds how many.
const QUEUED_PER_SLOT_MAX: usize = 4;

/// How long `process` waits for the queue to make room before asking the loop to pause the
/// partition. While Segment keeps up, a batch finishes well within this and nothing is paused:
/// a pause makes librdkafka drop what it prefetched for the partition and fetch it again, which
/// cost 6x the throughput when every full batch paused (measured with `benches/segment_sink.rs`).
/// During an outage partitions are paused after this, and the loop keeps polling.
const WAIT_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// A delivery task's report.
struct Completion {
    tp: TopicPartition,
    generation: u64,
    result: Result<(), DeliveryError>,
}

/// Batches canonical Segment calls per partition and delivers them.
pub struct SegmentSinkProcessor {
    ctx: Arc<DeliveryContext>,
    codec: SegmentCallCodec,
    limits: BatchLimits,
    max_event_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    in_flight: usize,
    next_generation: u64,
    partitions: HashMap<TopicPartition, PartitionWork>,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    news: Arc<Notify>,
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
        let (completions_tx, completions) = mpsc::unbounded_channel();
        Self {
            ctx,
            codec,
            limits,
            max_event_bytes,
            linger,
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            next_generation: 0,
            partitions: HashMap::new(),
            completions_tx,
            completions,
            news: Arc::new(Notify::new()),
        }
    }

    fn work(&mut self, tp: &TopicPartition) -> &mut PartitionWork {
        if !self.partitions.contains_key(tp) {
            self.next_generation += 1;
            self.partitions.insert(
                tp.clone(),
                PartitionWork {
                    generation: self.next_generation,
                    open: None,
                    taken_end: None,
                    queued: VecDeque::new(),
                    in_flight: None,
                    done: None,
                    backed_up: false,
                },
            );
        }
        self.partitions.get_mut(tp).expect("inserted")
    }

    async fn reject(
        &mut self,
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
        .map_err(|e| ProcessError::new("produce", e.0))?;
        // Done once everything before it is: it rides with the open batch, or is done now.
        let tp: TopicPartition = (record.topic().to_string(), record.partition());
        let next = record.offset() + 1;
        let w = self.work(&tp);
        if w.is_idle() {
            w.done = Some(next);
            w.taken_end = None;
        } else {
            w.taken_end = Some(next);
        }
        Ok(())
    }

    /// Closes the open batch of `tp` and queues it. A batch with no events (only dead letters
    /// since the last one) moves the done offset as soon as the batches before it are done.
    fn close(&mut self, tp: &TopicPartition) {
        let w = self.work(tp);
        let Some(end) = w.taken_end.take() else {
            return;
        };
        let open = w.open.take();
        match open {
            Some(open) if !open.batch.is_empty() => {
                w.queued.push_back(ClosedBatch {
                    job: open.into_job(),
                    end,
                });
            }
            _ => {
                if let Some(last) = w.queued.back_mut() {
                    last.end = end;
                } else if let Some((in_flight_end, _)) = &mut w.in_flight {
                    *in_flight_end = end;
                } else {
                    w.done = Some(end);
                }
            }
        }
    }

    /// Starts queued batches while slots are free, partitions without one in flight first.
    fn start_queued(&mut self) {
        if self.in_flight >= self.max_in_flight {
            return;
        }
        let ready: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, w)| w.in_flight.is_none() && !w.queued.is_empty())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in ready {
            if self.in_flight >= self.max_in_flight {
                return;
            }
            let w = self.partitions.get_mut(&tp).expect("listed");
            let closed = w.queued.pop_front().expect("listed");
            let (ctx, tx, news) = (
                self.ctx.clone(),
                self.completions_tx.clone(),
                self.news.clone(),
            );
            let (generation, report_tp) = (w.generation, tp.clone());
            let task = tokio::spawn(async move {
                let result = ctx.deliver(closed.job).await;
                let _ = tx.send(Completion {
                    tp: report_tp,
                    generation,
                    result,
                });
                news.notify_one();
            });
            w.in_flight = Some((closed.end, task));
            self.in_flight += 1;
            metrics().segment_in_flight_batches.inc();
        }
    }

    /// Applies finished deliveries; a dead letter that could not be written stops the role.
    fn collect_completions(&mut self) -> Result<(), ProcessError> {
        while let Ok(c) = self.completions.try_recv() {
            let Some(w) = self.partitions.get_mut(&c.tp) else {
                continue;
            };
            if w.generation != c.generation {
                continue;
            }
            let Some((end, _)) = w.in_flight.take() else {
                continue;
            };
            self.in_flight -= 1;
            metrics().segment_in_flight_batches.dec();
            c.result.map_err(|e| ProcessError::new("produce", e.0))?;
            w.done = Some(end);
        }
        Ok(())
    }

    fn queued_total(&self) -> usize {
        self.partitions.values().map(|w| w.queued.len()).sum()
    }

    fn queue_is_full(&self) -> bool {
        let queued = self.queued_total();
        queued >= QUEUED_PER_SLOT_MAX * self.max_in_flight
            || (queued >= QUEUED_PER_SLOT * self.max_in_flight
                && self.in_flight >= self.max_in_flight)
    }

    /// Clears `backed_up` of partitions that may be resumed.
    fn release_drained(&mut self) {
        if self.queue_is_full() {
            return;
        }
        for w in self.partitions.values_mut() {
            w.backed_up &= !w.queued.is_empty();
        }
    }

    /// Flow control: waits (at most [`WAIT_BEFORE_PAUSE`]) while the sink's queue is full;
    /// marks `tp` backed up (to be paused) if that is not enough.
    async fn wait_while_backed_up(&mut self, tp: &TopicPartition) -> Result<(), ProcessError> {
        if !self.queue_is_full() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + WAIT_BEFORE_PAUSE;
        while self.queue_is_full() {
            let news = self.news.clone();
            if tokio::time::timeout_at(deadline, news.notified())
                .await
                .is_err()
            {
                if let Some(w) = self.partitions.get_mut(tp) {
                    w.backed_up = true;
                }
                return Ok(());
            }
            self.collect_completions()?;
            self.start_queued();
        }
        self.release_drained();
        Ok(())
    }

    /// Closes batches that lingered long enough, and dead letters left behind a finished batch.
    fn close_lingering(&mut self) {
        let linger = self.linger;
        let lingering: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, w)| {
                let lingered = w
                    .open
                    .as_ref()
                    .and_then(|o| o.batch.opened_at())
                    .is_some_and(|t| t.elapsed() >= linger);
                lingered || (w.taken_end.is_some() && w.is_idle())
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in lingering {
            self.close(&tp);
        }
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
        let mut pending = Some(event);
        while let Some(event) = pending.take() {
            let w = self.work(&tp);
            let open = w.open.get_or_insert_with(|| OpenBatch::new(limits));
            match open.batch.push(event) {
                Ok(()) => {
                    open.received_at.push(received_at);
                    open.originals.push(value.into());
                    open.keys.push(record.key().map(Into::into));
                    w.taken_end = Some(record.offset() + 1);
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
                    self.close(&tp);
                    pending = Some(rejected.event);
                }
            }
        }
        if self
            .partitions
            .get(&tp)
            .and_then(|w| w.open.as_ref())
            .is_some_and(|o| o.batch.is_full())
        {
            self.close(&tp);
        }
        self.collect_completions()?;
        self.close_lingering();
        self.start_queued();
        self.wait_while_backed_up(&tp).await
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        let all: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in &all {
            self.close(tp);
        }
        loop {
            self.collect_completions()?;
            self.start_queued();
            if self.partitions.values().all(PartitionWork::is_idle) {
                return Ok(());
            }
            self.news.notified().await;
        }
    }

    fn partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(w) = self.partitions.remove(tp)
                && let Some((_, task)) = w.in_flight
            {
                // Its records are re-read by the next owner; a request already sent may reach
                // Segment twice, which the messageId de-duplicates.
                task.abort();
                self.in_flight -= 1;
                metrics().segment_in_flight_batches.dec();
            }
        }
        self.start_queued();
    }

    async fn progress(&mut self) -> Result<Vec<(TopicPartition, i64)>, ProcessError> {
        self.collect_completions()?;
        self.close_lingering();
        self.start_queued();
        self.release_drained();
        Ok(self
            .partitions
            .iter()
            .filter_map(|(tp, w)| w.done.map(|d| (tp.clone(), d)))
            .collect())
    }

    fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let news = self.news.clone();
        async move { news.notified().await }
    }

    fn is_backpressured(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .get(&(topic.to_string(), partition))
            .is_some_and(|w| w.backed_up)
    }
}
