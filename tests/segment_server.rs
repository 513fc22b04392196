//! The contract of the Segment test server (`tests/support/segment_server.rs`): it must refuse
//! what Segment refuses, drop what Segment drops, record what Segment keeps, and inject faults
//! exactly where the schedule says — otherwise the sender's tests against it prove nothing.
//! No Kafka needed.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::segment_server::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SENT_AT: &str = "2026-01-02T03:04:05.678Z";

fn track(id: &str) -> Value {
    json!({"type": "track", "event": "Report Exported", "userId": "user-1", "messageId": id,
           "timestamp": "2026-01-02T03:04:00.000Z", "properties": {"format": "csv"}})
}

fn batch(items: Vec<Value>) -> Value {
    json!({"batch": items, "sentAt": SENT_AT, "context": {"library": {"name": "pendo-segment", "version": "0.1.0"}}})
}

fn ids(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| track(&format!("{prefix}-{i}"))).collect()
}

/// A POST as our sender makes it: Basic auth with the server's key, JSON content type.
fn post(
    client: &reqwest::Client,
    server: &SegmentTestServer,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    client
        .post(server.batch_url())
        .basic_auth(server.write_key(), Some(""))
        .header("content-type", "application/json")
        .body(body)
}

async fn send(server: &SegmentTestServer, body: &Value) -> (u16, Value) {
    let r = post(
        &reqwest::Client::new(),
        server,
        serde_json::to_vec(body).unwrap(),
    )
    .send()
    .await
    .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON response body"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn assert_invalid_request(status: u16, body: &Value, needle: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["code"], json!("invalid_request"), "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains(needle),
        "message {message:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn missing_or_wrong_write_key_is_401_and_counted() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&batch(ids("a", 2))).unwrap();

    let none = client
        .post(server.batch_url())
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(none.status().as_u16(), 401);
    let wrong = client
        .post(server.batch_url())
        .basic_auth("not-the-key", Some(""))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // The right key with a password is not Segment's scheme either.
    let with_password = client
        .post(server.batch_url())
        .basic_auth(server.write_key(), Some("secret"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(with_password.status().as_u16(), 401);

    assert_eq!(server.unauthorized(), 3);
    assert_eq!(server.status_counts().get(&401), Some(&3));
    assert_eq!(
        server.event_count(),
        0,
        "nothing of an unauthorized request is recorded"
    );

    let ok = post(&client, &server, body).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(server.event_count(), 2);
}

#[tokio::test]
async fn good_batch_is_accepted_and_recorded() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let mut items = ids("good", 3);
    items.push(json!({"type": "identify", "anonymousId": "anon-9", "messageId": "good-id", "traits": {"plan": "pro"}}));
    items.push(json!({"type": "group", "userId": "user-1", "groupId": "acct-1", "messageId": "good-group"}));
    items.push(json!({"type": "alias", "previousId": "anon-9", "userId": "user-1", "messageId": "good-alias"}));
    let sent = batch(items.clone());
    let bytes = serde_json::to_vec(&sent).unwrap();
    // `; charset=utf-8` is still application/json.
    let r = reqwest::Client::new()
        .post(server.batch_url())
        .basic_auth(server.write_key(), Some(""))
        .header("content-type", "application/json; charset=utf-8")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"success": true}));

    let events = server.events();
    assert_eq!(events.len(), 6);
    for (event, item) in events.iter().zip(&items) {
        assert_eq!(&event.item, item, "recorded exactly as sent");
        assert_eq!(event.message_id.as_deref(), item["messageId"].as_str());
        assert_eq!(event.request_index, 1);
    }
    let distinct = server.distinct_message_ids();
    assert_eq!(distinct.len(), 6);
    assert!(distinct.contains("good-0") && distinct.contains("good-alias"));
    assert_eq!(server.duplicates(), 0);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let rec = &requests[0];
    assert_eq!(
        (rec.index, rec.status, rec.item_count, rec.accepted),
        (1, Some(200), 6, 6)
    );
    assert_eq!(rec.body_bytes, bytes.len());
    assert_eq!(rec.decoded_bytes, bytes.len());
    assert!(!rec.gzip && !rec.early && rec.fault.is_none() && rec.error.is_none());
    assert_eq!(rec.sent_at.as_deref(), Some(SENT_AT));
    assert_eq!(server.status_counts().get(&200), Some(&1));
}

#[tokio::test]
async fn content_type_must_be_json() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&batch(ids("ct", 1))).unwrap();
    for content_type in [Some("text/plain"), None] {
        let mut req = client
            .post(server.batch_url())
            .basic_auth(server.write_key(), Some(""))
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        assert_invalid_request(status, &r.json().await.unwrap(), "Content-Type");
    }
    assert_eq!(server.event_count(), 0);
    assert_eq!(server.status_counts().get(&400), Some(&2));
}

#[tokio::test]
async fn gzip_is_accepted_and_limits_apply_uncompressed() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let client = reqwest::Client::new();
    let plain = serde_json::to_vec(&batch(ids("gz", 50))).unwrap();
    let compressed = gzip(&plain);
    let r = post(&client, &server, compressed.clone())
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(server.distinct_count(), 50);
    let rec = &server.requests()[0];
    assert!(rec.gzip);
    assert_eq!(
        (rec.body_bytes, rec.decoded_bytes),
        (compressed.len(), plain.len())
    );
    assert!(rec.body_bytes < rec.decoded_bytes);

    // 600 KB uncompressed (valid JSON: trailing whitespace) compresses to ~1 KB: still too big.
    let mut huge = serde_json::to_vec(&batch(ids("gz-big", 1))).unwrap();
    huge.resize(600 * 1024, b' ');
    let huge_gz = gzip(&huge);
    assert!(huge_gz.len() < 10 * 1024);
    let r = post(&client, &server, huge_gz)
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_invalid_request(status, &r.json().await.unwrap(), "500 KB");

    // Not gzip at all.
    let r = post(&client, &server, plain)
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_invalid_request(status, &r.json().await.unwrap(), "gzip");
    assert_eq!(server.distinct_count(), 50, "rejected requests add nothing");
}

#[tokio::test]
async fn request_body_limit_is_500_kib() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let client = reqwest::Client::new();
    let base = serde_json::to_vec(&batch(ids("lim", 1))).unwrap();

    // Exactly 500 * 1024 bytes (padded with JSON whitespace) is allowed; one more byte is not.
    let mut at_limit = base.clone();
    at_limit.resize(MAX_REQUEST_BYTES, b' ');
    assert_eq!(at_limit.len(), 512_000);
    assert_eq!(
        post(&client, &server, at_limit)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let mut over = base;
    over.resize(MAX_REQUEST_BYTES + 1, b' ');
    let r = post(&client, &server, over).send().await.unwrap();
    let status = r.status().as_u16();
    assert_invalid_request(status, &r.json().await.unwrap(), "500 KB");

    // A realistic oversized batch: 20 events of ~26 KB, each under the event limit.
    let pad = "x".repeat(26 * 1024);
    let items = (0..20)
        .map(|i| json!({"type": "track", "event": "Big", "userId": "u", "messageId": format!("big-{i}"), "properties": {"pad": pad}}))
        .collect();
    let r = post(&client, &server, serde_json::to_vec(&batch(items)).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_invalid_request(status, &r.json().await.unwrap(), "500 KB");

    assert_eq!(
        server.event_count(),
        1,
        "only the at-limit request was recorded"
    );
    assert_eq!(server.status_counts().get(&400), Some(&2));
}

#[tokio::test]
async fn event_limit_is_32_kib() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    // An item whose serialisation is exactly 32 * 1024 bytes is allowed.
    let item = |id: &str, pad: usize| {
        json!({"type": "track", "event": "Big", "userId": "u", "messageId": id,
               "properties": {"pad": "y".repeat(pad)}})
    };
    let overhead = serde_json::to_vec(&item("exact", 0)).unwrap().len();
    let exact = item("exact", MAX_EVENT_BYTES - overhead);
    assert_eq!(serde_json::to_vec(&exact).unwrap().len(), 32 * 1024);
    let (status, body) = send(&server, &batch(vec![exact])).await;
    assert_eq!(status, 200, "{body}");

    // A 33 KB item at index 1 rejects the whole batch, naming the index.
    let big = item("big", 33 * 1024);
    let (status, body) = send(
        &server,
        &batch(vec![track("small-0"), big, track("small-2")]),
    )
    .await;
    assert_invalid_request(status, &body, "batch[1]");
    assert_eq!(server.event_count(), 1);
    assert!(
        !server.distinct_message_ids().contains("small-0"),
        "a 400 records nothing of the batch"
    );
}

#[tokio::test]
async fn item_without_known_type_is_rejected_naming_its_index() {
    // Even in Segment's lenient mode: an unroutable item is a sender bug (stricter than Segment).
    for silently_drop_invalid in [false, true] {
        let server = SegmentTestServer::start(SegmentServerConfig {
            silently_drop_invalid,
            ..Default::default()
        })
        .await;
        let mut no_type = track("t-2");
        no_type.as_object_mut().unwrap().remove("type");
        let (status, body) = send(&server, &batch(vec![track("t-0"), track("t-1"), no_type])).await;
        assert_invalid_request(status, &body, "batch[2]");

        let mut bad_type = track("t-3");
        bad_type["type"] = json!("purchase");
        let (status, body) = send(&server, &batch(vec![bad_type])).await;
        assert_invalid_request(status, &body, "batch[0]");

        let (status, body) = send(&server, &batch(vec![json!("not an object")])).await;
        assert_invalid_request(status, &body, "batch[0]");
        assert_eq!(server.event_count(), 0);
        assert_eq!(
            server.requests()[0]
                .error
                .as_deref()
                .map(|e| e.contains("batch[2]")),
            Some(true)
        );
    }
}

#[tokio::test]
async fn invalid_json_and_missing_batch_are_400() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let client = reqwest::Client::new();
    let r = post(&client, &server, b"{\"batch\": [".to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_invalid_request(status, &r.json().await.unwrap(), "invalid JSON");
    let r = post(&client, &server, b"{\"events\": []}".to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_invalid_request(status, &r.json().await.unwrap(), "batch");
    assert_eq!(server.status_counts().get(&400), Some(&2));
}

fn segment_would_drop() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({"type": "track", "event": "E", "messageId": "x-1"}),
            "neither userId nor anonymousId",
        ),
        (
            json!({"type": "identify", "userId": "", "messageId": "x-2"}),
            "neither userId nor anonymousId",
        ),
        (
            json!({"type": "track", "userId": "u", "messageId": "x-3"}),
            "\"event\"",
        ),
        (
            json!({"type": "group", "userId": "u", "messageId": "x-4"}),
            "\"groupId\"",
        ),
        (
            json!({"type": "alias", "userId": "u", "messageId": "x-5"}),
            "\"previousId\"",
        ),
        (
            json!({"type": "page", "userId": "u", "messageId": "m".repeat(101)}),
            "messageId",
        ),
    ]
}

#[tokio::test]
async fn strict_mode_rejects_what_segment_would_silently_drop() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    for (item, needle) in segment_would_drop() {
        let (status, body) = send(&server, &batch(vec![track("ok-0"), item])).await;
        assert_invalid_request(status, &body, needle);
        assert!(
            body["message"].as_str().unwrap().contains("batch[1]"),
            "{body}"
        );
    }
    assert_eq!(server.event_count(), 0);
    assert_eq!(server.dropped(), 0);
}

#[tokio::test]
async fn lenient_mode_drops_like_segment() {
    let config = SegmentServerConfig {
        silently_drop_invalid: true,
        ..Default::default()
    };
    let server = SegmentTestServer::start(config).await;
    let invalid = segment_would_drop();
    let n_invalid = invalid.len();
    let mut items = vec![track("keep-0")];
    items.extend(invalid.into_iter().map(|(item, _)| item));
    items.push(track("keep-1"));
    let (status, body) = send(&server, &batch(items)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.dropped(), n_invalid);
    let kept: Vec<_> = server
        .events()
        .into_iter()
        .filter_map(|e| e.message_id)
        .collect();
    assert_eq!(kept, vec!["keep-0", "keep-1"]);
    let rec = &server.requests()[0];
    assert_eq!(
        (rec.item_count, rec.accepted, rec.dropped_invalid),
        (n_invalid + 2, 2, n_invalid)
    );
}

#[tokio::test]
async fn items_past_2500_are_silently_dropped() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let items: Vec<Value> = (0..2_600)
        .map(|i| json!({"type": "track", "event": "E", "userId": "u", "messageId": format!("n-{i}")}))
        .collect();
    let (status, body) = send(&server, &batch(items)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.event_count(), 2_500);
    assert_eq!(server.dropped_over_limit(), 100);
    let distinct = server.distinct_message_ids();
    assert!(
        distinct.contains("n-2499") && !distinct.contains("n-2500"),
        "the first 2,500 are kept"
    );
    let rec = &server.requests()[0];
    assert_eq!(
        (rec.item_count, rec.accepted, rec.dropped_over_limit),
        (2_600, 2_500, 100)
    );
}

#[tokio::test]
async fn scheduled_503_and_429_and_an_early_retry_is_counted() {
    let plan = FaultPlan::none().nth(2, FaultAction::Status(503)).nth(
        3,
        FaultAction::RateLimited {
            retry_after_secs: 1,
        },
    );
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: plan,
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let body = |p: &str| serde_json::to_vec(&batch(ids(p, 2))).unwrap();

    let r1 = post(&client, &server, body("r1")).send().await.unwrap();
    assert_eq!(r1.status().as_u16(), 200);
    let r2 = post(&client, &server, body("r2")).send().await.unwrap();
    assert_eq!(r2.status().as_u16(), 503);
    let r3 = post(&client, &server, body("r3")).send().await.unwrap();
    assert_eq!(r3.status().as_u16(), 429);
    assert_eq!(
        r3.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let reset: u64 = r3.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now..=now + 2).contains(&reset),
        "X-RateLimit-Reset {reset} is unix seconds, about now + 1"
    );
    assert_eq!(server.early_requests(), 0);

    // A sender ignoring Retry-After: retried after 100 ms. Accepted, but counted as early.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r4 = post(&client, &server, body("r3")).send().await.unwrap();
    assert_eq!(r4.status().as_u16(), 200);
    assert_eq!(server.early_requests(), 1);

    // After the deadline a request is on time.
    tokio::time::sleep(Duration::from_millis(950)).await;
    let r5 = post(&client, &server, body("r5")).send().await.unwrap();
    assert_eq!(r5.status().as_u16(), 200);
    assert_eq!(server.early_requests(), 1);

    // Faulted requests' events are not recorded.
    let distinct = server.distinct_message_ids();
    assert_eq!(distinct.len(), 6);
    assert!(!distinct.contains("r2-0"));
    let early: Vec<bool> = server.requests().iter().map(|r| r.early).collect();
    assert_eq!(early, vec![false, false, false, true, false]);
    let statuses: Vec<Option<u16>> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![Some(200), Some(503), Some(429), Some(200), Some(200)]
    );

    // The plan can change at runtime; numbering continues (this is request 6).
    server.set_faults(FaultPlan::none().nth(6, FaultAction::Status(502)));
    let r6 = post(&client, &server, body("r6")).send().await.unwrap();
    assert_eq!(r6.status().as_u16(), 502);
    let r7 = post(&client, &server, body("r7")).send().await.unwrap();
    assert_eq!(r7.status().as_u16(), 200);
    assert_eq!(
        server.status_counts(),
        [(200, 4), (503, 1), (429, 1), (502, 1)]
            .into_iter()
            .collect()
    );
}

#[tokio::test]
async fn probability_faults_are_reproducible_from_the_seed() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let plan = FaultPlan::none()
            .range(1, 2, FaultAction::Status(500))
            .probability(0.5, FaultAction::Status(503));
        let server = SegmentTestServer::start(SegmentServerConfig {
            seed,
            faults: plan,
            ..Default::default()
        })
        .await;
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        for i in 0..40 {
            let body = serde_json::to_vec(&batch(ids(&format!("p{i}"), 1))).unwrap();
            out.push(
                post(&client, &server, body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(
            server.status_counts().get(&200).copied().unwrap_or(0),
            server.distinct_count()
        );
        out
    }
    let a = statuses(7).await;
    assert_eq!(a, statuses(7).await, "same seed, same faults");
    assert_eq!(&a[..2], &[500, 500], "the range rule comes first");
    let faulted = a[2..].iter().filter(|&&s| s == 503).count();
    assert!(
        (5..=33).contains(&faulted),
        "about half of 38 at p = 0.5, got {faulted}"
    );
    assert!(a[2..].iter().all(|&s| s == 200 || s == 503));
    assert_ne!(a, statuses(8).await, "another seed, another schedule");
}

#[tokio::test]
async fn timeout_fault_never_answers() {
    let plan = FaultPlan::none().nth(1, FaultAction::Timeout);
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: plan,
        ..Default::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = post(
        &impatient,
        &server,
        serde_json::to_vec(&batch(ids("to", 2))).unwrap(),
    )
    .send()
    .await
    .expect_err("no answer expected");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The held connection blocks nobody else.
    let (status, _) = send(&server, &batch(ids("after", 1))).await;
    assert_eq!(status, 200);
    let requests = server.requests();
    assert_eq!(requests[0].fault, Some(FaultAction::Timeout));
    assert_eq!(requests[0].status, None);
    assert!(
        !server.distinct_message_ids().contains("to-0"),
        "a timed-out request records nothing"
    );
    assert_eq!(server.event_count(), 1);
}

#[tokio::test]
async fn reset_connection_fault_closes_without_a_response() {
    let plan = FaultPlan::none().nth(1, FaultAction::ResetConnection);
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: plan,
        ..Default::default()
    })
    .await;
    // A fresh client: no pooled connection, so the client cannot transparently retry.
    let err = post(
        &reqwest::Client::new(),
        &server,
        serde_json::to_vec(&batch(ids("rst", 2))).unwrap(),
    )
    .send()
    .await
    .expect_err("the connection is reset");
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    assert!(
        err.is_request() || err.is_connect(),
        "a transport error: {err:?}"
    );

    let (status, _) = send(&server, &batch(ids("after", 1))).await;
    assert_eq!(status, 200, "the server keeps serving");
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        2,
        "the reset request was not retried behind our back"
    );
    assert_eq!(
        (requests[0].fault.clone(), requests[0].status),
        (Some(FaultAction::ResetConnection), None)
    );
    assert_eq!(server.event_count(), 1);
}

#[tokio::test]
async fn slow_fault_records_events_even_when_the_client_gives_up() {
    let plan = FaultPlan::none().range(1, 2, FaultAction::Slow(Duration::from_millis(400)));
    let server = SegmentTestServer::start(SegmentServerConfig {
        faults: plan,
        ..Default::default()
    })
    .await;
    let body = serde_json::to_vec(&batch(ids("slow", 3))).unwrap();

    let started = Instant::now();
    let r = post(&reqwest::Client::new(), &server, body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered after the delay"
    );
    assert_eq!(server.distinct_count(), 3);

    // Accepted but the answer is lost: the client's retry creates duplicates.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = post(&impatient, &server, body.clone())
        .send()
        .await
        .expect_err("gave up");
    assert!(err.is_timeout(), "{err:?}");
    let r = post(&reqwest::Client::new(), &server, body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(server.event_count(), 9);
    assert_eq!(server.distinct_count(), 3);
    assert_eq!(server.duplicates(), 6);
}

#[tokio::test]
async fn duplicates_are_counted_by_message_id() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let mut no_id = track("unused");
    no_id.as_object_mut().unwrap().remove("messageId");
    let (s1, _) = send(
        &server,
        &batch(vec![track("d-1"), track("d-2"), track("d-1")]),
    )
    .await;
    let (s2, _) = send(
        &server,
        &batch(vec![track("d-2"), track("d-3"), no_id.clone(), no_id]),
    )
    .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(server.event_count(), 7);
    assert_eq!(
        server.duplicates(),
        2,
        "d-1 within the batch, d-2 across batches; no id is never a duplicate"
    );
    let counts = server.message_id_counts();
    assert_eq!(
        counts,
        [
            ("d-1".to_string(), 2),
            ("d-2".to_string(), 2),
            ("d-3".to_string(), 1)
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(server.distinct_message_ids().len(), 3);
    assert_eq!(
        server
            .events()
            .iter()
            .filter(|e| e.message_id.is_none())
            .count(),
        2
    );
}

#[tokio::test]
async fn wait_for_distinct_polls_until_reached() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let (url, key) = (server.batch_url(), server.write_key().to_string());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        reqwest::Client::new()
            .post(url)
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&batch(ids("w", 2))).unwrap())
            .send()
            .await
            .unwrap();
    });
    assert!(
        !server.wait_for_distinct(1, Duration::from_millis(50)).await,
        "nothing yet"
    );
    assert!(server.wait_for_distinct(2, Duration::from_secs(5)).await);
    assert!(
        !server
            .wait_for_distinct(3, Duration::from_millis(100))
            .await,
        "never reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_keep_alive_connections() {
    let delay = Duration::from_millis(20);
    let config = SegmentServerConfig {
        response_delay: Some(delay),
        ..Default::default()
    };
    let server = std::sync::Arc::new(SegmentTestServer::start(config).await);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (server, client) = (server.clone(), client.clone());
            tokio::spawn(async move {
                for b in 0..5 {
                    let body = serde_json::to_vec(&batch(ids(&format!("c{t}-{b}"), 10))).unwrap();
                    let r = post(&client, &server, body).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 5 sequential delayed answers per task; 64 tasks concurrently, not one after the other.
    assert!(started.elapsed() >= delay * 5);
    assert!(
        started.elapsed() < delay * 64,
        "requests were served concurrently"
    );
    assert!(
        server
            .wait_for_distinct(64 * 5 * 10, Duration::from_secs(1))
            .await
    );
    assert_eq!(server.duplicates(), 0);
    assert_eq!(server.status_counts().get(&200), Some(&320));
    let mut indexes: Vec<u64> = server.requests().iter().map(|r| r.index).collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (1..=320).collect::<Vec<_>>(),
        "every POST numbered once"
    );
}

/// Raw HTTP/1.1 edge cases reqwest does not produce: pipelining, chunked bodies, other routes.
#[tokio::test]
async fn raw_http_keep_alive_pipelining_and_refusals() {
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    // base64("test-write-key:")
    let auth = "Authorization: Basic dGVzdC13cml0ZS1rZXk6\r\n";
    let request = |id: &str, last: bool| {
        let body = serde_json::to_string(&batch(vec![track(id)])).unwrap();
        format!(
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if last { "Connection: close\r\n" } else { "" }
        )
    };
    let exchange = |raw: String| {
        let addr = server.addr();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(raw.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
                .await
                .expect("the server closes after Connection: close or a refusal")
                .unwrap();
            out
        }
    };

    // Three pipelined requests in one write on one connection, the last one closing it.
    let out = exchange(format!(
        "{}{}{}",
        request("pipe-1", false),
        request("pipe-2", false),
        request("pipe-3", true)
    ))
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    assert_eq!(server.distinct_count(), 3);

    let chunked = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    assert!(exchange(chunked).await.starts_with("HTTP/1.1 411 "));

    let get = "GET /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string();
    let out = exchange(get).await;
    assert!(
        out.starts_with("HTTP/1.1 405 ") && out.contains("Allow: POST"),
        "{out}"
    );

    let other = request("elsewhere", true).replace("/v1/batch", "/v1/track");
    assert!(exchange(other).await.starts_with("HTTP/1.1 404 "));

    let garbage = "NONSENSE\r\n\r\n".to_string();
    assert!(exchange(garbage).await.starts_with("HTTP/1.1 400 "));
    assert_eq!(
        server.distinct_count(),
        3,
        "refused requests record nothing"
    );
}
