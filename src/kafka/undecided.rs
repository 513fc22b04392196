//! Records whose transaction's commit outcome was not known when their sender was answered, and
//! how that outcome is learnt afterwards.
//!
//! A group-commit appender answers 503 when the broker decides a commit neither in time nor in
//! the extra decision wait (see `transactional_appender`). The coordinator may still commit it
//! (it had the commit in its log), and the sender's retry would then store the events twice.
//! [`UndecidedRecords`] remembers fingerprints of such records: while the outcome is open, a
//! delivery carrying any of them is answered 503 again without being written; once the outcome is
//! known, records of a committed transaction are answered as accepted without being written
//! again (for `retention`), and records of an aborted one are forgotten (their retry is written
//! normally). The outcome is learnt by [`committed_at`]: once a new producer with the same
//! `transactional.id` has been initialised (which makes the coordinator finish the transaction),
//! a `read_committed` read at the position of one of its records shows whether it committed.
//!
//! The memory belongs to one process: a retry that reaches another replica, or this one after a
//! restart, is written again (documented in the README's guarantees).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Where one record of a transaction was written (from its delivery report): every record of a
/// transaction shares its outcome, so one position tells the whole transaction's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPosition {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// Handle of one registered transaction's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndecidedId(u64);

/// What the memory knows about the records of a new delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Recall {
    /// None of them is remembered: write them.
    Unknown,
    /// At least one belongs to a transaction whose outcome is still open: answer 503 and write
    /// nothing (writing could store it twice; dropping it could lose it).
    Undecided,
    /// These records (flag per record) belong to committed transactions: they are stored; write
    /// only the others.
    Committed(Vec<bool>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupState {
    Undecided,
    Committed,
}

struct Group {
    id: u64,
    registered: Instant,
    fingerprints: Vec<u64>,
    state: GroupState,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// In registration order, so expiry and eviction take the oldest first.
    groups: VecDeque<Group>,
    /// Fingerprint -> group id (a later registration of the same record wins).
    by_fingerprint: HashMap<u64, u64>,
}

/// Fingerprints of records whose transaction's outcome was unknown when their sender was answered
/// (see the module docs). Bounded: entries older than `retention` are dropped, and past
/// `capacity` fingerprints the oldest transactions are dropped first.
pub struct UndecidedRecords {
    hasher: RandomState,
    retention: Duration,
    capacity: usize,
    /// Fingerprints held, read without the lock: the common case (nothing remembered) costs one
    /// atomic load per delivery.
    held: AtomicUsize,
    inner: Mutex<Inner>,
}

/// What dropping old entries found, for the caller's metrics and logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Transactions dropped while their outcome was still open: a retry of their records is
    /// written again and may be stored twice.
    pub undecided: usize,
    /// Committed transactions dropped (their retention ended, or capacity).
    pub committed: usize,
}

impl UndecidedRecords {
    /// An empty memory keeping entries for `retention`, at most `capacity` fingerprints.
    pub fn new(retention: Duration, capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            retention,
            capacity: capacity.max(1),
            held: AtomicUsize::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether nothing is remembered (the fast path of every delivery).
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    /// A record's fingerprint: topic, key and value (headers carry the request's arrival time
    /// and id, which differ on a retry). Keyed with a per-process random seed, so senders cannot
    /// craft collisions.
    pub fn fingerprint(&self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = self.hasher.build_hasher();
        // Lengths first, so no two splits of the same bytes into fields collide.
        h.write_usize(topic.len());
        h.write(topic.as_bytes());
        match key {
            Some(k) => {
                h.write_usize(k.len());
                h.write(k);
            }
            None => h.write_usize(usize::MAX),
        }
        h.write_usize(payload.len());
        h.write(payload);
        h.finish()
    }

    /// Remembers records (by fingerprint) whose transaction's commit is undecided.
    pub fn register(&self, fingerprints: Vec<u64>) -> (UndecidedId, Dropped) {
        let mut inner = self.inner.lock().expect("undecided lock");
        let id = inner.next_id;
        inner.next_id += 1;
        for fp in &fingerprints {
            inner.by_fingerprint.insert(*fp, id);
        }
        inner.groups.push_back(Group {
            id,
            registered: Instant::now(),
            fingerprints,
            state: GroupState::Undecided,
        });
        let dropped = self.trim(&mut inner);
        (UndecidedId(id), dropped)
    }

    /// Records the outcome of a registered transaction: committed records are answered as stored
    /// until their retention ends; aborted ones are forgotten.
    pub fn resolve(&self, id: UndecidedId, committed: bool) {
        let mut inner = self.inner.lock().expect("undecided lock");
        let Some(at) = inner.groups.iter().position(|g| g.id == id.0) else {
            return; // already dropped (retention or capacity)
        };
        if committed {
            inner.groups[at].state = GroupState::Committed;
        } else if let Some(g) = inner.groups.remove(at) {
            Self::forget(&mut inner, &g);
        }
        self.count(&inner);
    }

    /// What is known about records with these fingerprints (after dropping expired entries).
    pub fn recall(&self, fingerprints: &[u64]) -> (Recall, Dropped) {
        let mut inner = self.inner.lock().expect("undecided lock");
        let dropped = self.trim(&mut inner);
        let state_of = |fp: &u64| {
            let id = inner.by_fingerprint.get(fp)?;
            inner.groups.iter().find(|g| g.id == *id).map(|g| g.state)
        };
        let states: Vec<Option<GroupState>> = fingerprints.iter().map(state_of).collect();
        let recall = if states.contains(&Some(GroupState::Undecided)) {
            Recall::Undecided
        } else if states.iter().any(Option::is_some) {
            Recall::Committed(states.iter().map(Option::is_some).collect())
        } else {
            Recall::Unknown
        };
        (recall, dropped)
    }

    /// Drops entries past their retention, then the oldest past capacity.
    fn trim(&self, inner: &mut Inner) -> Dropped {
        let mut dropped = Dropped::default();
        let mut held: usize = inner.groups.iter().map(|g| g.fingerprints.len()).sum();
        while let Some(g) = inner.groups.front() {
            let expired = g.registered.elapsed() > self.retention;
            // The newest transaction is kept even alone over capacity: its retry must not be
            // written while its outcome is open.
            if !expired && (held <= self.capacity || inner.groups.len() == 1) {
                break;
            }
            let g = inner.groups.pop_front().expect("front exists");
            held -= g.fingerprints.len();
            match g.state {
                GroupState::Undecided => dropped.undecided += 1,
                GroupState::Committed => dropped.committed += 1,
            }
            Self::forget(inner, &g);
        }
        self.count(inner);
        dropped
    }

    fn forget(inner: &mut Inner, g: &Group) {
        for fp in &g.fingerprints {
            if inner.by_fingerprint.get(fp) == Some(&g.id) {
                inner.by_fingerprint.remove(fp);
            }
        }
    }

    fn count(&self, inner: &Inner) {
        self.held
            .store(inner.by_fingerprint.len(), Ordering::Release);
    }
}

/// Whether the transaction that wrote the record at `position` committed, read with the
/// `read_committed` consumer configuration `reader`: `Some(true)` if the record is visible,
/// `Some(false)` if committed reading has passed its offset without returning it (aborted),
/// `None` if that could not be told within `timeout` (the partition's last stable offset has
/// not passed it yet, or the broker is away).
///
/// Only meaningful once the transaction has ended: after a producer with the same
/// `transactional.id` was initialised.
pub fn committed_at(
    reader: &ClientConfig,
    position: &RecordPosition,
    timeout: Duration,
) -> Result<Option<bool>, KafkaError> {
    let deadline = Instant::now() + timeout;
    let mut config = reader.clone();
    config
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let (topic, partition, offset) = (&position.topic, position.partition, position.offset);
    // The last stable offset (a read_committed consumer's watermark): until it passes the record,
    // committed reading cannot reach it and an end-of-partition would prove nothing.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match consumer.fetch_watermarks(topic, partition, left.min(Duration::from_secs(5))) {
            Ok((_, stable)) if stable > offset => break,
            Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(200).min(left)),
        }
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.partition() == partition => return Ok(Some(m.offset() == offset)),
            // Committed reading reached the stable offset, which is past the record, without
            // returning it: it was aborted.
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(Some(false)),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> UndecidedRecords {
        UndecidedRecords::new(Duration::from_secs(60), 100)
    }

    #[test]
    fn fingerprints_ignore_nothing_but_headers() {
        let m = memory();
        let a = m.fingerprint("t", Some(b"k"), b"v");
        assert_eq!(a, m.fingerprint("t", Some(b"k"), b"v"));
        assert_ne!(a, m.fingerprint("t", None, b"v"));
        assert_ne!(a, m.fingerprint("t", Some(b"k"), b"w"));
        assert_ne!(a, m.fingerprint("u", Some(b"k"), b"v"));
        // Field boundaries are part of the fingerprint.
        assert_ne!(
            m.fingerprint("t", Some(b"kv"), b""),
            m.fingerprint("t", Some(b"k"), b"v")
        );
    }

    #[test]
    fn undecided_records_are_held_until_resolved() {
        let m = memory();
        assert!(m.is_empty());
        let (id, _) = m.register(vec![1, 2, 3]);
        assert!(!m.is_empty());
        assert_eq!(m.recall(&[9, 2]).0, Recall::Undecided);
        assert_eq!(m.recall(&[9, 8]).0, Recall::Unknown);
        m.resolve(id, true);
        assert_eq!(
            m.recall(&[1, 9, 3]).0,
            Recall::Committed(vec![true, false, true])
        );
        let (other, _) = m.register(vec![7]);
        m.resolve(other, false);
        assert_eq!(
            m.recall(&[7]).0,
            Recall::Unknown,
            "aborted records are forgotten"
        );
        assert_eq!(m.recall(&[1]).0, Recall::Committed(vec![true]));
    }

    #[test]
    fn entries_expire_and_capacity_drops_the_oldest() {
        let m = UndecidedRecords::new(Duration::from_millis(50), 100);
        let (id, _) = m.register(vec![1]);
        m.resolve(id, true);
        m.register(vec![2]);
        std::thread::sleep(Duration::from_millis(80));
        let (recall, dropped) = m.recall(&[1, 2]);
        assert_eq!(recall, Recall::Unknown);
        assert_eq!(
            dropped,
            Dropped {
                undecided: 1,
                committed: 1
            }
        );
        assert!(m.is_empty());

        let m = UndecidedRecords::new(Duration::from_secs(60), 4);
        m.register(vec![1, 2, 3]);
        let (_, dropped) = m.register(vec![4, 5]);
        assert_eq!(dropped.undecided, 1, "over capacity: the oldest goes");
        assert_eq!(m.recall(&[1]).0, Recall::Unknown);
        assert_eq!(m.recall(&[4]).0, Recall::Undecided);
        // A transaction larger than the capacity is still kept whole while it is the only one.
        let (_, dropped) = m.register((10..20).collect());
        assert_eq!(dropped.undecided, 1);
        assert_eq!(m.recall(&[15]).0, Recall::Undecided);
    }

    #[test]
    fn a_resolution_after_the_entry_was_dropped_is_ignored() {
        let m = UndecidedRecords::new(Duration::from_secs(60), 1);
        let (old, _) = m.register(vec![1]);
        m.register(vec![2]);
        m.resolve(old, true);
        assert_eq!(m.recall(&[1]).0, Recall::Unknown);
        assert_eq!(m.recall(&[2]).0, Recall::Undecided);
    }
}
