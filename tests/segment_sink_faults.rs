//! The `segment-sink` role under faults, end to end against a real broker and the
//! Segment-compatible test server, with the sink running as its own process (the real binary):
//!
//! * 401/403 from Segment are retried until they stop — nothing dead-lettered, dropped or
//!   committed meanwhile;
//! * one event Segment refuses (400) inside a batch is the only dead letter, with Segment's
//!   answer in its headers, and the rest of the batch is delivered;
//! * two sink instances in one group, one stopped with SIGTERM mid-stream: the other takes over
//!   and every event arrives; at no moment was an offset committed over an event Segment had not
//!   acknowledged, and at the end the group's offsets are at the end of every partition;
//! * 100,000 events with 30 % of the requests failing (429 with Retry-After, 500, 503, timeouts,
//!   answers slower than the client's timeout, connection resets): every event arrives and no
//!   request comes before Retry-After expired.
//!
//! The sink reads canonical calls (`canonical.segment-calls`, Avro) produced by the test itself,
//! so the counts are exact: one messageId per produced record.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pendo_segment::schema::{
    CallBody, CallContext, Origin, SegmentCall, SegmentCallCodec, WireFormat,
};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use support::produce::produce_all;
use support::segment_server::{FaultAction, FaultPlan, SegmentServerConfig, SegmentTestServer};
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers (small copies of tests/segment_sink.rs's, plus offsets and metrics readers)

fn producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .create()
        .expect("producer")
}

/// The `[segment]` and `[segment_sink]` sections pointing at `server`, with short backoffs.
fn sink_config(server: &SegmentTestServer, extra: &str) -> String {
    format!(
        "[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n{extra}",
        server.url(),
        server.write_key()
    )
}

/// A valid track call with messageId `<tag>-<i>` for one of 211 users.
fn call(tag: &str, i: usize) -> SegmentCall {
    SegmentCall {
        message_id: format!("{tag}-{i:07}"),
        timestamp: "2025-11-28T12:00:00.000Z".into(),
        user_id: Some(format!("user-{}", i % 211)),
        anonymous_id: None,
        context: CallContext::default(),
        integrations: None,
        origin: Origin::default(),
        body: CallBody::Track {
            event: "Fault Probe".into(),
            properties: format!(r#"{{"i":{i}}}"#),
        },
    }
}

/// `count` calls tagged `tag`, encoded as the transformer writes them, keyed by user.
fn call_records(tag: &str, count: usize) -> Vec<(Option<String>, Vec<u8>)> {
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    (0..count)
        .map(|i| {
            let c = call(tag, i);
            (
                c.kafka_key().map(str::to_string),
                codec.encode_to_vec(&c).expect("encode"),
            )
        })
        .collect()
}

/// The expected messageIds of [`call_records`].
fn message_ids(tag: &str, count: usize) -> HashSet<String> {
    (0..count).map(|i| call(tag, i).message_id).collect()
}

/// The canonical topic, DLQ topic and consumer group of a config written with `prefix`.
struct Names {
    input: String,
    dlq: String,
    group: String,
}

fn names(prefix: &str) -> Names {
    Names {
        input: format!("{prefix}.canonical.segment-calls"),
        dlq: format!("{prefix}.dlq.segment-sink"),
        group: format!("{prefix}.segment-sink"),
    }
}

/// A copy of `config` listening for `/metrics` on a port of its own (a second process).
fn config_with_own_ops_port(dir: &Path, config: &Path, ops: u16, name: &str) -> (PathBuf, u16) {
    let port = free_port();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace(&format!(":{ops}\""), &format!(":{port}\""));
    (write_file(dir, name, &text), port)
}

/// The end offset (high watermark) of every partition of `topic`.
fn end_offsets(topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("client");
    (0..partition_count(topic) as i32)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(15))
                .expect("watermarks");
            (p, high)
        })
        .collect()
}

/// Waits until the group's committed offsets equal the end offsets of every partition.
async fn wait_committed_at_end(n: &Names, timeout: Duration) -> HashMap<i32, i64> {
    let end = end_offsets(&n.input);
    let deadline = Instant::now() + timeout;
    loop {
        let committed = committed_offsets(&n.group, &n.input, end.len() as i32);
        if committed == end {
            return committed;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {committed:?} never reached the end offsets {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `(partition, offset) -> messageId` of every record of the canonical topic.
fn offsets_to_message_ids(topic: &str, expected: usize) -> HashMap<(i32, i64), String> {
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let records = read_committed(topic, expected, Duration::from_secs(30));
    assert_eq!(records.len(), expected, "records on {topic}");
    records
        .iter()
        .map(|m| {
            let c = codec.decode(m.payload().unwrap()).expect("decode");
            ((m.partition(), m.offset()), c.message_id)
        })
        .collect()
}

/// Sum of the samples of `name` whose labels include every `k="v"` of `labels` (0 if none).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Polls until `cond` holds; panics with `what` and the sink's log after `timeout`.
async fn wait_until(
    what: &str,
    timeout: Duration,
    role: &RoleProcess,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            role.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts the DLQ holds nothing (after a settle period for late records).
fn assert_dlq_empty(n: &Names) {
    let dlq = read_committed(&n.dlq, 0, Duration::from_secs(1));
    assert!(
        dlq.is_empty(),
        "{} dead letters on {}: {:?}",
        dlq.len(),
        n.dlq,
        dlq.iter()
            .map(|m| header(m, "dlq-detail"))
            .collect::<Vec<_>>()
    );
}

/// Stops `role` with SIGTERM and asserts a clean exit (status 0) within 30 s.
async fn stop_cleanly(role: &mut RoleProcess) {
    role.sigterm();
    let status = role.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        role.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. 401 / 403

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_keep_retrying_and_lose_nothing() {
    require_kafka();
    let started = Instant::now();
    const EVENTS: usize = 2_000;
    const UNAUTHORIZED: u64 = 20;
    const FORBIDDEN: u64 = 3;
    // Requests 1-20 get 401 (write key refused), 21-23 get 403, then Segment accepts again.
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: FaultPlan::none()
            .range(1, UNAUTHORIZED, FaultAction::Status(401))
            .range(
                UNAUTHORIZED + 1,
                UNAUTHORIZED + FORBIDDEN,
                FaultAction::Status(403),
            ),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sinka");
    let n = names(&prefix);
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &sink_config(&server, "[processing]\nstatistics_interval_ms = 500\n"),
    );
    apply_topics(&config);
    produce_all(&producer(), &n.input, call_records("auth", EVENTS)).await;

    let mut sink = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink.log"),
    );
    sink.wait_ready(Duration::from_secs(60)).await;

    // While Segment refuses the key: retries go on, nothing is accepted, dead-lettered or
    // committed, and the sink says it is backed up.
    wait_until("ten 401 answers", Duration::from_secs(60), &sink, || {
        server.status_counts().get(&401).copied().unwrap_or(0) >= 10
    })
    .await;
    let partitions = partition_count(&n.input) as i32;
    assert_eq!(server.distinct_count(), 0, "nothing accepted yet");
    assert!(
        committed_offsets(&n.group, &n.input, partitions).is_empty(),
        "nothing is committed while Segment refuses every request"
    );
    assert_dlq_empty(&n);
    let metrics = sink.metrics().await;
    assert_eq!(
        metric(&metrics, "pendo_segment_segment_sink_backpressure", &[]),
        1.0,
        "{metrics}"
    );
    // The whole backlog shows as lag, though the group has never committed (librdkafka
    // reports no lag then): a new deployment refused from its first batch is visibly behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = sink.metrics().await;
        let lag = metric(
            &metrics,
            "pendo_segment_consumer_lag",
            &[("stage", "segment-sink")],
        );
        if lag == EVENTS as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segment-sink's lag is {lag}, not the {EVENTS} records it has not delivered:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(
        server
            .wait_for_distinct(EVENTS, Duration::from_secs(120))
            .await,
        "delivered {} of {EVENTS}:\n{}",
        server.distinct_count(),
        sink.logs()
    );
    assert_eq!(server.distinct_message_ids(), message_ids("auth", EVENTS));
    let statuses = server.status_counts();
    assert_eq!(
        statuses.get(&401),
        Some(&(UNAUTHORIZED as usize)),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get(&403),
        Some(&(FORBIDDEN as usize)),
        "{statuses:?}"
    );
    assert_eq!(server.duplicates(), 0, "a refused request records nothing");
    let committed = wait_committed_at_end(&n, Duration::from_secs(30)).await;
    assert_dlq_empty(&n);

    let metrics = sink.metrics().await;
    let auth_retries = metric(
        &metrics,
        "pendo_segment_segment_retries_total",
        &[("outcome", "auth_failure")],
    );
    assert_eq!(auth_retries, (UNAUTHORIZED + FORBIDDEN) as f64, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "pendo_segment_dead_letters_total",
            &[("stage", "segment-sink")]
        ),
        0.0
    );
    assert_eq!(
        metric(&metrics, "pendo_segment_segment_sink_backpressure", &[]),
        0.0
    );
    assert!(
        sink.logs().contains("Segment refuses the requests"),
        "the operator is told:\n{}",
        sink.logs()
    );
    stop_cleanly(&mut sink).await;
    eprintln!(
        "auth_failures: {EVENTS} delivered, statuses {statuses:?}, committed {committed:?}, \
         {} duplicates, {:.1}s",
        server.duplicates(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. One event refused by Segment inside a batch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_rejected_by_segment_inside_a_batch_is_the_only_dead_letter() {
    require_kafka();
    let started = Instant::now();
    const EVENTS: usize = 500;
    let rejected: HashSet<String> = [137, 389]
        .iter()
        .map(|i| call("rej", *i).message_id)
        .collect();
    let server = SegmentTestServer::start(SegmentServerConfig {
        reject_message_ids: rejected.clone(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sinkr");
    let n = names(&prefix);
    let (config, ops) = role_config(dir.path(), &prefix, &sink_config(&server, ""));
    apply_topics(&config);
    produce_all(&producer(), &n.input, call_records("rej", EVENTS)).await;
    let origin = offsets_to_message_ids(&n.input, EVENTS);

    let mut sink = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink.log"),
    );
    sink.wait_ready(Duration::from_secs(60)).await;
    let want = EVENTS - rejected.len();
    assert!(
        server
            .wait_for_distinct(want, Duration::from_secs(60))
            .await,
        "delivered {} of {want}:\n{}",
        server.distinct_count(),
        sink.logs()
    );
    let dlq = read_committed(&n.dlq, rejected.len(), Duration::from_secs(30));
    // The rest of each refused batch was delivered, exactly once, and nothing else.
    let mut expected = message_ids("rej", EVENTS);
    expected.retain(|id| !rejected.contains(id));
    assert_eq!(server.distinct_message_ids(), expected);
    assert_eq!(server.duplicates(), 0, "a refused batch records nothing");

    // Exactly the refused events are dead letters: original bytes and key, Segment's answer.
    assert_eq!(dlq.len(), rejected.len(), "dead letters");
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let mut dead: HashSet<String> = HashSet::new();
    for m in &dlq {
        let c = codec.decode(m.payload().unwrap()).expect("original bytes");
        let h = |name| header(m, name).unwrap_or_else(|| panic!("header {name}"));
        assert_eq!(h("dlq-reason"), "rejected");
        assert_eq!(h("dlq-stage"), "segment-sink");
        assert_eq!(h("dlq-source-topic"), n.input);
        let detail = h("dlq-detail");
        assert!(
            detail.contains("HTTP 400")
                && detail.contains("invalid_request")
                && detail.contains(&format!("messageId \\\"{}\\\"", c.message_id)),
            "Segment's answer is in the dead letter: {detail}"
        );
        let at = (
            h("dlq-source-partition").parse::<i32>().unwrap(),
            h("dlq-source-offset").parse::<i64>().unwrap(),
        );
        assert_eq!(
            origin.get(&at),
            Some(&c.message_id),
            "source position {at:?}"
        );
        assert_eq!(
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            c.kafka_key().map(str::to_string),
            "original key"
        );
        assert!(h("dlq-time").parse::<i64>().unwrap() > 0);
        eprintln!("dead letter {}: {detail}", c.message_id);
        dead.insert(c.message_id);
    }
    assert_eq!(dead, rejected);

    let requests = server.requests();
    let refused: Vec<_> = requests.iter().filter(|r| r.status == Some(400)).collect();
    assert!(
        refused.len() >= rejected.len(),
        "the batch was split: {} refused requests",
        refused.len()
    );
    assert!(
        refused.iter().all(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("reject rule"))),
        "only the reject rule refused anything"
    );
    assert!(
        requests
            .iter()
            .all(|r| matches!(r.status, Some(200) | Some(400))),
        "no other answers"
    );
    let committed = wait_committed_at_end(&n, Duration::from_secs(30)).await;
    let metrics = sink.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pendo_segment_dead_letters_total",
            &[("stage", "segment-sink"), ("reason", "rejected")]
        ),
        rejected.len() as f64,
        "{metrics}"
    );
    stop_cleanly(&mut sink).await;
    eprintln!(
        "rejected_inside_batch: {} delivered, {} dead letters, {} requests ({} answered 400), \
         committed {committed:?}, {:.1}s",
        server.distinct_count(),
        dlq.len(),
        requests.len(),
        refused.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Two instances, one stopped mid-stream

/// Every record below a committed offset was accepted by the server: `committed` read after
/// `delivered` was snapshotted while the server accepted nothing new. Returns how many records
/// the committed offsets cover.
fn assert_committed_were_delivered(
    committed: &HashMap<i32, i64>,
    delivered: &HashSet<String>,
    origin: &HashMap<(i32, i64), String>,
) -> usize {
    let mut covered = 0;
    for (&p, &next) in committed {
        for offset in 0..next {
            let id = &origin[&(p, offset)];
            assert!(
                delivered.contains(id),
                "partition {p} committed up to {next}, but offset {offset} ({id}) was never \
                 acknowledged by Segment"
            );
            covered += 1;
        }
    }
    covered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sink_instances_one_stopped_mid_stream_lose_nothing() {
    require_kafka();
    let started = Instant::now();
    const EVENTS: usize = 20_000;
    const PARTITIONS: i32 = 4;
    let server = SegmentTestServer::start(SegmentServerConfig {
        response_delay: Some(Duration::from_millis(30)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sink2");
    let n = names(&prefix);
    let (config_a, ops_a) = role_config(
        dir.path(),
        &prefix,
        &sink_config(
            &server,
            &format!(
                "max_batch_events = 50\n\
                 [topics.overrides.\"canonical.segment-calls\"]\npartitions = {PARTITIONS}\n"
            ),
        ),
    );
    let (config_b, ops_b) = config_with_own_ops_port(dir.path(), &config_a, ops_a, "b.toml");
    apply_topics(&config_a);
    assert_eq!(partition_count(&n.input), PARTITIONS as usize);

    // Both instances join the group before there is anything to read.
    let mut a = RoleProcess::start(
        &config_a,
        &["run", "--role", "segment-sink"],
        ops_a,
        dir.path().join("a.log"),
    );
    a.wait_ready(Duration::from_secs(60)).await;
    let mut b = RoleProcess::start(
        &config_b,
        &["run", "--role", "segment-sink"],
        ops_b,
        dir.path().join("b.log"),
    );
    b.wait_ready(Duration::from_secs(60)).await;

    produce_all(&producer(), &n.input, call_records("two", EVENTS)).await;
    let produced = Instant::now();
    let origin = offsets_to_message_ids(&n.input, EVENTS);
    let end = end_offsets(&n.input);
    assert_eq!(end.values().sum::<i64>(), EVENTS as i64);

    // A quarter delivered and something committed: freeze Segment (every request 503) so that
    // what it accepted cannot change, and check that no committed offset covers an event it
    // did not accept, twice over more than a commit interval.
    wait_until(
        "a quarter delivered and a first commit",
        Duration::from_secs(120),
        &a,
        || {
            server.distinct_count() >= EVENTS / 4
                && !committed_offsets(&n.group, &n.input, PARTITIONS).is_empty()
        },
    )
    .await;
    server.set_faults(FaultPlan::none().probability(1.0, FaultAction::Status(503)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = server.distinct_message_ids();
    let mut covered = 0;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let committed = committed_offsets(&n.group, &n.input, PARTITIONS);
        covered = assert_committed_were_delivered(&committed, &delivered, &origin);
    }
    assert_eq!(
        server.distinct_count(),
        delivered.len(),
        "the server accepted nothing while frozen"
    );
    let delivered_by_a = metric(
        &a.metrics().await,
        "pendo_segment_segment_events_delivered_total",
        &[],
    );
    let delivered_by_b = metric(
        &b.metrics().await,
        "pendo_segment_segment_events_delivered_total",
        &[],
    );
    eprintln!(
        "frozen at {} distinct delivered (A {delivered_by_a}, B {delivered_by_b}); committed \
         offsets cover {covered} events, every one acknowledged",
        delivered.len()
    );
    assert!(
        delivered_by_a > 0.0 && delivered_by_b > 0.0,
        "both instances shared the partitions"
    );

    // Segment recovers; A is stopped gracefully while its retries are pending, B takes over.
    server.set_faults(FaultPlan::none());
    let stopped_at = server.distinct_count();
    stop_cleanly(&mut a).await;
    eprintln!(
        "A stopped (SIGTERM, exit 0) at {stopped_at} distinct, {} after its shutdown",
        server.distinct_count()
    );
    assert!(
        server
            .wait_for_distinct(EVENTS, Duration::from_secs(180))
            .await,
        "delivered {} of {EVENTS}:\nA:\n{}\nB:\n{}",
        server.distinct_count(),
        a.logs(),
        b.logs()
    );
    let drained = produced.elapsed();
    assert_eq!(server.distinct_message_ids(), message_ids("two", EVENTS));
    let committed = wait_committed_at_end(&n, Duration::from_secs(30)).await;
    assert_eq!(committed, end);
    assert_dlq_empty(&n);
    stop_cleanly(&mut b).await;
    assert_eq!(
        committed_offsets(&n.group, &n.input, PARTITIONS),
        end,
        "still at the end after B's shutdown"
    );
    let statuses = server.status_counts();
    eprintln!(
        "two_instances: {} distinct of {EVENTS}, {} duplicate deliveries, statuses {statuses:?}, \
         delivered {:.1}s after producing, committed {committed:?}, {:.1}s",
        server.distinct_count(),
        server.duplicates(),
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. 100,000 events, 30 % of the requests failing

/// A fault plan in which each action hits the given share of all requests (first-match rules,
/// so each rule's probability is conditional on the earlier ones missing).
fn plan_with_shares(shares: &[(f64, FaultAction)]) -> FaultPlan {
    let mut plan = FaultPlan::none();
    let mut left = 1.0;
    for (share, action) in shares {
        plan = plan.probability(share / left, action.clone());
        left -= share;
    }
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_with_thirty_percent_failures() {
    require_kafka();
    let started = Instant::now();
    const EVENTS: usize = 100_000;
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: plan_with_shares(&[
            (0.08, FaultAction::Status(503)),
            (0.06, FaultAction::Status(500)),
            (
                0.04,
                FaultAction::RateLimited {
                    retry_after_secs: 1,
                },
            ),
            (0.04, FaultAction::ResetConnection),
            (0.03, FaultAction::Timeout),
            // Accepted, but answered after the client gave up: the retry is a duplicate.
            (0.03, FaultAction::Slow(Duration::from_millis(1_500))),
            // Slow, yet within the client's timeout.
            (0.02, FaultAction::Slow(Duration::from_millis(300))),
        ]),
        seed: 7,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sink100k");
    let n = names(&prefix);
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &sink_config(
            &server,
            "max_batch_events = 250\nrequest_timeout_ms = 1000\n",
        ),
    );
    apply_topics(&config);
    let t = Instant::now();
    produce_all(&producer(), &n.input, call_records("big", EVENTS)).await;
    eprintln!(
        "produced {EVENTS} canonical calls in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let mut sink = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink.log"),
    );
    sink.wait_ready(Duration::from_secs(60)).await;
    let t = Instant::now();
    assert!(
        server
            .wait_for_distinct(EVENTS, Duration::from_secs(240))
            .await,
        "delivered {} of {EVENTS}:\n{}",
        server.distinct_count(),
        sink.logs()
    );
    let drained = t.elapsed();
    assert_eq!(server.distinct_message_ids(), message_ids("big", EVENTS));
    let requests = server.requests();
    let failed = requests
        .iter()
        .filter(|r| r.status.is_none_or(|s| s != 200) || r.fault.is_some())
        .count();
    let share = failed as f64 / requests.len() as f64;
    let mut by_fault: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        let k = match &r.fault {
            None => format!("{:?}", r.status),
            Some(f) => format!("{f:?}"),
        };
        *by_fault.entry(k).or_insert(0) += 1;
    }
    eprintln!(
        "100k: {} distinct in {:.1}s; {} requests, {failed} faulted ({:.1} %): {by_fault:?}; \
         {} duplicate deliveries; {} early requests",
        server.distinct_count(),
        drained.as_secs_f64(),
        requests.len(),
        share * 100.0,
        server.duplicates(),
        server.early_requests()
    );
    assert!(
        (0.2..0.4).contains(&share),
        "about 30 % of the requests failed: {share}"
    );
    assert_eq!(
        server.early_requests(),
        0,
        "no request before Retry-After expired"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.status.is_none_or(|s| s != 400 && s != 401)),
        "nothing refused as invalid"
    );
    let committed = wait_committed_at_end(&n, Duration::from_secs(30)).await;
    assert_eq!(committed.values().sum::<i64>(), EVENTS as i64);
    assert_dlq_empty(&n);
    let metrics = sink.metrics().await;
    assert!(
        metric(
            &metrics,
            "pendo_segment_segment_retry_after_pauses_total",
            &[]
        ) > 0.0,
        "{metrics}"
    );
    stop_cleanly(&mut sink).await;
    eprintln!(
        "100k: total wall time {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
