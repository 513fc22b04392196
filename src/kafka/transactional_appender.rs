//! Group commit of records from many concurrent callers in Kafka transactions.
//!
//! The HTTP connectors answer a sender only once its records are durable, and a failure answer
//! must mean "nothing of yours is visible, send it again". A plain idempotent producer cannot
//! promise the second half: a record that timed out while the broker went away may still have
//! been written ("possibly persisted"), and its retry would duplicate it. Here every caller's
//! records join the currently open transaction; the transaction commits every `linger` (or when
//! it is full), and each caller learns the outcome of *its* transaction: committed (acknowledge)
//! or aborted (nothing visible to `read_committed` consumers; answer 503).
//!
//! A commit whose answer does not come within `txn_timeout` is not answered 503 at once: the
//! coordinator may have the commit and finish it (a broker stalled by load or a GC pause), and
//! the sender's retry would then be a duplicate. The worker keeps asking (`commit_transaction`
//! again, which waits for the same decision) for up to `decision_wait` more and answers what was
//! decided. The wait is bounded by what a sender waits for an answer: keeping the commit alive
//! longer would have it complete after the sender has given up and resent. When the broker stays
//! silent, the jobs are answered 503 and counted as `unknown`, and the producer is replaced: the
//! new one (same `transactional.id`) has the coordinator abort the transaction unless the commit
//! had already reached its log.
//!
//! Records whose commit went undecided are remembered ([`UndecidedRecords`]) from the moment the
//! decision wait starts: a retry carrying them is answered 503 again, unwritten, until the worker
//! has learnt the outcome (its new producer settles the transaction, then a committed read at one
//! of its records tells); after a commit the retry is answered as accepted without writing the
//! records twice, after an abort it is written.
//!
//! One worker thread owns the transactional producer (librdkafka's transactional calls block).
//! Callers wait on a bounded queue, so memory stays bounded; a full queue is an immediate
//! [`AppendError::Overloaded`]. Every job is answered within a bounded time: jobs older than
//! `job_deadline` are failed before they join a transaction.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio::sync::oneshot;

use rdkafka::client::ClientContext;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::health::ReadinessHandle;
use crate::internal_events::{
    AppenderJobsEnded, AppenderTransactionEnded, CommitUndecided, TransactionsInitFailed,
    UndecidedOutcomeLearnt, UndecidedTransactionsExpired, emit,
};
use crate::kafka::transactional_output::{commit_transaction_until, flush_deliveries};
use crate::kafka::undecided::{
    Recall, RecordPosition, UndecidedId, UndecidedRecords, committed_at,
};

/// One record to append.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Partitioning key (`None`: librdkafka spreads records).
    pub key: Option<Bytes>,
    /// Value bytes.
    pub payload: Bytes,
    /// Headers (name, value).
    pub headers: Vec<(&'static str, Bytes)>,
}

impl OutRecord {
    fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

/// Why records were not committed. Nothing of the caller's records is visible to
/// `read_committed` consumers in any of these cases.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// Too many callers are already waiting; try again shortly.
    #[error("overloaded: too many requests waiting for Kafka")]
    Overloaded,
    /// Kafka did not commit the transaction (broker down, timeout, fenced...).
    #[error("Kafka did not commit the records: {0}")]
    Unavailable(String),
    /// The appender is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Tuning of an appender.
#[derive(Debug, Clone)]
pub struct AppenderSettings {
    /// Stage name for metrics and logs.
    pub role: &'static str,
    /// How long a transaction stays open collecting callers.
    pub linger: Duration,
    /// A transaction commits once it holds this many records.
    pub max_records: usize,
    /// ... or this many bytes.
    pub max_bytes: usize,
    /// Callers that may wait for a transaction slot.
    pub queue_capacity: usize,
    /// A job older than this is failed instead of joining a transaction.
    pub job_deadline: Duration,
    /// Timeout of init/commit/abort calls.
    pub txn_timeout: Duration,
    /// Transactional producers taking turns: one collects the next transaction while another
    /// commits. Each has its own `transactional.id` (`<id>-<n>`).
    pub producers: usize,
    /// Pause of a producer after its commit before it collects again.
    pub cooldown: Duration,
    /// How much longer a commit not answered within `txn_timeout` is waited for before its
    /// jobs are answered as failed (see the module docs).
    pub decision_wait: Duration,
    /// How long records of an undecided commit are remembered (retries within it are neither
    /// written twice nor lost); longer than senders keep retrying.
    pub undecided_retention: Duration,
    /// Most records remembered at once (memory bound: 8 bytes each plus a table entry).
    pub undecided_capacity: usize,
}

/// How long the producer that settles an undecided transaction may take to initialise.
const SETTLE_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A job waiting in the queue may still be withdrawn by its caller; once a worker has taken it
/// into a transaction, only the worker answers it (so a 503 always means "not committed").
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

struct Job {
    records: Vec<OutRecord>,
    enqueued: Instant,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<(), AppendError>>,
}

/// A handle to the group-commit worker; cheap to clone.
#[derive(Clone)]
pub struct TransactionalAppender {
    tx: SyncSender<Job>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    job_deadline: Duration,
    role: &'static str,
    undecided: Arc<UndecidedRecords>,
}

impl TransactionalAppender {
    /// Starts the worker. `client_config` must carry a `transactional.id` unique to this
    /// process (a restarted process with the same id fences its predecessor); `reader` is a
    /// consumer configuration, used to learn the outcome of undecided commits.
    pub fn start(
        client_config: ClientConfig,
        reader: ClientConfig,
        settings: AppenderSettings,
        readiness: ReadinessHandle,
    ) -> Self {
        let (tx, rx) = sync_channel(settings.queue_capacity);
        let queue = Arc::new(Mutex::new(rx));
        let (job_deadline, role) = (settings.job_deadline, settings.role);
        let undecided = Arc::new(UndecidedRecords::new(
            settings.undecided_retention,
            settings.undecided_capacity,
        ));
        let base_id = client_config
            .get("transactional.id")
            .expect("transactional.id is set")
            .to_string();
        let workers = (0..settings.producers.max(1))
            .map(|i| {
                let mut config = client_config.clone();
                config.set("transactional.id", format!("{base_id}-{i}"));
                let (settings, readiness, queue) =
                    (settings.clone(), readiness.clone(), queue.clone());
                let (reader, undecided) = (reader.clone(), undecided.clone());
                std::thread::Builder::new()
                    .name(format!("{}-txn-{i}", settings.role))
                    .spawn(move || {
                        Worker::new(config, reader, settings, readiness, undecided).run(queue)
                    })
                    .expect("spawn appender thread")
            })
            .collect();
        Self {
            tx,
            workers: Arc::new(Mutex::new(workers)),
            job_deadline,
            role,
            undecided,
        }
    }

    /// Appends `records` atomically: `Ok` once they are committed, `Err` if none of them is.
    ///
    /// A job still queued after `job_deadline` is withdrawn and fails at once; a job already in a
    /// transaction is answered by the worker when that transaction ends. Records of an earlier
    /// attempt whose commit went undecided are not written again (see the module docs).
    pub async fn append(&self, mut records: Vec<OutRecord>) -> Result<(), AppendError> {
        if !self.undecided.is_empty() {
            let fingerprints = fingerprints(&self.undecided, &records);
            let (recall, dropped) = self.undecided.recall(&fingerprints);
            emit(UndecidedTransactionsExpired {
                role: self.role,
                count: dropped.undecided,
            });
            let jobs = |result| {
                emit(AppenderJobsEnded {
                    role: self.role,
                    result,
                    count: 1,
                })
            };
            match recall {
                Recall::Unknown => {}
                Recall::Undecided => {
                    jobs("held_undecided");
                    return Err(AppendError::Unavailable(
                        "an earlier delivery of these events has a commit Kafka has not decided \
                         yet; retry later"
                            .into(),
                    ));
                }
                Recall::Committed(stored) => {
                    jobs("already_committed");
                    let mut stored = stored.into_iter();
                    records.retain(|_| !stored.next().unwrap_or(false));
                    if records.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
        let (reply, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            records,
            enqueued: Instant::now(),
            state: state.clone(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AppendError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(AppendError::ShuttingDown),
        }
        match tokio::time::timeout(self.job_deadline, &mut rx).await {
            Ok(answer) => answer.unwrap_or(Err(AppendError::ShuttingDown)),
            Err(_) => {
                if state
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    emit(AppenderJobsEnded {
                        role: self.role,
                        result: "withdrawn",
                        count: 1,
                    });
                    return Err(AppendError::Unavailable(
                        "timed out waiting for Kafka".into(),
                    ));
                }
                rx.await.unwrap_or(Err(AppendError::ShuttingDown))
            }
        }
    }

    /// Stops accepting jobs, lets the worker finish the open transaction, and waits for it.
    /// Every clone must be dropped (or this called) for the worker to see the end.
    pub async fn close(self) {
        let workers = std::mem::take(&mut *self.workers.lock().expect("worker lock"));
        drop(self.tx);
        for w in workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

/// The memory's fingerprints of `records`.
fn fingerprints<'a>(
    memory: &UndecidedRecords,
    records: impl IntoIterator<Item = &'a OutRecord>,
) -> Vec<u64> {
    records
        .into_iter()
        .map(|r| memory.fingerprint(&r.topic, r.key.as_deref(), &r.payload))
        .collect()
}

/// Remembers where the first record of the open transaction was written: one position tells the
/// outcome of the whole transaction (see [`committed_at`]).
#[derive(Default)]
struct FirstDelivery {
    position: Mutex<Option<RecordPosition>>,
}

impl FirstDelivery {
    fn reset(&self) {
        *self.position.lock().expect("position lock") = None;
    }

    fn position(&self) -> Option<RecordPosition> {
        self.position.lock().expect("position lock").clone()
    }
}

impl ClientContext for FirstDelivery {}

impl ProducerContext for FirstDelivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Ok(m) = result {
            let mut position = self.position.lock().expect("position lock");
            if position.is_none() {
                *position = Some(RecordPosition {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
        }
    }
}

/// A transaction of this worker whose commit stayed undecided, until its outcome is learnt.
struct Unresolved {
    id: UndecidedId,
    position: Option<RecordPosition>,
}

struct Worker {
    config: ClientConfig,
    reader: ClientConfig,
    settings: AppenderSettings,
    readiness: ReadinessHandle,
    producer: Option<ThreadedProducer<FirstDelivery>>,
    undecided: Arc<UndecidedRecords>,
    unresolved: Vec<Unresolved>,
}

/// The jobs of one open transaction.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    records: usize,
    /// Set when a record could not even be enqueued: the transaction must abort.
    failure: Option<String>,
    /// A job that arrived but did not fit; it opens the next transaction.
    leftover: Option<Job>,
}

/// How a transaction ended, as far as this producer can tell.
#[derive(Debug)]
enum TxnOutcome {
    Committed,
    /// Nothing of it is (or will become) visible. `settled`: every record's delivery was
    /// answered, so no produce request of it can still reach a partition.
    NotCommitted {
        reason: String,
        settled: bool,
    },
    /// The coordinator may have committed it: the broker did not answer within `txn_timeout`
    /// plus `decision_wait`.
    Unknown(String),
}

/// Whether a failed `commit_transaction` may still be completed by the coordinator: the call
/// timed out (or met a retriable error) without the transaction being marked for abort.
fn commit_undecided(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t)
        if !t.is_fatal() && t.is_retriable() && !t.txn_requires_abort())
}

/// What to do after a failed transaction.
enum Recovery {
    /// Aborted cleanly; the producer can begin the next transaction.
    Aborted,
    /// The producer is unusable (fenced, fatal, or the abort failed): build a new one.
    Recreate,
}

impl Worker {
    fn new(
        config: ClientConfig,
        reader: ClientConfig,
        settings: AppenderSettings,
        readiness: ReadinessHandle,
        undecided: Arc<UndecidedRecords>,
    ) -> Self {
        Self {
            config,
            reader,
            settings,
            readiness,
            producer: None,
            undecided,
            unresolved: Vec::new(),
        }
    }

    fn role(&self) -> &'static str {
        self.settings.role
    }

    fn run(mut self, queue: Arc<Mutex<Receiver<Job>>>) {
        // Initialise eagerly so the role reports ready (and the first request is fast); if Kafka
        // is not there yet, the first job retries.
        self.ensure_producer(Some(&queue.lock().expect("queue lock")));
        let mut held: Option<Job> = None;
        loop {
            // Collect under the queue lock; commit after releasing it, so another worker
            // collects the next transaction while this one commits.
            let batch = match held.take() {
                // A job this worker took when it did not fit: it opens the next transaction.
                // If another worker holds the queue (waiting for jobs, so none are queued, or
                // collecting its own), this one goes alone: waiting for the lock could wait for
                // a job that never comes while this one's sender waits for its answer.
                Some(first) => match queue.try_lock() {
                    Ok(rx) => self.start(first, Some(&rx)),
                    Err(_) => self.start(first, None),
                },
                None => {
                    // An undecided commit is settled as soon as Kafka allows, not at the next
                    // job: its senders' retries are held until then. A worker without a
                    // producer keeps trying too: readiness must not wait for a request that a
                    // load balancer only sends once the role is ready.
                    if self.producer.is_none() || !self.unresolved.is_empty() {
                        self.settle();
                    }
                    let rx = queue.lock().expect("queue lock");
                    let next = if self.producer.is_some() && self.unresolved.is_empty() {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    } else {
                        rx.recv_timeout(Duration::from_secs(1))
                    };
                    let first = match next {
                        Ok(j) => match self.fresh(j) {
                            Some(j) => j,
                            None => continue,
                        },
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    self.start(first, Some(&rx))
                }
            };
            let Some(mut batch) = batch else { continue };
            held = batch.leftover.take();
            self.finish(batch);
            // Let the broker finish writing this transaction's markers before this producer
            // opens the next one; otherwise librdkafka's AddPartitionsToTxn meets
            // CONCURRENT_TRANSACTIONS and backs off a fixed 20 ms. Other producers collect meanwhile.
            std::thread::sleep(self.settings.cooldown);
        }
        if let Some(p) = self.producer.take() {
            let _ = p.flush(self.settings.txn_timeout);
        }
        self.readiness.set_ready(false);
        tracing::info!(role = self.role(), "transactional appender stopped");
    }

    /// Opens a transaction with `first` (see [`collect`](Self::collect)); `None` when it could
    /// not (its job already answered).
    fn start(&mut self, first: Job, rx: Option<&Receiver<Job>>) -> Option<Batch> {
        if !self.ensure_producer(rx) {
            // No producer before the job expired: fail it and go on.
            let _ = first.reply.send(Err(AppendError::Unavailable(
                "no transactional producer (is Kafka reachable?)".into(),
            )));
            return None;
        }
        self.collect(first, rx)
    }

    /// Fails jobs that waited too long (their callers must not wait forever).
    fn fresh(&self, job: Job) -> Option<Job> {
        if job.reply.is_closed()
            || job
                .state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None; // withdrawn by its caller, who already answered 503
        }
        if job.enqueued.elapsed() > self.settings.job_deadline {
            emit(AppenderJobsEnded {
                role: self.role(),
                result: "expired",
                count: 1,
            });
            let _ = job.reply.send(Err(AppendError::Unavailable(
                "timed out waiting for Kafka".into(),
            )));
            return None;
        }
        Some(job)
    }

    /// One attempt to initialise a producer (which also ends this worker's undecided
    /// transactions) and learn their outcomes.
    fn settle(&mut self) {
        if self.producer.is_none() {
            // No sender waits on this (their retries are answered from the memory), so the
            // init may take longer than the ack deadline: a new client must bootstrap, find the
            // coordinator and wait while it ends the old transaction, which under load took
            // longer than a 1 s deadline every time (in CI: never settled within 90 s).
            let init_timeout = self.settings.txn_timeout.max(SETTLE_INIT_TIMEOUT);
            if self.init_producer(init_timeout).is_err() {
                return;
            }
        }
        self.learn_outcomes();
    }

    /// Reads the outcome of this worker's undecided transactions (its producer is initialised,
    /// so they have ended) and tells the memory. Called without the queue lock: reading takes a
    /// while, and other workers keep collecting meanwhile.
    fn learn_outcomes(&mut self) {
        let role = self.role();
        let mut still = Vec::new();
        for u in std::mem::take(&mut self.unresolved) {
            let Some(position) = &u.position else {
                // No delivery report (cannot happen after a successful flush): the entry stays
                // until its retention ends.
                continue;
            };
            // Reading waits for open transactions of other producers on the partition (their
            // commits take milliseconds) and for a reader connection.
            let timeout = self.settings.txn_timeout.max(Duration::from_secs(5));
            match committed_at(&self.reader, position, timeout) {
                Ok(Some(committed)) => {
                    emit(UndecidedOutcomeLearnt {
                        role,
                        committed,
                        topic: &position.topic,
                        partition: position.partition,
                        offset: position.offset,
                    });
                    self.undecided.resolve(u.id, committed);
                }
                Ok(None) | Err(_) => still.push(u),
            }
        }
        self.unresolved = still;
    }

    /// One attempt to create and initialise this worker's producer (within `init_timeout`),
    /// with readiness, metrics and logs following the result.
    fn init_producer(&mut self, init_timeout: Duration) -> Result<(), KafkaError> {
        let created = self
            .config
            .create_with_context(FirstDelivery::default())
            .and_then(|p: ThreadedProducer<FirstDelivery>| {
                p.init_transactions(init_timeout).map(|()| p)
            });
        match created {
            Ok(p) => {
                self.producer = Some(p);
                self.readiness.set_ready(true);
                tracing::info!(role = self.role(), "transactional producer ready");
                Ok(())
            }
            Err(e) => {
                self.readiness.set_ready(false);
                emit(TransactionsInitFailed {
                    role: self.role(),
                    error: &e,
                    undecided: self.unresolved.len(),
                });
                Err(e)
            }
        }
    }

    /// Makes sure an initialised producer exists, retrying while jobs are waiting.
    fn ensure_producer(&mut self, rx: Option<&Receiver<Job>>) -> bool {
        let started = Instant::now();
        while self.producer.is_none() {
            match self.init_producer(self.settings.txn_timeout) {
                Ok(()) => {}
                Err(e) => {
                    // Fail queued jobs that expired meanwhile, so their callers get a 503 now.
                    while let Some(Ok(j)) = rx.map(Receiver::try_recv) {
                        if let Some(j) = self.fresh(j) {
                            let _ = j.reply.send(Err(AppendError::Unavailable(e.to_string())));
                        }
                    }
                    if started.elapsed() > self.settings.job_deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        true
    }

    /// Opens a transaction and fills it with `first` and, given the queue, whatever arrives
    /// within `linger`.
    fn collect(&mut self, first: Job, rx: Option<&Receiver<Job>>) -> Option<Batch> {
        let producer = self.producer.as_ref().expect("producer exists");
        if let Err(e) = producer.begin_transaction() {
            tracing::warn!(role = self.role(), error = %e, "begin_transaction failed");
            self.producer = None;
            self.readiness.set_ready(false);
            let _ = first
                .reply
                .send(Err(AppendError::Unavailable(e.to_string())));
            return None;
        }
        producer.context().reset();
        let started = Instant::now();
        let mut b = Batch::default();
        let mut bytes = 0usize;
        let mut next = Some(first);
        loop {
            if let Some(job) = next.take() {
                let job_records = job.records.len();
                let job_bytes: usize = job.records.iter().map(OutRecord::size).sum();
                if !b.jobs.is_empty()
                    && (b.records + job_records > self.settings.max_records
                        || bytes + job_bytes > self.settings.max_bytes)
                {
                    b.leftover = Some(job);
                    break;
                }
                if let Err(e) = self.produce(&job.records) {
                    b.failure = Some(e);
                    b.jobs.push(job);
                    break;
                }
                b.records += job_records;
                bytes += job_bytes;
                b.jobs.push(job);
                if b.records >= self.settings.max_records || bytes >= self.settings.max_bytes {
                    break;
                }
            }
            let remaining = self.settings.linger.saturating_sub(started.elapsed());
            let Some(rx) = rx.filter(|_| !remaining.is_zero()) else {
                break;
            };
            match rx.recv_timeout(remaining) {
                Ok(j) => next = self.fresh(j),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(b)
    }

    /// Commits (or, after a failure, aborts) the batch's transaction and answers its jobs.
    fn finish(&mut self, batch: Batch) {
        let role = self.role();
        let outcome = match batch.failure {
            // Records not delivered: the commit is never sent, so nothing becomes visible.
            None => match self.flush_open_transaction() {
                Ok(()) => self.commit(&batch.jobs),
                Err(reason) => TxnOutcome::NotCommitted {
                    reason,
                    settled: false,
                },
            },
            Some(reason) => TxnOutcome::NotCommitted {
                reason,
                settled: false,
            },
        };
        // A producer whose records may still be in flight is not reused: a produce request that
        // reaches its partition after the abort would join this producer's next transaction
        // (same producer epoch) and be committed with it, so the sender's retry would duplicate
        // it. A new producer bumps the epoch (late requests are refused) and, with the same
        // `transactional.id`, has the coordinator abort this transaction. The same settles an
        // undecided commit, which librdkafka cannot abort.
        let (reason, unknown, reuse) = match outcome {
            TxnOutcome::Committed => (None, false, true),
            TxnOutcome::NotCommitted { reason, settled } => (Some(reason), false, settled),
            TxnOutcome::Unknown(reason) => (Some(reason), true, false),
        };
        match reason {
            None => {
                emit(AppenderTransactionEnded::Committed {
                    role,
                    records: batch.records,
                });
                for j in batch.jobs {
                    let _ = j.reply.send(Ok(()));
                }
            }
            Some(reason) => {
                emit(AppenderTransactionEnded::Failed {
                    role,
                    reason: &reason,
                    unknown,
                    jobs: batch.jobs.len(),
                });
                // Not committed, so the transaction can only end aborted: answer first, then
                // abort (which may block while the broker is away) or replace the producer.
                for j in batch.jobs {
                    let _ = j.reply.send(Err(AppendError::Unavailable(reason.clone())));
                }
                if !reuse || matches!(self.abort(), Recovery::Recreate) {
                    self.producer = None;
                    self.readiness.set_ready(false);
                }
            }
        }
    }

    /// Commits the open transaction (its records are delivered). A commit not answered within
    /// `txn_timeout` is waited for up to `decision_wait` more, so a broker that was only slow
    /// does not get a committed transaction answered 503.
    fn commit(&mut self, jobs: &[Job]) -> TxnOutcome {
        let producer = self.producer.as_ref().expect("producer exists");
        let first = commit_transaction_until(producer, Instant::now() + self.settings.txn_timeout);
        let e = match first {
            Ok(()) => return TxnOutcome::Committed,
            Err(e) if !commit_undecided(&e) => {
                return TxnOutcome::NotCommitted {
                    reason: e.to_string(),
                    settled: true,
                };
            }
            Err(e) => e,
        };
        let role = self.role();
        emit(CommitUndecided {
            role,
            error: &e,
            jobs: jobs.len(),
            wait: self.settings.decision_wait,
        });
        // From now on a sender that gave up waiting may resend: its retry is held, not written,
        // until this commit is decided.
        let fingerprints = fingerprints(&self.undecided, jobs.iter().flat_map(|j| &j.records));
        let (id, dropped) = self.undecided.register(fingerprints);
        emit(UndecidedTransactionsExpired {
            role,
            count: dropped.undecided,
        });
        let outcome = match commit_transaction_until(
            producer,
            Instant::now() + self.settings.decision_wait,
        ) {
            Ok(()) => TxnOutcome::Committed,
            Err(e) if !commit_undecided(&e) => TxnOutcome::NotCommitted {
                reason: e.to_string(),
                settled: true,
            },
            Err(e) => TxnOutcome::Unknown(e.to_string()),
        };
        match &outcome {
            // A retry sent during the wait was answered 503; it must not be written now.
            TxnOutcome::Committed => self.undecided.resolve(id, true),
            TxnOutcome::NotCommitted { .. } => self.undecided.resolve(id, false),
            TxnOutcome::Unknown(_) => self.unresolved.push(Unresolved {
                id,
                position: producer.context().position(),
            }),
        }
        outcome
    }

    /// Delivers the open transaction's records before committing it (see [`flush_deliveries`]).
    fn flush_open_transaction(&self) -> Result<(), String> {
        flush_deliveries(
            self.producer.as_ref().expect("producer exists"),
            self.settings.txn_timeout,
        )
    }

    fn abort(&self) -> Recovery {
        let producer = self.producer.as_ref().expect("producer exists");
        match producer.abort_transaction(self.settings.txn_timeout) {
            Ok(()) => Recovery::Aborted,
            Err(e) => {
                tracing::warn!(role = self.role(), error = %e, "abort failed; recreating the producer");
                Recovery::Recreate
            }
        }
    }

    /// Enqueues records into the open transaction, waiting briefly when the queue is full.
    fn produce(&self, records: &[OutRecord]) -> Result<(), String> {
        let producer = self.producer.as_ref().expect("producer exists");
        for r in records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (name, value) in &r.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_ref()),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic)
                .payload(r.payload.as_ref())
                .headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k.as_ref());
            }
            let deadline = Instant::now() + self.settings.txn_timeout;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => return Err(format!("produce to {}: {e}", r.topic)),
                }
            }
        }
        Ok(())
    }
}
