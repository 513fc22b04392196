//! Role `pendo-webhook` end to end: a real `pendo-segment` process, real HTTP, a real broker.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use serde_json::value::RawValue;
use support::*;

const SECRET: &str = "pendo-hook-secret-A";
const ROTATED: &str = "pendo-hook-secret-B";

struct Hook {
    _dir: tempfile::TempDir,
    process: RoleProcess,
    url: String,
    prefix: String,
    http: reqwest::Client,
}

impl Hook {
    async fn start(extra: &str) -> Hook {
        require_kafka();
        let dir = tempfile::tempdir().unwrap();
        let prefix = unique("wh");
        let port = free_port();
        let (config, ops) = role_config(
            dir.path(),
            &prefix,
            &format!(
                "[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\", {{ env = \"PS_TEST_ROTATED_SECRET\" }}]\n{extra}"
            ),
        );
        // SAFETY: every test of this binary sets the same value; children inherit it.
        unsafe { std::env::set_var("PS_TEST_ROTATED_SECRET", ROTATED) };
        apply_topics(&config);
        let mut process = RoleProcess::start(
            &config,
            &["run", "--role", "pendo-webhook"],
            ops,
            dir.path().join("role.log"),
        );
        process.wait_ready(Duration::from_secs(60)).await;
        Hook {
            url: format!("http://127.0.0.1:{port}/webhooks/pendo"),
            process,
            prefix,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    fn topic(&self) -> String {
        format!("{}.pendo.raw.webhook", self.prefix)
    }

    fn dlq(&self) -> String {
        format!("{}.dlq.pendo-webhook", self.prefix)
    }

    async fn post(&self, body: Vec<u8>, auth: Option<&str>) -> reqwest::Response {
        let mut r = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = auth {
            r = r.header("authorization", format!("Bearer {s}"));
        }
        r.send().await.expect("post")
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join("pendo").join(name)).unwrap()
}

/// The events a fixture holds, as exact byte slices (an array yields its elements).
fn expected_events(bytes: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(bytes).unwrap();
    if text.trim_start().starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text).unwrap();
        elements
            .iter()
            .map(|r| r.get().as_bytes().to_vec())
            .collect()
    } else {
        vec![bytes.to_vec()]
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_lands_byte_identical_with_key_and_headers() {
    let hook = Hook::start("").await;
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir().join("pendo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && n != "index.json")
        .collect();
    names.sort();
    assert!(names.len() >= 12, "fixtures missing: {names:?}");
    for name in &names {
        let body = fixture(name);
        let r = hook.post(body.clone(), Some(SECRET)).await;
        assert_eq!(r.status(), 200, "{name}");
        let accepted: serde_json::Value = r.json().await.unwrap();
        let events = expected_events(&body);
        assert_eq!(accepted["accepted"], events.len(), "{name}");
        expected.extend(events);
    }
    let records = read_committed(&hook.topic(), expected.len(), Duration::from_secs(20));
    assert_eq!(
        records.len(),
        expected.len(),
        "one record per event, no more"
    );
    let by_payload: HashMap<&[u8], &rdkafka::message::OwnedMessage> =
        records.iter().map(|m| (m.payload().unwrap(), m)).collect();
    for event in &expected {
        let record = by_payload.get(event.as_slice()).unwrap_or_else(|| {
            panic!(
                "event not stored byte-identical: {}",
                String::from_utf8_lossy(event)
            )
        });
        let json: serde_json::Value = serde_json::from_slice(event).unwrap();
        let want_key = json["visitorId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| json["accountId"].as_str())
            .unwrap();
        assert_eq!(record.key(), Some(want_key.as_bytes()));
        assert_eq!(
            header(record, "event-kind").as_deref(),
            json["event"].as_str()
        );
        assert_eq!(header(record, "source").as_deref(), Some("pendo-webhook"));
        assert_eq!(
            header(record, "content-type").as_deref(),
            Some("application/json")
        );
        let received: i64 = header(record, "received-at").unwrap().parse().unwrap();
        assert!(received > 1_700_000_000_000, "received-at is epoch ms");
        assert!(header(record, "request-id").is_some_and(|r| !r.is_empty()));
    }
    // The two events of the array share one request id; different requests differ.
    let ids: std::collections::HashSet<String> = records
        .iter()
        .map(|m| header(m, "request-id").unwrap())
        .collect();
    assert_eq!(ids.len(), names.len());

    let metrics = hook.process.metrics().await;
    assert!(
        metrics.contains(&format!(
            "pendo_segment_webhook_events_accepted_total{{role=\"pendo-webhook\"}} {}",
            expected.len()
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_size_shape_and_content_type_are_enforced() {
    let hook = Hook::start("max_body_bytes = 4096\nmax_events_per_request = 3\n").await;
    let event = fixture("feature-clicked.json");

    // Wrong or missing secret: 401, nothing stored.
    assert_eq!(hook.post(event.clone(), Some("wrong")).await.status(), 401);
    assert_eq!(hook.post(event.clone(), None).await.status(), 401);
    let basic = hook
        .http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("authorization", format!("Basic {SECRET}"))
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let bad_path = hook
        .http
        .post(format!("{}/not-the-secret", hook.url))
        .header("content-type", "application/json")
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_path.status(), 401);

    // Both rotated secrets work, in the header and as a path token.
    assert_eq!(hook.post(event.clone(), Some(ROTATED)).await.status(), 200);
    let by_path = hook
        .http
        .post(format!("{}/{SECRET}", hook.url))
        .header("content-type", "application/json")
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(by_path.status(), 200);

    // Oversize: 413 (declared or streamed), nothing stored.
    let big = format!("{{\"visitorId\":\"v\",\"pad\":\"{}\"}}", "x".repeat(5000));
    assert_eq!(
        hook.post(big.into_bytes(), Some(SECRET)).await.status(),
        413
    );
    // Too many events in one request: 413.
    let four = format!("[{e},{e},{e},{e}]", e = String::from_utf8_lossy(&event));
    assert_eq!(
        hook.post(four.into_bytes(), Some(SECRET)).await.status(),
        413
    );

    // Wrong content type: 415.
    let form = hook
        .http
        .post(&hook.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);

    // Malformed: 400 with a reason, and the raw body kept in the DLQ with the reason.
    let malformed = fixture("malformed.txt");
    let r = hook.post(malformed.clone(), Some(SECRET)).await;
    assert_eq!(r.status(), 400);
    let reason = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("not valid JSON"), "{reason}");
    let not_events = hook.post(b"[1,2]".to_vec(), Some(SECRET)).await;
    assert_eq!(not_events.status(), 400);

    let dlq = read_committed(&hook.dlq(), 2, Duration::from_secs(15));
    assert_eq!(dlq.len(), 2, "one DLQ record per rejected body");
    let m = dlq
        .iter()
        .find(|m| m.payload() == Some(malformed.as_slice()))
        .expect("malformed body kept byte-identical");
    assert!(header(m, "dlq-reason").unwrap().contains("not valid JSON"));
    assert_eq!(header(m, "dlq-stage").as_deref(), Some("pendo-webhook"));

    // Only the two authorised, valid posts were stored.
    let stored = read_committed(&hook.topic(), 2, Duration::from_secs(10));
    assert_eq!(stored.len(), 2);

    let metrics = hook.process.metrics().await;
    for needle in [
        "pendo_segment_webhook_rejects_total{reason=\"auth\",role=\"pendo-webhook\"} 4",
        "pendo_segment_webhook_requests_total{role=\"pendo-webhook\",status=\"413\"} 2",
        "pendo_segment_webhook_requests_total{role=\"pendo-webhook\",status=\"415\"} 1",
        "pendo_segment_webhook_rejects_total{reason=\"malformed\",role=\"pendo-webhook\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_without_a_secret_unless_insecure() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, ops) = role_config(
        dir.path(),
        &unique("nosecret"),
        &format!("[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["run", "--role", "pendo-webhook"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-no-auth"), "{err}");

    apply_topics(&config);
    let mut p = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-webhook", "--insecure-no-auth"],
        ops,
        dir.path().join("role.log"),
    );
    p.wait_ready(Duration::from_secs(60)).await;
    assert!(p.logs().contains("UNAUTHENTICATED"), "{}", p.logs());
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/pendo"))
        .header("content-type", "application/json")
        .body(fixture("visitor-created.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_in_flight_requests_and_exits_zero() {
    let mut hook = Hook::start("").await;
    let event = fixture("page-loaded.json");
    // Every await below has a deadline, so a stuck step fails with its name instead of hanging.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // A stream of concurrent requests; SIGTERM in the middle of it.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = http.clone();
        let url = hook.url.clone();
        let body = event.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut timed_out) = (0u32, 0u32, 0u32);
            for _ in 0..200 {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {SECRET}"))
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => {
                        assert_eq!(r.status(), 503, "only 200 or 503 while stopping");
                        refused += 1
                    }
                    Err(e) if e.is_timeout() => timed_out += 1,
                    // Listener closed: the request was never accepted.
                    Err(_) => refused += 1,
                }
            }
            (ok, refused, timed_out)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    hook.process.sigterm();
    let status = hook.process.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}\n{}", hook.process.logs());
    let mut accepted = 0u32;
    for t in tasks {
        let (ok, _refused, timed_out) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a client task did not finish within 120 s after the role exited")
            .unwrap();
        // A request without an answer is neither acknowledged nor refused: the role must answer
        // every request it accepted before it exits.
        assert_eq!(timed_out, 0, "requests left unanswered by a stopping role");
        accepted += ok;
    }
    assert!(accepted > 0);
    // Every 200 is on the topic, exactly once: nothing acknowledged was lost at shutdown.
    let topic = hook.topic();
    let stored = tokio::task::spawn_blocking(move || {
        read_committed(&topic, accepted as usize, Duration::from_secs(15))
    });
    let stored = tokio::time::timeout(Duration::from_secs(60), stored)
        .await
        .expect("reading the topic back did not finish within 60 s")
        .unwrap();
    assert_eq!(stored.len(), accepted as usize);
}

/// Random JSON text: objects, arrays, strings with escapes and unicode, numbers, deep nesting.
fn random_json(rng: &mut Rng, depth: u32) -> String {
    let pick = if depth > 80 {
        rng.below(4)
    } else {
        rng.below(7)
    };
    match pick {
        0 => [
            "null",
            "true",
            "false",
            "0",
            "-1.5e300",
            "18446744073709551616",
        ][rng.below(6) as usize]
            .to_string(),
        1 => {
            let s: String = (0..rng.below(20))
                .map(|_| {
                    ['a', 'é', '"', '\\', '\n', '😀', '\u{0}', ' ', 'z'][rng.below(9) as usize]
                })
                .collect();
            serde_json::to_string(&s).unwrap()
        }
        2 => format!("\"v-{}\"", rng.below(1000)),
        3 => rng.below(1_000_000).to_string(),
        4 | 5 => {
            let n = rng.below(5);
            let fields: Vec<String> = (0..n)
                .map(|i| {
                    let key = ["visitorId", "accountId", "event", "properties", "x"]
                        [((i + rng.below(5)) % 5) as usize];
                    format!("\"{key}\":{}", random_json(rng, depth + 1))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        _ => {
            let n = rng.below(4);
            let items: Vec<String> = (0..n).map(|_| random_json(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_bytes_and_json_shapes_never_crash_the_endpoint() {
    let hook = Hook::start("max_body_bytes = 65536\nmax_events_per_request = 50\n").await;
    let mut rng = Rng::new(0x5eed_1234);
    let mut statuses: HashMap<u16, u32> = HashMap::new();
    for case in 0..600 {
        let body: Vec<u8> = match case % 6 {
            0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            1 => random_json(&mut rng, 0).into_bytes(),
            2 => format!(
                "[{}]",
                (0..rng.below(60))
                    .map(|_| random_json(&mut rng, 1))
                    .collect::<Vec<_>>()
                    .join(",")
            )
            .into_bytes(),
            3 => {
                let d = 1 + rng.below(200) as usize;
                format!(
                    "{{\"visitorId\":\"v\",\"p\":{}1{}}}",
                    "[".repeat(d),
                    "]".repeat(d)
                )
                .into_bytes()
            }
            4 => {
                let mut e = fixture("nps-submitted.json");
                let cut = rng.below(e.len() as u64) as usize;
                e.truncate(cut);
                e
            }
            _ => format!("[{}]", vec!["{}"; rng.below(120) as usize].join(",")).into_bytes(),
        };
        let r = hook.post(body, Some(SECRET)).await;
        let s = r.status().as_u16();
        assert!(
            matches!(s, 200 | 400 | 413 | 503),
            "case {case}: status {s}"
        );
        *statuses.entry(s).or_default() += 1;
    }
    println!("status counts over 600 random bodies: {statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0);
    assert!(statuses.get(&400).copied().unwrap_or(0) > 0);
    assert!(statuses.get(&413).copied().unwrap_or(0) > 0);
    // Still healthy, and nothing panicked.
    let health = reqwest::get(format!("{}/healthz", hook.process.ops))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        !hook.process.logs().contains("panicked"),
        "{}",
        hook.process.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_do_not_fit_a_full_transaction_go_into_the_next_one() {
    // Tiny transactions (4 events) and requests of 3 events: the second request of a
    // transaction never fits and must open the next one.
    let hook = Hook::start("max_transaction_records = 4\nlinger_ms = 20\n").await;
    let one = String::from_utf8(fixture("track-event.json")).unwrap();
    let event = format!("[{one},{one},{one}]").into_bytes();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (http, url, body) = (hook.http.clone(), hook.url.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            http.post(&url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {SECRET}"))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        read_committed(&hook.topic(), 120, Duration::from_secs(15)).len(),
        120
    );
}
