//! Benchmark: the whole forward path at a fixed rate — `pendo-webhook`, `transform-pendo` and
//! `segment-sink`, each its own process (the release binary), on one broker, delivering into the
//! Segment-compatible test server. Reports end-to-end latency from the moment an event is sent
//! to the webhook to the moment the Segment server accepted its call (p50/p99/max), what
//! arrived, and each role's peak RSS. `--rate 0` is saturation: every connection sends its next
//! event as soon as the previous one is answered, and the delivered rate (accepted events over
//! load plus drain time) is the forward path's capacity on this machine.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo bench --bench pipeline_e2e -- [--rate 2000 | --rate 0] [--seconds 30] [--connections 64]
//! ```

#[path = "../tests/support/segment_server.rs"]
mod segment_server;
#[path = "../tests/support/synthetic_pendo.rs"]
mod synthetic_pendo;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pendo_segment::config::Config;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::topics::{TopicAdmin, desired_topics};
use segment_server::{SegmentServerConfig, SegmentTestServer};
use serde_json::Value;

const SECRET: &str = "bench-webhook-secret";
const AUTHORIZATION: &str = "Bearer bench-webhook-secret";

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
            let event: Value = serde_json::from_str(&templates.render(i, 123)).unwrap();
            assert_eq!(event["uniqueId"], format!("e2e-{i}").as_str());
            assert_eq!(event["timestamp"], 1_764_330_000 + i as i64);
            assert_eq!(event["properties"]["sent_at_ms"], 123);
        }
        templates
    }

    /// The body of request `i`: uniqueId `e2e-<i>`, timestamp `1764330000 + i` (seconds, as
    /// `synthetic_pendo`), sent at `sent_at_ms`.
    fn render(&self, i: usize, sent_at_ms: i64) -> String {
        let (texts, slots) = &self.events[i % self.events.len()];
        let mut body = String::with_capacity(texts.iter().map(String::len).sum::<usize>() + 64);
        for (text, slot) in texts.iter().zip(slots) {
            body.push_str(text);
            match slot {
                Slot::UniqueId => body.push_str(&format!("\"e2e-{i}\"")),
                Slot::Timestamp => body.push_str(&(1_764_330_000 + i as i64).to_string()),
                Slot::SentAt => body.push_str(&sent_at_ms.to_string()),
            }
        }
        body.push_str(texts.last().expect("one more text than slots"));
        body
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
        let dir = std::env::temp_dir().join(format!("pendo-segment-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = format!("e2e-{}", std::process::id());
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
        let admin =
            TopicAdmin::new(&client_config::admin(&config), Duration::from_secs(30)).unwrap();
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
        // event per request, each carrying its send time. The bodies are rendered from
        // templates made before the clock starts, so the load generator (which shares the 2
        // cores with the pipeline) spends its time on HTTP, not on building JSON.
        let url = format!("http://127.0.0.1:{webhook_port}/webhooks/pendo");
        let templates = Arc::new(BodyTemplates::new(1024));
        let sent = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..connections {
            let (http, url, sent, refused, templates) = (
                http.clone(),
                url.clone(),
                sent.clone(),
                refused.clone(),
                templates.clone(),
            );
            tasks.push(tokio::spawn(async move {
                // Saturation (rate 0): no pacing, the next request as soon as one is answered.
                let mut tick = (rate > 0).then(|| {
                    let per_conn = rate as f64 / connections as f64;
                    let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                let mut i = c as usize;
                while started.elapsed() < Duration::from_secs(seconds) {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    let body = templates.render(i, epoch_ms());
                    let ok = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", AUTHORIZATION)
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if ok {
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
        let mut latencies: Vec<i64> = server
            .events()
            .iter()
            .filter_map(|e| {
                let sent = e.item["properties"]["sent_at_ms"].as_i64()?;
                let at = base_epoch - base_instant.duration_since(e.received_at).as_millis() as i64;
                Some(at - sent)
            })
            .collect();
        latencies.sort_unstable();
        println!();
        let offered = if rate == 0 {
            "saturation (no pacing)".to_string()
        } else {
            format!("{rate} events/s")
        };
        println!("| end to end at {offered} for {seconds} s, {connections} connections | value |");
        println!("| --- | ---: |");
        println!(
            "| events accepted by pendo-webhook (200) / refused | {accepted} / {} |",
            refused.load(Ordering::Relaxed)
        );
        println!(
            "| achieved rate | {:.0} events/s |",
            accepted as f64 / load_seconds
        );
        println!(
            "| distinct messageIds at the Segment server | {} (all arrived: {arrived}) |",
            server.distinct_count()
        );
        println!(
            "| latency webhook request -> Segment accepted, p50 / p99 / max | {} / {} / {} ms |",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0)
        );
        println!(
            "| drain after the load stopped | {:.1} s |",
            drain.as_secs_f64()
        );
        println!(
            "| delivered rate (accepted / (load + drain)) | {:.0} events/s |",
            accepted as f64 / (load_seconds + drain.as_secs_f64())
        );
        for r in &roles {
            println!("| peak RSS {} | {:.0} MiB |", r.name, r.peak_rss_mib());
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
