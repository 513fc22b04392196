//! The per-partition queue machinery every sink's [`RecordProcessor`] shares under the
//! `Acknowledged` commit strategy (first written for the Segment sink, now also the Pendo sink's).
//!
//! Each partition has one open job (the sink decides what goes in it), a queue of closed jobs,
//! at most one job in flight (one ordered stream per partition, so per-key order holds) and a
//! done offset. At most `max_in_flight` jobs are delivered at once overall. Nothing waits for the
//! destination longer than a second: a delivery task reports back when its job is acknowledged
//! or dead-lettered, and only then does the partition's done offset move past it
//! ([`progress`](PartitionQueues::progress)); the loop commits done offsets only, so an offset is
//! never committed over an unacknowledged record. When two closed jobs per in-flight slot are
//! queued and every slot is busy (or four per slot are queued), [`after_record`] waits for a
//! slot (flow control while the destination keeps up); if none frees within a second, the
//! partition is backed up: the loop pauses it (bounding memory to that queue plus an open job
//! per partition), resumes it when it drains, and keeps polling Kafka meanwhile, so the member
//! stays in its group through an outage of any length. Revoked partitions' jobs are abandoned
//! uncommitted (the next owner re-reads them).
//!
//! [`RecordProcessor`]: crate::kafka::consumer_loop::RecordProcessor
//! [`after_record`]: PartitionQueues::after_record

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::kafka::consumer_loop::ProcessError;
use crate::kafka::context::TopicPartition;

/// Why a delivery could not finish; stops the role without committing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// Closed jobs queued (all partitions together) per allowed in-flight request before
/// `after_record` waits while every slot is busy: enough that each slot has a next job ready.
const QUEUED_PER_SLOT: usize = 2;

/// Closed jobs queued per slot before `after_record` waits even with a slot free. Kafka hands
/// out records a partition at a time, and a partition has one job in flight at most, so the
/// queue may have to hold jobs of a few partitions before one of another partition can use the
/// free slot; this bounds how many.
const QUEUED_PER_SLOT_MAX: usize = 4;

/// How long `after_record` waits for the queue to make room before asking the loop to pause the
/// partition. While the destination keeps up, a job finishes well within this and nothing is
/// paused: a pause makes librdkafka drop what it prefetched for the partition and fetch it
/// again, which cost 6x the throughput when every full batch paused (measured with
/// `benches/segment_sink.rs`). During an outage partitions are paused after this.
const WAIT_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// What a sink gathers per partition before delivering it.
pub trait SinkJob: Send + 'static {
    /// Whether nothing was taken in (a job with only dead letters behind it is never sent).
    fn is_empty(&self) -> bool;
    /// When the first record was taken in, for the linger.
    fn opened_at(&self) -> Option<Instant>;
    /// This job's own linger, when it differs from the queues' (e.g. the Pendo sink's
    /// segment changes, batched longer than metadata updates).
    fn linger(&self) -> Option<Duration> {
        None
    }
    /// Whether the job is sent as soon as the input is drained (`close_open`) rather than at
    /// its linger: `false` for work whose every request is costly and worth collecting even at
    /// low load (the Pendo sink's segment rewrites).
    fn sends_when_drained(&self) -> bool {
        true
    }
}

/// Delivers one closed job completely; `Err` (a dead letter that could not be written) stops
/// the role.
pub type Deliver<J> =
    Arc<dyn Fn(J) -> Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>> + Send + Sync>;

/// A closed job and the offset after the last record it accounts for (its own records and any
/// dead-lettered records between them).
struct ClosedJob<J> {
    job: J,
    end: i64,
}

/// One partition's ordered stream of work.
struct PartitionWork<J> {
    /// Tells this assignment's completions from those of an earlier one.
    generation: u64,
    open: Option<J>,
    /// Offset after the last record taken in (records in `open`, or dead-lettered since).
    taken_end: Option<i64>,
    queued: VecDeque<ClosedJob<J>>,
    /// The job being delivered: its end offset and task.
    in_flight: Option<(i64, JoinHandle<()>)>,
    /// Every record below this offset is acknowledged or dead-lettered.
    done: Option<i64>,
    /// Set when the queue stayed full for [`WAIT_BEFORE_PAUSE`] after a record of this
    /// partition; cleared once this partition has nothing queued and the queue has room.
    backed_up: bool,
}

impl<J: SinkJob> PartitionWork<J> {
    fn is_idle(&self) -> bool {
        self.open.as_ref().is_none_or(J::is_empty)
            && self.queued.is_empty()
            && self.in_flight.is_none()
    }
}

/// A delivery task's report.
struct Completion {
    tp: TopicPartition,
    generation: u64,
    result: Result<(), DeliveryError>,
}

/// The per-partition queues of a sink (see the module docs).
pub struct PartitionQueues<J> {
    deliver: Deliver<J>,
    linger: Duration,
    max_in_flight: usize,
    in_flight: usize,
    in_flight_gauge: IntGauge,
    next_generation: u64,
    partitions: HashMap<TopicPartition, PartitionWork<J>>,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    news: Arc<Notify>,
}

impl<J: SinkJob> PartitionQueues<J> {
    /// Queues delivering with `deliver`, closing open jobs after `linger`, with at most
    /// `max_in_flight` deliveries at once (counted in `in_flight_gauge`).
    pub fn new(
        deliver: Deliver<J>,
        linger: Duration,
        max_in_flight: usize,
        in_flight_gauge: IntGauge,
    ) -> Self {
        let (completions_tx, completions) = mpsc::unbounded_channel();
        Self {
            deliver,
            linger,
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            in_flight_gauge,
            next_generation: 0,
            partitions: HashMap::new(),
            completions_tx,
            completions,
            news: Arc::new(Notify::new()),
        }
    }

    fn work(&mut self, tp: &TopicPartition) -> &mut PartitionWork<J> {
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

    /// The open job of `tp`, to add a record to (then call [`Self::took`]).
    pub fn open_mut(&mut self, tp: &TopicPartition) -> &mut Option<J> {
        &mut self.work(tp).open
    }

    /// The open job of `tp`, if any.
    pub fn open(&self, tp: &TopicPartition) -> Option<&J> {
        self.partitions.get(tp).and_then(|w| w.open.as_ref())
    }

    /// A record of `tp` ending before `next` went into the open job.
    pub fn took(&mut self, tp: &TopicPartition, next: i64) {
        self.work(tp).taken_end = Some(next);
    }

    /// A record of `tp` ending before `next` was dead-lettered: done once everything before it
    /// is (it rides with the open job, or is done now).
    pub fn dead_lettered(&mut self, tp: &TopicPartition, next: i64) {
        let w = self.work(tp);
        if w.is_idle() {
            w.done = Some(next);
            w.taken_end = None;
        } else {
            w.taken_end = Some(next);
        }
    }

    /// Writes `record` to the dead-letter topic with `reason` and `detail`, then marks it done in
    /// its partition's order ([`dead_lettered`](Self::dead_lettered)): what a sink does with a
    /// record it must never send.
    pub async fn reject(
        &mut self,
        dead_letters: &crate::sinks::dead_letter::SinkDeadLetters,
        record: &rdkafka::message::BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        use rdkafka::Message;
        dead_letters
            .write(
                record.topic(),
                (record.partition(), record.offset()),
                record.key(),
                record.payload().unwrap_or_default(),
                reason,
                detail,
            )
            .await
            .map_err(|e| ProcessError::new("produce", e.0))?;
        let tp: TopicPartition = (record.topic().to_string(), record.partition());
        self.dead_lettered(&tp, record.offset() + 1);
        Ok(())
    }

    /// Closes the open job of `tp` and queues it. A job with nothing in it (only dead letters
    /// since the last one) moves the done offset as soon as the jobs before it are done.
    pub fn close(&mut self, tp: &TopicPartition) {
        let w = self.work(tp);
        let Some(end) = w.taken_end.take() else {
            return;
        };
        match w.open.take() {
            Some(job) if !job.is_empty() => w.queued.push_back(ClosedJob { job, end }),
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

    /// Starts queued jobs while slots are free, partitions without one in flight first.
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
            let (deliver, tx, news) = (
                self.deliver.clone(),
                self.completions_tx.clone(),
                self.news.clone(),
            );
            let (generation, report_tp) = (w.generation, tp.clone());
            let task = tokio::spawn(async move {
                let result = deliver(closed.job).await;
                let _ = tx.send(Completion {
                    tp: report_tp,
                    generation,
                    result,
                });
                news.notify_one();
            });
            w.in_flight = Some((closed.end, task));
            self.in_flight += 1;
            self.in_flight_gauge.inc();
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
            self.in_flight_gauge.dec();
            c.result.map_err(|e| ProcessError::new("produce", e.0))?;
            w.done = Some(end);
        }
        Ok(())
    }

    fn queue_is_full(&self) -> bool {
        let queued: usize = self.partitions.values().map(|w| w.queued.len()).sum();
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

    /// Flow control: waits (at most [`WAIT_BEFORE_PAUSE`]) while the queue is full; marks `tp`
    /// backed up (to be paused) if that is not enough.
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

    /// Closes jobs that lingered long enough, and dead letters left behind a finished job.
    fn close_lingering(&mut self) {
        let linger = self.linger;
        let lingering: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, w)| {
                let lingered = w.open.as_ref().is_some_and(|j| {
                    j.opened_at()
                        .is_some_and(|t| t.elapsed() >= j.linger().unwrap_or(linger))
                });
                lingered || (w.taken_end.is_some() && w.is_idle())
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in lingering {
            self.close(&tp);
        }
    }

    /// The end of `process` for a record of `tp`: applies completions, closes lingering jobs,
    /// starts queued ones, and applies flow control.
    pub async fn after_record(&mut self, tp: &TopicPartition) -> Result<(), ProcessError> {
        self.collect_completions()?;
        self.close_lingering();
        self.start_queued();
        self.wait_while_backed_up(tp).await
    }

    /// `input_drained`: nothing more is coming for now, so no open job waits for more records:
    /// every one is closed and started as slots allow (the linger is for batching under load,
    /// not for waiting on an idle input), except jobs that choose to keep their linger
    /// ([`SinkJob::sends_when_drained`]).
    pub fn close_open(&mut self) {
        let open: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, w)| {
                w.open
                    .as_ref()
                    .is_some_and(|j| !j.is_empty() && j.sends_when_drained())
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in &open {
            self.close(tp);
        }
        self.start_queued();
    }

    /// `checkpoint` (at shutdown): closes every open job and waits until all are delivered.
    pub async fn checkpoint(&mut self) -> Result<(), ProcessError> {
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

    /// `partitions_revoked`: abandons their work uncommitted (a request already sent may reach
    /// the destination twice, which its de-duplication or idempotence absorbs).
    pub fn revoked(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(w) = self.partitions.remove(tp)
                && let Some((_, task)) = w.in_flight
            {
                task.abort();
                self.in_flight -= 1;
                self.in_flight_gauge.dec();
            }
        }
        self.start_queued();
    }

    /// `progress`: the done offset of every partition.
    pub fn progress(&mut self) -> Result<Vec<(TopicPartition, i64)>, ProcessError> {
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

    /// `ready`: resolves when a delivery finished.
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let news = self.news.clone();
        async move { news.notified().await }
    }

    /// `is_backpressured`.
    pub fn is_backpressured(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .get(&(topic.to_string(), partition))
            .is_some_and(|w| w.backed_up)
    }
}
