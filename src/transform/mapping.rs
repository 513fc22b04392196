//! The Pendo -> Segment mapping file: which Segment calls each Pendo event kind becomes, with
//! which names, properties and traits. Mappings are data: adding or renaming one is an edit of
//! this file (shipped default: `deploy/mappings/pendo-to-segment.toml`) plus a fixture.
//!
//! The file is validated completely at start; every error names its line.
//!
//! Paths: `from`, `event_from`, `name_from`, `page.*` and `set` expressions are dotted paths from
//! the root of the Pendo event (`properties.nps.rating`, `visitorId`); `flatten`, `keep`,
//! `rename` and `drop` are relative to the `from` object of their call.

use std::collections::{BTreeMap, HashSet};

/// Sets and maps looked up per event with keys from the mapping file (not from events), so a
/// fast non-randomised hash is safe and saves most of the lookup time.
use rustc_hash::{FxHashMap, FxHashSet};

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::json_path::JsonPath;

/// The mapping shipped with the binary.
pub const DEFAULT_PENDO_MAPPING: &str = include_str!("../../deploy/mappings/pendo-to-segment.toml");

/// A mapping file that cannot be used; the message names the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}: {message}")]
pub struct MappingError {
    /// File name (or `<default>`).
    pub origin: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// What to do with an event kind the mapping does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownKindPolicy {
    /// Send it as a track named `<event_prefix><kind>` with its properties.
    PassThrough {
        /// Prefix of the event name.
        event_prefix: String,
    },
    /// Skip it (counted).
    Drop,
    /// Dead-letter it (counted).
    DeadLetter,
}

/// Segment call types a mapping can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallType {
    /// `identify`
    Identify,
    /// `group`
    Group,
    /// `page`
    Page,
    /// `track`
    Track,
}

impl CallType {
    /// The call's name in Segment and in the mapping file.
    pub fn name(self) -> &'static str {
        match self {
            CallType::Identify => "identify",
            CallType::Group => "group",
            CallType::Page => "page",
            CallType::Track => "track",
        }
    }
}

/// A computed value (`set` entries).
#[derive(Debug, Clone, PartialEq)]
pub enum ValueExpr {
    /// The value at a path of the event.
    Path(JsonPath),
    /// The event time, ISO-8601 UTC.
    EventTime,
    /// The event time, epoch milliseconds.
    EventTimeMs,
    /// `$event_time_s`: the event time in whole epoch seconds (identity of events that arrive
    /// with second precision from one source and millisecond precision from another).
    EventTimeS,
    /// The Pendo event kind as received.
    Kind,
    /// `detractor` (0-6), `passive` (7-8) or `promoter` (9-10) from a 0-10 score at a path.
    NpsCategory(JsonPath),
    /// A constant.
    Literal(Value),
}

/// Where the page fields of a page call come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageFields {
    /// Full URL (path and search are derived from it).
    pub url: Option<JsonPath>,
    /// Title.
    pub title: Option<JsonPath>,
    /// Referrer.
    pub referrer: Option<JsonPath>,
}

/// How the event name (track) or page name (page) is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct NameRule {
    /// Path of the name in the event, tried first.
    pub from: Option<JsonPath>,
    /// Fixed name, or the fallback when `from` is missing.
    pub fixed: Option<String>,
}

/// One Segment call made from a Pendo event.
#[derive(Debug, Clone, PartialEq)]
pub struct CallMapping {
    /// Call type.
    pub call: CallType,
    /// Track event name / page name.
    pub name: NameRule,
    /// Page category.
    pub category: Option<String>,
    /// The object properties (track/page) or traits (identify/group) start from; `None` = empty.
    pub from: Option<JsonPath>,
    /// Nested objects whose members are lifted to the top level.
    pub flatten: Vec<JsonPath>,
    /// When not empty, only these keys (after flatten) are kept.
    pub keep: Vec<JsonPath>,
    /// Source path -> new top-level key.
    pub rename: Vec<(JsonPath, String)>,
    /// Paths removed.
    pub drop: Vec<JsonPath>,
    /// Computed entries, added last.
    pub set: Vec<(String, ValueExpr)>,
    /// Page fields (page calls).
    pub page: PageFields,
}

/// Everything the mapping says about one Pendo event kind.
#[derive(Debug, Clone, PartialEq)]
pub struct KindMapping {
    /// The kind's name as written in the mapping (also the messageId namespace).
    pub name: String,
    /// Fields of the event that identify it (messageId input).
    pub message_id_fields: Vec<ValueExpr>,
    /// Property keys the mapping expects; others are counted as unknown fields.
    pub known_properties: FxHashSet<String>,
    /// Calls in emission order: identify, group, page, track.
    pub calls: Vec<CallMapping>,
}

/// Allow/deny filters. An empty allow list allows everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Whether any list is set (skips all filter work when not).
    pub any: bool,
    /// Kinds (lower case) allowed.
    pub allow_kinds: HashSet<String>,
    /// Kinds (lower case) denied.
    pub deny_kinds: HashSet<String>,
    /// Segment event names allowed (track).
    pub allow_events: HashSet<String>,
    /// Segment event names denied (track).
    pub deny_events: HashSet<String>,
    /// Pendo feature ids allowed.
    pub allow_feature_ids: HashSet<String>,
    /// Pendo feature ids denied.
    pub deny_feature_ids: HashSet<String>,
    /// Pendo guide ids allowed.
    pub allow_guide_ids: HashSet<String>,
    /// Pendo guide ids denied.
    pub deny_guide_ids: HashSet<String>,
}

/// Envelope-level settings shared by every kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Where the event time is, first present wins (seconds or milliseconds accepted).
    pub time_from: Vec<JsonPath>,
    /// Default messageId identity fields.
    pub message_id_fields: Vec<ValueExpr>,
    /// `context.userAgent` source.
    pub user_agent_from: Option<JsonPath>,
    /// `context.locale` source.
    pub locale_from: Option<JsonPath>,
    /// Where filters find the feature id.
    pub feature_id_from: JsonPath,
    /// Where filters find the guide id.
    pub guide_id_from: JsonPath,
    /// Where the catalogue join finds the page id.
    pub page_id_from: JsonPath,
    /// Top-level envelope fields that are expected; others are counted as unknown fields.
    pub known_envelope_fields: FxHashSet<String>,
}

/// A validated mapping, ready to apply.
#[derive(Debug, Clone)]
pub struct PendoMapping {
    /// Envelope defaults.
    pub defaults: Defaults,
    /// Unknown-kind policy.
    pub unknown_kinds: UnknownKindPolicy,
    /// Properties of a passed-through unknown kind start from here.
    pub unknown_properties_from: Option<JsonPath>,
    /// Filters.
    pub filters: Filters,
    kinds: FxHashMap<String, usize>,
    mappings: Vec<KindMapping>,
    fingerprint: String,
}

impl PendoMapping {
    /// The shipped default mapping.
    pub fn default_mapping() -> Self {
        Self::parse(DEFAULT_PENDO_MAPPING, "<default mapping>")
            .expect("the default mapping is valid")
    }

    /// Loads a mapping file.
    pub fn load(path: &std::path::Path) -> Result<Self, MappingError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| MappingError {
            origin: origin.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and validates mapping text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, MappingError> {
        let p = MappingParser { text, origin };
        let raw: RawMappingFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            MappingError {
                origin: origin.to_string(),
                line,
                message: e.message().to_string(),
            }
        })?;
        if *raw.version.get_ref() != 1 {
            return Err(p.at(
                raw.version.span(),
                format!(
                    "unsupported mapping version {} (this build reads 1)",
                    raw.version.get_ref()
                ),
            ));
        }
        let defaults = p.defaults(&raw.defaults)?;
        let (unknown_kinds, unknown_properties_from) = p.unknown_kinds(&raw.unknown_kinds)?;
        let mut kinds = FxHashMap::default();
        let mut mappings = Vec::new();
        for (name, kind) in &raw.kinds {
            let mapping = p.kind(name, kind, &defaults, mappings.len(), &mut kinds)?;
            mappings.push(mapping);
        }
        let filters = parse_filters(&raw.filters, &kinds, &mappings);
        Ok(Self {
            defaults,
            unknown_kinds,
            unknown_properties_from,
            filters,
            kinds,
            mappings,
            fingerprint: content_fingerprint(text),
        })
    }

    /// 16 hex digits identifying what the mapping says (its parsed content: comments,
    /// formatting and the order of tables do not change it), stamped on every call it makes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The mapping of a kind (case-insensitive, aliases included).
    pub fn kind(&self, kind: &str) -> Option<&KindMapping> {
        let i = match self.kinds.get(kind) {
            Some(i) => *i,
            None => *self.kinds.get(&kind.to_lowercase())?,
        };
        Some(&self.mappings[i])
    }

    /// All kind mappings.
    pub fn kinds(&self) -> &[KindMapping] {
        &self.mappings
    }
}

/// The mapping text being parsed: turns spans into errors that name their line, for the
/// per-section steps of [`PendoMapping::parse`].
struct MappingParser<'t> {
    text: &'t str,
    origin: &'t str,
}

impl MappingParser<'_> {
    /// An error at `span`, named by its line.
    fn at(&self, span: std::ops::Range<usize>, message: String) -> MappingError {
        MappingError {
            origin: self.origin.to_string(),
            line: line_of(self.text, span.start),
            message,
        }
    }

    /// A dotted path, or an error at its span.
    fn path(&self, s: &Spanned<String>) -> Result<JsonPath, MappingError> {
        JsonPath::parse(s.get_ref())
            .ok_or_else(|| self.at(s.span(), format!("`{}` is not a dotted path", s.get_ref())))
    }

    /// An optional dotted path, or an error at its span.
    fn opt_path(&self, s: &Option<Spanned<String>>) -> Result<Option<JsonPath>, MappingError> {
        s.as_ref().map(|s| self.path(s)).transpose()
    }

    /// A value expression, or an error at its span.
    fn expr(&self, v: &Spanned<toml::Value>) -> Result<ValueExpr, MappingError> {
        parse_expr(v).map_err(|m| self.at(v.span(), m))
    }

    /// Every entry of `paths` as a dotted path (the first invalid one is the error).
    fn paths(&self, paths: &[Spanned<String>]) -> Result<Vec<JsonPath>, MappingError> {
        paths.iter().map(|s| self.path(s)).collect()
    }

    /// The `[defaults]` section.
    fn defaults(&self, d: &RawDefaults) -> Result<Defaults, MappingError> {
        let defaults = Defaults {
            time_from: match &d.time_from {
                Some(v) => self.paths(v)?,
                None => vec![
                    JsonPath::parse("timestamp").expect("path"),
                    JsonPath::parse("browserTime").expect("path"),
                ],
            },
            message_id_fields: match &d.message_id_fields {
                Some(v) => v.iter().map(|e| self.expr(e)).collect::<Result<_, _>>()?,
                None => vec![ValueExpr::Path(JsonPath::parse("uniqueId").expect("path"))],
            },
            user_agent_from: self.opt_path(&d.user_agent_from)?,
            locale_from: self.opt_path(&d.locale_from)?,
            feature_id_from: self
                .opt_path(&d.feature_id_from)?
                .unwrap_or_else(|| JsonPath::parse("properties.featureId").expect("path")),
            guide_id_from: self
                .opt_path(&d.guide_id_from)?
                .unwrap_or_else(|| JsonPath::parse("properties.guideId").expect("path")),
            page_id_from: self
                .opt_path(&d.page_id_from)?
                .unwrap_or_else(|| JsonPath::parse("properties.pageId").expect("path")),
            known_envelope_fields: d.known_envelope_fields.iter().cloned().collect(),
        };
        if defaults.message_id_fields.is_empty() {
            return Err(self.at(0..0, "defaults.message_id_fields must not be empty".into()));
        }
        Ok(defaults)
    }

    /// The `[unknown_kinds]` section: the policy and where passed-through properties start.
    fn unknown_kinds(
        &self,
        u: &RawUnknownKinds,
    ) -> Result<(UnknownKindPolicy, Option<JsonPath>), MappingError> {
        let policy = match u.policy.get_ref().as_str() {
            "pass_through" => UnknownKindPolicy::PassThrough {
                event_prefix: u.event_prefix.clone(),
            },
            "drop" => UnknownKindPolicy::Drop,
            "dlq" => UnknownKindPolicy::DeadLetter,
            other => {
                return Err(self.at(
                    u.policy.span(),
                    format!("unknown_kinds.policy `{other}`: expected pass_through, drop or dlq"),
                ));
            }
        };
        Ok((policy, self.opt_path(&u.properties_from)?))
    }

    /// One `[kinds.<name>]` table: its calls, its names and aliases (registered in `kinds` at
    /// `index`) and the properties it expects.
    fn kind(
        &self,
        name: &str,
        kind: &RawKind,
        defaults: &Defaults,
        index: usize,
        kinds: &mut FxHashMap<String, usize>,
    ) -> Result<KindMapping, MappingError> {
        let span = table_span(self.text, &format!("kinds.{name}"));
        let mut calls = Vec::new();
        for (call_type, call) in [
            (CallType::Identify, &kind.identify),
            (CallType::Group, &kind.group),
            (CallType::Page, &kind.page),
            (CallType::Track, &kind.track),
        ] {
            if let Some(c) = call {
                calls.push(self.call(name, call_type, c)?);
            }
        }
        if calls.is_empty() {
            return Err(self.at(
                span,
                format!("kinds.{name} makes no call: add a track, page, identify or group table"),
            ));
        }
        for alias in std::iter::once(name).chain(kind.aliases.iter().map(String::as_str)) {
            // The spelling as written too, so the common case needs no lowercasing.
            kinds.entry(alias.to_string()).or_insert(index);
            if kinds
                .insert(alias.to_lowercase(), index)
                .is_some_and(|other| other != index)
            {
                return Err(self.at(
                    span.clone(),
                    format!(
                        "kind name or alias `{alias}` is used twice (names are case-insensitive)"
                    ),
                ));
            }
        }
        let mut known: FxHashSet<String> = kind.known.iter().cloned().collect();
        for c in &calls {
            for p in c
                .rename
                .iter()
                .map(|(p, _)| p)
                .chain(&c.keep)
                .chain(&c.drop)
                .chain(&c.flatten)
            {
                known.insert(p.first().to_string());
            }
        }
        Ok(KindMapping {
            name: name.to_string(),
            message_id_fields: match &kind.message_id_fields {
                Some(v) => v.iter().map(|e| self.expr(e)).collect::<Result<_, _>>()?,
                None => defaults.message_id_fields.clone(),
            },
            known_properties: known,
            calls,
        })
    }

    /// One `[kinds.<name>.<call type>]` table.
    fn call(
        &self,
        name: &str,
        call_type: CallType,
        c: &RawCall,
    ) -> Result<CallMapping, MappingError> {
        let cspan = table_span(self.text, &format!("kinds.{name}.{}", call_type.name()));
        let name_rule = NameRule {
            from: self
                .opt_path(&c.event_from)?
                .or(self.opt_path(&c.name_from)?),
            fixed: c.event.clone().or(c.name.clone()),
        };
        match call_type {
            CallType::Track if name_rule.from.is_none() && name_rule.fixed.is_none() => {
                return Err(self.at(
                    cspan,
                    format!("kinds.{name}.track needs `event` or `event_from`"),
                ));
            }
            CallType::Track | CallType::Page => {}
            _ if c.event.is_some() || c.event_from.is_some() => {
                return Err(self.at(
                    cspan,
                    format!(
                        "kinds.{name}.{}: only track calls have an event name",
                        call_type.name()
                    ),
                ));
            }
            _ => {}
        }
        if call_type != CallType::Page && c.page.is_some() {
            return Err(self.at(
                cspan,
                format!(
                    "kinds.{name}.{}: `page` fields belong to page calls",
                    call_type.name()
                ),
            ));
        }
        let from = match &c.from {
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => Some(self.path(s)?),
            None => Some(JsonPath::parse("properties").expect("path")),
        };
        let page = match &c.page {
            None => PageFields::default(),
            Some(p) => PageFields {
                url: self.opt_path(&p.url)?,
                title: self.opt_path(&p.title)?,
                referrer: self.opt_path(&p.referrer)?,
            },
        };
        let mut rename = Vec::new();
        for (src, target) in &c.rename {
            let p = JsonPath::parse(src).ok_or_else(|| {
                self.at(
                    target.span(),
                    format!("rename key `{src}` is not a dotted path"),
                )
            })?;
            if target.get_ref().is_empty() {
                return Err(self.at(
                    target.span(),
                    format!("rename of `{src}`: empty target name"),
                ));
            }
            rename.push((p, target.get_ref().clone()));
        }
        let mut sets = Vec::new();
        for (key, v) in &c.set {
            sets.push((key.clone(), self.expr(v)?));
        }
        Ok(CallMapping {
            call: call_type,
            name: name_rule,
            category: c.category.clone(),
            from,
            flatten: self.paths(&c.flatten)?,
            keep: self.paths(&c.keep)?,
            rename,
            drop: self.paths(&c.drop)?,
            set: sets,
            page,
        })
    }
}

/// The `[filters]` section, with kinds named by alias matched through the kind's own name too;
/// apart from [`PendoMapping::parse`] because it needs the parsed kinds.
fn parse_filters(
    f: &RawFilters,
    kinds: &FxHashMap<String, usize>,
    mappings: &[KindMapping],
) -> Filters {
    let lower = |v: &Vec<String>| v.iter().map(|s| s.to_lowercase()).collect();
    let set = |v: &Vec<String>| v.iter().cloned().collect();
    let mut filters = Filters {
        allow_kinds: lower(&f.allow_kinds),
        deny_kinds: lower(&f.deny_kinds),
        allow_events: set(&f.allow_events),
        deny_events: set(&f.deny_events),
        allow_feature_ids: set(&f.allow_feature_ids),
        deny_feature_ids: set(&f.deny_feature_ids),
        allow_guide_ids: set(&f.allow_guide_ids),
        deny_guide_ids: set(&f.deny_guide_ids),
        any: false,
    };
    // A filter may name a kind by any alias: match it through the kind's own name too.
    for set in [&mut filters.allow_kinds, &mut filters.deny_kinds] {
        let canonical: Vec<String> = set
            .iter()
            .filter_map(|k| kinds.get(k).map(|i| mappings[*i].name.to_lowercase()))
            .collect();
        set.extend(canonical);
    }
    filters.any = !(filters.allow_kinds.is_empty()
        && filters.deny_kinds.is_empty()
        && filters.allow_events.is_empty()
        && filters.deny_events.is_empty()
        && filters.allow_feature_ids.is_empty()
        && filters.deny_feature_ids.is_empty()
        && filters.allow_guide_ids.is_empty()
        && filters.deny_guide_ids.is_empty());
    filters
}

/// SHA-256 over the canonical JSON form of valid TOML text.
fn content_fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let value = toml::from_str::<toml::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null);
    let mut canonical = String::new();
    super::canonical_json::write(&value, &mut canonical);
    let mut h = Sha256::new();
    h.update(b"pendo-segment/mapping/v1\0");
    h.update(canonical.as_bytes());
    super::canonical_json::hex16(&h.finalize())
}

/// Where a table is declared (its `[header]`, or the first header inside it); for errors.
fn table_span(text: &str, table: &str) -> std::ops::Range<usize> {
    let header = format!("[{table}]");
    let prefix = format!("[{table}.");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t == header || t.starts_with(&prefix) {
            return offset..offset;
        }
        offset += line.len();
    }
    0..0
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn parse_expr(v: &Spanned<toml::Value>) -> Result<ValueExpr, String> {
    let s = match v.get_ref() {
        toml::Value::String(s) => s.as_str(),
        other => {
            return Ok(ValueExpr::Literal(
                serde_json::to_value(other).map_err(|e| e.to_string())?,
            ));
        }
    };
    if let Some(lit) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Ok(ValueExpr::Literal(Value::String(lit.to_string())));
    }
    match s {
        "$event_time" => return Ok(ValueExpr::EventTime),
        "$event_time_ms" => return Ok(ValueExpr::EventTimeMs),
        "$event_time_s" => return Ok(ValueExpr::EventTimeS),
        "$kind" => return Ok(ValueExpr::Kind),
        _ => {}
    }
    if let Some(arg) = s
        .strip_prefix("nps_category(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return JsonPath::parse(arg.trim())
            .map(ValueExpr::NpsCategory)
            .ok_or_else(|| format!("nps_category needs a dotted path, got `{arg}`"));
    }
    if s.starts_with('$') || s.contains('(') {
        return Err(format!(
            "unknown expression `{s}`: use a dotted path, $event_time, $event_time_ms, $event_time_s, $kind, nps_category(path) or 'literal'"
        ));
    }
    JsonPath::parse(s)
        .map(ValueExpr::Path)
        .ok_or_else(|| format!("`{s}` is not a dotted path"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMappingFile {
    version: Spanned<u32>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    unknown_kinds: RawUnknownKinds,
    #[serde(default)]
    filters: RawFilters,
    #[serde(default)]
    kinds: BTreeMap<String, RawKind>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    time_from: Option<Vec<Spanned<String>>>,
    message_id_fields: Option<Vec<Spanned<toml::Value>>>,
    user_agent_from: Option<Spanned<String>>,
    locale_from: Option<Spanned<String>>,
    feature_id_from: Option<Spanned<String>>,
    guide_id_from: Option<Spanned<String>>,
    page_id_from: Option<Spanned<String>>,
    #[serde(default)]
    known_envelope_fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnknownKinds {
    policy: Spanned<String>,
    #[serde(default = "default_event_prefix")]
    event_prefix: String,
    properties_from: Option<Spanned<String>>,
}

impl Default for RawUnknownKinds {
    fn default() -> Self {
        Self {
            policy: Spanned::new(0..0, "pass_through".to_string()),
            event_prefix: default_event_prefix(),
            properties_from: None,
        }
    }
}

fn default_event_prefix() -> String {
    "Pendo ".to_string()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFilters {
    #[serde(default)]
    allow_kinds: Vec<String>,
    #[serde(default)]
    deny_kinds: Vec<String>,
    #[serde(default)]
    allow_events: Vec<String>,
    #[serde(default)]
    deny_events: Vec<String>,
    #[serde(default)]
    allow_feature_ids: Vec<String>,
    #[serde(default)]
    deny_feature_ids: Vec<String>,
    #[serde(default)]
    allow_guide_ids: Vec<String>,
    #[serde(default)]
    deny_guide_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    #[serde(default)]
    aliases: Vec<String>,
    message_id_fields: Option<Vec<Spanned<toml::Value>>>,
    #[serde(default)]
    known: Vec<String>,
    identify: Option<RawCall>,
    group: Option<RawCall>,
    page: Option<RawCall>,
    track: Option<RawCall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    event: Option<String>,
    event_from: Option<Spanned<String>>,
    name: Option<String>,
    name_from: Option<Spanned<String>>,
    category: Option<String>,
    from: Option<Spanned<String>>,
    #[serde(default)]
    flatten: Vec<Spanned<String>>,
    #[serde(default)]
    keep: Vec<Spanned<String>>,
    #[serde(default)]
    rename: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    drop: Vec<Spanned<String>>,
    #[serde(default)]
    set: BTreeMap<String, Spanned<toml::Value>>,
    page: Option<RawPage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPage {
    url: Option<Spanned<String>>,
    title: Option<Spanned<String>>,
    referrer: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mapping_is_valid_and_case_insensitive() {
        let m = PendoMapping::default_mapping();
        assert_eq!(m.kind("featureClicked").unwrap().name, "featureClicked");
        assert_eq!(m.kind("FEATURECLICKED").unwrap().name, "featureClicked");
        assert_eq!(m.kind("guideSeen").unwrap().name, "guideDisplayed", "alias");
        let nps = m.kind("NPSSubmitted").unwrap();
        let types: Vec<_> = nps.calls.iter().map(|c| c.call).collect();
        assert_eq!(types, vec![CallType::Identify, CallType::Track]);
        assert!(m.kind("frustrationSignal").is_none());
    }

    fn err(text: &str) -> MappingError {
        PendoMapping::parse(text, "m.toml").unwrap_err()
    }

    #[test]
    fn errors_name_the_line() {
        let e = err("version = 1\n\n[kinds.x.track]\nevent = 3\n");
        assert_eq!(e.line, 4, "{e}");
        let e = err("version = 1\n[kinds.x.track]\nevent = \"X\"\nset = { a = \"$nope\" }\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("unknown expression"), "{e}");
        let e = err("version = 1\n[unknown_kinds]\npolicy = \"keep\"\n");
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("m.toml:3:"), "{e}");
        let e = err("version = 1\n[kinds.x]\naliases = [\"y\"]\n");
        assert!(e.message.contains("makes no call"), "{e}");
        let e = err("version = 1\n[kinds.x.track]\nname_from = \"a..b\"\n");
        assert_eq!(e.line, 3, "{e}");
        let e = err("version = 1\n[kinds.x.track]\nevnt = \"X\"\n");
        assert_eq!(e.line, 3, "typo is named: {e}");
        assert!(e.message.contains("evnt"), "{e}");
        let e = err("version = 2\n");
        assert!(e.message.contains("version"), "{e}");
        let e = err(
            "version = 1\n[kinds.a.track]\nevent=\"A\"\n[kinds.b]\naliases=[\"A\"]\n[kinds.b.track]\nevent=\"B\"\n",
        );
        assert!(e.message.contains("used twice"), "{e}");
    }

    #[test]
    fn expressions_parse() {
        let s = |t: &str| parse_expr(&Spanned::new(0..0, toml::Value::String(t.into())));
        assert_eq!(s("$event_time").unwrap(), ValueExpr::EventTime);
        assert_eq!(
            s("'web'").unwrap(),
            ValueExpr::Literal(Value::String("web".into()))
        );
        assert!(matches!(
            s("nps_category(properties.nps.rating)").unwrap(),
            ValueExpr::NpsCategory(_)
        ));
        assert!(s("lower(x)").is_err());
        let n = parse_expr(&Spanned::new(0..0, toml::Value::Integer(3))).unwrap();
        assert_eq!(n, ValueExpr::Literal(serde_json::json!(3)));
    }

    #[test]
    fn the_fingerprint_follows_content_not_comments_or_order() {
        let base = PendoMapping::default_mapping();
        assert_eq!(base.fingerprint().len(), 16);
        let commented = format!("# a note\n{DEFAULT_PENDO_MAPPING}\n# another\n");
        assert_eq!(
            PendoMapping::parse(&commented, "x").unwrap().fingerprint(),
            base.fingerprint()
        );
        let renamed = DEFAULT_PENDO_MAPPING
            .replace("event = \"Feature Clicked\"", "event = \"Feature Used\"");
        assert_ne!(
            PendoMapping::parse(&renamed, "x").unwrap().fingerprint(),
            base.fingerprint()
        );
    }
}
