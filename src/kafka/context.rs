//! The librdkafka client context of consumer roles: turns rebalance callbacks into events the
//! consumer loop handles between records, and statistics into consumer-lag gauges.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use crate::health::ReadinessHandle;
use crate::internal_events::{PartitionsRebalanced, RebalanceKind, emit};
use crate::metrics::metrics;

/// A partition of a topic, as the loop tracks it.
pub type TopicPartition = (String, i32);

/// What happened to the assignment, queued for the consumer loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions are now ours.
    Assigned(Vec<TopicPartition>),
    /// These partitions are no longer ours; uncommitted work on them must be abandoned.
    Revoked(Vec<TopicPartition>),
}

/// Work that must be finished before revoked partitions go to another member. It runs inside
/// librdkafka's revocation callback, which the group waits for, so keep it bounded: it holds up
/// the whole group's rebalance.
pub type RevocationBarrier = Arc<dyn Fn(&[TopicPartition]) + Send + Sync>;

/// Consumer context shared by every consumer role.
pub struct LoopContext {
    role: &'static str,
    events: Mutex<Vec<RebalanceEvent>>,
    readiness: ReadinessHandle,
    barrier: Option<RevocationBarrier>,
    /// Partitions paused for backpressure: librdkafka stops fetching them, so its statistics
    /// keep their last high watermark and the lag it reports freezes. The loop measures their
    /// lag itself ([`set_paused_lag`]); statistics leave them alone.
    paused: Mutex<HashSet<TopicPartition>>,
    /// Offsets committed through a transaction (`send_offsets_to_transaction`), per partition:
    /// librdkafka's statistics know only the offsets its consumer committed or fetched at
    /// assignment, so a transformer's lag would otherwise count every record it processed since.
    committed_in_txn: Mutex<HashMap<TopicPartition, i64>>,
}

/// Sets the lag gauge of a paused partition from a fresh high watermark (the last stable offset
/// for `read_committed` consumers) and the partition's committed offset.
pub fn set_paused_lag(role: &str, tp: &TopicPartition, high: i64, committed: i64) {
    metrics()
        .consumer_lag
        .with_label_values(&[role, &tp.0, &tp.1.to_string()])
        .set((high - committed).max(0));
}

impl LoopContext {
    /// A context for the consumer of `role`; `readiness` turns ready at the first assignment.
    pub fn new(role: &'static str, readiness: ReadinessHandle) -> Self {
        Self {
            role,
            events: Mutex::new(Vec::new()),
            readiness,
            barrier: None,
            paused: Mutex::new(HashSet::new()),
            committed_in_txn: Mutex::new(HashMap::new()),
        }
    }

    /// Records offsets (next offset to read, per partition) committed in a transaction, for the
    /// lag gauge (see [`partition_lag`]).
    pub fn note_committed_in_txn<'a>(
        &self,
        offsets: impl IntoIterator<Item = (&'a TopicPartition, &'a i64)>,
    ) {
        let mut map = self.committed_in_txn.lock().expect("committed lock");
        for (tp, next) in offsets {
            let e = map.entry(tp.clone()).or_insert(*next);
            *e = (*e).max(*next);
        }
    }

    /// Whether `tp` is paused for backpressure.
    pub fn is_paused(&self, tp: &TopicPartition) -> bool {
        self.paused.lock().expect("paused lock").contains(tp)
    }

    /// Records that `tp` is paused (or resumed), so statistics do not report its frozen lag.
    pub fn set_paused(&self, tp: &TopicPartition, paused: bool) {
        let mut set = self.paused.lock().expect("paused lock");
        if paused {
            set.insert(tp.clone());
        } else {
            set.remove(tp);
        }
    }

    /// Runs `barrier` on every revocation, before the callback returns.
    pub fn with_revocation_barrier(mut self, barrier: Option<RevocationBarrier>) -> Self {
        self.barrier = barrier;
        self
    }

    /// Takes the rebalance events queued since the last call, oldest first.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().expect("rebalance event lock"))
    }

    fn push(&self, event: RebalanceEvent) {
        self.events
            .lock()
            .expect("rebalance event lock")
            .push(event);
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// A partition's lag from librdkafka's statistics: the end offset (the last stable offset a
/// `read_committed` consumer sees, else the high watermark) minus the committed offset, the
/// later of librdkafka's and the one `committed_in_txn` (a transformer's offsets go through
/// its transactions, which librdkafka's statistics never see). While nothing is committed for
/// the partition at all, the end minus the log start, where the group starts reading
/// (`auto.offset.reset = earliest`): librdkafka reports -1 then, which would hide the whole
/// backlog of a new deployment whose destination refuses it from the first batch. `None` while
/// the offsets are not known yet.
fn partition_lag(p: &rdkafka::statistics::Partition, committed_in_txn: Option<i64>) -> Option<i64> {
    let end = if p.ls_offset >= 0 {
        p.ls_offset
    } else {
        p.hi_offset
    };
    if end < 0 {
        return None;
    }
    let committed = p.committed_offset.max(committed_in_txn.unwrap_or(-1));
    if committed >= 0 {
        Some((end - committed).max(0))
    } else if p.lo_offset >= 0 {
        Some((end - p.lo_offset).max(0))
    } else {
        None
    }
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        let lag = &metrics().consumer_lag;
        let paused = self.paused.lock().expect("paused lock").clone();
        let in_txn = self
            .committed_in_txn
            .lock()
            .expect("committed lock")
            .clone();
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" bucket.
                if *id < 0 || p.fetch_state == "none" {
                    continue;
                }
                if paused.contains(&(topic.clone(), *id)) {
                    continue;
                }
                let noted = in_txn.get(&(topic.clone(), *id)).copied();
                let Some(value) = partition_lag(p, noted) else {
                    continue;
                };
                lag.with_label_values(&[self.role, topic, &id.to_string()])
                    .set(value);
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = partitions(tpl);
                emit(PartitionsRebalanced {
                    role: self.role,
                    kind: RebalanceKind::Revoked(&parts),
                });
                {
                    let mut in_txn = self.committed_in_txn.lock().expect("committed lock");
                    for tp in &parts {
                        in_txn.remove(tp);
                    }
                }
                for (topic, p) in &parts {
                    let _ = metrics().consumer_lag.remove_label_values(&[
                        self.role,
                        topic,
                        &p.to_string(),
                    ]);
                }
                if let Some(barrier) = &self.barrier {
                    barrier(&parts);
                }
                self.push(RebalanceEvent::Revoked(parts));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                emit(PartitionsRebalanced {
                    role: self.role,
                    kind: RebalanceKind::Failed(e),
                });
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions(tpl);
            emit(PartitionsRebalanced {
                role: self.role,
                kind: RebalanceKind::Assigned(&parts),
            });
            self.push(RebalanceEvent::Assigned(parts));
            self.readiness.set_ready(true);
        }
    }
}

/// Context of consumers that read partitions to their end (the id-mapping follower, `inspect`,
/// `idmap get`): reaching the end is how they know they are done, not an error, so librdkafka's
/// end-of-partition events stay out of the error log.
pub struct ReadToEndContext;

impl ClientContext for ReadToEndContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(error = %error, reason, "kafka consumer error");
        }
    }
}

impl ConsumerContext for ReadToEndContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(
        committed: i64,
        lo: i64,
        hi: i64,
        ls: i64,
        lag: i64,
    ) -> rdkafka::statistics::Partition {
        rdkafka::statistics::Partition {
            committed_offset: committed,
            lo_offset: lo,
            hi_offset: hi,
            ls_offset: ls,
            consumer_lag: lag,
            ..Default::default()
        }
    }

    #[test]
    fn lag_is_measured_from_the_latest_commit_or_from_the_log_start_without_one() {
        // Committed by the consumer: end (last stable offset) minus committed.
        assert_eq!(
            partition_lag(&partition(40, 0, 100, 100, 60), None),
            Some(60)
        );
        // A transformer: librdkafka saw the offset fetched at assignment (40), the loop
        // committed 95 in a transaction since.
        assert_eq!(
            partition_lag(&partition(40, 0, 100, 100, 60), Some(95)),
            Some(5)
        );
        // An older transactional commit never lowers what librdkafka knows.
        assert_eq!(
            partition_lag(&partition(40, 0, 100, 100, 60), Some(20)),
            Some(60)
        );
        // Nothing committed (-1001): from the log start to the last stable offset.
        assert_eq!(
            partition_lag(&partition(-1001, 10, 120, 100, -1), None),
            Some(90)
        );
        // No last stable offset yet: the high watermark.
        assert_eq!(
            partition_lag(&partition(-1001, 10, 120, -1, -1), None),
            Some(110)
        );
        // Offsets not known yet: no value rather than a wrong one.
        assert_eq!(partition_lag(&partition(-1001, -1, -1, -1, -1), None), None);
        // Committed but the end not known yet.
        assert_eq!(partition_lag(&partition(40, 0, -1, -1, -1), Some(50)), None);
    }
}
