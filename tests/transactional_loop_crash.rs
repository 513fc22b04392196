//! Exactly-once of the shared consumer loop in transactional mode, proven by killing it.
//!
//! A pass-through processor copies every input record to an output topic through the loop's
//! transactional producer. The process is SIGKILLed at three moments mid-stream and restarted;
//! a `read_committed` reader must then see every input record exactly once in the output.
//! The child is this test binary re-executed with `PS_EOS_CHILD` set (see consumer_loop_shutdown).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pendo_segment::app::RoleTask;
use pendo_segment::config::Config;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::consumer_loop::{
    CommitStrategy, LoopSpec, ProcessError, RecordProcessor, run_consumer_loop,
};
use pendo_segment::kafka::record_size::TopicLimits;
use pendo_segment::kafka::transactional_output::TransactionalOutput;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use support::*;

const RECORDS: usize = 20_000;
const PARTITIONS: i32 = 3;

struct PassThrough {
    output: TransactionalOutput,
    topic: String,
    seen: u64,
}

impl RecordProcessor for PassThrough {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let offset = record.offset().to_string();
        self.output
            .send(
                &self.topic,
                record.key(),
                record.payload().unwrap_or_default(),
                &[("src-offset", offset.as_bytes())],
            )
            .map_err(|e| ProcessError::new("produce", e.to_string()))?;
        self.seen += 1;
        if self.seen.is_multiple_of(20) {
            // Slow enough that the kills land mid-stream.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        Ok(())
    }
}

fn child_main() {
    let input = std::env::var("PS_EOS_IN").unwrap();
    let out = std::env::var("PS_EOS_OUT").unwrap();
    let config: Config = toml::from_str(&std::env::var("PS_EOS_CONFIG").unwrap()).unwrap();
    config.validate().unwrap();
    let cfg = config.clone();
    let task = RoleTask::once("eos-test", move |env: pendo_segment::app::RoleEnv| {
        Box::pin(async move {
            let producer = client_config::transactional_producer(&cfg, "eos-test", 1 << 20);
            let timeout = Duration::from_secs(10);
            let limits = TopicLimits::from_config(&cfg);
            let output = tokio::task::spawn_blocking(move || {
                TransactionalOutput::create(&producer, limits, timeout)
            })
            .await??;
            let spec = LoopSpec {
                role: "eos-test",
                topics: vec![input],
                commit_max_records: cfg.processing.commit_max_records,
                commit_interval: Duration::from_millis(cfg.processing.commit_interval_ms),
                drained: cfg.processing.drained(),
                strategy: CommitStrategy::Transactional {
                    output: output.clone(),
                    timeout,
                },
            };
            let processor = PassThrough {
                output,
                topic: out,
                seen: 0,
            };
            run_consumer_loop(
                &client_config::consumer(&cfg, "eos-test"),
                spec,
                processor,
                env.shutdown.clone(),
                env.readiness.register("consumer:eos-test"),
            )
            .await?;
            Ok(())
        })
    });
    run_role_in_child(&config, task)
}

fn spawn_child(input: &str, out: &str, config: &str, log: &std::path::Path) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_three_times_still_yields_every_record_exactly_once",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PS_EOS_CHILD", "1")
            .env("PS_EOS_IN", input)
            .env("PS_EOS_OUT", out)
            .env("PS_EOS_CONFIG", config)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn sigkill_three_times_still_yields_every_record_exactly_once() {
    if std::env::var("PS_EOS_CHILD").is_ok() {
        child_main(); // never returns
    }
    tokio::runtime::Runtime::new().unwrap().block_on(parent());
}

struct Setup {
    input: String,
    out: String,
    group: String,
    instance: String,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        require_kafka();
        let input = unique("eos-in");
        let out = unique("eos-out");
        create_topic(&input, PARTITIONS).await;
        create_topic(&out, PARTITIONS).await;
        produce_numbered(&input, RECORDS, PARTITIONS).await;
        let dir = tempfile::tempdir().unwrap();
        Setup {
            log: dir.path().join("child.log"),
            group: String::new(),
            instance: unique("eos-child"),
            input,
            out,
            _dir: dir,
        }
    }

    /// A child config; every child of a test shares the group and the instance id.
    fn config(&mut self) -> String {
        let group_prefix = self
            .group
            .strip_suffix(".eos-test")
            .map(str::to_string)
            .unwrap_or_else(|| unique("eosgrp"));
        self.group = format!("{group_prefix}.eos-test");
        // A stable instance id: a restarted process fences (and aborts) its killed predecessor's
        // open transaction at once, as a Deployment with the pod name as instance id would.
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id_prefix = \"{group_prefix}\"\ninstance_id = \"{}\"\n\
             [kafka.consumer_properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 1000\n\
             [kafka.producer_properties]\n\"transaction.timeout.ms\" = 10000\n\
             [processing]\ncommit_interval_ms = 200\ncommit_max_records = 700\nshutdown_grace_ms = 15000\n\
             [observability]\nlisten = \"127.0.0.1:{}\"\n",
            bootstrap(),
            self.instance,
            free_port()
        )
    }

    fn committed_total(&self) -> i64 {
        committed_offsets(&self.group, &self.input, PARTITIONS)
            .values()
            .sum()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every input record exactly once in the committed output.
    fn assert_exactly_once(&self, started: Instant) {
        let records = read_committed(&self.out, RECORDS, Duration::from_secs(30));
        let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
        for r in &records {
            *count.entry(r.payload().unwrap().to_vec()).or_default() += 1;
        }
        let duplicates: usize = count.values().map(|n| n - 1).sum();
        println!(
            "{} output records, {} distinct, {duplicates} duplicates, done in {:?}",
            records.len(),
            count.len(),
            started.elapsed()
        );
        assert_eq!(duplicates, 0, "an input record was output twice");
        assert_eq!(
            count.len(),
            RECORDS,
            "an input record is missing from the output"
        );
        for i in 0..RECORDS {
            assert!(
                count.contains_key(format!("value-{i}").as_bytes()),
                "value-{i} missing"
            );
        }
    }
}

#[test]
fn a_second_instance_with_the_same_identity_fences_the_first() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut s = Setup::new().await;
        let config = s.config();
        let started = Instant::now();
        let mut old = spawn_child(&s.input, &s.out, &config, &s.log);
        while s.committed_total() < 3_000 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "stalled:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // The "zombie" is still running when its replacement starts with the same identity.
        let config_new = s.config(); // same group and identity, its own ops port
        let mut new = spawn_child(&s.input, &s.out, &config_new, &s.log);
        let old_status = loop {
            if let Some(st) = old.try_wait().unwrap() {
                break st;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "old instance never stopped:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            !old_status.success(),
            "a fenced instance must not pretend all went well"
        );
        let logs = s.logs();
        assert!(
            logs.to_lowercase().contains("fenced"),
            "the fenced instance says why:\n{logs}"
        );
        assert!(!logs.contains("panicked"), "{logs}");
        while s.committed_total() < RECORDS as i64 {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "never finished:\n{}",
                s.logs()
            );
            assert!(
                new.try_wait().unwrap().is_none(),
                "new instance died:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        signal(new.id(), 15);
        assert!(new.wait().unwrap().success());
        s.assert_exactly_once(started);
    });
}

async fn parent() {
    let mut s = Setup::new().await;
    let config = s.config();
    let (input, out, log) = (s.input.clone(), s.out.clone(), s.log.clone());
    let logs = || s.logs();
    let committed_total = || s.committed_total();
    let started = Instant::now();
    let mut rng = Rng::new(0xE05_2026);
    let mut child = spawn_child(&input, &out, &config, &log);
    for (kill, threshold) in [3_000i64, 8_000, 13_000].into_iter().enumerate() {
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "stalled:\n{}",
                logs()
            );
            if let Some(s) = child.try_wait().unwrap() {
                panic!("child exited on its own ({s}):\n{}", logs());
            }
            if committed_total() >= threshold {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Land the kill at a random point of the following transactions.
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        signal(child.id(), 9);
        child.wait().unwrap();
        println!(
            "kill {} after {:?} (committed {})",
            kill + 1,
            started.elapsed(),
            committed_total()
        );
        child = spawn_child(&input, &out, &config, &log);
    }
    while committed_total() < RECORDS as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never finished:\n{}",
            logs()
        );
        if let Some(s) = child.try_wait().unwrap() {
            panic!("child exited on its own ({s}):\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(child.id(), 15);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "clean exit after SIGTERM: {status}\n{}",
        logs()
    );

    s.assert_exactly_once(started);
}
