//! A fault-injecting TCP proxy in front of the local broker's `PROXIED` listener
//! (`scripts/kafka-local`: advertised on the broker port + 2, bound on + 3). Clients that bootstrap
//! from the proxy are told by the broker's metadata to reach it there, so all their traffic
//! crosses the proxy. It reads the Kafka framing (a 4-byte size, then for requests the API key,
//! version and correlation id; for responses the correlation id) and, when armed, stalls the
//! coordinator's answer to a transaction commit (`EndTxn`): the broker decides the commit, the
//! producer never hears of it. That is the one case in which a producer cannot know whether its
//! records were stored, made deterministic. It can also cut its clients off from everything
//! that writes ([`KafkaProxy::set_writes_down`]): produce and transaction requests go
//! unanswered while reads (fetches, group membership, metadata) still work, as for a role on a
//! multi-broker cluster that still reaches the leaders it reads from but not those it writes to
//! or its transaction coordinator. It can slow writes down ([`KafkaProxy::set_write_delay`]: a
//! broker whose disk or replication is slow) and refuse offset commits
//! ([`KafkaProxy::set_commits_refused`]: the connection carrying one is closed, as by a group
//! coordinator that goes away).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Kafka's API key of `EndTxn` (commit or abort of a transaction).
const END_TXN: i16 = 26;
/// The API keys of writes: `Produce`, `InitProducerId`, `AddPartitionsToTxn`,
/// `AddOffsetsToTxn`, `EndTxn`, `TxnOffsetCommit`.
const WRITES: [i16; 6] = [0, 22, 24, 25, END_TXN, 28];
/// Kafka's API key of `OffsetCommit` (a consumer group's plain offset commit).
const OFFSET_COMMIT: i16 = 8;

/// What an armed proxy does with the next `EndTxn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndTxnFault {
    /// Forward it (the coordinator decides the transaction), withhold the answer and everything
    /// after it on that connection.
    WithholdAnswer,
    /// Drop it (the coordinator never hears of the commit) and withhold everything after it.
    Drop,
}

#[derive(Default)]
struct Faults {
    withhold_answers: AtomicUsize,
    drops: AtomicUsize,
    applied: AtomicUsize,
    /// `true` while writes are cut off: their requests are dropped, never answered.
    writes_down: AtomicBool,
    /// How long each write request is held before it is forwarded, in ms (0: not at all).
    write_delay_ms: AtomicU64,
    /// `true` while offset commits are refused: the connection carrying one is closed.
    commits_refused: AtomicBool,
}

/// A running proxy; it stops with the test process.
pub struct KafkaProxy {
    /// `host:port` clients bootstrap from.
    pub bootstrap: String,
    faults: Arc<Faults>,
}

impl KafkaProxy {
    /// (where clients bootstrap, where the proxy forwards to): the local broker's advertised
    /// `PROXIED` address and its listener. Fails (never skips) unless the tests use the local
    /// broker of `scripts/kafka-local`.
    pub fn addresses() -> (String, String) {
        let servers = super::bootstrap();
        let port: u16 = servers
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the proxy test needs the local broker of scripts/kafka-local (its PROXIED \
                     listener), not {servers}"
                )
            });
        (
            format!("127.0.0.1:{}", port + 2),
            format!("127.0.0.1:{}", port + 3),
        )
    }

    /// Listens on [`addresses`](Self::addresses) and forwards to the broker.
    pub async fn start() -> KafkaProxy {
        let (listen, upstream) = Self::addresses();
        let listener = TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| panic!("proxy cannot listen on {listen}: {e}"));
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (f, upstream) = (f.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(broker) = TcpStream::connect(&upstream).await else {
                        return; // the client sees a closed connection and reconnects
                    };
                    let _ = client.set_nodelay(true);
                    let _ = broker.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (br, bw) = broker.into_split();
                    let watched: Arc<Mutex<HashSet<i32>>> = Arc::default();
                    tokio::spawn(requests(cr, bw, f, watched.clone()));
                    tokio::spawn(responses(br, cw, watched));
                });
            }
        });
        KafkaProxy {
            bootstrap: listen,
            faults,
        }
    }

    /// Applies `fault` to the next `EndTxn` that crosses the proxy.
    pub fn arm(&self, fault: EndTxnFault) {
        match fault {
            EndTxnFault::WithholdAnswer => &self.faults.withhold_answers,
            EndTxnFault::Drop => &self.faults.drops,
        }
        .fetch_add(1, Ordering::SeqCst);
    }

    /// Cuts the proxy's clients off from writing (`true`: produce and transaction requests
    /// are dropped, never answered; reads still pass) or lets them write again (`false`).
    pub fn set_writes_down(&self, down: bool) {
        self.faults.writes_down.store(down, Ordering::SeqCst);
    }

    /// Holds every write request (produce and transaction requests) `delay` before forwarding
    /// it, and the requests after it on its connection with it (answers keep their order);
    /// `Duration::ZERO` forwards at once again.
    pub fn set_write_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.faults.write_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Refuses offset commits (`true`: the connection an `OffsetCommit` arrives on is closed
    /// before it reaches the broker, so the commit fails at once) or lets them pass (`false`).
    pub fn set_commits_refused(&self, refused: bool) {
        self.faults.commits_refused.store(refused, Ordering::SeqCst);
    }

    /// How many `EndTxn` requests a fault was applied to.
    pub fn applied(&self) -> usize {
        self.faults.applied.load(Ordering::SeqCst)
    }
}

/// Takes one armed fault of the kind, if any.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Reads one frame (size prefix included).
async fn frame(r: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    r.read_exact(&mut size).await.ok()?;
    let n = i32::from_be_bytes(size);
    let mut buf = vec![0u8; 4 + usize::try_from(n).ok()?];
    buf[..4].copy_from_slice(&size);
    r.read_exact(&mut buf[4..]).await.ok()?;
    Some(buf)
}

/// Client to broker: forwards requests; an armed `EndTxn` is watched (its answer withheld) or
/// dropped, writes are dropped while cut off and held while slowed down, and an offset commit
/// while refused closes the connection.
async fn requests(
    mut from: OwnedReadHalf,
    to: OwnedWriteHalf,
    faults: Arc<Faults>,
    watched: Arc<Mutex<HashSet<i32>>>,
) {
    // Frames go out in order, each not before its release time: a held write holds the
    // requests behind it, as on a slow broker's connection.
    let (out, mut released) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut to = to;
        while let Some((at, f)) = released.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&f).await.is_err() {
                return;
            }
        }
    });
    while let Some(f) = frame(&mut from).await {
        let mut at = tokio::time::Instant::now();
        if f.len() >= 12 {
            let api_key = i16::from_be_bytes([f[4], f[5]]);
            let correlation = i32::from_be_bytes([f[8], f[9], f[10], f[11]]);
            if faults.writes_down.load(Ordering::SeqCst) && WRITES.contains(&api_key) {
                continue; // never forwarded: the client waits until its own deadline
            }
            if api_key == OFFSET_COMMIT && faults.commits_refused.load(Ordering::SeqCst) {
                return; // both directions close: the client sees the connection drop
            }
            if WRITES.contains(&api_key) {
                at += Duration::from_millis(faults.write_delay_ms.load(Ordering::SeqCst));
            }
            if api_key == END_TXN {
                if take(&faults.drops) {
                    faults.applied.fetch_add(1, Ordering::SeqCst);
                    // Never forwarded; whatever follows on this connection is withheld too.
                    watched.lock().unwrap().insert(i32::MIN);
                    std::future::pending::<()>().await;
                }
                if take(&faults.withhold_answers) {
                    faults.applied.fetch_add(1, Ordering::SeqCst);
                    watched.lock().unwrap().insert(correlation);
                }
            }
        }
        if out.send((at, f)).is_err() {
            return;
        }
    }
}

/// Broker to client: forwards answers until a watched one comes; from then on nothing more.
async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    watched: Arc<Mutex<HashSet<i32>>>,
) {
    let mut withholding = false;
    while let Some(f) = frame(&mut from).await {
        if !withholding && f.len() >= 8 {
            let correlation = i32::from_be_bytes([f[4], f[5], f[6], f[7]]);
            let w = watched.lock().unwrap();
            withholding = w.contains(&correlation) || w.contains(&i32::MIN);
        }
        if withholding {
            continue; // read and discarded, so the broker is never blocked by this connection
        }
        if to.write_all(&f).await.is_err() {
            return;
        }
    }
}
