//! The Segment sink's HTTP client against the Segment-compatible test server: authentication,
//! gzip, how every kind of answer is classified, and isolating a refused event by splitting.
//! No Kafka needed.

mod support;

use std::time::Duration;

use pendo_segment::config::{SegmentConfig, SegmentRegion};
use pendo_segment::http::outcome::Outcome;
use pendo_segment::schema::segment_call::{CallBody, CallContext, Origin, SegmentCall};
use pendo_segment::secret::Secret;
use pendo_segment::sinks::segment::SegmentSinkConfig;
use pendo_segment::sinks::segment::batch::{BatchLimits, SegmentBatch, sent_at_now};
use pendo_segment::sinks::segment::encoding::{EncodedEvent, encode_event};
use pendo_segment::sinks::segment::service::{SegmentClient, SendResult};
use support::segment_server::*;

fn track(i: usize, properties: String) -> SegmentCall {
    SegmentCall {
        message_id: format!("pendo-test-{i}"),
        timestamp: "2026-11-29T02:59:00.000Z".into(),
        user_id: Some(format!("user-{i}")),
        anonymous_id: None,
        context: CallContext {
            group_id: Some("acct-1".into()),
            ..CallContext::default()
        },
        integrations: None,
        origin: Origin::default(),
        body: CallBody::Track {
            event: "Report Exported".into(),
            properties,
        },
    }
}

fn event(i: usize) -> EncodedEvent {
    encode_event(&mut track(i, r#"{"format":"csv"}"#.into()), 32_000).unwrap()
}

fn batch(events: impl IntoIterator<Item = EncodedEvent>) -> SegmentBatch {
    let mut b = SegmentBatch::new(BatchLimits::from_config(&SegmentSinkConfig::default()));
    for e in events {
        b.push(e).unwrap();
    }
    b
}

fn client_with(
    endpoint: String,
    write_key: &str,
    tweak: impl FnOnce(&mut SegmentSinkConfig),
) -> SegmentClient {
    let segment = SegmentConfig {
        region: SegmentRegion::Us,
        endpoint: Some(endpoint),
        write_key: Secret::inline(write_key),
    };
    let mut sink = SegmentSinkConfig::default();
    tweak(&mut sink);
    sink.validate().unwrap();
    SegmentClient::new(&segment, &sink).unwrap()
}

fn client(server: &SegmentTestServer) -> SegmentClient {
    client_with(format!("{}/", server.url()), server.write_key(), |_| {})
}

async fn server_with(faults: FaultPlan) -> SegmentTestServer {
    SegmentTestServer::start(SegmentServerConfig {
        faults,
        ..SegmentServerConfig::default()
    })
    .await
}

#[tokio::test]
async fn a_batch_is_delivered_with_basic_auth_and_library_context() {
    let server = server_with(FaultPlan::none()).await;
    let c = client(&server);
    assert_eq!(c.target(), server.batch_url());
    let b = batch((0..3).map(event));
    let sent_at = sent_at_now();
    let r = c.send(b.body(&sent_at), false).await;
    assert_eq!(r.status, Some(200), "{}", r.describe());
    assert_eq!(r.outcome(), Outcome::Success);
    assert!(r.error.is_none() && r.retry_after.is_none());
    let events = server.events();
    assert_eq!(events.len(), 3);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.message_id.as_deref(),
            Some(format!("pendo-test-{i}").as_str())
        );
        assert_eq!(e.item["context"]["library"]["name"], "pendo-segment");
        assert_eq!(e.item["timestamp"], "2026-11-29T02:59:00.000Z");
    }
    let req = &server.requests()[0];
    assert_eq!(req.sent_at.as_deref(), Some(sent_at.as_str()));
    assert_eq!(req.body_bytes, b.bytes());
    assert!(!req.gzip);
}

#[tokio::test]
async fn a_wrong_write_key_is_an_auth_failure() {
    let server = server_with(FaultPlan::none()).await;
    let c = client_with(server.url(), "not-the-key", |_| {});
    let r = c.send(batch([event(1)]).body(&sent_at_now()), false).await;
    assert_eq!(r.status, Some(401));
    assert_eq!(r.outcome(), Outcome::AuthFailure);
    assert!(
        r.body_excerpt.contains("Invalid write key"),
        "{}",
        r.body_excerpt
    );
    assert!(!r.describe().contains("not-the-key"));
    assert_eq!(server.unauthorized(), 1);
    assert_eq!(server.event_count(), 0);
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_measured_uncompressed() {
    let server = server_with(FaultPlan::none()).await;
    let c = client(&server);
    let b = batch((0..200).map(event));
    let r = c.send(b.body(&sent_at_now()), true).await;
    assert_eq!(r.outcome(), Outcome::Success, "{}", r.describe());
    let req = &server.requests()[0];
    assert!(req.gzip);
    assert_eq!(req.decoded_bytes, b.bytes());
    assert!(
        req.body_bytes < req.decoded_bytes / 4,
        "{} bytes on the wire",
        req.body_bytes
    );
    assert_eq!(server.distinct_count(), 200);
}

#[tokio::test]
async fn an_oversized_event_gets_a_400_and_splitting_isolates_it() {
    let server = server_with(FaultPlan::none()).await;
    let c = client(&server);
    // Bypass the sink's own per-event limit to see what Segment does with a 33 KB event.
    let big = encode_event(
        &mut track(1, format!(r#"{{"blob":"{}"}}"#, "x".repeat(33 * 1024))),
        usize::MAX,
    )
    .unwrap();
    assert!(big.len() > MAX_EVENT_BYTES);
    let b = batch([event(0), big, event(2), event(3), event(4)]);
    let r = c.send(b.body(&sent_at_now()), false).await;
    assert_eq!(r.status, Some(400));
    assert_eq!(r.outcome(), Outcome::Invalid);
    assert!(r.body_excerpt.contains("event limit"), "{}", r.body_excerpt);
    assert_eq!(server.event_count(), 0, "a 400 refuses the whole batch");

    // The sink's reaction: halve until the refused event is alone, deliver the rest.
    let mut pending = vec![b];
    let mut dead: Vec<(String, String)> = Vec::new();
    while let Some(b) = pending.pop() {
        let r = c.send(b.body(&sent_at_now()), false).await;
        match r.outcome() {
            Outcome::Success => {}
            Outcome::Invalid => match b.split() {
                Ok((first, second)) => pending.extend([second, first]),
                Err(single) => {
                    for e in single.into_events() {
                        dead.push((e.message_id, r.body_excerpt.clone()));
                    }
                }
            },
            other => panic!("unexpected {other:?}: {}", r.describe()),
        }
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "pendo-test-1");
    assert!(dead[0].1.contains("invalid_request"), "{}", dead[0].1);
    let mut delivered: Vec<String> = server.distinct_message_ids().into_iter().collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "pendo-test-0",
            "pendo-test-2",
            "pendo-test-3",
            "pendo-test-4"
        ]
    );
}

#[tokio::test]
async fn rate_limiting_is_a_retry_with_a_capped_retry_after() {
    let server = server_with(
        FaultPlan::none()
            .nth(
                1,
                FaultAction::RateLimited {
                    retry_after_secs: 7,
                },
            )
            .nth(
                2,
                FaultAction::RateLimited {
                    retry_after_secs: 1_000,
                },
            ),
    )
    .await;
    let c = client(&server);
    let body = batch([event(1)]).body(&sent_at_now());
    let r = c.send(body.clone(), false).await;
    assert_eq!((r.status, r.outcome()), (Some(429), Outcome::Retry));
    assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
    let r = c.send(body.clone(), false).await;
    assert_eq!(r.retry_after, Some(Duration::from_secs(300)), "capped");
    let capped_lower = client_with(server.url(), server.write_key(), |s| {
        s.retry_after_cap_s = 2
    });
    server.set_faults(FaultPlan::none().nth(
        3,
        FaultAction::RateLimited {
            retry_after_secs: 7,
        },
    ));
    let r = capped_lower.send(body, false).await;
    assert_eq!(r.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn server_errors_are_classified_per_the_policy() {
    let server = server_with(
        FaultPlan::none()
            .nth(1, FaultAction::Status(503))
            .nth(2, FaultAction::Status(500))
            .nth(3, FaultAction::Status(501)),
    )
    .await;
    let c = client(&server);
    let body = batch([event(1)]).body(&sent_at_now());
    let mut results: Vec<SendResult> = Vec::new();
    for _ in 0..4 {
        results.push(c.send(body.clone(), false).await);
    }
    let got: Vec<(Option<u16>, Outcome)> =
        results.iter().map(|r| (r.status, r.outcome())).collect();
    assert_eq!(
        got,
        [
            (Some(503), Outcome::Retry),
            (Some(500), Outcome::Retry),
            (Some(501), Outcome::Misconfigured),
            (Some(200), Outcome::Success),
        ]
    );
    assert!(
        results[0].body_excerpt.contains("HTTP 503"),
        "{}",
        results[0].body_excerpt
    );
    assert_eq!(server.event_count(), 1);
}

#[tokio::test]
async fn a_wrong_endpoint_path_is_misconfiguration_not_invalid_content() {
    let server = server_with(FaultPlan::none()).await;
    let c = client_with(
        format!("{}/segment", server.url()),
        server.write_key(),
        |_| {},
    );
    let r = c.send(batch([event(1)]).body(&sent_at_now()), false).await;
    assert_eq!(r.status, Some(404));
    assert_eq!(r.outcome(), Outcome::Misconfigured);
}

#[tokio::test]
async fn a_connection_reset_has_no_status_and_is_retried() {
    let server = server_with(FaultPlan::none().nth(1, FaultAction::ResetConnection)).await;
    let c = client(&server);
    let body = batch([event(1)]).body(&sent_at_now());
    let r = c.send(body.clone(), false).await;
    assert_eq!(r.status, None);
    assert_eq!(r.outcome(), Outcome::Retry);
    assert!(r.error.is_some(), "{r:?}");
    assert!(
        r.describe().starts_with("no response: "),
        "{}",
        r.describe()
    );
    let again = c.send(body, false).await;
    assert_eq!(again.outcome(), Outcome::Success, "{}", again.describe());
}

#[tokio::test]
async fn a_request_that_never_gets_an_answer_times_out_and_is_retried() {
    let server = server_with(FaultPlan::none().nth(1, FaultAction::Timeout)).await;
    let c = client_with(server.url(), server.write_key(), |s| {
        s.request_timeout_ms = 300
    });
    let r = c.send(batch([event(1)]).body(&sent_at_now()), false).await;
    assert_eq!(r.status, None);
    assert_eq!(r.outcome(), Outcome::Retry);
    assert!(
        r.elapsed >= Duration::from_millis(290) && r.elapsed < Duration::from_secs(5),
        "{:?}",
        r.elapsed
    );
}
