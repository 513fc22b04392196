//! The sample subscription: 4 accounts, 24 visitors first seen over the last 6 days, their daily
//! activity and feature use since then (`events`, `featureEvents` day rows), guide interactions
//! and poll answers of the last day, and a catalogue naming it all. Generated from a fixed seed,
//! dated relative to the start, so every run shows the same shapes. Every change interval one
//! visitor moves on (adoption stage, metadata updated now, more use today), so profile syncs
//! and usage metrics have something to send while the quickstart runs.

use std::collections::HashMap;

use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Features of the sample catalogue (id, name).
pub const FEATURES: [(&str, &str); 4] = [
    ("ft_dashboard", "Dashboard"),
    ("ft_export_csv", "Export CSV"),
    ("ft_reports", "Reports"),
    ("ft_share", "Share Report"),
];
const ACCOUNTS: [(&str, &str, &str, i64); 4] = [
    ("acct-acme", "Acme Corp", "enterprise", 82),
    ("acct-globex", "Globex", "growth", 64),
    ("acct-initech", "Initech", "starter", 41),
    ("acct-umbrella", "Umbrella", "enterprise", 90),
];
const NAMES: [&str; 8] = [
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Katherine Johnson",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
];
const STAGES: [&str; 3] = ["onboarding", "active", "power_user"];
const ROLES: [&str; 3] = ["admin", "analyst", "viewer"];
const ANSWERS: [&str; 3] = ["Engineering", "Product", "Sales"];

/// A small deterministic generator (xorshift64*): the same data on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything the sample API answers from.
#[derive(Debug, Clone)]
pub struct SampleData {
    accounts: Vec<Value>,
    visitors: Vec<Value>,
    events: Vec<Value>,
    feature_events: Vec<Value>,
    guide_events: Vec<Value>,
    poll_events: Vec<Value>,
    catalog: HashMap<&'static str, Vec<Value>>,
    changes: usize,
}

impl SampleData {
    /// The data set as of `now_ms`.
    pub fn generate(now_ms: i64) -> Self {
        let mut rng = Rng(0x5eed_1234_abcd_0042);
        let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
        let accounts = ACCOUNTS
            .iter()
            .map(|(id, name, tier, health)| {
                json!({"accountId": id, "metadata": {
                    "auto": {"id": id, "firstvisit": now_ms - 90 * DAY_MS, "lastvisit": now_ms},
                    "agent": {"name": name},
                    "custom": {"plan_tier": tier, "health_score": health},
                }})
            })
            .collect();
        let (mut visitors, mut events, mut feature_events) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..24usize {
            let id = format!("vis-{:03}", i + 1);
            let account = ACCOUNTS[i % ACCOUNTS.len()].0;
            let first = now_ms - (i as i64 * 6 * DAY_MS) / 24 - HOUR_MS;
            let name = NAMES[i % NAMES.len()];
            let email = format!(
                "{}@{}.example",
                name.to_lowercase().replace(' ', "."),
                account.trim_start_matches("acct-")
            );
            visitors.push(json!({"visitorId": id, "metadata": {
                "auto": {"id": id, "firstvisit": first, "lastvisit": now_ms, "lastupdated": first,
                         "accountid": account, "accountids": [account]},
                "agent": {"email": email, "full_name": name},
                "custom": {"role": ROLES[i % ROLES.len()],
                           "adoption_stage": STAGES[i % 2]},
            }}));
            // Active on some days since the first visit; heavier users every third visitor.
            let first_day = first.div_euclid(DAY_MS) * DAY_MS;
            let mut day = first_day;
            while day <= today {
                if rng.below(10) < if i % 3 == 0 { 8 } else { 5 } {
                    events.push(json!({"visitorId": id, "accountId": account, "day": day,
                        "numEvents": 1 + rng.below(60), "numMinutes": 1 + rng.below(30)}));
                    for (f, _) in FEATURES {
                        if rng.below(10) < 4 {
                            feature_events.push(json!({"visitorId": id, "accountId": account,
                                "featureId": f, "day": day, "numEvents": 1 + rng.below(10),
                                "numMinutes": 1}));
                        }
                    }
                }
                day += DAY_MS;
            }
        }
        let mut guide_events = Vec::new();
        let mut poll_events = Vec::new();
        for k in 0..18i64 {
            let v = &visitors[(k as usize * 5) % visitors.len()];
            let (visitor, account) = (&v["visitorId"], &v["metadata"]["auto"]["accountid"]);
            let (kind, step) = match k % 6 {
                0 | 1 => ("guideAdvanced", "gs-welcome-1"),
                2 => ("guideAdvanced", "gs-welcome-2"),
                3 => ("guideAdvanced", "gs-welcome-3"), // the last step: a completion
                4 => ("guideDismissed", "gs-welcome-1"),
                _ => ("guideSnoozed", "gs-welcome-2"),
            };
            guide_events.push(
                json!({"type": kind, "guideId": "gd-welcome", "guideStepId": step,
                "visitorId": visitor, "accountId": account,
                "browserTime": now_ms - 20 * HOUR_MS + k * 61 * 60_000 + 123,
                "url": "https://app.example.com/home"}),
            );
            if k % 4 == 0 {
                poll_events.push(
                    json!({"guideId": "gd-role-poll", "guideStepId": "gs-poll-1",
                    "pollId": "poll-role", "pollType": "MultipleChoice",
                    "pollResponse": ANSWERS[(k / 4) as usize % ANSWERS.len()],
                    "visitorId": visitor, "accountId": account,
                    "browserTime": now_ms - 19 * HOUR_MS + k * 53 * 60_000 + 456}),
                );
            }
        }
        let catalog = HashMap::from([
            (
                "feature",
                FEATURES
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name, "appId": -323232}))
                    .collect(),
            ),
            (
                "page",
                vec![
                    json!({"id": "pg_home", "name": "Home", "appId": -323232}),
                    json!({"id": "pg_reports", "name": "Reports", "appId": -323232}),
                ],
            ),
            (
                "guide",
                vec![
                    json!({"id": "gd-welcome", "name": "Welcome tour", "appId": -323232,
                       "steps": [{"id": "gs-welcome-1"}, {"id": "gs-welcome-2"}, {"id": "gs-welcome-3"}]}),
                    json!({"id": "gd-role-poll", "name": "What is your role?", "appId": -323232,
                       "steps": [{"id": "gs-poll-1"}]}),
                ],
            ),
            (
                "tracktype",
                vec![
                    json!({"id": "tt_report_created", "name": "Report Created", "appId": -323232}),
                ],
            ),
        ]);
        Self {
            accounts,
            visitors,
            events,
            feature_events,
            guide_events,
            poll_events,
            catalog,
            changes: 0,
        }
    }

    /// One visitor (round robin) moves on at `now_ms`: its adoption stage advances, its
    /// metadata counts as updated now, and it uses the product (and the export) more today.
    /// Returns the visitor's id.
    pub fn change(&mut self, now_ms: i64) -> String {
        let i = self.changes % self.visitors.len();
        self.changes += 1;
        let v = &mut self.visitors[i];
        let stage = v["metadata"]["custom"]["adoption_stage"]
            .as_str()
            .unwrap_or("");
        let next = STAGES
            .iter()
            .position(|s| *s == stage)
            .map_or(STAGES[0], |p| STAGES[(p + 1) % STAGES.len()]);
        v["metadata"]["custom"]["adoption_stage"] = json!(next);
        v["metadata"]["auto"]["lastupdated"] = json!(now_ms);
        let id = v["visitorId"].as_str().unwrap_or_default().to_string();
        let account = v["metadata"]["auto"]["accountid"].clone();
        let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
        self.events
            .push(json!({"visitorId": id, "accountId": account, "day": today,
            "numEvents": 5, "numMinutes": 3}));
        self.feature_events
            .push(json!({"visitorId": id, "accountId": account,
            "featureId": "ft_export_csv", "day": today, "numEvents": 2, "numMinutes": 1}));
        id
    }

    /// Whether `source` is an event source (needs a `timeSeries`).
    pub fn is_event_source(&self, source: &str) -> bool {
        matches!(
            source,
            "events" | "featureEvents" | "guideEvents" | "pollEvents"
        )
    }

    /// Rows of an event source in `[from, to)` (by `day`, or `browserTime`).
    pub fn event_rows(&self, source: &str, from: i64, to: i64) -> Vec<Value> {
        let rows = match source {
            "events" => &self.events,
            "featureEvents" => &self.feature_events,
            "guideEvents" => &self.guide_events,
            _ => &self.poll_events,
        };
        rows.iter()
            .filter(|r| {
                r.get("day")
                    .or_else(|| r.get("browserTime"))
                    .and_then(Value::as_i64)
                    .is_some_and(|t| from <= t && t < to)
            })
            .cloned()
            .collect()
    }

    /// Rows of `accounts` or `visitors`; `None` for another source.
    pub fn entity_rows(&self, source: &str) -> Option<Vec<Value>> {
        match source {
            "accounts" => Some(self.accounts.clone()),
            "visitors" => Some(self.visitors.clone()),
            _ => None,
        }
    }

    /// The catalogue list of `kind` (feature, page, guide, tracktype).
    pub fn catalog(&self, kind: &str) -> Option<&[Value]> {
        self.catalog.get(kind).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_set_is_the_same_every_run_and_changes_move_a_visitor_on() {
        let now = 1_764_900_000_000;
        let a = SampleData::generate(now);
        let b = SampleData::generate(now);
        assert_eq!(a.events, b.events);
        assert_eq!(a.visitors.len(), 24);
        assert!(!a.feature_events.is_empty() && !a.guide_events.is_empty());
        // Activity only since each visitor's first visit.
        for e in &a.events {
            let v = a
                .visitors
                .iter()
                .find(|v| v["visitorId"] == e["visitorId"])
                .unwrap();
            let first = v["metadata"]["auto"]["firstvisit"].as_i64().unwrap();
            assert!(e["day"].as_i64().unwrap() >= first.div_euclid(DAY_MS) * DAY_MS);
        }
        let mut c = a.clone();
        let id = c.change(now + 1);
        assert_eq!(id, "vis-001");
        let v = &c.visitors[0];
        assert_eq!(v["metadata"]["auto"]["lastupdated"], now + 1);
        assert_ne!(
            v["metadata"]["custom"]["adoption_stage"],
            a.visitors[0]["metadata"]["custom"]["adoption_stage"]
        );
        assert_eq!(c.events.len(), a.events.len() + 1);
    }
}
