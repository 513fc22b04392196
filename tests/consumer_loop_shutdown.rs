//! The shared consumer loop under SIGTERM, in a real child process against a real broker:
//! the process exits 0 within the grace period, and the committed offsets are exactly
//! "last processed + 1" of every partition, i.e. what the processor had made durable.
//!
//! The child is this test binary re-executed with `PS_LOOP_CHILD` set: it runs the library's
//! process runtime (`app::run_roles`, with real signal handling and the ops server) and the
//! consumer loop, exactly as a role does.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pendo_segment::app::RoleTask;
use pendo_segment::config::Config;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::consumer_loop::{
    CommitStrategy, LoopSpec, ProcessError, RecordProcessor, run_consumer_loop,
};
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use support::*;

const RECORDS: usize = 3_000;
const PARTITIONS: i32 = 3;

/// Slow on purpose, so SIGTERM arrives mid-stream. Remembers what it made durable.
struct CheckpointingProcessor {
    processed: HashMap<i32, i64>,
    checkpointed: HashMap<i32, i64>,
    report: String,
}

impl RecordProcessor for CheckpointingProcessor {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let expected = format!(
            "value-{}",
            String::from_utf8_lossy(record.key().unwrap()).trim_start_matches("key-")
        );
        if record.payload() != Some(expected.as_bytes()) {
            return Err(ProcessError::new(
                "test",
                "record payload does not match its key",
            ));
        }
        self.processed.insert(record.partition(), record.offset());
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        self.checkpointed = self.processed.clone();
        let lines: Vec<String> = self
            .checkpointed
            .iter()
            .map(|(p, o)| format!("{p} {o}"))
            .collect();
        std::fs::write(&self.report, lines.join("\n"))
            .map_err(|e| ProcessError::new("io", e.to_string()))
    }
}

fn child_main() {
    let topic = std::env::var("PS_LOOP_TOPIC").unwrap();
    let toml = std::env::var("PS_LOOP_CONFIG").unwrap();
    let report = std::env::var("PS_LOOP_REPORT").unwrap();
    let config: Config = toml::from_str(&toml).unwrap();
    config.validate().unwrap();
    let cfg = config.clone();
    let task = RoleTask::once("loop-test", move |env: pendo_segment::app::RoleEnv| {
        Box::pin(async move {
            let spec = LoopSpec {
                role: "loop-test",
                topics: vec![topic],
                commit_max_records: cfg.processing.commit_max_records,
                commit_interval: Duration::from_millis(cfg.processing.commit_interval_ms),
                drained: cfg.processing.drained(),
                strategy: CommitStrategy::ConsumerOffsets,
            };
            let processor = CheckpointingProcessor {
                processed: HashMap::new(),
                checkpointed: HashMap::new(),
                report,
            };
            run_consumer_loop(
                &client_config::consumer(&cfg, "loop-test"),
                spec,
                processor,
                env.shutdown.clone(),
                env.readiness.register("consumer:loop-test"),
            )
            .await?;
            Ok(())
        })
    });
    run_role_in_child(&config, task)
}

#[test]
fn sigterm_commits_processed_offsets_and_exits_zero_within_grace() {
    if std::env::var("PS_LOOP_CHILD").is_ok() {
        child_main(); // never returns
    }
    tokio::runtime::Runtime::new().unwrap().block_on(parent());
}

async fn parent() {
    let servers = require_kafka();
    let topic = unique("loop-in");
    create_topic(&topic, PARTITIONS).await;
    produce_numbered(&topic, RECORDS, PARTITIONS).await;

    let group_prefix = unique("loopgrp");
    let port = free_port();
    let grace_ms = 10_000;
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{servers}\"\ngroup_id_prefix = \"{group_prefix}\"\n\
         [processing]\ncommit_interval_ms = 200\ncommit_max_records = 100000\nshutdown_grace_ms = {grace_ms}\nstatistics_interval_ms = 500\n\
         [observability]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("checkpointed.txt");
    let mut child = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigterm_commits_processed_offsets_and_exits_zero_within_grace",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PS_LOOP_CHILD", "1")
            .env("PS_LOOP_TOPIC", &topic)
            .env("PS_LOOP_CONFIG", &config)
            .env("PS_LOOP_REPORT", &report)
            .spawn()
            .unwrap(),
    );
    let group = format!("{group_prefix}.loop-test");

    // Ready once partitions are assigned; metrics and health served meanwhile.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "child never became ready");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Wait until some, but not all, records are committed, then SIGTERM mid-stream.
    loop {
        assert!(Instant::now() < deadline, "nothing was committed");
        let committed: i64 = committed_offsets(&group, &topic, PARTITIONS).values().sum();
        if committed > 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pendo_segment_records_processed_total{stage=\"loop-test\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("pendo_segment_commits_total{result=\"ok\",stage=\"loop-test\"}"),
        "{metrics}"
    );

    let signalled = Instant::now();
    signal(child.id(), 15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(grace_ms + 5_000),
            "child did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "child exit status {status:?}");
    assert!(signalled.elapsed() < Duration::from_millis(grace_ms));

    // Committed == last checkpointed + 1 on every partition: nothing processed is lost,
    // nothing unprocessed is committed.
    let checkpointed: HashMap<i32, i64> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.split(' ');
            (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let committed = committed_offsets(&group, &topic, PARTITIONS);
    assert!(!checkpointed.is_empty());
    for (p, last) in &checkpointed {
        assert_eq!(committed.get(p), Some(&(last + 1)), "partition {p}");
    }
    assert_eq!(committed.len(), checkpointed.len());
    let total: i64 = committed.values().sum();
    assert!(
        (total as usize) < RECORDS,
        "SIGTERM should have arrived mid-stream (committed {total} of {RECORDS})"
    );
    println!(
        "committed {total} of {RECORDS} records at SIGTERM; exited in {:?}",
        signalled.elapsed()
    );
}
