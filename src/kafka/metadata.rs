//! Finding a topic's partitions. A topic created a moment ago (by `topics apply`, or by a test)
//! may not be in the answering broker's metadata yet, so roles wait for it (bounded) instead of
//! failing at start; the CLI asks once and answers at once.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};

/// How long a role waits at start for a topic it needs to appear in the metadata.
pub const ROLE_TOPIC_WAIT: Duration = Duration::from_secs(30);

/// The partition ids of `topic`, waiting up to `wait` for it to appear (`Duration::ZERO`: ask
/// once). An absent topic after the wait is an error naming the command that creates it.
pub fn topic_partitions<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    wait: Duration,
) -> anyhow::Result<Vec<i32>> {
    let deadline = Instant::now() + wait;
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("topic {topic} does not exist: run `pendo-segment topics apply`");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
