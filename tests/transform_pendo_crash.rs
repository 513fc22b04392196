//! Exactly-once of the real `transform-pendo` role, proven by killing it: 50,000 raw events,
//! the transformer SIGKILLed at three random moments and restarted; a `read_committed` reader
//! then sees exactly 50,000 distinct messageIds and no duplicates. And zombie fencing: a second
//! instance with the same `transactional.id` fences the first, which stops on its own.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pendo_segment::schema::{SegmentCallCodec, WireFormat};
use rdkafka::Message;
use rdkafka::producer::FutureProducer;
use support::produce::produce_all;
use support::synthetic_pendo::synthetic_event;
use support::*;

const EVENTS: usize = 50_000;

async fn produce_events(topic: &str, n: usize, offset: usize) {
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    produce_all(
        &p,
        topic,
        (offset..offset + n).map(|i| {
            let (k, v) = synthetic_event(i);
            (Some(k), v)
        }),
    )
    .await;
}

/// Events this process has handled so far (its own counter, from `/metrics`).
async fn handled(role: &RoleProcess) -> u64 {
    role.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("pendo_segment_transform_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Counts messageIds on the canonical topic; returns (records, distinct, duplicates).
fn count_ids(topic: &str, expected: usize) -> (usize, usize, usize) {
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let out = read_committed(topic, expected, Duration::from_secs(60));
    let mut ids: HashMap<String, usize> = HashMap::new();
    for m in &out {
        let call = codec.decode(m.payload().unwrap()).expect("decodable");
        *ids.entry(call.message_id).or_default() += 1;
    }
    let dups = ids.values().filter(|c| **c > 1).map(|c| c - 1).sum();
    (out.len(), ids.len(), dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_yields_every_event_exactly_once() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("tpc");
    let (config, ops) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let raw = format!("{prefix}.pendo.raw.webhook");
    let canonical = format!("{prefix}.canonical.segment-calls");
    produce_events(&raw, EVENTS, 0).await;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng::new(seed);
    println!("kill seed {seed}");
    for kill in 1..=3 {
        let mut role = RoleProcess::start(
            &config,
            &["run", "--role", "transform-pendo"],
            ops,
            dir.path().join(format!("run{kill}.log")),
        );
        role.wait_ready(Duration::from_secs(60)).await;
        // A random moment: after 2,000..14,000 events handled by this incarnation.
        let at = 2_000 + rng.below(12_000);
        let deadline = Instant::now() + Duration::from_secs(120);
        while handled(&role).await < at {
            assert!(Instant::now() < deadline, "no progress:\n{}", role.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        role.kill9();
        println!("kill {kill}: SIGKILL after {at} events handled by this run");
    }
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo"],
        ops,
        dir.path().join("final.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let started = Instant::now();
    let (records, distinct, dups) = count_ids(&canonical, EVENTS);
    println!(
        "drained in {:.1}s: {records} committed records, {distinct} distinct messageIds, {dups} duplicates",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(distinct, EVENTS, "every event arrived");
    assert_eq!(dups, 0, "no event arrived twice");
    assert_eq!(records, EVENTS);
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_transactional_id_fences_the_first() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("tpz");
    let extra = "[processing]\ncommit_interval_ms = 200\n";
    let (config_a, ops_a) = role_config(dir.path(), &prefix, extra);
    let text = std::fs::read_to_string(&config_a)
        .unwrap()
        .replace("[kafka]\n", "[kafka]\ninstance_id = \"zombie\"\n");
    std::fs::write(&config_a, &text).unwrap();
    let ops_b = free_port();
    let config_b = write_file(
        dir.path(),
        "b.toml",
        &text.replace(&format!(":{ops_a}\""), &format!(":{ops_b}\"")),
    );
    apply_topics(&config_a);
    let raw = format!("{prefix}.pendo.raw.webhook");
    let canonical = format!("{prefix}.canonical.segment-calls");
    produce_events(&raw, 20_000, 0).await;

    let mut a = RoleProcess::start(
        &config_a,
        &["run", "--role", "transform-pendo"],
        ops_a,
        dir.path().join("a.log"),
    );
    a.wait_ready(Duration::from_secs(60)).await;
    while handled(&a).await < 3_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut b = RoleProcess::start(
        &config_b,
        &["run", "--role", "transform-pendo"],
        ops_b,
        dir.path().join("b.log"),
    );
    // B's producer initialised its transactions before B is ready: A is fenced from here on.
    // A may have worked through the whole backlog meanwhile and sit idle (it would learn of
    // the fencing only at its next transactional call), so more events follow: A gets some of
    // them, finds itself fenced and stops by itself.
    b.wait_ready(Duration::from_secs(60)).await;
    produce_events(&raw, 2_000, 20_000).await;
    let status = a.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "a fenced instance reports failure");
    let logs = a.logs();
    assert!(
        logs.to_lowercase().contains("fenced"),
        "the log says why it stopped:\n{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    let (records, distinct, dups) = count_ids(&canonical, 22_000);
    assert_eq!((records, distinct, dups), (22_000, 22_000, 0));
    b.sigterm();
    assert!(b.wait_exit(Duration::from_secs(30)).await.success());
}
