//! The monitoring artefacts against the real metrics: both flows run as six separate role
//! processes against a real broker and the Segment/Pendo test servers, traffic that creates the
//! labelled series goes through them (a malformed body, an unknown Pendo kind, an unexpected
//! field, a call outside the tracking plan, wrong webhook credentials, a record the transformer
//! dead-letters, Segment 503/429/401,
//! Pendo 429), then every role's `/metrics` is scraped and:
//!
//! - every `pendo_segment_*` name used by `deploy/prometheus/alerts.yml` and by the queries of
//!   `deploy/grafana/pendo-segment.json` is exported by at least one role (a dashboard panel or
//!   an alert on a misspelled or removed metric is silently empty, and never fires);
//! - every exported family, and every family `src/metrics.rs` registers, is documented in
//!   `docs/metrics.md`.
//!
//! Without a reachable broker the test fails; it never skips.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pendo_segment::connectors::webhook::signature::{sign_hex, signed_part};
use serde_json::Value;
use support::pendo_server::{
    PendoFault, PendoFaultPlan, PendoServerConfig, PendoTestServer, account_row, visitor_row,
};
use support::segment_server::{FaultAction, FaultPlan, SegmentServerConfig, SegmentTestServer};
use support::*;

const PENDO_SECRET: &str = "catalogue-pendo-secret";
const SEGMENT_SECRET: &str = "catalogue-segment-secret";

/// Names used by the dashboard or the alerts that a short test run cannot make a role export,
/// each with the reason. Keep this short: every entry is a panel or alert this test does not
/// protect.
const EXEMPT: &[(&str, &str)] = &[(
    "pendo_segment_errors_total",
    "counted only when Kafka fails a consumer or a transactional producer (broker outage, \
     fatal error); provoking one needs a broker stop/restart (as in \
     tests/pendo_webhook_broker_restart.rs), which would disturb every other test on the broker",
)];

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (path, text)
}

/// Every `pendo_segment_[a-z0-9_]+` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "pendo_segment_";
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(PREFIX) {
        let start = from + i;
        // Part of a longer identifier (e.g. `xpendo_segment_`): not a metric name.
        let preceded = start > 0 && {
            let b = bytes[start - 1];
            b.is_ascii_alphanumeric() || b == b'_'
        };
        let mut end = start + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded && end > start + PREFIX.len() {
            out.insert(text[start..end].to_string());
        }
        from = end;
    }
    out
}

/// Every PromQL query of the dashboard: panel targets' `expr` (rows and nested panels
/// included) and the template variables' queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// The families of one scrape: name -> type (from `# TYPE`), plus the names of samples that
/// belong to no declared family as `untyped` (a histogram's `_bucket`/`_sum`/`_count` series
/// belong to it).
fn families(scrape: &str, out: &mut BTreeMap<String, String>) {
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                out.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !exported(&name, out) {
                out.insert(name, "untyped".into());
            }
        }
    }
}

/// Whether a name used in a query is exported: as a family, or as a histogram's
/// `_bucket`/`_sum`/`_count` series.
fn exported(name: &str, fams: &BTreeMap<String, String>) -> bool {
    if fams.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|s| {
        name.strip_suffix(s)
            .and_then(|base| fams.get(base))
            .is_some_and(|t| t == "histogram" || t == "summary")
    })
}

/// Names the dashboard and the alert rules use, each with where it is used.
fn used_names() -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut used: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let (_, alerts) = repo_file("deploy/prometheus/alerts.yml");
    // The whole rules file, not only `expr:`: a name in an annotation must be real too.
    for n in metric_names(&alerts) {
        used.entry(n).or_default().insert("alerts.yml");
    }
    let (path, dashboard) = repo_file("deploy/grafana/pendo-segment.json");
    let dashboard: Value = serde_json::from_str(&dashboard)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(
        queries.len() >= 20,
        "the dashboard has panel queries: {queries:?}"
    );
    for q in &queries {
        for n in metric_names(q) {
            used.entry(n).or_default().insert("pendo-segment.json");
        }
    }
    assert!(!used.is_empty(), "no pendo_segment_ metric used anywhere");
    used
}

/// Names documented in the catalogue (any mention counts).
fn documented() -> BTreeSet<String> {
    metric_names(&repo_file("docs/metrics.md").1)
}

/// Families registered by `src/metrics.rs`: its string literals that are exactly a metric name.
fn registered() -> BTreeSet<String> {
    let (_, src) = repo_file("src/metrics.rs");
    src.split("\"pendo_segment_")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest[name.len()..]
                .starts_with('"')
                .then(|| format!("pendo_segment_{name}"))
        })
        .collect()
}

#[test]
fn the_catalogue_documents_every_registered_metric_and_exemptions_are_used() {
    let docs = documented();
    let reg = registered();
    assert!(reg.len() >= 40, "metrics found in src/metrics.rs: {reg:?}");
    let missing: Vec<&String> = reg.iter().filter(|n| !docs.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "registered in src/metrics.rs but not documented in docs/metrics.md: {missing:?}"
    );
    // An exemption for a name nothing uses is stale.
    let used = used_names();
    for (name, _) in EXEMPT {
        assert!(used.contains_key(*name), "stale exemption {name}");
        assert!(
            reg.contains(*name),
            "exemption {name} is not a registered metric"
        );
    }
}

/// A role process with its own config (own ops port) over the shared topics.
fn start_role(root: &Path, prefix: &str, extra: &str, role: &str) -> RoleProcess {
    let dir = root.join(role);
    std::fs::create_dir_all(&dir).unwrap();
    let (config, ops) = role_config(&dir, prefix, extra);
    RoleProcess::start(
        &config,
        &["run", "--role", role],
        ops,
        root.join(format!("{role}.log")),
    )
}

fn fixture_files(sub: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir().join(sub);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "index.json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn golden_message_ids() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transform-pendo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let calls: Vec<Value> =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        for c in calls {
            ids.insert(c["segment"]["messageId"].as_str().unwrap().to_string());
        }
    }
    ids
}

/// The Pendo fields the Segment audience fixtures set, as (entity, field), so the test server
/// accepts them (Pendo needs fields registered first).
fn audience_fields(bodies: &[Vec<u8>]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for body in bodies {
        let events = match serde_json::from_slice::<Value>(body).unwrap() {
            Value::Array(a) => a,
            v => vec![v],
        };
        for e in events {
            let personas = &e["context"]["personas"];
            if personas["computation_class"] != "audience" {
                continue;
            }
            let key = e["properties"]["audience_key"]
                .as_str()
                .or(personas["computation_key"].as_str())
                .unwrap();
            let entity = if e["type"] == "group" {
                "account"
            } else {
                "visitor"
            };
            out.insert((entity.to_string(), format!("segment_{key}")));
        }
    }
    out
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    header: (&str, String),
) -> reqwest::StatusCode {
    http.post(url)
        .header("content-type", "application/json")
        .header(header.0, header.1)
        .body(body)
        .send()
        .await
        .expect("post")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_alerts_is_exported_and_every_export_is_documented() {
    require_kafka();
    let used = used_names();
    let exempt: HashMap<&str, &str> = EXEMPT.iter().copied().collect();

    // Segment: a 503, a 429 with Retry-After, a 401 (write key refused), then normal answers.
    let segment = SegmentTestServer::start(SegmentServerConfig {
        faults: FaultPlan::none()
            .nth(1, FaultAction::Status(503))
            .nth(
                2,
                FaultAction::RateLimited {
                    retry_after_secs: 1,
                },
            )
            .nth(3, FaultAction::Status(401)),
        ..Default::default()
    })
    .await;
    let segment_fixtures = fixture_files("segment");
    let bodies: Vec<Vec<u8>> = segment_fixtures.iter().map(|(_, b)| b.clone()).collect();
    let fields = audience_fields(&bodies);
    assert!(fields.len() >= 2, "audience fields: {fields:?}");
    let mut pendo_config = PendoServerConfig {
        faults: PendoFaultPlan::none().nth(1, PendoFault::TooManyRequests { retry_after_s: 1 }),
        ..Default::default()
    };
    for (entity, field) in &fields {
        pendo_config = pendo_config.with_fields(entity, "custom", &[field.as_str()]);
    }
    let pendo = PendoTestServer::start(pendo_config).await;
    // What the poller reads: an account, a new visitor, and feature usage that reaches a
    // milestone rule.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    pendo.set_accounts(vec![account_row(
        "acct-metrics",
        serde_json::json!({"name": "Metrics Inc"}),
        serde_json::json!({"health_score": 80}),
        now_ms - 86_400_000,
    )]);
    pendo.set_visitors(vec![visitor_row(
        "vis-metrics-new",
        "acct-metrics",
        now_ms - 3_600_000,
        serde_json::json!({"email": "new@metrics.example"}),
        serde_json::json!({}),
    )]);
    pendo.set_event_rows(
        "featureEvents",
        vec![
            serde_json::json!({"visitorId": "vis-metrics-new", "accountId": "acct-metrics",
            "featureId": "ft_metrics", "day": now_ms.div_euclid(86_400_000) * 86_400_000,
            "numEvents": 3, "numMinutes": 1}),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("metrics");
    let pendo_port = free_port();
    let segment_port = free_port();
    // A tracking plan the feature-click fixture breaks (under `allow`: counted, still sent).
    let plan = write_file(
        dir.path(),
        "plan.json",
        r#"{"rules": [{"type": "TRACK", "key": "Feature Clicked", "jsonSchema":
            {"properties": {"properties": {"required": ["plan"]}}}}]}"#,
    );
    let extra = format!(
        "[processing]\nstatistics_interval_ms = 500\ncommit_interval_ms = 200\n\
         [pendo_webhook]\nlisten = \"127.0.0.1:{pendo_port}\"\nsecrets = [\"{PENDO_SECRET}\"]\n\
         [segment_webhook]\nlisten = \"127.0.0.1:{segment_port}\"\nsecrets = [\"{SEGMENT_SECRET}\"]\n\
         [segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n\
         [pendo_poller]\naccounts_interval_s = 2\nvisitors_interval_s = 2\ncatalog_interval_s = 2\n\
         guide_events_interval_s = 2\npoll_events_interval_s = 2\nmilestones_interval_s = 2\n\
         requests_per_s = 100\n\
         [[pendo_poller.milestones]]\nname = \"metrics\"\nmeasure = \"feature_uses\"\n\
         feature_ids = [\"ft_metrics\"]\nthreshold = 2\nwindow_days = 1\n\
         [transform_pendo.tracking_plan]\nfile = \"{}\"\n",
        segment.url(),
        segment.write_key(),
        pendo.url(),
        pendo.integration_key(),
        plan.display(),
    );
    let (topics_config, _) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&topics_config);
    // One id mapping (a visitor no fixture uses), so the transformers' followers apply an update.
    let csv = write_file(
        dir.path(),
        "idmap.csv",
        "visitor_id,user_id\nvis-metrics-catalogue,user-metrics-catalogue\n",
    );
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&topics_config)
        .args(["idmap", "load"])
        .arg(&csv)
        .output()
        .expect("idmap load");
    assert!(
        out.status.success(),
        "idmap load: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let names = [
        "pendo-webhook",
        "transform-pendo",
        "segment-sink",
        "segment-webhook",
        "transform-segment",
        "pendo-sink",
        "pendo-poller",
    ];
    let mut roles: Vec<(&str, RoleProcess)> = names
        .iter()
        .map(|r| (*r, start_role(dir.path(), &prefix, &extra, r)))
        .collect();
    for (_, p) in &mut roles {
        p.wait_ready(Duration::from_secs(60)).await;
    }
    let logs = |roles: &[(&str, RoleProcess)]| -> String {
        roles
            .iter()
            .map(|(n, p)| format!("--- {n}\n{}", p.logs()))
            .collect()
    };

    // Pendo -> Segment: every fixture, one event with an unexpected top-level field, a wrong
    // secret (401), a malformed body (400, webhook DLQ), and a record on the raw topic that is
    // not JSON (the transformer's DLQ).
    let http = reqwest::Client::new();
    let pendo_url = format!("http://127.0.0.1:{pendo_port}/webhooks/pendo");
    let bearer = |s: &str| ("authorization", format!("Bearer {s}"));
    for (name, body) in fixture_files("pendo") {
        let status = post(&http, &pendo_url, body, bearer(PENDO_SECRET)).await;
        assert_eq!(status.as_u16(), 200, "{name}");
    }
    let mut drifted: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("pendo/feature-clicked.json")).unwrap(),
    )
    .unwrap();
    drifted["uniqueId"] = "metrics-catalogue-drifted-0001".into();
    drifted["newTopLevelField"] = true.into();
    let drifted = serde_json::to_vec(&drifted).unwrap();
    let status = post(&http, &pendo_url, drifted.clone(), bearer(PENDO_SECRET)).await;
    assert_eq!(status.as_u16(), 200);
    let status = post(&http, &pendo_url, drifted, bearer("not-the-secret")).await;
    assert_eq!(status.as_u16(), 401);
    let malformed = std::fs::read(fixtures_dir().join("pendo/malformed.txt")).unwrap();
    let status = post(&http, &pendo_url, malformed, bearer(PENDO_SECRET)).await;
    assert_eq!(status.as_u16(), 400);
    support::produce::produce_all(
        &rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .create()
            .expect("producer"),
        &format!("{prefix}.pendo.raw.webhook"),
        [(Some("vis-dlq".to_string()), b"not json at all".to_vec())],
    )
    .await;

    // Segment -> Pendo: every fixture signed, and one with a wrong signature (401).
    let segment_url = format!("http://127.0.0.1:{segment_port}/webhooks/segment");
    for (name, body) in &segment_fixtures {
        let signature = sign_hex(SEGMENT_SECRET.as_bytes(), signed_part(body));
        let status = post(
            &http,
            &segment_url,
            body.clone(),
            ("x-signature", signature),
        )
        .await;
        assert_eq!(status.as_u16(), 200, "{name}");
    }
    let wrong = sign_hex(b"not-the-secret", signed_part(&bodies[0]));
    let status = post(
        &http,
        &segment_url,
        bodies[0].clone(),
        ("x-signature", wrong),
    )
    .await;
    assert_eq!(status.as_u16(), 401);

    // Both flows delivered.
    let golden = golden_message_ids();
    let delivered = segment
        .wait_for_distinct(golden.len() + 1, Duration::from_secs(90))
        .await;
    let ids = segment.distinct_message_ids();
    assert!(
        delivered && golden.iter().all(|id| ids.contains(id)),
        "Segment got {} of {} golden calls (+1 drifted):\n{}",
        ids.len(),
        golden.len(),
        logs(&roles)
    );
    let written = pendo
        .wait_for(Duration::from_secs(90), |s| {
            let st = s.state();
            fields
                .iter()
                .all(|(e, f)| st.keys().any(|(e2, _, f2)| e2 == e && f2 == f))
        })
        .await;
    assert!(
        written,
        "Pendo state {:?}, fields {fields:?}\n{}",
        pendo.state(),
        logs(&roles)
    );

    // Scrape until everything used is exported (lag appears with the next statistics, the
    // last commits land within commit_interval_ms), then judge.
    let required: Vec<&String> = used
        .keys()
        .filter(|n| !exempt.contains_key(n.as_str()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (fams, scrapes) = loop {
        let mut fams = BTreeMap::new();
        let mut scrapes = Vec::new();
        for (name, p) in &roles {
            let text = p.metrics().await;
            families(&text, &mut fams);
            scrapes.push((*name, text));
        }
        if required.iter().all(|n| exported(n, &fams)) || Instant::now() > deadline {
            break (fams, scrapes);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<String> = required
        .iter()
        .filter(|n| !exported(n, &fams))
        .map(|n| format!("{n} (used by {:?})", used[n.as_str()]))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard/alerts but exported by no role: {missing:#?}\nexported: {:#?}\n{}",
        fams.keys().collect::<Vec<_>>(),
        scrapes
            .iter()
            .map(|(n, t)| format!("=== {n}\n{t}"))
            .collect::<String>()
    );

    let docs = documented();
    let undocumented: Vec<&String> = fams
        .keys()
        .filter(|f| f.starts_with("pendo_segment_") && !docs.contains(*f))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    println!(
        "{} names used by the dashboard/alerts, all exported (exempt: {:?}); {} families exported, all documented",
        used.len(),
        exempt.keys().collect::<Vec<_>>(),
        fams.keys()
            .filter(|f| f.starts_with("pendo_segment_"))
            .count()
    );

    for (_, p) in &roles {
        p.sigterm();
    }
    for (name, p) in &mut roles {
        let status = p.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{name} exited {status}:\n{}", p.logs());
    }
}
