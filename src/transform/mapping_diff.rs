//! What changing the Pendo -> Segment mapping would change: the two [`MapOutcome`]s of one raw
//! event (running mapping, candidate) compared call by call, and findings aggregated over many
//! events, for `pendo-segment mapping preview`.
//!
//! Calls of the two outcomes are paired by call type, in emission order within a type (a kind
//! makes at most a few calls, at most one per type in the shipped mapping). Each difference is
//! a [`Finding`] of a [`Category`]; [`Findings`] counts them by (category, call type, event or
//! page name, Pendo kind, detail) and keeps a few samples of each. An unchanged mapping yields
//! no finding at all, so "zero findings" is a meaningful gate.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::schema::segment_call::{CallBody, SegmentCall};
use crate::transform::pendo_to_segment::MapOutcome;
use crate::transform::tracking_plan::TrackingPlan;

/// What kind of difference a finding is. The order is the report's order: the dangerous
/// category first. New categories (e.g. tracking-plan violations) are added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// The same call gets another messageId: after deploying, a replay of already-delivered
    /// events is no longer de-duplicated by Segment.
    MessageIdChanged,
    /// The event stops (or starts) being mapped: filtered, dropped or dead-lettered instead of
    /// making calls, or the other way round, or another dead-letter reason.
    OutcomeChanged,
    /// A call of the candidate breaks a tracking-plan rule the running mapping's call kept.
    PlanViolationIntroduced,
    /// The candidate makes a call the running mapping does not.
    CallAdded,
    /// The running mapping makes a call the candidate does not.
    CallRemoved,
    /// A track event or page name changes.
    NameChanged,
    /// A property (track, page) or trait (identify, group) key changes, same value.
    FieldRenamed,
    /// A property or trait disappears.
    FieldDropped,
    /// A property or trait appears.
    FieldAdded,
    /// A property or trait keeps its key but its JSON type changes.
    FieldTypeChanged,
    /// A property or trait keeps its key and type but its value changes.
    FieldValueChanged,
    /// Another field of the call changes (userId, anonymousId, timestamp, context, page
    /// category, group id); the detail names it.
    CallChanged,
    /// A tracking-plan rule the running mapping's call broke is kept by the candidate's.
    PlanViolationResolved,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 13] = [
        Category::MessageIdChanged,
        Category::OutcomeChanged,
        Category::PlanViolationIntroduced,
        Category::CallAdded,
        Category::CallRemoved,
        Category::NameChanged,
        Category::FieldRenamed,
        Category::FieldDropped,
        Category::FieldAdded,
        Category::FieldTypeChanged,
        Category::FieldValueChanged,
        Category::CallChanged,
        Category::PlanViolationResolved,
    ];

    /// A stable machine-readable name (the `--json` output).
    pub fn code(self) -> &'static str {
        match self {
            Category::MessageIdChanged => "message_id_changed",
            Category::OutcomeChanged => "outcome_changed",
            Category::CallAdded => "call_added",
            Category::CallRemoved => "call_removed",
            Category::NameChanged => "name_changed",
            Category::FieldRenamed => "field_renamed",
            Category::FieldDropped => "field_dropped",
            Category::FieldAdded => "field_added",
            Category::FieldTypeChanged => "field_type_changed",
            Category::FieldValueChanged => "field_value_changed",
            Category::CallChanged => "call_changed",
            Category::PlanViolationIntroduced => "plan_violation_introduced",
            Category::PlanViolationResolved => "plan_violation_resolved",
        }
    }

    /// A heading for people.
    pub fn title(self) -> &'static str {
        match self {
            Category::MessageIdChanged => {
                "messageId changed (a replay after deploying is NOT de-duplicated by Segment)"
            }
            Category::OutcomeChanged => "outcome changed",
            Category::CallAdded => "call added",
            Category::CallRemoved => "call removed",
            Category::NameChanged => "event/page name changed",
            Category::FieldRenamed => "property/trait renamed",
            Category::FieldDropped => "property/trait dropped",
            Category::FieldAdded => "property/trait added",
            Category::FieldTypeChanged => "property/trait type changed",
            Category::FieldValueChanged => "property/trait value changed",
            Category::CallChanged => "call field changed",
            Category::PlanViolationIntroduced => "tracking plan violation introduced",
            Category::PlanViolationResolved => "tracking plan violation resolved",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// What a finding is about; findings with equal keys are counted together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FindingKey {
    /// The kind of difference.
    pub category: Category,
    /// `track`, `page`, `identify`, `group`, or empty for a whole-event outcome change.
    pub call_type: String,
    /// The track event or page name under the running mapping (the candidate's for an added
    /// call); empty for identify and group calls.
    pub name: String,
    /// The Pendo event kind as received.
    pub kind: String,
    /// What changed: the property or field name, `old -> new`, the outcome change.
    pub detail: String,
}

/// One difference in one event, with the values on both sides (for samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is about.
    pub key: FindingKey,
    /// The value under the running mapping (empty when there is none).
    pub before: String,
    /// The value under the candidate.
    pub after: String,
}

/// Compares the outcomes of one event under the running mapping (`current`) and the candidate;
/// `kind` is the event's Pendo kind as received. Empty when both map the event alike.
pub fn diff_outcomes(current: &MapOutcome, candidate: &MapOutcome, kind: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    match (current, candidate) {
        (MapOutcome::Calls(before), MapOutcome::Calls(after)) => {
            for call_type in ["identify", "group", "page", "track"] {
                let b: Vec<&SegmentCall> = of_type(before, call_type);
                let a: Vec<&SegmentCall> = of_type(after, call_type);
                for i in 0..b.len().max(a.len()) {
                    match (b.get(i), a.get(i)) {
                        (Some(b), Some(a)) => diff_calls(b, a, kind, &mut out),
                        (Some(b), None) => out.push(Finding {
                            key: key(Category::CallRemoved, b, kind, String::new()),
                            before: describe_call(b),
                            after: String::new(),
                        }),
                        (None, Some(a)) => out.push(Finding {
                            key: key(Category::CallAdded, a, kind, String::new()),
                            before: String::new(),
                            after: describe_call(a),
                        }),
                        (None, None) => {}
                    }
                }
            }
        }
        _ if outcome_class(current) == outcome_class(candidate) => {}
        _ => {
            let (before, after) = (outcome_class(current), outcome_class(candidate));
            let named = match (current, candidate) {
                (MapOutcome::Calls(c), _) | (_, MapOutcome::Calls(c)) => c.first(),
                _ => None,
            };
            out.push(Finding {
                key: FindingKey {
                    category: Category::OutcomeChanged,
                    call_type: named.map_or("", |c| c.body.call_type()).to_string(),
                    name: named.map(call_name).unwrap_or_default(),
                    kind: kind.to_string(),
                    detail: format!("{before} -> {after}"),
                },
                before: describe_outcome(current),
                after: describe_outcome(candidate),
            });
        }
    }
    out
}

/// Compares the tracking-plan violations of the calls of one event under the running mapping
/// and the candidate. Violations are matched on the call pairing of [`diff_outcomes`] (call
/// type and order within it), the rule and the place, not on the event name: a renamed event
/// that breaks the same rules as before introduces nothing. A violation only the candidate's
/// calls have is introduced, one only the running mapping's calls have is resolved. The plan's
/// policies are applied to copies; the outcomes are not changed.
pub fn diff_plan(
    plan: &TrackingPlan,
    current: &MapOutcome,
    candidate: &MapOutcome,
    kind: &str,
) -> Vec<Finding> {
    type Match = (&'static str, usize, &'static str, String);
    let violations = |outcome: &MapOutcome| -> Vec<(Match, FindingKey, String)> {
        let MapOutcome::Calls(calls) = outcome else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        for call in calls {
            let call_type = call.body.call_type();
            let index = seen.entry(call_type).or_default();
            let mut copy = call.clone();
            for v in plan
                .check(&mut copy)
                .map(|c| c.violations)
                .unwrap_or_default()
            {
                let place = if v.path.is_empty() {
                    v.rule.to_string()
                } else {
                    format!("{} at {}", v.rule, v.path)
                };
                out.push((
                    (call_type, *index, v.rule, v.path),
                    key(Category::PlanViolationIntroduced, call, kind, place),
                    v.message,
                ));
            }
            *index += 1;
        }
        out
    };
    let mut before = violations(current);
    let mut out = Vec::new();
    // Multiset difference: the same violation of the same paired call cancels out.
    for (m, k, message) in violations(candidate) {
        match before.iter().position(|(b, _, _)| *b == m) {
            Some(i) => {
                before.swap_remove(i);
            }
            None => out.push(Finding {
                key: k,
                before: String::new(),
                after: message,
            }),
        }
    }
    for (_, mut k, message) in before {
        k.category = Category::PlanViolationResolved;
        out.push(Finding {
            key: k,
            before: message,
            after: String::new(),
        });
    }
    out
}

fn of_type<'a>(calls: &'a [SegmentCall], call_type: &str) -> Vec<&'a SegmentCall> {
    calls
        .iter()
        .filter(|c| c.body.call_type() == call_type)
        .collect()
}

/// A bounded summary of an outcome: `mapped`, `filtered (rule)`, `dropped`,
/// `dead-lettered (reason)`.
fn outcome_class(outcome: &MapOutcome) -> String {
    match outcome {
        MapOutcome::Calls(c) if c.is_empty() => "no calls".to_string(),
        MapOutcome::Calls(_) => "mapped".to_string(),
        MapOutcome::Filtered(rule) => format!("filtered ({rule})"),
        MapOutcome::Dropped => "dropped (unknown kind)".to_string(),
        MapOutcome::DeadLetter { reason, .. } => format!("dead-lettered ({reason})"),
    }
}

fn describe_outcome(outcome: &MapOutcome) -> String {
    match outcome {
        MapOutcome::Calls(calls) => calls
            .iter()
            .map(describe_call)
            .collect::<Vec<_>>()
            .join("; "),
        MapOutcome::DeadLetter { reason, detail } => format!("dead-lettered ({reason}): {detail}"),
        other => outcome_class(other),
    }
}

/// `track "Feature Clicked" <messageId>`.
fn describe_call(call: &SegmentCall) -> String {
    let name = call_name(call);
    if name.is_empty() {
        format!("{} {}", call.body.call_type(), call.message_id)
    } else {
        format!("{} {name:?} {}", call.body.call_type(), call.message_id)
    }
}

/// The track event or page name (empty for identify, group and unnamed pages).
fn call_name(call: &SegmentCall) -> String {
    match &call.body {
        CallBody::Track { event, .. } => event.clone(),
        CallBody::Page { name, .. } => name.clone().unwrap_or_default(),
        CallBody::Identify { .. } | CallBody::Group { .. } => String::new(),
    }
}

fn key(category: Category, call: &SegmentCall, kind: &str, detail: String) -> FindingKey {
    FindingKey {
        category,
        call_type: call.body.call_type().to_string(),
        name: call_name(call),
        kind: kind.to_string(),
        detail,
    }
}

/// The JSON text of a call's properties or traits.
fn fields_text(body: &CallBody) -> &str {
    match body {
        CallBody::Track { properties, .. } | CallBody::Page { properties, .. } => properties,
        CallBody::Identify { traits } | CallBody::Group { traits, .. } => traits,
    }
}

/// Compares two calls paired by type and position.
fn diff_calls(before: &SegmentCall, after: &SegmentCall, kind: &str, out: &mut Vec<Finding>) {
    let finding = |category: Category, detail: String, b: String, a: String| Finding {
        key: key(category, before, kind, detail),
        before: b,
        after: a,
    };
    if before.message_id != after.message_id {
        out.push(finding(
            Category::MessageIdChanged,
            String::new(),
            before.message_id.clone(),
            after.message_id.clone(),
        ));
    }
    let (name_b, name_a) = (call_name(before), call_name(after));
    if name_b != name_a {
        out.push(finding(
            Category::NameChanged,
            format!("{name_b:?} -> {name_a:?}"),
            name_b,
            name_a,
        ));
    }
    let mut field = |name: &str, b: String, a: String| {
        if b != a {
            out.push(finding(Category::CallChanged, name.to_string(), b, a));
        }
    };
    field("userId", opt(&before.user_id), opt(&after.user_id));
    field(
        "anonymousId",
        opt(&before.anonymous_id),
        opt(&after.anonymous_id),
    );
    field(
        "timestamp",
        before.timestamp.clone(),
        after.timestamp.clone(),
    );
    field(
        "integrations",
        opt(&before.integrations),
        opt(&after.integrations),
    );
    let (cb, ca) = (&before.context, &after.context);
    field("context.groupId", opt(&cb.group_id), opt(&ca.group_id));
    field("context.page", json_of(&cb.page), json_of(&ca.page));
    field("context.traits", opt(&cb.traits), opt(&ca.traits));
    field(
        "context.userAgent",
        opt(&cb.user_agent),
        opt(&ca.user_agent),
    );
    field("context.locale", opt(&cb.locale), opt(&ca.locale));
    field(
        "context.library",
        json_of(&cb.library),
        json_of(&ca.library),
    );
    field("context (other fields)", opt(&cb.extra), opt(&ca.extra));
    match (&before.body, &after.body) {
        (CallBody::Page { category: b, .. }, CallBody::Page { category: a, .. }) => {
            field("category", opt(b), opt(a));
        }
        (CallBody::Group { group_id: b, .. }, CallBody::Group { group_id: a, .. }) => {
            field("groupId", b.clone(), a.clone());
        }
        _ => {}
    }
    let (text_b, text_a) = (fields_text(&before.body), fields_text(&after.body));
    if text_b == text_a {
        return;
    }
    let parse = |t: &str| serde_json::from_str::<Map<String, Value>>(t).ok();
    match (parse(text_b), parse(text_a)) {
        (Some(b), Some(a)) => diff_fields(&b, &a, &mut |category, detail, vb, va| {
            out.push(finding(category, detail, vb, va));
        }),
        // Not objects (never produced by the mapper): compare as text.
        _ => out.push(finding(
            Category::CallChanged,
            "properties/traits".into(),
            text_b.to_string(),
            text_a.to_string(),
        )),
    }
}

/// Compares two property (or trait) objects, top-level keys: a key only before and a key only
/// after holding equal values are a rename; the rest are drops and additions; shared keys are
/// compared by JSON type, then value.
fn diff_fields(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    emit: &mut dyn FnMut(Category, String, String, String),
) {
    let mut gone: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let mut new: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    gone.sort();
    new.sort();
    let mut new_used = vec![false; new.len()];
    for g in gone {
        let value = &before[g.as_str()];
        let renamed = new
            .iter()
            .enumerate()
            .find(|(i, n)| !new_used[*i] && after[n.as_str()] == *value);
        match renamed {
            Some((i, n)) => {
                new_used[i] = true;
                emit(
                    Category::FieldRenamed,
                    format!("{g} -> {n}"),
                    g.clone(),
                    (*n).clone(),
                );
            }
            None => emit(
                Category::FieldDropped,
                g.clone(),
                value.to_string(),
                String::new(),
            ),
        }
    }
    for (i, n) in new.iter().enumerate() {
        if !new_used[i] {
            emit(
                Category::FieldAdded,
                (*n).clone(),
                String::new(),
                after[n.as_str()].to_string(),
            );
        }
    }
    let mut shared: Vec<&String> = before.keys().filter(|k| after.contains_key(*k)).collect();
    shared.sort();
    for k in shared {
        let (b, a) = (&before[k.as_str()], &after[k.as_str()]);
        if json_type(b) != json_type(a) {
            emit(
                Category::FieldTypeChanged,
                format!("{k}: {} -> {}", json_type(b), json_type(a)),
                b.to_string(),
                a.to_string(),
            );
        } else if b != a {
            emit(
                Category::FieldValueChanged,
                k.clone(),
                b.to_string(),
                a.to_string(),
            );
        }
    }
}

/// The JSON type of a value, as people name it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

fn json_of<T: serde::Serialize>(v: &Option<T>) -> String {
    v.as_ref()
        .and_then(|v| serde_json::to_string(v).ok())
        .unwrap_or_default()
}

/// Longest sample value kept, in bytes (cut on a character boundary).
pub const SAMPLE_VALUE_BYTES: usize = 200;

/// Distinct finding keys kept; further keys are counted under one overflow entry, so a
/// candidate that changes a name taken from the data cannot grow memory without bound.
pub const MAX_DISTINCT_FINDINGS: usize = 2_000;

/// One example of a finding: where the raw event is and the values on both sides.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// `topic partition@offset` of the raw event.
    pub at: String,
    /// The value under the running mapping (truncated).
    pub before: String,
    /// The value under the candidate (truncated).
    pub after: String,
}

/// How often a finding occurred, with its first samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Occurrences (calls, or events for outcome changes).
    pub count: u64,
    /// The first few occurrences.
    pub samples: Vec<Sample>,
}

/// Findings of many events, counted by key, with capped samples: what a preview reports.
#[derive(Debug, Clone)]
pub struct Findings {
    by_key: BTreeMap<FindingKey, Tally>,
    samples_per_finding: usize,
    events: u64,
    identical: u64,
}

impl Findings {
    /// Empty, keeping up to `samples_per_finding` samples of each finding.
    pub fn new(samples_per_finding: usize) -> Self {
        Self {
            by_key: BTreeMap::new(),
            samples_per_finding,
            events: 0,
            identical: 0,
        }
    }

    /// Adds the findings of one event found `at` (`topic partition@offset`).
    pub fn record_event(&mut self, at: &str, findings: Vec<Finding>) {
        self.events += 1;
        if findings.is_empty() {
            self.identical += 1;
        }
        for f in findings {
            let key = if self.by_key.len() >= MAX_DISTINCT_FINDINGS
                && !self.by_key.contains_key(&f.key)
            {
                FindingKey {
                    category: f.key.category,
                    call_type: String::new(),
                    name: String::new(),
                    kind: String::new(),
                    detail: format!("(more than {MAX_DISTINCT_FINDINGS} distinct findings)"),
                }
            } else {
                f.key
            };
            let tally = self.by_key.entry(key).or_default();
            tally.count += 1;
            if tally.samples.len() < self.samples_per_finding {
                tally.samples.push(Sample {
                    at: at.to_string(),
                    before: truncate(&f.before),
                    after: truncate(&f.after),
                });
            }
        }
    }

    /// Events compared.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Events both mappings map alike.
    pub fn identical(&self) -> u64 {
        self.identical
    }

    /// Every finding, in report order (category first, then call type, name, kind, detail).
    pub fn iter(&self) -> impl Iterator<Item = (&FindingKey, &Tally)> {
        self.by_key.iter()
    }

    /// Distinct findings.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No finding: the candidate maps every event exactly as the running mapping does.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Tracking-plan violations the candidate would introduce.
    pub fn plan_violations_introduced(&self) -> u64 {
        self.by_key
            .iter()
            .filter(|(k, _)| k.category == Category::PlanViolationIntroduced)
            .map(|(_, t)| t.count)
            .sum()
    }

    /// Calls whose messageId would change (the count the exit status gates on).
    pub fn message_id_changes(&self) -> u64 {
        self.by_key
            .iter()
            .filter(|(k, _)| k.category == Category::MessageIdChanged)
            .map(|(_, t)| t.count)
            .sum()
    }
}

/// At most [`SAMPLE_VALUE_BYTES`] bytes, cut on a character boundary, with `…` when cut.
fn truncate(s: &str) -> String {
    if s.len() <= SAMPLE_VALUE_BYTES {
        return s.to_string();
    }
    format!("{}…", &s[..s.floor_char_boundary(SAMPLE_VALUE_BYTES)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(id: &str, event: &str, properties: &str) -> SegmentCall {
        SegmentCall::test_track(id, event, properties)
    }

    fn identify(id: &str, traits: &str) -> SegmentCall {
        SegmentCall {
            body: CallBody::Identify {
                traits: traits.into(),
            },
            ..track(id, "", "{}")
        }
    }

    fn codes(findings: &[Finding]) -> Vec<(Category, String)> {
        findings
            .iter()
            .map(|f| (f.key.category, f.key.detail.clone()))
            .collect()
    }

    #[test]
    fn identical_outcomes_have_no_findings() {
        let calls = MapOutcome::Calls(vec![
            identify("i1", r#"{"a":1}"#),
            track("t1", "E", r#"{"x":"y"}"#),
        ]);
        assert!(diff_outcomes(&calls, &calls.clone(), "k").is_empty());
        let dead = MapOutcome::DeadLetter {
            reason: "invalid_json",
            detail: "bad".into(),
        };
        assert!(diff_outcomes(&dead, &dead.clone(), "").is_empty());
        assert!(diff_outcomes(&MapOutcome::Dropped, &MapOutcome::Dropped, "k").is_empty());
    }

    #[test]
    fn plan_violations_introduced_and_resolved_follow_the_call_pairing_not_the_name() {
        use crate::transform::tracking_plan::{TrackingPlan, TrackingPlanConfig};
        let plan = TrackingPlan::parse(
            r#"{"rules": [{"type": "TRACK", "key": "E", "jsonSchema": {"properties":
                {"properties": {"required": ["x"]}}}}]}"#,
            "plan.json",
            &TrackingPlanConfig::default(),
        )
        .unwrap();
        let out = |event: &str, props: &str| MapOutcome::Calls(vec![track("t1", event, props)]);
        // Dropping the required property introduces a violation, restoring it resolves it.
        let ok = out("E", r#"{"x":1}"#);
        let missing = out("E", "{}");
        assert_eq!(
            codes(&diff_plan(&plan, &ok, &missing, "k")),
            vec![(
                Category::PlanViolationIntroduced,
                "required at properties.x".into()
            )]
        );
        assert_eq!(
            codes(&diff_plan(&plan, &missing, &ok, "k")),
            vec![(
                Category::PlanViolationResolved,
                "required at properties.x".into()
            )]
        );
        // An unplanned event renamed to another unplanned event changes nothing for the plan.
        assert!(diff_plan(&plan, &out("A", "{}"), &out("B", "{}"), "k").is_empty());
        // Renamed into the plan: it no longer is unplanned, but now breaks `required`.
        let mut got = codes(&diff_plan(&plan, &out("A", "{}"), &missing, "k"));
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    Category::PlanViolationIntroduced,
                    "required at properties.x".into()
                ),
                (Category::PlanViolationResolved, "unplanned_event".into()),
            ]
        );
        assert!(diff_plan(&plan, &ok, &ok.clone(), "k").is_empty());
    }

    #[test]
    fn renames_drops_additions_and_type_changes_are_told_apart() {
        let before = MapOutcome::Calls(vec![track(
            "t1",
            "Feature Clicked",
            r#"{"featureId":"f1","url":"u","n":1,"same":true,"v":"a"}"#,
        )]);
        let after = MapOutcome::Calls(vec![track(
            "t1",
            "Feature Used",
            r#"{"feature_id":"f1","n":"1","same":true,"v":"b","extra":0}"#,
        )]);
        let f = diff_outcomes(&before, &after, "featureClicked");
        assert_eq!(
            codes(&f),
            vec![
                (
                    Category::NameChanged,
                    "\"Feature Clicked\" -> \"Feature Used\"".into()
                ),
                (Category::FieldRenamed, "featureId -> feature_id".into()),
                (Category::FieldDropped, "url".into()),
                (Category::FieldAdded, "extra".into()),
                (Category::FieldTypeChanged, "n: number -> string".into()),
                (Category::FieldValueChanged, "v".into()),
            ]
        );
        // Findings are named after the running mapping's call.
        assert!(f.iter().all(|x| x.key.name == "Feature Clicked"
            && x.key.call_type == "track"
            && x.key.kind == "featureClicked"));
    }

    #[test]
    fn message_id_changes_are_found_per_call() {
        let before = MapOutcome::Calls(vec![identify("i1", "{}"), track("t1", "NPS", "{}")]);
        let after = MapOutcome::Calls(vec![identify("i1", "{}"), track("t2", "NPS", "{}")]);
        let f = diff_outcomes(&before, &after, "npsSubmitted");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key.category, Category::MessageIdChanged);
        assert_eq!(f[0].key.call_type, "track");
        assert_eq!((f[0].before.as_str(), f[0].after.as_str()), ("t1", "t2"));
    }

    #[test]
    fn calls_added_and_removed_pair_by_type() {
        let before = MapOutcome::Calls(vec![identify("i1", "{}"), track("t1", "E", "{}")]);
        let after = MapOutcome::Calls(vec![track("t1", "E", "{}"), track("t3", "F", "{}")]);
        let f = diff_outcomes(&before, &after, "k");
        let cats: Vec<(Category, &str, &str)> = f
            .iter()
            .map(|x| {
                (
                    x.key.category,
                    x.key.call_type.as_str(),
                    x.key.name.as_str(),
                )
            })
            .collect();
        assert_eq!(
            cats,
            vec![
                (Category::CallRemoved, "identify", ""),
                (Category::CallAdded, "track", "F"),
            ]
        );
    }

    #[test]
    fn outcome_changes_name_both_sides() {
        let before = MapOutcome::Calls(vec![track("t1", "E", "{}")]);
        let f = diff_outcomes(&before, &MapOutcome::Filtered("deny_kinds"), "k");
        assert_eq!(
            codes(&f),
            vec![(
                Category::OutcomeChanged,
                "mapped -> filtered (deny_kinds)".into()
            )]
        );
        assert_eq!(f[0].key.name, "E");
        let dl = |reason| MapOutcome::DeadLetter {
            reason,
            detail: String::new(),
        };
        let f = diff_outcomes(&dl("no_visitor"), &dl("no_account"), "k");
        assert_eq!(
            codes(&f),
            vec![(
                Category::OutcomeChanged,
                "dead-lettered (no_visitor) -> dead-lettered (no_account)".into()
            )]
        );
    }

    #[test]
    fn other_call_fields_are_named() {
        let before = track("t1", "E", "{}");
        let mut after = before.clone();
        after.user_id = None;
        after.anonymous_id = Some("a".into());
        after.context.locale = Some("de-DE".into());
        let f = diff_outcomes(
            &MapOutcome::Calls(vec![before]),
            &MapOutcome::Calls(vec![after]),
            "k",
        );
        assert_eq!(
            codes(&f),
            vec![
                (Category::CallChanged, "userId".into()),
                (Category::CallChanged, "anonymousId".into()),
                (Category::CallChanged, "context.locale".into()),
            ]
        );
    }

    #[test]
    fn findings_aggregate_with_capped_truncated_samples() {
        let mut all = Findings::new(2);
        let before = MapOutcome::Calls(vec![track("t1", "E", r#"{"a":1}"#)]);
        let long = format!(r#"{{"a":1,"b":"{}"}}"#, "é".repeat(300));
        let after = MapOutcome::Calls(vec![track("t1", "E", &long)]);
        for offset in 0..5 {
            all.record_event(
                &format!("raw 0@{offset}"),
                diff_outcomes(&before, &after, "k"),
            );
        }
        all.record_event("raw 0@5", diff_outcomes(&before, &before, "k"));
        assert_eq!((all.events(), all.identical(), all.len()), (6, 1, 1));
        let (k, t) = all.iter().next().unwrap();
        assert_eq!((k.category, k.detail.as_str()), (Category::FieldAdded, "b"));
        assert_eq!(t.count, 5);
        assert_eq!(t.samples.len(), 2);
        assert_eq!(t.samples[1].at, "raw 0@1");
        assert!(t.samples[0].after.len() <= SAMPLE_VALUE_BYTES + "…".len());
        assert!(t.samples[0].after.ends_with('…'));
        assert_eq!(all.message_id_changes(), 0);
    }

    /// Every fixture event (arrays split), as raw bytes.
    fn fixture_events() -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pendo");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "index.json" || name == "README.md" {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Array(items)) => {
                    out.extend(items.iter().map(|i| serde_json::to_vec(i).unwrap()));
                }
                _ => out.push(bytes),
            }
        }
        out
    }

    fn compare(running: &str, candidate: &str) -> Findings {
        use crate::transform::mapping::PendoMapping;
        use crate::transform::pendo_to_segment::{MapperSettings, PendoToSegment};
        let ids = std::collections::HashMap::new();
        let mapper = |text: &str| {
            PendoToSegment::new(
                PendoMapping::parse(text, "test").unwrap(),
                MapperSettings::default(),
            )
        };
        let (before, after) = (mapper(running), mapper(candidate));
        let mut all = Findings::new(3);
        for raw in fixture_events() {
            let (b, obs) = before.map(&raw, None, &ids);
            let (a, _) = after.map(&raw, None, &ids);
            all.record_event("fixture", diff_outcomes(&b, &a, &obs.kind));
        }
        all
    }

    #[test]
    fn the_same_mapping_finds_nothing_in_any_fixture() {
        let text = crate::transform::mapping::DEFAULT_PENDO_MAPPING;
        let all = compare(text, text);
        assert!(all.events() > 10);
        assert_eq!(all.identical(), all.events());
        assert!(all.is_empty());
    }

    #[test]
    fn a_changed_message_id_recipe_is_found_for_every_call_of_the_kind() {
        let text = crate::transform::mapping::DEFAULT_PENDO_MAPPING;
        let candidate = text.replacen(
            "[kinds.npsSubmitted]\n",
            "[kinds.npsSubmitted]\nmessage_id_fields = [\"uniqueId\"]\n",
            1,
        );
        assert_ne!(candidate, text);
        let all = compare(text, &candidate);
        let found: Vec<(Category, &str, &str, u64)> = all
            .iter()
            .map(|(k, t)| (k.category, k.call_type.as_str(), k.kind.as_str(), t.count))
            .collect();
        // Two NPS fixtures, each an identify and a track call.
        assert_eq!(
            found,
            vec![
                (Category::MessageIdChanged, "identify", "npsSubmitted", 2),
                (Category::MessageIdChanged, "track", "npsSubmitted", 2),
            ]
        );
        assert_eq!(all.message_id_changes(), 4);
    }

    #[test]
    fn distinct_findings_are_bounded() {
        let mut all = Findings::new(1);
        let before = MapOutcome::Calls(vec![track("t1", "E", "{}")]);
        for i in 0..MAX_DISTINCT_FINDINGS + 10 {
            let after = MapOutcome::Calls(vec![track("t1", &format!("E{i}"), "{}")]);
            all.record_event("x", diff_outcomes(&before, &after, "k"));
        }
        assert_eq!(all.len(), MAX_DISTINCT_FINDINGS + 1);
        let total: u64 = all.iter().map(|(_, t)| t.count).sum();
        assert_eq!(total, (MAX_DISTINCT_FINDINGS + 10) as u64);
    }
}
