//! Usage milestones: rules over Pendo's aggregated feature usage ("feature X used ≥ N times in
//! the last D days", "≥ K distinct features of a set used in the last D days"). Each visitor that
//! crosses a rule's threshold yields exactly one `featureMilestoneReached` event (mapped to the
//! Segment track `Feature Milestone Reached`), remembered in the compacted `state.milestones`
//! (key `<rule>:<visitor>`) inside the same transaction, so restarts never emit it again.
//!
//! The rows come from the Aggregation API's `featureEvents` source, which returns one row per
//! visitor x account x feature x day (`numEvents`): the poller asks one feature and one day per
//! query (Pendo's own ETL reads one day per request), keyset-paginated by visitor.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::rows::ApiRecord;

/// Kind of the raw event of a reached milestone.
pub const MILESTONE_KIND: &str = "featureMilestoneReached";
/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneMeasure {
    /// Uses (`numEvents`) of the rule's features, summed.
    FeatureUses,
    /// Distinct features of the rule's set used at least once.
    DistinctFeatures,
}

/// One milestone rule (`[[pendo_poller.milestones]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneRule {
    /// Rule name: the `rule` property of the track call and the state key; letters, digits,
    /// `_` and `-`.
    pub name: String,
    /// What is counted.
    pub measure: MilestoneMeasure,
    /// The Pendo feature ids the rule looks at (a product area is the list of its features).
    pub feature_ids: Vec<String>,
    /// The count at which a visitor reaches the milestone.
    pub threshold: u64,
    /// The window, in days up to and including today (1..=30).
    pub window_days: u32,
}

impl MilestoneRule {
    /// Refuses a rule that cannot work, naming it.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "pendo_poller.milestones: name `{n}` must be letters, digits, `_` or `-`"
            ));
        }
        if self.feature_ids.is_empty() || self.feature_ids.iter().any(String::is_empty) {
            return Err(format!(
                "pendo_poller.milestones `{n}`: feature_ids must list feature ids"
            ));
        }
        if self.threshold == 0 {
            return Err(format!(
                "pendo_poller.milestones `{n}`: threshold must be > 0"
            ));
        }
        if self.window_days == 0 || self.window_days > 30 {
            return Err(format!(
                "pendo_poller.milestones `{n}`: window_days must be 1..=30"
            ));
        }
        if self.measure == MilestoneMeasure::DistinctFeatures
            && self.threshold > self.feature_ids.len() as u64
        {
            return Err(format!(
                "pendo_poller.milestones `{n}`: threshold {} is more distinct features than \
                 feature_ids lists ({})",
                self.threshold,
                self.feature_ids.len()
            ));
        }
        Ok(())
    }

    /// Start (epoch ms, UTC midnight) of each day of the window ending at `now_ms`.
    pub fn days(&self, now_ms: i64) -> Vec<i64> {
        let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
        (0..self.window_days as i64)
            .map(|i| today - i * DAY_MS)
            .collect()
    }
}

/// Usage of one rule's features per visitor, accumulated from rows.
#[derive(Debug, Default)]
pub struct RuleUsage {
    /// Per visitor: uses per feature, and an account seen in the rows.
    visitors: BTreeMap<String, (BTreeMap<String, u64>, Option<String>)>,
}

impl RuleUsage {
    /// Adds `featureEvents` rows; rows without a visitor or with other features are ignored.
    pub fn add_rows(&mut self, feature_id: &str, rows: &[Value]) {
        for row in rows {
            let Some(visitor) = row["visitorId"].as_str().filter(|v| !v.is_empty()) else {
                continue;
            };
            if row["featureId"].as_str().is_some_and(|f| f != feature_id) {
                continue;
            }
            let n = row["numEvents"].as_u64().unwrap_or(0);
            let entry = self.visitors.entry(visitor.to_string()).or_default();
            *entry.0.entry(feature_id.to_string()).or_default() += n;
            if entry.1.is_none() {
                entry.1 = row["accountId"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                    .map(str::to_string);
            }
        }
    }

    /// Visitors at or over the threshold: (visitor, account, count).
    pub fn reached(&self, rule: &MilestoneRule) -> Vec<(String, Option<String>, u64)> {
        self.visitors
            .iter()
            .filter_map(|(v, (uses, account))| {
                let count = match rule.measure {
                    MilestoneMeasure::FeatureUses => uses.values().sum(),
                    MilestoneMeasure::DistinctFeatures => {
                        uses.values().filter(|n| **n > 0).count() as u64
                    }
                };
                (count >= rule.threshold).then(|| (v.clone(), account.clone(), count))
            })
            .collect()
    }
}

/// The raw event of a reached milestone. Its `uniqueId` is the rule and visitor, so even a
/// re-emission (never, with the state topic) has the same messageId downstream.
pub fn milestone_event(
    rule: &MilestoneRule,
    visitor: &str,
    account: Option<&str>,
    count: u64,
    now_ms: i64,
) -> ApiRecord {
    let mut event = json!({
        "event": MILESTONE_KIND,
        "visitorId": visitor,
        "timestamp": now_ms,
        "uniqueId": format!("pendo-api:milestone:{}:{visitor}", rule.name),
        "properties": {
            "rule": rule.name,
            "count": count,
            "threshold": rule.threshold,
            "window_days": rule.window_days,
            "measure": match rule.measure {
                MilestoneMeasure::FeatureUses => "feature_uses",
                MilestoneMeasure::DistinctFeatures => "distinct_features",
            },
            "feature_ids": rule.feature_ids.iter().collect::<BTreeSet<_>>(),
        },
    });
    if let Some(a) = account {
        event["accountId"] = Value::String(a.to_string());
    }
    ApiRecord {
        key: visitor.to_string(),
        value: event.to_string().into_bytes(),
        kind: MILESTONE_KIND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(measure: MilestoneMeasure, threshold: u64) -> MilestoneRule {
        MilestoneRule {
            name: "power-user".into(),
            measure,
            feature_ids: vec!["f1".into(), "f2".into(), "f3".into()],
            threshold,
            window_days: 7,
        }
    }

    fn row(v: &str, f: &str, n: u64) -> Value {
        json!({"visitorId": v, "accountId": "a1", "featureId": f, "numEvents": n})
    }

    #[test]
    fn uses_sum_and_distinct_features_count() {
        let mut usage = RuleUsage::default();
        usage.add_rows("f1", &[row("v1", "f1", 4), row("v2", "f1", 1)]);
        usage.add_rows("f2", &[row("v1", "f2", 1), row("v3", "f2", 9)]);
        usage.add_rows("f1", &[row("v1", "f1", 5)]);
        let uses = usage.reached(&rule(MilestoneMeasure::FeatureUses, 9));
        assert_eq!(
            uses,
            vec![
                ("v1".into(), Some("a1".into()), 10),
                ("v3".into(), Some("a1".into()), 9)
            ]
        );
        let distinct = usage.reached(&rule(MilestoneMeasure::DistinctFeatures, 2));
        assert_eq!(distinct, vec![("v1".into(), Some("a1".into()), 2)]);
    }

    #[test]
    fn rules_are_validated_and_windows_are_whole_days() {
        assert!(rule(MilestoneMeasure::FeatureUses, 10).validate().is_ok());
        assert!(
            rule(MilestoneMeasure::DistinctFeatures, 4)
                .validate()
                .unwrap_err()
                .contains("distinct")
        );
        let mut bad = rule(MilestoneMeasure::FeatureUses, 1);
        bad.name = "a b".into();
        assert!(bad.validate().is_err());
        let days = rule(MilestoneMeasure::FeatureUses, 1).days(1_764_400_000_000);
        assert_eq!(days.len(), 7);
        assert_eq!(days[0] % DAY_MS, 0);
        assert!(days[0] <= 1_764_400_000_000 && days[0] + DAY_MS > 1_764_400_000_000);
    }
}
