//! The `transform-segment` role against a real broker: every Segment audience fixture gives
//! exactly its expected `PendoMetadataUpdate` on `canonical.pendo-updates` (read_committed),
//! the non-audience event gives none (counted), bad records go to `dlq.transform-segment` with
//! reasons, the reverse id mapping (loaded at start-up and followed live) picks the visitor,
//! identity learning publishes the mapping, SIGKILLs mid-stream lose or duplicate nothing, and
//! `[[transform_segment.rules]]` map ordinary identify/track calls to exactly their updates.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pendo_segment::schema::pendo_metadata_update::{FieldValue, PendoEntity};
use pendo_segment::schema::{
    IdMappingCodec, PendoMetadataUpdate, PendoMetadataUpdateCodec, WireFormat,
};
use pendo_segment::transform::message_id::MessageIdBuilder;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};
use support::produce::produce_all;
use support::*;

const ROLE: &str = "transform-segment";

struct Pipeline {
    dir: tempfile::TempDir,
    prefix: String,
    config: PathBuf,
    ops_port: u16,
}

impl Pipeline {
    fn new(extra: &str) -> Self {
        require_kafka();
        let dir = tempfile::tempdir().unwrap();
        let prefix = unique("ts");
        let (config, ops_port) = role_config(dir.path(), &prefix, extra);
        apply_topics(&config);
        Self {
            dir,
            prefix,
            config,
            ops_port,
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    async fn start(&self, name: &str) -> RoleProcess {
        let mut p = RoleProcess::start(
            &self.config,
            &["run", "--role", ROLE],
            self.ops_port,
            self.dir.path().join(format!("{name}.log")),
        );
        p.wait_ready(Duration::from_secs(60)).await;
        p
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run cli")
    }

    /// Publishes `visitor -> user` mappings with `idmap load`.
    fn load_idmap(&self, csv: &str) {
        let file = write_file(self.dir.path(), &unique("idmap"), csv);
        let out = self.cli(&["idmap", "load", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn produce(&self, records: Vec<Vec<u8>>) {
        let p: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let key = |v: &[u8]| {
            let e: Value = serde_json::from_slice(v).ok()?;
            e["userId"]
                .as_str()
                .or(e["anonymousId"].as_str())
                .map(str::to_string)
        };
        produce_all(
            &p,
            &self.topic("segment.raw.webhook"),
            records.into_iter().map(|v| (key(&v), v)),
        )
        .await;
    }
}

fn decode_all(records: &[OwnedMessage]) -> Vec<PendoMetadataUpdate> {
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    records
        .iter()
        .map(|m| {
            let u = codec
                .decode(m.payload().expect("value"))
                .unwrap_or_else(|e| panic!("offset {}: {e}", m.offset()));
            assert_eq!(
                m.key(),
                Some(u.entity_id.as_bytes()),
                "updates are keyed by the Pendo entity id"
            );
            u
        })
        .collect()
}

/// The fixture events, the Actions batch split as the segment-webhook connector splits it.
fn fixture_events() -> Vec<Value> {
    let dir = fixtures_dir().join("segment");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        match serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap()).unwrap() {
            Value::Array(items) => out.extend(items),
            v => out.push(v),
        }
    }
    out
}

/// What the fixtures must give: (messageId, call type, entity, entity id, key, member, time).
#[allow(clippy::type_complexity)]
fn expected_fixture_updates(
    user_1001_visitor: &str,
) -> Vec<(
    &'static str,
    &'static str,
    PendoEntity,
    String,
    &'static str,
    bool,
    &'static str,
)> {
    use PendoEntity::*;
    vec![
        (
            "personas_9Zz1d4",
            "group",
            Account,
            "acct-fabrikam".into(),
            "enterprise_at_risk",
            true,
            "2026-11-27T09:00:00.000Z",
        ),
        (
            "personas_b01",
            "track",
            Visitor,
            user_1001_visitor.into(),
            "power_users_30d",
            true,
            "2026-11-27T10:00:00.000Z",
        ),
        (
            "personas_b02",
            "track",
            Visitor,
            "user-2002".into(),
            "power_users_30d",
            false,
            "2026-11-27T10:00:01.000Z",
        ),
        (
            "personas_2hK3aa91",
            "identify",
            Visitor,
            "user-8841".into(),
            "trial_users_expiring",
            true,
            "2026-11-27T08:00:00.000Z",
        ),
        (
            "personas_7Qp0b2",
            "track",
            Visitor,
            "user-8841".into(),
            "clicked_q4_upgrade_email",
            true,
            "2026-11-27T08:05:00.000Z",
        ),
        (
            "personas_8Rr9c3",
            "track",
            Visitor,
            "user-8841".into(),
            "clicked_q4_upgrade_email",
            false,
            "2026-12-04T08:05:00.000Z",
        ),
    ]
}

fn update_id(call_type: &str, message_id: &str, key: &str, member: bool) -> String {
    let mut b = MessageIdBuilder::new("segment-audience", call_type);
    b.part(message_id.as_bytes())
        .part(key.as_bytes())
        .part(&[u8::from(member)]);
    b.finish("segment")
}

fn metric_line(metrics: &str, needle: &str) -> bool {
    metrics.lines().any(|l| l == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_give_exactly_their_updates_with_reverse_mapping_learning_and_dead_letters() {
    let p = Pipeline::new("");
    // An existing mapping: user-1001 is Pendo visitor pv-1001 (read at start-up).
    p.load_idmap("pv-1001,user-1001\n");

    let mut records: Vec<Vec<u8>> = fixture_events()
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    // Identity learning: a Pendo visitor id trait next to a userId.
    records.push(
        serde_json::to_vec(&json!({
            "type": "identify", "messageId": "learn-1", "userId": "user-learn",
            "traits": {"pendo_visitor_id": "pv-learned", "beta_testers": true},
            "context": {"personas": {"computation_class": "audience", "computation_key": "beta_testers"}},
            "timestamp": "2026-11-27T12:00:00.000Z"
        }))
        .unwrap(),
    );
    let malformed = b"{\"type\":\"track\",\"event\":".to_vec();
    let anonymous_less =
        br#"{"type":"track","event":"Audience Entered","properties":{"audience_key":"k","k":true}}"#
            .to_vec();
    records.push(malformed.clone());
    records.push(anonymous_less.clone());
    p.produce(records).await;

    let role = p.start("fixtures").await;
    let expected = expected_fixture_updates("pv-1001");
    let out = read_committed(
        &p.topic("canonical.pendo-updates"),
        expected.len() + 1,
        Duration::from_secs(30),
    );
    let updates = decode_all(&out);
    assert_eq!(
        updates.len(),
        expected.len() + 1,
        "exactly one update per audience event, none for the non-audience one: {updates:#?}"
    );
    let by_message: HashMap<String, &PendoMetadataUpdate> = updates
        .iter()
        .map(|u| (u.origin.segment_message_id.clone().unwrap(), u))
        .collect();
    for (message_id, call_type, entity, entity_id, key, member, ts) in &expected {
        let u = by_message
            .get(*message_id)
            .unwrap_or_else(|| panic!("no update for {message_id}: {updates:#?}"));
        assert_eq!(u.update_id, update_id(call_type, message_id, key, *member));
        assert_eq!(u.entity, *entity, "{message_id}");
        assert_eq!(&u.entity_id, entity_id, "{message_id}");
        assert_eq!(u.field_group, "custom");
        assert_eq!(
            u.values,
            BTreeMap::from([(format!("segment_{key}"), FieldValue::Bool(*member))]),
            "{message_id}"
        );
        assert_eq!(u.timestamp, *ts);
        assert_eq!(u.origin.source, "segment.webhook");
        assert_eq!(u.origin.audience_key.as_deref(), Some(*key));
    }
    let learned = by_message["learn-1"];
    assert_eq!(learned.entity_id, "pv-learned", "the named visitor id wins");
    assert_eq!(
        learned.values,
        BTreeMap::from([("segment_beta_testers".into(), FieldValue::Bool(true))])
    );

    // The learned mapping was published in the same transaction.
    let idmap = read_committed(
        &p.topic("idmap.visitor-to-user"),
        2,
        Duration::from_secs(20),
    );
    let codec = IdMappingCodec::new(WireFormat::SingleObject);
    let mappings: Vec<_> = idmap
        .iter()
        .map(|m| codec.decode(m.payload().unwrap()).unwrap())
        .collect();
    let m = mappings
        .iter()
        .find(|m| m.visitor_id == "pv-learned")
        .unwrap_or_else(|| panic!("learned mapping missing: {mappings:?}"));
    assert_eq!(m.user_id, "user-learn");
    assert_eq!(m.source, "segment.webhook");
    assert_eq!(mappings.len(), 2, "{mappings:?}");
    let out = p.cli(&["idmap", "get", "pv-learned"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "user-learn");

    // Bad records: dead letters with reasons and their source, original bytes kept.
    let dlq = read_committed(
        &p.topic("dlq.transform-segment"),
        2,
        Duration::from_secs(20),
    );
    assert_eq!(dlq.len(), 2);
    let mut reasons: Vec<(String, Vec<u8>)> = dlq
        .iter()
        .map(|m| {
            assert_eq!(
                header(m, "dlq-source-topic"),
                Some(p.topic("segment.raw.webhook"))
            );
            assert_eq!(header(m, "dlq-stage").as_deref(), Some(ROLE));
            assert!(!header(m, "dlq-detail").unwrap().is_empty());
            (
                header(m, "dlq-reason").unwrap(),
                m.payload().unwrap().to_vec(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("invalid_json".to_string(), malformed),
            ("missing_identity".to_string(), anonymous_less)
        ]
    );

    let metrics = role.metrics().await;
    for line in [
        "pendo_segment_transform_events_total{kind=\"track\",outcome=\"ignored\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_events_total{kind=\"track\",outcome=\"mapped\",stage=\"transform-segment\"} 4",
        "pendo_segment_transform_events_total{kind=\"group\",outcome=\"mapped\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_events_total{kind=\"identify\",outcome=\"mapped\",stage=\"transform-segment\"} 2",
        "pendo_segment_dead_letters_total{reason=\"invalid_json\",stage=\"transform-segment\"} 1",
        "pendo_segment_dead_letters_total{reason=\"missing_identity\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_calls_total{call=\"id_mapping\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_calls_total{call=\"account_update\",stage=\"transform-segment\"} 1",
    ] {
        assert!(metric_line(&metrics, line), "{line} missing in\n{metrics}");
    }
    role.sigterm();
    let mut role = role;
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

fn audience_entered(message_id: &str, user: &str, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "track", "event": "Audience Entered", "messageId": message_id, "userId": user,
        "properties": {"audience_key": key, key: true},
        "context": {"personas": {"computation_class": "audience", "computation_key": key}},
        "timestamp": "2026-11-27T10:00:00.000Z"
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_users_follow_the_policy_and_live_mappings_apply() {
    let p =
        Pipeline::new("[transform_segment]\nunmapped_user = \"dlq\"\nfield_prefix = \"aud_\"\n");
    let role = p.start("live").await;
    p.produce(vec![audience_entered("m-1", "user-new", "vip")])
        .await;
    let dlq = read_committed(
        &p.topic("dlq.transform-segment"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        header(&dlq[0], "dlq-reason").as_deref(),
        Some("unmapped_user")
    );

    // The mapping appears while the role runs: the next event of that user uses it.
    p.load_idmap("pv-new,user-new\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !metric_line(&role.metrics().await, "pendo_segment_idmap_entries 1") {
        assert!(Instant::now() < deadline, "mapping never followed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.produce(vec![audience_entered("m-2", "user-new", "vip")])
        .await;
    let updates = decode_all(&read_committed(
        &p.topic("canonical.pendo-updates"),
        1,
        Duration::from_secs(20),
    ));
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].entity_id, "pv-new");
    assert_eq!(
        updates[0].values,
        BTreeMap::from([("aud_vip".into(), FieldValue::Bool(true))])
    );
    let mut role = role;
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

/// Events this process has handled so far (its own counter, from `/metrics`).
async fn handled(role: &RoleProcess) -> u64 {
    role.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("pendo_segment_transform_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_yields_every_update_exactly_once() {
    const EVENTS: usize = 20_000;
    let p = Pipeline::new("");
    p.produce(
        (0..EVENTS)
            .map(|i| {
                audience_entered(
                    &format!("m-{i}"),
                    &format!("user-{}", i % 2_000),
                    &format!("aud_{}", i % 7),
                )
            })
            .collect(),
    )
    .await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng::new(seed);
    println!("kill seed {seed}");
    for kill in 1..=2 {
        let mut role = p.start(&format!("run{kill}")).await;
        let at = 1_000 + rng.below(5_000);
        let deadline = Instant::now() + Duration::from_secs(120);
        while handled(&role).await < at {
            assert!(Instant::now() < deadline, "no progress:\n{}", role.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        role.kill9();
        println!("kill {kill}: SIGKILL after {at} events handled by this run");
    }
    let mut role = p.start("final").await;
    let out = read_committed(
        &p.topic("canonical.pendo-updates"),
        EVENTS,
        Duration::from_secs(60),
    );
    let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
    let mut ids: HashMap<String, usize> = HashMap::new();
    for m in &out {
        *ids.entry(codec.decode(m.payload().unwrap()).unwrap().update_id)
            .or_default() += 1;
    }
    let dups: usize = ids.values().map(|c| c - 1).sum();
    assert_eq!(ids.len(), EVENTS, "every event arrived");
    assert_eq!(dups, 0, "no event arrived twice");
    assert_eq!(out.len(), EVENTS);
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

const RULES_CONFIG: &str = r#"
[transform_segment]

[[transform_segment.rules]]
name = "user-traits"
match = { type = "identify" }
target = "visitor"
fields = { plan = "traits.plan", seats = "traits.seats", phone = "traits.phone" }

[[transform_segment.rules]]
name = "plan-upgraded"
match = { type = "track", event = "Plan Upgraded" }
target = "visitor"
fields = { plan = "properties.plan", mrr = "properties.mrr" }
"#;

fn rule_update_id(
    call_type: &str,
    message_id: &str,
    rule: &str,
    values: &[(&str, &str)],
) -> String {
    let mut b = MessageIdBuilder::new("segment-rule", call_type);
    b.part(message_id.as_bytes())
        .part(rule.as_bytes())
        .part(b"custom");
    for (field, value) in values {
        b.part(field.as_bytes()).part(value.as_bytes());
    }
    b.finish("segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_map_identify_and_track_calls_to_exactly_their_updates() {
    let p = Pipeline::new(RULES_CONFIG);
    // Rule writes resolve visitors like audience events: through the reverse id mapping.
    p.load_idmap("pv-8841,user-8841\n");
    let rules = fixtures_dir().join("segment").join("rules");
    let identify = std::fs::read(rules.join("identify-traits.json")).unwrap();
    let track = std::fs::read(rules.join("track-plan-upgraded.json")).unwrap();
    let unmatched = std::fs::read(fixtures_dir().join("segment/non-audience-track.json")).unwrap();
    let object_value = serde_json::to_vec(&json!({
        "type": "identify", "messageId": "bad-plan", "userId": "user-8841",
        "traits": {"plan": {"tier": "pro"}}, "timestamp": "2026-11-27T12:00:00.000Z"
    }))
    .unwrap();
    p.produce(vec![identify, track, unmatched, object_value.clone()])
        .await;

    let role = p.start("rules").await;
    let updates = decode_all(&read_committed(
        &p.topic("canonical.pendo-updates"),
        2,
        Duration::from_secs(30),
    ));
    // Produced straight to the topic: no connector `received-at` header.
    let origin = |m: &str| pendo_segment::schema::pendo_metadata_update::UpdateOrigin {
        source: "segment.webhook".into(),
        segment_message_id: Some(m.into()),
        audience_key: None,
        received_at: None,
    };
    let mut got = updates;
    got.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    assert_eq!(
        got,
        vec![
            PendoMetadataUpdate {
                update_id: rule_update_id(
                    "identify",
                    "ajs-next-1764331000-bb22",
                    "user-traits",
                    &[("plan", "tgrowth"), ("seats", "l25")],
                ),
                entity: PendoEntity::Visitor,
                entity_id: "pv-8841".into(),
                field_group: "custom".into(),
                values: BTreeMap::from([
                    ("plan".into(), FieldValue::Text("growth".into())),
                    ("seats".into(), FieldValue::Long(25)),
                ]),
                timestamp: "2026-11-27T11:30:00.000Z".into(),
                origin: origin("ajs-next-1764331000-bb22"),
                list_changes: vec![],
            },
            PendoMetadataUpdate {
                update_id: rule_update_id(
                    "track",
                    "ajs-next-1764331200-cc33",
                    "plan-upgraded",
                    &[("mrr", "d1499.5"), ("plan", "tenterprise")],
                ),
                entity: PendoEntity::Visitor,
                entity_id: "pv-8841".into(),
                field_group: "custom".into(),
                values: BTreeMap::from([
                    ("mrr".into(), FieldValue::Double(1499.5)),
                    ("plan".into(), FieldValue::Text("enterprise".into())),
                ]),
                timestamp: "2026-11-27T11:40:00.000Z".into(),
                origin: origin("ajs-next-1764331200-cc33"),
                list_changes: vec![],
            },
        ],
        "exactly one update per rule-mapped event, none for the unmatched one"
    );
    // An object where a rule expects a value: the event is dead-lettered, naming the rule.
    let dlq = read_committed(
        &p.topic("dlq.transform-segment"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        header(&dlq[0], "dlq-reason").as_deref(),
        Some("invalid_rule_value")
    );
    assert!(
        header(&dlq[0], "dlq-detail")
            .unwrap()
            .contains("user-traits")
    );
    assert_eq!(dlq[0].payload().unwrap(), object_value.as_slice());

    let metrics = role.metrics().await;
    for line in [
        "pendo_segment_transform_events_total{kind=\"identify\",outcome=\"mapped\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_events_total{kind=\"track\",outcome=\"mapped\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_events_total{kind=\"track\",outcome=\"ignored\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_events_total{kind=\"identify\",outcome=\"dead_lettered\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_calls_total{call=\"visitor_update\",stage=\"transform-segment\"} 2",
        "pendo_segment_transform_rule_fields_total{field=\"phone\",result=\"missing\",rule=\"user-traits\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_rule_fields_total{field=\"mrr\",result=\"written\",rule=\"plan-upgraded\",stage=\"transform-segment\"} 1",
        "pendo_segment_transform_rule_fields_total{field=\"plan\",result=\"invalid\",rule=\"user-traits\",stage=\"transform-segment\"} 1",
        "pendo_segment_dead_letters_total{reason=\"invalid_rule_value\",stage=\"transform-segment\"} 1",
    ] {
        assert!(metric_line(&metrics, line), "{line} missing in\n{metrics}");
    }
    let mut role = role;
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());

    // A restart re-reads nothing: the offsets were committed with the updates.
    let mut again = p.start("rules-restart").await;
    let after = read_committed(
        &p.topic("canonical.pendo-updates"),
        3,
        Duration::from_secs(5),
    );
    assert_eq!(after.len(), 2, "no update written twice");
    again.sigterm();
    assert!(again.wait_exit(Duration::from_secs(30)).await.success());
}
