//! The process runtime shared by every role: signals, the ops server, running several roles
//! side by side, and the shutdown grace period.
//!
//! A role is a future that runs until the shared [`Shutdown`] fires and then finishes its
//! in-flight work. A role that fails because of a broker failover (see
//! [`crate::kafka::failover`]: a transaction whose outcome is unknown, a coordinator that could
//! not be reached in time) is started again in this process after a pause, with new Kafka
//! clients, while the other roles go on; its readiness is false until it is ready again, and
//! `pendo_segment_role_restarts_total` counts it. Any other failure asks every role to stop
//! and the process exits non-zero, so a supervisor restarts it (roles hold no state that
//! Kafka does not).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use tokio::task::JoinSet;

use crate::config::Config;
use crate::health::Readiness;
use crate::internal_events::{RoleEnded, RoleRestartScheduled, RoleStarted, emit};
use crate::kafka::consumer_loop::LoopError;
use crate::kafka::failover::is_transient_kafka_error;
use crate::kafka::transactional_output::TxnError;
use crate::ops_server;
use crate::shutdown::Shutdown;

/// What a role gets from the runtime.
#[derive(Clone)]
pub struct RoleEnv {
    /// Fires on SIGTERM/SIGINT or when another role failed.
    pub shutdown: Shutdown,
    /// Where the role registers its readiness components.
    pub readiness: Readiness,
}

/// A role, ready to run.
pub type RoleFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A named role and how to start it.
pub struct RoleTask {
    /// The role's name (metrics label, logs).
    pub name: String,
    /// Starts the role; called again to restart it after a transient failure.
    pub start: Arc<dyn Fn(RoleEnv) -> RoleFuture + Send + Sync>,
}

impl RoleTask {
    /// A task that can be started once only (embedding, tests): a transient failure of it ends
    /// the process like any other, since there is nothing to start it again with.
    pub fn once(
        name: impl Into<String>,
        start: impl FnOnce(RoleEnv) -> RoleFuture + Send + 'static,
    ) -> Self {
        let name = name.into();
        let slot = std::sync::Mutex::new(Some(start));
        let role = name.clone();
        RoleTask {
            name,
            start: Arc::new(move |env| match slot.lock().expect("start lock").take() {
                Some(start) => start(env),
                None => {
                    let role = role.clone();
                    Box::pin(
                        async move { Err(anyhow::anyhow!("role {role} can be started only once")) },
                    )
                }
            }),
        }
    }
}

/// A role that ran this long before failing starts again after the initial pause.
const RESTART_STREAK_RESET: Duration = Duration::from_secs(60);

/// Whether a role's failure is one that a fresh start rides through: a broker failover, not
/// fencing, a refused credential or a misconfiguration.
pub fn is_transient_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<LoopError>()
            .is_some_and(LoopError::is_transient)
            || c.downcast_ref::<TxnError>()
                .is_some_and(TxnError::is_transient)
            || c.downcast_ref::<KafkaError>()
                .is_some_and(is_transient_kafka_error)
    })
}

/// Restart bookkeeping of one role.
struct RoleRun {
    start: Arc<dyn Fn(RoleEnv) -> RoleFuture + Send + Sync>,
    started: Instant,
    failures_in_a_row: u32,
}

/// Runs `roles` in this process with the ops server, until a signal (or a role failure) and
/// then at most `processing.shutdown_grace_ms` longer.
pub async fn run_roles(config: &Config, roles: Vec<RoleTask>) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    run_roles_until(config, roles, shutdown).await
}

/// What a role's task yields when it ends: the role's name and its result.
type RoleOutcome = (String, anyhow::Result<()>);

/// Starts every role in `set` and returns their restart bookkeeping: the start phase of
/// [`run_roles_until`].
fn start_roles(
    roles: Vec<RoleTask>,
    env: &RoleEnv,
    set: &mut JoinSet<RoleOutcome>,
) -> HashMap<String, RoleRun> {
    let mut runs: HashMap<String, RoleRun> = HashMap::new();
    for role in roles {
        let name = role.name;
        emit(RoleStarted {
            role: &name,
            restart: false,
        });
        let fut = (role.start)(env.clone());
        runs.insert(
            name.clone(),
            RoleRun {
                start: role.start,
                started: Instant::now(),
                failures_in_a_row: 0,
            },
        );
        set.spawn(async move { (name, fut.await) });
    }
    runs
}

/// The pauses before a failed role starts again: `initial`, doubling per failure in a row, up
/// to `max`.
#[derive(Clone, Copy)]
struct RestartBackoff {
    initial: Duration,
    max: Duration,
}

/// Schedules a new start of role `name` (failed with `e` on a Kafka failover) after its pause,
/// unless the shutdown fires first: the restart phase of [`run_roles_until`].
fn restart_role(
    set: &mut JoinSet<RoleOutcome>,
    run: &mut RoleRun,
    name: String,
    e: &anyhow::Error,
    env: &RoleEnv,
    backoff: RestartBackoff,
) {
    env.readiness.set_prefix_ready(&format!("{name}:"), false);
    if run.started.elapsed() >= RESTART_STREAK_RESET {
        run.failures_in_a_row = 0;
    }
    let pause = backoff
        .initial
        .saturating_mul(1 << run.failures_in_a_row.min(5))
        .min(backoff.max);
    run.failures_in_a_row += 1;
    emit(RoleRestartScheduled {
        role: &name,
        error: e,
        pause,
        failures_in_a_row: run.failures_in_a_row,
    });
    let (start, env, shutdown) = (run.start.clone(), env.clone(), env.shutdown.clone());
    run.started = Instant::now() + pause;
    set.spawn(async move {
        tokio::select! {
            _ = shutdown.wait() => return (name, Ok(())),
            _ = tokio::time::sleep(pause) => {}
        }
        emit(RoleStarted {
            role: &name,
            restart: true,
        });
        let result = start(env).await;
        (name, result)
    });
}

/// [`run_roles`] with an externally controlled shutdown signal (tests, embedding).
pub async fn run_roles_until(
    config: &Config,
    roles: Vec<RoleTask>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    // The ops server outlives the roles so /metrics stays scrapeable during the grace period.
    let ops_shutdown = Shutdown::new();
    let (_, ops_task) = ops_server::serve(
        config.observability.listen,
        readiness.clone(),
        ops_shutdown.clone(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on observability.listen {}: {e}",
            config.observability.listen
        )
    })?;

    let env = RoleEnv {
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
    };
    let mut set: JoinSet<RoleOutcome> = JoinSet::new();
    let mut runs = start_roles(roles, &env, &mut set);

    let grace = Duration::from_millis(config.processing.shutdown_grace_ms);
    // The pause before a failed role starts again doubles per failure in a row, up to the max.
    let backoff = RestartBackoff {
        initial: Duration::from_millis(config.processing.role_restart_backoff_initial_ms),
        max: Duration::from_millis(config.processing.role_restart_backoff_max_ms),
    };
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::pin!(deadline);
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            next = set.join_next() => {
                let Some(joined) = next else { break };
                let (name, result) = match joined {
                    Ok(pair) => pair,
                    Err(e) => ("<unknown>".to_string(), Err(anyhow::anyhow!("role task panicked: {e}"))),
                };
                emit(RoleEnded { role: &name });
                match result {
                    Ok(()) if shutdown.is_triggered() => tracing::info!(role = %name, "role stopped"),
                    Ok(()) => {
                        failure.get_or_insert_with(|| anyhow::anyhow!("role {name} stopped unexpectedly"));
                    }
                    Err(e) if !shutdown.is_triggered() && is_transient_failure(&e) => {
                        let Some(run) = runs.get_mut(&name) else { continue };
                        restart_role(&mut set, run, name, &e, &env, backoff);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(role = %name, error = %format!("{e:#}"), "role failed");
                        failure.get_or_insert(e.context(format!("role {name} failed")));
                    }
                }
                if !shutdown.is_triggered() {
                    shutdown.trigger();
                }
            }
            _ = &mut deadline => {
                set.abort_all();
                failure.get_or_insert_with(|| anyhow::anyhow!(
                    "roles did not stop within the shutdown grace period of {} ms; uncommitted work will be re-read",
                    grace.as_millis()
                ));
                break;
            }
        }
    }
    ops_shutdown.trigger();
    let _ = ops_task.await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::consumer_loop::ProcessError;
    use rdkafka::types::RDKafkaErrorCode;

    fn loop_error(kind: &'static str) -> anyhow::Error {
        anyhow::Error::from(LoopError::Process {
            role: "transform-pendo",
            source: ProcessError::new(kind, "x"),
        })
    }

    #[test]
    fn failovers_restart_a_role_fencing_and_misconfiguration_stop_the_process() {
        assert!(is_transient_failure(&loop_error("transaction_stuck")));
        assert!(is_transient_failure(
            &anyhow::Error::from(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::CoordinatorNotAvailable
            ))
            .context("cannot initialise the transactional producer")
        ));
        assert!(is_transient_failure(&anyhow::Error::from(TxnError::Stuck(
            "abort failed".into()
        ))));
        // Fenced by a newer instance: a restart would fence it back.
        assert!(!is_transient_failure(&loop_error("transaction")));
        assert!(!is_transient_failure(&anyhow::Error::from(
            TxnError::Fatal("fenced".into())
        )));
        assert!(!is_transient_failure(&loop_error("http")));
        assert!(!is_transient_failure(&anyhow::anyhow!(
            "cannot listen on 127.0.0.1:8080"
        )));
    }
}
