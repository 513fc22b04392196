//! The whole pipeline as seven role processes against the real broker and the Segment/Pendo test
//! servers, with the traffic that creates every labelled series the dashboard and the alerts
//! use. Shared by `tests/metrics_catalogue.rs` (scrapes the roles itself) and
//! `tests/live_prometheus.rs` (a real Prometheus scrapes them), so both judge the same scenario.
//!
//! The traffic: every Pendo and Segment fixture, one Pendo event with an unexpected field, a call
//! outside the tracking plan, wrong webhook credentials, a malformed body, a record the
//! transformer dead-letters, Segment 503/429/401 and a Pendo 429, plus poller data (an account,
//! a visitor, feature usage reaching a milestone).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pendo_segment::connectors::webhook::signature::{sign_hex, signed_part};
use serde_json::Value;

use super::pendo_server::{
    PendoFault, PendoFaultPlan, PendoServerConfig, PendoTestServer, account_row, visitor_row,
};
use super::segment_server::{FaultAction, FaultPlan, SegmentServerConfig, SegmentTestServer};
use super::*;

pub const PENDO_SECRET: &str = "catalogue-pendo-secret";
pub const SEGMENT_SECRET: &str = "catalogue-segment-secret";

/// The seven roles, each started as its own process.
pub const ROLES: [&str; 7] = [
    "pendo-webhook",
    "transform-pendo",
    "segment-sink",
    "segment-webhook",
    "transform-segment",
    "pendo-sink",
    "pendo-poller",
];

/// A running pipeline. Dropping it kills the role processes (and the test servers).
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub segment: SegmentTestServer,
    pub pendo: PendoTestServer,
    /// (entity, field) the Segment audience fixtures set in Pendo.
    pub fields: BTreeSet<(String, String)>,
    /// Role name, its process, its config file and ops port (kept across restarts, so a
    /// scraper's target stays the same).
    pub roles: Vec<(&'static str, RoleProcess, PathBuf, u16)>,
    pub http: reqwest::Client,
    /// `POST` URL of pendo-webhook.
    pub pendo_url: String,
    /// `POST` URL of segment-webhook.
    pub segment_url: String,
    pub segment_fixtures: Vec<(String, Vec<u8>)>,
    restarts: usize,
}

/// Sample payloads of `tests/fixtures/<sub>` (not the index), sorted by name.
pub fn fixture_files(sub: &str) -> Vec<(String, Vec<u8>)> {
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

/// The messageIds of every golden transform-pendo call (`tests/golden/transform-pendo`), as the
/// Segment test server reports the ones it received.
pub fn golden_message_ids() -> HashSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transform-pendo");
    let mut ids = HashSet::new();
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

/// Posts `body` as JSON with one extra header; the answer's status.
pub async fn post(
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

/// The `authorization` header pendo-webhook expects for `secret`.
pub fn bearer(secret: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {secret}"))
}

/// Produces `records` (key, value) to `topic` and waits for the acks.
pub async fn produce(topic: &str, records: Vec<(Option<String>, Vec<u8>)>) {
    super::produce::produce_all(
        &rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .create()
            .expect("producer"),
        topic,
        records,
    )
    .await;
}

impl Pipeline {
    /// Starts the test servers (with their fault plans: Segment 503, 429, 401 on requests 1-3,
    /// Pendo 429 on the first write), creates the topics, loads one id mapping and starts the
    /// seven roles, each ready.
    pub async fn start() -> Pipeline {
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
             requests_per_s = 100\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n\
             refused_key_retry_s = 1\n\
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
        // One id mapping (a visitor no fixture uses), so the transformers' followers apply an
        // update.
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

        let mut roles = Vec::new();
        for role in ROLES {
            let sub = dir.path().join(role);
            std::fs::create_dir_all(&sub).unwrap();
            let (config, ops) = role_config(&sub, &prefix, &extra);
            let p = RoleProcess::start(
                &config,
                &["run", "--role", role],
                ops,
                dir.path().join(format!("{role}.log")),
            );
            roles.push((role, p, config, ops));
        }
        for (_, p, _, _) in &mut roles {
            p.wait_ready(Duration::from_secs(60)).await;
        }
        Pipeline {
            dir,
            prefix,
            segment,
            pendo,
            fields,
            roles,
            http: reqwest::Client::new(),
            pendo_url: format!("http://127.0.0.1:{pendo_port}/webhooks/pendo"),
            segment_url: format!("http://127.0.0.1:{segment_port}/webhooks/segment"),
            segment_fixtures,
            restarts: 0,
        }
    }

    /// Every role's log, for failure messages.
    pub fn logs(&self) -> String {
        self.roles
            .iter()
            .map(|(n, p, _, _)| format!("--- {n}\n{}", p.logs()))
            .collect()
    }

    /// The named role's process.
    pub fn role(&mut self, name: &str) -> &mut RoleProcess {
        &mut self
            .roles
            .iter_mut()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("no role {name}"))
            .1
    }

    /// Starts the named role again on its config (same ops port), after it exited; waits until
    /// ready.
    pub async fn restart(&mut self, name: &str) {
        self.restarts += 1;
        let n = self.restarts;
        let log = self.dir.path().join(format!("{name}-restart-{n}.log"));
        let r = self
            .roles
            .iter_mut()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("no role {name}"));
        r.1 = RoleProcess::start(&r.2, &["run", "--role", name], r.3, log);
        r.1.wait_ready(Duration::from_secs(60)).await;
    }

    /// Starts the named role again (after stopping it with SIGTERM) on its config as `edit`
    /// changes it (e.g. Kafka clients that bootstrap from a proxy); waits until ready.
    pub async fn restart_with(&mut self, name: &str, edit: impl FnOnce(String) -> String) {
        let r = self
            .roles
            .iter_mut()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("no role {name}"));
        r.1.sigterm();
        assert!(r.1.wait_exit(Duration::from_secs(30)).await.success());
        let text = std::fs::read_to_string(&r.2).unwrap();
        let dir = r.2.parent().unwrap().join("edited");
        std::fs::create_dir_all(&dir).unwrap();
        r.2 = write_file(&dir, "pendo-segment.toml", &edit(text));
        self.restart(name).await;
    }

    /// The catalogue's traffic through both flows, each answer checked.
    ///
    /// Pendo -> Segment: every fixture, one event with an unexpected top-level field, a wrong
    /// secret (401), a malformed body (400, webhook DLQ), and a record on the raw topic that is
    /// not JSON (the transformer's DLQ). Segment -> Pendo: every fixture signed, and one with a
    /// wrong signature (401).
    pub async fn drive_traffic(&self) {
        let http = &self.http;
        let pendo_url = &self.pendo_url;
        for (name, body) in fixture_files("pendo") {
            let status = post(http, pendo_url, body, bearer(PENDO_SECRET)).await;
            assert_eq!(status.as_u16(), 200, "{name}");
        }
        let mut drifted: Value = serde_json::from_slice(
            &std::fs::read(fixtures_dir().join("pendo/feature-clicked.json")).unwrap(),
        )
        .unwrap();
        drifted["uniqueId"] = "metrics-catalogue-drifted-0001".into();
        drifted["newTopLevelField"] = true.into();
        let drifted = serde_json::to_vec(&drifted).unwrap();
        let status = post(http, pendo_url, drifted.clone(), bearer(PENDO_SECRET)).await;
        assert_eq!(status.as_u16(), 200);
        let status = post(http, pendo_url, drifted, bearer("not-the-secret")).await;
        assert_eq!(status.as_u16(), 401);
        let malformed = std::fs::read(fixtures_dir().join("pendo/malformed.txt")).unwrap();
        let status = post(http, pendo_url, malformed, bearer(PENDO_SECRET)).await;
        assert_eq!(status.as_u16(), 400);
        produce(
            &format!("{}.pendo.raw.webhook", self.prefix),
            vec![(Some("vis-dlq".to_string()), b"not json at all".to_vec())],
        )
        .await;

        for (name, body) in &self.segment_fixtures {
            let signature = sign_hex(SEGMENT_SECRET.as_bytes(), signed_part(body));
            let status = post(
                http,
                &self.segment_url,
                body.clone(),
                ("x-signature", signature),
            )
            .await;
            assert_eq!(status.as_u16(), 200, "{name}");
        }
        let first = self.segment_fixtures[0].1.clone();
        let wrong = sign_hex(b"not-the-secret", signed_part(&first));
        let status = post(http, &self.segment_url, first, ("x-signature", wrong)).await;
        assert_eq!(status.as_u16(), 401);
    }

    /// Waits until both flows delivered: every golden call (+1 drifted) at Segment, every
    /// audience field at Pendo; panics with the logs otherwise.
    pub async fn wait_delivered(&self) {
        let golden = golden_message_ids();
        let delivered = self
            .segment
            .wait_for_distinct(golden.len() + 1, Duration::from_secs(90))
            .await;
        let ids = self.segment.distinct_message_ids();
        assert!(
            delivered && golden.iter().all(|id| ids.contains(id)),
            "Segment got {} of {} golden calls (+1 drifted):\n{}",
            ids.len(),
            golden.len(),
            self.logs()
        );
        let fields = &self.fields;
        let written = self
            .pendo
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
            self.pendo.state(),
            self.logs()
        );
    }

    /// SIGTERMs every role and requires a clean exit.
    pub async fn shutdown(&mut self) {
        for (_, p, _, _) in &self.roles {
            p.sigterm();
        }
        for (name, p, _, _) in &mut self.roles {
            let status = p.wait_exit(Duration::from_secs(30)).await;
            assert!(status.success(), "{name} exited {status}:\n{}", p.logs());
        }
    }
}
