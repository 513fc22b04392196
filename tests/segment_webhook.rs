//! Role `segment-webhook` end to end: a real `pendo-segment` process, real HTTP, a real broker.
//! Signatures are computed here the way Segment computes them (hex HMAC-SHA1 of the body, or of
//! the first element's raw bytes for a batched array), independently of the role's code.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rdkafka::Message;
use serde_json::value::RawValue;
use support::*;

/// The secret of `tests/fixtures/segment/README.md`.
const SECRET: &str = "fixture-shared-secret";
/// A second active secret (rotation), given through the environment.
const ROTATED: &str = "segment-hook-secret-next";

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
        let prefix = unique("swh");
        let port = free_port();
        let (config, ops) = role_config(
            dir.path(),
            &prefix,
            &format!(
                "[segment_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\", {{ env = \"PS_TEST_SEGMENT_ROTATED_SECRET\" }}]\n{extra}"
            ),
        );
        // SAFETY: every test of this binary sets the same value; children inherit it.
        unsafe { std::env::set_var("PS_TEST_SEGMENT_ROTATED_SECRET", ROTATED) };
        apply_topics(&config);
        let mut process = RoleProcess::start(
            &config,
            &["run", "--role", "segment-webhook"],
            ops,
            dir.path().join("role.log"),
        );
        process.wait_ready(Duration::from_secs(60)).await;
        Hook {
            url: format!("http://127.0.0.1:{port}/webhooks/segment"),
            process,
            prefix,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    fn topic(&self) -> String {
        format!("{}.segment.raw.webhook", self.prefix)
    }

    fn dlq(&self) -> String {
        format!("{}.dlq.segment-webhook", self.prefix)
    }

    /// Posts `body` as Segment does, with `signature` in `X-Signature` when given.
    async fn post(&self, body: Vec<u8>, signature: Option<String>) -> reqwest::Response {
        let mut r = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("user-agent", "Segment (Actions)")
            .body(body);
        if let Some(s) = signature {
            r = r.header("x-signature", s);
        }
        r.send().await.expect("post")
    }

    /// Posts `body` signed correctly with `secret`.
    async fn post_signed(&self, body: Vec<u8>, secret: &str) -> reqwest::Response {
        let sig = segment_signature(secret, &body);
        self.post(body, Some(sig)).await
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join("segment").join(name)).unwrap()
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir().join("segment"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn hmac_sha1_hex(secret: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The events a body holds, as exact byte slices (an array yields its elements).
fn events_of(body: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(body).unwrap();
    if text.trim_start().starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text).unwrap();
        elements
            .iter()
            .map(|r| r.get().as_bytes().to_vec())
            .collect()
    } else {
        vec![body.to_vec()]
    }
}

/// Segment's `X-Signature` for `body`: over the raw body, or over the raw bytes of the first
/// element of an array body.
fn segment_signature(secret: &str, body: &[u8]) -> String {
    let is_array = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[');
    if is_array {
        hmac_sha1_hex(secret, &events_of(body)[0])
    } else {
        hmac_sha1_hex(secret, body)
    }
}

/// The Kafka key the role must use: userId, else (group calls) groupId, else anonymousId.
fn expected_key(event: &serde_json::Value) -> Option<String> {
    let text = |k: &str| {
        event[k]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    text("userId")
        .or_else(|| {
            if event["type"] == "group" {
                text("groupId")
            } else {
                None
            }
        })
        .or_else(|| text("anonymousId"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_lands_byte_identical_with_key_and_kind() {
    let hook = Hook::start("").await;
    let names = fixture_names();
    assert!(names.len() >= 6, "segment fixtures missing: {names:?}");
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for name in &names {
        let body = fixture(name);
        let r = hook.post_signed(body.clone(), SECRET).await;
        assert_eq!(r.status(), 200, "{name}");
        let accepted: serde_json::Value = r.json().await.unwrap();
        let events = events_of(&body);
        assert_eq!(accepted["accepted"], events.len(), "{name}");
        expected.extend(events);
    }
    // actions-batch.json holds two events: one record each.
    assert_eq!(expected.len(), names.len() + 1);
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
        let key = expected_key(&json).expect("every fixture has a user");
        assert_eq!(record.key(), Some(key.as_bytes()));
        assert_eq!(
            header(record, "event-kind").as_deref(),
            json["type"].as_str()
        );
        assert_eq!(header(record, "source").as_deref(), Some("segment-webhook"));
        assert_eq!(
            header(record, "content-type").as_deref(),
            Some("application/json")
        );
        let received: i64 = header(record, "received-at").unwrap().parse().unwrap();
        assert!(received > 1_700_000_000_000, "received-at is epoch ms");
    }
    // The two events of the batch share one request id; different requests differ.
    let ids: HashSet<String> = records
        .iter()
        .map(|m| header(m, "request-id").unwrap())
        .collect();
    assert_eq!(ids.len(), names.len());
    // Per-user order: user-8841's four events are on one partition.
    let partitions: HashSet<i32> = records
        .iter()
        .filter(|m| m.key() == Some(&b"user-8841"[..]))
        .map(|m| m.partition())
        .collect();
    assert_eq!(partitions.len(), 1);

    let metrics = hook.process.metrics().await;
    assert!(
        metrics.contains(&format!(
            "pendo_segment_webhook_events_accepted_total{{role=\"segment-webhook\"}} {}",
            expected.len()
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_are_verified_and_secrets_rotate() {
    let hook = Hook::start("").await;
    let event = fixture("audience-track-entered.json");
    let batch = fixture("actions-batch.json");
    let good = segment_signature(SECRET, &event);

    // A body modified after signing: 401.
    let modified = String::from_utf8(event.clone())
        .unwrap()
        .replace("user-8841", "user-6666")
        .into_bytes();
    assert_eq!(hook.post(modified, Some(good.clone())).await.status(), 401);
    // Another secret, no signature, a malformed one, the secret itself: 401.
    let wrong = hmac_sha1_hex("not-the-secret", &event);
    assert_eq!(hook.post(event.clone(), Some(wrong)).await.status(), 401);
    let r = hook.post(event.clone(), None).await;
    assert_eq!(r.status(), 401);
    let message = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("x-signature"), "{message}");
    assert_eq!(
        hook.post(event.clone(), Some("zz".repeat(20)))
            .await
            .status(),
        401
    );
    assert_eq!(
        hook.post(event.clone(), Some(SECRET.to_string()))
            .await
            .status(),
        401
    );
    // A batch signed over the whole array instead of its first element: 401; its first
    // element changed after signing: 401.
    let whole = hmac_sha1_hex(SECRET, &batch);
    assert_eq!(hook.post(batch.clone(), Some(whole)).await.status(), 401);
    let batch_sig = segment_signature(SECRET, &batch);
    let tampered = String::from_utf8(batch.clone())
        .unwrap()
        .replacen("user-1001", "user-1009", 1)
        .into_bytes();
    assert_eq!(
        hook.post(tampered, Some(batch_sig.clone())).await.status(),
        401
    );
    // Unauthenticated bad bodies are neither judged nor kept: 401, nothing in the DLQ.
    assert_eq!(
        hook.post(b"not json at all".to_vec(), Some(good.clone()))
            .await
            .status(),
        401
    );

    // Correct signatures with either active secret: 200 (the batch verifies against its first
    // element and yields one record per element).
    assert_eq!(hook.post(event.clone(), Some(good)).await.status(), 200);
    assert_eq!(hook.post_signed(event.clone(), ROTATED).await.status(), 200);
    assert_eq!(
        hook.post(batch.clone(), Some(batch_sig)).await.status(),
        200
    );
    assert_eq!(hook.post_signed(batch.clone(), ROTATED).await.status(), 200);

    let stored = read_committed(&hook.topic(), 6, Duration::from_secs(15));
    assert_eq!(stored.len(), 6, "only the authenticated events are stored");
    let payloads: HashSet<&[u8]> = stored.iter().map(|m| m.payload().unwrap()).collect();
    assert!(payloads.contains(event.as_slice()));
    for element in events_of(&batch) {
        assert!(payloads.contains(element.as_slice()));
    }
    assert!(
        !stored.iter().any(|m| m
            .payload()
            .unwrap()
            .windows(9)
            .any(|w| w == b"user-6666" || w == b"user-1009")),
        "a modified body was stored"
    );
    let dlq = read_committed(&hook.dlq(), 0, Duration::from_secs(2));
    assert!(dlq.is_empty(), "unauthenticated body dead-lettered");

    let metrics = hook.process.metrics().await;
    for needle in [
        "pendo_segment_webhook_rejects_total{reason=\"auth\",role=\"segment-webhook\"} 8",
        "pendo_segment_webhook_requests_total{role=\"segment-webhook\",status=\"401\"} 8",
        "pendo_segment_webhook_requests_total{role=\"segment-webhook\",status=\"200\"} 4",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn size_shape_and_content_type_are_enforced() {
    let hook = Hook::start("max_body_bytes = 4096\nmax_events_per_request = 3\n").await;
    let event = fixture("non-audience-track.json");

    // Not JSON, correctly signed: 400 with the reason, and the raw body kept in the DLQ.
    let not_json = b"{\"type\":\"track\", this is not json".to_vec();
    let r = hook.post_signed(not_json.clone(), SECRET).await;
    assert_eq!(r.status(), 400);
    let reason = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("not valid JSON"), "{reason}");
    // JSON but not events (signed over the first element, as Segment would): 400, DLQ too.
    let not_events = b"[1,2]".to_vec();
    assert_eq!(
        hook.post_signed(not_events.clone(), SECRET).await.status(),
        400
    );

    // Too large (declared length): 413, nothing stored.
    let big = format!(
        "{{\"type\":\"track\",\"userId\":\"u\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    assert_eq!(
        hook.post_signed(big.into_bytes(), SECRET).await.status(),
        413
    );
    // Too many events in one batch: 413.
    let one = String::from_utf8(event.clone()).unwrap();
    let four = format!("[{e},{e},{e},{e}]", e = one.trim());
    assert_eq!(
        hook.post_signed(four.into_bytes(), SECRET).await.status(),
        413
    );
    // Wrong content type: 415.
    let form = hook
        .http
        .post(&hook.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-signature", segment_signature(SECRET, &event))
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    // A valid batch within the limits still goes through.
    let three = format!("[{e},{e},{e}]", e = one.trim());
    assert_eq!(
        hook.post_signed(three.into_bytes(), SECRET).await.status(),
        200
    );

    let dlq = read_committed(&hook.dlq(), 2, Duration::from_secs(15));
    assert_eq!(dlq.len(), 2, "one DLQ record per rejected body");
    let m = dlq
        .iter()
        .find(|m| m.payload() == Some(not_json.as_slice()))
        .expect("non-JSON body kept byte-identical");
    assert!(header(m, "dlq-reason").unwrap().contains("not valid JSON"));
    assert_eq!(header(m, "dlq-stage").as_deref(), Some("segment-webhook"));
    assert_eq!(header(m, "source").as_deref(), Some("segment-webhook"));
    assert!(
        dlq.iter()
            .any(|m| m.payload() == Some(not_events.as_slice()))
    );

    let stored = read_committed(&hook.topic(), 3, Duration::from_secs(10));
    assert_eq!(stored.len(), 3, "only the valid batch was stored");

    let metrics = hook.process.metrics().await;
    for needle in [
        "pendo_segment_webhook_requests_total{role=\"segment-webhook\",status=\"413\"} 2",
        "pendo_segment_webhook_requests_total{role=\"segment-webhook\",status=\"415\"} 1",
        "pendo_segment_webhook_requests_total{role=\"segment-webhook\",status=\"400\"} 2",
        "pendo_segment_webhook_rejects_total{reason=\"malformed\",role=\"segment-webhook\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

/// An Actions batch larger than one Kafka record (3,000 events, ~3 MiB) is stored event by event
/// in one request; a batch holding one event too large for a record is refused whole with 413
/// naming that element, and kept in the DLQ element by element (the oversized one cut, with a
/// note saying so).
#[tokio::test(flavor = "multi_thread")]
async fn actions_batches_larger_than_a_record_are_stored_event_by_event() {
    let hook = Hook::start("").await;
    let pad = "p".repeat(1000);
    let events: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "{{\"type\":\"track\",\"event\":\"Report Exported\",\"userId\":\"big-{i}\",\"messageId\":\"m-{i}\",\"properties\":{{\"pad\":\"{pad}\"}}}}"
            )
        })
        .collect();
    let body = format!("[{}]", events.join(","));
    assert!(body.len() > 2 * 1024 * 1024 + 500_000, "{}", body.len());
    let r = hook.post_signed(body.into_bytes(), SECRET).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["accepted"],
        3000
    );
    let stored = read_committed(&hook.topic(), 3000, Duration::from_secs(30));
    assert_eq!(stored.len(), 3000, "one record per event, none twice");
    let by_key: HashMap<String, &rdkafka::message::OwnedMessage> = stored
        .iter()
        .map(|m| (String::from_utf8(m.key().unwrap().to_vec()).unwrap(), m))
        .collect();
    assert_eq!(by_key.len(), 3000);
    for (i, event) in events.iter().enumerate() {
        let m = by_key[&format!("big-{i}")];
        assert_eq!(
            m.payload(),
            Some(event.as_bytes()),
            "event {i} byte-identical"
        );
    }

    // Element 1 is larger than a record may be: 413 naming it, nothing stored on the raw topic.
    let small = &events[0];
    let huge = format!(
        "{{\"type\":\"track\",\"event\":\"Huge\",\"userId\":\"huge\",\"properties\":{{\"pad\":\"{}\"}}}}",
        "h".repeat(2 * 1024 * 1024 + 10)
    );
    let body = format!("[{small},{huge},{small}]");
    let r = hook.post_signed(body.into_bytes(), SECRET).await;
    assert_eq!(r.status(), 413);
    let reply: serde_json::Value = r.json().await.unwrap();
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("array element 1") && error.contains(&format!("{} bytes", huge.len())),
        "{error}"
    );
    assert!(reply["request_id"].is_string(), "{reply}");

    let dlq = read_committed(&hook.dlq(), 3, Duration::from_secs(20));
    assert_eq!(
        dlq.len(),
        3,
        "the refused batch is kept, one record per element"
    );
    let details: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "dlq-detail").unwrap())
        .collect();
    for m in &dlq {
        assert!(header(m, "dlq-reason").unwrap().contains("array element 1"));
    }
    let cut = dlq
        .iter()
        .zip(&details)
        .find(|(_, d)| d.contains("array element 1 of 3"))
        .expect("the oversized element is kept");
    assert!(cut.1.contains("cut to its first"), "{}", cut.1);
    assert_eq!(
        cut.0.payload().unwrap(),
        &huge.as_bytes()[..2 * 1024 * 1024]
    );
    assert_eq!(
        dlq.iter()
            .filter(|m| m.payload() == Some(small.as_bytes()))
            .count(),
        2,
        "the other elements are kept byte-identical"
    );
    let more = read_committed(&hook.topic(), 3001, Duration::from_secs(3));
    assert_eq!(more.len(), 3000, "nothing of the refused batch was stored");

    let metrics = hook.process.metrics().await;
    for needle in [
        "pendo_segment_webhook_rejects_total{reason=\"event_too_large\",role=\"segment-webhook\"} 1",
        "pendo_segment_webhook_events_accepted_total{role=\"segment-webhook\"} 3000",
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
        &unique("swh-nosecret"),
        &format!("[segment_webhook]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["run", "--role", "segment-webhook"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("segment_webhook.secrets"), "{err}");
    assert!(err.contains("--insecure-no-auth"), "{err}");

    apply_topics(&config);
    let mut p = RoleProcess::start(
        &config,
        &["run", "--role", "segment-webhook", "--insecure-no-auth"],
        ops,
        dir.path().join("role.log"),
    );
    p.wait_ready(Duration::from_secs(60)).await;
    assert!(p.logs().contains("UNAUTHENTICATED"), "{}", p.logs());
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/segment"))
        .header("content-type", "application/json")
        .body(fixture("audience-identify-entered.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// With `accept_batches = false` an Actions batch (whose signature covers only its first
/// element) is refused with 400, correctly signed or not, and nothing of it is stored, not even
/// in the DLQ; a single event still goes through, and an unsigned batch is still a 401.
#[tokio::test(flavor = "multi_thread")]
async fn accept_batches_false_refuses_arrays_without_storing_them() {
    let hook = Hook::start("accept_batches = false\n").await;
    let batch = fixture("actions-batch.json");
    let r = hook.post_signed(batch.clone(), SECRET).await;
    assert_eq!(r.status(), 400);
    let error = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("accept_batches = false") && error.contains("first element"),
        "{error}"
    );
    // A one-element array is an array too.
    let one = format!(
        "[{}]",
        String::from_utf8(events_of(&batch)[0].clone()).unwrap()
    );
    assert_eq!(
        hook.post_signed(one.into_bytes(), SECRET).await.status(),
        400
    );
    // Authentication still comes first.
    assert_eq!(hook.post(batch.clone(), None).await.status(), 401);
    let single = fixture("audience-track-entered.json");
    assert_eq!(hook.post_signed(single.clone(), SECRET).await.status(), 200);

    let stored = read_committed(&hook.topic(), 1, Duration::from_secs(15));
    assert_eq!(stored.len(), 1, "only the single event was stored");
    assert_eq!(stored[0].payload(), Some(single.as_slice()));
    let dlq = read_committed(&hook.dlq(), 1, Duration::from_secs(2));
    assert!(dlq.is_empty(), "refused batches are not dead-lettered");
    let metrics = hook.process.metrics().await;
    for needle in [
        "pendo_segment_webhook_rejects_total{reason=\"batch_refused\",role=\"segment-webhook\"} 2",
        "pendo_segment_webhook_requests_total{role=\"segment-webhook\",status=\"400\"} 2",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}
