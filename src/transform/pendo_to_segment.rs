//! Applies the mapping to one raw Pendo event (a webhook delivery or a polled row) and yields
//! the Segment calls it becomes, or why it becomes none (filtered, dropped, dead-lettered).
//!
//! Pure and synchronous: no Kafka, no clock (the event time comes from the event), so every rule
//! is unit-testable and the golden tests compare exact output.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::catalog::CatalogTable;
use super::json_path::JsonPath;
use super::lazy_json::{Found, LazyNode, LazyObject, LazyParseError, OpenTree};
use super::mapping::{
    CallMapping, CallType, KindMapping, NameRule, PendoMapping, UnknownKindPolicy, ValueExpr,
};
use super::message_id::MessageIdBuilder;
use crate::idmap::UserIdLookup;
use crate::schema::segment_call::{CallBody, CallContext, Origin, PageContext, SegmentCall};

/// Segment's per-event limit is 32 KB; keep a margin for what the sink adds (`sentAt`,
/// `context.library`).
pub const DEFAULT_MAX_CALL_BYTES: usize = 32_000;

/// What to do with a visitor id that has no Segment user id in the id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedVisitorPolicy {
    /// Use the Pendo visitor id as the Segment userId (what Pendo's own integration does).
    VisitorIdAsUserId,
    /// Send the visitor id as anonymousId (counts as an MTU unless later aliased).
    AnonymousId,
    /// Dead-letter the event until a mapping exists (replay it later).
    Dlq,
}

/// Settings of the mapper that are deployment choices rather than mapping rules.
#[derive(Debug, Clone)]
pub struct MapperSettings {
    /// messageId namespace (`<prefix>-<hash>`).
    pub message_id_prefix: String,
    /// Unmapped visitors.
    pub unmapped_visitor: UnmappedVisitorPolicy,
    /// Visitor ids starting with this are Pendo's anonymous visitors: always anonymousId.
    pub anonymous_visitor_prefix: Option<String>,
    /// Events with an account but no visitor are sent with anonymousId `<prefix><accountId>`
    /// (Segment requires userId or anonymousId on every call, group calls included).
    pub account_anonymous_id_prefix: String,
    /// Calls larger than this (as sent to Segment) dead-letter their event.
    pub max_call_bytes: usize,
    /// `origin.source` of produced calls.
    pub source: String,
}

impl Default for MapperSettings {
    fn default() -> Self {
        Self {
            message_id_prefix: "pendo".into(),
            unmapped_visitor: UnmappedVisitorPolicy::VisitorIdAsUserId,
            anonymous_visitor_prefix: Some("_PENDO_T_".into()),
            account_anonymous_id_prefix: "pendo-account:".into(),
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
            source: "pendo.webhook".into(),
        }
    }
}

/// Why an event produced no calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOutcome {
    /// The calls, in emission order.
    Calls(Vec<SegmentCall>),
    /// A filter rule excluded it (the rule's name).
    Filtered(&'static str),
    /// Unknown kind under the `drop` policy.
    Dropped,
    /// Cannot be mapped: goes to the dead-letter topic with this reason.
    DeadLetter {
        /// Short, bounded reason (a metric label and the `dlq-reason` header).
        reason: &'static str,
        /// Human-readable detail for the `dlq-detail` header.
        detail: String,
    },
}

/// What the mapper noticed about an event besides its outcome, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// The event kind as received (empty when it had none).
    pub kind: String,
    /// The kind is not in the mapping.
    pub unknown_kind: bool,
    /// Envelope fields and `properties.<key>` the mapping does not expect.
    pub unknown_fields: Vec<String>,
}

/// The mapping plus deployment settings: turns raw Pendo events into Segment calls.
pub struct PendoToSegment {
    mapping: PendoMapping,
    settings: MapperSettings,
    catalog: Option<CatalogTable>,
    /// The objects of an event the mapping reads from, opened when the event is parsed.
    open: OpenTree,
}

struct EventFacts<'e, 'a> {
    event: &'e LazyObject<'a>,
    kind: &'e str,
    visitor_id: Option<String>,
    account_id: Option<String>,
    time_ms: i64,
    time_iso: String,
}

fn dead(reason: &'static str, detail: impl Into<String>) -> MapOutcome {
    MapOutcome::DeadLetter {
        reason,
        detail: detail.into(),
    }
}

/// A JSON id (string or number) as text; empty strings count as absent. Strings are read as
/// text (no parse), numbers as `serde_json` writes them.
fn id_text(found: Option<Found<'_, '_>>) -> Option<String> {
    let found = found?;
    if let Some(s) = found.as_str() {
        return (!s.is_empty()).then(|| s.into_owned());
    }
    match found.to_value()? {
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Epoch ms from seconds, milliseconds or ISO-8601 text; `None` when absent or absurd.
pub(crate) fn event_time_ms(v: &Value) -> Option<i64> {
    let ms = match v {
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f.abs() < 1e11 { f * 1000.0 } else { f }
        }
        Value::String(s) => {
            if let Ok(f) = s.parse::<f64>() {
                return event_time_ms(&Value::from(f));
            }
            let t = humantime::parse_rfc3339_weak(s).ok()?;
            t.duration_since(UNIX_EPOCH).ok()?.as_millis() as f64
        }
        _ => return None,
    };
    // 1970 < t < 3000: anything else is a unit or data error, not an event time.
    (ms > 0.0 && ms < MAX_PLAUSIBLE_MS as f64).then_some(ms.round() as i64)
}

/// Epoch milliseconds of 3000-01-01: times from input are accepted below it.
const MAX_PLAUSIBLE_MS: i64 = 32_503_680_000_000;

/// Whether epoch milliseconds from input (an event time, a `received-at` header) are a time the
/// pipeline accepts: after 1970 and before 3000, so they always have an ISO-8601 form and leave
/// room for arithmetic. Anything else is a unit or data error.
pub(crate) fn plausible_epoch_ms(ms: i64) -> bool {
    ms > 0 && ms < MAX_PLAUSIBLE_MS
}

/// An upper bound of a call's size as Segment JSON: JSON-text fields are exact, every other
/// string may grow at most 6x when escaped (`\u00XX`), plus the fixed keys and punctuation.
fn size_upper_bound(call: &SegmentCall) -> usize {
    let o = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let c = &call.context;
    let page = c.page.as_ref().map_or(0, |p| {
        o(&p.url) + o(&p.path) + o(&p.search) + o(&p.title) + o(&p.referrer)
    });
    let strings = call.message_id.len()
        + call.timestamp.len()
        + o(&call.user_id)
        + o(&call.anonymous_id)
        + o(&c.group_id)
        + o(&c.user_agent)
        + o(&c.locale)
        + c.library
            .as_ref()
            .map_or(0, |l| l.name.len() + l.version.len())
        + page;
    let (body_strings, body_json) = match &call.body {
        CallBody::Track { event, properties } => (event.len(), properties.len()),
        CallBody::Page {
            name,
            category,
            properties,
        } => (o(name) + o(category), properties.len()),
        CallBody::Identify { traits } => (0, traits.len()),
        CallBody::Group { group_id, traits } => (group_id.len(), traits.len()),
    };
    let json = body_json + o(&c.traits) + o(&c.extra) + o(&call.integrations);
    6 * (strings + body_strings) + json + 512
}

/// Epoch milliseconds of 9999-12-31T23:59:59.999Z, the last instant RFC 3339 (and humantime)
/// can write.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// `ms` (epoch milliseconds) as ISO-8601 UTC with milliseconds, the form canonical records use;
/// `None` outside 1970..=9999, which that form cannot hold (humantime panics there).
pub(crate) fn iso_millis_checked(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms)
        .ok()
        .filter(|&ms| ms <= MAX_RFC3339_MS as u64)?;
    Some(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// `ms` (epoch milliseconds) as ISO-8601 UTC with milliseconds, the form canonical records use.
/// Callers pass plausible times ([`event_time_ms`], checked received-at values); anything else is
/// clamped into 1970..=9999 rather than allowed to panic.
pub(crate) fn iso_millis(ms: i64) -> String {
    iso_millis_checked(ms.clamp(0, MAX_RFC3339_MS)).unwrap_or_default()
}

/// A non-empty string, read as text (no parse).
fn non_empty_str(found: Option<Found<'_, '_>>) -> Option<String> {
    found?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(Cow::into_owned)
}

fn nps_category(v: Option<&Value>) -> Option<Value> {
    let score = v?.as_f64()?;
    let cat = match score {
        s if (0.0..=6.0).contains(&s) => "detractor",
        s if s <= 8.0 => "passive",
        s if s <= 10.0 => "promoter",
        _ => return None,
    };
    Some(Value::String(cat.into()))
}

/// The value at `path` in the event, parsed.
fn value_at(event: &LazyObject<'_>, path: &JsonPath) -> Option<Value> {
    found_at(event, path)?.to_value()
}

/// The value at `path` in the event, unparsed.
fn found_at<'n, 'a>(event: &'n LazyObject<'a>, path: &JsonPath) -> Option<Found<'n, 'a>> {
    event.get(path.segments())
}

/// Every object of the event that `mapping` reads from: opened once at parse time instead of
/// at every read. (Paths relative to a call's object — flatten, rename, drop — are opened on
/// the call's own copy when they are applied.)
fn read_tree(mapping: &PendoMapping) -> OpenTree {
    let mut tree = OpenTree::default();
    let d = &mapping.defaults;
    let mut reads: Vec<&JsonPath> = Vec::new();
    reads.extend(&d.time_from);
    reads.extend(&d.user_agent_from);
    reads.extend(&d.locale_from);
    reads.extend([&d.feature_id_from, &d.guide_id_from, &d.page_id_from]);
    let mut exprs: Vec<&ValueExpr> = d.message_id_fields.iter().collect();
    let mut objects: Vec<&JsonPath> = mapping.unknown_properties_from.iter().collect();
    for km in mapping.kinds() {
        exprs.extend(&km.message_id_fields);
        for cm in &km.calls {
            reads.extend(&cm.name.from);
            reads.extend(
                [&cm.page.url, &cm.page.title, &cm.page.referrer]
                    .into_iter()
                    .flatten(),
            );
            exprs.extend(cm.set.iter().map(|(_, e)| e));
            objects.extend(&cm.from);
        }
    }
    for e in exprs {
        if let ValueExpr::Path(p) | ValueExpr::NpsCategory(p) = e {
            reads.push(p);
        }
    }
    for p in reads {
        tree.add_read(p.segments());
    }
    for p in objects {
        tree.add_object(p.segments());
    }
    // Unknown `properties.<key>` are counted for every event.
    tree.add_object(&["properties".to_string()]);
    tree
}

impl PendoToSegment {
    /// A mapper.
    pub fn new(mapping: PendoMapping, settings: MapperSettings) -> Self {
        let open = read_tree(&mapping);
        Self {
            mapping,
            settings,
            catalog: None,
            open,
        }
    }

    /// Joins names from the Pendo catalogue into track and page calls: `feature_name`,
    /// `guide_name`, `page_name` are added (when the call does not carry them already) for the
    /// ids found at the mapping's `feature_id_from`, `guide_id_from`, `page_id_from`.
    pub fn with_catalog(mut self, catalog: CatalogTable) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// 16 hex digits identifying what this mapper produces: the mapping's content and the
    /// settings that change calls (messageId prefix, identity policies, size limit).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let s = &self.settings;
        let mut h = Sha256::new();
        h.update(b"pendo-segment/mapper/v1\0");
        for part in [
            self.mapping.fingerprint(),
            &s.message_id_prefix,
            &format!("{:?}", s.unmapped_visitor),
            s.anonymous_visitor_prefix.as_deref().unwrap_or("\u{0}none"),
            &s.account_anonymous_id_prefix,
            &s.max_call_bytes.to_string(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        super::canonical_json::hex16(&h.finalize())
    }

    /// The mapping in use.
    pub fn mapping(&self) -> &PendoMapping {
        &self.mapping
    }

    /// Maps one raw event (the bytes of one JSON object). `received_at` (the connector's
    /// receive time, epoch ms) counts as absent unless it is a plausible time.
    pub fn map(
        &self,
        raw: &[u8],
        received_at: Option<i64>,
        ids: &dyn UserIdLookup,
    ) -> (MapOutcome, Observations) {
        let received_at = received_at.filter(|&ms| plausible_epoch_ms(ms));
        let mut obs = Observations::default();
        let event = match LazyObject::parse(raw, &self.open) {
            Ok(v) => v,
            Err(e @ LazyParseError::Invalid(_)) => {
                return (dead("invalid_json", e.to_string()), obs);
            }
            Err(LazyParseError::NotAnObject) => {
                return (dead("not_an_object", "the event is not a JSON object"), obs);
            }
        };
        let outcome = self.map_event(&event, received_at, ids, &mut obs);
        (outcome, obs)
    }

    /// Maps one parsed event.
    fn map_event(
        &self,
        event: &LazyObject<'_>,
        received_at: Option<i64>,
        ids: &dyn UserIdLookup,
        obs: &mut Observations,
    ) -> MapOutcome {
        let kind_text = event
            .member("event")
            .or_else(|| event.member("type"))
            .and_then(Found::as_str);
        let kind: &str = match &kind_text {
            Some(k) if !k.is_empty() => k,
            _ => return dead("no_kind", "the event has no `event` (kind) field"),
        };
        obs.kind = kind.to_string();
        let m = &self.mapping;
        let kind_mapping = m.kind(kind);
        obs.unknown_kind = kind_mapping.is_none();
        self.observe_unknown_fields(event, kind_mapping, obs);

        // Filters on the kind, before any work.
        if m.filters.any
            && let Some(rule) = self.filter_rule(event, kind, kind_mapping)
        {
            return MapOutcome::Filtered(rule);
        }

        let passthrough;
        let km: &KindMapping = match kind_mapping {
            Some(km) => km,
            None => match self.unknown_kind(kind) {
                Ok(km) => {
                    passthrough = km;
                    &passthrough
                }
                Err(outcome) => return outcome,
            },
        };

        let visitor_id = id_text(event.member("visitorId"));
        let account_id = id_text(event.member("accountId"));
        if visitor_id.is_none() && account_id.is_none() {
            return dead(
                "no_identity",
                "the event has neither a visitorId nor an accountId",
            );
        }
        let Some(time_ms) = m
            .defaults
            .time_from
            .iter()
            .find_map(|p| value_at(event, p).as_ref().and_then(event_time_ms))
        else {
            return dead(
                "no_event_time",
                "the event has no usable time (timestamp/browserTime in epoch s or ms, or ISO-8601)",
            );
        };
        let facts = EventFacts {
            event,
            kind,
            visitor_id,
            account_id,
            time_ms,
            time_iso: iso_millis(time_ms),
        };

        let (user_id, anonymous_id) = match self.identity(&facts, ids) {
            Ok(identity) => identity,
            Err(outcome) => return outcome,
        };
        self.make_calls(km, &facts, &user_id, &anonymous_id, received_at)
    }

    /// Records the envelope fields and `properties.<key>` the mapping does not expect: the
    /// schema-drift step of [`Self::map_event`].
    fn observe_unknown_fields(
        &self,
        event: &LazyObject<'_>,
        kind_mapping: Option<&KindMapping>,
        obs: &mut Observations,
    ) {
        for key in event.keys() {
            if !self.mapping.defaults.known_envelope_fields.contains(key) {
                obs.unknown_fields.push(key.to_string());
            }
        }
        if let (Some(km), Some(Found::Node(LazyNode::Object(props)))) =
            (kind_mapping, event.member("properties"))
        {
            for key in props.keys() {
                if !km.known_properties.contains(key) {
                    obs.unknown_fields.push(format!("properties.{key}"));
                }
            }
        }
    }

    /// What the unknown-kind policy makes of a kind the mapping does not list: the mapping of a
    /// passed-through kind, or the outcome that ends the event. A step of [`Self::map_event`].
    fn unknown_kind(&self, kind: &str) -> Result<KindMapping, MapOutcome> {
        let m = &self.mapping;
        match &m.unknown_kinds {
            UnknownKindPolicy::Drop => Err(MapOutcome::Dropped),
            UnknownKindPolicy::DeadLetter => Err(dead(
                "unknown_kind",
                format!("event kind `{kind}` is not in the mapping"),
            )),
            UnknownKindPolicy::PassThrough { event_prefix } => Ok(KindMapping {
                name: kind.to_string(),
                message_id_fields: m.defaults.message_id_fields.clone(),
                known_properties: Default::default(),
                calls: vec![CallMapping {
                    call: CallType::Track,
                    name: NameRule {
                        from: None,
                        fixed: Some(format!("{event_prefix}{kind}")),
                    },
                    category: None,
                    from: m.unknown_properties_from.clone(),
                    flatten: vec![],
                    keep: vec![],
                    rename: vec![],
                    drop: vec![],
                    set: vec![],
                    page: Default::default(),
                }],
            }),
        }
    }

    /// The `(userId, anonymousId)` of the event's calls: the identity step of
    /// [`Self::map_event`] (id mapping, anonymous visitors, the unmapped-visitor policy).
    fn identity(
        &self,
        facts: &EventFacts<'_, '_>,
        ids: &dyn UserIdLookup,
    ) -> Result<(Option<String>, Option<String>), MapOutcome> {
        Ok(match &facts.visitor_id {
            Some(v) => {
                let anonymous = self
                    .settings
                    .anonymous_visitor_prefix
                    .as_deref()
                    .is_some_and(|p| !p.is_empty() && v.starts_with(p));
                if anonymous {
                    (None, Some(v.clone()))
                } else if let Some(u) = ids.user_id(v) {
                    (Some(u), None)
                } else {
                    match self.settings.unmapped_visitor {
                        UnmappedVisitorPolicy::VisitorIdAsUserId => (Some(v.clone()), None),
                        UnmappedVisitorPolicy::AnonymousId => (None, Some(v.clone())),
                        UnmappedVisitorPolicy::Dlq => {
                            return Err(dead(
                                "unmapped_visitor",
                                format!("visitor `{v}` has no Segment user id in the id mapping"),
                            ));
                        }
                    }
                }
            }
            None => (
                None,
                Some(format!(
                    "{}{}",
                    self.settings.account_anonymous_id_prefix,
                    facts.account_id.as_deref().unwrap_or_default()
                )),
            ),
        })
    }

    /// Builds every call of `km` for the event, applying the event filters and the size limit:
    /// the emission step of [`Self::map_event`].
    fn make_calls(
        &self,
        km: &KindMapping,
        facts: &EventFacts<'_, '_>,
        user_id: &Option<String>,
        anonymous_id: &Option<String>,
        received_at: Option<i64>,
    ) -> MapOutcome {
        let f = &self.mapping.filters;
        let mut calls = Vec::with_capacity(km.calls.len());
        let mut denied_events = 0;
        for cm in &km.calls {
            let call = match self.build_call(km, cm, facts, user_id, anonymous_id, received_at) {
                Ok(c) => c,
                Err(outcome) => return outcome,
            };
            if f.any
                && let CallBody::Track { event, .. } = &call.body
                && (f.deny_events.contains(event)
                    || (!f.allow_events.is_empty() && !f.allow_events.contains(event)))
            {
                denied_events += 1;
                continue;
            }
            // Exact size only when a cheap upper bound does not settle it.
            if size_upper_bound(&call) > self.settings.max_call_bytes {
                let mut json = Vec::with_capacity(4096);
                call.write_segment_json(&mut json);
                if json.len() > self.settings.max_call_bytes {
                    return dead(
                        "too_large",
                        format!(
                            "the {} call would be {} bytes, over the {}-byte limit per Segment event",
                            call.body.call_type(),
                            json.len(),
                            self.settings.max_call_bytes
                        ),
                    );
                }
            }
            calls.push(call);
        }
        if calls.is_empty() && denied_events > 0 {
            return MapOutcome::Filtered("events");
        }
        MapOutcome::Calls(calls)
    }

    /// The filter rule that excludes this event, if any (only called when filters are set).
    fn filter_rule(
        &self,
        event: &LazyObject<'_>,
        kind: &str,
        kind_mapping: Option<&KindMapping>,
    ) -> Option<&'static str> {
        let m = &self.mapping;
        let f = &m.filters;
        let kind_lower = kind.to_lowercase();
        let canonical_lower = kind_mapping.map(|k| k.name.to_lowercase());
        let listed = |set: &std::collections::HashSet<String>| {
            set.contains(&kind_lower) || canonical_lower.as_ref().is_some_and(|c| set.contains(c))
        };
        if listed(&f.deny_kinds) {
            return Some("deny_kinds");
        }
        if !f.allow_kinds.is_empty() && !listed(&f.allow_kinds) {
            return Some("allow_kinds");
        }
        let feature = id_text(found_at(event, &m.defaults.feature_id_from));
        let guide = id_text(found_at(event, &m.defaults.guide_id_from));
        if feature
            .as_ref()
            .is_some_and(|id| f.deny_feature_ids.contains(id))
        {
            return Some("deny_feature_ids");
        }
        if !f.allow_feature_ids.is_empty()
            && feature
                .as_ref()
                .is_some_and(|id| !f.allow_feature_ids.contains(id))
        {
            return Some("allow_feature_ids");
        }
        if guide
            .as_ref()
            .is_some_and(|id| f.deny_guide_ids.contains(id))
        {
            return Some("deny_guide_ids");
        }
        if !f.allow_guide_ids.is_empty()
            && guide
                .as_ref()
                .is_some_and(|id| !f.allow_guide_ids.contains(id))
        {
            return Some("allow_guide_ids");
        }
        None
    }

    fn build_call(
        &self,
        km: &KindMapping,
        cm: &CallMapping,
        facts: &EventFacts<'_, '_>,
        user_id: &Option<String>,
        anonymous_id: &Option<String>,
        received_at: Option<i64>,
    ) -> Result<SegmentCall, MapOutcome> {
        let obj = self.call_object(cm, facts);
        let mut context = self.call_context(cm, facts);
        let body = self.call_body(km, cm, facts, obj, &mut context)?;
        Ok(SegmentCall {
            message_id: self.message_id(km, cm, facts),
            timestamp: facts.time_iso.clone(),
            user_id: user_id.clone(),
            anonymous_id: anonymous_id.clone(),
            context,
            integrations: None,
            origin: Origin {
                source: self.settings.source.clone(),
                kind: facts.kind.to_string(),
                visitor_id: facts.visitor_id.clone(),
                account_id: facts.account_id.clone(),
                received_at,
            },
            body,
        })
    }

    /// The object a call's properties or traits are made of (`from`, flatten, keep, rename,
    /// drop, set, catalogue names): the properties step of [`Self::build_call`].
    fn call_object<'a>(&self, cm: &CallMapping, facts: &EventFacts<'_, 'a>) -> LazyObject<'a> {
        let event = facts.event;
        let mut obj: LazyObject<'a> = cm
            .from
            .as_ref()
            .and_then(|p| event.get(p.segments())?.to_object())
            .unwrap_or_default();
        for p in &cm.flatten {
            // A flattened path that is not an object is removed all the same.
            if let Some(inner) = obj.remove(p.segments()).and_then(LazyNode::into_object) {
                obj.merge_absent(inner);
            }
        }
        if !cm.keep.is_empty() {
            obj.retain(|k| cm.keep.iter().any(|p| p.first() == k));
        }
        for (p, target) in &cm.rename {
            if let Some(v) = obj.remove(p.segments()) {
                obj.insert(target.clone(), v);
            }
        }
        for p in &cm.drop {
            obj.remove(p.segments());
        }
        for (key, expr) in &cm.set {
            if let Some(v) = self.eval(expr, facts) {
                obj.insert(key.clone(), LazyNode::Owned(v));
            }
        }
        if let Some(catalog) = &self.catalog
            && matches!(cm.call, CallType::Track | CallType::Page)
        {
            let d = &self.mapping.defaults;
            for (kind, path, property) in [
                ("feature", &d.feature_id_from, "feature_name"),
                ("guide", &d.guide_id_from, "guide_name"),
                ("page", &d.page_id_from, "page_name"),
            ] {
                if obj.contains_key(property) {
                    continue;
                }
                if let Some(name) =
                    id_text(found_at(event, path)).and_then(|id| catalog.name(kind, &id))
                {
                    obj.insert(property, LazyNode::Owned(Value::String(name.to_string())));
                }
            }
        }
        obj
    }

    /// A call's context before its body is known (page calls add `page`): the context step of
    /// [`Self::build_call`].
    fn call_context(&self, cm: &CallMapping, facts: &EventFacts<'_, '_>) -> CallContext {
        let event = facts.event;
        let mut context = CallContext {
            group_id: None,
            page: None,
            traits: None,
            user_agent: self
                .mapping
                .defaults
                .user_agent_from
                .as_ref()
                .and_then(|p| non_empty_str(found_at(event, p))),
            locale: self
                .mapping
                .defaults
                .locale_from
                .as_ref()
                .and_then(|p| non_empty_str(found_at(event, p))),
            // The sink sets `context.library` when it sends (the version that delivered it).
            library: None,
            extra: None,
        };
        if cm.call != CallType::Group {
            context.group_id = facts.account_id.clone();
        }
        context
    }

    /// The call's body, per call type, from its object (a page call also sets `context.page`):
    /// the body step of [`Self::build_call`].
    fn call_body(
        &self,
        km: &KindMapping,
        cm: &CallMapping,
        facts: &EventFacts<'_, '_>,
        mut obj: LazyObject<'_>,
        context: &mut CallContext,
    ) -> Result<CallBody, MapOutcome> {
        let event = facts.event;
        let name = cm
            .name
            .from
            .as_ref()
            .and_then(|p| non_empty_str(found_at(event, p)))
            .or_else(|| cm.name.fixed.clone());
        let json = |m: LazyObject<'_>| m.to_json_string();
        Ok(match cm.call {
            CallType::Track => CallBody::Track {
                event: name.ok_or_else(|| {
                    dead(
                        "mapping_error",
                        format!("kind `{}`: the track call has no event name", km.name),
                    )
                })?,
                properties: json(obj),
            },
            CallType::Page => {
                let page = self.page_context(cm, event);
                for (k, v) in [
                    ("url", &page.url),
                    ("path", &page.path),
                    ("search", &page.search),
                    ("title", &page.title),
                    ("referrer", &page.referrer),
                ] {
                    if let Some(v) = v {
                        obj.insert(k, LazyNode::Owned(Value::String(v.clone())));
                    }
                }
                if let Some(n) = &name {
                    obj.insert("name", LazyNode::Owned(Value::String(n.clone())));
                }
                context.page = Some(page);
                CallBody::Page {
                    name,
                    category: cm.category.clone(),
                    properties: json(obj),
                }
            }
            CallType::Identify => CallBody::Identify { traits: json(obj) },
            CallType::Group => CallBody::Group {
                group_id: facts.account_id.clone().ok_or_else(|| {
                    dead(
                        "no_account",
                        format!(
                            "kind `{}` makes a group call but the event has no accountId",
                            km.name
                        ),
                    )
                })?,
                traits: json(obj),
            },
        })
    }

    /// The call's messageId from the kind's identity fields: the id step of
    /// [`Self::build_call`].
    fn message_id(&self, km: &KindMapping, cm: &CallMapping, facts: &EventFacts<'_, '_>) -> String {
        let mut id = MessageIdBuilder::new(&km.name, cm.call.name());
        for field in &km.message_id_fields {
            // A string read as text, without building a value (ids are mostly strings).
            if let ValueExpr::Path(p) = field
                && let Some(s) = found_at(facts.event, p).and_then(Found::as_str)
            {
                id.part(s.as_bytes());
                continue;
            }
            match self.eval(field, facts) {
                Some(Value::String(s)) => id.part(s.as_bytes()),
                Some(v) => id.part(v.to_string().as_bytes()),
                None => id.absent(),
            };
        }
        id.finish(&self.settings.message_id_prefix)
    }

    fn page_context(&self, cm: &CallMapping, event: &LazyObject<'_>) -> PageContext {
        let get = |p: &Option<JsonPath>| p.as_ref().and_then(|p| non_empty_str(found_at(event, p)));
        let url = get(&cm.page.url);
        let (path, search) = match url.as_deref().map(url::Url::parse) {
            Some(Ok(u)) => (
                Some(u.path().to_string()),
                u.query().map(|q| format!("?{q}")),
            ),
            _ => (None, None),
        };
        PageContext {
            url,
            path,
            search,
            title: get(&cm.page.title),
            referrer: get(&cm.page.referrer),
        }
    }

    fn eval(&self, expr: &ValueExpr, facts: &EventFacts<'_, '_>) -> Option<Value> {
        match expr {
            ValueExpr::Path(p) => value_at(facts.event, p),
            ValueExpr::EventTime => Some(Value::String(facts.time_iso.clone())),
            ValueExpr::EventTimeMs => Some(Value::from(facts.time_ms)),
            ValueExpr::EventTimeS => Some(Value::from(facts.time_ms.div_euclid(1000))),
            ValueExpr::Kind => Some(Value::String(facts.kind.to_string())),
            ValueExpr::NpsCategory(p) => nps_category(value_at(facts.event, p).as_ref()),
            ValueExpr::Literal(v) => Some(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn mapper() -> PendoToSegment {
        PendoToSegment::new(PendoMapping::default_mapping(), MapperSettings::default())
    }

    fn calls(outcome: MapOutcome) -> Vec<SegmentCall> {
        match outcome {
            MapOutcome::Calls(c) => c,
            other => panic!("expected calls, got {other:?}"),
        }
    }

    fn ev(extra: Value) -> Value {
        let mut base = json!({
            "event": "featureClicked", "visitorId": "vis-1", "accountId": "acct-1",
            "timestamp": 1764330099, "uniqueId": "u-1",
            "properties": {"featureId": "ft_1", "featureName": "Export", "language": "de-DE"}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn run(m: &PendoToSegment, v: &Value) -> (MapOutcome, Observations) {
        m.map(v.to_string().as_bytes(), Some(1), &HashMap::new())
    }

    #[test]
    fn catalogue_names_join_into_track_and_page_calls_without_changing_ids() {
        let catalog = CatalogTable::default();
        catalog.insert("feature", "ft_1", "Export CSV (catalogue)");
        catalog.insert("page", "pg_1", "Reports");
        catalog.insert("guide", "g_1", "Welcome tour");
        let plain = mapper();
        let joined = mapper().with_catalog(catalog);
        let event = ev(json!({"properties": {"featureId": "ft_1", "pageId": "pg_1"}}));
        let a = calls(run(&plain, &event).0);
        let b = calls(run(&joined, &event).0);
        assert_eq!(
            a[0].message_id, b[0].message_id,
            "names never change the id"
        );
        let CallBody::Track { properties, .. } = &b[0].body else {
            panic!("track expected")
        };
        let p: Value = serde_json::from_str(properties).unwrap();
        assert_eq!(p["feature_name"], "Export CSV (catalogue)");
        assert_eq!(p["page_name"], "Reports");
        assert!(p.get("guide_name").is_none(), "no guide id, no guide name");
        // Ids the catalogue does not know add nothing.
        let unknown = ev(json!({"properties": {"featureId": "ft_9"}}));
        let c = calls(run(&joined, &unknown).0);
        let CallBody::Track { properties, .. } = &c[0].body else {
            panic!("track expected")
        };
        assert!(!properties.contains("feature_name"));
        // Identify/group calls are left alone.
        let visitor = json!({"event": "visitorCreated", "visitorId": "v", "timestamp": 1,
            "properties": {"featureId": "ft_1", "metadata": {}}});
        let d = calls(run(&joined, &visitor).0);
        let CallBody::Identify { traits } = &d[0].body else {
            panic!("identify expected")
        };
        assert!(!traits.contains("feature_name"));
    }

    /// Every bundled fixture's events, as JSON values.
    fn fixture_events() -> Vec<Value> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pendo");
        let mut events = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") || path.ends_with("index.json") {
                continue;
            }
            match serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() {
                Value::Array(a) => events.extend(a),
                v => events.push(v),
            }
        }
        assert!(events.len() >= 15, "{} fixture events", events.len());
        events
    }

    #[test]
    fn how_an_event_is_spelled_does_not_change_its_calls() {
        // The event is read lazily and copied through as text. Pretty-printed, it must give
        // exactly the calls of its compact form; with `\/` escapes, calls whose JSON fields
        // are the same JSON (a copied string keeps its escapes).
        let m = mapper();
        let ids = HashMap::new();
        let json_of = |calls: &[SegmentCall]| -> Vec<Value> {
            calls
                .iter()
                .map(|c| {
                    let mut out = Vec::new();
                    c.write_segment_json(&mut out);
                    serde_json::from_slice(&out).unwrap()
                })
                .collect()
        };
        let mut compared = 0;
        for event in fixture_events() {
            let compact = m.map(event.to_string().as_bytes(), Some(1), &ids);
            let pretty = serde_json::to_string_pretty(&event).unwrap();
            assert_eq!(compact, m.map(pretty.as_bytes(), Some(1), &ids), "{event}");
            let escaped = m.map(pretty.replace('/', "\\/").as_bytes(), Some(1), &ids);
            match (&compact.0, &escaped.0) {
                (MapOutcome::Calls(a), MapOutcome::Calls(b)) => {
                    assert_eq!(json_of(a), json_of(b), "{event}");
                    compared += 1;
                }
                (a, b) => assert_eq!(a, b, "{event}"),
            }
        }
        assert!(compared >= 12, "only {compared} fixtures made calls");
    }

    #[test]
    fn properties_keep_nested_json_exactly_and_duplicates_resolve_last_wins() {
        let m = mapper();
        let raw = br#"{"event":"trackEventReceived","visitorId":"v","timestamp":1764330099,
            "properties":{"trackTypeName":"Exported","language":"x","language":"de-DE",
              "eventProperties":{"rows":12345678901234567890123,"ratio":1.50,"k\u00e9y":"\u00e9",
                "nested":{"a":[1,{"b":null}],"a":"second"}}}}"#;
        let c = calls(m.map(raw, Some(1), &HashMap::new()).0);
        let CallBody::Track { event, properties } = &c[0].body else {
            panic!("track expected")
        };
        assert_eq!(event, "Exported");
        // Flattened members are copied as they were spelled: no rounding of big numbers.
        assert_eq!(
            properties,
            r#"{"kéy":"\u00e9","nested":{"a":[1,{"b":null}],"a":"second"},"ratio":1.50,"rows":12345678901234567890123}"#
        );
        let v: Value = serde_json::from_str(properties).unwrap();
        assert_eq!(v["nested"], json!({"a": "second"}));
        assert!(v.get("language").is_none(), "dropped, duplicates included");
    }

    #[test]
    fn seconds_and_milliseconds_give_the_same_time_and_id() {
        let m = mapper();
        let a = calls(run(&m, &ev(json!({}))).0);
        let b = calls(run(&m, &ev(json!({"timestamp": 1764330099000_i64}))).0);
        assert_eq!(a[0].timestamp, "2025-11-28T11:41:39.000Z");
        assert_eq!(a[0].timestamp, b[0].timestamp);
        assert_eq!(a[0].message_id, b[0].message_id);
        let c = calls(run(&m, &ev(json!({"timestamp": "2025-11-28T11:41:39Z"}))).0);
        assert_eq!(c[0].timestamp, a[0].timestamp);
    }

    #[test]
    fn identity_rules() {
        let m = mapper();
        let mut ids = HashMap::new();
        ids.insert("vis-1".to_string(), "user-1".to_string());
        let c = calls(m.map(ev(json!({})).to_string().as_bytes(), None, &ids).0);
        assert_eq!(c[0].user_id.as_deref(), Some("user-1"));
        assert_eq!(c[0].kafka_key(), Some("user-1"));
        let c = calls(run(&m, &ev(json!({}))).0);
        assert_eq!(
            c[0].user_id.as_deref(),
            Some("vis-1"),
            "visitor_id_as_user_id"
        );
        let c = calls(run(&m, &ev(json!({"visitorId": "_PENDO_T_abc"}))).0);
        assert_eq!(c[0].anonymous_id.as_deref(), Some("_PENDO_T_abc"));
        assert_eq!(c[0].user_id, None);
        let c = calls(run(&m, &ev(json!({"visitorId": null}))).0);
        assert_eq!(c[0].anonymous_id.as_deref(), Some("pendo-account:acct-1"));
        let (o, _) = run(&m, &ev(json!({"visitorId": "", "accountId": null})));
        assert!(
            matches!(
                o,
                MapOutcome::DeadLetter {
                    reason: "no_identity",
                    ..
                }
            ),
            "{o:?}"
        );

        let mut settings = MapperSettings {
            unmapped_visitor: UnmappedVisitorPolicy::Dlq,
            ..Default::default()
        };
        let strict = PendoToSegment::new(PendoMapping::default_mapping(), settings.clone());
        let (o, _) = run(&strict, &ev(json!({})));
        assert!(matches!(
            o,
            MapOutcome::DeadLetter {
                reason: "unmapped_visitor",
                ..
            }
        ));
        settings.unmapped_visitor = UnmappedVisitorPolicy::AnonymousId;
        let anon = PendoToSegment::new(PendoMapping::default_mapping(), settings);
        let c = calls(run(&anon, &ev(json!({}))).0);
        assert_eq!(c[0].anonymous_id.as_deref(), Some("vis-1"));
    }

    #[test]
    fn bad_events_are_dead_lettered_with_reasons() {
        let m = mapper();
        let cases = [
            (&b"{not json"[..], "invalid_json"),
            (&b"[1,2]"[..], "not_an_object"),
            (&br#"{"visitorId":"v","timestamp":1}"#[..], "no_kind"),
            (
                &br#"{"event":"featureClicked","visitorId":"v"}"#[..],
                "no_event_time",
            ),
            (
                &br#"{"event":"featureClicked","visitorId":"v","timestamp":-5}"#[..],
                "no_event_time",
            ),
        ];
        for (raw, want) in cases {
            match m.map(raw, None, &HashMap::new()).0 {
                MapOutcome::DeadLetter { reason, .. } => assert_eq!(reason, want),
                other => panic!("{want}: got {other:?}"),
            }
        }
        let big = "x".repeat(40_000);
        let (o, _) = run(
            &m,
            &ev(json!({"properties": {"featureId": "f", "blob": big}})),
        );
        assert!(
            matches!(
                o,
                MapOutcome::DeadLetter {
                    reason: "too_large",
                    ..
                }
            ),
            "{o:?}"
        );
    }

    #[test]
    fn unknown_kinds_follow_the_policy_and_are_observed() {
        let m = mapper();
        let (o, obs) = run(
            &m,
            &ev(json!({"event": "frustrationSignal", "newTopLevel": 1})),
        );
        let c = calls(o);
        assert!(
            matches!(&c[0].body, CallBody::Track { event, .. } if event == "Pendo frustrationSignal")
        );
        assert!(obs.unknown_kind);
        assert_eq!(obs.kind, "frustrationSignal");
        assert_eq!(obs.unknown_fields, vec!["newTopLevel".to_string()]);
        for (policy, check) in [("drop", 0), ("dlq", 1)] {
            let text = crate::transform::mapping::DEFAULT_PENDO_MAPPING.replace(
                "policy = \"pass_through\"",
                &format!("policy = \"{policy}\""),
            );
            let m = PendoToSegment::new(
                PendoMapping::parse(&text, "t").unwrap(),
                MapperSettings::default(),
            );
            let (o, _) = run(&m, &ev(json!({"event": "frustrationSignal"})));
            match check {
                0 => assert_eq!(o, MapOutcome::Dropped),
                _ => assert!(matches!(
                    o,
                    MapOutcome::DeadLetter {
                        reason: "unknown_kind",
                        ..
                    }
                )),
            }
        }
        let (_, obs) = run(
            &m,
            &ev(json!({"properties": {"featureId": "f", "surprise": true}})),
        );
        assert_eq!(obs.unknown_fields, vec!["properties.surprise".to_string()]);
        assert!(!obs.unknown_kind);
    }

    #[test]
    fn filters_apply() {
        let text = crate::transform::mapping::DEFAULT_PENDO_MAPPING
            .replace(
                "deny_feature_ids = []",
                "deny_feature_ids = [\"ft_secret\"]",
            )
            .replace("deny_events = []", "deny_events = [\"Guide Seen\"]")
            .replace("deny_kinds = []", "deny_kinds = [\"pollseen\"]");
        let m = PendoToSegment::new(
            PendoMapping::parse(&text, "t").unwrap(),
            MapperSettings::default(),
        );
        let (o, _) = run(&m, &ev(json!({"properties": {"featureId": "ft_secret"}})));
        assert_eq!(o, MapOutcome::Filtered("deny_feature_ids"));
        let (o, _) = run(&m, &ev(json!({"event": "guideDisplayed"})));
        assert_eq!(o, MapOutcome::Filtered("events"));
        let (o, _) = run(&m, &ev(json!({"event": "pollDisplayed"})));
        assert_eq!(
            o,
            MapOutcome::Filtered("deny_kinds"),
            "denied by alias, matched through the canonical name"
        );
        assert!(matches!(run(&m, &ev(json!({}))).0, MapOutcome::Calls(_)));
    }

    #[test]
    fn nps_makes_identify_then_track_with_distinct_ids() {
        let m = mapper();
        let v = ev(
            json!({"event": "npsSubmitted", "properties": {"guideId": "g", "nps": {"rating": 8, "reason": "", "source": "web"}}}),
        );
        let c = calls(run(&m, &v).0);
        assert_eq!(c.len(), 2);
        assert_ne!(c[0].message_id, c[1].message_id);
        let CallBody::Identify { traits } = &c[0].body else {
            panic!()
        };
        let t: Value = serde_json::from_str(traits).unwrap();
        assert_eq!(
            t,
            json!({"nps_score": 8, "nps_category": "passive", "nps_last_responded_at": "2025-11-28T11:41:39.000Z"})
        );
        let CallBody::Track { properties, .. } = &c[1].body else {
            panic!()
        };
        let p: Value = serde_json::from_str(properties).unwrap();
        assert_eq!(p["score"], 8);
        assert_eq!(p["comment"], "");
        assert!(p.get("nps").is_none());
        for (score, cat) in [
            (0, "detractor"),
            (6, "detractor"),
            (7, "passive"),
            (9, "promoter"),
            (10, "promoter"),
        ] {
            assert_eq!(nps_category(Some(&json!(score))), Some(json!(cat)));
        }
        assert_eq!(nps_category(Some(&json!(11))), None);
    }

    #[test]
    fn iso_millis_of_any_i64_is_text_never_a_panic() {
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(1_764_340_000_000), "2025-11-28T14:26:40.000Z");
        assert_eq!(iso_millis(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        for ms in [i64::MIN, -1, 253_402_300_800_000, i64::MAX] {
            assert_eq!(iso_millis_checked(ms), None, "{ms}");
            let _ = iso_millis(ms);
        }
        assert_eq!(iso_millis(-1), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
