//! Poison records against every consumer role, on a real broker: records crafted so that their
//! output or their dead letter would exceed the target topic's `max.message.bytes` (a megabyte
//! audience value repeated into the dead letter's detail, a megabyte visitor id that would become
//! an output key, records right at the topic limit that cannot be kept whole with the dead-letter
//! headers added). Each role must dead-letter them (cut to fit, saying so), keep running, and
//! process the records after them.
//!
//! Without a reachable broker the test fails; it never skips.

mod support;

use std::time::Duration;

use pendo_segment::kafka::record_size::{fits, record_bytes};
use pendo_segment::kafka::topics::{DEFAULT_MAX_MESSAGE_BYTES, RAW_MAX_MESSAGE_BYTES};
use pendo_segment::schema::pendo_metadata_update::{FieldValue, PendoEntity, UpdateOrigin};
use pendo_segment::schema::{PendoMetadataUpdate, PendoMetadataUpdateCodec, WireFormat};
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use support::pendo_server::{PendoServerConfig, PendoTestServer};
use support::segment_server::{SegmentServerConfig, SegmentTestServer};
use support::*;

/// A producer that can write records as large as the raw topics take, uncompressed (so the
/// broker sees exactly the sizes the test computes).
fn big_producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("compression.type", "none")
        .set("message.max.bytes", (8 << 20).to_string())
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// One record to send: key, value, headers.
type TestRecord<'a> = (Option<String>, Vec<u8>, Vec<(&'a str, Vec<u8>)>);

/// Sends records in order (one partition per key keeps them ordered for the role).
async fn send_all(topic: &str, records: Vec<TestRecord<'_>>) {
    let p = big_producer();
    for (key, value, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in &headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut r = FutureRecord::to(topic).payload(&value).headers(h);
        if let Some(k) = &key {
            r = r.key(k);
        }
        p.send(r, Duration::from_secs(60))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {} bytes to {topic}: {e}", value.len()));
    }
}

/// Payload size that leaves a record of `headers_bytes` of headers just inside `limit`.
fn at_limit(limit: usize, headers_bytes: usize) -> usize {
    // A record batch of one uncompressed record: 61 bytes of batch header, ~20 of record framing.
    limit - 61 - 40 - headers_bytes
}

/// Every dead letter fits its topic, has a bounded detail, and says when it was cut.
fn check_dead_letters(dlq: &[OwnedMessage], limit: usize) {
    for m in dlq {
        let headers: Vec<(&str, &[u8])> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key, x.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let size = record_bytes(m.key(), m.payload().unwrap_or_default(), headers);
        assert!(fits(size, limit), "a dead letter of {size} bytes");
        let detail = header(m, "dlq-detail").unwrap_or_default();
        assert!(detail.len() <= 1024, "detail of {} bytes", detail.len());
        if let Some(cut) = header(m, "dlq-truncated") {
            let original: usize = header(m, "dlq-original-bytes")
                .expect("a cut dead letter keeps its original size")
                .parse()
                .unwrap();
            assert!(cut.contains("payload") || cut.contains("headers") || cut.contains("key"));
            assert!(original >= m.payload().unwrap_or_default().len());
        }
    }
}

fn reasons(dlq: &[OwnedMessage]) -> Vec<String> {
    let mut r: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "dlq-reason").unwrap_or_default())
        .collect();
    r.sort();
    r
}

/// The role's single dead letter on `dlq`: for `reason`, its payload cut to fit `limit`.
fn one_cut_dead_letter(dlq: &str, reason: &str, limit: usize, role: &RoleProcess) {
    let dlq = read_committed(dlq, 1, Duration::from_secs(20));
    assert_eq!(reasons(&dlq), vec![reason], "{}", role.logs());
    check_dead_letters(&dlq, limit);
    assert_eq!(header(&dlq[0], "dlq-truncated").as_deref(), Some("payload"));
}

/// The role is still running after the poison, and stops cleanly on SIGTERM.
async fn still_running_then_stop(mut role: RoleProcess) {
    assert!(role.exit_status().is_none(), "the role keeps running");
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

/// `[pendo]` and `[pendo_sink]` settings for `server`, then `extra`.
fn pendo_sink_settings(server: &PendoTestServer, extra: &str) -> String {
    format!(
        "[pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n{extra}",
        server.url(),
        server.integration_key()
    )
}

fn segment_fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures_dir().join("segment").join(name)).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_segment_survives_oversized_outputs_and_dead_letters() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("poison-ts");
    let (config, ops) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let raw = format!("{prefix}.segment.raw.webhook");
    let user = Some("user-8841".to_string());

    // 1. The review's record: a 1.9 MB audience value, which the detail used to repeat.
    let mut huge_value = segment_fixture("audience-track-entered.json");
    huge_value["messageId"] = json!("poison-huge-value");
    huge_value["properties"]["clicked_q4_upgrade_email"] = json!("v".repeat(1_900_000));
    // 2. A 1.2 MB visitor id named in the traits: every output (the update keyed by it, the
    //    learned id mapping) would exceed its 1 MiB topic.
    let huge_visitor = json!({
        "type": "identify", "messageId": "poison-huge-visitor", "userId": "user-huge",
        "traits": {"pendo_visitor_id": "p".repeat(1_200_000), "beta_testers": true},
        "context": {"personas": {"computation_class": "audience", "computation_key": "beta_testers"}},
        "timestamp": "2026-11-27T12:00:00.000Z"
    });
    // 3. Not JSON, right at the raw topic's limit: its dead letter cannot be whole.
    let limit = RAW_MAX_MESSAGE_BYTES as usize;
    let at = vec![b'{'; at_limit(limit, 200)];
    // 4. An ordinary event after them.
    let mut ok = segment_fixture("audience-track-entered.json");
    ok["messageId"] = json!("after-the-poison");
    send_all(
        &raw,
        vec![
            (
                user.clone(),
                serde_json::to_vec(&huge_value).unwrap(),
                vec![],
            ),
            (
                user.clone(),
                serde_json::to_vec(&huge_visitor).unwrap(),
                vec![],
            ),
            (
                user.clone(),
                at,
                vec![("received-at", b"1764000000000".to_vec())],
            ),
            (user.clone(), serde_json::to_vec(&ok).unwrap(), vec![]),
        ],
    )
    .await;

    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-segment"],
        ops,
        dir.path().join("ts.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let out = read_committed(
        &format!("{prefix}.canonical.pendo-updates"),
        1,
        Duration::from_secs(40),
    );
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    let ids: Vec<String> = out
        .iter()
        .map(|m| {
            codec
                .decode(m.payload().unwrap())
                .unwrap()
                .origin
                .segment_message_id
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        ids,
        vec!["after-the-poison"],
        "the event after the poison is mapped, the poison is not\n{}",
        role.logs()
    );
    let dlq = read_committed(
        &format!("{prefix}.dlq.transform-segment"),
        3,
        Duration::from_secs(20),
    );
    assert_eq!(
        reasons(&dlq),
        vec!["invalid_audience_value", "invalid_json", "output_too_large"],
        "{}",
        role.logs()
    );
    check_dead_letters(&dlq, limit);
    let cut: Vec<&OwnedMessage> = dlq
        .iter()
        .filter(|m| header(m, "dlq-truncated").is_some())
        .collect();
    assert_eq!(cut.len(), 1, "only the record at the limit is cut");
    assert_eq!(
        header(cut[0], "dlq-reason").as_deref(),
        Some("invalid_json")
    );
    assert_eq!(
        header(cut[0], "dlq-original-bytes"),
        Some(at_limit(limit, 200).to_string())
    );
    // The whole ones are byte for byte the input.
    let whole = dlq
        .iter()
        .find(|m| header(m, "dlq-reason").as_deref() == Some("invalid_audience_value"))
        .unwrap();
    assert_eq!(
        whole.payload().unwrap(),
        serde_json::to_vec(&huge_value).unwrap()
    );
    assert!(role.exit_status().is_none(), "the role keeps running");
    let metrics = role.metrics().await;
    assert!(
        metrics.contains("pendo_segment_dead_letters_cut_total{stage=\"transform-segment\"} 1"),
        "{metrics}"
    );
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_pendo_survives_records_at_the_topic_limit() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("poison-tp");
    let (config, ops) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);
    let raw = format!("{prefix}.pendo.raw.webhook");
    let limit = RAW_MAX_MESSAGE_BYTES as usize;
    let key = Some("visitor-poison".to_string());
    // Not JSON at the limit; and a record whose (hostile) header is 60 KB.
    let at = vec![b'{'; at_limit(limit, 100)];
    let big_header = vec![b'h'; 60_000];
    let feature: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("pendo/feature-clicked.json")).unwrap(),
    )
    .unwrap();
    let feature = match feature {
        Value::Array(mut a) => a.remove(0),
        v => v,
    };
    send_all(
        &raw,
        vec![
            (key.clone(), at.clone(), vec![]),
            (
                key.clone(),
                b"not json either".to_vec(),
                vec![("request-id", big_header)],
            ),
            (key.clone(), serde_json::to_vec(&feature).unwrap(), vec![]),
        ],
    )
    .await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo"],
        ops,
        dir.path().join("tp.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let calls = read_committed(
        &format!("{prefix}.canonical.segment-calls"),
        1,
        Duration::from_secs(40),
    );
    assert!(
        !calls.is_empty(),
        "the event after the poison is mapped\n{}",
        role.logs()
    );
    let dlq = read_committed(
        &format!("{prefix}.dlq.transform-pendo"),
        2,
        Duration::from_secs(20),
    );
    assert_eq!(reasons(&dlq), vec!["invalid_json", "invalid_json"]);
    check_dead_letters(&dlq, limit);
    let truncated: Vec<String> = dlq
        .iter()
        .filter_map(|m| header(m, "dlq-truncated"))
        .collect();
    assert_eq!(truncated.len(), 2, "{truncated:?}");
    assert!(truncated.contains(&"payload".to_string()), "{truncated:?}");
    assert!(truncated.contains(&"headers".to_string()), "{truncated:?}");
    let kept_header = dlq
        .iter()
        .find_map(|m| header(m, "request-id"))
        .expect("the carried header is kept, cut");
    assert_eq!(kept_header.len(), 1024);
    still_running_then_stop(role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_sink_survives_a_record_at_the_topic_limit() {
    require_kafka();
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("poison-ss");
    let extra = format!(
        "[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        server.url(),
        server.write_key()
    );
    let (config, ops) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let canonical = format!("{prefix}.canonical.segment-calls");
    let limit = DEFAULT_MAX_MESSAGE_BYTES;
    // Not Avro, as large as the canonical topic takes: its dead letter must be cut.
    let poison = vec![0xffu8; at_limit(limit, 0)];
    let key = Some("user-1".to_string());
    send_all(&canonical, vec![(key.clone(), poison, vec![])]).await;
    // Then ordinary calls, through the transformer's own encoding.
    let (visitor, event) = support::synthetic_pendo::synthetic_event(0);
    let raw = format!("{prefix}.pendo.raw.webhook");
    send_all(&raw, vec![(Some(visitor), event, vec![])]).await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo", "--role", "segment-sink"],
        ops,
        dir.path().join("ss.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    assert!(
        server.wait_for_distinct(1, Duration::from_secs(40)).await,
        "the call after the poison reaches Segment\n{}",
        role.logs()
    );
    one_cut_dead_letter(
        &format!("{prefix}.dlq.segment-sink"),
        "undecodable",
        limit,
        &role,
    );
    still_running_then_stop(role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pendo_sink_survives_a_record_at_the_topic_limit() {
    require_kafka();
    let server = PendoTestServer::start(PendoServerConfig::default().with_fields(
        "visitor",
        "custom",
        &["plan"],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("poison-ps");
    let extra = pendo_sink_settings(&server, "");
    let (config, ops) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let canonical = format!("{prefix}.canonical.pendo-updates");
    let limit = DEFAULT_MAX_MESSAGE_BYTES;
    let key = Some("visitor-1".to_string());
    let poison = vec![0xffu8; at_limit(limit, 0)];
    let update = PendoMetadataUpdate {
        update_id: "after-the-poison".into(),
        entity: PendoEntity::Visitor,
        entity_id: "visitor-1".into(),
        field_group: "custom".into(),
        values: [("plan".to_string(), FieldValue::Text("gold".into()))]
            .into_iter()
            .collect(),
        timestamp: "2026-11-29T00:00:00.000Z".into(),
        origin: UpdateOrigin {
            source: "test".into(),
            ..Default::default()
        },
        list_changes: vec![],
    };
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    send_all(
        &canonical,
        vec![
            (key.clone(), poison, vec![]),
            (key.clone(), codec.encode_to_vec(&update).unwrap(), vec![]),
        ],
    )
    .await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-sink"],
        ops,
        dir.path().join("ps.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let reached = server
        .wait_for(Duration::from_secs(40), |s| {
            s.state().get(&(
                "visitor".to_string(),
                "visitor-1".to_string(),
                "plan".to_string(),
            )) == Some(&json!("gold"))
        })
        .await;
    assert!(
        reached,
        "the update after the poison reaches Pendo\n{}",
        role.logs()
    );
    one_cut_dead_letter(
        &format!("{prefix}.dlq.pendo-sink"),
        "undecodable",
        limit,
        &role,
    );
    still_running_then_stop(role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_admission_refuses_ids_and_kinds_that_would_bloat_records() {
    require_kafka();
    const SECRET: &str = "poison-webhook-secret-0123";
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("poison-wh");
    let port = free_port();
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &format!("[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\n"),
    );
    apply_topics(&config);
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-webhook"],
        ops,
        dir.path().join("wh.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("http://127.0.0.1:{port}/webhooks/pendo"))
            .header("authorization", format!("Bearer {SECRET}"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
    };
    let ok = |v: &str| json!({"event": "featureClicked", "visitorId": v, "browserTime": 1764330000000u64});
    // A half-megabyte id (the record key) and kind (a header) in the second element (the body
    // stays under the Pendo webhook's 1 MiB `max_body_bytes`).
    let mut long_id = ok(&"v".repeat(500_000));
    long_id["event"] = json!("k".repeat(400_000));
    let r = post(json!([ok("v-1"), long_id])).await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("array element 1") && text.contains("visitorId") && text.len() < 1000,
        "{text}"
    );
    let mut long_kind = ok("v-2");
    long_kind["event"] = json!("k".repeat(300));
    let r = post(long_kind).await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("event is 300 bytes"), "{text}");
    // An id exactly at the bound is fine.
    let r = post(ok(&"v".repeat(1024))).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let raw = read_committed(
        &format!("{prefix}.pendo.raw.webhook"),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(raw.len(), 1, "only the accepted event is stored");
    assert_eq!(raw[0].key().map(<[u8]>::len), Some(1024));
    let dlq = read_committed(
        &format!("{prefix}.dlq.pendo-webhook"),
        2,
        Duration::from_secs(10),
    );
    assert_eq!(reasons(&dlq).len(), 2);
    for m in &dlq {
        assert!(
            header(m, "dlq-reason")
                .unwrap()
                .contains("bytes are accepted"),
            "{:?}",
            header(m, "dlq-reason")
        );
    }
    check_dead_letters(&dlq, RAW_MAX_MESSAGE_BYTES as usize);
    let metrics = role.metrics().await;
    assert!(
        metrics.contains(
            "pendo_segment_webhook_rejects_total{reason=\"field_too_long\",role=\"pendo-webhook\"} 2"
        ),
        "{metrics}"
    );
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pendo_sink_refuses_audience_lists_its_state_topic_cannot_hold() {
    require_kafka();
    let server = PendoTestServer::start(PendoServerConfig::default().with_fields(
        "visitor",
        "custom",
        &["segment_audiences", "plan"],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("poison-al");
    let extra = pendo_sink_settings(
        &server,
        "[transform_segment]
field_mode = \"audience_list\"
",
    );
    let (config, ops) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    let update = |n: usize, list: Option<String>, plan: Option<&str>| PendoMetadataUpdate {
        update_id: format!("u-{n}"),
        entity: PendoEntity::Visitor,
        entity_id: "visitor-al".into(),
        field_group: "custom".into(),
        values: plan
            .map(|p| ("plan".to_string(), FieldValue::Text(p.into())))
            .into_iter()
            .collect(),
        timestamp: "2026-11-29T00:00:00.000Z".into(),
        origin: UpdateOrigin {
            source: "test".into(),
            ..Default::default()
        },
        list_changes: list
            .map(
                |key| pendo_segment::schema::pendo_metadata_update::ListChange {
                    field: "segment_audiences".into(),
                    key,
                    member: true,
                },
            )
            .into_iter()
            .collect(),
    };
    // Four audiences of 300 KB: together they would make the visitor's list state 1.2 MB, more
    // than one record of the state topic holds. (Records of one entity in one job are one
    // Pendo item, so the item is refused whole: all four are dead-lettered.)
    let records: Vec<TestRecord<'_>> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(n, c)| {
            (
                Some("visitor-al".to_string()),
                codec
                    .encode_to_vec(&update(n, Some(c.repeat(300_000)), None))
                    .unwrap(),
                vec![],
            )
        })
        .collect();
    let canonical = format!("{prefix}.canonical.pendo-updates");
    send_all(&canonical, records).await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-sink"],
        ops,
        dir.path().join("al.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let dlq = read_committed(
        &format!("{prefix}.dlq.pendo-sink"),
        4,
        Duration::from_secs(30),
    );
    assert_eq!(
        reasons(&dlq),
        vec!["audience_lists_too_large"; 4],
        "{}",
        role.logs()
    );
    // Then an ordinary update of the same visitor: the partition is not stuck.
    send_all(
        &canonical,
        vec![(
            Some("visitor-al".to_string()),
            codec.encode_to_vec(&update(9, None, Some("gold"))).unwrap(),
            vec![],
        )],
    )
    .await;
    let reached = server
        .wait_for(Duration::from_secs(30), |s| {
            s.state().get(&(
                "visitor".to_string(),
                "visitor-al".to_string(),
                "plan".to_string(),
            )) == Some(&json!("gold"))
        })
        .await;
    assert!(
        reached,
        "the update after the poison arrives\n{}",
        role.logs()
    );
    assert_eq!(
        server.state().get(&(
            "visitor".to_string(),
            "visitor-al".to_string(),
            "segment_audiences".to_string(),
        )),
        None,
        "the lists that do not fit were not applied"
    );
    check_dead_letters(&dlq, DEFAULT_MAX_MESSAGE_BYTES);
    still_running_then_stop(role).await;
}
