//! The Pendo API poller end to end against a real broker and the Pendo-compatible test server
//! (which refuses unbounded result sets): one record per account and per new visitor, then only
//! what changed; SIGKILL mid-cycle loses and repeats nothing; `Retry-After` is respected; a
//! refused key stops the role with a message naming the settings; with the transformer,
//! accounts become group calls, visitors identify calls, and webhook events carry catalogue
//! names; computed usage metrics match values computed by hand, are sent only on change (zeros
//! once when usage stops, ratios rounded) and exactly once across SIGKILLs.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pendo_segment::schema::segment_call::CallBody;
use pendo_segment::schema::{SegmentCallCodec, WireFormat};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use support::pendo_server::{
    PendoFault, PendoFaultPlan, PendoServerConfig, PendoTestServer, account_row, visitor_row,
};
use support::*;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One test's deployment: a topic prefix, and a config file per process.
struct Deployment {
    dir: tempfile::TempDir,
    prefix: String,
    pendo: String,
    poller: String,
}

impl Deployment {
    fn new(server: &PendoTestServer, poller: &str) -> Self {
        require_kafka();
        let d = Self {
            dir: tempfile::tempdir().unwrap(),
            prefix: unique("poll"),
            pendo: format!(
                "[pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n",
                server.url(),
                server.integration_key()
            ),
            poller: poller.to_string(),
        };
        let (config, _) = d.config("topics", "");
        apply_topics(&config);
        d
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// A config for one process (its own ops port) in its own directory.
    fn config(&self, name: &str, extra: &str) -> (PathBuf, u16) {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        role_config(
            &dir,
            &self.prefix,
            &format!("{}[pendo_poller]\n{}\n{extra}", self.pendo, self.poller),
        )
    }

    fn start(&self, role: &str, name: &str) -> RoleProcess {
        let (config, ops) = self.config(name, "");
        RoleProcess::start(
            &config,
            &["run", "--role", role],
            ops,
            self.dir.path().join(format!("{name}.log")),
        )
    }

    fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Poller settings for tests: frequent cycles, small pages, fast retries; `extra` lines
/// (`key = value`) replace the defaults they name.
fn fast_poller(extra: &str) -> String {
    let defaults = [
        "accounts_interval_s = 2",
        "visitors_interval_s = 2",
        "catalog_interval_s = 2",
        "page_size = 200",
        "requests_per_s = 200",
        "backoff_initial_ms = 50",
        "backoff_max_ms = 500",
        "visitors_window_s = 86400",
        "visitors_initial_lookback_s = 345600",
    ];
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = extra.lines().map(key).collect();
    let mut lines: Vec<String> = defaults
        .iter()
        .filter(|d| !overridden.contains(&key(d)))
        .map(|d| d.to_string())
        .collect();
    lines.extend(extra.lines().map(str::to_string));
    lines.join("\n")
}

fn accounts(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            account_row(
                &format!("acct-{i:05}"),
                json!({"name": format!("Account {i}")}),
                json!({"health_score": (i % 100) as i64, "plan_tier": "growth"}),
                now_ms() - 30 * DAY_MS,
            )
        })
        .collect()
}

/// `n` visitors first seen over the last three days.
fn visitors(n: usize) -> Vec<Value> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            visitor_row(
                &format!("vis-{i:05}"),
                &format!("acct-{:05}", i % 50),
                now - 3 * DAY_MS + (i as i64 * 3 * DAY_MS / n as i64),
                json!({"email": format!("v{i}@example.com")}),
                json!({"role": "user"}),
            )
        })
        .collect()
}

fn catalog(kind: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("{kind}-{i}"), "name": format!("{kind} {i}"), "appId": 7}))
        .collect()
}

fn value_of(m: &OwnedMessage) -> Value {
    serde_json::from_slice(m.payload().expect("value")).expect("JSON value")
}

/// Records of `topic` by event kind and key: how many times each key was emitted.
fn emitted(records: &[OwnedMessage]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for m in records {
        let v = value_of(m);
        let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
        *out.entry((v["event"].as_str().unwrap_or("").to_string(), key))
            .or_default() += 1;
    }
    out
}

/// Reads `topic` until `n` records arrived (or 60 s passed without a new one), then a little
/// longer so that a duplicate would show.
async fn read_n(topic: &str, n: usize) -> Vec<OwnedMessage> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_committed(&topic, n, Duration::from_secs(60)))
        .await
        .unwrap()
}

async fn wait_log(p: &RoleProcess, needle: &str, times: usize, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while p.logs().matches(needle).count() < times {
        assert!(
            std::time::Instant::now() < deadline,
            "`{needle}` not logged {times} times in {timeout:?}:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_bounded(server: &PendoTestServer) {
    for r in server.read_requests() {
        if let Some(body) = &r.body {
            let pipeline = body["request"]["pipeline"].as_array().expect("pipeline");
            assert!(
                pipeline.iter().any(|s| s.get("limit").is_some()),
                "an aggregation without a limit: {body}"
            );
        }
        assert_eq!(r.status, 200, "read {} answered {}", r.endpoint, r.status);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_record_per_account_and_new_visitor_then_only_changes() {
    let server = PendoTestServer::start(PendoServerConfig {
        max_rows: 500,
        ..Default::default()
    })
    .await;
    server.set_accounts(accounts(1_100));
    server.set_visitors(visitors(700));
    server.set_catalog("feature", catalog("feature", 30));
    server.set_catalog("page", catalog("page", 10));
    server.set_catalog("guide", catalog("guide", 5));
    server.set_catalog("tracktype", catalog("tracktype", 3));
    let d = Deployment::new(&server, &fast_poller(""));
    let mut poller = d.start("pendo-poller", "poller");
    poller.wait_ready(Duration::from_secs(60)).await;

    let raw = read_n(&d.topic("pendo.raw.api"), 1_800).await;
    let first = emitted(&raw);
    assert_eq!(raw.len(), 1_800, "one record per account and visitor");
    assert!(first.values().all(|n| *n == 1), "nothing emitted twice");
    assert_eq!(
        first.keys().filter(|(k, _)| k == "accountSnapshot").count(),
        1_100
    );
    assert_eq!(
        first
            .keys()
            .filter(|(k, _)| k == "visitorFirstSeen")
            .count(),
        700
    );
    let snapshot = raw
        .iter()
        .map(value_of)
        .find(|v| v["accountId"] == "acct-00042")
        .unwrap();
    assert_eq!(
        snapshot["properties"]["metadata"],
        json!({"agent": {"name": "Account 42"}, "custom": {"health_score": 42, "plan_tier": "growth"}}),
        "the selected fields (agent, custom), not auto"
    );
    let cat = read_n(&d.topic("pendo.catalog"), 48).await;
    assert_eq!(cat.len(), 48);

    // Let at least one more full cycle pass without changes: nothing new.
    let cycles = poller.logs().matches("poll cycle complete").count();
    wait_log(
        &poller,
        "poll cycle complete",
        cycles + 3,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        read_n(&d.topic("pendo.raw.api"), usize::MAX).await.len(),
        1_800
    );

    // Changes: 10 accounts change a selected field, one changes only auto.lastvisit (not
    // selected), 5 visitors are new, a feature is renamed.
    for i in 0..10 {
        server.upsert_account(account_row(
            &format!("acct-{i:05}"),
            json!({"name": format!("Account {i}")}),
            json!({"health_score": 99, "plan_tier": "enterprise"}),
            now_ms() - 30 * DAY_MS,
        ));
    }
    let mut touched = account_row(
        "acct-00500",
        json!({"name": "Account 500"}),
        json!({"health_score": 0, "plan_tier": "growth"}),
        now_ms() - 30 * DAY_MS,
    );
    touched["metadata"]["auto"]["lastvisit"] = json!(now_ms());
    server.upsert_account(touched);
    for i in 0..5 {
        server.upsert_visitor(visitor_row(
            &format!("new-{i}"),
            "acct-00001",
            now_ms() - 3_600_000,
            json!({"email": format!("new{i}@example.com")}),
            json!({}),
        ));
    }
    let mut features = catalog("feature", 30);
    features[3]["name"] = json!("Export CSV");
    server.set_catalog("feature", features);

    let raw = read_n(&d.topic("pendo.raw.api"), 1_815).await;
    let after = emitted(&raw);
    assert_eq!(
        raw.len(),
        1_815,
        "exactly the 10 changed accounts and 5 new visitors"
    );
    for i in 0..10 {
        assert_eq!(
            after[&("accountSnapshot".to_string(), format!("acct-{i:05}"))],
            2
        );
    }
    assert_eq!(
        after[&("accountSnapshot".to_string(), "acct-00500".to_string())],
        1,
        "an unselected field does not re-emit"
    );
    for i in 0..5 {
        assert_eq!(
            after[&("visitorFirstSeen".to_string(), format!("new-{i}"))],
            1
        );
    }
    let cat = read_n(&d.topic("pendo.catalog"), 49).await;
    assert_eq!(cat.len(), 49);
    let mut renamed: Vec<_> = cat
        .iter()
        .filter(|m| m.key() == Some(b"feature:feature-3".as_slice()))
        .collect();
    renamed.sort_by_key(|m| m.offset());
    assert_eq!(renamed.len(), 2);
    assert_eq!(value_of(renamed[1])["name"], "Export CSV");
    assert_bounded(&server);
    let metrics = poller.metrics().await;
    assert!(metrics.contains(
        "pendo_segment_pendo_api_requests_total{endpoint=\"aggregation:accounts\",status=\"200\"}"
    ));
    assert!(
        metrics
            .contains("pendo_segment_poller_watermark_lag_seconds{cursor=\"visitors.firstvisit\"}")
    );
    poller.sigterm();
    assert!(poller.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_cycle_loses_no_window_and_repeats_nothing() {
    let server = PendoTestServer::start(PendoServerConfig {
        max_rows: 500,
        ..Default::default()
    })
    .await;
    server.set_accounts(accounts(3_000));
    server.set_visitors(visitors(1_500));
    // Slow pages, so the kills land mid-cycle.
    server.set_read_faults(PendoFaultPlan::none().range(
        1,
        1_000_000,
        PendoFault::Slow(Duration::from_millis(120)),
    ));
    let d = Deployment::new(&server, &fast_poller("page_size = 100"));
    let topic = d.topic("pendo.raw.api");
    for round in 0..4 {
        let mut p = d.start("pendo-poller", &format!("poller-{round}"));
        p.wait_ready(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(2_500 + 700 * round)).await;
        p.kill9();
    }
    let mut last = d.start("pendo-poller", "poller-final");
    last.wait_ready(Duration::from_secs(60)).await;
    let raw = read_n(&topic, 4_500).await;
    let by_key = emitted(&raw);
    let repeated: Vec<_> = by_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "emitted twice: {repeated:?}");
    assert_eq!(by_key.len(), 4_500, "every account and visitor, once");
    assert_eq!(raw.len(), 4_500);
    let kills_mid_cycle = (0..4)
        .filter(|r| {
            let log = std::fs::read_to_string(d.log_dir().join(format!("poller-{r}.log")))
                .unwrap_or_default();
            log.contains("poller state loaded")
        })
        .count();
    assert_eq!(
        kills_mid_cycle, 4,
        "every killed poller had started polling"
    );
    last.sigterm();
    assert!(last.wait_exit(Duration::from_secs(30)).await.success());
}

/// Every committed record of `topic` now: read until nothing new came for 3 s.
async fn read_all(topic: &str) -> Vec<OwnedMessage> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_committed(&topic, usize::MAX, Duration::from_secs(3)))
        .await
        .unwrap()
}

/// The `visitorMetadataUpdated` records of `records`: visitor id -> how many, and the last one.
fn profile_updates(records: &[OwnedMessage]) -> BTreeMap<String, (usize, Value)> {
    let mut out: BTreeMap<String, (usize, Value)> = BTreeMap::new();
    for m in records {
        let v = value_of(m);
        if v["event"] == "visitorMetadataUpdated" {
            let e = out
                .entry(v["visitorId"].as_str().unwrap_or("").to_string())
                .or_insert((0, Value::Null));
            e.0 += 1;
            e.1 = v;
        }
    }
    out
}

/// Visitor `i` of [`visitors`] with its metadata updated now: a selected field changed
/// (`custom.role`), or only an unselected one (`auto.lastvisit`).
fn updated_visitor(i: usize, n: usize, role: Option<&str>) -> Value {
    let mut row = visitors(n).swap_remove(i);
    let now = now_ms();
    if let Some(role) = role {
        row["metadata"]["custom"]["role"] = json!(role);
    } else {
        row["metadata"]["auto"]["lastvisit"] = json!(now);
    }
    row["metadata"]["auto"]["lastupdated"] = json!(now);
    row
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_visitor_profiles_are_sent_once_and_unchanged_ones_never_even_across_sigkills() {
    const KNOWN: usize = 2_000;
    let server = PendoTestServer::start(PendoServerConfig {
        max_rows: 500,
        ..Default::default()
    })
    .await;
    server.set_visitors(visitors(KNOWN));
    let mut d = Deployment::new(
        &server,
        &fast_poller(
            "profiles_interval_s = 1\naccounts_interval_s = 0\ncatalog_interval_s = 0\n\
             page_size = 100",
        ),
    );
    let topic = d.topic("pendo.raw.api");
    let mut poller = d.start("pendo-poller", "poller");
    poller.wait_ready(Duration::from_secs(60)).await;

    // Known visitors: each first seen once; profile syncs over them send nothing, since what
    // the first visit sent is what they still hold.
    let raw = read_n(&topic, KNOWN).await;
    assert_eq!(raw.len(), KNOWN);
    assert!(profile_updates(&raw).is_empty());
    let cycles = poller.logs().matches("poll cycle complete").count();
    wait_log(
        &poller,
        "poll cycle complete",
        cycles + 6,
        Duration::from_secs(60),
    )
    .await;
    let raw = read_all(&topic).await;
    assert_eq!(raw.len(), KNOWN, "unchanged visitors send nothing");

    // 50 visitors change a selected field, 20 only an unselected one.
    for i in 0..50 {
        server.upsert_visitor(updated_visitor(i, KNOWN, Some("admin")));
    }
    for i in 100..120 {
        server.upsert_visitor(updated_visitor(i, KNOWN, None));
    }
    let raw = read_n(&topic, KNOWN + 50).await;
    let updates = profile_updates(&raw);
    assert_eq!(raw.len(), KNOWN + 50, "exactly the 50 changed profiles");
    let expected: Vec<String> = (0..50).map(|i| format!("vis-{i:05}")).collect();
    assert_eq!(updates.keys().cloned().collect::<Vec<_>>(), expected);
    for (id, (n, v)) in &updates {
        assert_eq!(*n, 1, "{id} sent {n} times");
        assert_eq!(
            v["properties"]["metadata"]["custom"]["role"], "admin",
            "{v}"
        );
        assert!(
            v["properties"]["metadata"]["agent"]["email"].is_string(),
            "the whole selected profile, not only what changed: {v}"
        );
    }
    // Later syncs re-read the settle window: the same changes are not sent again.
    let cycles = poller.logs().matches("poll cycle complete").count();
    wait_log(
        &poller,
        "poll cycle complete",
        cycles + 6,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(read_all(&topic).await.len(), KNOWN + 50);
    assert!(
        poller.metrics().await.contains(
            "pendo_segment_poller_watermark_lag_seconds{cursor=\"visitors.lastupdated\"}"
        )
    );
    poller.sigterm();
    assert!(poller.wait_exit(Duration::from_secs(30)).await.success());

    // 300 more change (the first 50 change back), then the poller is killed twice in the
    // middle of its sync: slow pages of 5 rows, nothing else polled.
    for i in 0..300 {
        server.upsert_visitor(updated_visitor(
            i,
            KNOWN,
            Some(if i < 50 { "user" } else { "owner" }),
        ));
    }
    server.set_read_faults(PendoFaultPlan::none().range(
        1,
        1_000_000,
        PendoFault::Slow(Duration::from_millis(100)),
    ));
    d.poller = fast_poller(
        "profiles_interval_s = 1\naccounts_interval_s = 0\ncatalog_interval_s = 0\n\
         visitors_interval_s = 0\npage_size = 5",
    );
    let mut partial = Vec::new();
    for round in 0..2 {
        let mut p = d.start("pendo-poller", &format!("poller-killed-{round}"));
        p.wait_ready(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(2_000 + 1_500 * round)).await;
        p.kill9();
        let sent = profile_updates(&read_all(&topic).await)
            .values()
            .map(|(n, _)| n)
            .sum::<usize>();
        partial.push(sent - 50);
    }
    assert!(
        partial.iter().any(|n| *n > 0 && *n < 300),
        "no kill landed in the middle of a sync (sent after each kill: {partial:?})"
    );
    let mut last = d.start("pendo-poller", "poller-final");
    last.wait_ready(Duration::from_secs(60)).await;
    let raw = read_n(&topic, KNOWN + 350).await;
    let updates = profile_updates(&raw);
    assert_eq!(raw.len(), KNOWN + 350, "sent after the kills: {partial:?}");
    for i in 0..300 {
        let id = format!("vis-{i:05}");
        let (n, v) = &updates[&id];
        assert_eq!(*n, if i < 50 { 2 } else { 1 }, "{id}");
        let role = if i < 50 { "user" } else { "owner" };
        assert_eq!(
            v["properties"]["metadata"]["custom"]["role"], role,
            "{id}: {v}"
        );
    }
    // Every read was a bounded page (reads cut off by the kills have no status).
    for r in server.read_requests() {
        let pipeline = &r.body.as_ref().expect("an aggregation")["request"]["pipeline"];
        assert!(
            pipeline
                .as_array()
                .is_some_and(|p| p.iter().any(|s| s.get("limit").is_some())),
            "an aggregation without a limit: {pipeline}"
        );
    }
    last.sigterm();
    assert!(last.wait_exit(Duration::from_secs(30)).await.success());
    eprintln!("profile sync: updates sent after each kill {partial:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_respected_and_a_refused_key_keeps_the_role_up_and_not_ready() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    server.set_accounts(accounts(450));
    server.set_read_faults(
        PendoFaultPlan::none()
            .range(2, 3, PendoFault::TooManyRequests { retry_after_s: 1 })
            .nth(5, PendoFault::Status(503)),
    );
    let d = Deployment::new(
        &server,
        &fast_poller("visitors_interval_s = 0\nrefused_key_retry_s = 1"),
    );
    let mut p = d.start("pendo-poller", "poller");
    p.wait_ready(Duration::from_secs(60)).await;
    let raw = read_n(&d.topic("pendo.raw.api"), 450).await;
    assert_eq!(raw.len(), 450);
    assert_eq!(
        server.early_read_requests(),
        0,
        "a request came before Retry-After"
    );
    let statuses = |server: &PendoTestServer| -> HashMap<u16, usize> {
        server
            .read_requests()
            .iter()
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.status).or_default() += 1;
                m
            })
    };
    assert_eq!(statuses(&server).get(&429), Some(&2));
    assert_eq!(statuses(&server).get(&503), Some(&1));

    // The key revoked mid-run, then accepted again on Pendo's side: the role goes not ready
    // while Pendo refuses it and is ready again afterwards, without a restart.
    let next = server.read_requests().len() as u64 + 1;
    server.set_read_faults(PendoFaultPlan::none().range(next, next + 2, PendoFault::Status(401)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ready(&p).await {
        assert!(
            std::time::Instant::now() < deadline,
            "still ready 30 s after Pendo began refusing the key:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(statuses(&server).get(&401), Some(&3));
    assert!(p.exit_status().is_none(), "{}", p.logs());
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());

    // A wrong key from the start: the role stays up and not ready, tries again every
    // refused_key_retry_s (each refusal counted, so the alert can see it), names the settings
    // and never logs the key; SIGTERM still stops it cleanly.
    let mut wrong = Deployment::new(&server, &fast_poller("refused_key_retry_s = 1"));
    wrong.pendo = wrong
        .pendo
        .replace(&server.integration_key(), "not-the-key");
    let mut p = wrong.start("pendo-poller", "wrong-key");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        p.exit_status().is_none(),
        "the role stopped on a refused key:\n{}",
        p.logs()
    );
    assert!(!ready(&p).await, "ready with a refused key");
    let metrics = p.metrics().await;
    let refusals: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "pendo_segment_pendo_api_requests_total{endpoint=\"token_verify\",status=\"401\"} ",
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refused token_verify counted:\n{metrics}"));
    assert!(refusals >= 2.0, "tried {refusals} times in 4 s");
    let logs = p.logs();
    assert!(
        logs.contains("pendo.integration_key") && logs.contains("pendo.region"),
        "{logs}"
    );
    assert!(!logs.contains("not-the-key"), "the key was logged:\n{logs}");
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
}

/// Whether the role's `/readyz` answers 200.
async fn ready(p: &RoleProcess) -> bool {
    reqwest::get(format!("{}/readyz", p.ops))
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_transformer_accounts_group_visitors_identify_and_events_get_names() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    server.set_accounts(accounts(40));
    server.set_visitors(visitors(25));
    server.set_catalog(
        "feature",
        vec![json!({"id": "ft_export_csv", "name": "Export CSV button (catalogue)", "appId": 7})],
    );
    server.set_catalog(
        "page",
        vec![json!({"id": "pg_reports", "name": "Reports (catalogue)", "appId": 7})],
    );
    let d = Deployment::new(
        &server,
        &fast_poller("account_fields = [\"agent.name\", \"custom.health_score\"]"),
    );
    let mut poller = d.start("pendo-poller", "poller");
    poller.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(read_n(&d.topic("pendo.catalog"), 2).await.len(), 2);
    // The transformer reads the catalogue to its end before mapping anything.
    let mut transform = d.start("transform-pendo", "transform");
    transform.wait_ready(Duration::from_secs(60)).await;
    // A webhook feature click without a feature name: the catalogue supplies it.
    let mut click: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("pendo/feature-clicked.json")).unwrap(),
    )
    .unwrap();
    click["properties"]
        .as_object_mut()
        .unwrap()
        .remove("featureName");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&d.topic("pendo.raw.webhook"))
                .key("vis-2002")
                .payload(&click.to_string()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    let out = read_n(&d.topic("canonical.segment-calls"), 66).await;
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let calls: Vec<_> = out
        .iter()
        .map(|m| codec.decode(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(calls.len(), 66);
    let groups: Vec<_> = calls
        .iter()
        .filter_map(|c| match &c.body {
            CallBody::Group { group_id, traits } => Some((group_id.clone(), traits.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(groups.len(), 40);
    let (_, traits) = groups.iter().find(|(g, _)| g == "acct-00007").unwrap();
    let traits: Value = serde_json::from_str(traits).unwrap();
    assert_eq!(traits, json!({"name": "Account 7", "health_score": 7}));
    let identifies = calls
        .iter()
        .filter(|c| matches!(c.body, CallBody::Identify { .. }))
        .count();
    assert_eq!(identifies, 25);
    let track = calls
        .iter()
        .find_map(|c| match &c.body {
            CallBody::Track { event, properties } if event == "Feature Clicked" => {
                Some(serde_json::from_str::<Value>(properties).unwrap())
            }
            _ => None,
        })
        .expect("the feature click");
    assert_eq!(track["feature_name"], "Export CSV button (catalogue)");
    assert_eq!(track["page_name"], "Reports (catalogue)");
    for p in [&mut poller, &mut transform] {
        p.sigterm();
        assert!(p.wait_exit(Duration::from_secs(30)).await.success());
    }
}

fn feature_row(visitor: &str, feature: &str, days_ago: i64, uses: u64) -> Value {
    let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
    json!({"visitorId": visitor, "accountId": "acct-00001", "featureId": feature,
           "day": today - days_ago * DAY_MS, "numEvents": uses, "numMinutes": 1})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_milestone_fires_once_per_visitor_and_never_again_after_restarts() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let mut rows = vec![
        // 6 + 5 = 11 uses of f1 within 7 days: reaches `exporter` (>= 10).
        feature_row("v-1", "f1", 0, 6),
        feature_row("v-1", "f1", 3, 5),
        // 9 uses: not yet.
        feature_row("v-2", "f1", 1, 9),
        // 12 uses, but 10 days ago: outside the window.
        feature_row("v-3", "f1", 10, 12),
        // 3 distinct features of f1..f4: reaches `explorer` (>= 3 distinct).
        feature_row("v-4", "f2", 0, 1),
        feature_row("v-4", "f3", 2, 1),
        feature_row("v-4", "f4", 6, 1),
    ];
    // Many visitors with one use each, so feature x day pages are paginated (page_size 20).
    for i in 0..300 {
        rows.push(feature_row(&format!("w-{i:04}"), "f1", i % 7, 1));
    }
    server.set_event_rows("featureEvents", rows.clone());
    let rules = "milestones_interval_s = 2\npage_size = 20\n\
         [[pendo_poller.milestones]]\nname = \"exporter\"\nmeasure = \"feature_uses\"\n\
         feature_ids = [\"f1\"]\nthreshold = 10\nwindow_days = 7\n\
         [[pendo_poller.milestones]]\nname = \"explorer\"\nmeasure = \"distinct_features\"\n\
         feature_ids = [\"f1\", \"f2\", \"f3\", \"f4\"]\nthreshold = 3\nwindow_days = 7";
    let d = Deployment::new(
        &server,
        &fast_poller(&format!(
            "accounts_interval_s = 0\nvisitors_interval_s = 0\ncatalog_interval_s = 0\n{rules}"
        )),
    );
    let topic = d.topic("pendo.raw.api");
    let mut p = d.start("pendo-poller", "poller-1");
    p.wait_ready(Duration::from_secs(60)).await;
    let first = read_n(&topic, 2).await;
    let got: Vec<(String, String)> = first
        .iter()
        .map(value_of)
        .map(|v| {
            (
                v["properties"]["rule"].as_str().unwrap().to_string(),
                v["visitorId"].as_str().unwrap().to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        got,
        vec![
            ("explorer".to_string(), "v-4".to_string()),
            ("exporter".to_string(), "v-1".to_string())
        ]
    );
    let v1 = first
        .iter()
        .map(value_of)
        .find(|v| v["visitorId"] == "v-1")
        .unwrap();
    assert_eq!(v1["event"], "featureMilestoneReached");
    assert_eq!(v1["properties"]["count"], 11);
    assert_eq!(v1["properties"]["window_days"], 7);

    // More cycles and a SIGKILL + restart: nothing again. Then v-2 crosses the threshold.
    wait_log(&p, "poll cycle complete", 3, Duration::from_secs(60)).await;
    p.kill9();
    rows.push(feature_row("v-2", "f1", 0, 1));
    server.set_event_rows("featureEvents", rows);
    let mut p = d.start("pendo-poller", "poller-2");
    p.wait_ready(Duration::from_secs(60)).await;
    wait_log(&p, "poll cycle complete", 3, Duration::from_secs(60)).await;
    let all = read_n(&topic, 3).await;
    let mut reached: Vec<String> = all
        .iter()
        .map(value_of)
        .map(|v| format!("{}:{}", v["properties"]["rule"], v["visitorId"]))
        .collect();
    reached.sort();
    assert_eq!(
        reached,
        vec![
            "\"explorer\":\"v-4\"",
            "\"exporter\":\"v-1\"",
            "\"exporter\":\"v-2\""
        ],
        "each milestone exactly once across restarts"
    );
    assert!(
        p.metrics()
            .await
            .contains("pendo_segment_milestones_emitted_total{rule=\"exporter\"} 1")
    );
    assert_bounded(&server);
    let continued = server
        .read_requests()
        .iter()
        .filter_map(|r| r.body.as_ref())
        .filter(|b| b.to_string().contains("visitorId >="))
        .count();
    assert!(continued > 0, "feature x day pages were never continued");
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn polled_guide_and_poll_rows_become_tracks_once_and_match_their_webhook_twin() {
    const HOUR: i64 = 3_600_000;
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    server.set_catalog(
        "guide",
        vec![json!({"id": "g1", "name": "Welcome", "appId": 7,
                    "steps": [{"id": "s1"}, {"id": "s2"}, {"id": "s3"}]})],
    );
    let now = now_ms();
    let mut guide_rows = Vec::new();
    for i in 0..120i64 {
        let (kind, step) = match i % 4 {
            0 => ("guideAdvanced", "s1"),
            1 => ("guideAdvanced", "s3"), // the last step: a completion
            2 => ("guideDismissed", "s2"),
            _ => ("guideSnoozed", "s1"),
        };
        // 12 rows share one millisecond (ties across a page boundary); the rest spread over
        // the last 30 hours.
        let at = if i < 12 {
            now - 5 * HOUR
        } else {
            now - 30 * HOUR + i * 15 * 60_000
        };
        guide_rows.push(json!({"type": kind, "guideId": "g1", "guideStepId": step,
            "browserTime": at, "visitorId": format!("v-{i}"), "accountId": "acct-1",
            "url": "https://app.example/x"}));
    }
    // A type the mapping does not know: the unknown-kind policy (pass-through) applies.
    guide_rows.push(
        json!({"type": "guideTimeout", "guideId": "g1", "guideStepId": "s1",
        "browserTime": now - 2 * HOUR, "visitorId": "v-timeout", "accountId": "acct-1"}),
    );
    server.set_event_rows("guideEvents", guide_rows.clone());
    let poll_rows: Vec<Value> = (0..15i64)
        .map(|i| {
            json!({"pollId": "p1", "guideId": "g-poll", "pollResponse": format!("answer {i}"),
            "browserTime": now - 20 * HOUR + i * HOUR, "visitorId": format!("p-{i}"),
            "accountId": "acct-2"})
        })
        .collect();
    server.set_event_rows("pollEvents", poll_rows);
    let d = Deployment::new(
        &server,
        &fast_poller(
            "accounts_interval_s = 0\nvisitors_interval_s = 0\nguide_events_interval_s = 2\n\
             poll_events_interval_s = 2\nevents_window_hours = 6\n\
             events_initial_lookback_s = 129600\npage_size = 10",
        ),
    );
    let mut poller = d.start("pendo-poller", "poller");
    poller.wait_ready(Duration::from_secs(60)).await;
    let mut transform = d.start("transform-pendo", "transform");
    transform.wait_ready(Duration::from_secs(60)).await;

    // The same dismissal also arrives by webhook (seconds, with a uniqueId of its own).
    let twin_row = &guide_rows[2];
    let twin = json!({"event": "guideDismissed", "visitorId": "v-2", "accountId": "acct-1",
        "timestamp": twin_row["browserTime"].as_i64().unwrap() / 1000,
        "uniqueId": "webhook-unique-id", "properties": {"guideId": "g1", "guideStepId": "s2",
        "guideProperties": {"id": "g1", "name": "Welcome"}}});
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&d.topic("pendo.raw.webhook"))
                .key("v-2")
                .payload(&twin.to_string()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    let raw = read_n(&d.topic("pendo.raw.api"), 136).await;
    assert_eq!(raw.len(), 136, "every guide and poll row once");
    // Several more cycles re-read the overlapping 12 h: nothing new.
    let cycles = poller.logs().matches("poll cycle complete").count();
    wait_log(
        &poller,
        "poll cycle complete",
        cycles + 6,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        read_n(&d.topic("pendo.raw.api"), usize::MAX).await.len(),
        136
    );

    let out = read_n(&d.topic("canonical.segment-calls"), 137).await;
    let codec = SegmentCallCodec::new(WireFormat::SingleObject);
    let calls: Vec<_> = out
        .iter()
        .map(|m| codec.decode(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(calls.len(), 137, "136 polled rows + the webhook twin");
    let mut by_event: BTreeMap<String, usize> = BTreeMap::new();
    for c in &calls {
        if let CallBody::Track { event, .. } = &c.body {
            *by_event.entry(event.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        by_event,
        BTreeMap::from([
            ("Guide Advanced".to_string(), 30),
            ("Guide Completed".to_string(), 30),
            ("Guide Dismissed".to_string(), 31),
            ("Guide Snoozed".to_string(), 30),
            ("Pendo guideTimeout".to_string(), 1),
            ("Poll Responded".to_string(), 15),
        ])
    );
    let distinct: std::collections::HashSet<_> = calls.iter().map(|c| &c.message_id).collect();
    assert_eq!(
        distinct.len(),
        136,
        "the webhook twin has the polled row's messageId"
    );
    assert_bounded(&server);
    for p in [&mut poller, &mut transform] {
        p.sigterm();
        assert!(p.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// An `events` row: visitor x account x day (`days_ago`), events and minutes.
fn activity_row(visitor: &str, account: &str, days_ago: i64, events: u64, minutes: u64) -> Value {
    let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
    json!({"visitorId": visitor, "accountId": account, "day": today - days_ago * DAY_MS,
           "numEvents": events, "numMinutes": minutes})
}

/// A `featureEvents` row of `account`.
fn feature_use(visitor: &str, account: &str, feature: &str, days_ago: i64, uses: u64) -> Value {
    let mut row = feature_row(visitor, feature, days_ago, uses);
    row["accountId"] = json!(account);
    row
}

/// `YYYY-MM-DD` of the UTC day `days_ago` days before today.
fn iso_day(days_ago: i64) -> String {
    let day = now_ms().div_euclid(DAY_MS) * DAY_MS - days_ago * DAY_MS;
    let t = std::time::UNIX_EPOCH + Duration::from_millis(day as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// The usage records of `records`: (kind, id) -> every `properties.usage` sent, in order.
fn usage_sent(records: &[OwnedMessage]) -> BTreeMap<(String, String), Vec<Value>> {
    let mut out: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for v in records.iter().map(value_of) {
        let kind = v["event"].as_str().unwrap_or("").to_string();
        let id = match kind.as_str() {
            "visitorUsageComputed" => &v["visitorId"],
            "accountUsageComputed" => &v["accountId"],
            _ => continue,
        };
        let id = id.as_str().unwrap_or("").to_string();
        out.entry((kind, id))
            .or_default()
            .push(v["properties"]["usage"].clone());
    }
    out
}

/// The seeded usage data set: four named visitors in accounts A and B, and `fillers` visitors
/// of account C, each active one day of the last five (even ones using f1 that day).
fn usage_rows(fillers: usize) -> (Vec<Value>, Vec<Value>) {
    let mut activity = vec![
        activity_row("v-1", "acct-A", 0, 5, 3),
        activity_row("v-1", "acct-A", 2, 1, 1),
        activity_row("v-1", "acct-A", 10, 4, 7),
        activity_row("v-2", "acct-A", 20, 2, 2),
        activity_row("v-3", "acct-A", 29, 1, 1),
        activity_row("v-4", "acct-B", 3, 7, 12),
        // 31 days ago: outside every window.
        activity_row("v-5", "acct-B", 31, 50, 50),
    ];
    let mut features = vec![
        feature_use("v-1", "acct-A", "f1", 1, 2),
        feature_use("v-1", "acct-A", "f2", 9, 3),
        feature_use("v-2", "acct-A", "f1", 20, 1),
        feature_use("v-4", "acct-B", "f3", 3, 4),
        // Not a listed feature.
        feature_use("v-3", "acct-A", "f9", 29, 8),
    ];
    for i in 0..fillers {
        let v = format!("w-{i:05}");
        activity.push(activity_row(&v, "acct-C", (i % 5) as i64, 1, 1));
        if i % 2 == 0 {
            features.push(feature_use(&v, "acct-C", "f1", (i % 5) as i64, 1));
        }
    }
    (activity, features)
}

const USAGE_METRICS: &str = "\
[[pendo_poller.usage_metrics]]\nname = \"days_active_30d\"\nsubject = \"visitor\"\nmeasure = \"days_active\"\nwindow_days = 30\n\
[[pendo_poller.usage_metrics]]\nname = \"events_7d\"\nsubject = \"visitor\"\nmeasure = \"events\"\nwindow_days = 7\n\
[[pendo_poller.usage_metrics]]\nname = \"minutes_30d\"\nsubject = \"visitor\"\nmeasure = \"minutes\"\nwindow_days = 30\n\
[[pendo_poller.usage_metrics]]\nname = \"last_active_day\"\nsubject = \"visitor\"\nmeasure = \"last_active_day\"\nwindow_days = 30\n\
[[pendo_poller.usage_metrics]]\nname = \"core_features_used_30d\"\nsubject = \"visitor\"\nmeasure = \"distinct_features\"\nwindow_days = 30\nfeature_ids = [\"f1\", \"f2\", \"f3\"]\n\
[[pendo_poller.usage_metrics]]\nname = \"f1_uses_7d\"\nsubject = \"visitor\"\nmeasure = \"feature_uses\"\nwindow_days = 7\nfeature_ids = [\"f1\"]\n\
[[pendo_poller.usage_metrics]]\nname = \"active_visitors_7d\"\nsubject = \"account\"\nmeasure = \"active_visitors\"\nwindow_days = 7\n\
[[pendo_poller.usage_metrics]]\nname = \"active_visitors_30d\"\nsubject = \"account\"\nmeasure = \"active_visitors\"\nwindow_days = 30\n\
[[pendo_poller.usage_metrics]]\nname = \"core_adoption_rate_30d\"\nsubject = \"account\"\nmeasure = \"feature_adoption_rate\"\nwindow_days = 30\nfeature_ids = [\"f1\", \"f2\", \"f3\"]\ndecimals = 2\n\
[[pendo_poller.usage_metrics]]\nname = \"events_30d\"\nsubject = \"account\"\nmeasure = \"events\"\nwindow_days = 30\n";

fn usage_poller(extra: &str) -> String {
    fast_poller(&format!(
        "accounts_interval_s = 0\nvisitors_interval_s = 0\ncatalog_interval_s = 0\n\
         profiles_interval_s = 0\nguide_events_interval_s = 0\npoll_events_interval_s = 0\n\
         usage_interval_s = 1\n{extra}\n{USAGE_METRICS}"
    ))
}

/// Visitor traits in the metrics' order: days active 30 d, events 7 d, minutes 30 d, last
/// active day, core features used 30 d, f1 uses 7 d.
fn visitor_traits(
    days: u64,
    events: u64,
    minutes: u64,
    last: Option<i64>,
    core: u64,
    f1: u64,
) -> Value {
    json!({"days_active_30d": days, "events_7d": events, "minutes_30d": minutes,
           "last_active_day": last.map(iso_day), "core_features_used_30d": core, "f1_uses_7d": f1})
}

fn account_traits(active7: u64, active30: u64, rate: f64, events: u64) -> Value {
    json!({"active_visitors_7d": active7, "active_visitors_30d": active30,
           "core_adoption_rate_30d": rate, "events_30d": events})
}

#[tokio::test(flavor = "multi_thread")]
async fn computed_usage_traits_match_hand_computed_values_and_are_sent_only_on_change() {
    const FILLERS: usize = 300;
    let server = PendoTestServer::start(PendoServerConfig {
        max_rows: 100,
        ..Default::default()
    })
    .await;
    let (mut activity, mut features) = usage_rows(FILLERS);
    server.set_event_rows("events", activity.clone());
    server.set_event_rows("featureEvents", features.clone());
    let d = Deployment::new(&server, &usage_poller("page_size = 50"));
    let topic = d.topic("pendo.raw.api");
    let mut p = d.start("pendo-poller", "poller");
    p.wait_ready(Duration::from_secs(60)).await;

    // Computed by hand from `usage_rows`.
    let mut expected: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut visitor = |id: &str, traits: Value| {
        expected.insert(("visitorUsageComputed".into(), id.into()), traits);
    };
    // v-1: active days 0, 2, 10; events 5 + 1 in 7 days; minutes 3 + 1 + 7; f1 (day 1) and f2
    // (day 9) of the core list; f1 used twice in 7 days.
    visitor("v-1", visitor_traits(3, 6, 11, Some(0), 2, 2));
    visitor("v-2", visitor_traits(1, 0, 2, Some(20), 1, 0));
    // v-3: day 29 is the window's last; f9 is not a listed feature.
    visitor("v-3", visitor_traits(1, 0, 1, Some(29), 0, 0));
    visitor("v-4", visitor_traits(1, 7, 12, Some(3), 1, 0));
    // v-5: active 31 days ago only: all zeros, never sent.
    for i in 0..FILLERS {
        let even = (i % 2 == 0) as u64;
        visitor(
            &format!("w-{i:05}"),
            visitor_traits(1, 1, 1, Some((i % 5) as i64), even, even),
        );
    }
    let mut account = |id: &str, traits: Value| {
        expected.insert(("accountUsageComputed".into(), id.into()), traits);
    };
    // acct-A: v-1 active in 7 days; v-1, v-2, v-3 in 30; v-1 and v-2 used a core feature;
    // events 5 + 1 + 4 + 2 + 1.
    account("acct-A", account_traits(1, 3, 0.67, 13));
    account("acct-B", account_traits(1, 1, 1.0, 7));
    account(
        "acct-C",
        account_traits(FILLERS as u64, FILLERS as u64, 0.5, FILLERS as u64),
    );

    let raw = read_n(&topic, expected.len()).await;
    let sent = usage_sent(&raw);
    assert_eq!(
        raw.len(),
        expected.len(),
        "one record per subject with usage"
    );
    for (key, want) in &expected {
        let got = sent.get(key).unwrap_or_else(|| panic!("{key:?} not sent"));
        assert_eq!(got.len(), 1, "{key:?} sent {} times", got.len());
        assert_eq!(&got[0], want, "{key:?}");
    }

    // Later cycles with no change send nothing.
    let cycles = p.logs().matches("usage metrics evaluated").count();
    wait_log(
        &p,
        "usage metrics evaluated",
        cycles + 3,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        read_all(&topic).await.len(),
        expected.len(),
        "unchanged: nothing sent"
    );

    // v-3 stops being active (its only day leaves the data); w-00001 uses f1 today: it is
    // re-sent, while acct-C's adoption moves from 0.5 to 0.5033, which rounds to 0.5 (not
    // re-sent); acct-A loses an active visitor and an event.
    activity.retain(|r| r["visitorId"] != "v-3");
    features.retain(|r| r["visitorId"] != "v-3");
    features.push(feature_use("w-00001", "acct-C", "f1", 0, 3));
    server.set_event_rows("events", activity.clone());
    server.set_event_rows("featureEvents", features.clone());
    let changed = [
        (
            "visitorUsageComputed",
            "v-3",
            visitor_traits(0, 0, 0, None, 0, 0),
        ),
        (
            "visitorUsageComputed",
            "w-00001",
            visitor_traits(1, 1, 1, Some(1), 1, 3),
        ),
        (
            "accountUsageComputed",
            "acct-A",
            account_traits(1, 2, 1.0, 12),
        ),
    ];
    let raw = read_n(&topic, expected.len() + changed.len()).await;
    let cycles = p.logs().matches("usage metrics evaluated").count();
    wait_log(
        &p,
        "usage metrics evaluated",
        cycles + 3,
        Duration::from_secs(60),
    )
    .await;
    let raw = if raw.len() == expected.len() + changed.len() {
        read_all(&topic).await
    } else {
        raw
    };
    assert_eq!(
        raw.len(),
        expected.len() + changed.len(),
        "exactly the three changed subjects, once (zeros sent once, rounding absorbs drift)"
    );
    let sent = usage_sent(&raw);
    for (kind, id, want) in &changed {
        let got = &sent[&(kind.to_string(), id.to_string())];
        assert_eq!(got.len(), 2, "{id}: {got:?}");
        assert_eq!(&got[1], want, "{id}");
    }
    assert_eq!(
        sent[&("accountUsageComputed".into(), "acct-C".into())].len(),
        1
    );
    assert_bounded(&server);
    let pages = server
        .read_requests()
        .iter()
        .filter_map(|r| r.body.as_ref())
        .filter(|b| b.to_string().contains("visitorId >"))
        .count();
    assert!(pages > 0, "day pages were never continued");
    assert!(
        p.metrics()
            .await
            .contains("pendo_segment_poller_watermark_lag_seconds{cursor=\"usage.cycle\"}")
    );
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_while_usage_is_sent_lose_and_repeat_nothing() {
    const FILLERS: usize = 2_000;
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let (activity, features) = usage_rows(FILLERS);
    server.set_event_rows("events", activity.clone());
    server.set_event_rows("featureEvents", features.clone());
    // Records per transaction are at most a page: 20 per transaction, about 100 transactions.
    let mut d = Deployment::new(&server, &usage_poller("page_size = 20"));
    let topic = d.topic("pendo.raw.api");
    let subjects = 4 + FILLERS + 3;

    let mut partial = Vec::new();
    let mut round = 0;
    while partial.len() < 2 {
        round += 1;
        assert!(
            round <= 6,
            "no kill landed while usage was sent: {partial:?}"
        );
        let mut p = d.start("pendo-poller", &format!("poller-killed-{round}"));
        p.wait_ready(Duration::from_secs(60)).await;
        // Kill as soon as this process has committed some usage records.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let m = p.metrics().await;
            let committed = m
                .lines()
                .filter(|l| {
                    l.starts_with(
                        "pendo_segment_poller_records_total{kind=\"visitorUsageComputed\"}",
                    )
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            if committed > 0.0 || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.kill9();
        let n = read_all(&topic).await.len();
        if n > 0 && n < subjects && partial.last() != Some(&n) {
            partial.push(n);
        }
        if n >= subjects {
            // This cycle finished before the kill; change nothing and try again.
            continue;
        }
    }
    d.poller = usage_poller("page_size = 200");
    let mut last = d.start("pendo-poller", "poller-final");
    last.wait_ready(Duration::from_secs(60)).await;
    wait_log(
        &last,
        "usage metrics evaluated",
        3,
        Duration::from_secs(120),
    )
    .await;
    let raw = read_all(&topic).await;
    let sent = usage_sent(&raw);
    assert_eq!(
        sent.len(),
        subjects,
        "every subject with usage (sent after kills: {partial:?})"
    );
    for (key, values) in &sent {
        assert_eq!(values.len(), 1, "{key:?} sent {} times", values.len());
    }
    assert_eq!(raw.len(), subjects);
    assert_eq!(
        sent[&("accountUsageComputed".into(), "acct-C".into())][0],
        account_traits(FILLERS as u64, FILLERS as u64, 0.5, FILLERS as u64)
    );
    last.sigterm();
    assert!(last.wait_exit(Duration::from_secs(30)).await.success());
    eprintln!("usage: records committed when each kill landed {partial:?} of {subjects}");
}

/// The quickstart's sample Pendo API (`pendo-segment sample-pendo-api`, its own process) feeds
/// every job of the poller: each kind of record arrives, and a visitor that moves on is sent
/// once as a changed profile.
#[tokio::test(flavor = "multi_thread")]
async fn the_sample_pendo_api_feeds_every_poller_job() {
    require_kafka();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("sample-api.log")).unwrap();
    /// Kills the sample API however the test ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _api = Child(
        std::process::Command::new(binary())
            .args([
                "sample-pendo-api",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--change-every-s",
                "3",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sample API"),
    );
    let poller_settings = fast_poller(
        "profiles_interval_s = 1\nguide_events_interval_s = 2\npoll_events_interval_s = 2\n\
         catalog_interval_s = 5\nusage_interval_s = 1\nmilestones_interval_s = 2\n\
         visitors_initial_lookback_s = 604800",
    );
    let usage = "[[pendo_poller.usage_metrics]]\nname = \"pendo_days_active_30d\"\n\
                 subject = \"visitor\"\nmeasure = \"days_active\"\nwindow_days = 30\n\
                 [[pendo_poller.usage_metrics]]\nname = \"pendo_export_adoption_30d\"\n\
                 subject = \"account\"\nmeasure = \"feature_adoption_rate\"\nwindow_days = 30\n\
                 feature_ids = [\"ft_export_csv\"]\n\
                 [[pendo_poller.milestones]]\nname = \"exporter\"\nmeasure = \"feature_uses\"\n\
                 feature_ids = [\"ft_export_csv\"]\nthreshold = 10\nwindow_days = 30\n";
    let d = Deployment {
        dir: tempfile::tempdir().unwrap(),
        prefix: unique("sample"),
        pendo: format!(
            "[pendo]\nregion = \"us\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             integration_key = \"any\"\n"
        ),
        poller: format!("{poller_settings}\n{usage}"),
    };
    let (config, _) = d.config("topics", "");
    apply_topics(&config);
    let mut p = d.start("pendo-poller", "poller");
    p.wait_ready(Duration::from_secs(60)).await;
    let kinds = [
        "accountSnapshot",
        "visitorFirstSeen",
        "visitorMetadataUpdated",
        "visitorUsageComputed",
        "accountUsageComputed",
        "guideEvent",
        "pollEvent",
        "featureMilestoneReached",
        "catalog",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let m = p.metrics().await;
        let missing: Vec<&str> = kinds
            .iter()
            .filter(|k| {
                !m.contains(&format!(
                    "pendo_segment_poller_records_total{{kind=\"{k}\"}}"
                ))
            })
            .copied()
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "no records of {missing:?}:\n{}",
        p.logs()
    );
    let raw = read_all(&d.topic("pendo.raw.api")).await;
    let profiles = profile_updates(&raw);
    assert!(!profiles.is_empty());
    for (id, (n, _)) in &profiles {
        assert_eq!(*n, 1, "{id}: one change, one profile update");
    }
    assert_eq!(
        emitted(&raw)
            .iter()
            .filter(|((k, _), _)| k == "visitorFirstSeen")
            .count(),
        24,
        "each sample visitor first seen once"
    );
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
}
