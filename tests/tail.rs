//! `pendo-segment tail` against a real broker: canonical Segment calls decoded from Avro into
//! JSON lines with key, partition, offset, timestamp and headers; dead letters with their
//! reason; `--from` offsets and times; `--partition`; `--follow` printing a record produced
//! after it started, stopped by SIGINT.

mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pendo_segment::schema::{
    CallBody, CallContext, Origin, SegmentCall, SegmentCallCodec, WireFormat,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use support::*;

fn producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer")
}

fn call(id: &str) -> Vec<u8> {
    let call = SegmentCall {
        message_id: id.to_string(),
        timestamp: "2026-11-28T12:00:00.000Z".into(),
        user_id: Some(format!("user-{id}")),
        anonymous_id: None,
        context: CallContext::default(),
        integrations: None,
        origin: Origin {
            source: "pendo.webhook".into(),
            kind: "track".into(),
            ..Origin::default()
        },
        body: CallBody::Track {
            event: "Tailed".into(),
            properties: "{\"n\":1}".into(),
        },
    };
    SegmentCallCodec::new(WireFormat::SingleObject)
        .encode_to_vec(&call)
        .unwrap()
}

/// Sends one record to partition `partition` and waits for the ack.
async fn send(
    topic: &str,
    partition: i32,
    key: &str,
    value: &[u8],
    timestamp: i64,
    headers: &[(&str, &str)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer()
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(value)
                .timestamp(timestamp)
                .headers(h),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
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

/// The JSON lines of a successful run.
fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_decodes_calls_and_dead_letters_from_a_chosen_position() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("tail");
    let (config, _) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let calls = format!("{prefix}.canonical.segment-calls");
    let base = now_ms() - 600_000;
    for i in 0..5i64 {
        send(
            &calls,
            0,
            &format!("user-tail-{i}"),
            &call(&format!("tail-{i}")),
            base + i * 1000,
            &[("x-test", &format!("h-{i}"))],
        )
        .await;
    }

    // Everything, decoded from Avro, with where and when.
    let all = lines(&cli(&config, &["tail", "canonical.segment-calls"]));
    assert_eq!(all.len(), 5, "{all:?}");
    for (i, v) in all.iter().enumerate() {
        assert_eq!(v["partition"], 0);
        assert_eq!(v["offset"], i as i64);
        assert_eq!(v["key"], format!("user-tail-{i}"));
        assert_eq!(v["timestamp"], rfc3339(base + i as i64 * 1000));
        assert_eq!(v["headers"]["x-test"], format!("h-{i}"));
        let seg = &v["value"]["segment"];
        assert_eq!(seg["type"], "track", "{v}");
        assert_eq!(seg["event"], "Tailed");
        assert_eq!(seg["messageId"], format!("tail-{i}"));
        assert_eq!(seg["userId"], format!("user-tail-{i}"));
        assert_eq!(v["value"]["origin"]["source"], "pendo.webhook");
    }

    // --from an offset; the effective topic name works too.
    let from3 = lines(&cli(&config, &["tail", &calls, "--from", "3"]));
    let offsets: Vec<i64> = from3
        .iter()
        .map(|v| v["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4]);

    // --from a time (RFC 3339 and @epoch-ms): the first record at or after it.
    let at = rfc3339(base + 1500);
    let from_time = lines(&cli(
        &config,
        &["tail", "canonical.segment-calls", "--from", &at],
    ));
    assert_eq!(
        from_time.first().map(|v| v["offset"].clone()),
        Some(2.into())
    );
    assert_eq!(from_time.len(), 3);
    let from_ms = lines(&cli(
        &config,
        &[
            "tail",
            "canonical.segment-calls",
            "--from",
            &format!("@{}", base + 4000),
        ],
    ));
    assert_eq!(from_ms.len(), 1);
    assert_eq!(from_ms[0]["value"]["segment"]["messageId"], "tail-4");

    // --partition: partition 1 is empty; without --follow, tail stops at once.
    let p1 = lines(&cli(
        &config,
        &["tail", "canonical.segment-calls", "--partition", "1"],
    ));
    assert!(p1.is_empty(), "{p1:?}");
    let bad = cli(
        &config,
        &["tail", "canonical.segment-calls", "--partition", "9"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no partition 9"));
    let bad = cli(
        &config,
        &["tail", "canonical.segment-calls", "--from", "soon"],
    );
    assert_eq!(bad.status.code(), Some(2));

    // A dead letter: the original bytes and the reason.
    let dlq = format!("{prefix}.dlq.segment-sink");
    send(
        &dlq,
        2,
        "user-x",
        b"not avro",
        now_ms(),
        &[
            ("dlq-reason", "undecodable"),
            ("dlq-stage", "segment-sink"),
            ("dlq-source-topic", &calls),
            ("dlq-source-partition", "0"),
            ("dlq-source-offset", "7"),
        ],
    )
    .await;
    let dead = lines(&cli(&config, &["tail", "dlq.segment-sink"]));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["partition"], 2);
    assert_eq!(dead[0]["headers"]["dlq-reason"], "undecodable");
    assert_eq!(dead[0]["headers"]["dlq-source-offset"], "7");
    assert_eq!(dead[0]["value"], "not avro");
    let brief = cli(&config, &["tail", "dlq.segment-sink", "--brief"]);
    let brief = String::from_utf8_lossy(&brief.stdout);
    assert!(
        brief.contains("p2@0") && brief.contains("dlq-reason=undecodable"),
        "{brief}"
    );

    // `inspect` still works (and shows the timestamp too).
    let inspected = lines(&cli(&config, &["inspect", "canonical.segment-calls"]));
    assert_eq!(inspected.len(), 5);
    assert_eq!(inspected[0]["timestamp"], rfc3339(base));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_prints_records_produced_after_it_started() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("tailf");
    let (config, _) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let calls = format!("{prefix}.canonical.segment-calls");
    // Already there before tail starts: --follow starts at the end, so never printed.
    send(&calls, 0, "old", &call("before-start"), now_ms(), &[]).await;

    let log = dir.path().join("tail.log");
    let mut child = KillOnDrop(
        std::process::Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(["tail", "canonical.segment-calls", "--follow"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tail"),
    );
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("following")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "tail --follow did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(child.try_wait().unwrap().is_none(), "tail exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (i, partition) in [(1, 1), (2, 2)] {
        send(
            &calls,
            partition,
            &format!("new-{i}"),
            &call(&format!("after-start-{i}")),
            now_ms(),
            &[],
        )
        .await;
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "no line for record {i}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["value"]["segment"]["messageId"],
            format!("after-start-{i}")
        );
        assert_eq!(v["partition"], partition);
        assert_eq!(v["offset"], 0);
        assert_eq!(v["key"], format!("new-{i}"));
    }

    // Ctrl-C ends it cleanly.
    signal(child.id(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "tail ignored SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("2 record(s)"), "{err}");
    assert!(rx.try_recv().is_err(), "nothing else printed");
}
