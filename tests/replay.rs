//! `pendo-segment replay` against a real broker: after the pipeline delivered N events,
//! `replay --to-beginning` re-delivers them and the Segment test server sees no new distinct
//! messageIds; replay refuses (and `--force` is refused by the broker) while the sink runs;
//! `--to-timestamp` / `--to-offset` pick the right offsets; `--dry-run` changes nothing.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pendo_segment::schema::{
    CallBody, CallContext, Origin, SegmentCall, SegmentCallCodec, WireFormat,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::pipeline::golden_message_ids;
use support::produce::produce_all;
use support::segment_server::{SegmentServerConfig, SegmentTestServer};
use support::*;

const PARTITIONS: i32 = 3;

fn producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

fn call(i: usize) -> SegmentCall {
    SegmentCall {
        message_id: format!("replay-test-{i}"),
        timestamp: "2026-11-28T12:00:00.000Z".into(),
        user_id: Some(format!("user-{i}")),
        anonymous_id: None,
        context: CallContext::default(),
        integrations: None,
        origin: Origin::default(),
        body: CallBody::Track {
            event: "Replayed".into(),
            properties: format!("{{\"i\":{i}}}"),
        },
    }
}

fn cli(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pendo-segment")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One row of the plan table.
#[derive(Debug, PartialEq)]
struct PlanRow {
    partition: i32,
    committed: Option<i64>,
    target: i64,
    end: i64,
    reprocess: i64,
    skip: i64,
}

/// The plan rows of `topic` in replay's stdout, by partition.
fn plan_rows(out: &Output, topic: &str) -> HashMap<i32, PlanRow> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let num = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| panic!("number {s:?}")) };
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[0] == topic).then(|| PlanRow {
                partition: num(f[1]) as i32,
                committed: (f[2] != "-").then(|| num(f[2])),
                target: num(f[3]),
                end: num(f[4]),
                reprocess: num(f[5]),
                skip: num(f[6]),
            })
        })
        .map(|r| (r.partition, r))
        .collect()
}

fn sink_config(server: &SegmentTestServer) -> String {
    format!(
        "[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n\
         [processing]\ncommit_interval_ms = 200\n",
        server.url(),
        server.write_key()
    )
}

/// Waits until the group's committed offsets add up to `n` (the sink committed everything).
async fn wait_committed(group: &str, topic: &str, n: i64) -> HashMap<i32, i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = committed_offsets(group, topic, PARTITIONS);
        if c.values().sum::<i64>() == n {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {group} committed {c:?}, not {n} in total"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_beginning_redelivers_with_the_same_message_ids() {
    require_kafka();
    const N: usize = 90;
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("replay");
    let (config, ops) = role_config(dir.path(), &prefix, &sink_config(&server));
    apply_topics(&config);
    let topic = format!("{prefix}.canonical.segment-calls");
    let group = format!("{prefix}.segment-sink");
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    produce_all(
        &producer(),
        &topic,
        (0..N).map(|i| {
            (
                Some(format!("user-{i}")),
                codec.encode_to_vec(&call(i)).unwrap(),
            )
        }),
    )
    .await;

    // 1. The pipeline delivers N events.
    let mut sink = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink-1.log"),
    );
    sink.wait_ready(Duration::from_secs(60)).await;
    assert!(
        server.wait_for_distinct(N, Duration::from_secs(60)).await,
        "delivered {} of {N}:\n{}",
        server.distinct_count(),
        sink.logs()
    );
    let delivered = wait_committed(&group, &topic, N as i64).await;
    let first_ids = server.distinct_message_ids();
    assert_eq!(server.event_count(), N);

    // 2. While the sink runs, replay refuses and names the member.
    let out = cli(
        &config,
        &["replay", "--role", "segment-sink", "--to-beginning"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("active member"), "{all}");
    assert!(all.contains(&group), "{all}");
    assert!(all.contains("pendo-segment.segment-sink@"), "{all}");
    // --force tries; the broker refuses a commit from outside a group with members.
    let out = cli(
        &config,
        &[
            "replay",
            "--role",
            "segment-sink",
            "--to-beginning",
            "--force",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("UnknownMemberId"), "{all}");
    assert!(all.contains("nothing was changed"), "{all}");
    assert_eq!(
        committed_offsets(&group, &topic, PARTITIONS),
        delivered,
        "--force against an active group changed the offsets"
    );

    // 3. Stop the sink; the dry run shows every partition's records and changes nothing.
    sink.sigterm();
    assert!(
        sink.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        sink.logs()
    );
    let mut per_partition: HashMap<i32, i64> = HashMap::new();
    for m in read_committed(&topic, N, Duration::from_secs(20)) {
        use rdkafka::Message;
        *per_partition.entry(m.partition()).or_default() += 1;
    }
    assert_eq!(per_partition.values().sum::<i64>(), N as i64);
    let out = cli(
        &config,
        &[
            "replay",
            "--role",
            "segment-sink",
            "--to-beginning",
            "--dry-run",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("dry run: nothing committed"), "{all}");
    let rows = plan_rows(&out, &topic);
    assert_eq!(rows.len(), PARTITIONS as usize, "{all}");
    for (p, row) in &rows {
        let count = per_partition.get(p).copied().unwrap_or(0);
        assert_eq!(
            row,
            &PlanRow {
                partition: *p,
                committed: Some(count),
                target: 0,
                end: count,
                reprocess: count,
                skip: 0,
            },
            "{all}"
        );
    }
    assert!(all.contains(&format!("re-process {N} offset(s)")), "{all}");
    assert_eq!(
        committed_offsets(&group, &topic, PARTITIONS),
        delivered,
        "--dry-run changed the offsets"
    );

    // 4. The real replay commits offset 0 everywhere.
    let out = cli(
        &config,
        &["replay", "--role", "segment-sink", "--to-beginning"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("committed: group"), "{all}");
    let zero: HashMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    assert_eq!(committed_offsets(&group, &topic, PARTITIONS), zero);

    // 5. The restarted sink re-delivers all N; Segment sees no new distinct messageId.
    let mut sink = RoleProcess::start(
        &config,
        &["run", "--role", "segment-sink"],
        ops,
        dir.path().join("sink-2.log"),
    );
    sink.wait_ready(Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.event_count() < 2 * N {
        assert!(
            std::time::Instant::now() < deadline,
            "re-delivered {} of {N}:\n{}",
            server.event_count() - N,
            sink.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_committed(&group, &topic, N as i64).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.event_count(), 2 * N, "each event re-delivered once");
    assert_eq!(server.distinct_count(), N, "no new distinct messageId");
    assert_eq!(server.distinct_message_ids(), first_ids);
    assert!(server.message_id_counts().values().all(|c| *c == 2));
    sink.sigterm();
    assert!(
        sink.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        sink.logs()
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_timestamp_and_to_offset_pick_the_right_offsets_and_dry_run_changes_nothing() {
    require_kafka();
    const PER_PARTITION: i64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("replayts");
    let (config, _) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let topic = format!("{prefix}.canonical.segment-calls");
    let group = format!("{prefix}.segment-sink");

    // Record i of every partition has timestamp base + i s (in the past: brokers may refuse
    // timestamps too far in the future).
    let base = now_ms() - 600_000;
    let p = producer();
    for partition in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let value = format!("record-{partition}-{i}");
            p.send(
                FutureRecord::<str, str>::to(&topic)
                    .partition(partition)
                    .timestamp(base + i * 1000)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        }
    }

    // A time between records 4 and 5 (RFC 3339): the first record at or after it is 5. The
    // group has committed nothing, so it would start at 0 and now skips 5.
    let at = rfc3339(base + 4500);
    let out = cli(
        &config,
        &[
            "replay",
            "--role",
            "segment-sink",
            "--to-timestamp",
            &at,
            "--dry-run",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let rows = plan_rows(&out, &topic);
    assert_eq!(rows.len(), PARTITIONS as usize, "{all}");
    for row in rows.values() {
        assert_eq!(
            (row.committed, row.target, row.end, row.reprocess, row.skip),
            (None, 5, PER_PARTITION, 0, 5),
            "{all}"
        );
    }
    assert!(
        committed_offsets(&group, &topic, PARTITIONS).is_empty(),
        "--dry-run committed"
    );

    // Epoch milliseconds, exactly record 5's timestamp: committed.
    let out = cli(
        &config,
        &[
            "replay",
            "--role",
            "segment-sink",
            "--to-timestamp",
            &(base + 5000).to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let five: HashMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 5)).collect();
    assert_eq!(committed_offsets(&group, &topic, PARTITIONS), five);

    // A time after every record: the end.
    let later = format!("@{}", now_ms() + 3_600_000);
    let out = cli(
        &config,
        &[
            "replay",
            "--role",
            "segment-sink",
            "--to-timestamp",
            &later,
            "--dry-run",
        ],
    );
    let rows = plan_rows(&out, &topic);
    assert!(
        rows.values()
            .all(|r| r.target == PER_PARTITION && r.skip == 5),
        "{}",
        text(&out)
    );

    // --to-offset on one partition: 3 records of partition 1 re-processed, the others untouched.
    let args = [
        "replay",
        "--role",
        "segment-sink",
        "--topic",
        "canonical.segment-calls",
        "--partition",
        "1",
        "--to-offset",
        "2",
    ];
    let out = cli(&config, &[&args[..], &["--dry-run"]].concat());
    let rows = plan_rows(&out, &topic);
    assert_eq!(rows.len(), 1, "{}", text(&out));
    assert_eq!(
        rows[&1],
        PlanRow {
            partition: 1,
            committed: Some(5),
            target: 2,
            end: PER_PARTITION,
            reprocess: 3,
            skip: 0,
        }
    );
    assert_eq!(committed_offsets(&group, &topic, PARTITIONS), five);
    let out = cli(&config, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        committed_offsets(&group, &topic, PARTITIONS),
        HashMap::from([(0, 5), (1, 2), (2, 5)])
    );

    // An offset beyond the end is moved to the end, and said so.
    let out = cli(
        &config,
        &[
            "replay",
            "--role",
            "segment-sink",
            "--partition",
            "0",
            "--to-offset",
            "99",
            "--dry-run",
        ],
    );
    let all = text(&out);
    assert_eq!(plan_rows(&out, &topic)[&0].target, PER_PARTITION, "{all}");
    assert!(all.contains("target 99 moved to 10"), "{all}");

    // Usage errors: exit 2 with the reason.
    for (args, says) in [
        (
            vec![
                "replay",
                "--role",
                "segment-sink",
                "--to-end",
                "--topic",
                "pendo.raw.webhook",
            ],
            "does not read topic",
        ),
        (
            vec!["replay", "--role", "pendo-webhook", "--to-end"],
            "not a consumer group",
        ),
        (
            vec![
                "replay",
                "--role",
                "segment-sink",
                "--to-end",
                "--partition",
                "7",
            ],
            "partition 7 does not exist",
        ),
        (
            vec![
                "replay",
                "--role",
                "segment-sink",
                "--to-timestamp",
                "yesterday",
            ],
            "not RFC 3339",
        ),
        (vec!["replay", "--role", "segment-sink"], "--to-beginning"),
    ] {
        let out = cli(&config, &args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(says), "{args:?}: {all}");
    }
}

/// The bundled raw Pendo events (as `tests/segment_sink.rs` loads them), keyed by visitor.
fn fixture_records() -> Vec<(Option<String>, Vec<u8>)> {
    let dir = fixtures_dir().join("pendo");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name == "index.json" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let items = match v {
            serde_json::Value::Array(a) => a,
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

/// The messageIds of every canonical call on `topic` (expecting at least `n`).
fn message_ids(topic: &str, n: usize) -> Vec<String> {
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    read_committed(topic, n, Duration::from_secs(30))
        .iter()
        .map(|m| {
            use rdkafka::Message;
            codec.decode(m.payload().unwrap()).unwrap().message_id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_transformer_reproduces_the_same_message_ids() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("replaytp");
    let (config, ops) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let raw = fixture_records();
    let raw_count = raw.len() as i64;
    produce_all(&producer(), &format!("{prefix}.pendo.raw.webhook"), raw).await;
    let calls = format!("{prefix}.canonical.segment-calls");
    let group = format!("{prefix}.transform-pendo");
    let raw_topic = format!("{prefix}.pendo.raw.webhook");

    let run = |log: &str| {
        RoleProcess::start(
            &config,
            &["run", "--role", "transform-pendo"],
            ops,
            dir.path().join(log),
        )
    };
    let mut t = run("transform-1.log");
    t.wait_ready(Duration::from_secs(60)).await;
    // Transactional commits: the group's offsets move with each transaction.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while committed_offsets(&group, &raw_topic, PARTITIONS)
        .values()
        .sum::<i64>()
        < raw_count
    {
        assert!(
            std::time::Instant::now() < deadline,
            "transform-pendo did not commit {raw_count}:\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.sigterm();
    assert!(t.wait_exit(Duration::from_secs(30)).await.success());
    let golden = golden_message_ids();
    let first = message_ids(&calls, golden.len());
    let first_set: std::collections::HashSet<String> = first.iter().cloned().collect();
    assert_eq!(first.len(), golden.len(), "no duplicates before replay");
    assert_eq!(first_set, golden);

    // Both input topics are moved; pendo.raw.api is empty.
    let out = cli(
        &config,
        &["replay", "--role", "transform-pendo", "--to-beginning"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        plan_rows(&out, &raw_topic).len(),
        PARTITIONS as usize,
        "{all}"
    );
    assert_eq!(
        plan_rows(&out, &format!("{prefix}.pendo.raw.api")).len(),
        PARTITIONS as usize,
        "{all}"
    );
    assert!(
        all.contains(&format!("re-process {raw_count} offset(s)")),
        "{all}"
    );

    // The transformer runs again: every call is produced a second time, same messageIds.
    let mut t = run("transform-2.log");
    t.wait_ready(Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut second = message_ids(&calls, 2 * first.len());
    while second.len() < 2 * first.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} calls re-produced:\n{}",
            second.len() - first.len(),
            first.len(),
            t.logs()
        );
        second = message_ids(&calls, 2 * first.len());
    }
    t.sigterm();
    assert!(t.wait_exit(Duration::from_secs(30)).await.success());
    assert_eq!(second.len(), 2 * first.len());
    let second_set: std::collections::HashSet<String> = second.into_iter().collect();
    assert_eq!(
        second_set, first_set,
        "the replay re-produced the same messageIds"
    );
}
