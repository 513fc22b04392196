//! A role's life in the process runtime (`crate::app`): started, restarted after a failover,
//! ended.

use std::time::Duration;

use super::InternalEvent;
use crate::metrics::metrics;

/// A role (re)started: `role_up{role}` = 1. A first start also exports
/// `role_restarts{role}` at 0, so `increase()` sees the first restart.
pub struct RoleStarted<'a> {
    /// The role.
    pub role: &'a str,
    /// Whether this is a restart after a failure.
    pub restart: bool,
}

impl InternalEvent for RoleStarted<'_> {
    fn emit(self) {
        let m = metrics();
        m.role_up.with_label_values(&[self.role]).set(1);
        if self.restart {
            tracing::info!(role = %self.role, "restarting role");
        } else {
            m.role_restarts.with_label_values(&[self.role]);
            tracing::info!(role = %self.role, "starting role");
        }
    }
}

/// A role failed on a Kafka failover and restarts after `pause` with new clients:
/// `role_restarts{role}` and a warning.
pub struct RoleRestartScheduled<'a> {
    /// The role.
    pub role: &'a str,
    /// Its error, with causes.
    pub error: &'a anyhow::Error,
    /// The wait before the restart.
    pub pause: Duration,
    /// Failures without a long enough run between them.
    pub failures_in_a_row: u32,
}

impl InternalEvent for RoleRestartScheduled<'_> {
    fn emit(self) {
        metrics()
            .role_restarts
            .with_label_values(&[self.role])
            .inc();
        tracing::warn!(
            role = %self.role,
            error = %format!("{:#}", self.error),
            restart_in = ?self.pause,
            failures_in_a_row = self.failures_in_a_row,
            "role failed on a Kafka failover; restarting it with new clients \
             (uncommitted work is re-read from the last commit)"
        );
    }
}

/// A role's task ended (stopped, failed, or about to be restarted): `role_up{role}` = 0. What
/// follows is logged by the runtime, which knows why.
pub struct RoleEnded<'a> {
    /// The role.
    pub role: &'a str,
}

impl InternalEvent for RoleEnded<'_> {
    fn emit(self) {
        metrics().role_up.with_label_values(&[self.role]).set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn a_role_is_up_between_start_and_end_and_restarts_count() {
        let m = metrics();
        let role = "ie-role-test";
        let up = || m.role_up.with_label_values(&[role]).get();
        let restarts = m.role_restarts.with_label_values(&[role]);
        emit(RoleStarted {
            role,
            restart: false,
        });
        assert_eq!((up(), restarts.get()), (1, 0));
        emit(RoleEnded { role });
        assert_eq!(up(), 0);
        emit(RoleRestartScheduled {
            role,
            error: &anyhow::anyhow!("broker gone"),
            pause: Duration::from_secs(1),
            failures_in_a_row: 1,
        });
        emit(RoleStarted {
            role,
            restart: true,
        });
        assert_eq!((up(), restarts.get()), (1, 1));
    }
}
