//! Consumer-group rebalances, as every consumer role sees them.

use super::InternalEvent;
use crate::metrics::metrics;

/// What a rebalance did to this consumer.
pub enum RebalanceKind<'a> {
    /// Partitions assigned (after the rebalance).
    Assigned(&'a [(String, i32)]),
    /// Partitions revoked (before the rebalance).
    Revoked(&'a [(String, i32)]),
    /// librdkafka reported a rebalance error.
    Failed(&'a dyn std::fmt::Display),
}

/// A rebalance of `role`'s consumer: `rebalances{stage,kind}` (`assign` / `revoke` / `error`)
/// and the partitions (or the error) in the log.
pub struct PartitionsRebalanced<'a> {
    /// The role.
    pub role: &'a str,
    /// What happened.
    pub kind: RebalanceKind<'a>,
}

impl InternalEvent for PartitionsRebalanced<'_> {
    fn emit(self) {
        let role = self.role;
        let kind = match self.kind {
            RebalanceKind::Assigned(partitions) => {
                tracing::info!(role, partitions = ?partitions, "partitions assigned");
                "assign"
            }
            RebalanceKind::Revoked(partitions) => {
                tracing::info!(role, partitions = ?partitions, "partitions revoked");
                "revoke"
            }
            RebalanceKind::Failed(error) => {
                tracing::error!(role, error = %error, "rebalance error");
                "error"
            }
        };
        metrics().rebalances.with_label_values(&[role, kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn rebalances_count_by_kind() {
        let m = metrics();
        let role = "ie-rebalance-test";
        let parts = vec![("t".to_string(), 0)];
        emit(PartitionsRebalanced {
            role,
            kind: RebalanceKind::Assigned(&parts),
        });
        emit(PartitionsRebalanced {
            role,
            kind: RebalanceKind::Revoked(&parts),
        });
        emit(PartitionsRebalanced {
            role,
            kind: RebalanceKind::Failed(&"coordinator gone"),
        });
        let of = |kind: &str| m.rebalances.with_label_values(&[role, kind]).get();
        assert_eq!((of("assign"), of("revoke"), of("error")), (1, 1, 1));
    }
}
