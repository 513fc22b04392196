//! The forward path end to end against a real broker and the Segment-compatible test server:
//! raw Pendo events -> transform-pendo -> segment-sink -> `POST /v1/batch`, and the sink under
//! injected failures (5xx, 429 with Retry-After, connection resets).

mod support;

use std::time::Duration;

use pendo_segment::schema::{
    CallBody, CallContext, Origin, SegmentCall, SegmentCallCodec, WireFormat,
};
use rdkafka::producer::FutureProducer;
use serde_json::Value;
use support::pipeline::golden_message_ids;
use support::produce::produce_all;
use support::segment_server::{FaultAction, FaultPlan, SegmentServerConfig, SegmentTestServer};
use support::synthetic_pendo::synthetic_event;
use support::*;

fn producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .create()
        .expect("producer")
}

async fn produce(topic: &str, records: Vec<(Option<String>, Vec<u8>)>) {
    produce_all(&producer(), topic, records).await;
}

fn fixture_records() -> Vec<(Option<String>, Vec<u8>)> {
    let dir = fixtures_dir().join("pendo");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name == "index.json" {
            continue;
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let items = match v {
            Value::Array(a) => a,
            v => vec![v],
        };
        for e in items {
            let key = e["visitorId"]
                .as_str()
                .or(e["accountId"].as_str())
                .map(str::to_string);
            out.push((key, serde_json::to_vec(&e).unwrap()));
        }
    }
    out
}

fn sink_config(server: &SegmentTestServer, extra: &str) -> String {
    format!(
        "[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n{extra}",
        server.url(),
        server.write_key()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_reaches_segment_once_and_invalid_calls_are_dead_lettered() {
    require_kafka();
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sink");
    let (config, ops) = role_config(dir.path(), &prefix, &sink_config(&server, ""));
    apply_topics(&config);
    produce(&format!("{prefix}.pendo.raw.webhook"), fixture_records()).await;

    // A canonical call without userId/anonymousId (Segment would accept and drop it) and a
    // record that is not Avro at all: both dead-lettered by the sink, never sent.
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let no_identity = SegmentCall {
        message_id: "pendo-no-identity".into(),
        timestamp: "2025-11-28T12:00:00.000Z".into(),
        user_id: None,
        anonymous_id: None,
        context: CallContext::default(),
        integrations: None,
        origin: Origin::default(),
        body: CallBody::Track {
            event: "X".into(),
            properties: "{}".into(),
        },
    };
    produce(
        &format!("{prefix}.canonical.segment-calls"),
        vec![
            (None, codec.encode_to_vec(&no_identity).unwrap()),
            (None, b"not avro".to_vec()),
        ],
    )
    .await;

    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo", "--role", "segment-sink"],
        ops,
        dir.path().join("roles.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let want = golden_message_ids();
    assert!(
        server
            .wait_for_distinct(want.len(), Duration::from_secs(60))
            .await,
        "delivered {} of {}:\n{}",
        server.distinct_count(),
        want.len(),
        role.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.distinct_message_ids(),
        want,
        "exactly the golden calls"
    );
    assert_eq!(server.duplicates(), 0);
    for e in server.events() {
        assert_eq!(e.item["context"]["library"]["name"], "pendo-segment");
        assert!(e.item.get("sentAt").is_none(), "sentAt is per request");
    }
    assert!(server.requests().iter().all(|r| r.sent_at.is_some()));

    let dlq = read_committed(
        &format!("{prefix}.dlq.segment-sink"),
        2,
        Duration::from_secs(20),
    );
    let mut reasons: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "dlq-reason").unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons, vec!["missing_identity", "undecodable"]);

    let metrics = role.metrics().await;
    assert!(
        metrics.contains("pendo_segment_segment_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("pendo_segment_end_to_end_latency_seconds_count"));
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_failed_requests_lose_nothing_and_retry_after_is_respected() {
    require_kafka();
    const EVENTS: usize = 3_000;
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: FaultPlan::none()
            .probability(0.12, FaultAction::Status(503))
            .probability(0.06, FaultAction::Status(500))
            .probability(
                0.06,
                FaultAction::RateLimited {
                    retry_after_secs: 1,
                },
            )
            .probability(0.06, FaultAction::ResetConnection),
        seed: 42,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sinkf");
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &sink_config(
            &server,
            "max_batch_events = 50\nrequest_timeout_ms = 2000\n",
        ),
    );
    apply_topics(&config);
    produce(
        &format!("{prefix}.pendo.raw.webhook"),
        (0..EVENTS)
            .map(|i| {
                let (k, v) = synthetic_event(i);
                (Some(k), v)
            })
            .collect(),
    )
    .await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo", "--role", "segment-sink"],
        ops,
        dir.path().join("roles.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    assert!(
        server
            .wait_for_distinct(EVENTS, Duration::from_secs(180))
            .await,
        "delivered {} of {EVENTS}:\n{}",
        server.distinct_count(),
        role.logs()
    );
    let statuses = server.status_counts();
    let failed: usize = statuses
        .iter()
        .filter(|(s, _)| **s >= 400)
        .map(|(_, n)| n)
        .sum();
    println!(
        "requests by status: {statuses:?}; duplicates delivered: {}",
        server.duplicates()
    );
    assert!(failed > 5, "faults were injected: {statuses:?}");
    assert_eq!(
        server.early_requests(),
        0,
        "no request before Retry-After expired"
    );
    let metrics = role.metrics().await;
    assert!(metrics.contains("pendo_segment_segment_retry_after_pauses_total"));
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_delivers_every_event_with_duplicates_only_from_in_flight_batches() {
    require_kafka();
    const EVENTS: usize = 20_000;
    let server = SegmentTestServer::start(SegmentServerConfig {
        response_delay: Some(Duration::from_millis(40)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sinkk");
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &sink_config(&server, "max_batch_events = 50\n"),
    );
    apply_topics(&config);
    produce(
        &format!("{prefix}.pendo.raw.webhook"),
        (0..EVENTS)
            .map(|i| {
                let (k, v) = synthetic_event(i);
                (Some(k), v)
            })
            .collect(),
    )
    .await;
    // The transformer runs throughout in its own process (ops port of its own).
    let transform_ops = free_port();
    let transform_config = write_file(
        dir.path(),
        "transform.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace(&format!(":{ops}\""), &format!(":{transform_ops}\"")),
    );
    let mut transform = RoleProcess::start(
        &transform_config,
        &["run", "--role", "transform-pendo"],
        transform_ops,
        dir.path().join("transform.log"),
    );
    transform.wait_ready(Duration::from_secs(60)).await;

    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    for kill in 1..=3 {
        let mut sink = RoleProcess::start(
            &config,
            &["run", "--role", "segment-sink"],
            ops,
            dir.path().join(format!("sink{kill}.log")),
        );
        sink.wait_ready(Duration::from_secs(60)).await;
        let at = server.distinct_count() + 1_000 + rng.below(3_000) as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while server.distinct_count() < at.min(EVENTS - 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "no progress:\n{}",
                sink.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.kill9();
        println!(
            "kill {kill}: SIGKILL at {} distinct delivered",
            server.distinct_count()
        );
    }
    let mut sink = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("final.log"),
    );
    sink.wait_ready(Duration::from_secs(60)).await;
    let started = std::time::Instant::now();
    assert!(
        server
            .wait_for_distinct(EVENTS, Duration::from_secs(180))
            .await,
        "delivered {} of {EVENTS}:\n{}",
        server.distinct_count(),
        sink.logs()
    );
    println!(
        "drained in {:.1}s; {} distinct, {} duplicate deliveries (batches in flight at the kills)",
        started.elapsed().as_secs_f64(),
        server.distinct_count(),
        server.duplicates()
    );
    assert_eq!(server.distinct_count(), EVENTS);
    // Each kill can re-send at most the uncommitted tail: bounded by a commit interval's worth.
    assert!(
        server.duplicates() < 3 * 5_000,
        "{} duplicates",
        server.duplicates()
    );
    sink.sigterm();
    assert!(sink.wait_exit(Duration::from_secs(30)).await.success());
    transform.sigterm();
    assert!(transform.wait_exit(Duration::from_secs(30)).await.success());
}

/// A track call of about `bytes` bytes of properties.
fn sized_call(i: usize, bytes: usize) -> SegmentCall {
    SegmentCall {
        message_id: format!("pendo-limit-{i:08}"),
        timestamp: "2025-11-28T12:00:00.000Z".into(),
        user_id: Some(format!("user-{}", i % 7)),
        anonymous_id: None,
        context: CallContext::default(),
        integrations: None,
        origin: Origin::default(),
        body: CallBody::Track {
            event: "Limit Probe".into(),
            properties: format!(r#"{{"pad":"{}"}}"#, "x".repeat(bytes)),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_exceed_segments_limits_and_oversized_events_are_never_sent() {
    require_kafka();
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sinkl");
    let (config, ops) = role_config(dir.path(), &prefix, &sink_config(&server, ""));
    apply_topics(&config);
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    // 6,000 small calls (more than two full batches by count), 400 calls of ~10 KB (more than
    // a batch's 475,000 bytes), and one call of ~40 KB (over the 32 KB event limit).
    let mut records = Vec::new();
    for i in 0..6_000 {
        let c = sized_call(i, 20);
        records.push((
            c.kafka_key().map(str::to_string),
            codec.encode_to_vec(&c).unwrap(),
        ));
    }
    for i in 6_000..6_400 {
        let c = sized_call(i, 10_000);
        records.push((
            c.kafka_key().map(str::to_string),
            codec.encode_to_vec(&c).unwrap(),
        ));
    }
    let big = sized_call(9_999, 40_000);
    records.push((
        big.kafka_key().map(str::to_string),
        codec.encode_to_vec(&big).unwrap(),
    ));
    produce(&format!("{prefix}.canonical.segment-calls"), records).await;

    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    assert!(
        server
            .wait_for_distinct(6_400, Duration::from_secs(120))
            .await,
        "delivered {}:\n{}",
        server.distinct_count(),
        role.logs()
    );
    let dlq = read_committed(
        &format!("{prefix}.dlq.segment-sink"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "dlq-reason").as_deref(), Some("too_large"));
    assert!(
        !server.distinct_message_ids().contains(&big.message_id),
        "the oversized event was never sent"
    );
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.status == Some(200)),
        "Segment refused nothing"
    );
    let most_items = requests.iter().map(|r| r.item_count).max().unwrap();
    let most_bytes = requests.iter().map(|r| r.decoded_bytes).max().unwrap();
    println!(
        "{} requests; largest: {most_items} events, {most_bytes} bytes",
        requests.len()
    );
    assert!(most_items <= 2_500, "{most_items} events in one request");
    assert!(most_bytes <= 475_000, "{most_bytes} bytes in one request");
    assert_eq!(
        server.dropped_over_limit(),
        0,
        "nothing past 2,500 was dropped by Segment"
    );
    assert_eq!(server.distinct_count(), 6_400);
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_max_poll_interval_pauses_partitions_and_keeps_the_group() {
    require_kafka();
    const EVENTS: usize = 3_000;
    // Segment answers 503 to everything until the outage ends.
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: FaultPlan::none().probability(1.0, FaultAction::Status(503)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sinko");
    // A member that does not poll for 7 s is thrown out of its group: the outage lasts 20 s.
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &sink_config(
            &server,
            "max_batch_events = 100\n\
             [kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\
             \"max.poll.interval.ms\" = \"7000\"\n",
        ),
    );
    apply_topics(&config);
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let records = (0..EVENTS)
        .map(|i| {
            let c = sized_call(i, 20);
            (
                c.kafka_key().map(str::to_string),
                codec.encode_to_vec(&c).unwrap(),
            )
        })
        .collect();
    let topic = format!("{prefix}.canonical.segment-calls");
    produce(&topic, records).await;

    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let metrics = role.metrics().await;
    let paused = metric_value(&metrics, "pendo_segment_paused_partitions");
    assert!(paused >= 1.0, "backed-up partitions are paused:\n{metrics}");
    assert_eq!(
        metric_value(&metrics, "pendo_segment_segment_sink_backpressure"),
        1.0
    );
    assert_eq!(
        server.distinct_count(),
        0,
        "nothing accepted during the outage"
    );
    assert!(server.requests().len() > 10, "the sink kept retrying");
    let group = format!("{prefix}.segment-sink");
    let committed = committed_offsets(&group, &topic, 3);
    assert!(
        committed.values().all(|o| *o <= 0),
        "nothing is committed while nothing is acknowledged: {committed:?}"
    );

    // Segment is back: everything arrives, and the member never lost its partitions.
    server.set_faults(FaultPlan::none());
    assert!(
        server
            .wait_for_distinct(EVENTS, Duration::from_secs(60))
            .await,
        "delivered {} of {EVENTS}:\n{}",
        server.distinct_count(),
        role.logs()
    );
    let logs = role.logs();
    assert!(
        !logs.contains("partitions revoked") && !logs.contains("maximum poll interval"),
        "the member stayed in its group through the outage:\n{logs}"
    );
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
    let committed = committed_offsets(&group, &topic, 3);
    assert_eq!(
        committed.values().sum::<i64>(),
        EVENTS as i64,
        "every acknowledged record committed: {committed:?}"
    );
    println!(
        "outage: {} requests refused, {paused} partitions paused; duplicates after: {}",
        server.requests().len(),
        server.duplicates()
    );
}

/// The value of an unlabelled metric in Prometheus text.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Starts transform-pendo and segment-sink in one process with a 20 s commit interval and
/// linger, and `drained_commit_interval_ms` as given; returns the server, the process, the raw
/// topic and the temporary directory (kept alive).
async fn slow_cadence_pipeline(
    drained_ms: u64,
) -> (SegmentTestServer, RoleProcess, String, tempfile::TempDir) {
    require_kafka();
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("cadence");
    let extra = sink_config(&server, "").replace("linger_ms = 100", "linger_ms = 20000")
        + &format!(
            "[processing]\ncommit_interval_ms = 20000\ndrained_commit_interval_ms = {drained_ms}\n"
        );
    let (config, ops) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo", "--role", "segment-sink"],
        ops,
        dir.path().join("roles.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    (server, role, format!("{prefix}.pendo.raw.webhook"), dir)
}

/// A (key, value) event as `produce` takes it.
fn keyed((key, value): (String, Vec<u8>)) -> (Option<String>, Vec<u8>) {
    (Some(key), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_low_load_an_event_reaches_segment_long_before_the_commit_interval_and_linger() {
    // Drain cadence on (the default spacing, 50 ms): each event alone reaches Segment within
    // about half a second on an idle machine (the bound leaves room for a busy CI), although
    // the transformer commits only every 20 s and the sink lingers 20 s when events keep coming.
    let (server, role, raw, _dir) = slow_cadence_pipeline(50).await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let started = std::time::Instant::now();
        produce(&raw, vec![keyed(synthetic_event(i))]).await;
        assert!(
            server
                .wait_for_distinct(i + 1, Duration::from_secs(5))
                .await,
            "event {i} not delivered within 5 s:\n{}",
            role.logs()
        );
        latencies.push(started.elapsed());
    }
    println!("produce -> Segment, one event at a time: {latencies:?}");
    let worst = latencies.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(4),
        "the drain cadence delivers within seconds, not at the 20 s interval: {latencies:?}"
    );

    // Off: the same event waits for the 20 s interval.
    let (server, _role, raw, _dir) = slow_cadence_pipeline(0).await;
    produce(&raw, vec![keyed(synthetic_event(0))]).await;
    assert!(
        !server.wait_for_distinct(1, Duration::from_secs(5)).await,
        "with drained_commit_interval_ms = 0 nothing goes before the interval"
    );
}
