//! Reading every partition of a topic up to its current end, outside any consumer group: the
//! CLI (`idmap get`, `inspect`, `mapping preview`) and the roles that load compacted state at
//! start (the poller's state, pendo-sink's segment ids and audience lists). Committed data
//! only; nothing is committed, so the roles' groups are never disturbed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::context::ReadToEndContext;
use super::metadata::topic_partitions;

/// Where each partition is read from.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    /// The oldest retained record.
    Beginning,
    /// The last N records of each partition.
    Last(i64),
    /// The first record whose timestamp is at or after these epoch milliseconds (a partition
    /// with none is not read).
    Timestamp(i64),
}

/// What one poll of a bounded read gave.
pub enum Polled<'c> {
    /// A record.
    Record(BorrowedMessage<'c>),
    /// A partition reached its end (and was taken out of the pending set).
    End,
    /// Nothing within the poll's timeout.
    Nothing,
}

/// Polls once for a read that ends when every partition in `pending` reported its end
/// (`enable.partition.eof`); any other consumer error ends the read.
pub fn poll_pending<'c, C: rdkafka::consumer::ConsumerContext>(
    consumer: &'c BaseConsumer<C>,
    timeout: Duration,
    pending: &mut HashSet<i32>,
) -> Result<Polled<'c>, KafkaError> {
    match consumer.poll(timeout) {
        None => Ok(Polled::Nothing),
        Some(Err(KafkaError::PartitionEOF(p))) => {
            pending.remove(&p);
            Ok(Polled::End)
        }
        Some(Err(e)) => Err(e),
        Some(Ok(m)) => Ok(Polled::Record(m)),
    }
}

/// How long looking up the offsets of a start time may take.
const OFFSETS_FOR_TIMES_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer that reports each partition's end, and the partitions of `topic` (waited for up
/// to `wait_for_topic`).
fn open_reader(
    mut consumer_config: ClientConfig,
    topic: &str,
    wait_for_topic: Duration,
) -> anyhow::Result<(BaseConsumer<ReadToEndContext>, Vec<i32>)> {
    consumer_config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<ReadToEndContext> =
        consumer_config.create_with_context(ReadToEndContext)?;
    let partitions = topic_partitions(&consumer, topic, wait_for_topic)?;
    Ok((consumer, partitions))
}

/// Calls `on_record` for every committed record of `topic`, partition by partition in offset
/// order, until every partition reached its end; progress goes to stderr every 2 s.
/// `consumer_config` is a consumer configuration (its group id is never used to commit). A role
/// reading its state at start passes `ROLE_TOPIC_WAIT` as `wait_for_topic` (a just-created topic
/// may not be in the metadata yet); the CLI passes zero and fails at once on a wrong name.
pub fn read_to_end(
    consumer_config: ClientConfig,
    topic: &str,
    start: StartAt,
    wait_for_topic: Duration,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (consumer, mut partitions) = open_reader(consumer_config, topic, wait_for_topic)?;
    let mut tpl = TopicPartitionList::new();
    match start {
        StartAt::Beginning | StartAt::Last(_) => {
            for p in &partitions {
                let offset = match start {
                    StartAt::Last(n) => Offset::OffsetTail(n.max(1)),
                    _ => Offset::Beginning,
                };
                tpl.add_partition_offset(topic, *p, offset)?;
            }
        }
        StartAt::Timestamp(ms) => {
            let mut times = TopicPartitionList::new();
            for p in &partitions {
                times.add_partition_offset(topic, *p, Offset::Offset(ms))?;
            }
            let found = consumer.offsets_for_times(times, OFFSETS_FOR_TIMES_TIMEOUT)?;
            // A partition with no record at or after the time has nothing to read: it is
            // neither assigned nor waited for.
            partitions.clear();
            for e in found.elements() {
                if let Offset::Offset(o) = e.offset() {
                    tpl.add_partition_offset(topic, e.partition(), Offset::Offset(o))?;
                    partitions.push(e.partition());
                }
            }
        }
    }
    consumer.assign(&tpl)?;
    let mut pending: HashSet<i32> = partitions.into_iter().collect();
    let (mut read, mut last_report) = (0u64, Instant::now());
    let mut idle_since = Instant::now();
    while !pending.is_empty() {
        match poll_pending(&consumer, Duration::from_secs(1), &mut pending)? {
            // A partition that never reports its end is idle at its end (or the broker is
            // gone): stop after 10 quiet seconds rather than hang.
            Polled::Nothing if idle_since.elapsed() > Duration::from_secs(10) => break,
            Polled::Nothing | Polled::End => {}
            Polled::Record(m) => {
                idle_since = Instant::now();
                read += 1;
                on_record(&m)?;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!("read {read} record(s) of {topic}...");
            last_report = Instant::now();
        }
    }
    Ok(read)
}

/// Calls `on_record` for every committed record of one partition of `topic`, in offset order,
/// up to the partition's end as it was when the read started (its high watermark), then stops.
/// For a role's per-partition state (the Pendo sink's audience lists): the partition must
/// exist (the topic is waited for up to `wait_for_topic`; a missing partition is an error
/// naming the partition counts to align).
pub fn read_partition_to_end(
    consumer_config: ClientConfig,
    topic: &str,
    partition: i32,
    wait_for_topic: Duration,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (consumer, partitions) = open_reader(consumer_config, topic, wait_for_topic)?;
    if !partitions.contains(&partition) {
        anyhow::bail!(
            "topic {topic} has no partition {partition} (it has {}): it needs at least as many partitions as the topic it keeps state for; run `pendo-segment topics apply`",
            partitions.len()
        );
    }
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
    if high <= low {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut read = 0u64;
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_secs(1)) {
            None if idle_since.elapsed() > Duration::from_secs(10) => {
                anyhow::bail!(
                    "{topic} partition {partition}: no record for 10 s before its end (offset {high})"
                )
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(read),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                use rdkafka::Message;
                idle_since = Instant::now();
                read += 1;
                on_record(&m)?;
                if m.offset() + 1 >= high {
                    return Ok(read);
                }
            }
        }
    }
}
