//! Independent decoder: the records the real `transform-pendo` role writes to
//! `canonical.segment-calls` are decoded by a *different* Avro implementation (Python
//! `fastavro`, via `tests/support/avro_decode.py`) from the files in `schemas/` alone, and every
//! field must equal what the pipeline's own decoder reads from the same bytes.
//!
//! The same holds for the `PendoSegmentChange` records `transform-segment` writes to
//! `canonical.pendo-segment-changes` (Pendo Segments as the reverse flow's target).
//!
//! Needs `python3` with `fastavro` (`python3 -m pip install fastavro`); without it the test
//! fails, it never skips.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use pendo_segment::schema::{
    CallBody, PendoSegmentChangeCodec, SegmentCall, SegmentCallCodec, WireFormat,
};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use support::*;

const RECEIVED_AT: &str = "1764340000000";
const INSTALL: &str = "run `python3 -m pip install fastavro`";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn decoder_script() -> PathBuf {
    repo().join("tests/support/avro_decode.py")
}

/// Panics with install instructions unless `python3` can import `fastavro`.
fn require_fastavro() {
    let out = std::process::Command::new("python3")
        .args(["-c", "import fastavro"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs python3 with fastavro, but python3 did not run ({e}); {INSTALL}"
            )
        });
    assert!(
        out.status.success(),
        "this test needs the Python package fastavro ({}); {INSTALL}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs the independent decoder with `args`; panics with its stderr if it fails.
fn run_decoder(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg(decoder_script())
        .args(["--schemas", repo().join("schemas").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run python3 avro_decode.py ({e}); {INSTALL}"));
    assert!(
        out.status.success(),
        "avro_decode.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("decoder output is UTF-8")
}

/// Every fixture event (arrays split into one event per element).
fn fixture_events() -> Vec<Value> {
    let dir = fixtures_dir().join("pendo");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && n != "index.json")
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let v: Value = serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match v {
            Value::Array(items) => out.extend(items),
            v => out.push(v),
        }
    }
    out
}

/// How many calls the golden files expect from those fixtures.
fn expected_calls() -> usize {
    std::fs::read_dir(repo().join("tests/golden/transform-pendo"))
        .expect("tests/golden/transform-pendo exists")
        .map(|e| {
            let path = e.unwrap().path();
            let v: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v.len()
        })
        .sum()
}

/// Produces the events as the webhook connector would (one per record, `received-at` header).
async fn produce_raw(topic: &str, events: &[Value]) {
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for e in events {
        let value = serde_json::to_vec(e).unwrap();
        let key = e["visitorId"].as_str().or(e["accountId"].as_str());
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "received-at",
                value: Some(RECEIVED_AT),
            })
            .insert(rdkafka::message::Header {
                key: "source",
                value: Some("pendo-webhook"),
            });
        let mut r = FutureRecord::to(topic).payload(&value).headers(headers);
        if let Some(k) = key {
            r = r.key(k);
        }
        p.send(r, Duration::from_secs(30)).await.expect("produce");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON-text field as JSON (null stays null); panics if the text is not JSON.
fn json_text(what: &str, text: Option<&str>) -> Value {
    text.map_or(Value::Null, |t| {
        serde_json::from_str(t).unwrap_or_else(|e| panic!("{what} is not JSON text ({e}): {t}"))
    })
}

/// How the decoder writes a `timestamp-millis` value: ISO-8601 UTC with milliseconds.
fn millis_text(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("time after 1970"));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The Rust decode of a record, in the shape of the Avro datum (field names of `schemas/`),
/// with the JSON-text fields parsed.
fn rust_view(call: &SegmentCall) -> Value {
    let c = &call.context;
    let mut v = json!({
        "messageId": call.message_id,
        "timestamp": call.timestamp,
        "userId": call.user_id,
        "anonymousId": call.anonymous_id,
        "context": {
            "groupId": c.group_id,
            "page": c.page.as_ref().map(|p| json!({
                "url": p.url, "path": p.path, "search": p.search,
                "title": p.title, "referrer": p.referrer,
            })),
            "traits": json_text("context.traits", c.traits.as_deref()),
            "userAgent": c.user_agent,
            "locale": c.locale,
            "library": c.library.as_ref().map(|l| json!({"name": l.name, "version": l.version})),
            "extra": json_text("context.extra", c.extra.as_deref()),
        },
        "integrations": json_text("integrations", call.integrations.as_deref()),
        "origin": {
            "source": call.origin.source,
            "kind": call.origin.kind,
            "visitorId": call.origin.visitor_id,
            "accountId": call.origin.account_id,
            "receivedAt": call.origin.received_at.map(millis_text),
        },
    });
    let body = match &call.body {
        CallBody::Track { event, properties } => json!({
            "event": event,
            "properties": json_text("properties", Some(properties)),
        }),
        CallBody::Page {
            name,
            category,
            properties,
        } => json!({
            "name": name,
            "category": category,
            "properties": json_text("properties", Some(properties)),
        }),
        CallBody::Identify { traits } => json!({"traits": json_text("traits", Some(traits))}),
        CallBody::Group { group_id, traits } => json!({
            "groupId": group_id,
            "traits": json_text("traits", Some(traits)),
        }),
    };
    for (k, x) in body.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The fastavro decode, with the JSON-text fields parsed like `rust_view` does.
fn python_view(mut datum: Value) -> Value {
    fn parse(v: &mut Value, what: &str) {
        if let Some(t) = v.as_str() {
            *v = json_text(what, Some(t));
        } else {
            assert!(v.is_null(), "{what} is neither JSON text nor null: {v}");
        }
    }
    for field in ["properties", "traits", "integrations"] {
        if let Some(v) = datum.get_mut(field) {
            parse(v, field);
        }
    }
    for field in ["traits", "extra"] {
        let v = datum["context"]
            .get_mut(field)
            .unwrap_or_else(|| panic!("context.{field} missing from the datum"));
        parse(v, &format!("context.{field}"));
    }
    datum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastavro_decodes_what_transform_pendo_writes_exactly_as_the_pipeline_does() {
    require_fastavro();
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("aid");
    let (config, ops_port) = role_config(dir.path(), &prefix, "");
    apply_topics(&config);

    let events = fixture_events();
    produce_raw(&format!("{prefix}.pendo.raw.webhook"), &events).await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-pendo"],
        ops_port,
        dir.path().join("transform-pendo.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;

    let expected = expected_calls();
    let out = read_committed(
        &format!("{prefix}.canonical.segment-calls"),
        expected,
        Duration::from_secs(30),
    );
    assert_eq!(
        out.len(),
        expected,
        "the golden number of calls from {} fixture events:\n{}",
        events.len(),
        role.logs()
    );
    let values: Vec<&[u8]> = out
        .iter()
        .map(|m| m.payload().expect("record value"))
        .collect();

    // The fingerprint fastavro's side computes from schemas/segment_call.avsc is the one the
    // pipeline writes in every header.
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let rust_fp = hex(&codec.framed().fingerprint());
    let fingerprints = run_decoder(&["--fingerprints"]);
    let python_fp = fingerprints
        .lines()
        .find_map(|l| l.strip_suffix(" segment_call.avsc"))
        .unwrap_or_else(|| panic!("no fingerprint for segment_call.avsc in:\n{fingerprints}"));
    assert_eq!(
        python_fp, rust_fp,
        "CRC-64-AVRO of the Parsing Canonical Form of schemas/segment_call.avsc: fastavro \
         (left) and the pipeline's single-object header (right) must agree, or readers that \
         pick the writer schema by fingerprint cannot find it"
    );
    for v in &values {
        assert_eq!(hex(&v[..2]), "c301", "single-object magic");
        assert_eq!(hex(&v[2..10]), python_fp, "header fingerprint");
    }

    // Decode every record value with fastavro.
    let input: String = values.iter().map(|v| hex(v) + "\n").collect();
    let input_path = write_file(dir.path(), "records.hex", &input);
    let decoded = run_decoder(&["--input", input_path.to_str().unwrap()]);
    let lines: Vec<Value> = decoded
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("decoder line {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), values.len(), "one decoded line per record");

    let mut types = BTreeSet::new();
    for ((line, value), m) in lines.into_iter().zip(&values).zip(&out) {
        let call = codec
            .decode(value)
            .unwrap_or_else(|e| panic!("offset {}: {e}", m.offset()));
        let id = &call.message_id;
        let record = line["record"].as_str().expect("record name");
        assert_eq!(
            record.to_ascii_lowercase(),
            call.body.call_type(),
            "{id}: union branch"
        );
        types.insert(record.to_string());
        let py = python_view(line["datum"].clone());
        let rs = rust_view(&call);
        assert_eq!(
            py["messageId"].as_str(),
            Some(id.as_str()),
            "{id}: messageId"
        );
        for field in [
            "timestamp",
            "userId",
            "anonymousId",
            "event",
            "name",
            "groupId",
        ] {
            assert_eq!(py.get(field), rs.get(field), "{id}: {field}");
        }
        for field in ["properties", "traits"] {
            assert_eq!(py.get(field), rs.get(field), "{id}: {field} as JSON");
        }
        for field in ["groupId", "locale", "page", "traits"] {
            assert_eq!(
                py["context"][field], rs["context"][field],
                "{id}: context.{field}"
            );
        }
        assert_eq!(py["origin"], rs["origin"], "{id}: origin");
        // And nothing else differs either.
        assert_eq!(py, rs, "{id}: whole datum");
    }
    let want: BTreeSet<String> = ["Group", "Identify", "Page", "Track"]
        .map(String::from)
        .into();
    assert_eq!(types, want, "the fixtures exercise every union branch");
}

#[tokio::test]
async fn fastavro_decodes_the_pendo_segment_changes_transform_segment_writes() {
    require_fastavro();
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("aids");
    let (config, ops_port) = role_config(
        dir.path(),
        &prefix,
        "[transform_segment]\naudience_target = \"both\"\n",
    );
    apply_topics(&config);
    // The visitor audience fixtures (identify and track; the group fixture is an account
    // audience, written as a field only).
    let mut events = Vec::new();
    for name in [
        "audience-identify-entered.json",
        "audience-track-entered.json",
        "audience-track-exited.json",
        "actions-batch.json",
    ] {
        match serde_json::from_slice::<Value>(
            &std::fs::read(fixtures_dir().join("segment").join(name)).unwrap(),
        )
        .unwrap()
        {
            Value::Array(items) => events.extend(items),
            v => events.push(v),
        }
    }
    produce_raw(&format!("{prefix}.segment.raw.webhook"), &events).await;
    let mut role = RoleProcess::start(
        &config,
        &["run", "--role", "transform-segment"],
        ops_port,
        dir.path().join("transform-segment.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;
    let out = read_committed(
        &format!("{prefix}.canonical.pendo-segment-changes"),
        events.len(),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.len(),
        events.len(),
        "one change per event\n{}",
        role.logs()
    );

    let codec = PendoSegmentChangeCodec::new(WireFormat::SingleObject);
    let fingerprints = run_decoder(&["--fingerprints"]);
    let python_fp = fingerprints
        .lines()
        .find_map(|l| l.strip_suffix(" pendo_segment_change.avsc"))
        .unwrap_or_else(|| panic!("no fingerprint for pendo_segment_change.avsc:\n{fingerprints}"));
    let values: Vec<&[u8]> = out.iter().map(|m| m.payload().unwrap()).collect();
    for v in &values {
        assert_eq!(hex(&v[..2]), "c301", "single-object magic");
        assert_eq!(hex(&v[2..10]), python_fp, "header fingerprint");
    }
    let input: String = values.iter().map(|v| hex(v) + "\n").collect();
    let input_path = write_file(dir.path(), "changes.hex", &input);
    let decoded = run_decoder(&["--input", input_path.to_str().unwrap()]);
    let lines: Vec<Value> = decoded
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), values.len());
    for ((line, value), m) in lines.iter().zip(&values).zip(&out) {
        assert_eq!(line["record"], "PendoSegmentChange");
        let c = codec.decode(value).unwrap();
        // Keyed by the audience key: one audience, one partition.
        assert_eq!(m.key(), Some(c.audience_key.as_bytes()));
        let rs = json!({
            "changeId": c.change_id,
            "audienceKey": c.audience_key,
            "segmentName": c.segment_name,
            "visitorId": c.visitor_id,
            "member": c.member,
            "timestamp": c.timestamp,
            "origin": {
                "source": c.origin.source,
                "segmentMessageId": c.origin.segment_message_id,
                "receivedAt": c.origin.received_at.map(millis_text),
            },
        });
        assert_eq!(line["datum"], rs, "whole datum");
    }
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}
