//! Pendo Segments as the reverse flow's second target, end to end against a real broker and the
//! Pendo test server: Segment audience track events (`Audience Entered` / `Audience Exited`) on
//! `segment.raw.webhook` -> `transform-segment` (audience target `pendo_segment`) ->
//! `canonical.pendo-segment-changes` (keyed by audience key) -> `pendo-sink` -> the Pendo Segment
//! endpoints (`POST /api/v1/segment/upload`, `PATCH /api/v1/segment/{id}/visitor`).
//!
//! 2,500 entries and 300 exits end as exactly the right 2,200 members, with the server answering
//! 409 to every third segment request, a sink SIGKILLed right after it created the segment and
//! restarted, at most 4 requests per 1,000 changes, the segment created once, no two requests
//! to it in flight at once; a visitor Pendo refuses inside the multistatus is the only dead
//! letter, one answered 409 inside the multistatus is retried. Freshness (produce -> applied in
//! Pendo) is printed as p50/p99.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde_json::json;
use support::pendo_server::{PendoServerConfig, PendoTestServer};
use support::produce::produce_all;
use support::*;

const AUDIENCE: &str = "power_users_30d";
const SEGMENT_NAME: &str = "Segment: power_users_30d";
const ENTRIES: usize = 2_500;
const REJECTED: &str = "user-rejected";
const ITEM_CONFLICT: &str = "user-00007";

fn visitor(i: usize) -> String {
    format!("user-{i:05}")
}

/// 300 of the 2,500 leave again.
fn exits(i: usize) -> bool {
    i % 25 < 3
}

fn audience_event(user: &str, entered: bool, n: usize) -> Vec<u8> {
    let name = if entered {
        "Audience Entered"
    } else {
        "Audience Exited"
    };
    serde_json::to_vec(&json!({
        "type": "track",
        "event": name,
        "messageId": format!("personas_seg_{n}_{user}_{entered}"),
        "userId": user,
        "properties": {"audience_key": AUDIENCE, AUDIENCE: entered},
        "context": {"personas": {"computation_class": "audience", "computation_id": "aud_9Pp",
            "computation_key": AUDIENCE, "namespace": "spa_1", "space_id": "spa_1"}},
        "timestamp": "2026-11-29T10:00:00.000Z"
    }))
    .unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Waits until the broker's metadata shows every topic the roles read with all its partitions
/// (a role started right after `topics apply` may otherwise find a topic not there yet).
async fn wait_for_topics(prefix: &str) {
    for t in [
        "idmap.visitor-to-user",
        "segment.raw.webhook",
        "canonical.pendo-updates",
        "canonical.pendo-segment-changes",
        "state.pendo-segments",
    ] {
        let name = format!("{prefix}.{t}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while partition_count(&name) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never got its partitions"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audience_ends_as_exactly_its_members_in_one_pendo_segment_through_409s_and_a_kill() {
    require_kafka();
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    server.set_segment_conflict_every(3);
    // Requests take a while, so a kill lands mid-way and overlaps would show.
    server.set_segment_delay(Duration::from_millis(150));
    server.set_segment_rejected_visitors(&[REJECTED]);
    server.set_segment_item_conflicts(&[ITEM_CONFLICT], 1);

    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("pseg");
    let extra = format!(
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [transform_segment]\naudience_targets = {{ \"{AUDIENCE}\" = \"pendo_segment\" }}\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 200\nsegment_linger_ms = 1500\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        server.url(),
        server.integration_key()
    );
    let start_role = |role: &str, n: usize| role_process(dir.path(), &prefix, &extra, role, n);
    let (config, _) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    wait_for_topics(&prefix).await;
    let mut transform = start_role("transform-segment", 0);
    transform.wait_ready(Duration::from_secs(60)).await;
    let mut sink = start_role("pendo-sink", 0);
    sink.wait_ready(Duration::from_secs(60)).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let raw = format!("{prefix}.segment.raw.webhook");

    // 1. The audience's first sync: 2,500 entries in a burst.
    let mut produced_at: HashMap<(String, bool), i64> = HashMap::new();
    let entries: Vec<(Option<String>, Vec<u8>)> = (0..ENTRIES)
        .map(|i| (Some(visitor(i)), audience_event(&visitor(i), true, 0)))
        .collect();
    let t0 = now_ms();
    for i in 0..ENTRIES {
        produced_at.insert((visitor(i), true), t0);
    }
    produce_all(&producer, &raw, entries).await;

    // 2. SIGKILL the sink right after it created the segment (the rest of the burst is not
    // written yet), then restart it.
    assert!(
        server
            .wait_for(Duration::from_secs(90), |s| s.segments_created() >= 1)
            .await,
        "the segment was never created\n{}\n{}",
        transform.logs(),
        sink.logs()
    );
    let members_at_kill = server.segment_members(SEGMENT_NAME).len();
    sink.kill9();
    let requests_at_kill = server.segment_requests().len();
    sink = start_role("pendo-sink", 1);
    // The visitor Pendo refuses enters only now, so it reaches Pendo in a PATCH (answered per
    // visitor) and not in the creation upload (which answers no more than the new id): the raw
    // topic is keyed by user, so an entry produced with the burst may be mapped among the first
    // thousand and be part of the creation.
    produce_all(
        &producer,
        &raw,
        vec![(
            Some(REJECTED.to_string()),
            audience_event(REJECTED, true, 0),
        )],
    )
    .await;

    // 3. Once every entry is in Pendo, 300 exits.
    let all_in = server
        .wait_for(Duration::from_secs(120), |s| {
            s.segment_members(SEGMENT_NAME).len() >= ENTRIES
        })
        .await;
    assert!(
        all_in,
        "{} of {ENTRIES} members\n{}",
        server.segment_members(SEGMENT_NAME).len(),
        sink.logs()
    );
    let exit_records: Vec<(Option<String>, Vec<u8>)> = (0..ENTRIES)
        .filter(|i| exits(*i))
        .map(|i| (Some(visitor(i)), audience_event(&visitor(i), false, 1)))
        .collect();
    assert_eq!(exit_records.len(), 300);
    let t1 = now_ms();
    for i in (0..ENTRIES).filter(|i| exits(*i)) {
        produced_at.insert((visitor(i), false), t1);
    }
    produce_all(&producer, &raw, exit_records).await;

    let want: HashSet<String> = (0..ENTRIES).filter(|i| !exits(*i)).map(visitor).collect();
    assert_eq!(want.len(), 2_200);
    let reached = server
        .wait_for(Duration::from_secs(120), |s| {
            s.segment_members(SEGMENT_NAME) == want
        })
        .await;
    if !reached {
        let members = server.segment_members(SEGMENT_NAME);
        let extra: Vec<_> = members.difference(&want).collect();
        let missing: Vec<_> = want.difference(&members).collect();
        panic!(
            "{} members, {} wanted; extra {extra:?}, missing {missing:?}\ntransformer:\n{}\nsink:\n{}",
            members.len(),
            want.len(),
            transform.logs(),
            sink.logs()
        );
    }
    // Nothing late changes it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        server.segment_members(SEGMENT_NAME),
        want,
        "exactly the 2,200 members"
    );

    // Created once, never raced, within the request budget.
    assert_eq!(server.segments_created(), 1, "the segment is created once");
    assert_eq!(server.segments().len(), 1);
    assert_eq!(
        server.segment_overlaps(),
        Vec::<String>::new(),
        "no two requests to one segment in flight"
    );
    let requests = server.segment_requests();
    // Every request to a segment endpoint counts (create, PATCH, and a list when a creation
    // is recovered by name).
    let writes = requests.len();
    let conflicts = requests.iter().filter(|r| r.status == 409).count();
    let changes = ENTRIES + 1 + 300;
    let per_1000 = writes as f64 / (changes as f64 / 1000.0);
    assert!(
        conflicts >= writes / 3,
        "every third request was answered 409"
    );
    assert!(
        per_1000 <= 4.0,
        "{writes} segment requests for {changes} changes = {per_1000:.2} per 1,000\n{requests:#?}"
    );

    // The refused visitor is the only dead letter, with Pendo's message.
    let dlq = read_committed(
        &format!("{prefix}.dlq.pendo-sink"),
        1,
        Duration::from_secs(5),
    );
    assert_eq!(dlq.len(), 1, "one dead letter");
    assert_eq!(header(&dlq[0], "dlq-reason").as_deref(), Some("rejected"));
    assert!(
        header(&dlq[0], "dlq-detail")
            .unwrap_or_default()
            .contains("visitor not found")
    );
    assert!(!server.segment_members(SEGMENT_NAME).contains(REJECTED));
    // The visitor answered 409 inside the multistatus was retried on its own and is a member.
    assert!(want.contains(ITEM_CONFLICT));

    // Freshness: produce -> the first application at or after it, per change.
    let applied = server.segment_applied_all(SEGMENT_NAME);
    let mut latencies: Vec<i64> = Vec::new();
    let mut exit_latencies: Vec<i64> = Vec::new();
    for ((v, member), at) in &produced_at {
        let ops = applied.get(v).cloned().unwrap_or_default();
        let first = ops
            .iter()
            .find(|(m, t)| m == member && *t >= *at)
            .map(|(_, t)| t - at)
            .unwrap_or_else(|| panic!("{v} {member}: never applied ({ops:?})"));
        latencies.push(first);
        if !member {
            exit_latencies.push(first);
        }
    }
    latencies.sort_unstable();
    exit_latencies.sort_unstable();
    println!(
        "pendo segments: {changes} changes ({ENTRIES} entries + 1 refused, 300 exits), {writes} segment requests \
         ({conflicts} answered 409) = {per_1000:.2} per 1,000 changes; killed after {requests_at_kill} requests \
         with {members_at_kill} members; created {} time(s), {} overlaps",
        server.segments_created(),
        server.segment_overlaps().len()
    );
    println!(
        "freshness produce -> applied in Pendo: all {} changes p50 {} ms p99 {} ms (entries burst includes the SIGKILL \
         and restart); exits (no kill) p50 {} ms p99 {} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&exit_latencies, 0.5),
        percentile(&exit_latencies, 0.99)
    );
    for r in &requests {
        println!("  {:>6} {:>5} visitors -> {}", r.kind, r.visitors, r.status);
    }

    for mut role in [transform, sink] {
        role.sigterm();
        assert!(role.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// A crash between Pendo's creation answer and the id being stored leaves the
/// `{"segmentId": null}` marker in `state.pendo-segments`: the restarted sink finds the segment
/// by name instead of creating a second one. An audience whose first changes are only exits
/// costs no request at all (nothing to remove from a segment that does not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unrecorded_creation_is_recovered_by_name_and_removals_before_creation_are_no_ops() {
    require_kafka();
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("psegr");
    let extra = format!(
        "[transform_segment]\naudience_target = \"pendo_segment\"\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nsegment_linger_ms = 300\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n",
        server.url(),
        server.integration_key()
    );
    let (config, ops) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    wait_for_topics(&prefix).await;
    // The state a sink killed right after Pendo created the segment leaves behind.
    let existing = server.create_segment(SEGMENT_NAME, &["user-00001"]);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    produce_all(
        &producer,
        &format!("{prefix}.state.pendo-segments"),
        [(
            Some(AUDIENCE.to_string()),
            serde_json::to_vec(&json!({"segmentId": null, "name": SEGMENT_NAME})).unwrap(),
        )],
    )
    .await;
    let raw = format!("{prefix}.segment.raw.webhook");
    let mut events: Vec<(Option<String>, Vec<u8>)> = (1..=20)
        .map(|i| (Some(visitor(i)), audience_event(&visitor(i), true, 0)))
        .collect();
    // Another audience, exits only: never created, never requested.
    for i in 0..5 {
        let user = visitor(i);
        let mut e: serde_json::Value =
            serde_json::from_slice(&audience_event(&user, false, 0)).unwrap();
        e["properties"] = json!({"audience_key": "churned", "churned": false});
        e["messageId"] = json!(format!("churned-{i}"));
        events.push((Some(user), serde_json::to_vec(&e).unwrap()));
    }
    produce_all(&producer, &raw, events).await;

    let mut roles = RoleProcess::start(
        &config,
        &["run", "--role", "transform-segment", "--role", "pendo-sink"],
        ops,
        dir.path().join("roles.log"),
    );
    roles.wait_ready(Duration::from_secs(60)).await;
    let want: HashSet<String> = (1..=20).map(visitor).collect();
    assert!(
        server
            .wait_for(Duration::from_secs(60), |s| s.segment_members(SEGMENT_NAME)
                == want)
            .await,
        "{:?}\n{}",
        server.segment_members(SEGMENT_NAME).len(),
        roles.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.segments_created(), 1, "recovered, not created again");
    let segments = server.segments();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert!(segments.contains_key(&existing));
    let kinds: Vec<&str> = server.segment_requests().iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&"list"), "looked up by name: {kinds:?}");
    assert!(!kinds.contains(&"create"), "{kinds:?}");
    assert!(
        server
            .segment_requests()
            .iter()
            .all(|r| r.segment.as_deref() != Some("Segment: churned")),
        "exits only: no request for the other audience"
    );
    assert!(server.segment_overlaps().is_empty());
    roles.sigterm();
    assert!(roles.wait_exit(Duration::from_secs(30)).await.success());
}
