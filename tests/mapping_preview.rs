//! `pendo-segment mapping preview` against a real broker: recorded raw topics of mixed Pendo
//! fixtures (webhook and API, copied with distinct ids, plus a malformed record); a candidate
//! that renames one event, drops one property and changes one messageId recipe yields exactly
//! those three findings (exit 3, or 0 with `--allow-id-changes`); the running mapping as
//! candidate yields none; an invalid candidate is refused naming its line; and a preview never
//! moves a consumer group's committed offsets nor creates a group.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use support::*;

/// Copies of every fixture event produced (each with its own uniqueId and visitorId).
const COPIES: u64 = 3;
/// Partitions of the webhook raw topic (the API one has 1).
const WEBHOOK_PARTITIONS: i32 = 2;

/// Recorded raw topics of one test, and what was produced into them.
struct Recorded {
    dir: tempfile::TempDir,
    prefix: String,
    config: std::path::PathBuf,
    webhook_topic: String,
    records: u64,
}

/// The fixture events: (topic is the API one, the event JSON), arrays split into their
/// elements as the webhook connector records them.
fn fixture_events() -> Vec<(bool, Value)> {
    let dir = fixtures_dir().join("pendo");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "index.json")
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let text = std::fs::read_to_string(dir.join(&n)).expect("fixture");
        let v: Value = serde_json::from_str(&text).expect("fixture JSON");
        let api = n.starts_with("api-");
        match v {
            Value::Array(items) => out.extend(items.into_iter().map(|i| (api, i))),
            other => out.push((api, other)),
        }
    }
    out
}

/// Produces `COPIES` copies of every fixture (and the malformed one) with distinct ids.
async fn record() -> Recorded {
    require_kafka();
    let prefix = unique("mapping-preview");
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = role_config(dir.path(), &prefix, "");
    let webhook_topic = format!("{prefix}.pendo.raw.webhook");
    let api_topic = format!("{prefix}.pendo.raw.api");
    create_topic(&webhook_topic, WEBHOOK_PARTITIONS).await;
    create_topic(&api_topic, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let malformed = std::fs::read(fixtures_dir().join("pendo/malformed.txt")).expect("fixture");
    let events = fixture_events();
    let mut records = 0u64;
    let mut n = 0i32;
    for copy in 0..COPIES {
        let mut payloads: Vec<(bool, Vec<u8>)> = events
            .iter()
            .map(|(api, e)| {
                let mut e = e.clone();
                for field in ["uniqueId", "visitorId"] {
                    if let Some(Value::String(s)) = e.get(field) {
                        let s = format!("{s}-{copy}");
                        e[field] = Value::String(s);
                    }
                }
                (*api, serde_json::to_vec(&e).expect("JSON"))
            })
            .collect();
        payloads.push((false, malformed.clone()));
        for (api, payload) in payloads {
            let (topic, partition) = if api {
                (&api_topic, 0)
            } else {
                n += 1;
                (&webhook_topic, n % WEBHOOK_PARTITIONS)
            };
            let headers = OwnedHeaders::new().insert(Header {
                key: "received-at",
                value: Some("1764340000000"),
            });
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(topic)
                        .partition(partition)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
            records += 1;
        }
    }
    Recorded {
        dir,
        prefix,
        config,
        webhook_topic,
        records,
    }
}

/// Runs the binary with `args` after `--config <config>`.
fn pendo_segment(config: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(binary());
    c.arg("--config").arg(config).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PENDO_SEGMENT_") {
            c.env_remove(k);
        }
    }
    c.output().expect("run pendo-segment")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `mapping preview --json` and parses its summary.
fn preview_json(r: &Recorded, candidate: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec![
        "mapping",
        "preview",
        candidate.to_str().expect("path"),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = pendo_segment(&r.config, &args);
    let summary: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("preview printed no JSON summary ({e}): {}", text(&o)));
    (o.status.code(), summary)
}

fn shipped_mapping() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mappings/pendo-to-segment.toml"),
    )
    .expect("shipped mapping")
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} in the shipped mapping"
    );
    text.replacen(from, to, 1)
}

/// The shipped mapping with: Feature Clicked renamed to Feature Used; `url` dropped from track
/// events (trackEventReceived); pageLoaded's messageId made of `uniqueId` only.
fn three_change_candidate() -> String {
    let t = shipped_mapping();
    let t = edit(
        &t,
        "event = \"Feature Clicked\"",
        "event = \"Feature Used\"",
    );
    let t = edit(
        &t,
        "drop = [\"trackTypeName\", \"language\"]",
        "drop = [\"trackTypeName\", \"language\", \"url\"]",
    );
    edit(
        &t,
        "[kinds.pageLoaded]\n",
        "[kinds.pageLoaded]\nmessage_id_fields = [\"uniqueId\"]\n",
    )
}

/// Fixture events of `kind` (per copy).
fn of_kind(kind: &str) -> u64 {
    fixture_events()
        .iter()
        .filter(|(_, e)| e["event"] == kind)
        .count() as u64
}

/// (category, call type, name, kind, detail) -> count.
fn findings(summary: &Value) -> BTreeMap<(String, String, String, String, String), u64> {
    summary["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().expect(k).to_string();
            (
                (
                    s("category"),
                    s("call_type"),
                    s("name"),
                    s("kind"),
                    s("detail"),
                ),
                f["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_with_three_changes_yields_exactly_those_three_findings() {
    let r = record().await;
    let candidate = write_file(r.dir.path(), "candidate.toml", &three_change_candidate());
    let (code, summary) = preview_json(&r, &candidate, &[]);
    assert_eq!(code, Some(3), "messageIds change: exit 3; {summary:#}");
    assert_eq!(summary["records_read"], r.records, "{summary:#}");
    assert_eq!(summary["refused"], true);
    let feature_clicked = of_kind("featureClicked") * COPIES;
    let track_events = of_kind("trackEventReceived") * COPIES;
    let page_loads = of_kind("pageLoaded") * COPIES;
    // The fixtures hold two feature clicks (one in batch-array.json), one track event and one
    // page load per copy.
    assert_eq!(
        (feature_clicked, track_events, page_loads),
        (2 * COPIES, COPIES, COPIES)
    );
    let k = |c: &str, t: &str, n: &str, kind: &str, d: &str| {
        (
            c.to_string(),
            t.to_string(),
            n.to_string(),
            kind.to_string(),
            d.to_string(),
        )
    };
    let expected = BTreeMap::from([
        (
            k("message_id_changed", "page", "Reports", "pageLoaded", ""),
            page_loads,
        ),
        (
            k(
                "name_changed",
                "track",
                "Feature Clicked",
                "featureClicked",
                "\"Feature Clicked\" -> \"Feature Used\"",
            ),
            feature_clicked,
        ),
        (
            k(
                "field_dropped",
                "track",
                "Report Exported",
                "trackEventReceived",
                "url",
            ),
            track_events,
        ),
    ]);
    assert_eq!(findings(&summary), expected, "{summary:#}");
    assert_eq!(summary["message_id_changes"], page_loads);
    let events = summary["events"].as_u64().expect("events");
    assert_eq!(events, r.records);
    assert_eq!(
        summary["identical"].as_u64().expect("identical"),
        events - feature_clicked - track_events - page_loads
    );
    // Samples say where and what: the dropped property's value, both messageIds.
    for f in summary["findings"].as_array().expect("findings") {
        let samples = f["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 3, "{f:#}");
        assert!(
            samples[0]["at"]
                .as_str()
                .expect("at")
                .starts_with(&r.webhook_topic),
            "{f:#}"
        );
        if f["category"] == "field_dropped" {
            assert_eq!(
                samples[0]["before"],
                "\"https://app.acme.example/reports/rep-77\""
            );
            assert_eq!(samples[0]["after"], "");
        }
        if f["category"] == "message_id_changed" {
            let (b, a) = (&samples[0]["before"], &samples[0]["after"]);
            assert!(b.as_str().expect("before").starts_with("pendo-"), "{f:#}");
            assert!(a.as_str().expect("after").starts_with("pendo-"), "{f:#}");
            assert_ne!(b, a);
        }
    }

    // Accepted explicitly: the same findings, exit 0.
    let (code, allowed) = preview_json(&r, &candidate, &["--allow-id-changes", "--samples", "1"]);
    assert_eq!(code, Some(0), "{allowed:#}");
    assert_eq!(findings(&allowed), expected);
    assert_eq!(allowed["refused"], false);
    assert!(
        allowed["verdict"]
            .as_str()
            .expect("verdict")
            .contains("WARNING")
    );

    // The text report: every finding with its count, and the verdict last.
    let o = pendo_segment(
        &r.config,
        &["mapping", "preview", candidate.to_str().expect("path")],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("records read: {}", r.records)),
        "{out}"
    );
    assert!(out.contains("findings: 3"), "{out}");
    assert!(
        out.contains(&format!("page \"Reports\" (kind pageLoaded): {page_loads}")),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("verdict: REFUSED")),
        "{out}"
    );

    // Only the API topic: none of the changed kinds is there.
    let (code, api_only) = preview_json(&r, &candidate, &["--from-topic", "pendo.raw.api"]);
    assert_eq!(code, Some(0), "{api_only:#}");
    assert_eq!(api_only["findings"], serde_json::json!([]));
    let api_fixtures = fixture_events().iter().filter(|(api, _)| *api).count() as u64;
    assert!(api_fixtures >= 4, "the poller's fixtures: {api_fixtures}");
    assert_eq!(api_only["records_read"], api_fixtures * COPIES);

    // --last 1: one record of each of the 3 partitions.
    let (_, last) = preview_json(&r, &candidate, &["--last", "1"]);
    assert_eq!(last["records_read"], 3, "{last:#}");
    // --since after every record's time: nothing read.
    let (code, none) = preview_json(&r, &candidate, &["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, Some(0), "{none:#}");
    assert_eq!(none["records_read"], 0);
    let (_, all) = preview_json(&r, &candidate, &["--since", "@0"]);
    assert_eq!(all["records_read"], r.records);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_mapping_as_candidate_yields_no_findings_and_bad_candidates_exit_2() {
    let r = record().await;
    let same = write_file(r.dir.path(), "same.toml", &shipped_mapping());
    let (code, summary) = preview_json(&r, &same, &[]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["findings"], serde_json::json!([]), "{summary:#}");
    assert_eq!(summary["records_read"], r.records);
    assert_eq!(summary["identical"], r.records);
    assert_eq!(summary["message_id_changes"], 0);

    let bad = write_file(
        r.dir.path(),
        "bad.toml",
        "version = 1\n\n[kinds.featureClicked.track]\nevent = \"X\"\nrenmae = {}\n",
    );
    let o = pendo_segment(
        &r.config,
        &["mapping", "preview", bad.to_str().expect("path")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad.toml:5"), "{}", text(&o));
    let o = pendo_segment(
        &r.config,
        &[
            "mapping",
            "preview",
            same.to_str().expect("path"),
            "--from-topic",
            "canonical.segment-calls",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Consumer groups whose names start with `prefix`.
fn groups_with_prefix(prefix: &str) -> BTreeSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("client");
    consumer
        .fetch_group_list(None, Duration::from_secs(30))
        .expect("group list")
        .groups()
        .iter()
        .map(|g| g.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preview_never_moves_consumer_group_offsets() {
    let r = record().await;
    // The role's own group, with committed offsets part-way through the topic.
    let group = format!("{}.transform-pendo", r.prefix);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&r.webhook_topic, 0, Offset::Offset(2))
        .expect("tpl");
    tpl.add_partition_offset(&r.webhook_topic, 1, Offset::Offset(5))
        .expect("tpl");
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit offsets");
    drop(consumer);
    let before = committed_offsets(&group, &r.webhook_topic, WEBHOOK_PARTITIONS);
    assert_eq!(before, [(0, 2), (1, 5)].into_iter().collect());
    let groups_before = groups_with_prefix(&r.prefix);
    assert_eq!(groups_before, BTreeSet::from([group.clone()]));

    let candidate = write_file(r.dir.path(), "candidate.toml", &three_change_candidate());
    let (code, summary) = preview_json(&r, &candidate, &["--allow-id-changes"]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["records_read"], r.records);

    assert_eq!(
        committed_offsets(&group, &r.webhook_topic, WEBHOOK_PARTITIONS),
        before,
        "the preview moved the group's offsets"
    );
    assert_eq!(
        groups_with_prefix(&r.prefix),
        groups_before,
        "the preview created a consumer group"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn violations_of_the_tracking_plan_the_candidate_introduces_are_reported_and_can_gate() {
    let r = record().await;
    // The plan requires `url` on Report Exported; the three-change candidate drops it.
    let plan = write_file(
        r.dir.path(),
        "plan.json",
        r#"{"rules": [{"type": "TRACK", "key": "Report Exported", "version": 1,
            "jsonSchema": {"properties": {"properties": {"type": "object",
            "properties": {"url": {"type": "string"}}, "required": ["url"]}}}}]}"#,
    );
    let plan_arg = plan.to_str().expect("path");
    let candidate = write_file(r.dir.path(), "candidate.toml", &three_change_candidate());
    let (code, summary) = preview_json(
        &r,
        &candidate,
        &["--tracking-plan", plan_arg, "--allow-id-changes"],
    );
    assert_eq!(code, Some(0), "not gated without --fail-on-violations");
    let track_events = of_kind("trackEventReceived") * COPIES;
    let found = findings(&summary);
    let introduced: Vec<_> = found
        .iter()
        .filter(|(k, _)| k.0.starts_with("plan_violation"))
        .collect();
    assert_eq!(
        introduced,
        vec![(
            &(
                "plan_violation_introduced".to_string(),
                "track".to_string(),
                "Report Exported".to_string(),
                "trackEventReceived".to_string(),
                "required at properties.url".to_string()
            ),
            &track_events
        )],
        "{summary:#}"
    );
    assert_eq!(
        found.len(),
        4,
        "the three mapping findings and the violation"
    );
    assert_eq!(summary["plan_violations_introduced"], track_events);
    assert!(
        summary["tracking_plan"]
            .as_str()
            .expect("plan")
            .ends_with("(1 rules)")
    );
    let (code, _) = preview_json(
        &r,
        &candidate,
        &[
            "--tracking-plan",
            plan_arg,
            "--allow-id-changes",
            "--fail-on-violations",
        ],
    );
    assert_eq!(code, Some(4), "gated on the introduced violations");
    // The running mapping as candidate: no violation differs, nothing to report.
    let same = write_file(r.dir.path(), "same.toml", &shipped_mapping());
    let (code, summary) = preview_json(
        &r,
        &same,
        &["--tracking-plan", plan_arg, "--fail-on-violations"],
    );
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["findings"].as_array().expect("findings").len(), 0);
}
