//! The `transform-pendo` role against a real broker: golden outputs for every bundled Pendo
//! fixture, dead letters, unknown-kind policies, live id-mapping updates and the `idmap` CLI.
//!
//! Golden files live in `tests/golden/transform-pendo/<fixture>.json`: the Segment calls (as
//! the sink would send them) plus their origin. `PS_UPDATE_GOLDEN=1` rewrites them from what
//! the running transformer produced; review the diff before committing.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pendo_segment::schema::{SegmentCall, SegmentCallCodec, WireFormat};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use support::*;

const RECEIVED_AT: &str = "1764340000000";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transform-pendo")
}

fn producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Produces raw records to `topic` as the webhook connector would (one event per record).
async fn produce_raw(topic: &str, records: &[(Option<String>, Vec<u8>)]) {
    let p = producer();
    for (key, value) in records {
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "received-at",
                value: Some(RECEIVED_AT),
            })
            .insert(rdkafka::message::Header {
                key: "source",
                value: Some("pendo-webhook"),
            });
        let mut r = FutureRecord::to(topic).payload(value).headers(headers);
        if let Some(k) = key {
            r = r.key(k);
        }
        p.send(r, Duration::from_secs(30)).await.expect("produce");
    }
}

/// Every fixture event (arrays split), with the fixture it came from.
fn fixture_events() -> Vec<(String, Value)> {
    let dir = fixtures_dir().join("pendo");
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && n != "index.json")
        .collect();
    names.sort();
    for name in names {
        let v: Value = serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap()).unwrap();
        match v {
            Value::Array(items) => out.extend(items.into_iter().map(|i| (name.clone(), i))),
            v => out.push((name, v)),
        }
    }
    out
}

fn key_of(event: &Value) -> Option<String> {
    event["visitorId"]
        .as_str()
        .or(event["accountId"].as_str())
        .map(str::to_string)
}

/// What a golden file holds for one call.
fn golden_of(call: &SegmentCall) -> Value {
    json!({
        "segment": call.to_segment_json(),
        "origin": {
            "source": call.origin.source,
            "kind": call.origin.kind,
            "visitorId": call.origin.visitor_id,
            "accountId": call.origin.account_id,
            "receivedAt": call.origin.received_at,
        }
    })
}

fn decode_all(records: &[OwnedMessage]) -> Vec<SegmentCall> {
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    records
        .iter()
        .map(|m| {
            let call = codec
                .decode(m.payload().expect("value"))
                .unwrap_or_else(|e| panic!("offset {}: {e}", m.offset()));
            assert_eq!(
                m.key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .as_deref(),
                call.kafka_key(),
                "records are keyed by userId/anonymousId (groupId for group calls)"
            );
            call
        })
        .collect()
}

struct Pipeline {
    _dir: tempfile::TempDir,
    prefix: String,
    config: PathBuf,
    ops_port: u16,
}

impl Pipeline {
    fn new(extra: &str) -> Self {
        require_kafka();
        let dir = tempfile::tempdir().unwrap();
        let prefix = unique("tp");
        let (config, ops_port) = role_config(dir.path(), &prefix, extra);
        apply_topics(&config);
        Self {
            _dir: dir,
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
            &["run", "--role", "transform-pendo"],
            self.ops_port,
            self._dir.path().join(format!("{name}.log")),
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_matches_its_golden_output_and_bad_input_is_dead_lettered() {
    let p = Pipeline::new("");
    let events = fixture_events();
    let mut records: Vec<(Option<String>, Vec<u8>)> = events
        .iter()
        .map(|(_, e)| (key_of(e), serde_json::to_vec(e).unwrap()))
        .collect();
    let malformed = std::fs::read(fixtures_dir().join("pendo/malformed.txt")).unwrap();
    records.push((None, malformed.clone()));
    produce_raw(&p.topic("pendo.raw.webhook"), &records).await;

    let role = p.start("golden").await;
    let update = std::env::var("PS_UPDATE_GOLDEN").is_ok();
    let golden: BTreeMap<String, Vec<Value>> = if update {
        BTreeMap::new()
    } else {
        std::fs::read_dir(golden_dir())
            .expect("tests/golden/transform-pendo exists")
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let v: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                (name, v)
            })
            .collect()
    };
    let expected: usize = golden.values().map(Vec::len).sum();
    let out = read_committed(
        &p.topic("canonical.segment-calls"),
        if update { usize::MAX } else { expected },
        Duration::from_secs(if update { 8 } else { 30 }),
    );
    let calls = decode_all(&out);

    if update {
        // Group calls by the fixture whose event they came from (kind + event time).
        let mut by_fixture: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for call in &calls {
            let fixture = events
                .iter()
                .find(|(_, e)| {
                    e["event"] == call.origin.kind
                        // Fixtures carry epoch seconds (webhooks) or ms (poller rows).
                        && e["timestamp"].as_i64().map(|t| if t < 100_000_000_000 { t * 1000 } else { t })
                            == humantime::parse_rfc3339(&call.timestamp).ok().map(|t| {
                                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
                            })
                })
                .map(|(f, _)| f.clone())
                .expect("call from a fixture");
            by_fixture.entry(fixture).or_default().push(golden_of(call));
        }
        std::fs::create_dir_all(golden_dir()).unwrap();
        for (fixture, calls) in by_fixture {
            std::fs::write(
                golden_dir().join(&fixture),
                serde_json::to_string_pretty(&calls).unwrap() + "\n",
            )
            .unwrap();
        }
        panic!("golden files rewritten from the transformer's output; review and commit them");
    }

    let actual: HashMap<String, Value> = calls
        .iter()
        .map(|c| (c.message_id.clone(), golden_of(c)))
        .collect();
    assert_eq!(actual.len(), calls.len(), "no messageId twice");
    for (fixture, expected_calls) in &golden {
        for want in expected_calls {
            let id = want["segment"]["messageId"].as_str().unwrap();
            let got = actual.get(id).unwrap_or_else(|| {
                panic!("{fixture}: no call with messageId {id}; got {actual:#?}")
            });
            assert_eq!(
                got, want,
                "{fixture}: call {id} differs from its golden output"
            );
        }
    }
    assert_eq!(
        calls.len(),
        expected,
        "exactly the golden calls, nothing more"
    );
    // Every fixture except the malformed one has a golden file.
    let fixtures: std::collections::BTreeSet<&String> = events.iter().map(|(f, _)| f).collect();
    for f in fixtures {
        assert!(golden.contains_key(f), "fixture {f} has no golden output");
    }

    // The malformed body is in the DLQ with its reason and where it came from.
    let dlq = read_committed(&p.topic("dlq.transform-pendo"), 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1, "exactly one dead letter");
    assert_eq!(
        dlq[0].payload(),
        Some(&malformed[..]),
        "original bytes kept"
    );
    assert_eq!(
        header(&dlq[0], "dlq-reason").as_deref(),
        Some("invalid_json")
    );
    assert!(header(&dlq[0], "dlq-detail").unwrap().contains("not JSON"));
    assert_eq!(
        header(&dlq[0], "dlq-source-topic"),
        Some(p.topic("pendo.raw.webhook"))
    );
    assert!(header(&dlq[0], "dlq-source-offset").is_some());
    assert_eq!(header(&dlq[0], "received-at").as_deref(), Some(RECEIVED_AT));

    // `inspect` shows the same calls, decoded, as the sink will send them.
    let out = p.cli(&["inspect", "canonical.segment-calls", "--brief"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(lines.lines().count(), expected, "{lines}");
    assert!(
        lines.contains("track \"Feature Clicked\" userId=vis-2002"),
        "{lines}"
    );
    assert!(
        lines.contains("group \"acct-fabrikam\" anonymousId=pendo-account:acct-fabrikam"),
        "{lines}"
    );
    let out = p.cli(&["inspect", "dlq.transform-pendo"]);
    let dlq_json: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(dlq_json["headers"]["dlq-reason"], "invalid_json");

    let metrics = role.metrics().await;
    assert!(
        metrics.contains(
            "pendo_segment_transform_unknown_kinds_total{kind=\"frustrationSignal\",stage=\"transform-pendo\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "pendo_segment_dead_letters_total{reason=\"invalid_json\",stage=\"transform-pendo\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_send_unmappable_events_to_the_dlq_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = pendo_segment::transform::mapping::DEFAULT_PENDO_MAPPING
        .replace("policy = \"pass_through\"", "policy = \"dlq\"")
        .replace("deny_guide_ids = []", "deny_guide_ids = [\"gd_secret\"]");
    let mapping_path = write_file(dir.path(), "mapping.toml", &mapping);
    let p = Pipeline::new(&format!(
        "[transform_pendo]\nmapping_file = \"{}\"\nunmapped_visitor = \"dlq\"\n",
        mapping_path.display()
    ));
    let base = json!({"event": "featureClicked", "visitorId": "vis-unmapped", "accountId": "acct-1",
        "timestamp": 1764330099, "uniqueId": "x", "properties": {"featureId": "ft_1"}});
    let with = |patch: Value| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown_kind", with(json!({"event": "frustrationSignal"}))),
        ("unmapped_visitor", with(json!({}))),
        (
            "no_identity",
            with(json!({"visitorId": null, "accountId": null})),
        ),
        ("no_event_time", with(json!({"timestamp": "yesterday"}))),
        (
            "too_large",
            with(
                json!({"visitorId": "_PENDO_T_anon", "properties": {"featureId": "f", "blob": "x".repeat(40_000)}}),
            ),
        ),
        ("not_an_object", b"[1,2,3]".to_vec()),
    ];
    // A filtered event and an anonymous visitor (never needs a mapping) pass the policies.
    let filtered = with(
        json!({"event": "guideDisplayed", "visitorId": "_PENDO_T_anon", "properties": {"guideId": "gd_secret"}}),
    );
    let ok = with(json!({"visitorId": "_PENDO_T_anon", "uniqueId": "ok"}));
    let mut records: Vec<(Option<String>, Vec<u8>)> = cases
        .iter()
        .map(|(_, v)| (Some("k".to_string()), v.clone()))
        .collect();
    records.push((Some("k".into()), filtered));
    records.push((Some("k".into()), ok));
    produce_raw(&p.topic("pendo.raw.webhook"), &records).await;
    let role = p.start("policies").await;

    let dlq = read_committed(
        &p.topic("dlq.transform-pendo"),
        cases.len(),
        Duration::from_secs(30),
    );
    let reasons: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "dlq-reason").unwrap())
        .collect();
    let want: Vec<String> = cases.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(
        reasons, want,
        "each bad event dead-lettered once, in order, with its reason"
    );
    for (m, (_, raw)) in dlq.iter().zip(&cases) {
        assert_eq!(m.payload(), Some(&raw[..]), "original bytes");
        assert!(!header(m, "dlq-detail").unwrap().is_empty());
    }
    let out = read_committed(
        &p.topic("canonical.segment-calls"),
        1,
        Duration::from_secs(10),
    );
    let calls = decode_all(&out);
    assert_eq!(calls.len(), 1, "only the valid event is mapped: {calls:#?}");
    assert_eq!(calls[0].anonymous_id.as_deref(), Some("_PENDO_T_anon"));
    let metrics = role.metrics().await;
    assert!(
        metrics.contains("outcome=\"filtered\",stage=\"transform-pendo\"} 1"),
        "{metrics}"
    );
}

/// Events with a sequence number, for the live-update test.
fn seq_events(from: u64, n: u64) -> Vec<(Option<String>, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let v = json!({"event": "featureClicked", "visitorId": "vis-live", "accountId": "acct-1",
                "timestamp": 1764330000 + i, "uniqueId": format!("live-{i}"),
                "properties": {"featureId": "ft_1", "seq": i}});
            (Some("vis-live".to_string()), serde_json::to_vec(&v).unwrap())
        })
        .collect()
}

fn seq_of(call: &SegmentCall) -> u64 {
    let pendo_segment::schema::CallBody::Track { properties, .. } = &call.body else {
        panic!("track expected")
    };
    serde_json::from_str::<Value>(properties).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idmap_cli_and_live_updates_change_the_user_id_of_following_events() {
    let p = Pipeline::new("");
    let dir = tempfile::tempdir().unwrap();

    // An invalid file loads nothing and names every bad line.
    let bad = write_file(
        dir.path(),
        "bad.csv",
        "visitor_id,user_id\nvis-live,user-old\nvis-2\n,user-3\n",
    );
    let out = p.cli(&["idmap", "load", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.csv:3:") && stderr.contains("bad.csv:4:"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was loaded"), "{stderr}");
    let out = p.cli(&["idmap", "get", "vis-live"]);
    assert_eq!(out.status.code(), Some(1), "nothing was published");

    let good = write_file(
        dir.path(),
        "good.csv",
        "vis-live,user-old\nvis-other,user-x\n",
    );
    let out = p.cli(&["idmap", "load", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("published 2/2"));
    let out = p.cli(&["idmap", "get", "vis-live"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "user-old");

    // Start-up reads the mapping before mapping events.
    let raw = p.topic("pendo.raw.webhook");
    produce_raw(&raw, &seq_events(0, 20)).await;
    let role = p.start("live").await;
    let canonical = p.topic("canonical.segment-calls");
    let first = decode_all(&read_committed(&canonical, 20, Duration::from_secs(30)));
    assert_eq!(first.len(), 20);
    assert!(
        first
            .iter()
            .all(|c| c.user_id.as_deref() == Some("user-old"))
    );
    assert!(
        role.metrics()
            .await
            .contains("pendo_segment_idmap_entries 2")
    );

    // A mapping published mid-stream applies to the events that follow it.
    let newer = write_file(dir.path(), "newer.csv", "vis-live,user-new\n");
    assert!(
        p.cli(&["idmap", "load", newer.to_str().unwrap()])
            .status
            .success()
    );
    let mut next = 20;
    let mut switched_at = None;
    for _ in 0..60 {
        produce_raw(&raw, &seq_events(next, 10)).await;
        next += 10;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = decode_all(&read_committed(
            &canonical,
            next as usize,
            Duration::from_secs(10),
        ));
        if let Some(c) = calls
            .iter()
            .filter(|c| c.user_id.as_deref() == Some("user-new"))
            .min_by_key(|c| seq_of(c))
        {
            let switch = seq_of(c);
            switched_at = Some(switch);
            // Once switched, every later event carries the new id; none before it does.
            for c in &calls {
                let want = if seq_of(c) >= switch {
                    "user-new"
                } else {
                    "user-old"
                };
                assert_eq!(c.user_id.as_deref(), Some(want), "seq {}", seq_of(c));
            }
            break;
        }
    }
    assert!(switched_at.is_some(), "the new mapping was never applied");

    // A tombstone deletes the mapping: later events fall back to the unmapped policy.
    assert!(p.cli(&["idmap", "delete", "vis-live"]).status.success());
    let out = p.cli(&["idmap", "get", "vis-live"]);
    assert_eq!(out.status.code(), Some(1), "deleted");
    let mut fell_back = false;
    for _ in 0..60 {
        produce_raw(&raw, &seq_events(next, 5)).await;
        next += 5;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = decode_all(&read_committed(
            &canonical,
            next as usize,
            Duration::from_secs(10),
        ));
        if calls
            .iter()
            .any(|c| c.user_id.as_deref() == Some("vis-live"))
        {
            fell_back = true;
            break;
        }
    }
    assert!(fell_back, "the tombstone was never applied");
    assert!(
        role.metrics()
            .await
            .contains("pendo_segment_idmap_updates_total{op=\"delete\"} 1")
    );
}

#[test]
fn an_invalid_mapping_file_is_refused_at_start_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(
        dir.path(),
        "mapping.toml",
        "version = 1\n\n[kinds.featureClicked.track]\nevent = \"Feature Clicked\"\nset = { when = \"$yesterday\" }\n",
    );
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[transform_pendo]\nmapping_file = \"{}\"\n",
            bad.display()
        ),
    );
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["mapping", "check"][..],
        &["run", "--role", "transform-pendo"][..],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("mapping.toml:5:") && stderr.contains("unknown expression"),
            "{args:?}: {stderr}"
        );
    }
    let default = run(&["mapping", "default"]);
    assert!(default.status.success());
    let shipped = write_file(
        dir.path(),
        "shipped.toml",
        &String::from_utf8_lossy(&default.stdout),
    );
    let out = run(&["mapping", "check", shipped.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tracking plan in Segment Protocols' shape, with a rule per policy.
fn tracking_plan_json() -> Value {
    json!({"rules": [
        {"type": "TRACK", "key": "Feature Clicked", "version": 1, "jsonSchema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"properties": {"type": "object", "properties": {
                "feature_id": {"type": "string"},
                "feature_name": {"type": "string"},
                "page_id": {"type": "string"},
                "url": {"type": "string"},
                "plan": {"type": "string", "enum": ["free", "pro"]}
            }, "required": ["feature_id"]}},
            "required": ["properties"]
        }},
        {"type": "TRACK", "key": "Guide Seen", "version": 3, "jsonSchema": {
            "properties": {"properties": {"type": "object", "properties": {
                "guide_id": {"type": "string"},
                "guide_step_id": {"type": "string"}
            }, "required": ["guide_id"], "additionalProperties": false}}
        }},
        {"type": "IDENTIFY", "key": null, "jsonSchema": {
            "properties": {"traits": {"type": "object", "properties": {
                "nps_score": {"type": "integer", "minimum": 0, "maximum": 10}
            }}}
        }}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_plan_policies_count_drop_and_dead_letter_and_every_call_carries_the_mapping_fingerprint()
 {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_file(
        dir.path(),
        "plan.json",
        &serde_json::to_string_pretty(&tracking_plan_json()).unwrap(),
    );
    // Feature Clicked: allow (counted); Guide Seen: drop_property; identify: dlq.
    let p = Pipeline::new(&format!(
        "[transform_pendo.tracking_plan]\nfile = \"{}\"\non_violation = \"allow\"\n\
         on_unplanned_event = \"allow\"\n\
         event_policies = {{ \"Guide Seen\" = \"drop_property\", identify = \"dlq\" }}\n",
        plan.display()
    ));
    let fixture = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("pendo").join(name)).unwrap())
            .unwrap()
    };
    let feature = fixture("feature-clicked.json");
    let mut feature_gold = feature.clone();
    feature_gold["uniqueId"] = json!("feature-gold");
    feature_gold["properties"]["plan"] = json!("gold");
    let guide = fixture("guide-displayed.json");
    let nps = fixture("nps-submitted.json");
    let mut nps_bad = nps.clone();
    nps_bad["uniqueId"] = json!("nps-eleven");
    nps_bad["timestamp"] = json!(1764331500);
    nps_bad["properties"]["nps"]["rating"] = json!(11);
    let records: Vec<(Option<String>, Vec<u8>)> = [&feature, &feature_gold, &guide, &nps_bad, &nps]
        .iter()
        .map(|e| (key_of(e), serde_json::to_vec(e).unwrap()))
        .collect();
    produce_raw(&p.topic("pendo.raw.webhook"), &records).await;
    let role = p.start("plan").await;

    // 1 + 1 + 1 + 2 calls; the NPS event with a score of 11 is dead-lettered whole.
    let out = read_committed(
        &p.topic("canonical.segment-calls"),
        5,
        Duration::from_secs(30),
    );
    let calls = decode_all(&out);
    let props = |c: &SegmentCall| -> Value {
        match &c.body {
            pendo_segment::schema::CallBody::Track { properties, .. } => {
                serde_json::from_str(properties).unwrap()
            }
            pendo_segment::schema::CallBody::Identify { traits } => {
                serde_json::from_str(traits).unwrap()
            }
            other => panic!("unexpected call {other:?}"),
        }
    };
    let summary: Vec<(String, Value)> = calls
        .iter()
        .map(|c| {
            (
                pendo_segment::transform::tracking_plan::event_of(c).to_string(),
                props(c),
            )
        })
        .collect();
    let golden = |name: &str| -> Vec<Value> {
        serde_json::from_slice::<Vec<Value>>(&std::fs::read(golden_dir().join(name)).unwrap())
            .unwrap()
            .into_iter()
            .map(|c| {
                let s = &c["segment"];
                s.get("properties").or(s.get("traits")).unwrap().clone()
            })
            .collect()
    };
    let feature_props = golden("feature-clicked.json").remove(0);
    let mut gold_props = feature_props.clone();
    gold_props["plan"] = json!("gold");
    let nps_calls = golden("nps-submitted.json");
    // The events are keyed by visitor, so they sit on different partitions: compare as sets.
    let by_text = |v: &Vec<(String, Value)>| {
        let mut t: Vec<String> = v.iter().map(|(e, p)| format!("{e} {p}")).collect();
        t.sort();
        t
    };
    assert_eq!(
        by_text(&summary),
        by_text(&vec![
            // Satisfies its rule: unchanged.
            ("Feature Clicked".to_string(), feature_props),
            // Breaks `enum` under `allow`: sent as it is.
            ("Feature Clicked".to_string(), gold_props),
            // `guide_name` is not in the plan: dropped, the rest kept.
            (
                "Guide Seen".to_string(),
                json!({"guide_id": "gd_onboard_01", "guide_step_id": "st_01"})
            ),
            ("identify".to_string(), nps_calls[0].clone()),
            ("NPS Survey Responded".to_string(), nps_calls[1].clone()),
        ]),
        "every call, only the NPS with score 11 missing"
    );

    let dlq = read_committed(&p.topic("dlq.transform-pendo"), 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].payload(),
        Some(&serde_json::to_vec(&nps_bad).unwrap()[..])
    );
    assert_eq!(
        header(&dlq[0], "dlq-reason").as_deref(),
        Some("tracking_plan_violation")
    );
    let detail = header(&dlq[0], "dlq-detail").unwrap();
    assert!(
        detail.contains("maximum `identify` at traits.nps_score: 11 is not <= 10"),
        "the rule is named: {detail}"
    );

    let metrics = role.metrics().await;
    for (event, rule, n) in [
        ("Feature Clicked", "enum", 1),
        ("Guide Seen", "additional_properties", 1),
        ("identify", "maximum", 1),
        // Not in the plan, sent and counted (`on_unplanned_event = "allow"`), from both NPS
        // events: the refused event's other calls are still checked.
        ("NPS Survey Responded", "unplanned_event", 2),
    ] {
        let line = format!(
            "pendo_segment_tracking_plan_violations_total{{event=\"{event}\",rule=\"{rule}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("pendo_segment_tracking_plan_violations_total{"))
            .count(),
        4,
        "nothing else is a violation: {metrics}"
    );
    assert!(
        metrics.contains(
            "pendo_segment_dead_letters_total{reason=\"tracking_plan_violation\",stage=\"transform-pendo\"} 1"
        ),
        "{metrics}"
    );
    // The running fingerprint, and the same value on every canonical record.
    let info = metrics
        .lines()
        .find(|l| l.starts_with("pendo_segment_mapping_info{"))
        .unwrap_or_else(|| panic!("no mapping_info: {metrics}"));
    let label = |name: &str| -> String {
        let start = info.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        info[start..start + 16].to_string()
    };
    let fingerprint = label("fingerprint");
    assert_ne!(label("tracking_plan"), "none", "{info}");
    assert_ne!(
        fingerprint,
        label("mapping"),
        "the plan is part of it: {info}"
    );
    for m in &out {
        assert_eq!(
            header(m, "mapping-fingerprint").as_deref(),
            Some(fingerprint.as_str())
        );
    }
    // `tail` shows it with each record.
    let tail = p.cli(&["tail", "canonical.segment-calls", "--brief"]);
    let text = String::from_utf8_lossy(&tail.stdout);
    assert!(text.contains(&fingerprint), "{text}");
}

#[test]
fn an_invalid_tracking_plan_is_refused_at_start_naming_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = tracking_plan_json();
    // A keyword the checker does not implement must not be silently ignored.
    plan["rules"][1]["jsonSchema"]["properties"]["properties"]["oneOf"] = json!([]);
    let plan = write_file(dir.path(), "plan.json", &plan.to_string());
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[transform_pendo.tracking_plan]\nfile = \"{}\"\n",
            plan.display()
        ),
    );
    for args in [
        &["mapping", "check"][..],
        &["run", "--role", "transform-pendo"][..],
    ] {
        let out = std::process::Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("plan.json: rules[1].jsonSchema.properties.properties.oneOf: keyword `oneOf` is not supported"),
            "{args:?}: {stderr}"
        );
    }
    // The valid plan passes `mapping check`, which prints both fingerprints.
    let good = write_file(dir.path(), "plan.json", &tracking_plan_json().to_string());
    assert_eq!(good, plan);
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["mapping", "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tracking plan is valid: 3 rules, fingerprint "),
        "{stderr}"
    );
}
