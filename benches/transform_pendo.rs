//! Benchmark: the `transform-pendo` processor (EOS on) next to a pass-through baseline — the
//! same consumer loop, the same transactional producer and commit cadence, no mapping — on the
//! same input in the same run, without and with a 100-event tracking plan checked on every
//! call. Also the id mapping: load time and memory for 1,000,000 mappings.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo bench --bench transform_pendo -- [--events 200000] [--rounds 3] [--mappings 1000000]
//! ```
//!
//! Both modes read the same raw topic (synthetic Pendo events, 0.4-0.7 KB) from the beginning
//! with a fresh consumer group, and are timed from their first record to their last commit (so
//! group-join time is excluded). Rounds alternate baseline and transformer. Output: markdown.

#[path = "../tests/support/produce.rs"]
mod produce;
#[path = "../tests/support/synthetic_pendo.rs"]
mod synthetic_pendo;

/// The same allocator as the `pendo-segment` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pendo_segment::config::{Config, SchemaId};
use pendo_segment::health::Readiness;
use pendo_segment::idmap::IdMapTable;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::consumer_loop::{
    CommitStrategy, LoopSpec, ProcessError, RecordProcessor, run_consumer_loop,
};
use pendo_segment::kafka::record_size::TopicLimits;
use pendo_segment::kafka::topics::{TopicAdmin, TopicId, desired_topics};
use pendo_segment::kafka::transactional_output::TransactionalOutput;
use pendo_segment::schema::{IdMapping, IdMappingCodec, SegmentCallCodec};
use pendo_segment::shutdown::Shutdown;
use pendo_segment::transform::mapping::PendoMapping;
use pendo_segment::transform::pendo::processor::{
    OutputTopics, Parallelism, PendoTransformProcessor,
};
use pendo_segment::transform::pendo_to_segment::PendoToSegment;
use pendo_segment::transform::tracking_plan::{TrackingPlan, TrackingPlanConfig};
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;

struct Args {
    events: usize,
    rounds: usize,
    mappings: usize,
    threads: usize,
    batch: usize,
}

fn args() -> Option<Args> {
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let get = |name: &str, default: usize| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Some(Args {
        events: get("--events", 200_000),
        rounds: get("--rounds", 3),
        mappings: get("--mappings", 1_000_000),
        threads: get("--threads", 0),
        batch: get("--batch", 512),
    })
}

/// Copies each record to the output topic through the loop's transaction (the baseline).
struct PassThrough {
    output: TransactionalOutput,
    topic: String,
}

impl RecordProcessor for PassThrough {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        self.output
            .send(
                &self.topic,
                record.key(),
                record.payload().unwrap_or_default(),
                &[],
            )
            .map_err(|e| ProcessError::new("produce", e.to_string()))
    }
    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// A 100-event tracking plan in Segment Protocols' shape: rules for the four calls the synthetic
/// events make (types, required properties, an enum, `additionalProperties: false`; every
/// synthetic call satisfies them, as most real calls do) and 96 more events, plus a page rule.
fn bench_plan() -> TrackingPlan {
    let string = serde_json::json!({"type": "string"});
    let track = |key: &str, props: serde_json::Value, required: &[&str]| {
        serde_json::json!({"type": "TRACK", "key": key, "version": 1, "jsonSchema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"properties": {"type": "object", "properties": props,
                "required": required, "additionalProperties": false}},
            "required": ["properties"]}})
    };
    let mut rules = vec![
        track(
            "Feature Clicked",
            serde_json::json!({"feature_id": {"type": "string", "pattern": "^ft_"},
                "feature_name": string, "page_id": string, "url": string}),
            &["feature_id"],
        ),
        track(
            "Guide Seen",
            serde_json::json!({"guide_id": string, "guide_step_id": string,
                "guide_name": string}),
            &["guide_id"],
        ),
        track(
            "Report Exported",
            serde_json::json!({"track_type_id": string, "url": string,
                "format": {"enum": ["csv", "xlsx", "pdf"]}, "rows": {"type": "integer", "minimum": 0},
                "scheduled": {"type": "boolean"}, "report": {"type": "object"}}),
            &["format"],
        ),
    ];
    for i in 0..97 {
        rules.push(track(
            &format!("Planned Event {i}"),
            serde_json::json!({"id": string, "count": {"type": "integer"}}),
            &["id"],
        ));
    }
    rules.push(
        serde_json::json!({"type": "PAGE", "key": null, "jsonSchema": {"properties": {
        "properties": {"type": "object", "required": ["url", "path"], "properties": {
            "url": string, "path": string, "title": string}}}}}),
    );
    let text = serde_json::json!({"rules": rules}).to_string();
    let plan = TrackingPlan::parse(&text, "bench-plan.json", &TrackingPlanConfig::default())
        .expect("the bench plan is valid");
    assert_eq!(plan.rule_count(), 101);
    plan
}

/// Times a processor from its first record and stops the loop after `target` records.
struct Timed<P> {
    inner: P,
    seen: usize,
    target: usize,
    /// Shared with the caller: the loop owns the processor.
    first: Arc<OnceLock<Instant>>,
    shutdown: Shutdown,
}

impl<P: RecordProcessor> RecordProcessor for Timed<P> {
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        self.first.get_or_init(Instant::now);
        self.inner.process(record).await?;
        self.seen += 1;
        if self.seen == self.target {
            self.shutdown.trigger();
        }
        Ok(())
    }
    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        self.inner.checkpoint().await
    }
}

struct RoleMemory {
    ready_secs: f64,
    rss: u64,
    entries: u64,
}

/// Starts the transform-pendo role (release binary), waits for /readyz, reads its metrics, stops it.
async fn role_memory(config: &std::path::Path, ops: u16) -> RoleMemory {
    let started = Instant::now();
    let mut role = std::process::Command::new(env!("CARGO_BIN_EXE_pendo-segment"))
        .arg("--config")
        .arg(config)
        .args(["run", "--role", "transform-pendo"])
        .spawn()
        .expect("start the pendo-segment binary");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{ops}");
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            role.try_wait().unwrap().is_none(),
            "the role exited before ready"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not ready in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_secs = started.elapsed().as_secs_f64();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let m = RoleMemory {
        ready_secs,
        rss: value("pendo_segment_process_resident_memory_bytes"),
        entries: value("pendo_segment_idmap_entries"),
    };
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { kill(role.id() as i32, 15) };
    let _ = role.wait();
    m
}

async fn run_mode(
    config: &Config,
    mode: &str,
    round: usize,
    events: usize,
    parallelism: Parallelism,
) -> f64 {
    let role = format!("bench-{mode}-{round}");
    let timeout = Duration::from_secs(10);
    let producer = client_config::transactional_producer(config, &role, 4 << 20);
    let limits = TopicLimits::from_config(config);
    let output = tokio::task::spawn_blocking(move || {
        TransactionalOutput::create(&producer, limits, timeout)
    })
    .await
    .unwrap()
    .unwrap();
    let raw = config.topic_name(TopicId::PendoRawWebhook);
    let spec = LoopSpec {
        role: "bench",
        topics: vec![raw.clone()],
        commit_max_records: config.processing.commit_max_records,
        commit_interval: Duration::from_millis(config.processing.commit_interval_ms),
        drained: config.processing.drained(),
        strategy: CommitStrategy::Transactional {
            output: output.clone(),
            timeout,
        },
    };
    let consumer = client_config::consumer(config, &role);
    let plan = (mode == "transform+plan").then(bench_plan);
    let (processed, first) = if mode == "pass-through" {
        let p = PassThrough {
            output,
            topic: format!("{}.out", config.topic_name(TopicId::CanonicalSegmentCalls)),
        };
        run_timed(&consumer, spec, p, events).await
    } else {
        let mapper = PendoToSegment::new(
            PendoMapping::default_mapping(),
            config.transform_pendo.mapper_settings("pendo.webhook"),
        );
        let p = PendoTransformProcessor::with_parallelism(
            "bench",
            mapper,
            SegmentCallCodec::new(config.schema.wire_format(SchemaId::SegmentCall)),
            IdMapTable::default(),
            output,
            OutputTopics {
                calls: config.topic_name(TopicId::CanonicalSegmentCalls),
                dlq: config.topic_name(TopicId::DlqTransformPendo),
                sources: vec![(raw, "pendo.webhook".into())],
            },
            parallelism,
        )
        .with_tracking_plan(plan);
        run_timed(&consumer, spec, p, events).await
    };
    let elapsed = first.elapsed().as_secs_f64();
    assert!(
        processed >= events as u64,
        "{mode}: processed {processed} of {events}"
    );
    events as f64 / elapsed
}

/// Runs `inner` in the loop until `events` records; returns (processed, first-record instant).
async fn run_timed<P: RecordProcessor>(
    consumer: &rdkafka::ClientConfig,
    spec: LoopSpec,
    inner: P,
    events: usize,
) -> (u64, Instant) {
    let shutdown = Shutdown::new();
    let first = Arc::new(OnceLock::new());
    let timed = Timed {
        inner,
        seen: 0,
        target: events,
        first: first.clone(),
        shutdown: shutdown.clone(),
    };
    let readiness = Readiness::default().register("bench");
    let stats = run_consumer_loop(consumer, spec, timed, shutdown, readiness)
        .await
        .expect("loop");
    (stats.processed, *first.get().expect("a first record"))
}

async fn produce(config: &Config, topic: &str, records: impl Iterator<Item = (String, Vec<u8>)>) {
    let p: FutureProducer = client_config::producer(config, "bench-load")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    produce::produce_all(&p, topic, records.map(|(k, v)| (Some(k), v))).await;
}

/// The mapping and encoding alone, without Kafka: where the transformer's CPU goes. Returns
/// microseconds per event on one thread (with the tracking plan checked when given).
fn cpu_only(events: usize, plan: Option<&TrackingPlan>) -> f64 {
    let raw: Vec<Vec<u8>> = (0..10_000)
        .map(|i| synthetic_pendo::synthetic_event(i).1)
        .collect();
    let mapper = PendoToSegment::new(
        PendoMapping::default_mapping(),
        pendo_segment::transform::pendo_to_segment::MapperSettings::default(),
    );
    let codec = SegmentCallCodec::new(pendo_segment::schema::WireFormat::SingleObject);
    let ids = IdMapTable::default();
    let mut buf = Vec::new();
    let t = Instant::now();
    let mut calls = 0usize;
    for i in 0..events {
        let (outcome, _) = mapper.map(&raw[i % raw.len()], Some(1), &ids);
        if let pendo_segment::transform::pendo_to_segment::MapOutcome::Calls(mut cs) = outcome {
            for c in &mut cs {
                if let Some(check) = plan.and_then(|p| p.check(c)) {
                    assert!(check.violations.is_empty(), "{:?}", check.violations);
                }
                buf.clear();
                codec.encode(c, &mut buf).unwrap();
                calls += 1;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if let Some(plan) = plan {
        // The check alone, on calls mapped beforehand.
        let mut calls: Vec<_> = raw
            .iter()
            .filter_map(|r| match mapper.map(r, Some(1), &ids).0 {
                pendo_segment::transform::pendo_to_segment::MapOutcome::Calls(cs) => Some(cs),
                _ => None,
            })
            .flatten()
            .collect();
        let t = Instant::now();
        for i in 0..events {
            let n = calls.len();
            std::hint::black_box(plan.check(&mut calls[i % n]));
        }
        println!(
            "plan check alone: {:.2} us/call",
            t.elapsed().as_secs_f64() * 1e6 / events as f64
        );
    }
    let t2 = Instant::now();
    let mut n = 0usize;
    for i in 0..events {
        let v: serde_json::Value = serde_json::from_slice(&raw[i % raw.len()]).unwrap();
        n += v.as_object().map_or(0, |m| m.len());
    }
    let parse = t2.elapsed().as_secs_f64();
    println!(
        "json parse alone: {:.2} us/event ({n})",
        parse * 1e6 / events as f64
    );
    println!(
        "map + encode{}: {:.0} events/s ({calls} calls, {:.2} us/event)",
        if plan.is_some() { " + plan check" } else { "" },
        events as f64 / secs,
        secs * 1e6 / events as f64
    );
    secs * 1e6 / events as f64
}

fn main() {
    let Some(args) = args() else {
        println!("transform_pendo: run with `cargo bench --bench transform_pendo`");
        return;
    };
    let servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let plan = bench_plan();
    if std::env::args().any(|a| a == "--cpu-only") {
        cpu_only(args.events, None);
        cpu_only(args.events, Some(&plan));
        return;
    }
    let map_us = cpu_only(200_000, None);
    let plan_us = cpu_only(200_000, Some(&plan));
    if args.rounds == 0 {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let prefix = format!("bench-tp-{}", std::process::id());
        let config_text = format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\ngroup_id_prefix = \"{prefix}\"\n[topics]\nprefix = \"{prefix}.\"\npartitions = 6\nreplication_factor = 1\n\
             [observability]\nlog_level = \"warn\"\n"
        );
        let config: Config = toml::from_str(&config_text).unwrap();
        config.validate().unwrap();
        pendo_segment::logging::init(config.observability.log_format, "warn");
        let admin = TopicAdmin::new(&client_config::admin(&config), Duration::from_secs(30)).unwrap();
        let plan = admin
            .plan(&desired_topics(&config))
            .await
            .expect("is Kafka running? scripts/kafka-local start");
        admin.apply(&plan, false).await.unwrap();
        let out_topic = format!("{}.out", config.topic_name(TopicId::CanonicalSegmentCalls));
        let mut tpl = desired_topics(&config);
        tpl.retain(|s| s.id == TopicId::CanonicalSegmentCalls);
        tpl[0].name = out_topic;
        let plan = admin.plan(&tpl).await.unwrap();
        admin.apply(&plan, false).await.unwrap();

        let raw = config.topic_name(TopicId::PendoRawWebhook);
        let t = Instant::now();
        produce(&config, &raw, (0..args.events).map(synthetic_pendo::synthetic_event)).await;
        eprintln!("loaded {} raw events in {:.1}s", args.events, t.elapsed().as_secs_f64());

        let mut pass = Vec::new();
        let mut transform = Vec::new();
        let mut planned = Vec::new();
        for round in 0..args.rounds {
            let parallelism = Parallelism {
                batch_records: args.batch,
                batches_in_flight: if args.threads == 0 {
                    Parallelism::default().batches_in_flight
                } else {
                    args.threads
                },
            };
            // The order rotates from round to round, so no mode always runs first (cold) or last.
            let modes = ["pass-through", "transform", "transform+plan"];
            let mut rates = [0.0; 3];
            for i in 0..modes.len() {
                let m = (round + i) % modes.len();
                rates[m] = run_mode(&config, modes[m], round, args.events, parallelism).await;
            }
            pass.push(rates[0]);
            transform.push(rates[1]);
            planned.push(rates[2]);
            eprintln!(
                "round {round}: pass-through {:.0}/s, transform {:.0}/s, transform + plan {:.0}/s",
                pass[round], transform[round], planned[round]
            );
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (p, tr, pl) = (mean(&pass), mean(&transform), mean(&planned));
        let per_round = |v: &[f64]| -> String {
            pass.iter()
                .zip(v)
                .map(|(p, t)| format!("{:.2}", t / p))
                .collect::<Vec<_>>()
                .join(", ")
        };

        // Id mapping: the transform-pendo role as its own process (the release binary), started
        // once on an empty mapping and once after `mappings` were published: time to ready
        // (reading the topic to its end) and resident memory, from its own /metrics.
        let ops = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let role_config = config_text.replace(
            "[observability]\n",
            &format!("[observability]\nlisten = \"127.0.0.1:{ops}\"\n"),
        );
        let config_path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&config_path, &role_config).unwrap();
        let empty = role_memory(&config_path, ops).await;
        let idmap_topic = config.topic_name(TopicId::IdmapVisitorToUser);
        let codec = IdMappingCodec::new(config.schema.wire_format(SchemaId::IdMapping));
        let mapping = |i: usize| (format!("vis-{i:08x}-4f1c-9a2b"), format!("user-{i:010}"));
        let t = Instant::now();
        produce(
            &config,
            &idmap_topic,
            (0..args.mappings).map(|i| {
                let (visitor, user) = mapping(i);
                let value = codec
                    .encode_to_vec(&IdMapping {
                        visitor_id: visitor.clone(),
                        user_id: user,
                        source: "bench".into(),
                        updated_at: 1_764_330_000_000,
                    })
                    .unwrap();
                (visitor, value)
            }),
        )
        .await;
        eprintln!("published {} mappings in {:.1}s", args.mappings, t.elapsed().as_secs_f64());
        let loaded = role_memory(&config_path, ops).await;
        assert_eq!(loaded.entries, args.mappings as u64, "every mapping loaded");

        // The table alone, filled directly: bytes per mapping and lookup speed.
        let table = IdMapTable::default();
        for i in 0..args.mappings {
            let (v, u) = mapping(i);
            table.insert(&v, &u);
        }
        table.shrink_to_fit();
        let lookups = Instant::now();
        let mut hits = 0;
        for i in 0..1_000_000usize {
            if table.get(&mapping(i % args.mappings).0).is_some() {
                hits += 1;
            }
        }
        let lookup_rate = 1_000_000.0 / lookups.elapsed().as_secs_f64();
        assert_eq!(hits, 1_000_000);
        println!();
        println!("| transform-pendo, {} events, 6 partitions, EOS on | events/s |", args.events);
        println!("| --- | ---: |");
        println!("| baseline: pass-through (same loop, transactional producer, cadence) | {p:.0} |");
        println!("| transform-pendo (map + Avro encode) | {tr:.0} |");
        println!("| ratio | {:.2}x |", tr / p);
        println!("| ratio per round (the order of the modes rotates) | {} |", per_round(&transform));
        println!("| transform-pendo + 100-event tracking plan checked on every call | {pl:.0} |");
        println!("| ratio with the plan | {:.2}x |", pl / p);
        println!("| ratio with the plan per round | {} |", per_round(&planned));
        println!("| map + Avro encode alone, one thread, no Kafka | {map_us:.2} us/event |");
        println!("| map + plan check + Avro encode alone | {plan_us:.2} us/event |");
        println!();
        println!("| id mapping | value |");
        println!("| --- | ---: |");
        println!("| mappings | {} |", args.mappings);
        println!("| transform-pendo start to ready, empty mapping / loaded | {:.1} s / {:.1} s |", empty.ready_secs, loaded.ready_secs);
        println!("| transform-pendo RSS when ready, empty mapping / loaded | {:.0} MiB / {:.0} MiB |", empty.rss as f64 / 1048576.0, loaded.rss as f64 / 1048576.0);
        println!("| table memory (arena + entries + index) | {:.0} MiB ({:.0} B/mapping) |", table.heap_bytes() as f64 / 1048576.0, table.heap_bytes() as f64 / args.mappings as f64);
        println!("| lookups (with key formatting) | {:.1} M/s |", lookup_rate / 1e6);
    });
}
