//! The dashboard and the alert rules proven on a live Prometheus (issue #22).
//!
//! `scripts/check-monitoring` only checks that the queries parse, and `tests/metrics_catalogue.rs`
//! that the metric names exist. Here a real Prometheus (`/usr/bin/prometheus`, Debian's
//! `prometheus` package) scrapes the seven roles of a running pipeline (`support::pipeline`, the
//! catalogue's scenario), with the job names of `deploy/prometheus/prometheus.yml` and the rules of
//! `deploy/prometheus/alerts.yml`, and:
//!
//! - every panel query and annotation query of `deploy/grafana/pendo-segment.json` returns
//!   series after the traffic, except the panels listed in [`PANELS_EMPTY_IN_SCENARIO`] with the
//!   reason;
//! - failures are provoked and the alerts made for them must reach `firing`, then resolve once
//!   the failure is removed; every other rule is listed in [`ALERTS_NOT_PROVOKED`] with the
//!   reason, and the test checks that every rule name is in exactly one of the two lists.
//!
//! Time is compressed: scrape and evaluation every second, and every `for:`, range and offset
//! duration of the rules divided by [`TIME_FACTOR`] (`[15m]` -> `[15s]`, `for: 10m` -> `for:
//! 10s`), ranges never below two scrape intervals. Thresholds (record counts, ratios) are kept.
//! The compression is checked to change nothing but durations, and the result with `promtool`.
//! Since counts are not scaled, a provoked failure happens at [`TIME_FACTOR`] times the rate
//! that would fire the alert in production (e.g. more than 10 wrong secrets in 5 s, not 5 min).
//! Thresholds that are sizes, latencies or ages are not compressed either, so those failures are
//! made at their real size: 100,000 records of lag, Kafka writes held 1.5 s, events stamped as
//! received 200 s earlier, a poller 2 days behind.
//!
//! Kafka failures are made with a fault-injecting proxy in front of the broker
//! (`support::kafka_proxy`), for the roles restarted behind it only.
//!
//! Without the prometheus binary or a reachable broker the test fails; it never skips.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pendo_segment::connectors::webhook::signature::{sign_hex, signed_part};
use serde_json::Value;
use support::kafka_proxy::KafkaProxy;
use support::pendo_server::{PendoFault, PendoFaultPlan};
use support::pipeline::{PENDO_SECRET, Pipeline, ROLES, SEGMENT_SECRET, bearer, post, produce};
use support::segment_server::{FaultAction, FaultPlan};
use support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Rule durations are divided by this: an hour of production behaviour becomes a minute.
const TIME_FACTOR: u64 = 60;
/// Scrape and evaluation interval of the test's Prometheus, in seconds.
const SCRAPE_S: u64 = 1;

/// Grafana variables as the dashboard defines them, for an evaluation over all roles: `$job` and
/// `$instance` are multi-value with "All" = `.*` (their `allValue`); `$__rate_interval` is what
/// Grafana computes for a 1 s scrape interval and a short time range, rounded up to 10 s so a
/// rate always has several samples.
const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("$__rate_interval", "10s"),
    ("$job", ".*"),
    ("$instance", ".*"),
];

/// Panels that stay empty in this scenario, each with the reason.
const PANELS_EMPTY_IN_SCENARIO: &[(&str, &str)] = &[(
    "Kafka errors",
    "pendo_segment_errors_total is only counted when Kafka fails a consumer or a \
     transactional producer, which first happens in the \"Kafka writes cut off\" scenario, \
     after the panels are evaluated",
)];

/// Alert rules this test does not make fire yet, each with the reason.
const ALERTS_NOT_PROVOKED: &[(&str, &str)] = &[
    (
        "PendoSegmentTransactionAborts",
        "not produced reliably in compressed time: more than 2 aborted or undecided \
         transactions of one stage in the compressed 10 min (10 s). Each Kafka outage ends at \
         most one transaction per role (the \"Kafka writes cut off\" scenario: pendo-webhook 2 \
         aborted, transform-pendo 1 stuck), and a role then needs a new producer \
         (InitProducerId) before it opens another, which takes seconds. Writes cut for 1.2 s \
         out of every 2 s fired it in 2 of 3 runs (after 5.6 s and 30.1 s) and not in a clean \
         CI run: a count of failures at their real pace, which time compression does not scale",
    ),
    (
        "PendoSegmentKafkaErrors",
        "not produced in compressed time: in the \"Kafka writes cut off\" scenarios \
         pendo_segment_errors_total grows by fewer than 6 in any 10 s (the compressed 10 min): \
         failing producer initialisations are retried at their real pace (seconds), which time \
         compression does not scale; a transformer that cannot start its producer is restarted \
         (PendoSegmentRoleRestarting, provoked)",
    ),
    (
        "PendoSegmentMemoryHigh",
        "cannot be produced locally: needs a role above 1.5 GB resident memory for 15 minutes; \
         the threshold is a size, which time compression does not scale",
    ),
    (
        "PendoSegmentRebalanceStorm",
        "not produced in compressed time: more than 20 assignments in the compressed 15 min \
         (15 s) needs a rebalance of one group every 0.75 s, and a member learns of a rebalance \
         at its next heartbeat (librdkafka's heartbeat.interval.ms, 3 s), so at most 5 fit; a \
         count of events, which time compression does not scale. In production time an \
         instance in a crash loop or failing health checks gives 20 in 15 minutes",
    ),
    (
        "PendoSegmentSegmentWebhookSilent",
        "cannot be produced within the test's time: no Segment event for 6 h (6 min compressed) \
         and 15 min more",
    ),
];

/// The failures this test provokes, in the order it provokes them: (phase, alerts that must
/// fire, what the phase does). "bad input" comes last: the catalogue's traffic already holds an
/// unknown Pendo kind, and that alert must have resolved (a compressed hour, 60 s) before its
/// fault is applied again, so its time to firing is measured from a clean state.
const SCENARIOS: &[(&str, &[&str], &str)] = &[
    (
        "Segment 401, lag",
        &["PendoSegmentConsumerLagGrowing"],
        "Segment answers 401 to every request while 200 Pendo events a round arrive: \
         segment-sink retries, its lag on the canonical topic grows past 1000; the fault is \
         removed as soon as the alert fires. Lag grows under a blocked sink, not a stopped \
         role: the lag gauge is exported only by the consumer it measures, so a stopped role's \
         lag has no series and this alert cannot fire for it (PendoSegmentTargetDown covers \
         that)",
    ),
    (
        "Segment 401",
        &[
            "PendoSegmentSegmentAuthFailure",
            "PendoSegmentPartitionsPaused",
        ],
        "Segment answers 401 to every request while 200 Pendo events a round arrive: \
         segment-sink retries and pauses its partitions",
    ),
    (
        "Segment 503",
        &["PendoSegmentSegmentSinkBlocked"],
        "Segment answers 503 to every request (an outage: for the compressed 10 minutes and \
         more) while 10 Pendo events a round arrive: segment-sink retries with backoff, its \
         retries grow and it reports backpressure",
    ),
    (
        "Segment 404",
        &["PendoSegmentSegmentMisconfigured"],
        "Segment answers 404 (a wrong endpoint) to every request while 10 Pendo events a \
         round arrive",
    ),
    (
        "Pendo 401",
        &[
            "PendoSegmentPendoAuthFailure",
            "PendoSegmentPendoSinkBlocked",
        ],
        "Pendo answers 401 to every write of pendo-sink while the Segment audience fixtures are \
         posted to segment-webhook every round",
    ),
    (
        "Pendo API 503",
        &["PendoSegmentPendoApiErrors"],
        "the Pendo API answers 503 to every read of the poller",
    ),
    (
        "Kafka writes cut off",
        &[
            "PendoSegmentWebhookUnavailable",
            "PendoSegmentRoleRestarting",
        ],
        "pendo-webhook and transform-pendo reach Kafka through a proxy that drops their produce \
         and transaction requests (reads still pass: a role that reaches the leaders it reads \
         from but not those it writes to, nor its transaction coordinator) while Pendo posts 10 \
         events a round, not awaited, and 50 raw events are produced every 0.2 s for the \
         transformer. The two roles run with 1 s Kafka deadlines, the webhook with a 1 s ack \
         deadline, and in-process restart pauses of 0.1-0.5 s, so failures come at the \
         compressed pace: pendo-webhook answers 503 (`kafka_unavailable`) and transform-pendo \
         fails to start its producer and is restarted in its process again and again; after \
         the cut both serve again (a post answered 200, the later scenarios' traffic)",
    ),
    (
        "role waits to restart",
        &["PendoSegmentRoleStopped"],
        "transform-pendo restarted behind the proxy with in-process restart pauses of 3 s and \
         its writes cut off: between attempts its process serves /metrics with role_up 0 for \
         3 s, three compressed minutes (in production, a role_restart_backoff_max_ms above the \
         rule's minute; the process stuck in its shutdown grace period looks the same); \
         removed by letting writes through, when the next attempt starts the role",
    ),
    (
        "Kafka writes slow",
        &["PendoSegmentWebhookAckSlow"],
        "pendo-webhook restarted behind the proxy with 15 s Kafka and ack deadlines; the proxy \
         holds each produce and transaction request 1.5 s (a broker with a slow disk) while \
         Pendo posts 5 events a round, not awaited: a post waits for several such requests, \
         its acknowledgement takes 3 s or more (the threshold, 2.5 s, is a latency: not \
         compressed)",
    ),
    (
        "offset commits refused",
        &["PendoSegmentCommitErrors"],
        "segment-sink restarted behind the proxy, which closes the connection an offset commit \
         arrives on (a group coordinator going away) while Pendo posts 10 events a round: the \
         sink delivers them to Segment, its commits fail and are retried at the next commit \
         point",
    ),
    (
        "Segment 401, deep backlog",
        &["PendoSegmentConsumerLagHigh"],
        "Segment answers 401 while 101,000 raw Pendo events are produced at once: \
         transform-pendo maps them and segment-sink holds them, its lag on the canonical topic \
         above 100,000 (a threshold in records: not compressed); after the fault the sink \
         delivers them",
    ),
    (
        "old events",
        &["PendoSegmentEndToEndLatencyHigh"],
        "every round, 20 raw Pendo events whose received-at header says the webhook stored them \
         200 s earlier (what a backlog left by a transformer that was down for 3 minutes looks \
         like): the threshold, p99 above 120 s, is a latency that time compression does not \
         scale, so the events' age is written rather than waited for",
    ),
    (
        "poller catching up",
        &["PendoSegmentPollerFallingBehind"],
        "pendo-poller restarted on a fresh state topic, looking 2 days back in 1-hour windows at \
         1 request per second (a Pendo rate limit that lets it catch up only slowly): each \
         committed window reports a watermark days old (4 h is the threshold: not \
         compressed); removed by restarting it at 100 requests per second, when it catches up \
         in seconds",
    ),
    (
        "Segment 429",
        &["PendoSegmentSegmentRateLimited"],
        "Segment answers 429 with `Retry-After: 1` to every request while 10 Pendo events a \
         round arrive: segment-sink pauses its requests at every answer",
    ),
    (
        "Pendo API 401",
        &["PendoSegmentPendoApiUnauthorized"],
        "the Pendo API refuses the poller's key (401) on every read: the poller stays up, not \
         ready, and tries again every second (`refused_key_retry_s = 1`)",
    ),
    (
        "role killed",
        &["PendoSegmentTargetDown"],
        "pendo-poller killed (SIGKILL); removed by starting it again on the same ops port",
    ),
    (
        "role gone from discovery",
        &["PendoSegmentRoleAbsent"],
        "pendo-sink's target removed from Prometheus's service discovery (a deployment scaled \
         to zero: no `up` series at all, which PendoSegmentTargetDown cannot see); removed by \
         listing it again",
    ),
    (
        "bad input",
        &[
            "PendoSegmentDeadLetterRateHigh",
            "PendoSegmentWebhookAuthRejects",
            "PendoSegmentWebhookBodiesRejected",
            "PendoSegmentTrackingPlanViolations",
            "PendoSegmentUnknownPendoKinds",
        ],
        "every round (about 1 s): 5 records that are not JSON on the raw Pendo topic \
         (transform-pendo dead-letters them), 8 posts with a wrong secret (401), 2 malformed \
         bodies (400), 1 Feature Clicked outside the tracking plan, 1 event of a kind the \
         mapping does not list",
    ),
    (
        "Pendo webhook silent",
        &["PendoSegmentPendoWebhookSilent"],
        "nothing is posted to pendo-webhook (Pendo stopped sending); removed by posting one \
         event",
    ),
];

/// The scenario of that name: (name, alerts it must fire).
fn scenario(name: &str) -> (&'static str, &'static [&'static str]) {
    SCENARIOS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, a, _)| (*n, *a))
        .unwrap_or_else(|| panic!("no scenario {name:?}"))
}

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Seconds of a Prometheus duration (`90s`, `15m`, `1h30m`, `500ms` rounds down), or `None`
/// if `s` is not one.
fn duration_secs(s: &str) -> Option<u64> {
    let mut total_ms = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next()? {
                's' => (1_000, 1),
                'm' => (60_000, 1),
                'h' => (3_600_000, 1),
                'd' => (86_400_000, 1),
                'w' => (604_800_000, 1),
                'y' => (31_536_000_000, 1),
                _ => return None,
            }
        };
        total_ms += n * unit_ms;
        rest = &rest[len..];
    }
    Some(total_ms / 1000)
}

/// A range or offset duration compressed: divided by [`TIME_FACTOR`], at least two scrapes.
fn compress_range(secs: u64) -> u64 {
    (secs / TIME_FACTOR).max(2 * SCRAPE_S)
}

/// A `for:` duration compressed: divided by [`TIME_FACTOR`]; `0` stays 0, anything else at
/// least one evaluation.
fn compress_for(secs: u64) -> u64 {
    if secs == 0 {
        0
    } else {
        (secs / TIME_FACTOR).max(SCRAPE_S)
    }
}

/// Replaces the duration right after every `marker` in `line` (up to `end`, e.g. `]`) by
/// `f(seconds)` seconds.
fn rewrite_after(line: &str, marker: &str, end: Option<char>, f: fn(u64) -> u64) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        rest = &rest[i + marker.len()..];
        let len = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        let closed = end.is_none_or(|e| rest[len..].starts_with(e));
        match duration_secs(&rest[..len]) {
            Some(secs) if closed => {
                out.push_str(&format!("{}s", f(secs)));
                rest = &rest[len..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

/// `alerts.yml` with every `for:`, `[range]` and `offset` duration compressed.
fn compress_rules(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.trim_start().starts_with("for:") {
            rewrite_after(line, "for: ", None, compress_for)
        } else {
            let l = rewrite_after(line, "[", Some(']'), compress_range);
            rewrite_after(&l, "offset ", None, compress_range)
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Words of a text: maximal runs of ASCII letters and digits.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether a word is a duration literal with a unit (a bare number is not).
fn is_duration(w: &str) -> bool {
    w.chars().next().is_some_and(|c| c.is_ascii_digit())
        && !w.chars().all(|c| c.is_ascii_digit())
        && duration_secs(w).is_some()
}

/// Alert names of a rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn compressing_the_rules_changes_only_durations_and_every_rule_is_accounted_for() {
    let original = repo_file("deploy/prometheus/alerts.yml");
    let compressed = compress_rules(&original);
    let (a, b) = (words(&original), words(&compressed));
    assert_eq!(a.len(), b.len(), "compression changed the text's structure");
    let mut changed = 0;
    for (x, y) in a.iter().zip(&b) {
        if x == y {
            continue;
        }
        changed += 1;
        assert!(
            is_duration(x) && is_duration(y),
            "compression changed {x:?} into {y:?}, which are not both durations"
        );
        let (sx, sy) = (duration_secs(x).unwrap(), duration_secs(y).unwrap());
        assert!(
            sy == compress_range(sx) || sy == compress_for(sx),
            "{x} became {y}, not {x}/{TIME_FACTOR}"
        );
    }
    assert!(changed >= 30, "only {changed} durations compressed");
    // Nothing left uncompressed in the rules: every duration is now in seconds.
    let left: Vec<&&str> = b
        .iter()
        .filter(|w| is_duration(w) && !w.ends_with('s'))
        .collect();
    assert!(left.is_empty(), "durations not compressed: {left:?}");
    // Same rules, same order: only the text between the durations may differ.
    assert_eq!(alert_names(&original), alert_names(&compressed));

    // PendoSegmentRoleAbsent watches every deployed role.
    for job in deployed_jobs() {
        assert!(
            original.contains(&format!("absent(up{{job=\"{job}\"}})")),
            "PendoSegmentRoleAbsent does not watch {job}, which prometheus.yml scrapes"
        );
    }

    // Every rule is provoked or listed, and the lists name real rules, once.
    let names: BTreeSet<String> = alert_names(&original).into_iter().collect();
    assert!(names.len() >= 25, "alert rules found: {names:?}");
    let provoked: Vec<&str> = SCENARIOS
        .iter()
        .flat_map(|(_, a, _)| a.iter().copied())
        .collect();
    let listed: Vec<&str> = ALERTS_NOT_PROVOKED.iter().map(|(n, _)| *n).collect();
    let mut seen = BTreeSet::new();
    for n in provoked.iter().chain(&listed) {
        assert!(names.contains(*n), "{n} is not a rule of alerts.yml");
        assert!(seen.insert(*n), "{n} is provoked or listed twice");
    }
    let unaccounted: Vec<&String> = names
        .iter()
        .filter(|n| !seen.contains(n.as_str()))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "rules neither provoked nor listed in ALERTS_NOT_PROVOKED: {unaccounted:?}"
    );
}

/// The scrape job names of `deploy/prometheus/prometheus.yml`, without Prometheus's own.
fn deployed_jobs() -> BTreeSet<String> {
    repo_file("deploy/prometheus/prometheus.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- job_name:"))
        .map(|n| n.trim().to_string())
        .filter(|n| n != "prometheus")
        .collect()
}

/// A Prometheus server started for the test; killed when dropped.
struct Prometheus {
    _child: KillOnDrop,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
    /// Where each job's targets are listed (file-based service discovery): a role can leave
    /// discovery (a deployment scaled to zero) and come back.
    targets_dir: PathBuf,
}

impl Prometheus {
    /// Writes the config (one job per role, the deployed job names, each discovering its target
    /// from a file) and the compressed rules into `dir`, checks the rules with promtool and
    /// starts the server.
    async fn start(dir: &Path, targets: &[(&str, u16)]) -> Prometheus {
        for bin in [PROMETHEUS, PROMTOOL] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: this test needs a real Prometheus (apt-get install prometheus)"
            );
        }
        let rules = write_file(
            dir,
            "alerts.yml",
            &compress_rules(&repo_file("deploy/prometheus/alerts.yml")),
        );
        let out = std::process::Command::new(PROMTOOL)
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool check rules on the compressed rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config = format!(
            "global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n  \
             evaluation_interval: {SCRAPE_S}s\nrule_files:\n  - alerts.yml\nscrape_configs:\n"
        );
        let targets_dir = dir.join("targets");
        std::fs::create_dir_all(&targets_dir).unwrap();
        for (job, port) in targets {
            write_targets(&targets_dir, job, Some(*port));
            config.push_str(&format!(
                "  - job_name: {job}\n    file_sd_configs:\n      - files: [\"{}/{job}.json\"]\n        \
                 refresh_interval: {SCRAPE_S}s\n",
                targets_dir.display()
            ));
        }
        let config = write_file(dir, "prometheus.yml", &config);
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = std::process::Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            _child: KillOnDrop(child),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            log,
            targets_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = p.http.get(format!("{}/-/ready", p.url)).send().await
                && r.status() == 200
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready in 30 s:\n{}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lists `job`'s target (`Some(port)`) or none: the role leaves service discovery.
    fn set_target(&self, job: &str, port: Option<u16>) {
        write_targets(&self.targets_dir, job, port);
    }

    /// An API call: a GET without parameters, a POST of them as a form otherwise (the query
    /// endpoints accept both; reqwest is built without its query-string feature).
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Value {
        let url = format!("{}{path}", self.url);
        let request = if query.is_empty() {
            self.http.get(url)
        } else {
            let form: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v)))
                .collect();
            self.http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.join("&"))
        };
        let v: Value = request
            .send()
            .await
            .expect("Prometheus API")
            .json()
            .await
            .expect("Prometheus API JSON");
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// Waits until every target of every job is up.
    async fn wait_targets_up(&self, jobs: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.get("/api/v1/targets", &[]).await;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = targets.iter().filter(|t| t["health"] == "up").count();
            if targets.len() == jobs && up == jobs {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "targets not all up after 30 s: {targets:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Series of a range query over `[start, now]`, one point a second, that have at least one
    /// number (a series of only NaN, e.g. a quantile of no observations, draws nothing).
    async fn series(&self, expr: &str, start: f64) -> usize {
        let now = unix_now();
        let data = self
            .get(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{now:.3}")),
                    ("step", "1".to_string()),
                ],
            )
            .await;
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|series| {
                series["values"].as_array().into_iter().flatten().any(|v| {
                    v[1].as_str()
                        .and_then(|x| x.parse::<f64>().ok())
                        .is_some_and(|x| !x.is_nan())
                })
            })
            .count()
    }

    /// The labels and value of every firing instance of `alert`, for failure messages.
    async fn firing_details(&self, alert: &str) -> Vec<String> {
        let data = self.get("/api/v1/alerts", &[]).await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] == alert)
            .map(|a| format!("{} = {}", a["labels"], a["value"]))
            .collect()
    }

    /// Names of the alerts now firing.
    async fn firing(&self) -> BTreeSet<String> {
        let data = self.get("/api/v1/alerts", &[]).await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect()
    }
}

/// Writes `job`'s file-based discovery list: its one target, or none. Written whole and renamed
/// into place, so Prometheus never reads half a file.
fn write_targets(dir: &Path, job: &str, port: Option<u16>) {
    let targets: Vec<String> = port.map(|p| format!("127.0.0.1:{p}")).into_iter().collect();
    let text = serde_json::json!([{ "targets": targets }]).to_string();
    let tmp = write_file(dir, &format!(".{job}.json.tmp"), &text);
    std::fs::rename(tmp, dir.join(format!("{job}.json"))).unwrap();
}

/// `application/x-www-form-urlencoded` value: everything but unreserved characters escaped.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every panel query of the dashboard as (panel title, expr), annotation queries as
/// ("annotation <name>", expr), Grafana's variables substituted.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                if o.get("type").is_some_and(|t| t != "row")
                    && let Some(Value::Array(targets)) = o.get("targets")
                {
                    let title = o["title"].as_str().unwrap_or("?").to_string();
                    for t in targets {
                        let expr = t["expr"]
                            .as_str()
                            .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
                        out.push((title.clone(), expr.to_string()));
                    }
                }
                o.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/pendo-segment.json")).expect("JSON");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push((
                format!("annotation {}", a["name"].as_str().unwrap_or("?")),
                expr.to_string(),
            ));
        }
    }
    for (_, expr) in &mut out {
        for (var, value) in SUBSTITUTIONS {
            *expr = expr.replace(var, value);
        }
        assert!(!expr.contains('$'), "unknown Grafana variable in {expr}");
    }
    out
}

/// Pendo page views with fresh ids, as one webhook body of `n` events.
fn page_views(tag: &str, n: usize) -> Vec<u8> {
    let base: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("pendo/page-loaded.json")).unwrap(),
    )
    .unwrap();
    let events: Vec<Value> = (0..n)
        .map(|i| {
            let mut e = base.clone();
            e["uniqueId"] = format!("live-{tag}-{i}").into();
            e
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

/// Posts one page view to pendo-webhook and requires it stored (200).
async fn post_page_view(p: &Pipeline, tag: &str) {
    let s = post(
        &p.http,
        &p.pendo_url,
        page_views(tag, 1),
        bearer(PENDO_SECRET),
    )
    .await;
    assert_eq!(s.as_u16(), 200, "{tag}");
}

/// The bad input of the "bad input" phase, once: see [`SCENARIOS`].
async fn bad_input(p: &Pipeline, round: usize) {
    let garbage = (0..5)
        .map(|i| (Some(format!("vis-{i}")), b"not json at all".to_vec()))
        .collect();
    produce(&format!("{}.pendo.raw.webhook", p.prefix), garbage).await;
    let malformed = std::fs::read(fixtures_dir().join("pendo/malformed.txt")).unwrap();
    let mut click: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("pendo/feature-clicked.json")).unwrap(),
    )
    .unwrap();
    click["uniqueId"] = format!("live-click-{round}").into();
    let click = serde_json::to_vec(&click).unwrap();
    for _ in 0..8 {
        let s = post(&p.http, &p.pendo_url, click.clone(), bearer("wrong")).await;
        assert_eq!(s.as_u16(), 401);
    }
    for _ in 0..2 {
        let s = post(
            &p.http,
            &p.pendo_url,
            malformed.clone(),
            bearer(PENDO_SECRET),
        )
        .await;
        assert_eq!(s.as_u16(), 400);
    }
    let s = post(&p.http, &p.pendo_url, click, bearer(PENDO_SECRET)).await;
    assert_eq!(s.as_u16(), 200);
    let mut unknown: Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("pendo/unknown-kind.json")).unwrap(),
    )
    .unwrap();
    unknown["uniqueId"] = format!("live-unknown-{round}").into();
    let s = post(
        &p.http,
        &p.pendo_url,
        serde_json::to_vec(&unknown).unwrap(),
        bearer(PENDO_SECRET),
    )
    .await;
    assert_eq!(s.as_u16(), 200);
}

/// What segment-sink's lag and paused partitions did while Segment refused it and events kept
/// coming, every 2 s. The lag must keep growing while partitions are paused: librdkafka stops
/// fetching a paused partition and its statistics then report a frozen lag (seen here as the
/// same value for 10 s before the loop measured paused partitions itself).
async fn check_sink_lag_while_paused(prom: &Prometheus, from: f64) {
    let mut columns = Vec::new();
    for expr in [
        "sum(pendo_segment_consumer_lag{job=\"segment-sink\"})",
        "sum(pendo_segment_paused_partitions{job=\"segment-sink\"})",
    ] {
        let data = prom
            .get(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", format!("{from:.3}")),
                    ("end", format!("{:.3}", unix_now())),
                    ("step", "2".to_string()),
                ],
            )
            .await;
        let values: Vec<(f64, String)> = data["result"][0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    v[0].as_f64().unwrap_or(0.0),
                    v[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        columns.push(values);
    }
    println!("\n| s since Segment 401 | segment-sink lag | paused partitions |\n|---|---|---|");
    // (lag, paused) per sample; the longest stretch of samples with partitions paused.
    let mut samples = Vec::new();
    for (t, lag) in &columns[0] {
        let paused = columns[1]
            .iter()
            .find(|(t2, _)| t2 == t)
            .map_or("", |(_, v)| v.as_str());
        println!("| {:.0} | {lag} | {paused} |", t - from);
        samples.push((
            lag.parse::<f64>().unwrap_or(0.0),
            paused.parse::<f64>().unwrap_or(0.0) > 0.0,
        ));
    }
    let mut longest: &[(f64, bool)] = &[];
    for stretch in samples.split(|(_, paused)| !paused) {
        if stretch.len() > longest.len() {
            longest = stretch;
        }
    }
    // Three samples (4 s) leave room for the 2 s measuring period and the scrape.
    if longest.len() >= 3 {
        let lags: Vec<f64> = longest.iter().map(|(l, _)| *l).collect();
        assert!(
            lags.windows(2).any(|w| w[1] > w[0]),
            "segment-sink's lag froze while partitions were paused and events kept coming: {lags:?}"
        );
    }
}

/// One row of the alert table.
/// The "Kafka writes cut off" scenario: pendo-webhook and transform-pendo are restarted with
/// their Kafka clients behind a [`KafkaProxy`] (and 1 s deadlines for Kafka calls and the
/// webhook's ack, so failures come at the compressed pace), which then drops their produce and
/// transaction requests while Pendo keeps posting to the webhook and raw events keep arriving
/// for the transformer (produced straight to the broker).
async fn kafka_writes_cut_off(
    prom: &Prometheus,
    pipeline: &mut Pipeline,
    proxy: &KafkaProxy,
) -> Vec<AlertTiming> {
    let direct = format!("bootstrap_servers = \"{}\"", bootstrap());
    for role in ["pendo-webhook", "transform-pendo"] {
        pipeline
            .restart_with(role, |text| {
                assert!(text.contains(&direct), "{text}");
                text.replace(&direct, &format!("bootstrap_servers = \"{}\"", proxy.bootstrap))
                    .replace(
                        "[processing]\n",
                        "[processing]\ntransaction_call_timeout_ms = 1000\n\
                         role_restart_backoff_initial_ms = 100\nrole_restart_backoff_max_ms = 500\n",
                    )
                    .replace(
                        "[pendo_webhook]\n",
                        "[pendo_webhook]\nack_timeout_ms = 1000\n",
                    )
            })
            .await;
    }
    let p = &*pipeline;
    // Raw events for the transformer throughout, so it has a transaction open when the broker
    // goes away.
    let feed = feed_raw(p, "cut");
    let http = unawaited_client();
    // Every webhook worker holds a producer and the transformer is busy before the cut, so
    // the cut catches transactions in flight.
    let warm_up: Vec<_> = (0..16)
        .map(|i| {
            post(
                &p.http,
                &p.pendo_url,
                page_views(&format!("warm-{i}"), 1),
                bearer(PENDO_SECRET),
            )
        })
        .collect();
    for s in futures::future::join_all(warm_up).await {
        assert_eq!(s.as_u16(), 200);
    }
    let (name, alerts) = scenario("Kafka writes cut off");
    let timings = provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(120),
        || proxy.set_writes_down(true),
        // Posts the webhook holds until its ack deadline: sent without waiting, so they keep
        // coming at the rate a sender would retry.
        |round| {
            post_unawaited(&http, &p.pendo_url, &format!("cut-{round}"), 10);
            async {}
        },
        || async { proxy.set_writes_down(false) },
    )
    .await;
    // What the cut did to the two roles' Kafka counters (the reasons in
    // ALERTS_NOT_PROVOKED for the rules that count these come from this output).
    for role in ["pendo-webhook", "transform-pendo"] {
        let text = p
            .roles
            .iter()
            .find(|r| r.0 == role)
            .map(|r| r.1.metrics())
            .expect("role")
            .await;
        println!("\n{role} after the cut:");
        for line in text.lines().filter(|l| {
            [
                "pendo_segment_transactions_total",
                "pendo_segment_commits_total",
                "pendo_segment_errors_total",
                "pendo_segment_role_restarts_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        }) {
            println!("  {line}");
        }
    }
    // Both roles serve again once Kafka takes writes: the webhook stores a post.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = post(
            &p.http,
            &p.pendo_url,
            page_views("after-the-cut", 1),
            bearer(PENDO_SECRET),
        )
        .await;
        if s.as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pendo-webhook still answers {s} 60 s after Kafka takes writes again:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    feed.abort();
    timings
}

/// Raw Pendo events (50 page views every 0.2 s) produced straight to the broker for
/// transform-pendo until the task is aborted, so it always has a transaction open.
fn feed_raw(p: &Pipeline, tag: &'static str) -> tokio::task::JoinHandle<()> {
    let raw_topic = format!("{}.pendo.raw.webhook", p.prefix);
    tokio::spawn(async move {
        for round in 0.. {
            let events = page_views(&format!("feed-{tag}-{round}"), 50);
            let events: Vec<Value> = serde_json::from_slice(&events).unwrap();
            let records = events
                .iter()
                .map(|e| (Some(format!("vis-{round}")), serde_json::to_vec(e).unwrap()))
                .collect();
            produce(&raw_topic, records).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The client of [`post_unawaited`]: answers may take until the webhook's ack deadline.
fn unawaited_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Posts `n` page views (one a post) to pendo-webhook without waiting for the answers, as
/// senders that keep sending whatever the answer do.
fn post_unawaited(http: &reqwest::Client, url: &str, tag: &str, n: usize) {
    for i in 0..n {
        let (http, url) = (http.clone(), url.to_string());
        let body = page_views(&format!("{tag}-{i}"), 1);
        tokio::spawn(async move {
            let _ = http
                .post(url)
                .header("authorization", format!("Bearer {PENDO_SECRET}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
        });
    }
}

/// The "role waits to restart" scenario: transform-pendo (behind the proxy) restarted with 3 s
/// restart pauses, then its writes cut off until the alert fires.
async fn role_waits_to_restart(
    prom: &Prometheus,
    pipeline: &mut Pipeline,
    proxy: &KafkaProxy,
) -> Vec<AlertTiming> {
    let quick = "role_restart_backoff_initial_ms = 100\nrole_restart_backoff_max_ms = 500\n";
    pipeline
        .restart_with("transform-pendo", |text| {
            assert!(text.contains(quick), "{text}");
            text.replace(
                quick,
                "role_restart_backoff_initial_ms = 3000\nrole_restart_backoff_max_ms = 3000\n",
            )
        })
        .await;
    let feed = feed_raw(pipeline, "waits");
    let (name, alerts) = scenario("role waits to restart");
    let timings = provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(90),
        || proxy.set_writes_down(true),
        |_| async {},
        || async { proxy.set_writes_down(false) },
    )
    .await;
    feed.abort();
    timings
}

/// The "Kafka writes slow" scenario: pendo-webhook (behind the proxy) restarted with 15 s
/// deadlines, its writes held 1.5 s each.
async fn kafka_writes_slow(
    prom: &Prometheus,
    pipeline: &mut Pipeline,
    proxy: &KafkaProxy,
) -> Vec<AlertTiming> {
    pipeline
        .restart_with("pendo-webhook", |text| {
            for short in [
                "transaction_call_timeout_ms = 1000\n",
                "ack_timeout_ms = 1000\n",
            ] {
                assert!(text.contains(short), "{text}");
            }
            text.replace(
                "transaction_call_timeout_ms = 1000\n",
                "transaction_call_timeout_ms = 15000\n",
            )
            .replace("ack_timeout_ms = 1000\n", "ack_timeout_ms = 15000\n")
        })
        .await;
    let p = &*pipeline;
    let http = unawaited_client();
    let (name, alerts) = scenario("Kafka writes slow");
    provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(90),
        || proxy.set_write_delay(Duration::from_millis(1500)),
        |round| {
            post_unawaited(&http, &p.pendo_url, &format!("slow-{round}"), 5);
            async {}
        },
        || async { proxy.set_write_delay(Duration::ZERO) },
    )
    .await
}

/// The "offset commits refused" scenario: segment-sink restarted behind the proxy, which then
/// closes the connections its offset commits arrive on.
async fn offset_commits_refused(
    prom: &Prometheus,
    pipeline: &mut Pipeline,
    proxy: &KafkaProxy,
) -> Vec<AlertTiming> {
    let direct = format!("bootstrap_servers = \"{}\"", bootstrap());
    pipeline
        .restart_with("segment-sink", |text| {
            assert!(text.contains(&direct), "{text}");
            text.replace(
                &direct,
                &format!("bootstrap_servers = \"{}\"", proxy.bootstrap),
            )
        })
        .await;
    let p = &*pipeline;
    let (name, alerts) = scenario("offset commits refused");
    provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(90),
        || proxy.set_commits_refused(true),
        |round| async move {
            let body = page_views(&format!("commits-{round}"), 10);
            let s = post(&p.http, &p.pendo_url, body, bearer(PENDO_SECRET)).await;
            assert_eq!(s.as_u16(), 200);
        },
        || async { proxy.set_commits_refused(false) },
    )
    .await
}

/// The "Segment 401, deep backlog" scenario, then the time segment-sink takes to deliver the
/// backlog once Segment accepts again.
async fn deep_backlog(prom: &Prometheus, p: &Pipeline) -> Vec<AlertTiming> {
    const BACKLOG: usize = 101_000;
    let raw_topic = format!("{}.pendo.raw.webhook", p.prefix);
    let segment = &p.segment;
    let (name, alerts) = scenario("Segment 401, deep backlog");
    let timings = provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(180),
        || segment.set_faults(FaultPlan::none().probability(1.0, FaultAction::Status(401))),
        |round| {
            let raw_topic = raw_topic.clone();
            async move {
                if round > 0 {
                    return;
                }
                let base: Value = serde_json::from_slice(
                    &std::fs::read(fixtures_dir().join("pendo/page-loaded.json")).unwrap(),
                )
                .unwrap();
                let records = (0..BACKLOG)
                    .map(|i| {
                        let mut e = base.clone();
                        e["uniqueId"] = format!("live-backlog-{i}").into();
                        e["visitorId"] = format!("vis-backlog-{}", i % 1000).into();
                        (
                            Some(format!("vis-backlog-{}", i % 1000)),
                            serde_json::to_vec(&e).unwrap(),
                        )
                    })
                    .collect();
                produce(&raw_topic, records).await;
            }
        },
        || async { segment.set_faults(FaultPlan::none()) },
    )
    .await;
    // The backlog drains before the next scenario, which would otherwise see its latency; every
    // stage's lag comes back down (transform-pendo's too, whose offsets are committed in its
    // transactions, which librdkafka's own lag figure does not see).
    let released = Instant::now();
    let lag = "max(sum by (job) (pendo_segment_consumer_lag))";
    loop {
        let data = prom
            .get("/api/v1/query", &[("query", lag.to_string())])
            .await;
        let left: f64 = data["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::MAX);
        if left < 100.0 {
            break;
        }
        assert!(
            released.elapsed() < Duration::from_secs(300),
            "a stage is still {left} records behind 300 s after Segment accepted again:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "\nthe backlog of {BACKLOG} events drained (every stage's lag below 100) in {:.1} s \
         (debug build)",
        released.elapsed().as_secs_f64()
    );
    timings
}

/// The "old events" scenario: raw events stamped as received 200 s ago.
async fn old_events(prom: &Prometheus, p: &Pipeline) -> Vec<AlertTiming> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    let raw_topic = format!("{}.pendo.raw.webhook", p.prefix);
    let (name, alerts) = scenario("old events");
    provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(90),
        || {},
        |round| {
            let (producer, raw_topic) = (producer.clone(), raw_topic.clone());
            async move {
                let received_at = (unix_now() * 1000.0) as i64 - 200_000;
                let stamp = received_at.to_string();
                let events: Vec<Value> =
                    serde_json::from_slice(&page_views(&format!("old-{round}"), 20)).unwrap();
                for e in &events {
                    let body = serde_json::to_vec(e).unwrap();
                    let headers = OwnedHeaders::new().insert(Header {
                        key: "received-at",
                        value: Some(stamp.as_bytes()),
                    });
                    producer
                        .send(
                            FutureRecord::<str, _>::to(&raw_topic)
                                .payload(&body)
                                .headers(headers),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .expect("produce an old event");
                }
            }
        },
        || async {},
    )
    .await
}

/// The "poller catching up" scenario: pendo-poller on a fresh state topic, 2 days behind, at
/// 1 request per second; removed by restarting it at 100.
async fn poller_catching_up(prom: &Prometheus, pipeline: &mut Pipeline) -> Vec<AlertTiming> {
    let fast = "requests_per_s = 100\n";
    let slow = "requests_per_s = 1\nevents_window_hours = 1\nevents_initial_lookback_s = 172800\n";
    let state_topic = format!("{}.state.pendo-poller.catching-up", pipeline.prefix);
    let config = &pipeline
        .roles
        .iter()
        .find(|r| r.0 == "pendo-poller")
        .expect("pendo-poller")
        .2;
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(fast), "{text}");
    let edited = format!(
        "{}[topics.overrides.\"state.pendo-poller\"]\nname = \"{state_topic}\"\n",
        text.replace(fast, slow)
    );
    let dir = tempfile::tempdir().unwrap();
    apply_topics(&write_file(dir.path(), "catching-up.toml", &edited));
    let (name, alerts) = scenario("poller catching up");
    let applied = Instant::now();
    pipeline.restart_with("pendo-poller", |_| edited).await;
    let restart_s = applied.elapsed().as_secs_f64();
    let mut timings = provoke(
        prom,
        name,
        alerts,
        Duration::from_secs(120),
        || {},
        |_| async {},
        move || pipeline.restart_with("pendo-poller", move |text| text.replace(slow, fast)),
    )
    .await;
    // The fault is the restart onto the fresh state: its time to firing includes the restart.
    for t in &mut timings {
        t.to_firing_s += restart_s;
    }
    timings
}

struct AlertTiming {
    alert: &'static str,
    scenario: &'static str,
    to_firing_s: f64,
    to_resolved_s: f64,
}

/// Once none of `alerts` fires, applies the fault (`apply`) and runs `fault` in rounds (about
/// one a second) until each of `alerts` has fired (at most `timeout`), then stops it (`remove`)
/// and waits until none of them fires any more.
async fn provoke<F, R>(
    prom: &Prometheus,
    scenario: &'static str,
    alerts: &'static [&'static str],
    timeout: Duration,
    apply: impl FnOnce(),
    mut fault: impl FnMut(usize) -> F,
    remove: impl FnOnce() -> R,
) -> Vec<AlertTiming>
where
    F: std::future::Future<Output = ()>,
    R: std::future::Future<Output = ()>,
{
    // Measured from a clean state: an alert still firing from earlier traffic would make its
    // time to firing meaningless.
    let clean = Instant::now();
    loop {
        let now = prom.firing().await;
        if !alerts.iter().any(|a| now.contains(*a)) {
            break;
        }
        assert!(
            clean.elapsed() < timeout,
            "scenario {scenario:?}: {alerts:?} already firing before the fault, for {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    apply();
    let start = Instant::now();
    let mut fired: BTreeMap<&str, f64> = BTreeMap::new();
    let mut round = 0;
    // The fault stays until every alert has fired and all fire at once, so each resolution
    // is measured from a firing state (an alert that flapped off under the fault would
    // otherwise count as resolved at once).
    let mut all_at_once = false;
    while !all_at_once && start.elapsed() < timeout {
        fault(round).await;
        round += 1;
        let now = prom.firing().await;
        for a in alerts {
            if now.contains(*a) {
                fired
                    .entry(a)
                    .or_insert_with(|| start.elapsed().as_secs_f64());
            }
        }
        all_at_once = alerts.iter().all(|a| now.contains(*a));
        if !all_at_once {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let missing: Vec<&&str> = alerts.iter().filter(|a| !fired.contains_key(**a)).collect();
    assert!(
        missing.is_empty() && all_at_once,
        "scenario {scenario:?}: {missing:?} did not fire within {timeout:?} (fired: {fired:?})"
    );
    remove().await;
    let removed = Instant::now();
    let mut resolved: BTreeMap<&str, f64> = BTreeMap::new();
    while resolved.len() < alerts.len() && removed.elapsed() < timeout {
        let now = prom.firing().await;
        for a in alerts {
            if !now.contains(*a) {
                resolved
                    .entry(a)
                    .or_insert_with(|| removed.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stuck: Vec<&&str> = alerts
        .iter()
        .filter(|a| !resolved.contains_key(**a))
        .collect();
    let mut details = Vec::new();
    for a in &stuck {
        details.extend(prom.firing_details(a).await);
    }
    assert!(
        stuck.is_empty(),
        "scenario {scenario:?}: {stuck:?} still firing {timeout:?} after the fault was removed: \
         {details:#?}"
    );
    alerts
        .iter()
        .map(|a| AlertTiming {
            alert: a,
            scenario,
            to_firing_s: fired[a],
            to_resolved_s: resolved[a],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_shows_data_and_provoked_alerts_fire_and_resolve_on_a_live_prometheus() {
    require_kafka();
    let jobs = deployed_jobs();
    assert_eq!(
        jobs,
        ROLES.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>(),
        "deploy/prometheus/prometheus.yml scrapes other jobs than the seven roles"
    );
    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "dashboard queries: {queries:?}");
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for (t, _) in PANELS_EMPTY_IN_SCENARIO {
        assert!(
            titles.contains(t),
            "PANELS_EMPTY_IN_SCENARIO: no panel {t:?}"
        );
    }

    let mut pipeline = Pipeline::start().await;
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<(&str, u16)> = pipeline.roles.iter().map(|r| (r.0, r.3)).collect();
    let prom = Prometheus::start(dir.path(), &targets).await;
    let prom_start = unix_now();
    prom.wait_targets_up(ROLES.len()).await;

    pipeline.drive_traffic().await;
    pipeline.wait_delivered().await;
    // The same traffic once more, some scrapes later: a labelled series is born with its first
    // observation, so a single burst only shows up as a series that starts at its final value,
    // and rate() over it is 0 (a ratio of two rates, NaN). Production traffic is continuous;
    // a second round gives every counter an increase Prometheus has seen.
    tokio::time::sleep(Duration::from_secs(3 * SCRAPE_S)).await;
    pipeline.drive_traffic().await;
    // A few scrapes and evaluations after it, so rates cover it.
    tokio::time::sleep(Duration::from_secs(5 * SCRAPE_S)).await;

    // Panels.
    let exempt: BTreeMap<&str, &str> = PANELS_EMPTY_IN_SCENARIO.iter().copied().collect();
    let mut per_panel: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let n = prom.series(expr, prom_start).await;
        per_panel.entry(title).or_default().push(n);
        if n == 0 && !exempt.contains_key(title.as_str()) {
            empty.push(format!("{title}: {expr}"));
        }
    }
    println!("\n| Panel | Series per query |\n|---|---|");
    for (title, counts) in &per_panel {
        let note = exempt
            .get(title)
            .map(|r| format!(" (empty in scenario: {r})"))
            .unwrap_or_default();
        println!(
            "| {title} | {} {note}|",
            counts
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    assert!(
        empty.is_empty(),
        "panel queries without any series on the live Prometheus: {empty:#?}\nPrometheus log:\n{}",
        prom.logs()
    );
    for (title, _) in PANELS_EMPTY_IN_SCENARIO {
        assert!(
            per_panel[title].iter().all(|n| *n == 0),
            "{title} is listed as empty in the scenario but shows series: drop it from the list"
        );
    }

    // Alerts.
    let mut timings = Vec::new();
    let originals: BTreeMap<&str, String> = pipeline
        .roles
        .iter()
        .map(|r| (r.0, std::fs::read_to_string(&r.2).unwrap()))
        .collect();
    let proxy = KafkaProxy::start().await;
    timings.extend(kafka_writes_cut_off(&prom, &mut pipeline, &proxy).await);
    timings.extend(role_waits_to_restart(&prom, &mut pipeline, &proxy).await);
    pipeline
        .restart_with("transform-pendo", |_| originals["transform-pendo"].clone())
        .await;
    timings.extend(kafka_writes_slow(&prom, &mut pipeline, &proxy).await);
    pipeline
        .restart_with("pendo-webhook", |_| originals["pendo-webhook"].clone())
        .await;
    timings.extend(offset_commits_refused(&prom, &mut pipeline, &proxy).await);
    pipeline
        .restart_with("segment-sink", |_| originals["segment-sink"].clone())
        .await;
    let p = &pipeline;
    let segment = &pipeline.segment;
    let blocked_from = unix_now();
    // Segment faults: (scenario, what Segment answers, Pendo events posted a round).
    let rate_limited = FaultAction::RateLimited {
        retry_after_secs: 1,
    };
    for (i, (scenario_name, answer, events)) in [
        ("Segment 401, lag", FaultAction::Status(401), 200),
        ("Segment 401", FaultAction::Status(401), 200),
        ("Segment 503", FaultAction::Status(503), 10),
        ("Segment 404", FaultAction::Status(404), 10),
        ("Segment 429", rate_limited, 10),
    ]
    .into_iter()
    .enumerate()
    {
        let (name, alerts) = scenario(scenario_name);
        timings.extend(
            provoke(
                &prom,
                name,
                alerts,
                Duration::from_secs(90),
                || segment.set_faults(FaultPlan::none().probability(1.0, answer)),
                |round| async move {
                    let body = page_views(&format!("segment-{i}-{round}"), events);
                    let s = post(&p.http, &p.pendo_url, body, bearer(PENDO_SECRET)).await;
                    assert_eq!(s.as_u16(), 200);
                },
                || async { segment.set_faults(FaultPlan::none()) },
            )
            .await,
        );
        if name == "Segment 401" {
            check_sink_lag_while_paused(&prom, blocked_from).await;
        }
    }

    timings.extend(deep_backlog(&prom, p).await);
    timings.extend(old_events(&prom, p).await);

    let (name, alerts) = scenario("Pendo 401");
    let pendo = &pipeline.pendo;
    timings.extend(
        provoke(
            &prom,
            name,
            alerts,
            Duration::from_secs(90),
            || pendo.set_faults(PendoFaultPlan::none().range(1, u64::MAX, PendoFault::Status(401))),
            |_| async move {
                for (name, body) in &p.segment_fixtures {
                    let signature = sign_hex(SEGMENT_SECRET.as_bytes(), signed_part(body));
                    let s = post(
                        &p.http,
                        &p.segment_url,
                        body.clone(),
                        ("x-signature", signature),
                    )
                    .await;
                    assert_eq!(s.as_u16(), 200, "{name}");
                }
            },
            || async { pendo.set_faults(PendoFaultPlan::none()) },
        )
        .await,
    );

    // The Pendo API answering every read of the poller with this status.
    for (scenario_name, status) in [("Pendo API 503", 503), ("Pendo API 401", 401)] {
        let (name, alerts) = scenario(scenario_name);
        timings.extend(
            provoke(
                &prom,
                name,
                alerts,
                Duration::from_secs(90),
                || {
                    pendo.set_read_faults(PendoFaultPlan::none().range(
                        1,
                        u64::MAX,
                        PendoFault::Status(status),
                    ))
                },
                |_| async {},
                || async { pendo.set_read_faults(PendoFaultPlan::none()) },
            )
            .await,
        );
    }

    timings.extend(poller_catching_up(&prom, &mut pipeline).await);

    let sink_ops = pipeline
        .roles
        .iter()
        .find(|r| r.0 == "pendo-sink")
        .map(|r| r.3)
        .expect("pendo-sink");
    let (name, alerts) = scenario("role killed");
    pipeline.role("pendo-poller").kill9();
    let killed = Instant::now();
    let mut fired = None;
    while fired.is_none() && killed.elapsed() < Duration::from_secs(60) {
        if prom.firing().await.contains(alerts[0]) {
            fired = Some(killed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let to_firing_s = fired.unwrap_or_else(|| panic!("{alerts:?} did not fire within 60 s"));
    let restarted = Instant::now();
    pipeline.restart("pendo-poller").await;
    while prom.firing().await.contains(alerts[0]) {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "{alerts:?} still firing 60 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    timings.push(AlertTiming {
        alert: alerts[0],
        scenario: name,
        to_firing_s,
        to_resolved_s: restarted.elapsed().as_secs_f64(),
    });

    let (name, alerts) = scenario("role gone from discovery");
    timings.extend(
        provoke(
            &prom,
            name,
            alerts,
            Duration::from_secs(90),
            || prom.set_target("pendo-sink", None),
            |_| async {},
            || async { prom.set_target("pendo-sink", Some(sink_ops)) },
        )
        .await,
    );

    let p = &pipeline;
    let (name, alerts) = scenario("bad input");
    timings.extend(
        provoke(
            &prom,
            name,
            alerts,
            Duration::from_secs(90),
            || {},
            |round| bad_input(p, round),
            || async {},
        )
        .await,
    );

    let (name, alerts) = scenario("Pendo webhook silent");
    // The silences of earlier phases (none posts while its alerts resolve) may have fired it
    // already: one accepted event ends that, so the silence is measured from a clean state.
    post_page_view(p, "silence-begins").await;
    timings.extend(
        provoke(
            &prom,
            name,
            alerts,
            Duration::from_secs(90),
            || {},
            |_| async {},
            || post_page_view(p, "silence-ends"),
        )
        .await,
    );

    println!(
        "\n| Alert | Scenario | Fault -> firing (s) | Removed -> resolved (s) |\n|---|---|---|---|"
    );
    for t in &timings {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            t.alert, t.scenario, t.to_firing_s, t.to_resolved_s
        );
    }
    assert_eq!(
        timings.len(),
        SCENARIOS.iter().map(|(_, a, _)| a.len()).sum::<usize>()
    );
    pipeline.shutdown().await;
}
