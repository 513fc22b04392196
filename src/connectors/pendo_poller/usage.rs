//! Computed usage metrics: adoption data declared as rules in the config
//! (`[[pendo_poller.usage_metrics]]`, no code per metric) and evaluated client-side from Pendo's
//! aggregated day rows, then sent as Segment `identify` (visitor) and `group` (account) traits
//! **only when a subject's values changed**.
//!
//! Sources (Aggregation API, one UTC day per query, keyset-paginated by visitor):
//! - `events`: one row per visitor x account x day with `numEvents` and `numMinutes`: activity
//!   (a day is active when `numEvents` > 0), events, minutes, active visitors per account;
//! - `featureEvents`, one feature per query: `numEvents` per visitor x account x feature x day:
//!   feature uses, distinct features of a list, feature adoption per account.
//!
//! Each subject's values are one trait map; its fingerprint is kept per subject in the compacted
//! state (`usage:visitor:<id>`, `usage:account:<id>`) and written in the same transaction as
//! the record, so a crash never loses or repeats a change. A subject with no rows any more
//! whose last values were not all zero is sent zeros once (an inactive visitor's
//! `days_active_30d` becomes 0, not stale), and its state entry is deleted, so the state holds
//! only subjects with usage.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::milestones::DAY_MS;
use super::rows::ApiRecord;
use super::state::Fingerprint;

/// Kind of the raw event carrying a visitor's computed usage (mapped to an `identify`).
pub const VISITOR_USAGE_KIND: &str = "visitorUsageComputed";
/// Kind of the raw event carrying an account's computed usage (mapped to a `group`).
pub const ACCOUNT_USAGE_KIND: &str = "accountUsageComputed";
/// Longest window: Pendo answers at most 30 days, and activity is kept as a 32-bit day mask.
pub const MAX_WINDOW_DAYS: u32 = 30;
/// Most features a `distinct_features` metric may list (kept as a 64-bit set per subject).
pub const MAX_DISTINCT_FEATURES: usize = 64;

/// Whose usage a metric describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSubject {
    /// A Pendo visitor: the metric becomes an `identify` trait.
    Visitor,
    /// A Pendo account: the metric becomes a `group` trait.
    Account,
}

impl UsageSubject {
    /// The name used in state keys, events and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSubject::Visitor => "visitor",
            UsageSubject::Account => "account",
        }
    }
}

/// What a metric computes over its window (see the README, role `pendo-poller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageMeasure {
    /// Days with at least one event (`events`).
    DaysActive,
    /// Events, summed (`events.numEvents`).
    Events,
    /// Minutes active, summed (`events.numMinutes`).
    Minutes,
    /// The latest active day, `YYYY-MM-DD` (UTC), or null.
    LastActiveDay,
    /// Uses of the listed features, summed (`featureEvents.numEvents`).
    FeatureUses,
    /// How many of the listed features were used at least once (an adoption score).
    DistinctFeatures,
    /// Accounts only: visitors of the account with at least one event.
    ActiveVisitors,
    /// Accounts only: the share of the account's active visitors who used at least one of the
    /// listed features (0 when none was active), rounded to `decimals`.
    FeatureAdoptionRate,
}

impl UsageMeasure {
    fn needs_features(self) -> bool {
        matches!(
            self,
            UsageMeasure::FeatureUses
                | UsageMeasure::DistinctFeatures
                | UsageMeasure::FeatureAdoptionRate
        )
    }

    fn needs_activity(self) -> bool {
        !matches!(
            self,
            UsageMeasure::FeatureUses | UsageMeasure::DistinctFeatures
        )
    }

    fn accounts_only(self) -> bool {
        matches!(
            self,
            UsageMeasure::ActiveVisitors | UsageMeasure::FeatureAdoptionRate
        )
    }
}

/// One computed usage metric (`[[pendo_poller.usage_metrics]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsageMetric {
    /// The trait name (letters, digits and `_`, not starting with a digit), e.g.
    /// `pendo_days_active_30d`.
    pub name: String,
    /// `visitor` (identify trait) or `account` (group trait).
    pub subject: UsageSubject,
    /// What is computed.
    pub measure: UsageMeasure,
    /// The window, in UTC days up to and including today (1..=30).
    pub window_days: u32,
    /// The Pendo feature ids of `feature_uses`, `distinct_features` and
    /// `feature_adoption_rate` (a product area or a core feature list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_ids: Vec<String>,
    /// Decimals a ratio (`feature_adoption_rate`) is rounded to (0..=6, default 2), so a
    /// 0.4301 -> 0.4302 drift does not re-send a profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u32>,
}

impl UsageMetric {
    /// Refuses a metric that cannot work, naming it.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let at = format!("pendo_poller.usage_metrics `{n}`");
        let mut bytes = n.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || n.len() > 64 || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{at}: a trait name is 1-64 letters, digits and `_`, not starting with a digit"
            ));
        }
        if self.window_days == 0 || self.window_days > MAX_WINDOW_DAYS {
            return Err(format!("{at}: window_days must be 1..={MAX_WINDOW_DAYS}"));
        }
        if self.measure.accounts_only() && self.subject != UsageSubject::Account {
            return Err(format!("{at}: {:?} is a measure of accounts", self.measure));
        }
        if self.measure.needs_features() {
            if self.feature_ids.is_empty() || self.feature_ids.iter().any(String::is_empty) {
                return Err(format!("{at}: feature_ids must list feature ids"));
            }
            if self.feature_ids.len() > MAX_DISTINCT_FEATURES {
                return Err(format!(
                    "{at}: at most {MAX_DISTINCT_FEATURES} feature_ids per metric"
                ));
            }
        } else if !self.feature_ids.is_empty() {
            return Err(format!(
                "{at}: feature_ids is only for feature_uses, distinct_features and \
                 feature_adoption_rate"
            ));
        }
        match self.decimals {
            Some(_) if self.measure != UsageMeasure::FeatureAdoptionRate => Err(format!(
                "{at}: decimals is only for feature_adoption_rate (the other measures are whole \
                 numbers or a day)"
            )),
            Some(d) if d > 6 => Err(format!("{at}: decimals must be 0..=6")),
            _ => Ok(()),
        }
    }

    fn low_days(&self) -> u32 {
        window_mask(self.window_days)
    }

    /// The value of a subject with no usage at all.
    fn zero(&self) -> Value {
        match self.measure {
            UsageMeasure::LastActiveDay => Value::Null,
            UsageMeasure::FeatureAdoptionRate => json!(0.0),
            _ => json!(0),
        }
    }
}

/// Refuses a metric set that cannot work (each metric, and a trait name used twice for one
/// subject).
pub fn validate_all(metrics: &[UsageMetric]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for m in metrics {
        m.validate()?;
        if !names.insert((m.subject, m.name.as_str())) {
            return Err(format!(
                "pendo_poller.usage_metrics: the {} trait `{}` is defined twice",
                m.subject.as_str(),
                m.name
            ));
        }
    }
    Ok(())
}

/// Bits 0..days set (bit i: the day i days before today).
fn window_mask(days: u32) -> u32 {
    if days >= 32 {
        u32::MAX
    } else {
        (1u32 << days) - 1
    }
}

/// What the metrics need read: the days of `events`, and per feature its days of
/// `featureEvents` (start of each UTC day, epoch ms, newest first).
#[derive(Debug, Default, PartialEq)]
pub struct UsageReads {
    /// Days of the `events` source.
    pub activity_days: Vec<i64>,
    /// Per feature id, days of `featureEvents`.
    pub feature_days: Vec<(String, Vec<i64>)>,
}

/// The days a metric set reads, for a cycle at `now_ms`.
pub fn reads(metrics: &[UsageMetric], now_ms: i64) -> UsageReads {
    let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let days = |n: u32| {
        (0..n as i64)
            .map(|i| today - i * DAY_MS)
            .collect::<Vec<_>>()
    };
    let activity = metrics
        .iter()
        .filter(|m| m.measure.needs_activity())
        .map(|m| m.window_days)
        .max()
        .unwrap_or(0);
    let mut features: Vec<(String, u32)> = Vec::new();
    for m in metrics {
        for f in &m.feature_ids {
            match features.iter_mut().find(|(g, _)| g == f) {
                Some((_, w)) => *w = (*w).max(m.window_days),
                None => features.push((f.clone(), m.window_days)),
            }
        }
    }
    UsageReads {
        activity_days: days(activity),
        feature_days: features.into_iter().map(|(f, w)| (f, days(w))).collect(),
    }
}

/// One subject's accumulated usage: active days, and one slot per metric of its subject
/// (a sum, or a set of features used).
#[derive(Debug, Default, Clone)]
struct Tally {
    active: u32,
    slots: Box<[u64]>,
}

impl Tally {
    /// No usage yet, with `n` metric slots.
    fn empty(n: usize) -> Self {
        Self {
            active: 0,
            slots: vec![0; n].into(),
        }
    }
}

/// A visitor's usage within one account (for the account's active visitors and adoption).
#[derive(Debug, Default, Clone)]
struct Member {
    active: u32,
    /// Per account metric: days on which a listed feature was used.
    used: Box<[u32]>,
}

/// An account's usage and that of its visitors within it.
#[derive(Debug, Default)]
struct AccountTally {
    tally: Tally,
    members: HashMap<Box<str>, Member>,
}

impl AccountTally {
    /// No usage yet, with `n` metric slots.
    fn empty(n: usize) -> Self {
        Self {
            tally: Tally::empty(n),
            members: HashMap::new(),
        }
    }
}

impl Member {
    /// No usage yet, with `n` account metrics.
    fn empty(n: usize) -> Self {
        Self {
            active: 0,
            used: vec![0; n].into(),
        }
    }
}

/// What one row adds to: its visitor's tally and, when it names an account, the account's tally
/// and the visitor's membership there; with the metrics of each.
struct RowTallies<'t, 'a> {
    visitor: &'t mut Tally,
    visitor_metrics: &'t [&'a UsageMetric],
    account: Option<(&'t mut Tally, &'t mut Member)>,
    account_metrics: &'t [&'a UsageMetric],
}

/// The usage of every visitor and account seen in one cycle's rows.
#[derive(Debug)]
pub struct UsageTally<'a> {
    today_ms: i64,
    days: u32,
    visitor_metrics: Vec<&'a UsageMetric>,
    account_metrics: Vec<&'a UsageMetric>,
    visitors: HashMap<Box<str>, Tally>,
    accounts: HashMap<Box<str>, AccountTally>,
}

impl<'a> UsageTally<'a> {
    /// An empty tally of `metrics` for a cycle at `now_ms`.
    pub fn new(metrics: &'a [UsageMetric], now_ms: i64) -> Self {
        let of = |s: UsageSubject| metrics.iter().filter(|m| m.subject == s).collect();
        Self {
            today_ms: now_ms.div_euclid(DAY_MS) * DAY_MS,
            days: metrics.iter().map(|m| m.window_days).max().unwrap_or(0),
            visitor_metrics: of(UsageSubject::Visitor),
            account_metrics: of(UsageSubject::Account),
            visitors: HashMap::new(),
            accounts: HashMap::new(),
        }
    }

    /// Which day of the window a row is (0 = today), if it is in the window.
    fn day_of(&self, row: &Value) -> Option<u32> {
        let day = row["day"].as_i64()?;
        let i = (self.today_ms - day.div_euclid(DAY_MS) * DAY_MS).div_euclid(DAY_MS);
        (0..self.days as i64).contains(&i).then_some(i as u32)
    }

    /// The tallies a row of `visitor` (in `account`, if any) adds to, each created empty when
    /// first seen.
    fn tallies_of<'t>(&'t mut self, visitor: &str, account: Option<&str>) -> RowTallies<'t, 'a> {
        let (nv, na) = (self.visitor_metrics.len(), self.account_metrics.len());
        let account = account.map(|account| {
            let a = entry(&mut self.accounts, account, || AccountTally::empty(na));
            let member = entry(&mut a.members, visitor, || Member::empty(na));
            (&mut a.tally, member)
        });
        RowTallies {
            visitor: entry(&mut self.visitors, visitor, || Tally::empty(nv)),
            visitor_metrics: &self.visitor_metrics,
            account,
            account_metrics: &self.account_metrics,
        }
    }

    /// Adds `events` rows (visitor x account x day: `numEvents`, `numMinutes`). Rows without a
    /// visitor, or outside the window, are ignored.
    pub fn add_activity(&mut self, rows: &[Value]) {
        for row in rows {
            let (Some(visitor), Some(day)) = (id(row, "visitorId"), self.day_of(row)) else {
                continue;
            };
            let events = row["numEvents"].as_u64().unwrap_or(0);
            let minutes = row["numMinutes"].as_u64().unwrap_or(0);
            let bit = if events > 0 { 1u32 << day } else { 0 };
            let add = |tally: &mut Tally, metrics: &[&UsageMetric]| {
                tally.active |= bit;
                for (slot, m) in tally.slots.iter_mut().zip(metrics) {
                    if day < m.window_days {
                        match m.measure {
                            UsageMeasure::Events => *slot += events,
                            UsageMeasure::Minutes => *slot += minutes,
                            _ => {}
                        }
                    }
                }
            };
            let t = self.tallies_of(visitor, id(row, "accountId"));
            add(t.visitor, t.visitor_metrics);
            if let Some((tally, member)) = t.account {
                add(tally, t.account_metrics);
                member.active |= bit;
            }
        }
    }

    /// Adds `featureEvents` rows of `feature` (visitor x account x feature x day:
    /// `numEvents`); rows of another feature, without a visitor or outside the window are
    /// ignored.
    pub fn add_feature_use(&mut self, feature: &str, rows: &[Value]) {
        for row in rows {
            if row["featureId"].as_str().is_some_and(|f| f != feature) {
                continue;
            }
            let (Some(visitor), Some(day)) = (id(row, "visitorId"), self.day_of(row)) else {
                continue;
            };
            let uses = row["numEvents"].as_u64().unwrap_or(0);
            if uses == 0 {
                continue;
            }
            let add = |tally: &mut Tally, metrics: &[&UsageMetric]| {
                for (slot, m) in tally.slots.iter_mut().zip(metrics) {
                    let Some(pos) = m.feature_ids.iter().position(|f| f == feature) else {
                        continue;
                    };
                    if day < m.window_days {
                        match m.measure {
                            UsageMeasure::FeatureUses => *slot += uses,
                            UsageMeasure::DistinctFeatures => *slot |= 1 << pos,
                            _ => {}
                        }
                    }
                }
            };
            let t = self.tallies_of(visitor, id(row, "accountId"));
            add(t.visitor, t.visitor_metrics);
            if let Some((tally, member)) = t.account {
                add(tally, t.account_metrics);
                for (used, metric) in member.used.iter_mut().zip(t.account_metrics) {
                    if metric.measure == UsageMeasure::FeatureAdoptionRate
                        && metric.feature_ids.iter().any(|f| f == feature)
                    {
                        *used |= 1 << day;
                    }
                }
            }
        }
    }

    /// The subjects seen in the rows.
    pub fn subjects(&self) -> impl Iterator<Item = (UsageSubject, &str)> {
        let v = self.visitors.keys().map(|k| (UsageSubject::Visitor, &**k));
        let a = self.accounts.keys().map(|k| (UsageSubject::Account, &**k));
        v.chain(a)
    }

    /// Whether the subject was seen in the rows.
    pub fn has(&self, subject: UsageSubject, id: &str) -> bool {
        match subject {
            UsageSubject::Visitor => self.visitors.contains_key(id),
            UsageSubject::Account => self.accounts.contains_key(id),
        }
    }

    /// The traits of a subject (zeros for one not seen in the rows), or `None` when the
    /// subject has no metrics at all.
    pub fn traits(&self, subject: UsageSubject, id: &str) -> Option<Map<String, Value>> {
        let (metrics, tally, members) = match subject {
            UsageSubject::Visitor => (&self.visitor_metrics, self.visitors.get(id), None),
            UsageSubject::Account => {
                let a = self.accounts.get(id);
                (
                    &self.account_metrics,
                    a.map(|a| &a.tally),
                    a.map(|a| &a.members),
                )
            }
        };
        if metrics.is_empty() {
            return None;
        }
        let mut out = Map::new();
        for (i, m) in metrics.iter().enumerate() {
            let value = match tally {
                None => m.zero(),
                Some(t) => self.value(m, t, t.slots[i], members, i),
            };
            out.insert(m.name.clone(), value);
        }
        Some(out)
    }

    /// Whether `traits` are those of a subject with no usage.
    pub fn is_zero(&self, subject: UsageSubject, traits: &Map<String, Value>) -> bool {
        let metrics = match subject {
            UsageSubject::Visitor => &self.visitor_metrics,
            UsageSubject::Account => &self.account_metrics,
        };
        metrics
            .iter()
            .all(|m| traits.get(&m.name) == Some(&m.zero()))
    }

    fn value(
        &self,
        m: &UsageMetric,
        t: &Tally,
        slot: u64,
        members: Option<&HashMap<Box<str>, Member>>,
        index: usize,
    ) -> Value {
        let low = m.low_days();
        match m.measure {
            UsageMeasure::DaysActive => json!((t.active & low).count_ones()),
            UsageMeasure::Events | UsageMeasure::Minutes | UsageMeasure::FeatureUses => {
                json!(slot)
            }
            UsageMeasure::DistinctFeatures => json!(slot.count_ones()),
            UsageMeasure::LastActiveDay => match t.active & low {
                0 => Value::Null,
                days => json!(iso_day(
                    self.today_ms - days.trailing_zeros() as i64 * DAY_MS
                )),
            },
            UsageMeasure::ActiveVisitors => json!(
                members
                    .into_iter()
                    .flat_map(HashMap::values)
                    .filter(|v| v.active & low != 0)
                    .count()
            ),
            UsageMeasure::FeatureAdoptionRate => {
                let (mut active, mut adopted) = (0u64, 0u64);
                for v in members.into_iter().flat_map(HashMap::values) {
                    let used = v.used[index] & low != 0;
                    if v.active & low != 0 || used {
                        active += 1;
                        adopted += used as u64;
                    }
                }
                let rate = if active == 0 {
                    0.0
                } else {
                    adopted as f64 / active as f64
                };
                json!(round(rate, m.decimals.unwrap_or(2)))
            }
        }
    }
}

fn id<'r>(row: &'r Value, field: &str) -> Option<&'r str> {
    row[field]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= super::rows::MAX_ID_BYTES)
}

/// The entry of `id`, inserted from `fresh` when absent. Looked up before inserting: no key is
/// allocated per row of a subject already seen.
fn entry<'m, V>(
    map: &'m mut HashMap<Box<str>, V>,
    id: &str,
    fresh: impl FnOnce() -> V,
) -> &'m mut V {
    if !map.contains_key(id) {
        map.insert(id.into(), fresh());
    }
    map.get_mut(id).expect("inserted")
}

/// `x` rounded half away from zero to `decimals`.
pub fn round(x: f64, decimals: u32) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (x * scale).round() / scale
}

/// `YYYY-MM-DD` of a UTC day (epoch ms).
fn iso_day(day_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(day_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// The state key of a subject's usage fingerprint.
pub fn state_key(subject: UsageSubject, id: &str) -> String {
    format!("{}:{id}", subject.as_str())
}

/// The raw event of a subject whose computed usage (`traits`, fingerprint `fp`) changed, in the
/// cycle started at `cycle_ms`. Its `uniqueId` names the cycle and the content, so values that
/// change back are sent again, and a replay of the topic keeps its messageIds.
pub fn usage_event(
    subject: UsageSubject,
    id: &str,
    traits: Map<String, Value>,
    fp: &Fingerprint,
    cycle_ms: i64,
) -> ApiRecord {
    let fp_hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
    let (kind, id_field) = match subject {
        UsageSubject::Visitor => (VISITOR_USAGE_KIND, "visitorId"),
        UsageSubject::Account => (ACCOUNT_USAGE_KIND, "accountId"),
    };
    let event = json!({
        "event": kind,
        id_field: id,
        "timestamp": cycle_ms,
        "uniqueId": format!("pendo-api:usage:{}:{id}:{cycle_ms}:{fp_hex}", subject.as_str()),
        "properties": {"usage": traits},
    });
    ApiRecord {
        key: id.to_string(),
        value: event.to_string().into_bytes(),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, subject: UsageSubject, measure: UsageMeasure, days: u32) -> UsageMetric {
        UsageMetric {
            name: name.into(),
            subject,
            measure,
            window_days: days,
            feature_ids: if measure.needs_features() {
                vec!["f1".into(), "f2".into(), "f3".into()]
            } else {
                Vec::new()
            },
            decimals: None,
        }
    }

    const NOW: i64 = 1_764_900_000_000; // 2025-12-05T02:00:00Z
    fn day(ago: i64) -> i64 {
        NOW.div_euclid(DAY_MS) * DAY_MS - ago * DAY_MS
    }
    fn act(v: &str, a: &str, ago: i64, events: u64, minutes: u64) -> Value {
        json!({"visitorId": v, "accountId": a, "day": day(ago), "numEvents": events, "numMinutes": minutes})
    }
    fn feat(v: &str, a: &str, f: &str, ago: i64, uses: u64) -> Value {
        json!({"visitorId": v, "accountId": a, "featureId": f, "day": day(ago), "numEvents": uses})
    }

    #[test]
    fn values_match_a_hand_computed_data_set() {
        use UsageMeasure::*;
        use UsageSubject::*;
        let mut adoption = metric("adoption", Account, FeatureAdoptionRate, 30);
        adoption.decimals = Some(3);
        let metrics = vec![
            metric("days7", Visitor, DaysActive, 7),
            metric("events7", Visitor, Events, 7),
            metric("minutes30", Visitor, Minutes, 30),
            metric("last", Visitor, LastActiveDay, 30),
            metric("uses7", Visitor, FeatureUses, 7),
            metric("distinct30", Visitor, DistinctFeatures, 30),
            metric("active7", Account, ActiveVisitors, 7),
            metric("active30", Account, ActiveVisitors, 30),
            adoption,
        ];
        validate_all(&metrics).unwrap();
        let mut t = UsageTally::new(&metrics, NOW);
        t.add_activity(&[
            act("v1", "a1", 0, 5, 3),
            act("v1", "a1", 2, 1, 1),
            act("v1", "a1", 10, 4, 7), // outside 7 days
            act("v2", "a1", 20, 2, 2), // active in 30 days only
            act("v3", "a1", 29, 1, 1), // the window's last day
            act("v4", "a2", 30, 9, 9), // outside every window
            act("v5", "a2", 1, 0, 4),  // minutes but no events: not active
        ]);
        t.add_feature_use(
            "f1",
            &[feat("v1", "a1", "f1", 1, 2), feat("v2", "a1", "f1", 20, 1)],
        );
        t.add_feature_use(
            "f2",
            &[feat("v1", "a1", "f2", 9, 3), feat("v1", "a1", "f1", 1, 50)],
        );
        let v1 = t.traits(Visitor, "v1").unwrap();
        assert_eq!(
            Value::Object(v1),
            json!({"days7": 2, "events7": 6, "minutes30": 11, "last": iso_day(day(0)),
                   "uses7": 2, "distinct30": 2})
        );
        let v2 = t.traits(Visitor, "v2").unwrap();
        assert_eq!(
            Value::Object(v2),
            json!({"days7": 0, "events7": 0, "minutes30": 2, "last": iso_day(day(20)),
                   "uses7": 0, "distinct30": 1})
        );
        let v5 = t.traits(Visitor, "v5").unwrap();
        assert_eq!(v5["last"], Value::Null);
        assert_eq!(v5["minutes30"], 4);
        // a1: v1 active in 7 days; v1, v2, v3 in 30; v1 and v2 used f1..f3 -> 2 of 3.
        let a1 = t.traits(Account, "a1").unwrap();
        assert_eq!(
            Value::Object(a1),
            json!({"active7": 1, "active30": 3, "adoption": 0.667})
        );
        let a2 = t.traits(Account, "a2").unwrap();
        assert!(t.is_zero(Account, &a2), "{a2:?}");
        // A subject not seen at all: zeros (and null for a day).
        let gone = t.traits(Visitor, "gone").unwrap();
        assert!(t.is_zero(Visitor, &gone));
        assert_eq!(gone["last"], Value::Null);
        assert_eq!(iso_day(day(0)), "2025-12-05");
    }

    #[test]
    fn reads_cover_the_longest_window_per_source() {
        use UsageMeasure::*;
        use UsageSubject::*;
        let metrics = vec![
            metric("d", Visitor, DaysActive, 7),
            metric("u", Visitor, FeatureUses, 3),
            metric("r", Account, FeatureAdoptionRate, 14),
        ];
        let r = reads(&metrics, NOW);
        assert_eq!(r.activity_days.len(), 14);
        assert_eq!(r.activity_days[0], day(0));
        assert_eq!(r.feature_days.len(), 3);
        assert!(r.feature_days.iter().all(|(_, d)| d.len() == 14));
        let only_features = reads(&metrics[1..2], NOW);
        assert!(only_features.activity_days.is_empty());
        assert_eq!(only_features.feature_days[0].1.len(), 3);
    }

    #[test]
    fn metrics_are_validated_with_the_key_named() {
        use UsageMeasure::*;
        use UsageSubject::*;
        assert!(
            metric("x", Visitor, ActiveVisitors, 7)
                .validate()
                .unwrap_err()
                .contains("accounts")
        );
        assert!(metric("9x", Visitor, Events, 7).validate().is_err());
        assert!(metric("x y", Visitor, Events, 7).validate().is_err());
        assert!(metric("x", Visitor, Events, 31).validate().is_err());
        let mut m = metric("x", Visitor, Events, 7);
        m.feature_ids = vec!["f".into()];
        assert!(m.validate().unwrap_err().contains("feature_ids"));
        let mut m = metric("x", Visitor, Events, 7);
        m.decimals = Some(2);
        assert!(m.validate().unwrap_err().contains("decimals"));
        let mut m = metric("x", Account, FeatureAdoptionRate, 7);
        m.decimals = Some(7);
        assert!(m.validate().is_err());
        m.feature_ids.clear();
        m.decimals = None;
        assert!(m.validate().is_err());
        let twice = vec![
            metric("x", Visitor, Events, 7),
            metric("x", Visitor, Minutes, 7),
        ];
        assert!(validate_all(&twice).unwrap_err().contains("twice"));
        let both = vec![
            metric("x", Visitor, Events, 7),
            metric("x", Account, Events, 7),
        ];
        assert!(validate_all(&both).is_ok());
    }

    #[test]
    fn ratios_round_so_drift_does_not_change_them() {
        assert_eq!(round(0.4301, 2), round(0.4302, 2));
        assert_eq!(round(2.0 / 3.0, 2), 0.67);
        assert_eq!(round(0.125, 0), 0.0);
        let fp = [7u8; 16];
        let mut traits = Map::new();
        traits.insert("days".into(), json!(3));
        let r = usage_event(UsageSubject::Account, "a1", traits, &fp, 42);
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["event"], ACCOUNT_USAGE_KIND);
        assert_eq!(v["accountId"], "a1");
        assert_eq!(v["properties"]["usage"]["days"], 3);
        assert!(
            v["uniqueId"]
                .as_str()
                .unwrap()
                .starts_with("pendo-api:usage:account:a1:42:0707")
        );
        assert_eq!(r.key, "a1");
    }
}
