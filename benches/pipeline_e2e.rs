//! Benchmark: the whole forward path at a fixed rate — `pendo-webhook`, `transform-pendo` and
//! `segment-sink`, each its own process (the release binary), on one broker, delivering into the
//! Segment-compatible test server. Reports end-to-end latency from the moment an event is sent
//! to the webhook to the moment the Segment server accepted its call (p50/p99/max), what
//! arrived, and each role's peak RSS. A paced rate is spread evenly: each connection sends its
//! share at a fixed interval, the connections' phases staggered across it. `--rate 0` is
//! saturation: every connection sends its next event as soon as the previous one is answered,
//! and the delivered rate (accepted events over load plus drain time) is the forward path's
//! capacity on this machine. The load starts 3 s before the measured seconds; those events must
//! arrive too, but their latencies (groups joining, first transactions) are not in the
//! percentiles.
//!
//! `--find-max` is the saturation mode: the capacity at `--rate 0`, then the highest offered
//! rate (from that capacity down in 5% steps) at which everything arrives with p99 < 1 s and at
//! least 97% of the offered rate is carried, then the latency table at 1,000, 5,000 and that
//! rate. Each run has its own topics, roles and Segment server.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo bench --bench pipeline_e2e -- [--rate 2000 | --rate 0 | --find-max] [--seconds 30] [--connections 64]
//! ```

#[path = "support/mini_http.rs"]
mod mini_http;
#[path = "../tests/support/segment_server.rs"]
mod segment_server;
#[path = "../tests/support/synthetic_pendo.rs"]
mod synthetic_pendo;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mini_http::{MiniHttp, render_post};
use pendo_segment::config::Config;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::topics::{TopicAdmin, desired_topics};
use segment_server::{SegmentServerConfig, SegmentTestServer};
use serde_json::Value;

const SECRET: &str = "bench-webhook-secret";
/// The load runs this long before the measured `--seconds`: its events are sent, counted and
/// must arrive, but their latencies (consumer groups joining, first metadata and transactions)
/// are left out of the percentiles.
const WARM_UP_SECONDS: u64 = 3;
const AUTHORIZATION: &str = "authorization: Bearer bench-webhook-secret";

/// Synthetic Pendo events (four kinds, `synthetic_pendo`) serialised once, each cut around the
/// values a request must vary (`uniqueId`, `timestamp`: the messageId of some kinds hashes the
/// timestamp, not the uniqueId; `properties.sent_at_ms`), so a request body is a few copies and
/// three numbers: distinct events, the send time, and no JSON work while the clock runs.
struct BodyTemplates {
    /// Per event: the texts around the slots, and which value each slot takes, in order.
    events: Vec<(Vec<String>, Vec<Slot>)>,
}

#[derive(Clone, Copy)]
enum Slot {
    UniqueId,
    Timestamp,
    SentAt,
}

impl BodyTemplates {
    fn new(count: usize) -> Self {
        let events = (0..count)
            .map(|i| {
                let (_, bytes) = synthetic_pendo::synthetic_event(i);
                let mut event: Value = serde_json::from_slice(&bytes).unwrap();
                event["uniqueId"] = Value::from("@UniqueId@");
                event["timestamp"] = Value::from("@Timestamp@");
                event["properties"]["sent_at_ms"] = Value::from("@SentAt@");
                let text = event.to_string();
                let mut at: Vec<(usize, &str, Slot)> = [
                    ("\"@UniqueId@\"", Slot::UniqueId),
                    ("\"@Timestamp@\"", Slot::Timestamp),
                    ("\"@SentAt@\"", Slot::SentAt),
                ]
                .into_iter()
                .map(|(mark, slot)| (text.find(mark).unwrap(), mark, slot))
                .collect();
                at.sort_by_key(|(pos, _, _)| *pos);
                let (mut texts, mut from) = (Vec::new(), 0);
                for (pos, mark, _) in &at {
                    texts.push(text[from..*pos].to_string());
                    from = pos + mark.len();
                }
                texts.push(text[from..].to_string());
                (texts, at.into_iter().map(|(_, _, slot)| slot).collect())
            })
            .collect();
        let templates = Self { events };
        for i in 0..4 {
            let mut body = Vec::new();
            templates.render(i, 123, &mut body);
            let event: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(event["uniqueId"], format!("e2e-{i}").as_str());
            assert_eq!(event["timestamp"], 1_764_330_000 + i as i64);
            assert_eq!(event["properties"]["sent_at_ms"], 123);
        }
        templates
    }

    /// Appends the body of request `i` to `out`: uniqueId `e2e-<i>`, timestamp
    /// `1764330000 + i` (seconds, as `synthetic_pendo`), sent at `sent_at_ms`.
    fn render(&self, i: usize, sent_at_ms: i64, out: &mut Vec<u8>) {
        use std::io::Write;
        let (texts, slots) = &self.events[i % self.events.len()];
        for (text, slot) in texts.iter().zip(slots) {
            out.extend_from_slice(text.as_bytes());
            match slot {
                Slot::UniqueId => write!(out, "\"e2e-{i}\""),
                Slot::Timestamp => write!(out, "{}", 1_764_330_000 + i as i64),
                Slot::SentAt => write!(out, "{sent_at_ms}"),
            }
            .expect("writing to a Vec");
        }
        out.extend_from_slice(texts.last().expect("one more text than slots").as_bytes());
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Role {
    name: &'static str,
    child: std::process::Child,
    ops: u16,
}

impl Role {
    fn start(name: &'static str, base: &str, dir: &std::path::Path) -> Role {
        let ops = free_port();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!("{base}[observability]\nlisten = \"127.0.0.1:{ops}\"\nlog_level = \"warn\"\n"),
        )
        .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pendo-segment"))
            .arg("--config")
            .arg(&path)
            .args(["run", "--role", name])
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("start the pendo-segment binary");
        Role { name, child, ops }
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        for _ in 0..600 {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{}/readyz", self.ops))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not become ready", self.name);
    }

    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// What one run measured.
struct RunReport {
    offered: u64,
    seconds: u64,
    connections: u64,
    accepted: usize,
    refused: u64,
    load_seconds: f64,
    distinct: usize,
    arrived: bool,
    /// p50, p99, max in ms.
    latency: (i64, i64, i64),
    drain: Duration,
    rss: Vec<(&'static str, f64)>,
}

impl RunReport {
    fn achieved(&self) -> f64 {
        self.accepted as f64 / self.load_seconds
    }

    fn delivered(&self) -> f64 {
        self.accepted as f64 / (self.load_seconds + self.drain.as_secs_f64())
    }

    /// The saturation mode's criterion: everything arrived, p99 under 1 s, and the offered rate
    /// was carried (at least 97% of it accepted; a fixed-rate run that falls behind is not
    /// "sustained").
    fn sustained(&self) -> bool {
        self.arrived && self.latency.1 < 1_000 && self.achieved() >= 0.97 * self.offered as f64
    }

    fn print(&self) {
        let (p50, p99, max) = self.latency;
        println!();
        let offered = if self.offered == 0 {
            "saturation (no pacing)".to_string()
        } else {
            format!("{} events/s", self.offered)
        };
        println!(
            "| end to end at {offered} for {} s (+{WARM_UP_SECONDS} s warm-up), {} connections | value |",
            self.seconds, self.connections
        );
        println!("| --- | ---: |");
        println!(
            "| events accepted by pendo-webhook (200) / refused | {} / {} |",
            self.accepted, self.refused
        );
        println!("| achieved rate | {:.0} events/s |", self.achieved());
        println!(
            "| distinct messageIds at the Segment server | {} (all arrived: {}) |",
            self.distinct, self.arrived
        );
        println!(
            "| latency webhook request -> Segment accepted, p50 / p99 / max | {p50} / {p99} / {max} ms |"
        );
        println!(
            "| drain after the load stopped | {:.1} s |",
            self.drain.as_secs_f64()
        );
        println!(
            "| delivered rate (accepted / (load + drain)) | {:.0} events/s |",
            self.delivered()
        );
        for (name, mib) in &self.rss {
            println!("| peak RSS {name} | {mib:.0} MiB |");
        }
    }
}

/// One run on fresh topics, roles and Segment server: `rate` events/s (0: saturation) for
/// `seconds` over `connections` keep-alive connections.
async fn run(servers: &str, run_id: usize, rate: u64, seconds: u64, connections: u64) -> RunReport {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let tag = format!("{}-{run_id}", std::process::id());
    let dir = std::env::temp_dir().join(format!("pendo-segment-e2e-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("e2e-{tag}");
    let webhook_port = free_port();
    let base = format!(
        "[kafka]\nbootstrap_servers = \"{servers}\"\ngroup_id_prefix = \"{prefix}\"\n\
         [topics]\nprefix = \"{prefix}.\"\npartitions = 6\nreplication_factor = 1\n\
         [pendo_webhook]\nlisten = \"127.0.0.1:{webhook_port}\"\nsecrets = [\"{SECRET}\"]\n\
         [segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n",
        server.url(),
        server.write_key()
    );
    let config: Config =
        toml::from_str(&format!("{base}[observability]\nlog_level = \"warn\"\n")).unwrap();
    config.validate().unwrap();
    let admin = TopicAdmin::new(&client_config::admin(&config), Duration::from_secs(30)).unwrap();
    let plan = admin
        .plan(&desired_topics(&config))
        .await
        .expect("is Kafka running? scripts/kafka-local start");
    admin.apply(&plan, false).await.unwrap();

    let roles = [
        Role::start("pendo-webhook", &base, &dir),
        Role::start("transform-pendo", &base, &dir),
        Role::start("segment-sink", &base, &dir),
    ];
    let http = reqwest::Client::new();
    for r in &roles {
        r.wait_ready(&http).await;
    }

    // Fixed-rate load: each connection sends its share of `rate` events per second, one
    // event per request, each carrying its send time. The load generator shares the 2 cores
    // with the pipeline, so it spends as little as it can: bodies are rendered from templates
    // made before the clock starts (no JSON work while it runs), and each connection is a
    // `MiniHttp` keep-alive client on its own task (reqwest's cost about half a core at
    // 12,000 requests/s).
    let templates = Arc::new(BodyTemplates::new(1024));
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tick_origin = tokio::time::Instant::now();
    let load_started_ms = epoch_ms();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (sent, refused, templates) = (sent.clone(), refused.clone(), templates.clone());
        tasks.push(tokio::spawn(async move {
            // Saturation (rate 0): no pacing, the next request as soon as one is answered.
            let mut tick = (rate > 0).then(|| {
                // Connection `c` starts `c / connections` of an interval late, so the offered
                // load is smooth: with every connection on the same phase, 1,000 events/s over
                // 512 connections arrived as bursts of 512 every 0.5 s.
                let period = Duration::from_secs_f64(connections as f64 / rate as f64);
                let phase = period.mul_f64(c as f64 / connections as f64);
                let mut t = tokio::time::interval_at(tick_origin + phase, period);
                // A request answered later than its connection's interval must not lower the
                // offered rate: missed ticks fire at once (`Burst`) until the connection caught up.
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut conn: Option<MiniHttp> = None;
            let (mut body, mut request) = (Vec::with_capacity(2048), Vec::with_capacity(2560));
            let mut i = c as usize;
            while started.elapsed() < Duration::from_secs(WARM_UP_SECONDS + seconds) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                body.clear();
                templates.render(i, epoch_ms(), &mut body);
                request.clear();
                render_post(&mut request, "/webhooks/pendo", &[AUTHORIZATION], &body);
                if conn.is_none() {
                    conn = MiniHttp::connect(webhook_port).await;
                    if conn.is_none() {
                        // The webhook refuses connections: count the event as refused, and do
                        // not spin on it (saturation mode has no pacing).
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let status = match conn.as_mut() {
                    Some(http) => http.request(&request).await,
                    None => None,
                };
                if status.is_none() || conn.as_ref().is_some_and(MiniHttp::is_closing) {
                    conn = None;
                }
                if status == Some(200) {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += connections as usize;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let accepted = sent.load(Ordering::Relaxed) as usize;
    let drain_start = Instant::now();
    let arrived = server
        .wait_for_distinct(accepted, Duration::from_secs(300))
        .await;
    let drain = drain_start.elapsed();
    let base_instant = Instant::now();
    let base_epoch = epoch_ms();
    let measured_from = load_started_ms + WARM_UP_SECONDS as i64 * 1000;
    let mut latencies: Vec<i64> = server
        .events()
        .iter()
        .filter_map(|e| {
            let sent = e.item["properties"]["sent_at_ms"].as_i64()?;
            if sent < measured_from {
                return None;
            }
            let at = base_epoch - base_instant.duration_since(e.received_at).as_millis() as i64;
            Some(at - sent)
        })
        .collect();
    latencies.sort_unstable();
    let report = RunReport {
        offered: rate,
        seconds,
        connections,
        accepted,
        refused: refused.load(Ordering::Relaxed),
        load_seconds,
        distinct: server.distinct_count(),
        arrived,
        latency: (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0),
        ),
        drain,
        rss: roles.iter().map(|r| (r.name, r.peak_rss_mib())).collect(),
    };
    drop(roles);
    // The next run gets fresh topics; these go, so runs do not pile partitions on the broker.
    let names: Vec<String> = desired_topics(&config)
        .into_iter()
        .map(|t| t.name)
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let deleter: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client_config::admin(&config).create().unwrap();
    let _ = deleter
        .delete_topics(&names, &rdkafka::admin::AdminOptions::new())
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// The saturation mode (`--find-max`): the capacity at `--rate 0`, then fixed offered rates
/// from that capacity down in 5% steps until one is sustained ([`RunReport::sustained`]), then
/// the latency table at 1,000, 5,000 and that rate.
async fn find_max(servers: &str, seconds: u64, connections: u64) {
    let saturation = run(servers, 0, 0, seconds, connections).await;
    saturation.print();
    let capacity = saturation.delivered();
    // Down from the capacity in 5% steps to the first sustained rate; if the capacity itself
    // is sustained, up in 5% steps (to 1.4x) while the next is sustained too: paced load can
    // carry more than unpaced load, whose bursts queue at the webhook.
    let offered_at = |factor: f64| (capacity * factor / 100.0).floor() as u64 * 100;
    let mut best: Option<RunReport> = None;
    let mut id = 0;
    for step in 0..8 {
        id += 1;
        let r = run(
            servers,
            id,
            offered_at(1.0 - 0.05 * step as f64),
            seconds,
            connections,
        )
        .await;
        r.print();
        if r.sustained() {
            best = Some(r);
            if step == 0 {
                for up in 1..=8 {
                    id += 1;
                    let r = run(
                        servers,
                        id,
                        offered_at(1.0 + 0.05 * up as f64),
                        seconds,
                        connections,
                    )
                    .await;
                    r.print();
                    if !r.sustained() {
                        break;
                    }
                    best = Some(r);
                }
            }
            break;
        }
    }
    let mut rows = Vec::new();
    for (i, offered) in [1_000u64, 5_000].into_iter().enumerate() {
        let r = run(servers, 100 + i, offered, seconds, connections).await;
        r.print();
        rows.push(r);
    }
    println!();
    println!("| saturation mode, {seconds} s per run, {connections} connections | value |");
    println!("| --- | ---: |");
    println!(
        "| capacity: delivered with no pacing | {capacity:.0} events/s (p99 {} ms) |",
        saturation.latency.1
    );
    match &best {
        Some(b) => println!(
            "| highest sustained offered rate (everything arrived, p99 < 1 s, >= 97% carried) | {} events/s ({:.0} carried) |",
            b.offered,
            b.achieved()
        ),
        None => println!(
            "| highest sustained offered rate (everything arrived, p99 < 1 s, >= 97% carried) | none down to 65% of the capacity |"
        ),
    }
    println!();
    println!(
        "| offered, {seconds} s, {connections} conn. | achieved | all arrived | p50 | p99 | max |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: |");
    for r in rows.iter().chain(best.as_ref()) {
        let (p50, p99, max) = r.latency;
        println!(
            "| {} events/s | {:.0}/s | {} | {p50} ms | {p99} ms | {max} ms |",
            r.offered,
            r.achieved(),
            if r.arrived { "yes" } else { "NO" },
        );
    }
}

/// Prints the broker's size before the runs: a broker holding thousands of partitions (test
/// topics left behind) spends CPU on them that the roles on the same cores then lack.
fn print_broker(servers: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("is Kafka running? scripts/kafka-local start");
    let partitions: usize = metadata.topics().iter().map(|t| t.partitions().len()).sum();
    println!();
    println!("| broker before the runs | value |");
    println!("| --- | ---: |");
    println!("| brokers | {} |", metadata.brokers().len());
    println!(
        "| topics / partitions | {} / {partitions} |",
        metadata.topics().len()
    );
    if partitions > 2_000 {
        eprintln!(
            "pipeline_e2e: the broker holds {partitions} partitions; its work on them takes CPU \
             from the roles (a local dev broker: `scripts/kafka-local reset`)"
        );
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs this binary without `--bench`: do nothing then.
    if !argv.iter().any(|a| a == "--bench") {
        println!("pipeline_e2e: run with `cargo bench --bench pipeline_e2e`");
        return;
    }
    let rate = arg("--rate", 2_000);
    let seconds = arg("--seconds", 30);
    let connections = arg("--connections", 64);
    let servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    print_broker(&servers);
    let rt = tokio::runtime::Runtime::new().unwrap();
    if argv.iter().any(|a| a == "--find-max") {
        rt.block_on(find_max(&servers, seconds, connections));
    } else {
        rt.block_on(run(&servers, 0, rate, seconds, connections))
            .print();
    }
}
