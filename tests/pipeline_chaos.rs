//! Issue #9, the whole forward path under chaos. Every role runs as its own process, as it would
//! in production: `pendo-webhook` (HTTP) -> `pendo.raw.webhook` -> `transform-pendo` ->
//! `canonical.segment-calls` -> `segment-sink` -> the Segment test server over real HTTP, on the
//! real broker. 100,000 valid synthetic Pendo events of every kind the shipped mapping knows
//! (plus an unknown kind, aliases, every time format, anonymous visitors and account-only events)
//! are posted as JSON-array deliveries of 50-200 events by senders that retry like Pendo does (on
//! 503 and on connection errors, so a delivery in flight when the webhook dies is sent again);
//! interleaved are malformed bodies (-> `dlq.pendo-webhook`) and events the transformer
//! dead-letters (-> `dlq.transform-pendo`). Meanwhile each role is SIGKILLed and restarted three
//! times and the broker is SIGKILLed and restarted once, on a seeded schedule.
//!
//! At the end Segment must hold exactly the calls the valid events map to — each once after
//! de-duplication by messageId, none missing, none extra — and every bad input must sit in its
//! DLQ with a reason. The oracle is computed here, by hand, from the mapping file (see
//! [`KINDS`]), not with the library's mapper: an oracle sharing the mapper's code would share
//! its bugs. Every call is identified by (type, event/page name, timestamp, identity); the
//! synthetic event times are distinct per event (one second apart — guide and poll messageIds
//! use the event time at second precision), so each expected call has its own key, and the
//! check is that the keys Segment received are exactly the expected ones, each with exactly one
//! messageId (the messageId is deterministic: redeliveries collapse), and that no messageId
//! names two calls. The per-kind counts are printed.
//!
//! This binary restarts the shared local broker, so it holds this one test only (cargo runs
//! test binaries one after another), as `pendo_webhook_broker_restart.rs` does. The broker is
//! SIGKILLed rather than stopped gracefully for the reason given there (issue #3: a graceful
//! stop can lose the commit markers of an acknowledged transaction).
//!
//! `PIPELINE_CHAOS_SEED=<n>` replays a run's data and chaos schedule (the seed is printed).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use serde_json::{Value, json};
use support::segment_server::{SegmentServerConfig, SegmentTestServer};
use support::*;

/// Valid events posted (the issue's number).
const VALID_EVENTS: usize = 100_000;
/// Events the transformer must dead-letter, per reason.
const BAD_PER_REASON: usize = 25;
/// Bodies the webhook must refuse (400) and dead-letter.
const MALFORMED_BODIES: usize = 30;
/// Concurrent webhook senders (Pendo delivers concurrently).
const SENDERS: usize = 8;
/// SIGKILLs of each role during the run.
const KILLS_PER_ROLE: usize = 3;
/// How long the broker stays down.
const BROKER_DOWN: Duration = Duration::from_secs(5);
/// After the last delivery was accepted, Segment must have everything within this.
const DRAIN_DEADLINE: Duration = Duration::from_secs(300);
/// How long `scripts/kafka-local start` may wait for the restarted broker to answer. The shared
/// test broker holds thousands of partitions (every test run leaves its topics) and recovers
/// them all after a SIGKILL: 74-125 s measured, beyond the script's default of 120 s.
const BROKER_START_TIMEOUT_S: u64 = 400;
/// A delivery still refused after this long fails the test (it is refused with 503 for as long
/// as the broker is down).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(BROKER_START_TIMEOUT_S + 80);
/// Minimum time between two chaos steps, so a restarted role gets to work before the next one.
const MIN_STEP_GAP: Duration = Duration::from_secs(2);
const SECRET: &str = "chaos-webhook-secret";
const ROLES: [&str; 3] = ["pendo-webhook", "transform-pendo", "segment-sink"];
/// Event `i` happens at `BASE_S + i` seconds (plus up to 999 ms): distinct times per event.
const BASE_S: u64 = 1_764_000_000;

// ---------------------------------------------------------------------------------------------
// The oracle: what the shipped mapping (deploy/mappings/pendo-to-segment.toml) makes of each
// Pendo kind, read off that file by hand.

/// How a call's name is found.
#[derive(Clone, Copy)]
enum CallName {
    /// A fixed track event name from the mapping file.
    Fixed(&'static str),
    /// identify / group: no name.
    None,
    /// page: `name_from = "properties.pageName"`.
    PageName,
    /// custom track: `event_from = "properties.trackTypeName"`.
    TrackTypeName,
}

/// Which properties a synthetic event of a kind carries.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Feature,
    Page,
    Track,
    Milestone,
    Guide,
    Poll,
    PollSubmitted,
    Nps,
    Visitor,
    Account,
    Unknown,
}

struct KindSpec {
    /// The kind (first spelling is canonical; the others are aliases from the mapping file).
    spellings: &'static [&'static str],
    /// Relative frequency (feature clicks and page loads dominate real traffic).
    weight: u64,
    shape: Shape,
    /// The Segment calls, in the mapping's order (identify, group, page, track).
    calls: &'static [(&'static str, CallName)],
}

const fn kind(
    spellings: &'static [&'static str],
    weight: u64,
    shape: Shape,
    calls: &'static [(&'static str, CallName)],
) -> KindSpec {
    KindSpec {
        spellings,
        weight,
        shape,
        calls,
    }
}

/// `[kinds.*]` of the mapping file, one call each except npsSubmitted (identify + track); an
/// unknown kind is passed through as track `Pendo <kind>` (`[unknown_kinds] policy`).
const KINDS: [KindSpec; 18] = [
    kind(
        &["featureClicked", "feature_clicked", "featureClick"],
        22,
        Shape::Feature,
        &[("track", CallName::Fixed("Feature Clicked"))],
    ),
    kind(
        &["pageLoaded", "pageView", "page_loaded"],
        20,
        Shape::Page,
        &[("page", CallName::PageName)],
    ),
    kind(
        &["trackEventReceived", "trackEvent"],
        12,
        Shape::Track,
        &[("track", CallName::TrackTypeName)],
    ),
    kind(
        &["featureMilestoneReached"],
        2,
        Shape::Milestone,
        &[("track", CallName::Fixed("Feature Milestone Reached"))],
    ),
    kind(
        &["guideDisplayed", "guideSeen"],
        8,
        Shape::Guide,
        &[("track", CallName::Fixed("Guide Seen"))],
    ),
    kind(
        &["guideAdvanced", "guide_advanced"],
        3,
        Shape::Guide,
        &[("track", CallName::Fixed("Guide Advanced"))],
    ),
    kind(
        &["guideDismissed"],
        3,
        Shape::Guide,
        &[("track", CallName::Fixed("Guide Dismissed"))],
    ),
    kind(
        &["guideSnoozed"],
        2,
        Shape::Guide,
        &[("track", CallName::Fixed("Guide Snoozed"))],
    ),
    kind(
        &["guideCompleted"],
        3,
        Shape::Guide,
        &[("track", CallName::Fixed("Guide Completed"))],
    ),
    kind(
        &["pollDisplayed", "pollSeen"],
        3,
        Shape::Poll,
        &[("track", CallName::Fixed("Poll Seen"))],
    ),
    kind(
        &["pollSubmitted"],
        3,
        Shape::PollSubmitted,
        &[("track", CallName::Fixed("Poll Responded"))],
    ),
    kind(
        &["npsDisplayed", "NPSSeen"],
        3,
        Shape::Guide,
        &[("track", CallName::Fixed("NPS Survey Seen"))],
    ),
    kind(
        &["npsSubmitted", "NPSSubmitted"],
        4,
        Shape::Nps,
        &[
            ("identify", CallName::None),
            ("track", CallName::Fixed("NPS Survey Responded")),
        ],
    ),
    kind(
        &["visitorCreated", "visitorFirstSeen"],
        3,
        Shape::Visitor,
        &[("identify", CallName::None)],
    ),
    kind(
        &["visitorMetadataUpdated"],
        3,
        Shape::Visitor,
        &[("identify", CallName::None)],
    ),
    kind(
        &["accountCreated"],
        2,
        Shape::Account,
        &[("group", CallName::None)],
    ),
    kind(
        &["accountMetadataUpdated", "accountSnapshot"],
        3,
        Shape::Account,
        &[("group", CallName::None)],
    ),
    kind(
        &["frustrationDetected"],
        1,
        Shape::Unknown,
        &[("track", CallName::Fixed("Pendo frustrationDetected"))],
    ),
];

/// One expected Segment call: (type, event or page name, ISO timestamp, "user:<id>" or
/// "anon:<id>").
type CallKey = (String, String, String, String);

fn iso(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

const PAGES: [&str; 5] = [
    "Reports",
    "Dashboard",
    "Billing",
    "Settings – Team",
    "Onboarding",
];
const TRACK_TYPES: [&str; 4] = [
    "Report Exported",
    "Invoice Sent",
    "Dashboard Shared",
    "Export Scheduled",
];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
];
const LANGUAGES: [&str; 4] = ["en-US", "de-DE", "fr-FR", "ja-JP"];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

/// Valid event `i` (0.4-1 KB): its JSON, its kind's index in [`KINDS`], the calls it must become.
fn valid_event(i: usize, rng: &mut Rng) -> (Value, usize, Vec<CallKey>) {
    let total: u64 = KINDS.iter().map(|k| k.weight).sum();
    let mut draw = rng.below(total);
    let ki = KINDS
        .iter()
        .position(|k| {
            if draw < k.weight {
                true
            } else {
                draw -= k.weight;
                false
            }
        })
        .unwrap();
    let spec = &KINDS[ki];
    // Mostly the canonical spelling, sometimes an alias.
    let spelling = if rng.below(10) == 0 {
        pick(rng, spec.spellings)
    } else {
        spec.spellings[0]
    };
    let account = format!("acct-{:04}", rng.below(400));
    let visitor = match spec.shape {
        Shape::Account => None,
        _ if rng.below(100) < 6 => Some(format!("_PENDO_T_{:016x}", rng.next())),
        _ => Some(format!("vis-{:05}", rng.below(20_000))),
    };
    let secs = BASE_S + i as u64;
    let language = pick(rng, &LANGUAGES);
    let url = format!(
        "https://app.acme.example/{}/{}?tab=summary&ref=nav",
        pick(rng, &["reports", "dashboards", "billing", "settings"]),
        rng.below(10_000)
    );
    let guide = || {
        let g = format!("gd_{:03}", i % 211);
        json!({"guideId": g, "guideStepId": format!("st_{:02}", i % 7), "language": language,
               "guideProperties": {"id": g, "name": format!("Guide {}", i % 211), "createdAt": 1_731_000_000_000_u64,
                   "steps": [{"id": "st_01", "type": "lightbox"}, {"id": "st_02", "type": "tooltip"}]}})
    };
    let properties = match spec.shape {
        Shape::Feature => json!({"featureId": format!("ft_{}", rng.below(300)),
            "featureName": "Export CSV button", "pageId": format!("pg_{}", rng.below(80)), "url": url,
            "language": language}),
        Shape::Page => {
            json!({"pageId": format!("pg_{}", rng.below(80)), "pageName": pick(rng, &PAGES),
            "url": url, "title": "Weekly revenue – Reports", "referrer": "https://app.acme.example/home",
            "language": language})
        }
        Shape::Track => json!({"trackTypeName": pick(rng, &TRACK_TYPES),
            "trackTypeId": format!("tt_{}", rng.below(40)), "url": url, "language": language,
            "eventProperties": {"format": pick(rng, &["csv", "xlsx", "pdf"]), "rows": rng.below(100_000),
                "scheduled": rng.below(2) == 0, "report": {"id": format!("rep-{}", rng.below(500)), "name": "Weekly revenue"}}}),
        Shape::Milestone => {
            json!({"rule": "power_user", "count": 10 + rng.below(50), "threshold": 10,
            "window_days": 30, "measure": "clicks", "feature_ids": ["ft_1", "ft_2", "ft_3"]})
        }
        Shape::Guide => guide(),
        Shape::Poll => {
            let mut g = guide();
            g["pollId"] = json!(format!("pl_{}", rng.below(30)));
            g
        }
        Shape::PollSubmitted => {
            let mut g = guide();
            g["pollId"] = json!(format!("pl_{}", rng.below(30)));
            g["pollType"] = json!("PickList");
            g["pollResponse"] = json!(pick(rng, &["Team", "Growth", "Enterprise"]));
            g
        }
        Shape::Nps => {
            let mut g = guide();
            g["nps"] = json!({"rating": rng.below(11), "source": "web",
                "reason": "Exports time out on big reports — \"rows > 50k\" fails."});
            g
        }
        Shape::Visitor => json!({"metadata": {
            "agent": {"email": format!("user{}@example.com", rng.below(20_000)), "full_name": "Lena Okafor",
                      "role": pick(rng, &["admin", "member", "viewer"]), "language": language},
            "custom": {"plan_tier": pick(rng, &["team", "growth", "enterprise"]), "beta_flags": ["new-editor", "ai-summary"]}}}),
        Shape::Account => json!({"metadata": {
            "agent": {"name": format!("Customer {account}"), "industry": pick(rng, &["Retail", "Manufacturing", "Software"])},
            "custom": {"plan_tier": pick(rng, &["team", "growth", "enterprise"]), "health_score": rng.below(100),
                       "active_visitors_30d": rng.below(500)}}}),
        Shape::Unknown => {
            json!({"type": "rage_click", "elementPath": "div.toolbar > button.export", "url": url})
        }
    };
    let mut e = json!({
        "event": spelling,
        "accountId": account,
        "uniqueId": format!("{:016x}{:016x}{:08x}", rng.next(), rng.next(), i),
        "app": {"id": -323232, "name": "acme-web", "platform": "web"},
        "subscription": {"id": 5_550_000_000_000_001_u64, "name": "acme-web"},
        "properties": properties,
    });
    if let Some(v) = &visitor {
        e["visitorId"] = json!(v);
    }
    if !matches!(
        spec.shape,
        Shape::Account | Shape::Visitor | Shape::Milestone
    ) {
        e["userAgent"] = json!(pick(rng, &AGENTS));
    }
    // Every time format the mapping accepts (`time_from = ["timestamp", "browserTime"]`).
    let ms = match rng.below(100) {
        0..60 => {
            e["timestamp"] = json!(secs);
            secs * 1000
        }
        60..85 => {
            let ms = secs * 1000 + rng.below(1000);
            e["timestamp"] = json!(ms);
            ms
        }
        85..93 => {
            let ms = secs * 1000 + rng.below(1000);
            e["timestamp"] = json!(iso(ms));
            ms
        }
        _ => {
            let ms = secs * 1000 + rng.below(1000);
            e["browserTime"] = json!(ms);
            ms
        }
    };
    let identity = match &visitor {
        Some(v) if v.starts_with("_PENDO_T_") => format!("anon:{v}"),
        Some(v) => format!("user:{v}"),
        None => format!("anon:pendo-account:{account}"),
    };
    let calls = spec
        .calls
        .iter()
        .map(|(call, name)| {
            let name = match name {
                CallName::Fixed(n) => n.to_string(),
                CallName::None => String::new(),
                CallName::PageName => e["properties"]["pageName"].as_str().unwrap().to_string(),
                CallName::TrackTypeName => e["properties"]["trackTypeName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            };
            (call.to_string(), name, iso(ms), identity.clone())
        })
        .collect();
    (e, ki, calls)
}

/// The transformer's dead-letter reasons exercised here (README, role `transform-pendo`).
const BAD_REASONS: [&str; 4] = ["no_identity", "no_event_time", "no_kind", "too_large"];

/// Bad event `n`: its JSON and the reason it must be dead-lettered with; its uniqueId is
/// `bad-<reason>-<n>`.
fn bad_event(n: usize) -> (Value, &'static str) {
    let reason = BAD_REASONS[n % BAD_REASONS.len()];
    let id = format!("bad-{reason}-{n}");
    let ts = BASE_S - 10_000 - n as u64;
    let v = match reason {
        "no_identity" => json!({"event": "featureClicked", "uniqueId": id, "timestamp": ts,
            "properties": {"featureId": "ft_1", "featureName": "Export CSV button"}}),
        "no_event_time" => {
            json!({"event": "pageLoaded", "visitorId": "vis-00001", "accountId": "acct-0001",
            "uniqueId": id, "properties": {"pageId": "pg_1", "pageName": "Reports", "url": "https://app.acme.example/r"}})
        }
        "no_kind" => json!({"visitorId": "vis-00002", "accountId": "acct-0001", "uniqueId": id,
            "timestamp": ts, "properties": {"featureId": "ft_2"}}),
        // 40,000 bytes of properties: over the 32,000-byte Segment event limit.
        _ => {
            json!({"event": "trackEventReceived", "visitorId": "vis-00003", "accountId": "acct-0001",
            "uniqueId": id, "timestamp": ts, "properties": {"trackTypeName": "Bulk Import",
                "eventProperties": {"payload": "x".repeat(40_000)}}})
        }
    };
    (v, reason)
}

/// Malformed body `n` (the webhook answers 400 and keeps the body on its DLQ); each is unique.
fn malformed_body(n: usize) -> Vec<u8> {
    match n % 5 {
        // Cut off mid-delivery.
        0 => format!(
            "{{\"event\":\"featureClicked\",\"visitorId\":\"vis-00001\",\"uniqueId\":\"mal-{n}\",\"properties\":{{\"featureId\":\"ft_1\""
        ),
        // A proxy's error page.
        1 => format!("<html><body><h1>502 Bad Gateway</h1><!-- mal-{n} --></body></html>"),
        // JSON, but not events.
        2 => format!("[\"mal-{n}\", 42]"),
        // Nested deeper than the webhook accepts (64).
        3 => format!(
            "{}{{\"uniqueId\":\"mal-{n}\"}}{}",
            "[".repeat(70),
            "]".repeat(70)
        ),
        // Trailing garbage.
        _ => format!("{{\"event\":\"pageLoaded\",\"uniqueId\":\"mal-{n}\"}} trailing"),
    }
    .into_bytes()
}

struct Delivery {
    body: Bytes,
    /// Events in it (0 for a malformed body).
    events: usize,
    malformed: bool,
}

struct Workload {
    deliveries: Vec<Delivery>,
    expected: HashSet<CallKey>,
    per_kind: Vec<usize>,
    /// uniqueId -> expected dead-letter reason.
    bad: HashMap<String, &'static str>,
    malformed: HashSet<Vec<u8>>,
}

fn workload(rng: &mut Rng) -> Workload {
    let mut events: Vec<Vec<u8>> = Vec::with_capacity(VALID_EVENTS + 200);
    let mut expected = HashSet::new();
    let mut per_kind = vec![0; KINDS.len()];
    let mut calls = 0;
    for i in 0..VALID_EVENTS {
        let (e, ki, c) = valid_event(i, rng);
        per_kind[ki] += 1;
        calls += c.len();
        expected.extend(c);
        events.push(serde_json::to_vec(&e).unwrap());
    }
    assert_eq!(expected.len(), calls, "every expected call has its own key");
    let mut bad = HashMap::new();
    for n in 0..BAD_PER_REASON * BAD_REASONS.len() {
        let (e, reason) = bad_event(n);
        bad.insert(e["uniqueId"].as_str().unwrap().to_string(), reason);
        let at = rng.below(events.len() as u64 + 1) as usize;
        events.insert(at, serde_json::to_vec(&e).unwrap());
    }
    // Deliveries of 50-200 events, now and then a single event (not an array).
    let mut deliveries = Vec::new();
    let mut rest = &events[..];
    while !rest.is_empty() {
        let n = if rng.below(50) == 0 {
            1
        } else {
            (50 + rng.below(151) as usize).min(rest.len())
        };
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let body = if n == 1 && rng.below(2) == 0 {
            batch[0].clone()
        } else {
            let mut b = b"[".to_vec();
            for (k, e) in batch.iter().enumerate() {
                if k > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(e);
            }
            b.push(b']');
            b
        };
        deliveries.push(Delivery {
            body: Bytes::from(body),
            events: n,
            malformed: false,
        });
    }
    let mut malformed = HashSet::new();
    for n in 0..MALFORMED_BODIES {
        let body = malformed_body(n);
        malformed.insert(body.clone());
        let at = rng.below(deliveries.len() as u64 + 1) as usize;
        deliveries.insert(
            at,
            Delivery {
                body: Bytes::from(body),
                events: 0,
                malformed: true,
            },
        );
    }
    Workload {
        deliveries,
        expected,
        per_kind,
        bad,
        malformed,
    }
}

// ---------------------------------------------------------------------------------------------
// The processes and the chaos schedule.

/// The role processes, each started from its own directory (config, log).
struct Fleet {
    dir: PathBuf,
    prefix: String,
    extra: String,
    procs: Vec<RoleProcess>,
    starts: usize,
}

impl Fleet {
    fn start(&mut self, role: usize) -> RoleProcess {
        self.starts += 1;
        let d = self.dir.join(format!("{}-{}", ROLES[role], self.starts));
        std::fs::create_dir_all(&d).unwrap();
        let (config, ops) = role_config(&d, &self.prefix, &self.extra);
        // A stable instance id per role, as the README asks (e.g. the pod name): a restarted
        // instance fences its killed predecessor's open transactions at once.
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[kafka]\n",
            &format!("[kafka]\ninstance_id = \"{}\"\n", self.prefix),
        );
        std::fs::write(&config, text).unwrap();
        RoleProcess::start(
            &config,
            &["run", "--role", ROLES[role]],
            ops,
            d.join("role.log"),
        )
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (r, p) in self.procs.iter().enumerate() {
            let logs = p.logs();
            let tail: Vec<&str> = logs.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} ({}):\n", ROLES[r], p.log.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Kill(usize),
    BrokerRestart,
}

/// When a step may fire: once the webhook accepted this many events, or once Segment holds this
/// many distinct calls.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Accepted(usize),
    Delivered(usize),
}

struct Step {
    trigger: Trigger,
    action: Action,
    /// How long the killed role stays down before its "supervisor" restarts it.
    down: Duration,
}

/// The seeded schedule. Each role is killed while it has work: the webhook while deliveries
/// arrive (at 15-30 %, 40-55 % and 65-80 % of the events accepted), the transformer and the sink
/// while calls flow to Segment (six kills in a seeded order, spread over 3-60 % of the calls
/// delivered). The broker is killed while deliveries arrive (40-55 % accepted), so it hits every
/// role mid-stream. A kill also waits until its target has been ready for a while (see
/// [`chaos`]), so no kill hits a process still starting up.
fn schedule(rng: &mut Rng, expected_calls: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for k in 0..KILLS_PER_ROLE {
        let pct = 15 + 25 * k as u64;
        steps.push((pct * 100, Trigger::Accepted(0), Action::Kill(0)));
    }
    steps.push((4000, Trigger::Accepted(0), Action::BrokerRestart));
    let mut downstream: Vec<Action> = (0..KILLS_PER_ROLE)
        .flat_map(|_| [Action::Kill(1), Action::Kill(2)])
        .collect();
    for i in (1..downstream.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        downstream.swap(i, j);
    }
    let n = downstream.len() as u64;
    for (k, action) in downstream.into_iter().enumerate() {
        // Basis points of the calls delivered: 3 %..53 % plus up to 7 % jitter. Not later: once
        // the broker is back, the last half of the calls can reach Segment within seconds.
        let bp = 300 + k as u64 * 6_000 / n;
        steps.push((bp, Trigger::Delivered(0), action));
    }
    steps
        .into_iter()
        .map(|(bp, trigger, action)| {
            let bp = bp
                + rng.below(if matches!(trigger, Trigger::Accepted(_)) {
                    1_500
                } else {
                    700
                });
            let trigger = match trigger {
                Trigger::Accepted(_) => {
                    Trigger::Accepted((VALID_EVENTS as u64 * bp / 10_000) as usize)
                }
                Trigger::Delivered(_) => {
                    Trigger::Delivered((expected_calls as u64 * bp / 10_000) as usize)
                }
            };
            Step {
                trigger,
                action,
                down: Duration::from_millis(rng.below(1500)),
            }
        })
        .collect()
}

/// A target must have answered `/readyz` 200 for this long before it is killed.
const READY_BEFORE_KILL: Duration = Duration::from_millis(1500);

/// `scripts/kafka-local <cmd>` on the local broker, as `support::local_broker` runs it, with
/// [`BROKER_START_TIMEOUT_S`] for `start`.
fn kafka_local(cmd: &str) {
    let servers = bootstrap();
    let port = servers
        .strip_prefix("127.0.0.1:")
        .expect("the local broker");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-local");
    let status = std::process::Command::new(script)
        .arg(cmd)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("KAFKA_LOCAL_PORT", port)
        .env(
            "KAFKA_LOCAL_START_TIMEOUT",
            BROKER_START_TIMEOUT_S.to_string(),
        )
        .status()
        .expect("run scripts/kafka-local");
    assert!(status.success(), "scripts/kafka-local {cmd} failed");
}

async fn is_ready(http: &reqwest::Client, ops: &str) -> bool {
    matches!(
        http.get(format!("{ops}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await,
        Ok(r) if r.status() == 200
    )
}

/// Between the test and [`chaos`]: `done` once every step ran, `stop` to end supervision.
#[derive(Default)]
struct Signals {
    done: AtomicBool,
    stop: AtomicBool,
}

struct ChaosReport {
    fleet: Fleet,
    kills: usize,
    /// Kills that came when Segment already held every call (the role had nothing left to do).
    kills_after_delivery: usize,
    broker_restarts: usize,
    unplanned_exits: Vec<String>,
}

/// Runs the schedule and, like a process supervisor, restarts any role that exits on its own
/// (a role stops non-zero on errors it must not guess about, e.g. a Kafka call that overran its
/// deadline while the broker was down). A step fires when its trigger is reached, at least
/// [`MIN_STEP_GAP`] after the previous one, and — for a kill — once its target has been ready
/// for [`READY_BEFORE_KILL`]; steps whose conditions hold fire in schedule order. Returns when
/// `stop` is set and the whole schedule has run.
async fn chaos(
    mut fleet: Fleet,
    mut plan: Vec<Step>,
    server: Arc<SegmentTestServer>,
    expected_calls: usize,
    accepted: Arc<AtomicUsize>,
    signals: Arc<Signals>,
    t0: Instant,
) -> ChaosReport {
    let http = reqwest::Client::new();
    let (mut kills, mut broker_restarts, mut unplanned_exits) = (0, 0, vec![]);
    let mut kills_after_delivery = 0;
    let mut last_step = Instant::now();
    let mut restart_at: [Option<Instant>; 3] = [None; 3];
    let mut ready_since: [Option<Instant>; 3] = [None; 3];
    let started = Instant::now();
    let secs = || t0.elapsed().as_secs_f64();
    loop {
        // Supervise, and watch readiness.
        for r in 0..ROLES.len() {
            if let Some(at) = restart_at[r] {
                if Instant::now() >= at {
                    fleet.procs[r] = fleet.start(r);
                    restart_at[r] = None;
                }
            } else if let Some(status) = fleet.procs[r].exit_status() {
                let note = format!(
                    "[{:6.1}s] {} exited on its own ({status})",
                    secs(),
                    ROLES[r]
                );
                println!("{note}; restarting it in 1 s");
                unplanned_exits.push(note);
                restart_at[r] = Some(Instant::now() + Duration::from_secs(1));
            }
            if restart_at[r].is_none() && is_ready(&http, &fleet.procs[r].ops).await {
                ready_since[r].get_or_insert_with(Instant::now);
            } else {
                ready_since[r] = None;
            }
        }
        let (acc, delivered) = (accepted.load(Ordering::Relaxed), server.distinct_count());
        let eligible = plan.iter().position(|s| {
            let reached = match s.trigger {
                Trigger::Accepted(n) => acc >= n,
                Trigger::Delivered(n) => delivered >= n,
            };
            let target_ready = match s.action {
                Action::Kill(r) => ready_since[r].is_some_and(|t| t.elapsed() >= READY_BEFORE_KILL),
                Action::BrokerRestart => true,
            };
            reached && target_ready && last_step.elapsed() >= MIN_STEP_GAP
        });
        if let Some(i) = eligible {
            let step = plan.remove(i);
            match step.action {
                Action::Kill(r) => {
                    fleet.procs[r].kill9();
                    kills += 1;
                    if delivered >= expected_calls {
                        kills_after_delivery += 1;
                    }
                    ready_since[r] = None;
                    println!(
                        "[{:6.1}s] SIGKILL {} ({acc} events accepted, {delivered} calls delivered); \
                         restarted after {} ms",
                        secs(),
                        ROLES[r],
                        step.down.as_millis()
                    );
                    tokio::time::sleep(step.down).await;
                    fleet.procs[r] = fleet.start(r);
                }
                Action::BrokerRestart => {
                    println!(
                        "[{:6.1}s] broker SIGKILL ({acc} events accepted, {delivered} calls delivered), \
                         restarted after {BROKER_DOWN:?}",
                        secs()
                    );
                    // Kill and start in one blocking task, so the broker is started again
                    // whatever happens to this test meanwhile.
                    let took = tokio::task::spawn_blocking(|| {
                        kafka_local("kill");
                        std::thread::sleep(BROKER_DOWN);
                        let start = Instant::now();
                        kafka_local("start");
                        start.elapsed()
                    })
                    .await
                    .unwrap();
                    broker_restarts += 1;
                    println!(
                        "[{:6.1}s] broker answering again ({:.1}s after its start)",
                        secs(),
                        took.as_secs_f64()
                    );
                    ready_since = [None; 3];
                }
            }
            last_step = Instant::now();
            if plan.is_empty() {
                signals.done.store(true, Ordering::Relaxed);
            }
        } else if !plan.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "chaos steps never became due: {:?}\n{}",
                plan.iter()
                    .map(|s| (s.trigger, s.action))
                    .collect::<Vec<_>>(),
                fleet.log_tails()
            );
        } else if signals.stop.load(Ordering::Relaxed) && restart_at.iter().all(Option::is_none) {
            return ChaosReport {
                fleet,
                kills,
                kills_after_delivery,
                broker_restarts,
                unplanned_exits,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct SenderStats {
    attempts: AtomicUsize,
    refused_503: AtomicUsize,
    connection_errors: AtomicUsize,
    malformed_refused: AtomicUsize,
}

/// Posts deliveries from the shared queue until it is empty; each is retried until answered
/// 200 (valid) or 400 (malformed), as Pendo retries a delivery that failed.
async fn sender(
    url: String,
    deliveries: Arc<Vec<Delivery>>,
    next: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    stats: Arc<SenderStats>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let Some(d) = deliveries.get(n) else {
            return;
        };
        let first = Instant::now();
        loop {
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            let answer = http
                .post(&url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {SECRET}"))
                .body(d.body.clone())
                .send()
                .await;
            match answer {
                Ok(r) => match (r.status().as_u16(), d.malformed) {
                    (200, false) => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        assert_eq!(v["accepted"], d.events, "delivery {n}: {v}");
                        accepted.fetch_add(d.events, Ordering::Relaxed);
                        break;
                    }
                    (400, true) => {
                        stats.malformed_refused.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    (503, _) => {
                        stats.refused_503.fetch_add(1, Ordering::Relaxed);
                    }
                    (status, malformed) => {
                        let text = r.text().await.unwrap_or_default();
                        panic!("delivery {n} (malformed: {malformed}) answered {status}: {text}");
                    }
                },
                // The webhook is down or died with the request in flight.
                Err(_) => {
                    stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            assert!(
                first.elapsed() < DELIVERY_DEADLINE,
                "delivery {n} not accepted within {DELIVERY_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The key of a call as Segment received it (see [`CallKey`]).
fn received_key(item: &Value) -> CallKey {
    let s = |k: &str| item[k].as_str().unwrap_or_default().to_string();
    let name = item["event"]
        .as_str()
        .or(item["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let identity = match item["userId"].as_str() {
        Some(u) => format!("user:{u}"),
        None => format!("anon:{}", s("anonymousId")),
    };
    (s("type"), name, s("timestamp"), identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_valid_event_reaches_segment_once_through_kills_of_every_role_and_a_broker_restart() {
    require_kafka();
    assert!(
        bootstrap().starts_with("127.0.0.1:"),
        "this test restarts the broker, so it needs the local one of scripts/kafka-local, not {}",
        bootstrap()
    );
    let t0 = Instant::now();
    let seed = std::env::var("PIPELINE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (PIPELINE_CHAOS_SEED={seed} replays this run's data and schedule)");
    let mut rng = Rng::new(seed);
    let work = workload(&mut rng);
    let expected_calls = work.expected.len();
    let plan = schedule(&mut rng, expected_calls);
    let body_bytes: usize = work.deliveries.iter().map(|d| d.body.len()).sum();
    println!(
        "{VALID_EVENTS} valid events ({:.0} B each on average) in {} deliveries, {} bad events, \
         {MALFORMED_BODIES} malformed bodies -> {expected_calls} expected Segment calls; generated in {:.1}s",
        body_bytes as f64 / (VALID_EVENTS + work.bad.len()) as f64,
        work.deliveries.len() - MALFORMED_BODIES,
        work.bad.len(),
        t0.elapsed().as_secs_f64()
    );
    for (spec, n) in KINDS.iter().zip(&work.per_kind) {
        assert!(*n > 0, "every kind is sent");
        println!(
            "  {:<24} {n:>6} events -> {:?}",
            spec.spellings[0],
            spec.calls.iter().map(|c| c.0).collect::<Vec<_>>()
        );
    }

    println!(
        "chaos schedule: {:?}",
        plan.iter()
            .map(|s| (s.trigger, s.action))
            .collect::<Vec<_>>()
    );

    let server = Arc::new(SegmentTestServer::start(SegmentServerConfig::default()).await);
    // Configs and logs of every process; kept when the test fails, removed when it passes.
    let dir = tempfile::Builder::new()
        .prefix("pipeline-chaos-")
        .tempdir()
        .unwrap()
        .keep();
    println!("configs and logs in {}", dir.display());
    let prefix = unique("chaos");
    let port = free_port();
    // A 10 s session timeout (librdkafka's default is 45 s) so that a killed consumer's
    // partitions move to its successor within seconds, as a deployment that expects restarts
    // would configure; the transactional call deadline stays below it, as the README asks.
    let extra = format!(
        "[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\nretry_after_seconds = 1\n\
         [segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n\
         [processing]\ntransaction_call_timeout_ms = 8000\n\
         [kafka.consumer_properties]\n\"session.timeout.ms\" = \"10000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
        server.url(),
        server.write_key()
    );
    let (config, _) = role_config(&dir, &prefix, &extra);
    apply_topics(&config);
    let mut fleet = Fleet {
        dir: dir.clone(),
        prefix: prefix.clone(),
        extra,
        procs: vec![],
        starts: 0,
    };
    for r in 0..ROLES.len() {
        let p = fleet.start(r);
        fleet.procs.push(p);
    }
    for p in &mut fleet.procs {
        p.wait_ready(Duration::from_secs(60)).await;
    }
    println!("[{:6.1}s] roles ready", t0.elapsed().as_secs_f64());

    let accepted = Arc::new(AtomicUsize::new(0));
    let signals = Arc::new(Signals::default());
    let chaos_task = tokio::spawn(chaos(
        fleet,
        plan,
        server.clone(),
        expected_calls,
        accepted.clone(),
        signals.clone(),
        t0,
    ));

    let send_start = Instant::now();
    let deliveries = Arc::new(work.deliveries);
    let next = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(SenderStats::default());
    let url = format!("http://127.0.0.1:{port}/webhooks/pendo");
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            tokio::spawn(sender(
                url.clone(),
                deliveries.clone(),
                next.clone(),
                accepted.clone(),
                stats.clone(),
            ))
        })
        .collect();
    let progress = |phase: &str| {
        println!(
            "[{:6.1}s] {phase}: {} events accepted by the webhook, {} distinct calls at Segment ({} received)",
            t0.elapsed().as_secs_f64(),
            accepted.load(Ordering::Relaxed),
            server.distinct_count(),
            server.event_count()
        )
    };
    let mut last_print = Instant::now();
    while !senders.iter().all(|s| s.is_finished()) {
        if chaos_task.is_finished() {
            // It only ends early by panicking (a role never ready, the broker not restarting).
            match chaos_task.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!(
                    "the chaos task ended before it was stopped: {:?}",
                    other.err()
                ),
            }
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            progress("sending");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in senders {
        s.await.expect("sender");
    }
    let sent = send_start.elapsed();
    let sent_at = Instant::now();
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        VALID_EVENTS + work.bad.len()
    );
    assert_eq!(
        stats.malformed_refused.load(Ordering::Relaxed),
        MALFORMED_BODIES
    );
    progress("all deliveries accepted");

    // Drain: every expected call at Segment, and the whole chaos schedule run.
    let mut reached: Option<Duration> = None;
    loop {
        if reached.is_none() && server.distinct_count() >= expected_calls {
            reached = Some(sent_at.elapsed());
        }
        if reached.is_some() && signals.done.load(Ordering::Relaxed) {
            break;
        }
        if sent_at.elapsed() > DRAIN_DEADLINE || chaos_task.is_finished() {
            signals.stop.store(true, Ordering::Relaxed);
            let report = chaos_task.await.expect("chaos task");
            let got: HashSet<CallKey> = server
                .events()
                .iter()
                .map(|e| received_key(&e.item))
                .collect();
            let missing: Vec<&CallKey> = work.expected.difference(&got).take(10).collect();
            panic!(
                "not drained within {DRAIN_DEADLINE:?} after the last delivery: {} of {expected_calls} \
                 distinct calls, chaos schedule done: {}; some missing: {missing:?}\n{}",
                server.distinct_count(),
                signals.done.load(Ordering::Relaxed),
                report.fleet.log_tails()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            progress("draining");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = reached.unwrap();
    signals.stop.store(true, Ordering::Relaxed);
    let report = chaos_task.await.expect("chaos task");
    let fleet = report.fleet;
    // Anything beyond the expected calls would arrive now: give it a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Segment: exactly the expected calls, each under one messageId, none missing, none extra.
    let events = server.events();
    let mut ids_by_key: HashMap<CallKey, HashSet<String>> = HashMap::new();
    let mut keys_by_id: HashMap<String, HashSet<CallKey>> = HashMap::new();
    let mut received_per_call: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        let key = received_key(&e.item);
        let id = e.message_id.clone().expect("every call has a messageId");
        ids_by_key
            .entry(key.clone())
            .or_default()
            .insert(id.clone());
        keys_by_id.entry(id).or_default().insert(key);
    }
    for key in ids_by_key.keys() {
        let name = if key.0 == "page" { "<page>" } else { &key.1 };
        *received_per_call
            .entry((key.0.clone(), name.to_string()))
            .or_default() += 1;
    }
    let received_keys: HashSet<CallKey> = ids_by_key.keys().cloned().collect();
    let missing: Vec<&CallKey> = work.expected.difference(&received_keys).take(10).collect();
    let extra: Vec<&CallKey> = received_keys.difference(&work.expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} expected calls missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
        work.expected.difference(&received_keys).count(),
        received_keys.difference(&work.expected).count()
    );
    let split: Vec<_> = ids_by_key.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        split.is_empty(),
        "{} calls arrived under several messageIds (not deterministic), e.g. {:?}",
        split.len(),
        split.first()
    );
    let shared: Vec<_> = keys_by_id.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "{} messageIds name different calls, e.g. {:?}",
        shared.len(),
        shared.first()
    );
    let distinct = server.distinct_count();
    assert_eq!(distinct, expected_calls, "distinct messageIds at Segment");
    let statuses = server.status_counts();
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "Segment refused nothing: {statuses:?}"
    );

    // Dead letters: every malformed body on the webhook's DLQ, every bad event on the
    // transformer's, each with its reason; nothing on the sink's.
    let webhook_dlq = read_committed(
        &format!("{prefix}.dlq.pendo-webhook"),
        MALFORMED_BODIES,
        Duration::from_secs(30),
    );
    let mut dead_bodies = HashSet::new();
    for m in &webhook_dlq {
        let reason = header(m, "dlq-reason").unwrap_or_default();
        assert!(!reason.is_empty(), "a webhook dead letter without a reason");
        dead_bodies.insert(m.payload().unwrap_or_default().to_vec());
    }
    assert_eq!(
        dead_bodies, work.malformed,
        "exactly the malformed bodies, byte for byte, on dlq.pendo-webhook"
    );
    let bad_count = work.bad.len();
    let transform_dlq = read_committed(
        &format!("{prefix}.dlq.transform-pendo"),
        bad_count,
        Duration::from_secs(30),
    );
    let mut dead_events: HashMap<String, String> = HashMap::new();
    for m in &transform_dlq {
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let id = v["uniqueId"].as_str().unwrap().to_string();
        let reason = header(m, "dlq-reason").unwrap_or_default();
        assert_eq!(
            Some(&reason.as_str()),
            work.bad.get(&id),
            "dead letter {id} has the expected reason"
        );
        dead_events.insert(id, reason);
    }
    assert_eq!(
        dead_events.len(),
        bad_count,
        "every bad event on dlq.transform-pendo"
    );
    let sink_dlq = read_committed(
        &format!("{prefix}.dlq.segment-sink"),
        0,
        Duration::from_secs(2),
    );
    assert!(sink_dlq.is_empty(), "the sink dead-lettered nothing");

    let duplicates = server.event_count() - distinct;
    println!("Segment calls by type and name (distinct):");
    for ((call, name), n) in &received_per_call {
        println!("  {call:<9} {name:<28} {n:>6}");
    }
    println!(
        "RESULT: {expected_calls} of {expected_calls} expected calls at Segment exactly (from {VALID_EVENTS} events), \
         {} calls received in {} requests -> {duplicates} duplicate deliveries; \
         {} + {} dead letters (webhook, transformer; {} and {} records with re-deliveries)",
        server.event_count(),
        server.requests().len(),
        dead_bodies.len(),
        dead_events.len(),
        webhook_dlq.len(),
        transform_dlq.len()
    );
    println!(
        "RESULT: sending took {:.1}s ({} attempts for {} deliveries: {} answered 503, {} connection errors); \
         drained {:.1}s after the last delivery was accepted; {} SIGKILLs ({} after everything was \
         delivered), {} broker restart, {} unplanned role exits {:?}; total {:.1}s",
        sent.as_secs_f64(),
        stats.attempts.load(Ordering::Relaxed),
        deliveries.len(),
        stats.refused_503.load(Ordering::Relaxed),
        stats.connection_errors.load(Ordering::Relaxed),
        drain.as_secs_f64(),
        report.kills,
        report.kills_after_delivery,
        report.broker_restarts,
        report.unplanned_exits.len(),
        report.unplanned_exits,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(report.kills, KILLS_PER_ROLE * ROLES.len());
    assert_eq!(report.broker_restarts, 1);

    // After all that, every role still shuts down cleanly.
    let mut procs = fleet.procs;
    for p in &procs {
        p.sigterm();
    }
    for (r, p) in procs.iter_mut().enumerate() {
        let status = p.wait_exit(Duration::from_secs(45)).await;
        assert!(
            status.success(),
            "{} on SIGTERM: {status}\n{}",
            ROLES[r],
            p.logs()
        );
    }

    // Passed: remove this run's topics (kept on failure, for inspection). Every topic makes the
    // shared broker's recovery after a SIGKILL slower for the next broker restart.
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(15))
        .unwrap();
    let mine: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(&format!("{prefix}.")))
        .collect();
    for r in admin().delete_topics(&mine, &admin_opts()).await.unwrap() {
        r.expect("topic deleted");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
