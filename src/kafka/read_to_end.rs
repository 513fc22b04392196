//! Reading every partition of a topic up to its current end, outside any consumer group (for the
//! CLI: `idmap get`, `inspect`). Committed data only; nothing is committed, so the roles' groups
//! are never disturbed.

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
}

/// Calls `on_record` for every committed record of `topic`, partition by partition in offset
/// order, until every partition reached its end; progress goes to stderr every 2 s.
/// `consumer_config` is a consumer configuration (its group id is never used to commit). A role
/// reading its state at start passes `ROLE_TOPIC_WAIT` as `wait_for_topic` (a just-created topic
/// may not be in the metadata yet); the CLI passes zero and fails at once on a wrong name.
pub fn read_to_end(
    mut consumer_config: ClientConfig,
    topic: &str,
    start: StartAt,
    wait_for_topic: Duration,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    consumer_config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<ReadToEndContext> =
        consumer_config.create_with_context(ReadToEndContext)?;
    let partitions = topic_partitions(&consumer, topic, wait_for_topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let offset = match start {
            StartAt::Beginning => Offset::Beginning,
            StartAt::Last(n) => Offset::OffsetTail(n.max(1)),
        };
        tpl.add_partition_offset(topic, *p, offset)?;
    }
    consumer.assign(&tpl)?;
    let mut pending: HashSet<i32> = partitions.into_iter().collect();
    let (mut read, mut last_report) = (0u64, Instant::now());
    let mut idle_since = Instant::now();
    while !pending.is_empty() {
        match consumer.poll(Duration::from_secs(1)) {
            // A partition that never reports its end is idle at its end (or the broker is
            // gone): stop after 10 quiet seconds rather than hang.
            None if idle_since.elapsed() > Duration::from_secs(10) => break,
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
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
