//! Sinks: the roles that deliver canonical records from Kafka to a destination's API.
//!
//! A sink commits a Kafka offset only once the destination has accepted the record (or the
//! record was dead-lettered with the reason), so delivery is at least once and the destination's
//! de-duplication (Segment's `messageId`) makes it effectively once. Each sink is split into
//! pure, separately tested parts (configuration, encoding, batching, retry policy, rate limit,
//! HTTP service), in the manner of Vector's sinks. The per-partition queues, flow control and
//! done-offset bookkeeping of the `Acknowledged` commit strategy are shared ([`queue`]), and so is
//! the acknowledged dead-letter writer ([`dead_letter`]); the HTTP plumbing (backoff,
//! `Retry-After`, rate limits) is [`crate::http`]. A sink never imports another sink.

pub mod dead_letter;
pub mod pendo;
pub mod queue;
pub mod segment;

use std::time::Duration;

use crate::app::RoleEnv;
use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::consumer_loop::{CommitStrategy, LoopSpec, RecordProcessor, run_consumer_loop};

/// Runs a sink's processor over `inputs` in the shared loop with the `Acknowledged` strategy:
/// the commit cadence of `[processing]`, and a shutdown flush that ends 5 s before the grace
/// period does (what is not acknowledged by then stays uncommitted).
pub async fn run_sink_loop<P: RecordProcessor>(
    config: &Config,
    role: &'static str,
    inputs: Vec<String>,
    processor: P,
    env: &RoleEnv,
) -> anyhow::Result<()> {
    let p = &config.processing;
    let flush_timeout = Duration::from_millis(p.shutdown_grace_ms)
        .saturating_sub(Duration::from_secs(5))
        .max(Duration::from_secs(1));
    let spec = LoopSpec::from_processing(
        role,
        inputs,
        p,
        CommitStrategy::Acknowledged { flush_timeout },
    );
    run_consumer_loop(
        &client_config::consumer(config, role),
        spec,
        processor,
        env.shutdown.clone(),
        env.readiness.register(format!("{role}:consumer")),
    )
    .await?;
    Ok(())
}
