//! Issue #18: exactly once on a real 3-broker cluster (`scripts/kafka-local cluster`: KRaft,
//! replication factor 3, `min.insync.replicas` 2) while brokers die under load.
//!
//! Every role runs as its own process, as in production, with the shipped defaults for
//! everything that matters to failover (transaction call deadline, session timeouts); only
//! batching and retry pauses are shortened so a run is quick. A steady load of synthetic Pendo
//! events (or Segment audience events, for the reverse flow) is posted by senders that retry a
//! delivery on 503 and on connection errors, as Pendo and Segment do, until it is answered 200.
//!
//! * Forward path (`pendo-webhook` -> `transform-pendo` -> `segment-sink`), one broker at a
//!   time SIGKILLed and restarted: (a) the leader of a `canonical.segment-calls` partition,
//!   (b) the transaction coordinator of `transform-pendo`'s `transactional.id`, (c) the group
//!   coordinator of the sink's group. Then a rolling restart (graceful, one after another,
//!   each waiting for every replica to be back in sync). Then two brokers down at once (below
//!   `min.insync.replicas`): the webhook must answer 503, never 200, and the pipeline must
//!   resume by itself when they return.
//! * Reverse flow (`segment-webhook` -> `transform-segment` -> `pendo-sink`) through a leader
//!   kill and a coordinator kill: the exact final Pendo state.
//!
//! Each run checks: every event answered 200 reached its destination (Segment: exactly one
//! call per event after de-duplication by messageId, none extra; Pendo: the exact state);
//! `canonical.segment-calls`, read `read_committed`, holds exactly one record per event (the
//! transformer's exactly-once); no request was answered other than 200 or 503; and no role
//! process exited (none needed a restart, by hand or by a supervisor). The longest stall of
//! the pipeline after each broker event is printed (`RESULT:` lines).
//!
//! The tests share the cluster, so they take turns ([`CLUSTER`]). `CLUSTER_FAILOVER_RATE`
//! (events per second, default 400) and `CLUSTER_FAILOVER_SETTLE_S` (load between two broker
//! events, default 6) size a run; `scripts/cluster-failover` runs them with a heavier load.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use pendo_segment::connectors::webhook::signature::{sign_hex, signed_part};
use pendo_segment::schema::{SegmentCallCodec, WireFormat};
use rdkafka::Message;
use serde_json::{Value, json};
use support::cluster::{BROKERS, LocalCluster};
use support::pendo_server::{PendoServerConfig, PendoTestServer};
use support::segment_server::{SegmentServerConfig, SegmentTestServer};
use support::synthetic_pendo::synthetic_event;
use support::*;

/// The tests kill brokers of one shared cluster: one at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PENDO_SECRET: &str = "cluster-pendo-webhook-secret";
const SEGMENT_SECRET: &str = "cluster-segment-webhook-secret";
/// Events per webhook delivery.
const EVENTS_PER_DELIVERY: usize = 40;
/// Concurrent senders.
const SENDERS: usize = 2;
/// A delivery still refused after this long fails the test.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(240);
/// After the load stopped, everything must have arrived within this.
const DRAIN_DEADLINE: Duration = Duration::from_secs(240);
/// How long a SIGKILLed broker stays down before it is started again.
const BROKER_DOWN: Duration = Duration::from_secs(5);
/// How long a broker may take to have all its replicas in sync again.
const IN_SYNC_DEADLINE: Duration = Duration::from_secs(180);
/// Synthetic Pendo event `i` happens at this second plus `i` (see `synthetic_event`).
const SYNTHETIC_BASE_S: u64 = 1_764_330_000;

fn rate() -> usize {
    std::env::var("CLUSTER_FAILOVER_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

fn settle() -> Duration {
    Duration::from_secs(
        std::env::var("CLUSTER_FAILOVER_SETTLE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6),
    )
}

fn secs_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Role processes on the cluster.

/// The role processes of one flow, each from its own config; none is ever restarted, so an
/// exit is a failure.
struct Fleet {
    roles: Vec<(&'static str, RoleProcess)>,
}

impl Fleet {
    /// Writes one config per role (shared settings in `extra`), applies the topics, starts the
    /// roles and waits until all are ready.
    async fn start(
        cluster: &LocalCluster,
        dir: &std::path::Path,
        prefix: &str,
        roles: &[&'static str],
        extra: &str,
    ) -> Fleet {
        let mut out = Vec::new();
        for (n, role) in roles.iter().enumerate() {
            let sub = dir.join(role);
            std::fs::create_dir_all(&sub).unwrap();
            let ops = free_port();
            // A stable instance id per role (e.g. the pod name), as the README asks.
            let text = format!(
                "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id_prefix = \"{prefix}\"\ninstance_id = \"{prefix}\"\n\
                 [topics]\nprefix = \"{prefix}.\"\npartitions = 3\nreplication_factor = 3\n\
                 [observability]\nlisten = \"127.0.0.1:{ops}\"\n{extra}",
                cluster.bootstrap()
            );
            let config = write_file(&sub, "pendo-segment.toml", &text);
            if n == 0 {
                apply_topics(&config);
            }
            out.push((
                *role,
                RoleProcess::start(&config, &["run", "--role", role], ops, sub.join("role.log")),
            ));
        }
        for (_, p) in &mut out {
            p.wait_ready(Duration::from_secs(120)).await;
        }
        Fleet { roles: out }
    }

    /// Roles that exited (they must not: each should ride through every failover).
    fn exited(&mut self) -> Vec<String> {
        self.roles
            .iter_mut()
            .filter_map(|(name, p)| p.exit_status().map(|s| format!("{name} exited ({s})")))
            .collect()
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (name, p) in &self.roles {
            let logs = p.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} ({}):\n", p.log.display()));
            for l in tail.iter().rev() {
                out.push_str(l.get(..400).unwrap_or(l));
                out.push('\n');
            }
        }
        out
    }

    /// Sum of a metric over every role's `/metrics` (lines starting with `name` and holding
    /// `labels`).
    async fn metric_sum(&self, name: &str, labels: &str) -> f64 {
        let mut sum = 0.0;
        for (_, p) in &self.roles {
            for line in p.metrics().await.lines() {
                if line.starts_with(name)
                    && line.contains(labels)
                    && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
                {
                    sum += v;
                }
            }
        }
        sum
    }

    /// SIGTERM to every role; each must exit 0.
    async fn stop(mut self) {
        for (_, p) in &self.roles {
            p.sigterm();
        }
        for (name, p) in &mut self.roles {
            let status = p.wait_exit(Duration::from_secs(60)).await;
            assert!(
                status.success(),
                "{name} on SIGTERM: {status}\n{}",
                p.logs()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load: paced deliveries, retried until answered 200.

/// One delivery: its events' indices and body, and the headers that authenticate it.
type DeliveryFn = dyn Fn(usize) -> (Vec<u8>, Vec<(&'static str, String)>) + Send + Sync;

/// What the senders did; shared with the monitor.
#[derive(Default)]
struct Load {
    /// Deliveries handed out (delivery `d` holds events `d * EVENTS_PER_DELIVERY ..`).
    next: AtomicUsize,
    /// Events answered 200.
    accepted: AtomicUsize,
    /// Deliveries answered 200, by delivery number.
    accepted_deliveries: Mutex<Vec<usize>>,
    /// Answers: 503s, connection errors, and any other status (a failure).
    refused_503: AtomicUsize,
    connection_errors: AtomicUsize,
    unexpected: Mutex<Vec<String>>,
    /// Every answer: (request start, answer time, status; 0 = connection error).
    answers: Mutex<Vec<(Instant, Instant, u16)>>,
    stop: AtomicBool,
}

/// Posts deliveries at `rate` events per second (over all senders) until `load.stop`, each
/// retried on 503 and connection errors until it is answered 200.
fn spawn_senders(
    url: String,
    load: Arc<Load>,
    delivery: Arc<DeliveryFn>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let pace = Duration::from_secs_f64((EVENTS_PER_DELIVERY * SENDERS) as f64 / rate() as f64);
    (0..SENDERS)
        .map(|_| {
            let (url, load, delivery) = (url.clone(), load.clone(), delivery.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                while !load.stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let d = load.next.fetch_add(1, Ordering::Relaxed);
                    let (body, headers) = delivery(d);
                    loop {
                        let mut request = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone());
                        for (k, v) in &headers {
                            request = request.header(*k, v);
                        }
                        let sent = Instant::now();
                        let answer = request.send().await;
                        let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
                        load.answers
                            .lock()
                            .unwrap()
                            .push((sent, Instant::now(), status));
                        match (status, answer) {
                            (200, Ok(r)) => {
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                if v["accepted"] != EVENTS_PER_DELIVERY {
                                    load.unexpected
                                        .lock()
                                        .unwrap()
                                        .push(format!("delivery {d}: 200 with {v}"));
                                }
                                load.accepted
                                    .fetch_add(EVENTS_PER_DELIVERY, Ordering::Relaxed);
                                load.accepted_deliveries.lock().unwrap().push(d);
                                break;
                            }
                            (503, _) => {
                                load.refused_503.fetch_add(1, Ordering::Relaxed);
                            }
                            (0, _) => {
                                load.connection_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            (other, Ok(r)) => {
                                let text = r.text().await.unwrap_or_default();
                                load.unexpected
                                    .lock()
                                    .unwrap()
                                    .push(format!("delivery {d}: {other} {text}"));
                                break;
                            }
                            (_, Err(_)) => unreachable!(),
                        }
                        if began.elapsed() > DELIVERY_DEADLINE {
                            load.unexpected.lock().unwrap().push(format!(
                                "delivery {d} not accepted within {DELIVERY_DEADLINE:?}"
                            ));
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    if let Some(rest) = pace.checked_sub(began.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Progress and stalls.

/// Samples (time, events accepted, events delivered) every 100 ms until `load.stop` and the
/// destination caught up, for the stall report.
struct Progress {
    samples: Mutex<Vec<(Instant, usize, usize)>>,
}

impl Progress {
    fn spawn(
        load: Arc<Load>,
        delivered: impl Fn() -> usize + Send + 'static,
    ) -> (Arc<Progress>, tokio::task::JoinHandle<()>) {
        let progress = Arc::new(Progress {
            samples: Mutex::new(Vec::new()),
        });
        let p = progress.clone();
        let task = tokio::spawn(async move {
            loop {
                let acc = load.accepted.load(Ordering::Relaxed);
                let got = delivered();
                p.samples.lock().unwrap().push((Instant::now(), acc, got));
                if load.stop.load(Ordering::Relaxed) && got >= acc {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (progress, task)
    }

    /// The longest time in `[from, to)` during which events were waiting (accepted, not yet
    /// delivered) and none was delivered.
    fn longest_stall(&self, from: Instant, to: Instant) -> Duration {
        let samples = self.samples.lock().unwrap();
        let mut longest = Duration::ZERO;
        let mut since: Option<Instant> = None;
        let mut last_delivered = None;
        for &(t, acc, got) in samples.iter().filter(|s| s.0 >= from && s.0 < to) {
            let moved = last_delivered.is_some_and(|l| got > l);
            last_delivered = Some(got);
            if moved || got >= acc {
                since = None;
                continue;
            }
            let start = *since.get_or_insert(t);
            longest = longest.max(t - start);
        }
        longest
    }
}

/// A broker event of a run and when it happened.
struct Disruption {
    what: String,
    at: Instant,
}

fn report_stalls(progress: &Progress, disruptions: &[Disruption], end: Instant) -> Vec<Duration> {
    let mut stalls = Vec::new();
    for (i, d) in disruptions.iter().enumerate() {
        let to = disruptions.get(i + 1).map_or(end, |n| n.at);
        let stall = progress.longest_stall(d.at, to);
        println!(
            "RESULT:   {:<62} longest stall {:>5.1} s",
            d.what,
            stall.as_secs_f64()
        );
        stalls.push(stall);
    }
    stalls
}

// ---------------------------------------------------------------------------------------------
// The forward path.

/// The index of a synthetic event from the timestamp of the Segment call it became.
fn event_index(call: &Value) -> Option<usize> {
    let ts = call["timestamp"].as_str()?;
    let t = humantime::parse_rfc3339(ts).ok()?;
    let s = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    s.checked_sub(SYNTHETIC_BASE_S).map(|i| i as usize)
}

/// Body of forward delivery `d`: synthetic Pendo events `d * EVENTS_PER_DELIVERY ..`.
fn pendo_delivery(d: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let events: Vec<Value> = (d * EVENTS_PER_DELIVERY..(d + 1) * EVENTS_PER_DELIVERY)
        .map(|i| serde_json::from_slice(&synthetic_event(i).1).unwrap())
        .collect();
    (
        serde_json::to_vec(&events).unwrap(),
        vec![("authorization", format!("Bearer {PENDO_SECRET}"))],
    )
}

/// One forward-path run on the cluster: the roles, the Segment test server and the load.
struct ForwardRun {
    cluster: LocalCluster,
    dir: PathBuf,
    prefix: String,
    server: Arc<SegmentTestServer>,
    fleet: Fleet,
    load: Arc<Load>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    progress: Arc<Progress>,
    monitor: tokio::task::JoinHandle<()>,
    disruptions: Vec<Disruption>,
    t0: Instant,
}

impl ForwardRun {
    async fn start(cluster: LocalCluster, name: &str) -> ForwardRun {
        let t0 = Instant::now();
        let server = Arc::new(SegmentTestServer::start(SegmentServerConfig::default()).await);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap()
            .keep();
        let prefix = unique(name);
        let port = free_port();
        let extra = format!(
            "[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{PENDO_SECRET}\"]\nretry_after_seconds = 1\n\
             [segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
             [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
            server.url(),
            server.write_key()
        );
        let fleet = Fleet::start(
            &cluster,
            &dir,
            &prefix,
            &["pendo-webhook", "transform-pendo", "segment-sink"],
            &extra,
        )
        .await;
        println!(
            "[{:6.1}s] {name}: roles ready on {} (configs and logs in {})",
            secs_since(t0),
            cluster.bootstrap(),
            dir.display()
        );
        let load = Arc::new(Load::default());
        let senders = spawn_senders(
            format!("http://127.0.0.1:{port}/webhooks/pendo"),
            load.clone(),
            Arc::new(pendo_delivery),
        );
        let s = server.clone();
        let (progress, monitor) = Progress::spawn(load.clone(), move || s.distinct_count());
        ForwardRun {
            cluster,
            dir,
            prefix,
            server,
            fleet,
            load,
            senders,
            progress,
            monitor,
            disruptions: Vec::new(),
            t0,
        }
    }

    fn note(&mut self, what: String) {
        println!(
            "[{:6.1}s] {what} ({} events accepted, {} delivered)",
            secs_since(self.t0),
            self.load.accepted.load(Ordering::Relaxed),
            self.server.distinct_count()
        );
        self.disruptions.push(Disruption {
            what,
            at: Instant::now(),
        });
    }

    /// Lets the load run for `d`, failing early if a role exited.
    async fn run_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let exited = self.fleet.exited();
            assert!(
                exited.is_empty(),
                "a role exited: {exited:?}\n{}",
                self.fleet.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILLs broker `n`, starts it again after [`BROKER_DOWN`], and waits until every
    /// replica is in sync.
    async fn kill_and_restart(&mut self, n: u32, why: &str) {
        self.note(format!("SIGKILL broker {n} ({why})"));
        self.cluster.blocking(move |c| c.kill(n)).await;
        self.run_for(BROKER_DOWN).await;
        let started = Instant::now();
        self.cluster.blocking(move |c| c.start(n)).await;
        let prefix = self.prefix.clone();
        let synced = self
            .cluster
            .blocking(move |c| c.wait_in_sync(&format!("{prefix}."), IN_SYNC_DEADLINE))
            .await;
        println!(
            "[{:6.1}s] broker {n} back: answering after {:.1} s, all replicas in sync {:.1} s later",
            secs_since(self.t0),
            started.elapsed().as_secs_f64() - synced.as_secs_f64(),
            synced.as_secs_f64()
        );
    }

    /// Stops the load, waits until every accepted event arrived, and checks the run.
    async fn finish(mut self, name: &str) {
        self.load.stop.store(true, Ordering::Relaxed);
        for s in std::mem::take(&mut self.senders) {
            s.await.expect("sender");
        }
        let unexpected = self.load.unexpected.lock().unwrap().clone();
        assert!(
            unexpected.is_empty(),
            "answers other than 200 and 503: {unexpected:?}\n{}",
            self.fleet.log_tails()
        );
        let accepted = self.load.accepted.load(Ordering::Relaxed);
        let mut deliveries = self.load.accepted_deliveries.lock().unwrap().clone();
        deliveries.sort_unstable();
        assert_eq!(
            deliveries,
            (0..deliveries.len()).collect::<Vec<_>>(),
            "every delivery handed out was accepted once"
        );
        let drain_start = Instant::now();
        while self.server.distinct_count() < accepted {
            let exited = self.fleet.exited();
            assert!(
                exited.is_empty() && drain_start.elapsed() < DRAIN_DEADLINE,
                "{} of {accepted} events at Segment {:.0} s after the load stopped; exited: {exited:?}\n{}",
                self.server.distinct_count(),
                drain_start.elapsed().as_secs_f64(),
                self.fleet.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drained = drain_start.elapsed();
        self.monitor.await.unwrap();
        let end = Instant::now();
        // Anything beyond the expected calls would arrive now: give it a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Segment: one call per accepted event, each under one messageId, nothing else.
        let mut ids_by_event: HashMap<usize, HashSet<String>> = HashMap::new();
        let mut strays = Vec::new();
        for e in self.server.events() {
            match event_index(&e.item) {
                Some(i) if i < accepted => {
                    ids_by_event
                        .entry(i)
                        .or_default()
                        .insert(e.message_id.clone().unwrap_or_default());
                }
                _ => strays.push(e.item.clone()),
            }
        }
        assert!(
            strays.is_empty(),
            "{} calls of no accepted event, e.g. {:?}",
            strays.len(),
            strays.first()
        );
        let missing: Vec<usize> = (0..accepted)
            .filter(|i| !ids_by_event.contains_key(i))
            .take(10)
            .collect();
        assert!(missing.is_empty(), "events missing at Segment: {missing:?}");
        let split: Vec<_> = ids_by_event.iter().filter(|(_, v)| v.len() > 1).collect();
        assert!(
            split.is_empty(),
            "events that arrived under several messageIds: {split:?}"
        );
        assert_eq!(self.server.distinct_count(), accepted);
        let statuses = self.server.status_counts();
        assert_eq!(
            statuses.keys().copied().collect::<Vec<_>>(),
            vec![200],
            "Segment refused nothing: {statuses:?}"
        );

        // canonical.segment-calls, read_committed: exactly one record per event.
        let calls = read_committed_from(
            &self.cluster.bootstrap(),
            &format!("{}.canonical.segment-calls", self.prefix),
            accepted,
            Duration::from_secs(60),
        );
        let codec = SegmentCallCodec::new(WireFormat::SingleObject);
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for m in &calls {
            let call = codec
                .decode(m.payload().unwrap_or_default())
                .expect("decodable");
            *per_id.entry(call.message_id).or_default() += 1;
        }
        let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).take(10).collect();
        assert!(
            calls.len() == accepted && per_id.len() == accepted,
            "canonical.segment-calls holds {} records for {accepted} events ({} distinct \
             messageIds; written more than once: {twice:?})",
            calls.len(),
            per_id.len()
        );
        assert_eq!(
            per_id.keys().cloned().collect::<HashSet<_>>(),
            self.server.distinct_message_ids(),
            "the calls Segment received are the ones on canonical.segment-calls"
        );
        let exited = self.fleet.exited();
        assert!(exited.is_empty(), "roles exited: {exited:?}");

        // A webhook commit answered 503 with its outcome unknown must have that outcome learnt
        // (then the sender's retry is neither written twice nor lost).
        let undecided = self
            .fleet
            .metric_sum("pendo_segment_transactions_total", "result=\"unknown\"")
            .await;
        let learnt_committed = self
            .fleet
            .metric_sum(
                "pendo_segment_undecided_transactions_total",
                "outcome=\"committed\"",
            )
            .await;
        let learnt_aborted = self
            .fleet
            .metric_sum(
                "pendo_segment_undecided_transactions_total",
                "outcome=\"aborted\"",
            )
            .await;
        assert_eq!(
            undecided,
            learnt_committed + learnt_aborted,
            "webhook transactions answered with an unknown outcome that was never learnt"
        );
        let load = &self.load;
        println!(
            "RESULT: {name}: {accepted} events accepted in {} deliveries ({} answered 503, {} \
             connection errors); {accepted} of {accepted} at Segment once by messageId, lost 0, \
             {} duplicate deliveries (same messageId, collapsed by Segment); \
             canonical.segment-calls {} records, duplicates 0; drained {:.1} s after the load stopped; \
             {} webhook transactions aborted, {undecided} webhook commits undecided when answered \
             (learnt later: {learnt_committed} committed, {learnt_aborted} aborted), {} transformer \
             transactions aborted, {} with an unknown outcome (producer replaced), {} roles restarted in-process after a failover, {} Kafka \
             client errors counted; total {:.0} s",
            deliveries.len(),
            load.refused_503.load(Ordering::Relaxed),
            load.connection_errors.load(Ordering::Relaxed),
            self.server.event_count() - accepted,
            calls.len(),
            drained.as_secs_f64(),
            self.fleet
                .metric_sum("pendo_segment_transactions_total", "result=\"aborted\"")
                .await,
            self.fleet
                .metric_sum("pendo_segment_commits_total", "result=\"aborted\"")
                .await,
            self.fleet
                .metric_sum("pendo_segment_commits_total", "result=\"stuck\"")
                .await,
            self.fleet
                .metric_sum("pendo_segment_role_restarts_total", "")
                .await,
            self.fleet
                .metric_sum("pendo_segment_errors_total", "")
                .await,
            secs_since(self.t0),
        );
        report_stalls(&self.progress, &self.disruptions, end);
        self.fleet.stop().await;
        // Passed: remove what the run left (kept on failure, for inspection, and with
        // CLUSTER_FAILOVER_KEEP=1).
        self.cluster
            .delete_topics(&format!("{}.", self.prefix))
            .await;
        if std::env::var_os("CLUSTER_FAILOVER_KEEP").is_none() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_path_exactly_once_through_leader_and_coordinator_kills() {
    let _turn = CLUSTER.lock().await;
    let cluster = LocalCluster::require();
    let mut run = ForwardRun::start(cluster, "cluster-kills").await;
    run.run_for(settle()).await;

    // (a) The leader of a canonical.segment-calls partition.
    let topic = format!("{}.canonical.segment-calls", run.prefix);
    let leader = cluster.blocking(move |c| c.leader(&topic, 0)).await;
    run.kill_and_restart(leader, "leader of canonical.segment-calls-0")
        .await;
    run.run_for(settle()).await;

    // (b) The transaction coordinator of transform-pendo's transactional id.
    let txn_id = format!("pendo-segment.transform-pendo.{}", run.prefix);
    let coordinator = cluster.blocking(move |c| c.txn_coordinator(&txn_id)).await;
    run.kill_and_restart(coordinator, "transaction coordinator of transform-pendo")
        .await;
    run.run_for(settle()).await;

    // (c) The group coordinator of the sink's group.
    let group = format!("{}.segment-sink", run.prefix);
    let coordinator = cluster.blocking(move |c| c.group_coordinator(&group)).await;
    run.kill_and_restart(coordinator, "group coordinator of segment-sink")
        .await;
    run.run_for(settle()).await;

    run.finish("leader and coordinator kills").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_path_exactly_once_through_a_rolling_restart() {
    let _turn = CLUSTER.lock().await;
    let cluster = LocalCluster::require();
    let mut run = ForwardRun::start(cluster, "cluster-roll").await;
    run.run_for(settle()).await;
    for n in BROKERS {
        run.note(format!("graceful restart of broker {n}"));
        let started = Instant::now();
        cluster
            .blocking(move |c| {
                c.stop(n);
                c.start(n);
            })
            .await;
        let prefix = run.prefix.clone();
        let synced = cluster
            .blocking(move |c| c.wait_in_sync(&format!("{prefix}."), IN_SYNC_DEADLINE))
            .await;
        println!(
            "[{:6.1}s] broker {n} restarted in {:.1} s, all replicas in sync {:.1} s later",
            secs_since(run.t0),
            started.elapsed().as_secs_f64() - synced.as_secs_f64(),
            synced.as_secs_f64()
        );
        run.run_for(settle()).await;
    }
    run.finish("rolling restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn below_min_insync_replicas_the_webhook_answers_503_and_the_pipeline_resumes() {
    let _turn = CLUSTER.lock().await;
    let cluster = LocalCluster::require();
    let mut run = ForwardRun::start(cluster, "cluster-min-isr").await;
    run.run_for(settle()).await;

    // Two of three brokers down: no write can reach min.insync.replicas = 2.
    let down = [2, 3];
    run.note(format!(
        "SIGKILL brokers {down:?} (below min.insync.replicas)"
    ));
    cluster
        .blocking(move |c| {
            for n in down {
                c.kill(n);
            }
        })
        .await;
    let killed_at = Instant::now();
    let outage = Duration::from_secs(20);
    run.run_for(outage).await;
    let restart_at = Instant::now();
    run.note(format!("starting brokers {down:?} again"));
    cluster
        .blocking(move |c| {
            for n in down {
                c.start(n);
            }
        })
        .await;
    let prefix = run.prefix.clone();
    cluster
        .blocking(move |c| c.wait_in_sync(&format!("{prefix}."), IN_SYNC_DEADLINE))
        .await;
    run.run_for(settle()).await;

    // During the outage (from a second after the kill, so requests already past their commit
    // are not counted), no request was answered 200, and senders were told 503.
    let answers = run.load.answers.lock().unwrap().clone();
    let during: Vec<u16> = answers
        .iter()
        .filter(|(sent, _, _)| *sent >= killed_at + Duration::from_secs(1))
        .filter(|(_, answered, _)| *answered <= restart_at)
        .map(|(_, _, status)| *status)
        .collect();
    let ok = during.iter().filter(|s| **s == 200).count();
    let refused = during.iter().filter(|s| **s == 503).count();
    println!(
        "RESULT: below min.insync.replicas for {:.0} s: {} requests answered in the outage: \
         {refused} x 503, {ok} x 200, {} other",
        outage.as_secs_f64(),
        during.len(),
        during.len() - ok - refused
    );
    assert_eq!(
        ok, 0,
        "a request answered 200 while no write could be durable"
    );
    assert!(refused > 0, "the webhook answered 503 during the outage");
    run.finish("below min.insync.replicas").await;
}

// ---------------------------------------------------------------------------------------------
// The reverse flow.

/// Segment users whose audience membership the reverse-flow load toggles.
const AUDIENCE_USERS: usize = 300;

/// Audience event `i`: user `i % USERS` enters or leaves one of three audiences; later events of
/// a user and audience win.
fn audience_event(i: usize) -> Value {
    let user = format!("user-{}", i % AUDIENCE_USERS);
    let key = format!("aud_{}", (i / AUDIENCE_USERS) % 3);
    let member = (i / (3 * AUDIENCE_USERS)).is_multiple_of(2);
    json!({
        "type": "track",
        "event": if member { "Audience Entered" } else { "Audience Exited" },
        "messageId": format!("personas_cluster_{i:07}"),
        "userId": user,
        "properties": {"audience_key": key, key.clone(): member},
        "context": {"personas": {"computation_class": "audience", "computation_key": key,
                                 "computation_id": "aud_cluster", "space_id": "spa_1", "namespace": "spa_1"}},
        "timestamp": format!("2026-11-27T{:02}:{:02}:{:02}.000Z", (i / 3600) % 24, (i / 60) % 60, i % 60),
    })
}

fn segment_delivery(d: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let events: Vec<Value> = (d * EVENTS_PER_DELIVERY..(d + 1) * EVENTS_PER_DELIVERY)
        .map(audience_event)
        .collect();
    let body = serde_json::to_vec(&events).unwrap();
    let signature = sign_hex(SEGMENT_SECRET.as_bytes(), signed_part(&body));
    (body, vec![("x-signature", signature)])
}

/// The Pendo state events `0..n` end in: the last membership of each (user, audience).
fn audience_state(n: usize) -> HashMap<(String, String, String), Value> {
    let mut want = HashMap::new();
    for i in 0..n {
        let e = audience_event(i);
        let key = e["properties"]["audience_key"]
            .as_str()
            .unwrap()
            .to_string();
        want.insert(
            (
                "visitor".to_string(),
                e["userId"].as_str().unwrap().to_string(),
                format!("segment_{key}"),
            ),
            e["properties"][&key].clone(),
        );
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_flow_exact_pendo_state_through_a_leader_kill_and_a_coordinator_kill() {
    let _turn = CLUSTER.lock().await;
    let cluster = LocalCluster::require();
    let t0 = Instant::now();
    let server = Arc::new(
        PendoTestServer::start(PendoServerConfig::default().with_fields(
            "visitor",
            "custom",
            &["segment_aud_0", "segment_aud_1", "segment_aud_2"],
        ))
        .await,
    );
    let dir = tempfile::Builder::new()
        .prefix("cluster-reverse-")
        .tempdir()
        .unwrap()
        .keep();
    let prefix = unique("cluster-reverse");
    let port = free_port();
    let extra = format!(
        "[segment_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SEGMENT_SECRET}\"]\nretry_after_seconds = 1\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 100\nmax_batch_entities = 50\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        server.url(),
        server.integration_key()
    );
    let mut fleet = Fleet::start(
        &cluster,
        &dir,
        &prefix,
        &["segment-webhook", "transform-segment", "pendo-sink"],
        &extra,
    )
    .await;
    println!("[{:6.1}s] reverse flow: roles ready", secs_since(t0));
    let load = Arc::new(Load::default());
    let senders = spawn_senders(
        format!("http://127.0.0.1:{port}/webhooks/segment"),
        load.clone(),
        Arc::new(segment_delivery),
    );
    let check_exits = |fleet: &mut Fleet| {
        let exited = fleet.exited();
        assert!(
            exited.is_empty(),
            "a role exited: {exited:?}\n{}",
            fleet.log_tails()
        );
    };
    let pause = |d: Duration| tokio::time::sleep(d);
    pause(settle()).await;

    let mut kills = Vec::new();
    for target in [
        "leader of canonical.pendo-updates-0",
        "transaction coordinator of transform-segment",
    ] {
        let (topic, txn_id) = (
            format!("{prefix}.canonical.pendo-updates"),
            format!("pendo-segment.transform-segment.{prefix}"),
        );
        let broker = cluster
            .blocking(move |c| {
                if target.starts_with("leader") {
                    c.leader(&topic, 0)
                } else {
                    c.txn_coordinator(&txn_id)
                }
            })
            .await;
        println!(
            "[{:6.1}s] SIGKILL broker {broker} ({target}) ({} events accepted)",
            secs_since(t0),
            load.accepted.load(Ordering::Relaxed)
        );
        cluster.blocking(move |c| c.kill(broker)).await;
        pause(BROKER_DOWN).await;
        check_exits(&mut fleet);
        let p = prefix.clone();
        cluster
            .blocking(move |c| {
                c.start(broker);
                c.wait_in_sync(&format!("{p}."), IN_SYNC_DEADLINE)
            })
            .await;
        kills.push(format!("broker {broker} ({target})"));
        pause(settle()).await;
        check_exits(&mut fleet);
    }
    load.stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let unexpected = load.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "answers other than 200 and 503: {unexpected:?}"
    );
    let accepted = load.accepted.load(Ordering::Relaxed);
    let want = audience_state(accepted);
    let reached = server
        .wait_for(DRAIN_DEADLINE, |s| {
            let st = s.state();
            want.iter().all(|(k, v)| st.get(k) == Some(v))
        })
        .await;
    assert!(
        reached,
        "{} of {} Pendo fields right\n{}",
        {
            let st = server.state();
            want.iter().filter(|(k, v)| st.get(*k) == Some(*v)).count()
        },
        want.len(),
        fleet.log_tails()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.state(), want, "exactly the expected final state");
    check_exits(&mut fleet);
    let updates = read_committed_from(
        &cluster.bootstrap(),
        &format!("{prefix}.canonical.pendo-updates"),
        0,
        Duration::from_secs(5),
    );
    println!(
        "RESULT: reverse flow: {accepted} audience events accepted ({} answered 503, {} connection \
         errors), kills: {kills:?}; Pendo state exact ({} fields), {} write requests, {} canonical \
         updates; no role exited; total {:.0} s",
        load.refused_503.load(Ordering::Relaxed),
        load.connection_errors.load(Ordering::Relaxed),
        want.len(),
        server.write_requests(),
        updates.len(),
        secs_since(t0)
    );
    fleet.stop().await;
    cluster.delete_topics(&format!("{prefix}.")).await;
    std::fs::remove_dir_all(&dir).ok();
}
