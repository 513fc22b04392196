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
//! The pipeline and its traffic are `support::pipeline` (shared with `tests/live_prometheus.rs`).
//!
//! Without a reachable broker the test fails; it never skips.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pipeline::Pipeline;
use support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_alerts_is_exported_and_every_export_is_documented() {
    require_kafka();
    let used = used_names();
    let exempt: HashMap<&str, &str> = EXEMPT.iter().copied().collect();

    let mut pipeline = Pipeline::start().await;
    pipeline.drive_traffic().await;
    pipeline.wait_delivered().await;
    let roles = &pipeline.roles;

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
        for (name, p, _, _) in roles {
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

    pipeline.shutdown().await;
}
