//! Which Kafka failures a role rides through by starting its work afresh, and which must stop it.
//!
//! On a replicated cluster, brokers die and come back: partition leaders move, the transaction
//! coordinator of a `transactional.id` or the coordinator of a consumer group is unreachable
//! for the seconds it takes to elect a new one. A role's Kafka call that times out then, or a
//! transaction that cannot even be aborted, leaves its client in an unknown state; the cure is
//! a new client (a new transactional producer fences the old one and settles its transaction,
//! a new consumer restarts from the committed offsets), not a dead process. Failures that a new
//! client would hit again (fenced by a newer instance with the same id, authorisation, a
//! misconfiguration) are *not* transient: the role stops and says why.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Whether `e` is the kind of failure a broker failover causes: retrying with new clients
/// after a pause is expected to succeed.
pub fn is_transient_kafka_error(e: &KafkaError) -> bool {
    if let KafkaError::Transaction(t) = e {
        return !t.is_fatal() && (t.is_retriable() || is_failover_code(t.code()));
    }
    e.rdkafka_error_code().is_some_and(is_failover_code)
}

/// Whether a fatal transactional error means this producer must give way for good: a newer
/// instance with the same `transactional.id` fenced it, or it is not allowed to use that id.
/// Other fatal states (e.g. `INVALID_TXN_STATE` from a coordinator that took over mid-abort)
/// are the producer's own confusion, which a new producer with the same id settles.
pub fn is_fencing_or_denial(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        ProducerFenced
            | Fenced
            | InvalidProducerEpoch
            | TransactionalIdAuthorizationFailed
            | ClusterAuthorizationFailed
            | TopicAuthorizationFailed
            | GroupAuthorizationFailed
    )
}

/// Error codes of unreachable or moving brokers, leaders and coordinators.
fn is_failover_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        OperationTimedOut
            | MessageTimedOut
            | RequestTimedOut
            | AllBrokersDown
            | BrokerTransportFailure
            | NetworkException
            | LeaderNotAvailable
            | NotLeaderForPartition
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | KafkaStorageError
            | ConcurrentTransactions
            | UnstableOffsetCommit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_and_coordinator_loss_is_transient_other_failures_are_not() {
        for code in [
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(
                is_transient_kafka_error(&KafkaError::ConsumerCommit(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::InvalidConfig,
        ] {
            assert!(
                !is_transient_kafka_error(&KafkaError::ConsumerCommit(code)),
                "{code:?}"
            );
        }
        assert!(!is_transient_kafka_error(&KafkaError::Subscription(
            "bad".into()
        )));
        assert!(is_fencing_or_denial(RDKafkaErrorCode::ProducerFenced));
        assert!(!is_fencing_or_denial(
            RDKafkaErrorCode::InvalidTransactionalState
        ));
    }
}
