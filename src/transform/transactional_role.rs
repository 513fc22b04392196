//! What both transformer roles do around their processor, written once (as the sinks have
//! [`crate::sinks::run_sink_loop`]): followers of compacted topics read to their end before
//! anything is mapped, the transactional producer created (fencing a zombie with the same
//! `transactional.id`), and the shared consumer loop run in transactional mode beside the
//! followers. It names no role.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::health::ReadinessHandle;
use crate::kafka::client_config;
use crate::kafka::consumer_loop::{CommitStrategy, LoopSpec, RecordProcessor, run_consumer_loop};
use crate::kafka::record_size::TopicLimits;
use crate::kafka::transactional_output::TransactionalOutput;
use crate::shutdown::Shutdown;
use crate::task::OwnedTask;

/// A follower of a compacted topic a transformer needs while it maps (the id mapping, the
/// catalogue): it runs beside the loop, and nothing is mapped before it has read its topic to
/// the end.
pub struct Follower {
    what: &'static str,
    task: OwnedTask<anyhow::Result<()>>,
    caught_up: watch::Receiver<bool>,
}

impl Follower {
    /// A follower called `what` (in messages) running as `task`, which sets `caught_up` once
    /// it has read its topic to the end.
    pub fn new(
        what: &'static str,
        task: OwnedTask<anyhow::Result<()>>,
        caught_up: watch::Receiver<bool>,
    ) -> Self {
        Self {
            what,
            task,
            caught_up,
        }
    }
}

/// Waits until every follower has read its topic to the end: `Ok(true)`; `Ok(false)` when
/// shutdown came first; `Err` when a follower stopped before, with its own error when it has
/// one (a missing topic, an unreachable broker), so the role's failure names the cause.
pub async fn wait_caught_up(
    followers: &mut [Follower],
    shutdown: &Shutdown,
) -> anyhow::Result<bool> {
    for f in followers.iter_mut() {
        tokio::select! {
            _ = shutdown.wait() => return Ok(false),
            failed = async { f.caught_up.wait_for(|v| *v).await.is_err() } => if failed {
                // The sender is gone: the task ended. Say how.
                let task = &mut f.task;
                return Err(match task.await {
                    Ok(Err(e)) => e.context(format!("the {} follower failed", f.what)),
                    Ok(Ok(())) => anyhow::anyhow!("the {} follower stopped", f.what),
                    Err(e) => anyhow::anyhow!("the {} follower panicked: {e}", f.what),
                });
            },
        }
    }
    Ok(true)
}

/// The role's transactional output: the producer is created and its transactions initialised
/// (which fences an earlier instance with the same `transactional.id`, aborting its open
/// transaction).
pub async fn transactional_output(
    config: &Config,
    role: &'static str,
    max_record_bytes: usize,
) -> anyhow::Result<TransactionalOutput> {
    let timeout = Duration::from_millis(config.processing.transaction_call_timeout_ms);
    let producer = client_config::transactional_producer(config, role, max_record_bytes);
    let limits = TopicLimits::from_config(config);
    tokio::task::spawn_blocking(move || TransactionalOutput::create(&producer, limits, timeout))
        .await?
        .context("cannot initialise the transactional producer")
}

/// What a transformer's loop runs over.
pub struct TransformLoop {
    /// The role name (the `stage` label of the loop metrics).
    pub role: &'static str,
    /// The topics it consumes.
    pub inputs: Vec<String>,
    /// Its transactional output (from [`transactional_output`]).
    pub output: TransactionalOutput,
    /// The followers that keep running beside the loop.
    pub followers: Vec<Follower>,
    /// The consumer's readiness, registered by the role before any of its parts became ready.
    pub ready: ReadinessHandle,
}

/// Runs the shared consumer loop over the inputs in transactional mode (each transaction holds
/// the processor's output and the input offsets) beside the followers. A follower that fails
/// stops the role with its error; one that ends (at shutdown) lets the loop finish and commit.
pub async fn run_transform_loop<P: RecordProcessor>(
    config: &Config,
    spec: TransformLoop,
    processor: P,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let TransformLoop {
        role,
        inputs,
        output,
        followers,
        ready,
    } = spec;
    let p = &config.processing;
    let timeout = Duration::from_millis(p.transaction_call_timeout_ms);
    let spec = LoopSpec::from_processing(
        role,
        inputs,
        p,
        CommitStrategy::Transactional { output, timeout },
    );
    let consumer_config = client_config::consumer(config, role);
    let consumer_loop = run_consumer_loop(&consumer_config, spec, processor, shutdown, ready);
    tokio::pin!(consumer_loop);
    if followers.is_empty() {
        return consumer_loop.await.map(|_| ()).map_err(anyhow::Error::from);
    }
    let watched = futures::future::select_all(
        followers
            .into_iter()
            .map(|f| Box::pin(async move { (f.what, f.task.await) })),
    );
    tokio::select! {
        r = &mut consumer_loop => r.map(|_| ()).map_err(anyhow::Error::from),
        ((what, ended), _, _others) = watched => match ended {
            // A follower stops only at shutdown: let the loop finish and commit too.
            Ok(Ok(())) => consumer_loop.await.map(|_| ()).map_err(anyhow::Error::from),
            Ok(Err(e)) => Err(e.context(format!("{what} follower failed"))),
            Err(e) => Err(anyhow::anyhow!("{what} follower panicked: {e}")),
        },
    }
}
