//! Benchmark: one `segment-sink` instance (the release binary, its own process) delivering
//! canonical Segment calls into the Segment-compatible test server, next to a raw consumer
//! reading the same topic in the same run; then its memory with a large backlog and a server
//! that answers in 1 s.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo bench --bench segment_sink -- [--events 200000] [--backlog 1000000] [--seconds 20]
//! ```

#[path = "../tests/support/produce.rs"]
mod produce;
#[path = "../tests/support/segment_server.rs"]
mod segment_server;

use std::time::{Duration, Instant};

use pendo_segment::config::Config;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::topics::{TopicAdmin, TopicId, desired_topics};
use pendo_segment::schema::{
    CallBody, CallContext, Origin, SegmentCall, SegmentCallCodec, WireFormat,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use segment_server::{SegmentServerConfig, SegmentTestServer};

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic track call (~0.6 KB as Segment JSON).
fn call(i: usize) -> SegmentCall {
    SegmentCall {
        message_id: format!("pendo-bench-{i:012}"),
        timestamp: "2026-11-29T03:00:00.000Z".into(),
        user_id: Some(format!("user-{}", i % 5_000)),
        anonymous_id: None,
        context: CallContext {
            group_id: Some("acct-contoso".into()),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36".into()),
            locale: Some("de-DE".into()),
            ..Default::default()
        },
        integrations: None,
        origin: Origin {
            source: "pendo.webhook".into(),
            kind: "featureClicked".into(),
            visitor_id: Some(format!("vis-{}", i % 5_000)),
            account_id: Some("acct-contoso".into()),
            received_at: None,
        },
        body: CallBody::Track {
            event: "Feature Clicked".into(),
            properties: format!(
                r#"{{"feature_id":"ft_{}","feature_name":"Export CSV button","page_id":"pg_reports","url":"https://app.acme.example/reports/rep-77","seq":{i}}}"#,
                i % 97
            ),
        },
    }
}

async fn produce(config: &Config, topic: &str, from: usize, n: usize) {
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let p: FutureProducer = client_config::producer(config, "bench-load")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let records = (from..from + n).map(|i| {
        let c = call(i);
        (
            c.kafka_key().map(str::to_string),
            codec.encode_to_vec(&c).unwrap(),
        )
    });
    produce::produce_all(&p, topic, records).await;
}

/// Reads `n` records of `topic` from the beginning; events/s from the first record.
fn raw_consumer(config: &Config, topic: &str, n: usize) -> f64 {
    let consumer: BaseConsumer =
        client_config::consumer(config, &format!("bench-raw-{}", std::process::id()))
            .create()
            .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        if let Some(r) = consumer.poll(Duration::from_secs(1)) {
            r.expect("consume");
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    n as f64 / first.unwrap().elapsed().as_secs_f64()
}

/// Loads the same calls, already rendered as Segment JSON items, onto `topic` (for the forwarder).
async fn produce_json(config: &Config, topic: &str, n: usize) {
    let p: FutureProducer = client_config::producer(config, "bench-load")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let records = (0..n).map(|i| {
        let c = call(i);
        let mut item = Vec::with_capacity(640);
        c.write_segment_json(&mut item);
        (c.kafka_key().map(str::to_string), item)
    });
    produce::produce_all(&p, topic, records).await;
}

/// The plain pass-through: a consumer that copies ready-made Segment JSON items into
/// `/v1/batch` bodies (same size limits) and posts them with the same concurrency as the sink
/// (4 requests in flight), nothing decoded, validated or committed. Events/s from the first
/// record to the last response.
async fn raw_forwarder(config: &Config, topic: &str, n: usize, server: &SegmentTestServer) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let consumer: BaseConsumer =
        client_config::consumer(config, &format!("bench-fwd-{}", std::process::id()))
            .create()
            .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        let mut first = None;
        let mut seen = 0;
        let mut body = Vec::with_capacity(480_000);
        let mut items = 0;
        let flush = |body: &mut Vec<u8>, items: &mut usize| {
            if *items == 0 {
                return;
            }
            body.extend_from_slice(b"],\"sentAt\":\"2026-11-29T03:00:00.000Z\"}");
            tx.blocking_send(std::mem::take(body)).unwrap();
            *items = 0;
        };
        while seen < n {
            match consumer.poll(Duration::from_millis(100)) {
                Some(r) => {
                    let r = r.expect("consume");
                    first.get_or_insert_with(Instant::now);
                    seen += 1;
                    let item = rdkafka::Message::payload(&r).unwrap_or_default();
                    if items == 2_500 || body.len() + item.len() + 64 > 475_000 {
                        flush(&mut body, &mut items);
                    }
                    body.extend_from_slice(if items == 0 { b"{\"batch\":[" } else { b"," });
                    body.extend_from_slice(item);
                    items += 1;
                }
                None => flush(&mut body, &mut items),
            }
        }
        flush(&mut body, &mut items);
        first.unwrap()
    });
    let client = reqwest::Client::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut posts = tokio::task::JoinSet::new();
    while let Some(body) = rx.recv().await {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let request = client
            .post(server.batch_url())
            .basic_auth(server.write_key(), Some(""))
            .header("content-type", "application/json")
            .body(body);
        posts.spawn(async move {
            let status = request.send().await.expect("post").status();
            assert!(status.is_success(), "{status}");
            drop(permit);
        });
    }
    while posts.join_next().await.is_some() {}
    let first = reader.await.unwrap();
    assert_eq!(
        server.distinct_count(),
        n,
        "the forwarder delivered everything"
    );
    n as f64 / first.elapsed().as_secs_f64()
}

async fn create_topic(config: &Config, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config::admin(config).create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.expect("create the pass-through topic");
    }
}

struct Sink {
    child: std::process::Child,
    ops: String,
}

impl Sink {
    async fn start(config_text: &str, name: &str) -> Sink {
        let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = config_text.replace(
            "[observability]\n",
            &format!("[observability]\nlisten = \"127.0.0.1:{ops_port}\"\n"),
        );
        let path = std::env::temp_dir().join(format!("{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pendo-segment"))
            .arg("--config")
            .arg(&path)
            .args(["run", "--role", "segment-sink"])
            .spawn()
            .expect("start the pendo-segment binary");
        Sink {
            child,
            ops: format!("http://127.0.0.1:{ops_port}"),
        }
    }

    async fn rss(&self) -> u64 {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.ops)).await else {
            return 0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("pendo_segment_process_resident_memory_bytes"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("segment_sink: run with `cargo bench --bench segment_sink`");
        return;
    }
    let events = arg("--events", 200_000);
    let backlog = arg("--backlog", 1_000_000);
    let seconds = arg("--seconds", 20) as u64;
    let servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let prefix = format!("bench-sink-{}", std::process::id());
        let base = format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\ngroup_id_prefix = \"{prefix}\"\n[topics]\nprefix = \"{prefix}.\"\npartitions = 6\nreplication_factor = 1\n\
             [observability]\nlog_level = \"warn\"\n"
        );
        let config: Config = toml::from_str(&base).unwrap();
        pendo_segment::logging::init(config.observability.log_format, "warn");
        let admin = TopicAdmin::new(&client_config::admin(&config), Duration::from_secs(30)).unwrap();
        let plan = admin.plan(&desired_topics(&config)).await.expect("is Kafka running? scripts/kafka-local start");
        admin.apply(&plan, false).await.unwrap();
        let topic = config.topic_name(TopicId::CanonicalSegmentCalls);
        let t = Instant::now();
        produce(&config, &topic, 0, events).await;
        eprintln!("loaded {events} canonical calls in {:.1}s", t.elapsed().as_secs_f64());

        // 1. Baseline: a raw consumer over the same records.
        let raw = {
            let config = config.clone();
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || raw_consumer(&config, &topic, events)).await.unwrap()
        };

        // 2. Baseline: the plain pass-through into the test server.
        let json_topic = format!("{prefix}.bench-json-items");
        create_topic(&config, &json_topic, 6).await;
        produce_json(&config, &json_topic, events).await;
        let forward = {
            let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
            raw_forwarder(&config, &json_topic, events, &server).await
        };

        // 3. The sink, into a server that answers at once.
        let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
        let sink_text = format!(
            "{base}[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n[segment_sink]\nlinger_ms = 200\n",
            server.url(),
            server.write_key()
        );
        let sink = Sink::start(&sink_text, "sink").await;
        assert!(server.wait_for_distinct(events, Duration::from_secs(600)).await, "not all delivered");
        let requests = server.requests();
        let first = requests.iter().map(|r| r.received_at).min().unwrap();
        let last = requests.iter().map(|r| r.received_at).max().unwrap();
        let rate = events as f64 / (last - first).as_secs_f64().max(1e-3);
        let peak_fast = sink.rss().await;
        drop(sink);
        drop(server);

        // 4. Memory: a backlog of `backlog` records, a server answering in 1 s.
        let slow_topic_prefix = format!("{prefix}-slow");
        // Its own topics and consumer group (the first sink's group still holds its SIGKILLed member).
        let slow_base = base
            .replace(&format!("prefix = \"{prefix}.\""), &format!("prefix = \"{slow_topic_prefix}.\""))
            .replace(&format!("group_id_prefix = \"{prefix}\""), &format!("group_id_prefix = \"{slow_topic_prefix}\""));
        let slow_config: Config = toml::from_str(&slow_base).unwrap();
        let plan = admin.plan(&desired_topics(&slow_config)).await.unwrap();
        admin.apply(&plan, false).await.unwrap();
        let t = Instant::now();
        produce(&slow_config, &slow_config.topic_name(TopicId::CanonicalSegmentCalls), 0, backlog).await;
        eprintln!("loaded a backlog of {backlog} in {:.1}s", t.elapsed().as_secs_f64());
        let slow = SegmentTestServer::start(SegmentServerConfig {
            response_delay: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await;
        let slow_text = format!(
            "{slow_base}[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n",
            slow.url(),
            slow.write_key()
        );
        let sink = Sink::start(&slow_text, "slow-sink").await;
        let mut peak = 0;
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            peak = peak.max(sink.rss().await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let delivered = slow.distinct_count();
        drop(sink);

        println!();
        println!("| segment-sink, {events} calls (~0.6 KB), 6 partitions | events/s | ratio |");
        println!("| --- | ---: | ---: |");
        println!("| baseline: raw consumer, same topic (counts records) | {raw:.0} | 1.00 |");
        println!("| baseline: plain pass-through, Segment JSON items -> batches -> test server | {forward:.0} | {:.2} |", forward / raw);
        println!("| segment-sink -> test server (no faults) | {rate:.0} | {:.2} ({:.2} of the pass-through) |", rate / raw, rate / forward);
        println!();
        println!("| segment-sink memory | value |");
        println!("| --- | ---: |");
        println!("| RSS after delivering {events} | {:.0} MiB |", peak_fast as f64 / 1048576.0);
        println!("| peak RSS, {backlog}-record backlog, server answering in 1 s, {seconds} s | {:.0} MiB ({delivered} delivered meanwhile) |", peak as f64 / 1048576.0);
    });
}
