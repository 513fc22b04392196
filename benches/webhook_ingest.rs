//! Benchmark: the `pendo-webhook` role under sustained load, next to a raw rdkafka producer
//! baseline measured in the same run on the same broker.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo bench --bench webhook_ingest -- [--seconds 15] [--connections 64]
//! ```
//!
//! Load: `connections` keep-alive HTTP clients on loopback, each posting one Pendo event per
//! request (the fixtures, round robin, ~0.3-1 KB) as fast as answers come back. The role runs as
//! its own process (the release binary: auth, body split, group-commit transactions, `acks=all`);
//! its peak RSS is reported. Baseline: an idempotent `acks=all` FutureProducer with the same number of
//! concurrent senders and the same payloads. Output: a markdown table.

#[path = "support/mini_http.rs"]
mod mini_http;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mini_http::{MiniHttp, render_post};
use pendo_segment::config::Config;
use pendo_segment::kafka::client_config;
use pendo_segment::kafka::topics::{TopicAdmin, desired_topics};
use rdkafka::producer::{FutureProducer, FutureRecord};

const SECRET: &str = "bench-webhook-secret-1";

struct Args {
    seconds: u64,
    connections: usize,
}

fn args() -> Option<Args> {
    let argv: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs this binary without `--bench`: do nothing then.
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let get = |name: &str, default: u64| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Some(Args {
        seconds: get("--seconds", 15),
        connections: get("--connections", 64) as usize,
    })
}

fn payloads() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pendo");
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.ends_with("index.json")
                && !p.ends_with("batch-array.json")
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    v.sort();
    v
}

struct Outcome {
    events: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

/// Runs `connections` loops of `op` for `seconds` (after a 2 s warm-up) and collects latencies.
async fn drive<F, Fut>(connections: usize, seconds: u64, op: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (stop, measuring, op) = (stop.clone(), measuring.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            let mut i = c as u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = op(c, i).await;
                i += connections as u64;
                if ok && measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed());
                    n += 1;
                }
            }
            (n, lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome {
        events: 0,
        elapsed,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (n, lat) = t.await.unwrap();
        out.events += n;
        out.latencies.extend(lat);
    }
    out
}

fn main() {
    let Some(args) = args() else {
        println!("webhook_ingest: run with `cargo bench --bench webhook_ingest`");
        return;
    };
    let servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ops = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let prefix = format!("bench-{}", std::process::id());
        let extra = std::env::var("PS_BENCH_PRODUCER_PROPS").unwrap_or_default();
        let webhook_extra = std::env::var("PS_BENCH_WEBHOOK").unwrap_or_default();
        let config_text = format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\n[topics]\nprefix = \"{prefix}.\"\npartitions = 6\nreplication_factor = 1\n\
             [observability]\nlisten = \"127.0.0.1:{ops}\"\nlog_level = \"warn\"\n\
             [kafka.producer_properties]\n{extra}\n[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\n{webhook_extra}\n"
        );
        let config: Config = toml::from_str(&config_text).unwrap();
        config.validate().unwrap();
        pendo_segment::logging::init(config.observability.log_format, "warn");
        let admin = TopicAdmin::new(&client_config::admin(&config), Duration::from_secs(30)).unwrap();
        let plan = admin.plan(&desired_topics(&config)).await.expect("is Kafka running? scripts/kafka-local start");
        admin.apply(&plan, false).await.unwrap();

        let payloads = Arc::new(payloads());
        let bytes: usize = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();

        // 1. Baseline: raw idempotent acks=all producer, same concurrency and payloads.
        let producer: FutureProducer = client_config::producer(&config, "bench-baseline").create().unwrap();
        let topic = Arc::new(format!("{prefix}.bench-baseline"));
        admin_create(&servers, &topic).await;
        let mut baseline = {
            let (producer, topic, payloads) = (producer.clone(), topic.clone(), payloads.clone());
            drive(args.connections, args.seconds, move |_, i| {
                let (producer, topic, payloads) = (producer.clone(), topic.clone(), payloads.clone());
                async move {
                    let p = &payloads[(i as usize) % payloads.len()];
                    let key = format!("v-{}", i % 1000);
                    producer
                        .send(FutureRecord::to(&topic).key(&key).payload(p), Duration::from_secs(5))
                        .await
                        .is_ok()
                }
            })
            .await
        };

        // 2. The role, over HTTP.
        // The role runs as its own process (the release binary), so its peak memory is its own.
        let config_path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&config_path, &config_text).unwrap();
        let mut role = std::process::Command::new(env!("CARGO_BIN_EXE_pendo-segment"))
            .arg("--config")
            .arg(&config_path)
            .args(["run", "--role", "pendo-webhook"])
            .spawn()
            .expect("start the pendo-segment binary");
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("http://127.0.0.1:{ops}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Requests are pre-rendered; each connection is a minimal keep-alive HTTP/1.1 client,
        // so the load generator spends little of the 2 cores the role needs.
        let requests: Arc<Vec<Vec<u8>>> = Arc::new(
            payloads
                .iter()
                .map(|p| {
                    let mut r = Vec::new();
                    render_post(&mut r, "/webhooks/pendo", &[&format!("authorization: Bearer {SECRET}")], p);
                    r
                })
                .collect(),
        );
        let conns: Arc<Vec<tokio::sync::Mutex<Option<MiniHttp>>>> =
            Arc::new((0..args.connections).map(|_| tokio::sync::Mutex::new(None)).collect());
        let mut role_run = {
            let (requests, conns) = (requests.clone(), conns.clone());
            drive(args.connections, args.seconds, move |c, i| {
                let (requests, conns) = (requests.clone(), conns.clone());
                async move {
                    let mut slot = conns[c].lock().await;
                    if slot.is_none() {
                        *slot = MiniHttp::connect(port).await;
                    }
                    let Some(conn) = slot.as_mut() else { return false };
                    match conn.request(&requests[(i as usize) % requests.len()]).await {
                        Some(status) => {
                            if conn.is_closing() {
                                *slot = None;
                            }
                            status == 200
                        }
                        None => {
                            *slot = None;
                            false
                        }
                    }
                }
            })
            .await
        };
        let peak_rss_kib = std::fs::read_to_string(format!("/proc/{}/status", role.id()))
            .ok()
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            })
            .unwrap_or(0);
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { kill(role.id() as i32, 15) };
        let status = role.wait().unwrap();
        assert!(status.success(), "role exited with {status}");
        let _ = std::fs::remove_file(&config_path);

        println!();
        println!("pendo-webhook ingest, {} connections, {} s, ~{bytes} B/event, 1 event/request", args.connections, args.seconds);
        println!();
        println!("pendo-webhook process peak RSS: {} MiB", peak_rss_kib / 1024);
        println!();
        println!("| path | events/s | p50 | p99 | ratio to baseline |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        let base_rate = baseline.rate();
        for (name, o) in [
            ("raw rdkafka producer (idempotent, acks=all) — baseline", &mut baseline),
            ("pendo-webhook: HTTP -> auth -> group-commit transaction (acks=all) -> 200", &mut role_run),
        ] {
            let rate = o.rate();
            let (p50, p99) = (o.percentile(0.50), o.percentile(0.99));
            println!(
                "| {name} | {rate:.0} | {:.1} ms | {:.1} ms | {:.2} |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                rate / base_rate
            );
        }
    });
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

async fn admin_create(servers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, 6, TopicReplication::Fixed(1));
    let _ = admin.create_topics([&t], &AdminOptions::new()).await;
}
