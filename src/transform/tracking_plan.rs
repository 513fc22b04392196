//! The tracking plan: which Segment calls the marketing team expects, and what they must carry,
//! checked on every call `transform-pendo` makes, so a mapping edit or a change in what Pendo
//! sends cannot silently put calls outside the plan.
//!
//! The file is the shape Segment Protocols uses (`{"rules": [...]}`, or the Public API's
//! `{"data": {"rules": [...]}}` as downloaded): each rule has a `type` (`TRACK` with the event
//! name as `key`, `IDENTIFY`, `GROUP`, `PAGE` with an optional page name, `COMMON` for every
//! call) and a `jsonSchema` over the call (`properties.properties` for track/page properties,
//! `properties.traits` for identify/group traits, `properties.context`, ...), in the JSON
//! Schema subset of [`super::json_schema`]. The policies are deployment choices and live in
//! the configuration (`[transform_pendo.tracking_plan]`); see `docs/tracking-plan.md`.

use std::collections::BTreeMap;
use std::path::Path;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::json_schema::{JsonSchema, PathStep, SchemaViolation};
use crate::schema::segment_call::{CallBody, SegmentCall};

/// What happens to a call that breaks its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationPolicy {
    /// Send it as it is; the violations are counted.
    Allow,
    /// Remove the offending properties (or traits) and send the rest. A violation no removal
    /// fixes (a missing required property) is counted and the call sent, as Segment Protocols'
    /// "omit properties" does.
    DropProperty,
    /// Dead-letter the Pendo event (all of its calls) with the violations as the reason, to be
    /// replayed once the plan or the mapping is fixed.
    Dlq,
}

/// What happens to a track call whose event the plan does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnplannedEventPolicy {
    /// Send it, not counted (the plan covers only some events).
    Ignore,
    /// Send it and count it as an `unplanned_event` violation.
    Allow,
    /// Dead-letter its Pendo event (counted).
    Dlq,
}

/// `[transform_pendo.tracking_plan]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingPlanConfig {
    /// The plan (JSON); no plan is checked when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<std::path::PathBuf>,
    /// What happens to a call that breaks its rule.
    pub on_violation: ViolationPolicy,
    /// What happens to a track call whose event has no rule.
    pub on_unplanned_event: UnplannedEventPolicy,
    /// `on_violation` per track event name (e.g. `"Order Completed" = "dlq"`) or per call type
    /// (`identify`, `group`, `page`).
    pub event_policies: BTreeMap<String, ViolationPolicy>,
}

impl Default for TrackingPlanConfig {
    fn default() -> Self {
        Self {
            file: None,
            on_violation: ViolationPolicy::Allow,
            on_unplanned_event: UnplannedEventPolicy::Allow,
            event_policies: BTreeMap::new(),
        }
    }
}

/// A plan file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracking plan {origin}: {message}")]
pub struct TrackingPlanError {
    /// File name.
    pub origin: String,
    /// What is wrong, and where.
    pub message: String,
}

/// One rule, compiled.
#[derive(Debug)]
struct PlanRule {
    schema: JsonSchema,
    policy: ViolationPolicy,
    /// The call members its schema reads (`properties`, `traits`, `context`, `userId`, ...).
    reads: Vec<String>,
    /// It reads every member (`additionalProperties` is not `true` at the top).
    reads_all: bool,
}

impl PlanRule {
    fn new(schema: JsonSchema, policy: ViolationPolicy) -> Self {
        let mut reads: Vec<String> = schema.mentioned_members().map(str::to_string).collect();
        reads.sort();
        reads.dedup();
        Self {
            reads_all: !schema.allows_additional(),
            schema,
            policy,
            reads,
        }
    }

    fn reads(&self, member: &str) -> bool {
        self.reads_all || self.reads.iter().any(|m| m == member)
    }

    /// Whether it reads anything of the call besides `data_key` (its properties or traits).
    fn reads_beyond(&self, data_key: &str) -> bool {
        self.reads_all || self.reads.iter().any(|m| m != data_key)
    }
}

/// One broken rule of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanViolation {
    /// The call's event: the track event name, or `identify`, `group`, `page`.
    pub event: String,
    /// The constraint broken (`required`, `type`, `enum`, `additional_properties`, ...,
    /// `unplanned_event`): a bounded set, usable as a metric label.
    pub rule: &'static str,
    /// Where in the call (`properties.plan`); empty for `unplanned_event`.
    pub path: String,
    /// What was expected.
    pub message: String,
}

impl std::fmt::Display for PlanViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{} `{}`: {}", self.rule, self.event, self.message)
        } else {
            write!(
                f,
                "{} `{}` at {}: {}",
                self.rule, self.event, self.path, self.message
            )
        }
    }
}

/// What the plan decided for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCheck {
    /// Every violation found (before any property was dropped).
    pub violations: Vec<PlanViolation>,
    /// Properties or traits removed under `drop_property`, as paths.
    pub dropped: Vec<String>,
    /// The call must not be sent: its event is dead-lettered.
    pub dead_letter: bool,
}

impl PlanCheck {
    /// The dead-letter detail: the call and its violations, bounded.
    pub fn detail(&self, call: &SegmentCall) -> String {
        let mut s = format!(
            "tracking plan: {} call `{}` breaks the plan:",
            call.body.call_type(),
            event_of(call)
        );
        for v in self.violations.iter().take(5) {
            s.push_str(" [");
            s.push_str(&v.to_string());
            s.push(']');
        }
        if self.violations.len() > 5 {
            s.push_str(&format!(" (+{} more)", self.violations.len() - 5));
        }
        s
    }
}

/// The compiled tracking plan with its policies.
#[derive(Debug)]
pub struct TrackingPlan {
    track: FxHashMap<String, PlanRule>,
    named_pages: FxHashMap<String, PlanRule>,
    page: Option<PlanRule>,
    identify: Option<PlanRule>,
    group: Option<PlanRule>,
    common: Option<PlanRule>,
    unplanned: UnplannedEventPolicy,
    rules: usize,
    fingerprint: String,
}

/// The event a call is counted under: its track event name, else its call type.
pub fn event_of(call: &SegmentCall) -> &str {
    match &call.body {
        CallBody::Track { event, .. } => event,
        other => other.call_type(),
    }
}

impl TrackingPlan {
    /// Loads the configured plan, if any.
    pub fn from_config(config: &TrackingPlanConfig) -> Result<Option<Self>, TrackingPlanError> {
        let Some(path) = &config.file else {
            return Ok(None);
        };
        Self::load(path, config).map(Some)
    }

    /// Loads and compiles the plan at `path` with `config`'s policies.
    pub fn load(path: &Path, config: &TrackingPlanConfig) -> Result<Self, TrackingPlanError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TrackingPlanError {
            origin: origin.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &origin, config)
    }

    /// Compiles a plan from its JSON text; `origin` names it in errors.
    pub fn parse(
        text: &str,
        origin: &str,
        config: &TrackingPlanConfig,
    ) -> Result<Self, TrackingPlanError> {
        let err = |message: String| TrackingPlanError {
            origin: origin.to_string(),
            message,
        };
        let root: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let rules = root
            .get("rules")
            .or_else(|| root.get("data").and_then(|d| d.get("rules")))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                err(
                    "expected an object with a `rules` array (or `data.rules`, as Segment's \
                     Public API returns it)"
                        .into(),
                )
            })?;
        let mut plan = TrackingPlan {
            track: FxHashMap::default(),
            named_pages: FxHashMap::default(),
            page: None,
            identify: None,
            group: None,
            common: None,
            unplanned: config.on_unplanned_event,
            rules: 0,
            fingerprint: String::new(),
        };
        // Segment keeps every version of a rule; the highest one is the rule.
        let mut versions: FxHashMap<(String, String), i64> = FxHashMap::default();
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let rtype = rule
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("{at}: `type` is missing")))?
                .to_ascii_uppercase();
            let key = match rule.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(other) => {
                    return Err(err(format!("{at}: `key` must be a string, got {other}")));
                }
            };
            let version = rule.get("version").and_then(Value::as_i64).unwrap_or(1);
            let schema = rule
                .get("jsonSchema")
                .or_else(|| rule.get("json_schema"))
                .ok_or_else(|| err(format!("{at}: `jsonSchema` is missing")))?;
            let schema = JsonSchema::compile(schema, &format!("{at}.jsonSchema")).map_err(err)?;
            let label = match (rtype.as_str(), &key) {
                ("TRACK", Some(k)) => k.clone(),
                ("TRACK", None) => {
                    return Err(err(format!(
                        "{at}: a TRACK rule needs the event name as `key`"
                    )));
                }
                ("PAGE", _) => "page".into(),
                ("IDENTIFY", _) => "identify".into(),
                ("GROUP", _) => "group".into(),
                ("COMMON", _) => "common".into(),
                (other, _) => {
                    return Err(err(format!(
                        "{at}: type `{other}` is not one of TRACK, PAGE, IDENTIFY, GROUP, COMMON \
                         (SCREEN and ALIAS calls are never made from Pendo events)"
                    )));
                }
            };
            let slot_key = (rtype.clone(), key.clone().unwrap_or_default());
            if let Some(&seen) = versions.get(&slot_key) {
                if seen == version {
                    return Err(err(format!(
                        "{at}: a second {rtype} rule for `{}` with version {version}",
                        slot_key.1
                    )));
                }
                if seen > version {
                    continue;
                }
            } else {
                plan.rules += 1;
            }
            versions.insert(slot_key, version);
            let policy = config
                .event_policies
                .get(&label)
                .copied()
                .unwrap_or(config.on_violation);
            let compiled = PlanRule::new(schema, policy);
            match (rtype.as_str(), key) {
                ("TRACK", Some(k)) => {
                    plan.track.insert(k, compiled);
                }
                ("PAGE", Some(k)) => {
                    plan.named_pages.insert(k, compiled);
                }
                ("PAGE", None) => plan.page = Some(compiled),
                ("IDENTIFY", _) => plan.identify = Some(compiled),
                ("GROUP", _) => plan.group = Some(compiled),
                _ => plan.common = Some(compiled),
            }
        }
        plan.fingerprint = fingerprint(&root, config);
        Ok(plan)
    }

    /// Rules in the plan (the highest version of each).
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// 16 hex digits identifying the plan's content (not its formatting) and policies.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Checks `call` against its rule and the common rule, applies the policy (dropping
    /// offending properties from `call` under `drop_property`), and says what happened.
    /// `None` when the plan has nothing to say about the call.
    pub fn check(&self, call: &mut SegmentCall) -> Option<PlanCheck> {
        let specific = match &call.body {
            CallBody::Track { event, .. } => self.track.get(event.as_str()),
            CallBody::Page { name, .. } => name
                .as_deref()
                .and_then(|n| self.named_pages.get(n))
                .or(self.page.as_ref()),
            CallBody::Identify { .. } => self.identify.as_ref(),
            CallBody::Group { .. } => self.group.as_ref(),
        };
        let unplanned = matches!(call.body, CallBody::Track { .. })
            && specific.is_none()
            && self.unplanned != UnplannedEventPolicy::Ignore;
        if specific.is_none() && self.common.is_none() && !unplanned {
            return None;
        }
        let mut check = PlanCheck {
            violations: Vec::new(),
            dropped: Vec::new(),
            dead_letter: false,
        };
        if unplanned {
            check.violations.push(PlanViolation {
                event: event_of(call).to_string(),
                rule: "unplanned_event",
                path: String::new(),
                message: "the tracking plan has no rule for this event".into(),
            });
            check.dead_letter = self.unplanned == UnplannedEventPolicy::Dlq;
        }
        let rules = [specific, self.common.as_ref()];
        let rules = rules.iter().flatten().copied();
        // The call's properties or traits are checked as text, read only as deep as the rules
        // look; other members are put in a small JSON view only when a rule reads them, and a
        // parsed copy of the properties is made only when `drop_property` removes something.
        let data_key = data_key(call);
        let view = rules
            .clone()
            .any(|r| r.reads_beyond(data_key))
            .then(|| CallView::of(call, rules.clone(), false));
        let empty = Map::new();
        let members = match &view {
            Some(CallView {
                root: Value::Object(m),
                ..
            }) => m,
            _ => &empty,
        };
        let mut found: Vec<(SchemaViolation, ViolationPolicy)> = Vec::new();
        for rule in rules.clone() {
            let mut out = Vec::new();
            if rule.reads(data_key) {
                let data = (data_key, data_text(call));
                rule.schema.check_object_with_raw(members, data, &mut out);
            } else {
                let root = view.as_ref().map(|v| &v.root);
                rule.schema
                    .check(root.unwrap_or(&Value::Object(Map::new())), None, &mut out);
            }
            found.extend(out.into_iter().map(|v| (v, rule.policy)));
        }
        if found.is_empty() {
            return Some(check);
        }
        let mut parsed = found
            .iter()
            .any(|(_, p)| *p == ViolationPolicy::DropProperty)
            .then(|| CallView::of(call, rules.clone(), true));
        let event = event_of(call).to_string();
        for (v, policy) in &found {
            check.violations.push(PlanViolation {
                event: event.clone(),
                rule: v.rule.name(),
                path: v.dotted_path(),
                message: v.message.clone(),
            });
            match policy {
                ViolationPolicy::Allow => {}
                ViolationPolicy::Dlq => check.dead_letter = true,
                ViolationPolicy::DropProperty => {
                    if let Some(path) = parsed.as_mut().and_then(|view| view.remove(&v.path)) {
                        check.dropped.push(path);
                    }
                }
            }
        }
        if let Some(view) = parsed
            && !check.dropped.is_empty()
            && !check.dead_letter
        {
            view.write_back(call);
        }
        Some(check)
    }
}

/// The JSON view of a call that rule schemas check: only the members the rules read are built.
struct CallView {
    root: Value,
}

/// The member holding a call's properties (track, page) or traits (identify, group).
fn data_key(call: &SegmentCall) -> &'static str {
    match &call.body {
        CallBody::Track { .. } | CallBody::Page { .. } => "properties",
        CallBody::Identify { .. } | CallBody::Group { .. } => "traits",
    }
}

/// The JSON text of a call's properties (track, page) or traits (identify, group).
fn data_text(call: &SegmentCall) -> &str {
    match &call.body {
        CallBody::Track { properties, .. } | CallBody::Page { properties, .. } => properties,
        CallBody::Identify { traits } | CallBody::Group { traits, .. } => traits,
    }
}

/// Members of the view whose content can be dropped from and written back to the call.
const DATA_MEMBERS: [&str; 2] = ["properties", "traits"];

impl CallView {
    /// The view of `call` for `rules`; with `parse_data`, the properties (or traits) are parsed
    /// into it (to be edited), else left out (they are checked as text).
    fn of<'r>(
        call: &SegmentCall,
        rules: impl Iterator<Item = &'r PlanRule> + Clone,
        parse_data: bool,
    ) -> Self {
        let wanted = |m: &str| rules.clone().any(|r| r.reads(m));
        let mut root = Map::new();
        let text = |s: &str| Value::String(s.to_string());
        let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, text);
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
        let (kind, data_key, data) = match &call.body {
            CallBody::Track { properties, .. } => ("track", "properties", properties),
            CallBody::Page { properties, .. } => ("page", "properties", properties),
            CallBody::Identify { traits } => ("identify", "traits", traits),
            CallBody::Group { traits, .. } => ("group", "traits", traits),
        };
        if parse_data && wanted(data_key) {
            root.insert(data_key.into(), parse(data));
        }
        let mut put = |k: &str, v: Value| {
            if wanted(k) && !v.is_null() {
                root.insert(k.into(), v);
            }
        };
        put("type", text(kind));
        put("messageId", text(&call.message_id));
        put("timestamp", text(&call.timestamp));
        put("userId", opt(&call.user_id));
        put("anonymousId", opt(&call.anonymous_id));
        match &call.body {
            CallBody::Track { event, .. } => put("event", text(event)),
            CallBody::Page { name, category, .. } => {
                put("name", opt(name));
                put("category", opt(category));
            }
            CallBody::Group { group_id, .. } => put("groupId", text(group_id)),
            CallBody::Identify { .. } => {}
        }
        if wanted("context") {
            root.insert("context".into(), context_json(call));
        }
        Self {
            root: Value::Object(root),
        }
    }

    /// Removes the member at `path` (or, inside an array, the property holding the array) when
    /// it lies in the call's properties, traits or context traits; its dotted path if removed.
    fn remove(&mut self, path: &[PathStep]) -> Option<String> {
        let first = match path.first()? {
            PathStep::Key(k) => k.as_str(),
            PathStep::Index(_) => return None,
        };
        let depth = match first {
            m if DATA_MEMBERS.contains(&m) => 1,
            "context" if matches!(path.get(1), Some(PathStep::Key(k)) if k == "traits") => 2,
            _ => return None,
        };
        // Stop at the first array: the property holding it goes.
        let end = path
            .iter()
            .position(|s| matches!(s, PathStep::Index(_)))
            .unwrap_or(path.len());
        if end <= depth {
            return None;
        }
        let mut node = &mut self.root;
        for step in &path[..end - 1] {
            let PathStep::Key(k) = step else { return None };
            node = node.get_mut(k.as_str())?;
        }
        let PathStep::Key(last) = &path[end - 1] else {
            return None;
        };
        node.as_object_mut()?.remove(last.as_str())?;
        let mut dotted = Vec::with_capacity(end);
        for step in &path[..end] {
            if let PathStep::Key(k) = step {
                dotted.push(k.as_str());
            }
        }
        Some(dotted.join("."))
    }

    /// Writes the (edited) properties, traits and context traits back into the call.
    fn write_back(&self, call: &mut SegmentCall) {
        let json = |v: &Value| serde_json::to_string(v).ok();
        let data_key = match call.body {
            CallBody::Track { .. } | CallBody::Page { .. } => "properties",
            CallBody::Identify { .. } | CallBody::Group { .. } => "traits",
        };
        if let Some(s) = self
            .root
            .get(data_key)
            .filter(|v| v.is_object())
            .and_then(json)
        {
            match &mut call.body {
                CallBody::Track { properties, .. } | CallBody::Page { properties, .. } => {
                    *properties = s
                }
                CallBody::Identify { traits } | CallBody::Group { traits, .. } => *traits = s,
            }
        }
        if let Some(v) = self
            .root
            .get("context")
            .and_then(|c| c.get("traits"))
            .filter(|v| v.is_object())
        {
            call.context.traits = json(v);
        }
    }
}

/// The call's context as Segment receives it (what the pipeline sets).
fn context_json(call: &SegmentCall) -> Value {
    let c = &call.context;
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("groupId", c.group_id.clone().map(Value::String));
    put("userAgent", c.user_agent.clone().map(Value::String));
    put("locale", c.locale.clone().map(Value::String));
    put(
        "traits",
        c.traits
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok()),
    );
    if let Some(p) = &c.page {
        let mut page = Map::new();
        for (k, v) in [
            ("url", &p.url),
            ("path", &p.path),
            ("search", &p.search),
            ("title", &p.title),
            ("referrer", &p.referrer),
        ] {
            if let Some(v) = v {
                page.insert(k.into(), Value::String(v.clone()));
            }
        }
        m.insert("page".into(), Value::Object(page));
    }
    if let Some(Value::Object(extra)) = c
        .extra
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok())
    {
        for (k, v) in extra {
            m.entry(k).or_insert(v);
        }
    }
    Value::Object(m)
}

/// SHA-256 over the plan's canonical JSON (keys sorted, no whitespace) and the policies: equal
/// for equal content however the file is formatted.
fn fingerprint(root: &Value, config: &TrackingPlanConfig) -> String {
    let mut h = Sha256::new();
    h.update(b"pendo-segment/tracking-plan/v1\0");
    let mut canonical = String::new();
    super::canonical_json::write(root, &mut canonical);
    h.update(canonical.as_bytes());
    h.update(b"\0");
    let policies = serde_json::to_value(config).unwrap_or(Value::Null);
    let mut p = String::new();
    // The file's path is where it lives, not what it says.
    if let Value::Object(mut o) = policies {
        o.remove("file");
        super::canonical_json::write(&Value::Object(o), &mut p);
    }
    h.update(p.as_bytes());
    super::canonical_json::hex16(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn track(event: &str, properties: Value) -> SegmentCall {
        SegmentCall::test_track("pendo-1", event, &properties.to_string())
    }

    fn identify(traits: Value) -> SegmentCall {
        let mut c = track("x", json!({}));
        c.body = CallBody::Identify {
            traits: traits.to_string(),
        };
        c
    }

    fn plan_text() -> String {
        json!({"rules": [
            {"type": "TRACK", "key": "Feature Clicked", "version": 1, "jsonSchema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"properties": {
                    "type": "object",
                    "properties": {
                        "feature_id": {"type": "string"},
                        "plan": {"enum": ["free", "pro"]},
                        "url": {"type": "string"}
                    },
                    "required": ["feature_id"],
                    "additionalProperties": false
                }},
                "required": ["properties"]
            }},
            {"type": "IDENTIFY", "key": null, "jsonSchema": {"properties": {"traits": {
                "properties": {"nps_score": {"type": "integer", "minimum": 0, "maximum": 10}}
            }}}}
        ]})
        .to_string()
    }

    fn plan(config: TrackingPlanConfig) -> TrackingPlan {
        TrackingPlan::parse(&plan_text(), "plan.json", &config).unwrap()
    }

    fn rules(c: &PlanCheck) -> Vec<(&'static str, &str)> {
        c.violations
            .iter()
            .map(|v| (v.rule, v.path.as_str()))
            .collect()
    }

    #[test]
    fn a_call_that_follows_its_rule_passes_unchanged() {
        let p = plan(TrackingPlanConfig::default());
        let mut call = track(
            "Feature Clicked",
            json!({"feature_id": "f1", "plan": "pro"}),
        );
        let before = call.clone();
        let check = p.check(&mut call).unwrap();
        assert!(check.violations.is_empty() && !check.dead_letter);
        assert_eq!(call, before);
        assert_eq!(p.rule_count(), 2);
    }

    #[test]
    fn allow_counts_and_sends_as_is() {
        let p = plan(TrackingPlanConfig::default());
        let mut call = track("Feature Clicked", json!({"plan": "gold", "extra": 1}));
        let before = call.clone();
        let check = p.check(&mut call).unwrap();
        let mut got = rules(&check);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("additional_properties", "properties.extra"),
                ("enum", "properties.plan"),
                ("required", "properties.feature_id"),
            ]
        );
        assert!(!check.dead_letter);
        assert_eq!(call, before);
    }

    #[test]
    fn drop_property_removes_offenders_and_keeps_the_rest() {
        let p = plan(TrackingPlanConfig {
            on_violation: ViolationPolicy::DropProperty,
            ..Default::default()
        });
        let mut call = track(
            "Feature Clicked",
            json!({"feature_id": "f1", "plan": "gold", "extra": {"a": 1}, "url": "u"}),
        );
        let check = p.check(&mut call).unwrap();
        assert_eq!(check.violations.len(), 2);
        assert!(!check.dead_letter);
        let mut dropped = check.dropped.clone();
        dropped.sort();
        assert_eq!(dropped, vec!["properties.extra", "properties.plan"]);
        let CallBody::Track { properties, .. } = &call.body else {
            unreachable!()
        };
        let props: Value = serde_json::from_str(properties).unwrap();
        assert_eq!(props, json!({"feature_id": "f1", "url": "u"}));
        // A missing required property cannot be fixed by dropping: counted, sent.
        let mut call = track("Feature Clicked", json!({"url": "u"}));
        let check = p.check(&mut call).unwrap();
        assert_eq!(rules(&check), vec![("required", "properties.feature_id")]);
        assert!(check.dropped.is_empty() && !check.dead_letter);
    }

    #[test]
    fn dlq_per_event_and_unplanned_events() {
        let mut policies = BTreeMap::new();
        policies.insert("identify".to_string(), ViolationPolicy::Dlq);
        let p = plan(TrackingPlanConfig {
            event_policies: policies,
            on_unplanned_event: UnplannedEventPolicy::Dlq,
            ..Default::default()
        });
        let mut call = identify(json!({"nps_score": 11}));
        let check = p.check(&mut call).unwrap();
        assert!(check.dead_letter);
        assert_eq!(rules(&check), vec![("maximum", "traits.nps_score")]);
        assert!(
            check
                .detail(&call)
                .contains("maximum `identify` at traits.nps_score")
        );
        // Track without a rule.
        let mut call = track("Guide Seen", json!({}));
        let check = p.check(&mut call).unwrap();
        assert_eq!(rules(&check), vec![("unplanned_event", "")]);
        assert!(check.dead_letter);
        // Feature Clicked keeps the default `allow`.
        let mut call = track("Feature Clicked", json!({}));
        assert!(!p.check(&mut call).unwrap().dead_letter);
        // Ignored unplanned events are not looked at at all.
        let p = plan(TrackingPlanConfig {
            on_unplanned_event: UnplannedEventPolicy::Ignore,
            ..Default::default()
        });
        assert_eq!(p.check(&mut track("Guide Seen", json!({}))), None);
    }

    #[test]
    fn fingerprint_follows_content_and_policies_not_formatting() {
        let a = plan(TrackingPlanConfig::default());
        let pretty: Value = serde_json::from_str(&plan_text()).unwrap();
        let b = TrackingPlan::parse(
            &serde_json::to_string_pretty(&pretty).unwrap(),
            "other.json",
            &TrackingPlanConfig::default(),
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        let c = plan(TrackingPlanConfig {
            on_violation: ViolationPolicy::Dlq,
            ..Default::default()
        });
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn bad_plans_say_where() {
        let cfg = TrackingPlanConfig::default();
        let e = TrackingPlan::parse("{}", "p.json", &cfg).unwrap_err();
        assert!(e.to_string().contains("`rules` array"), "{e}");
        let e = TrackingPlan::parse(
            &json!({"rules": [{"type": "TRACK", "jsonSchema": {}}]}).to_string(),
            "p.json",
            &cfg,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("rules[0]: a TRACK rule needs"),
            "{e}"
        );
        let e = TrackingPlan::parse(
            &json!({"data": {"rules": [{"type": "TRACK", "key": "A", "jsonSchema": {"oneOf": []}}]}})
                .to_string(),
            "p.json",
            &cfg,
        )
        .unwrap_err();
        assert!(e.to_string().contains("rules[0].jsonSchema.oneOf"), "{e}");
        // Versions: the highest wins, a duplicate version is an error.
        let two = json!({"rules": [
            {"type": "TRACK", "key": "A", "version": 2, "jsonSchema": {"properties": {"properties": {"required": ["x"]}}}},
            {"type": "TRACK", "key": "A", "version": 1, "jsonSchema": {}}
        ]});
        let p = TrackingPlan::parse(&two.to_string(), "p.json", &cfg).unwrap();
        assert_eq!(p.rule_count(), 1);
        assert_eq!(
            p.check(&mut track("A", json!({})))
                .unwrap()
                .violations
                .len(),
            1
        );
    }
}
