//! The process runtime shared by every role: signals, the ops server, running several roles
//! side by side, and the shutdown grace period.
//!
//! A role is a future that runs until the shared [`Shutdown`] fires and then finishes its
//! in-flight work. If one role fails, the others are asked to stop too and the process exits
//! non-zero, so a supervisor restarts it (roles hold no state that Kafka does not).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::Config;
use crate::health::Readiness;
use crate::metrics::metrics;
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
    /// Starts the role.
    pub start: Box<dyn FnOnce(RoleEnv) -> RoleFuture + Send>,
}

/// Runs `roles` in this process with the ops server, until a signal (or a role failure) and
/// then at most `processing.shutdown_grace_ms` longer.
pub async fn run_roles(config: &Config, roles: Vec<RoleTask>) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    run_roles_until(config, roles, shutdown).await
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
        readiness,
    };
    let mut set = JoinSet::new();
    for role in roles {
        let name = role.name;
        metrics().role_up.with_label_values(&[&name]).set(1);
        tracing::info!(role = %name, "starting role");
        let fut = (role.start)(env.clone());
        set.spawn(async move { (name, fut.await) });
    }

    let grace = Duration::from_millis(config.processing.shutdown_grace_ms);
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
                metrics().role_up.with_label_values(&[&name]).set(0);
                match result {
                    Ok(()) if shutdown.is_triggered() => tracing::info!(role = %name, "role stopped"),
                    Ok(()) => {
                        failure.get_or_insert_with(|| anyhow::anyhow!("role {name} stopped unexpectedly"));
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
