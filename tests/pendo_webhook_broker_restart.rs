//! The broker goes away while Pendo deliveries arrive. First it hangs (SIGSTOP, with connections
//! open; the ack deadline is 0.8 s): for 1.2 s, so commits in flight time out in the role and
//! are decided by the broker within the role's decision wait (as long again); then for 2 s, so
//! they stay undecided, are answered 503, and the role learns their outcome once the broker is
//! back (once each in CI, `WEBHOOK_BROKER_FREEZES=N` for N of each). Then it stops gracefully
//! (SIGTERM, the broker shuts down cleanly under a running commit), then it crashes (SIGKILL).
//! Requests are answered 503 (never 200) while it is stopped or dead, the sender's retries are
//! accepted once it is back, and every accepted event is on `pendo.raw.webhook` exactly once,
//! including events whose first delivery's commit went undecided. This binary restarts the
//! shared broker, so it holds this one test only (cargo runs test binaries one after another).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use support::*;
use tokio::sync::Mutex;

const SENDERS: usize = 6;
const SECRET: &str = "restart-webhook-secret";

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_gives_503_then_every_accepted_event_exactly_once() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("whr");
    let port = free_port();
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &format!(
            "[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\nack_timeout_ms = 800\nretry_after_seconds = 1\n"
        ),
    );
    apply_topics(&config);
    let mut process = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-webhook"],
        ops,
        dir.path().join("role.log"),
    );
    process.wait_ready(Duration::from_secs(60)).await;

    let url = format!("http://127.0.0.1:{port}/webhooks/pendo");
    // Senders post new events until told to stop; each event is retried until accepted, as
    // Pendo retries a failed delivery.
    let next_id = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let finish = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (sent at, status) of every attempt; status 0 = connection error.
    let attempts: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (url, next_id, accepted, finish, attempts) = (
            url.clone(),
            next_id.clone(),
            accepted.clone(),
            finish.clone(),
            attempts.clone(),
        );
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap();
            let mut mine = Vec::new();
            while !finish.load(Ordering::Relaxed) {
                let i = next_id.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    "{{\"event\":\"featureClicked\",\"visitorId\":\"v-{}\",\"accountId\":\"a-1\",\"uniqueId\":\"u-{i}\",\"timestamp\":1764330099,\"properties\":{{\"featureId\":\"ft_{}\"}}}}",
                    i % 50,
                    i % 7
                );
                loop {
                    assert!(
                        started.elapsed() < Duration::from_secs(240),
                        "event u-{i} never accepted"
                    );
                    let sent = Instant::now();
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {SECRET}"))
                        .body(body.clone())
                        .send()
                        .await;
                    let status = r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                    attempts.lock().await.push((sent, status));
                    match status {
                        200 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            mine.push(format!("u-{i}"));
                            break;
                        }
                        503 | 0 => tokio::time::sleep(Duration::from_millis(200)).await,
                        other => panic!("unexpected status {other}"),
                    }
                }
            }
            mine
        }));
    }

    // Once deliveries are flowing: stop the broker, keep it down, bring it back, let 300 more
    // events through; then the same with a crash.
    let mut outages = Vec::new();
    // Hangs first (CI: one; `WEBHOOK_BROKER_FREEZES=5` for a longer run), then a stop and a kill.
    let freezes: usize = std::env::var("WEBHOOK_BROKER_FREEZES")
        .ok()
        .map(|v| v.parse().expect("WEBHOOK_BROKER_FREEZES is a number"))
        .unwrap_or(1);
    let phases: Vec<&str> = std::iter::repeat_n(["freeze", "long freeze"], freezes)
        .flatten()
        .chain(["stop", "kill"])
        .collect();
    for how in phases {
        let flowing = accepted.load(Ordering::Relaxed) + 300;
        while accepted.load(Ordering::Relaxed) < flowing {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "no progress before the broker {how}:\n{}",
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outage = tokio::task::spawn_blocking(move || {
            let stop_began = Instant::now();
            let frozen = how.ends_with("freeze");
            local_broker(if frozen { "freeze" } else { how });
            let down = Instant::now();
            // Hangs longer than the ack deadline (0.8 s), so commits sent before them time out in
            // the role while the broker has them queued: 1.2 s ends within the decision wait
            // (another 0.8 s), 2 s after it. Both stay shorter than the broker's session timeout
            // (4 s in scripts/kafka-local, heartbeats every second): a longer hang has the
            // controller fence its own broker, and single-node Kafka 4 then leaves some
            // partitions without a leader until the next restart.
            std::thread::sleep(match how {
                "freeze" => Duration::from_millis(1200),
                "long freeze" => Duration::from_millis(2000),
                _ => Duration::from_secs(8),
            });
            let up = Instant::now();
            local_broker(if frozen { "thaw" } else { "start" });
            (how, stop_began, down, up)
        })
        .await
        .unwrap();
        outages.push(outage);
    }
    let accepted_at_restart = accepted.load(Ordering::Relaxed);
    while accepted.load(Ordering::Relaxed) < accepted_at_restart + 300 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no progress after the restart:\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    finish.store(true, Ordering::Relaxed);
    let mut accepted_ids = std::collections::HashSet::new();
    for s in senders {
        accepted_ids.extend(s.await.unwrap());
    }
    let drained = started.elapsed();

    let attempts = attempts.lock().await;
    for (how, _, down, up) in outages.iter().filter(|o| !o.0.ends_with("freeze")) {
        let while_down: Vec<u16> = attempts
            .iter()
            .filter(|(t, _)| t >= down && t < up)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            !while_down.is_empty(),
            "no request arrived while the broker was down ({how})"
        );
        assert!(
            while_down.iter().all(|s| *s == 503),
            "while the broker was down ({how}) every answer must be 503: {:?}",
            while_down.iter().fold(HashMap::new(), |mut m, s| {
                *m.entry(*s).or_insert(0) += 1;
                m
            })
        );
    }
    let refused = attempts.iter().filter(|(_, s)| *s == 503).count();

    // Every accepted event exactly once in committed data.
    let topic = format!("{prefix}.pendo.raw.webhook");
    let records = read_committed(&topic, accepted_ids.len(), Duration::from_secs(30));
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r.payload().unwrap()).unwrap();
        *per_event
            .entry(v["uniqueId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    let stops: Vec<String> = outages
        .iter()
        .map(|(how, began, down, _)| format!("{how} took {:?}", *down - *began))
        .collect();
    println!(
        "accepted {} events ({accepted_at_restart} when the broker came back the last time), \
         {refused} answers were 503, broker {}, run took {drained:?}; {duplicates} duplicates",
        accepted_ids.len(),
        stops.join(", ")
    );
    let stored: std::collections::HashSet<String> = per_event.keys().cloned().collect();
    let never_accepted: Vec<&String> = stored.difference(&accepted_ids).collect();
    let lost: Vec<&String> = accepted_ids.difference(&stored).collect();
    if !lost.is_empty() {
        // Where the lost events are: in the log (uncommitted or aborted) or not at all.
        for (p, o, id) in uncommitted_positions(&topic, &lost) {
            println!("lost {id} is in the log at partition {p} offset {o}");
        }
    }
    assert!(
        never_accepted.is_empty() && lost.is_empty(),
        "exactly the accepted events are stored: stored but never accepted {never_accepted:?}, \
         accepted but not stored {lost:?}; outages (s from the start) {:?}; the role's warnings:\n{}",
        outages
            .iter()
            .map(|(how, _, down, up)| format!(
                "{how} {:.1}-{:.1}",
                (*down - started).as_secs_f64(),
                (*up - started).as_secs_f64()
            ))
            .collect::<Vec<_>>(),
        role_warnings(&process)
    );
    if duplicates > 0 {
        let twice: Vec<&String> = per_event
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k)
            .collect();
        panic!(
            "{duplicates} events stored twice ({twice:?}); the role's warnings:\n{}",
            role_warnings(&process)
        );
    }
    assert_eq!(records.len(), accepted_ids.len());
    let metrics = process.metrics().await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("pendo_segment_transactions_total")
            || l.starts_with("pendo_segment_appender_jobs_total")
            || l.starts_with("pendo_segment_undecided_transactions_total")
    }) {
        println!("{line}");
    }
    assert!(metrics.contains("pendo_segment_transactions_total{result=\"aborted\""));
    // Every transaction answered with its outcome unknown had that outcome learnt afterwards.
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let unknown = sum("pendo_segment_transactions_total{result=\"unknown\"");
    let learnt = sum("pendo_segment_undecided_transactions_total{outcome=\"committed\"")
        + sum("pendo_segment_undecided_transactions_total{outcome=\"aborted\"");
    assert_eq!(
        unknown,
        learnt,
        "undecided transactions whose outcome was never learnt; the role's warnings:\n{}",
        role_warnings(&process)
    );
}

/// The role's WARN and ERROR lines, for a failure message.
fn role_warnings(process: &RoleProcess) -> String {
    process
        .logs()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// (partition, offset, id) of every record of `topic`, read uncommitted, whose `uniqueId` is one
/// of `ids`.
fn uncommitted_positions(topic: &str, ids: &[&String]) -> Vec<(i32, i64, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("uncommitted"))
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            last = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let id = v["uniqueId"].as_str().unwrap().to_string();
            if ids.iter().any(|i| **i == id) {
                out.push((m.partition(), m.offset(), id));
            }
        }
    }
    out
}
