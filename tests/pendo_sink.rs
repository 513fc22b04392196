//! The Pendo sink end to end against a real broker and the Pendo-compatible test server:
//! `PendoMetadataUpdate`s on `canonical.pendo-updates` -> role `pendo-sink` -> bulk metadata
//! writes; coalescing of an audience backfill, injected faults, per-item failures and SIGKILL.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pendo_segment::schema::pendo_metadata_update::{FieldValue, PendoEntity, UpdateOrigin};
use pendo_segment::schema::{PendoMetadataUpdate, PendoMetadataUpdateCodec, WireFormat};
use rdkafka::Message;
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};
use support::pendo_server::{PendoFault, PendoFaultPlan, PendoServerConfig, PendoTestServer};
use support::produce::produce_all;
use support::*;

type State = HashMap<(String, String, String), Value>;

fn producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .create()
        .expect("producer")
}

fn update(
    n: usize,
    entity: PendoEntity,
    id: &str,
    group: &str,
    fields: &[(&str, FieldValue)],
) -> PendoMetadataUpdate {
    PendoMetadataUpdate {
        update_id: format!("u-{n}"),
        entity,
        entity_id: id.into(),
        field_group: group.into(),
        values: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        timestamp: "2026-11-29T00:00:00.000Z".into(),
        origin: UpdateOrigin {
            source: "test".into(),
            ..Default::default()
        },
        list_changes: vec![],
    }
}

fn json_of(v: &FieldValue) -> Value {
    match v {
        FieldValue::Null => Value::Null,
        FieldValue::Bool(b) => json!(b),
        FieldValue::Long(n) => json!(n),
        FieldValue::Double(d) => json!(d),
        FieldValue::Text(s) => json!(s),
        FieldValue::List(l) => json!(l),
    }
}

/// Produces `updates` keyed by entity id (so one visitor's updates keep their order) and
/// returns the final state they must leave in Pendo.
async fn produce_updates(prefix: &str, updates: &[PendoMetadataUpdate]) -> State {
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    let mut want = State::new();
    let records: Vec<_> = updates
        .iter()
        .map(|u| {
            let kind = match u.entity {
                PendoEntity::Visitor => "visitor",
                PendoEntity::Account => "account",
            };
            for (k, v) in &u.values {
                want.insert((kind.into(), u.entity_id.clone(), k.clone()), json_of(v));
            }
            (Some(u.entity_id.clone()), codec.encode_to_vec(u).unwrap())
        })
        .collect();
    produce_all(
        &producer(),
        &format!("{prefix}.canonical.pendo-updates"),
        records,
    )
    .await;
    want
}

fn sink_config(server: &PendoTestServer, extra: &str) -> String {
    format!(
        "[pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 300\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n{extra}",
        server.url(),
        server.integration_key()
    )
}

fn start(
    dir: &std::path::Path,
    prefix: &str,
    server: &PendoTestServer,
    extra: &str,
    log: &str,
) -> RoleProcess {
    start_with(dir, prefix, &sink_config(server, extra), log)
}

/// [`start`] with the role's whole configuration section text.
fn start_with(dir: &std::path::Path, prefix: &str, config: &str, log: &str) -> RoleProcess {
    let (config, ops) = role_config(dir, prefix, config);
    apply_topics(&config);
    RoleProcess::start(
        &config,
        &["run", "--role", "pendo-sink"],
        ops,
        dir.join(log),
    )
}

async fn wait_state(server: &PendoTestServer, want: &State, role: &RoleProcess, timeout: Duration) {
    let reached = server
        .wait_for(timeout, |s| {
            let st = s.state();
            want.iter().all(|(k, v)| st.get(k) == Some(v))
        })
        .await;
    assert!(
        reached,
        "final state not reached ({} of {} fields set); statuses {:?}\n{}",
        server.state().len(),
        want.len(),
        server.status_counts(),
        role.logs()
    );
    // Nothing but the expected fields, with the expected values.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(&server.state(), want);
}

fn backfill_server() -> PendoServerConfig {
    PendoServerConfig::default()
        .with_fields("visitor", "custom", &["segment_trial", "plan", "rank"])
        .with_fields("visitor", "agent", &["segment_audiences"])
        .with_fields("account", "custom", &["tier"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_and_accounts_get_their_final_values_and_unknown_fields_are_dead_lettered() {
    require_kafka();
    let server = PendoTestServer::start(backfill_server()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("psink");
    let (config, ops) = role_config(dir.path(), &prefix, &sink_config(&server, ""));
    apply_topics(&config);
    let mut updates = Vec::new();
    for i in 0..10 {
        let id = format!("v{i}");
        updates.push(update(
            updates.len(),
            PendoEntity::Visitor,
            &id,
            "custom",
            &[("segment_trial", FieldValue::Bool(true))],
        ));
        updates.push(update(
            updates.len(),
            PendoEntity::Visitor,
            &id,
            "custom",
            &[
                ("segment_trial", FieldValue::Bool(i % 2 == 0)),
                ("plan", FieldValue::Text(format!("p{i}"))),
            ],
        ));
        updates.push(update(
            updates.len(),
            PendoEntity::Visitor,
            &id,
            "agent",
            &[(
                "segment_audiences",
                FieldValue::List(vec!["trial".into(), format!("a{i}")]),
            )],
        ));
    }
    for i in 0..5 {
        updates.push(update(
            updates.len(),
            PendoEntity::Account,
            &format!("acct{i}"),
            "custom",
            &[("tier", FieldValue::Text("silver".into()))],
        ));
        updates.push(update(
            updates.len(),
            PendoEntity::Account,
            &format!("acct{i}"),
            "custom",
            &[("tier", FieldValue::Text(format!("gold{i}")))],
        ));
    }
    let mut want = produce_updates(&prefix, &updates).await;
    // A field Pendo does not have (dead-lettered alone, by Pendo's per-item answer) and a
    // record that is not Avro (dead-lettered by the sink).
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    // Three records of one visitor coalesced into one item, the middle one writing a field
    // Pendo does not have: Pendo refuses the item; the sink sends the three again one by one,
    // so only the middle one is dead-lettered and the last good value wins.
    let mixed = [
        update(
            900,
            PendoEntity::Visitor,
            "v-mixed",
            "custom",
            &[("plan", FieldValue::Text("good".into()))],
        ),
        update(
            901,
            PendoEntity::Visitor,
            "v-mixed",
            "custom",
            &[
                ("plan", FieldValue::Text("bad".into())),
                ("not_registered_either", FieldValue::Long(1)),
            ],
        ),
        update(
            902,
            PendoEntity::Visitor,
            "v-mixed",
            "custom",
            &[("rank", FieldValue::Long(7))],
        ),
    ];
    // Kept as produced: the DLQ must hold these very bytes (an Avro map's entries are written
    // in no fixed order, so encoding again may give other bytes).
    let mixed_bytes: Vec<Vec<u8>> = mixed
        .iter()
        .map(|u| codec.encode_to_vec(u).unwrap())
        .collect();
    produce_all(
        &producer(),
        &format!("{prefix}.canonical.pendo-updates"),
        mixed_bytes
            .iter()
            .map(|b| (Some("v-mixed".to_string()), b.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    want.insert(
        ("visitor".into(), "v-mixed".into(), "plan".into()),
        json!("good"),
    );
    want.insert(
        ("visitor".into(), "v-mixed".into(), "rank".into()),
        json!(7),
    );
    let bad = update(
        999,
        PendoEntity::Visitor,
        "v-bad",
        "custom",
        &[("not_registered", FieldValue::Bool(true))],
    );
    produce_all(
        &producer(),
        &format!("{prefix}.canonical.pendo-updates"),
        vec![
            (
                Some("v-bad".to_string()),
                codec.encode_to_vec(&bad).unwrap(),
            ),
            (None, b"not avro".to_vec()),
        ],
    )
    .await;

    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-sink"],
        ops,
        dir.path().join("role.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    wait_state(&server, &want, &role, Duration::from_secs(60)).await;
    assert!(server.verifies() >= 1, "the key is verified at start-up");
    assert_eq!(server.unauthorized(), 0);

    let dlq = read_committed(
        &format!("{prefix}.dlq.pendo-sink"),
        3,
        Duration::from_secs(20),
    );
    let mut reasons: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "dlq-reason").unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons, vec!["rejected", "rejected", "undecodable"]);
    let rejected: Vec<_> = dlq
        .iter()
        .filter(|m| header(m, "dlq-reason").as_deref() == Some("rejected"))
        .collect();
    let bad_alone = rejected
        .iter()
        .find(|m| m.key() == Some(&b"v-bad"[..]))
        .expect("v-bad dead-lettered");
    assert!(
        header(bad_alone, "dlq-detail")
            .unwrap()
            .contains("not_registered")
    );
    // Of the coalesced three, exactly the refused record, byte for byte.
    let mixed_dead = rejected
        .iter()
        .find(|m| m.key() == Some(&b"v-mixed"[..]))
        .expect("the refused record of v-mixed dead-lettered");
    assert_eq!(mixed_dead.payload(), Some(mixed_bytes[1].as_slice()));
    assert!(
        header(mixed_dead, "dlq-detail")
            .unwrap()
            .contains("not_registered_either")
    );

    let metrics = role.metrics().await;
    for m in [
        "pendo_segment_pendo_sink_requests_total{status=\"200\"}",
        "pendo_segment_pendo_sink_updates_written_total{entity=\"visitorId\"}",
        "pendo_segment_pendo_sink_updates_coalesced_total",
        "pendo_segment_dead_letters_total{reason=\"rejected\",stage=\"pendo-sink\"}",
    ] {
        assert!(metrics.contains(m), "{m}\n{metrics}");
    }
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

/// 2,000 visitors x 5 updates, interleaved as a re-run backfill would send them.
fn backfill(visitors: usize, repeats: usize) -> Vec<PendoMetadataUpdate> {
    let mut out = Vec::new();
    for j in 0..repeats {
        for i in 0..visitors {
            out.push(update(
                out.len(),
                PendoEntity::Visitor,
                &format!("visitor-{i}"),
                "custom",
                &[
                    ("segment_trial", FieldValue::Bool(j % 2 == 0)),
                    ("rank", FieldValue::Long(j as i64)),
                ],
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_backfill_with_duplicates_writes_each_visitor_once_per_batch() {
    require_kafka();
    let server = PendoTestServer::start(backfill_server()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("psink");
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &sink_config(&server, "max_batch_entities = 10000\nlinger_ms = 3000\n")
            .replace("linger_ms = 300\n", ""),
    );
    apply_topics(&config);
    let updates = backfill(2_000, 5);
    assert_eq!(updates.len(), 10_000);
    let want = produce_updates(&prefix, &updates).await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-sink"],
        ops,
        dir.path().join("role.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    wait_state(&server, &want, &role, Duration::from_secs(90)).await;
    let applied = server.applied_counts();
    assert_eq!(applied.len(), 2_000, "one final value per visitor");
    let writes = server.writes();
    let items: usize = writes.iter().map(|w| w.items).sum();
    eprintln!(
        "backfill: {} write requests, {items} items for 10,000 updates",
        writes.len()
    );
    // Each partition's records fit one batch (3 partitions); a linger that closes a batch
    // early adds at most one more per partition.
    assert!(
        writes.len() <= 6,
        "{} write requests for 10,000 updates",
        writes.len()
    );
    assert!(
        applied.values().all(|&n| n <= 2),
        "a visitor written more than twice"
    );
    assert!(items <= 4_000, "{items} items sent for 2,000 visitors");
    let metrics = role.metrics().await;
    assert!(
        metrics.contains("pendo_segment_pendo_sink_updates_coalesced_total"),
        "{metrics}"
    );
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_conflicts_and_outages_lose_nothing_and_retry_after_is_respected() {
    require_kafka();
    let server = PendoTestServer::start(backfill_server()).await;
    server.set_faults(
        PendoFaultPlan::none()
            .nth(1, PendoFault::TooManyRequests { retry_after_s: 1 })
            .nth(2, PendoFault::Conflict)
            .nth(3, PendoFault::Status(503))
            .range(4, 5, PendoFault::Status(500))
            .nth(6, PendoFault::Conflict)
            .nth(8, PendoFault::Slow(Duration::from_millis(1500))),
    );
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("psink");
    // One request at a time: a request already under way when another gets its 429 would
    // otherwise count as early without being a retry.
    let updates = backfill(300, 3);
    let mut role = start(
        dir.path(),
        &prefix,
        &server,
        "max_batch_entities = 40\nmax_in_flight_requests = 1\n",
        "role.log",
    );
    let want = produce_updates(&prefix, &updates).await;
    role.wait_ready(Duration::from_secs(60)).await;
    wait_state(&server, &want, &role, Duration::from_secs(90)).await;
    let statuses = server.status_counts();
    for s in [429, 409, 503, 500, 200] {
        assert!(statuses.contains_key(&s), "{statuses:?}");
    }
    assert_eq!(
        server.early_requests(),
        0,
        "a request came before Retry-After had passed"
    );
    let metrics = role.metrics().await;
    assert!(
        metrics.contains("pendo_segment_pendo_sink_retries_total{reason=\"retry\"}"),
        "{metrics}"
    );
    // Nothing was dead-lettered.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("pendo_segment_dead_letters_total") && l.contains("pendo-sink")),
        "{metrics}"
    );
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_still_ends_in_the_exact_final_state() {
    require_kafka();
    let server = PendoTestServer::start(backfill_server()).await;
    // Slow answers keep work in flight when the process is killed.
    server.set_faults(PendoFaultPlan::none().range(
        1,
        1_000,
        PendoFault::Slow(Duration::from_millis(150)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("psink");
    let updates = backfill(1_000, 3);
    let mut role = start(
        dir.path(),
        &prefix,
        &server,
        "max_batch_entities = 50\n",
        "role1.log",
    );
    let want = produce_updates(&prefix, &updates).await;
    role.wait_ready(Duration::from_secs(60)).await;
    assert!(
        server
            .wait_for(Duration::from_secs(60), |s| s.write_requests() >= 5)
            .await,
        "{}",
        role.logs()
    );
    role.kill9();
    let before = server.state().len();
    assert!(
        before < want.len(),
        "killed after everything was written; nothing was tested"
    );
    let mut role = start(
        dir.path(),
        &prefix,
        &server,
        "max_batch_entities = 50\n",
        "role2.log",
    );
    role.wait_ready(Duration::from_secs(60)).await;
    wait_state(&server, &want, &role, Duration::from_secs(120)).await;
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_low_load_an_update_reaches_pendo_long_before_the_linger() {
    // With a 20 s linger and commit interval, the drain cadence (default spacing, 50 ms) sends a
    // lone update as soon as the input is drained; turned off, it waits for the linger.
    async fn run(drained_ms: u64) -> (Option<Duration>, RoleProcess) {
        require_kafka();
        let server = PendoTestServer::start(backfill_server()).await;
        let dir = tempfile::tempdir().unwrap();
        let prefix = unique("pendo-cadence");
        let extra = format!(
            "[processing]\ncommit_interval_ms = 20000\ndrained_commit_interval_ms = {drained_ms}\n"
        );
        let config =
            sink_config(&server, "").replace("linger_ms = 300", "linger_ms = 20000") + &extra;
        let mut role = start_with(dir.path(), &prefix, &config, "role.log");
        role.wait_ready(Duration::from_secs(60)).await;
        let started = std::time::Instant::now();
        let want = produce_updates(
            &prefix,
            &[update(
                0,
                PendoEntity::Visitor,
                "v-cadence",
                "custom",
                &[("plan", FieldValue::Text("pro".into()))],
            )],
        )
        .await;
        let reached = server
            .wait_for(Duration::from_secs(5), |s| {
                let st = s.state();
                want.iter().all(|(k, v)| st.get(k) == Some(v))
            })
            .await;
        (reached.then(|| started.elapsed()), role)
    }
    let (on, role) = run(50).await;
    println!("produce -> Pendo, one update, cadence on: {on:?}");
    assert!(
        on.is_some_and(|t| t < Duration::from_secs(4)),
        "the drain cadence writes a lone update within seconds, not at the 20 s linger ({on:?}):\n{}",
        role.logs()
    );
    let (off, _role) = run(0).await;
    assert!(
        off.is_none(),
        "with drained_commit_interval_ms = 0 the update waits for the linger ({off:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_each_request_it_would_send_to_a_file_and_commits() {
    // No Pendo at all: the base URL answers nothing, the requests go to the file.
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("pendo-dry");
    let file = dir.path().join("pendo-requests.jsonl");
    let config = format!(
        "[pendo]\nregion = \"us\"\nbase_url = \"http://127.0.0.1:9\"\nintegration_key = \"k\"\n\
         [pendo_sink]\nlinger_ms = 300\ndry_run_file = \"{}\"\n",
        file.display()
    );
    let mut role = start_with(dir.path(), &prefix, &config, "role.log");
    role.wait_ready(Duration::from_secs(60)).await;
    let updates: Vec<_> = (0..40)
        .map(|i| {
            update(
                i,
                if i % 4 == 0 {
                    PendoEntity::Account
                } else {
                    PendoEntity::Visitor
                },
                &format!("e-{}", i % 10),
                "custom",
                &[("stage", FieldValue::Text(format!("s{i}")))],
            )
        })
        .collect();
    let want = produce_updates(&prefix, &updates).await;
    // Replaying the file's writes in order gives the final state the updates must leave.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        let mut state = State::new();
        for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let l: Value = serde_json::from_str(line).expect("one JSON object per line");
            assert_eq!(l["method"], "POST", "{l}");
            let path = l["path"].as_str().unwrap();
            let kind = if path.contains("/account/") {
                "account"
            } else {
                "visitor"
            };
            assert!(path.starts_with("/api/v1/metadata/"), "{path}");
            for item in l["body"].as_array().unwrap() {
                let id = item["visitorId"]
                    .as_str()
                    .or(item["accountId"].as_str())
                    .unwrap();
                for (k, v) in item["values"].as_object().unwrap() {
                    state.insert((kind.into(), id.into(), k.clone()), v.clone());
                }
            }
        }
        if state == want || std::time::Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(state, want, "the dry-run file replays to the final state");
    // Every write counted as delivered, nothing dead-lettered, and the offsets committed.
    let m = role.metrics().await;
    assert!(!m.contains("pendo_segment_dead_letters_total{"), "{m}");
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
    assert!(
        !role.logs().contains("127.0.0.1:9"),
        "a dry run never calls Pendo:\n{}",
        role.logs()
    );
}
