//! Benchmark: `pendo-poller` (the release binary, its own process) with a million known visitors
//! in its state: the time to load that state at start against a plain consumer reading the same
//! topic in the same run (the baseline), the memory it holds once loaded, and the time of a
//! profile sync in which 1 % of the visitors changed (plus as many whose update touched only an
//! unselected field), read from the Pendo-compatible test server.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo bench --bench pendo_poller_state -- [--visitors 1000000] [--changed 10000]
//! ```

#[path = "../tests/support/pendo_server.rs"]
mod pendo_server;
#[path = "../tests/support/produce.rs"]
mod produce;

use std::io::BufRead;
use std::time::{Duration, Instant};

use pendo_segment::config::Config;
use pendo_segment::connectors::pendo_poller::rows::{fingerprint, select_metadata};
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::topics::{TopicAdmin, TopicId, desired_topics};
use pendo_server::{PendoServerConfig, PendoTestServer, visitor_row};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Visitor `i` as the test server answers it; `role` is the selected field that changes.
fn visitor(i: usize, role: &str, updated_ms: i64) -> Value {
    let mut row = visitor_row(
        &format!("vis-{i:07}"),
        &format!("acct-{:05}", i % 20_000),
        updated_ms - 30 * 86_400_000,
        json!({"email": format!("v{i}@example.com"), "full_name": format!("Visitor {i}")}),
        json!({"role": role, "plan_tier": "growth", "adoption_stage": "onboarding"}),
    );
    row["metadata"]["auto"]["lastupdated"] = json!(updated_ms);
    row
}

fn hex(fp: &[u8]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `topic` from the start to its end with a plain consumer: the baseline of a state load.
fn raw_read(config: &Config, topic: &str) -> (usize, Duration) {
    let consumer: BaseConsumer = client_config::consumer(config, "bench-raw-read")
        .set("group.id", format!("bench-raw-{}", std::process::id()))
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    let started = Instant::now();
    consumer.assign(&tpl).unwrap();
    let mut n = 0;
    while !ends.is_empty() {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            n += 1;
            if ends
                .get(&m.partition())
                .is_some_and(|e| m.offset() + 1 >= *e)
            {
                ends.remove(&m.partition());
            }
        }
    }
    (n, started.elapsed())
}

/// Records on `topic` now, read until nothing new comes for 3 s.
fn count(config: &Config, topic: &str) -> usize {
    let consumer: BaseConsumer = client_config::consumer(config, "bench-count")
        .set("group.id", format!("bench-count-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut n = 0;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            n += 1;
            last = Instant::now();
        }
    }
    n
}

/// Resident memory of a process, from `/proc/<pid>/status`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pendo_poller_state: run with `cargo bench --bench pendo_poller_state`");
        return;
    }
    let visitors = arg("--visitors", 1_000_000);
    let changed = arg("--changed", visitors / 100);
    let servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let prefix = format!("bench-poller-{}", std::process::id());
        let base = format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\ngroup_id_prefix = \"{prefix}\"\n\
             [topics]\nprefix = \"{prefix}.\"\npartitions = 3\nreplication_factor = 1\n"
        );
        let config: Config = toml::from_str(&base).unwrap();
        let admin =
            TopicAdmin::new(&client_config::admin(&config), Duration::from_secs(30)).unwrap();
        let plan = admin
            .plan(&desired_topics(&config))
            .await
            .expect("is Kafka running? scripts/kafka-local start");
        admin.apply(&plan, false).await.unwrap();

        // The state of a poller that has seen and sent `visitors` profiles.
        let now = now_ms();
        let fields = vec!["agent".to_string(), "custom".to_string()];
        let state_topic = config.topic_name(TopicId::StatePendoPoller);
        let producer: FutureProducer = client_config::producer(&config, "bench-load")
            .set("linger.ms", "20")
            .create()
            .unwrap();
        let t = Instant::now();
        let memos = (0..visitors).map(|i| {
            let fp = fingerprint(&select_metadata(&visitor(i, "user", now), &fields));
            (
                Some(format!("visitor:vis-{i:07}")),
                json!({"seen": true, "fp": hex(&fp)}).to_string().into_bytes(),
            )
        });
        let cursor = std::iter::once((
            Some("cursor:visitors.lastupdated".to_string()),
            json!({"at": now - 120_000}).to_string().into_bytes(),
        ));
        produce::produce_all(&producer, &state_topic, memos.chain(cursor)).await;
        eprintln!(
            "state: {visitors} visitors written in {:.1}s",
            t.elapsed().as_secs_f64()
        );

        // Baseline: the same topic read to its end by a plain consumer.
        let (read, raw_time) = {
            let (config, topic) = (config.clone(), state_topic.clone());
            tokio::task::spawn_blocking(move || raw_read(&config, &topic))
                .await
                .unwrap()
        };
        assert_eq!(read, visitors + 1);

        // Pendo: `changed` visitors changed a selected field in the last minute, as many only
        // an unselected one (their update is read, nothing is sent for them).
        let server = PendoTestServer::start(PendoServerConfig {
            max_rows: 5_000,
            ..Default::default()
        })
        .await;
        let stride = (visitors / (2 * changed).max(1)).max(1);
        let mut rows = Vec::with_capacity(2 * changed);
        for k in 0..2 * changed {
            let i = (k * stride) % visitors;
            if k % 2 == 0 {
                rows.push(visitor(i, "admin", now - 60_000));
            } else {
                let mut row = visitor(i, "user", now - 60_000);
                row["metadata"]["auto"]["lastvisit"] = json!(now - 60_000);
                rows.push(row);
            }
        }
        server.set_visitors(rows);

        let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = format!(
            "{base}[observability]\nlisten = \"127.0.0.1:{ops_port}\"\nlog_format = \"json\"\n\
             [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
             [pendo_poller]\naccounts_interval_s = 0\nvisitors_interval_s = 0\n\
             catalog_interval_s = 0\nguide_events_interval_s = 0\npoll_events_interval_s = 0\n\
             profiles_interval_s = 3600\nvisitors_settle_s = 300\npage_size = 1000\n\
             requests_per_s = 1000\n",
            server.url(),
            server.integration_key()
        );
        let path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&path, text).unwrap();
        let started = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pendo-segment"))
            .arg("--config")
            .arg(&path)
            .args(["run", "--role", "pendo-poller"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the pendo-segment binary");
        let pid = child.id();
        // Its log (JSON lines on stderr) says when the state is loaded and the sync done.
        let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut load_ms, mut loaded_at, mut rss_loaded) = (None, None, 0.0);
        let (mut cycle_ms, mut rss_after) = (None, 0.0);
        for line in lines {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match v["message"].as_str() {
                Some("poller state loaded") => {
                    load_ms = v["load_ms"].as_u64();
                    loaded_at = Some(started.elapsed());
                    rss_loaded = rss_mib(pid);
                }
                Some("poll cycle complete") if v["job"] == "profiles" => {
                    cycle_ms = v["took_ms"].as_u64();
                    rss_after = rss_mib(pid);
                    break;
                }
                Some("poll cycle failed") => panic!("the profile sync failed: {line}"),
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(600) {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let (load_ms, cycle_ms) = (
            load_ms.expect("the poller logged its state load"),
            cycle_ms.expect("the poller completed a profile sync"),
        );
        let sent = {
            let (config, topic) = (config.clone(), config.topic_name(TopicId::PendoRawApi));
            tokio::task::spawn_blocking(move || count(&config, &topic))
                .await
                .unwrap()
        };
        assert_eq!(sent, changed, "exactly the changed profiles were sent");

        let raw_s = raw_time.as_secs_f64();
        let load_s = load_ms as f64 / 1000.0;
        println!(
            "\npendo-poller with {visitors} known visitors ({} state records), release build:\n\n\
             | | value |\n|---|---|\n\
             | baseline: plain consumer reads the state topic | {raw_s:.2} s |\n\
             | poller loads its state | {load_s:.2} s ({:.2}x the baseline; ready {:.1} s after start) |\n\
             | resident memory once loaded | {rss_loaded:.0} MiB |\n\
             | profile sync, {} updated of which {changed} changed (1 %) | {:.2} s |\n\
             | resident memory after the sync | {rss_after:.0} MiB |\n\
             | identify records sent | {sent} |",
            visitors + 1,
            load_s / raw_s,
            loaded_at.unwrap_or_default().as_secs_f64(),
            2 * changed,
            cycle_ms as f64 / 1000.0,
        );
    });
}
