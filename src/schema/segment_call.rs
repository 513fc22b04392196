//! `SegmentCall`: the canonical record on `canonical.segment-calls` (schema
//! `schemas/segment_call.avsc`, a union of the Track, Page, Identify and Group records).
//!
//! Properties and traits travel as JSON text inside Avro strings: lossless for every JSON value
//! (64-bit integers, big decimals, nesting), readable by every Avro tool (recursive Avro
//! schemas are not, e.g. BigQuery, Spark and Hive reject them), and the sink splices them into
//! the Segment request without re-encoding. `schemas/README.md` explains the choice.

use apache_avro::types::Value;
use serde::Serialize;
use serde::ser::Serializer;

use super::avro_binary::{AvroReadError, AvroReader, AvroWriter};
use super::wire_format::{FrameError, FramedSchema, WireFormat};

/// The shipped schema text.
pub const SEGMENT_CALL_AVSC: &str = include_str!("../../schemas/segment_call.avsc");

/// One Segment call, as produced by the transformers and delivered by the Segment sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCall {
    /// Deterministic id (≤ 100 characters); Segment de-duplicates on it.
    pub message_id: String,
    /// Event time at the source, ISO-8601 UTC with milliseconds.
    pub timestamp: String,
    /// Segment user id.
    pub user_id: Option<String>,
    /// Segment anonymous id.
    pub anonymous_id: Option<String>,
    /// Segment context.
    pub context: CallContext,
    /// JSON text of Segment's `integrations` object.
    pub integrations: Option<String>,
    /// Source of the call (not sent to Segment).
    pub origin: Origin,
    /// What kind of call, with its specific fields.
    pub body: CallBody,
}

/// Segment's `context`: the fields the pipeline sets, and any others as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename = "Context")]
pub struct CallContext {
    /// Account the call belongs to.
    #[serde(rename = "groupId")]
    pub group_id: Option<String>,
    /// Page the call happened on.
    pub page: Option<PageContext>,
    /// JSON text of an object of traits.
    pub traits: Option<String>,
    /// The browser's user agent.
    #[serde(rename = "userAgent")]
    pub user_agent: Option<String>,
    /// Locale, e.g. `de-DE`.
    pub locale: Option<String>,
    /// Library that produced the call.
    pub library: Option<Library>,
    /// JSON text of an object of further context fields.
    pub extra: Option<String>,
}

/// Segment's `context.page`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename = "PageContext")]
pub struct PageContext {
    /// Full URL.
    pub url: Option<String>,
    /// URL path.
    pub path: Option<String>,
    /// Query string including `?`.
    pub search: Option<String>,
    /// Document title.
    pub title: Option<String>,
    /// Referrer URL.
    pub referrer: Option<String>,
}

/// Segment's `context.library`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename = "Library")]
pub struct Library {
    /// Library name.
    pub name: String,
    /// Library version.
    pub version: String,
}

/// Where a call came from: for tracing and end-to-end latency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename = "Origin")]
pub struct Origin {
    /// `pendo.webhook`, `pendo.api`, ...
    pub source: String,
    /// The source event kind as received.
    pub kind: String,
    /// Pendo visitor id.
    #[serde(rename = "visitorId")]
    pub visitor_id: Option<String>,
    /// Pendo account id.
    #[serde(rename = "accountId")]
    pub account_id: Option<String>,
    /// When the connector received the source event (epoch ms).
    #[serde(rename = "receivedAt")]
    pub received_at: Option<i64>,
}

/// The call type and its own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallBody {
    /// `track`.
    Track {
        /// Event name.
        event: String,
        /// JSON text of the properties object.
        properties: String,
    },
    /// `page`.
    Page {
        /// Page name.
        name: Option<String>,
        /// Page category.
        category: Option<String>,
        /// JSON text of the properties object.
        properties: String,
    },
    /// `identify`.
    Identify {
        /// JSON text of the traits object.
        traits: String,
    },
    /// `group`.
    Group {
        /// The account id.
        group_id: String,
        /// JSON text of the traits object.
        traits: String,
    },
}

impl CallBody {
    /// Segment's `type` of this call.
    pub fn call_type(&self) -> &'static str {
        match self {
            CallBody::Track { .. } => "track",
            CallBody::Page { .. } => "page",
            CallBody::Identify { .. } => "identify",
            CallBody::Group { .. } => "group",
        }
    }
}

impl SegmentCall {
    /// The Kafka record key: groupId for group calls, else userId, else anonymousId, so that
    /// per-user (and per-account) order is kept by partition.
    pub fn kafka_key(&self) -> Option<&str> {
        if let CallBody::Group { group_id, .. } = &self.body {
            return Some(group_id);
        }
        self.user_id.as_deref().or(self.anonymous_id.as_deref())
    }

    /// Writes the call as one Segment API JSON item (without `sentAt`, which is per request).
    /// JSON-text fields are spliced verbatim: they must hold JSON objects.
    pub fn write_segment_json(&self, out: &mut Vec<u8>) {
        fn field(out: &mut Vec<u8>, name: &str, value: &str) {
            out.push(b',');
            json_str(out, name);
            out.push(b':');
            json_str(out, value);
        }
        fn raw(out: &mut Vec<u8>, name: &str, json: &str) {
            out.push(b',');
            json_str(out, name);
            out.push(b':');
            out.extend_from_slice(json.as_bytes());
        }
        out.extend_from_slice(b"{\"type\":");
        json_str(out, self.body.call_type());
        field(out, "messageId", &self.message_id);
        field(out, "timestamp", &self.timestamp);
        if let Some(v) = &self.user_id {
            field(out, "userId", v);
        }
        if let Some(v) = &self.anonymous_id {
            field(out, "anonymousId", v);
        }
        match &self.body {
            CallBody::Track { event, properties } => {
                field(out, "event", event);
                raw(out, "properties", properties);
            }
            CallBody::Page {
                name,
                category,
                properties,
            } => {
                if let Some(v) = name {
                    field(out, "name", v);
                }
                if let Some(v) = category {
                    field(out, "category", v);
                }
                raw(out, "properties", properties);
            }
            CallBody::Identify { traits } => raw(out, "traits", traits),
            CallBody::Group { group_id, traits } => {
                field(out, "groupId", group_id);
                raw(out, "traits", traits);
            }
        }
        if let Some(v) = &self.integrations {
            raw(out, "integrations", v);
        }
        out.extend_from_slice(b",\"context\":{");
        let start = out.len();
        let c = &self.context;
        let sep = |out: &mut Vec<u8>| {
            if out.len() > start {
                out.push(b',');
            }
        };
        if let Some(v) = &c.group_id {
            sep(out);
            json_str(out, "groupId");
            out.push(b':');
            json_str(out, v);
        }
        if let Some(p) = &c.page {
            sep(out);
            out.extend_from_slice(b"\"page\":");
            serde_json::to_writer(&mut *out, &PageJson(p)).expect("writing to a Vec");
        }
        if let Some(v) = &c.traits {
            sep(out);
            out.extend_from_slice(b"\"traits\":");
            out.extend_from_slice(v.as_bytes());
        }
        if let Some(v) = &c.user_agent {
            sep(out);
            out.extend_from_slice(b"\"userAgent\":");
            json_str(out, v);
        }
        if let Some(v) = &c.locale {
            sep(out);
            out.extend_from_slice(b"\"locale\":");
            json_str(out, v);
        }
        if let Some(l) = &c.library {
            sep(out);
            out.extend_from_slice(b"\"library\":{\"name\":");
            json_str(out, &l.name);
            out.extend_from_slice(b",\"version\":");
            json_str(out, &l.version);
            out.push(b'}');
        }
        if let Some(extra) = &c.extra {
            // Splice the members of the extra object.
            let inner = extra.trim();
            let inner = inner
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .unwrap_or("")
                .trim();
            if !inner.is_empty() {
                sep(out);
                out.extend_from_slice(inner.as_bytes());
            }
        }
        out.extend_from_slice(b"}}");
    }

    /// The Segment API JSON of this call as a value (tests and tooling; the sink streams bytes).
    /// Never panics on a record the pipeline passed through: a number beyond `f64` (`1e400`,
    /// valid JSON) becomes a string of its raw text, and JSON-text fields that are not JSON at
    /// all (a hand-made record) make the whole value the written text as a string.
    pub fn to_segment_json(&self) -> serde_json::Value {
        let mut out = Vec::new();
        self.write_segment_json(&mut out);
        parse_json_lenient(&out)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&out).into()))
    }
}

/// Parses JSON text as `serde_json::Value`, keeping numbers that `Value` cannot hold (beyond
/// `f64`, e.g. `1e400`: valid JSON, passed through untouched by the pipeline) as strings of their
/// raw text, so tools can show every record instead of failing on it.
pub fn parse_json_lenient(text: &[u8]) -> serde_json::Result<serde_json::Value> {
    match serde_json::from_slice(text) {
        Ok(v) => Ok(v),
        Err(e) => serde_json::from_slice(&quote_huge_numbers(text)).map_err(|_| e),
    }
}

/// `text` with every number token outside strings that does not fit `f64` put in quotes.
fn quote_huge_numbers(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < text.len() {
        let c = text[i];
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < text.len()
                && matches!(text[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            let token = &text[start..i];
            let fits = std::str::from_utf8(token)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_finite);
            if !fits {
                out.push(b'"');
            }
            out.extend_from_slice(token);
            if !fits {
                out.push(b'"');
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec");
}

impl SegmentCall {
    /// A track call with fixed identity fields, for unit tests of code that compares or checks
    /// calls.
    #[cfg(test)]
    pub(crate) fn test_track(message_id: &str, event: &str, properties: &str) -> Self {
        SegmentCall {
            message_id: message_id.into(),
            timestamp: "2026-11-28T12:00:00.000Z".into(),
            user_id: Some("u1".into()),
            anonymous_id: None,
            context: CallContext::default(),
            integrations: None,
            origin: Origin::default(),
            body: CallBody::Track {
                event: event.into(),
                properties: properties.into(),
            },
        }
    }
}

/// `context.page` without nulls.
struct PageJson<'a>(&'a PageContext);

impl Serialize for PageJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let p = self.0;
        let mut m = s.serialize_map(None)?;
        for (k, v) in [
            ("path", &p.path),
            ("referrer", &p.referrer),
            ("search", &p.search),
            ("title", &p.title),
            ("url", &p.url),
        ] {
            if let Some(v) = v {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Why a record value is not a readable `SegmentCall`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Wrong framing or unknown writer schema.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The datum does not decode with the schema.
    #[error("not a valid SegmentCall datum: {0}")]
    Avro(String),
}

impl From<AvroReadError> for DecodeError {
    fn from(e: AvroReadError) -> Self {
        DecodeError::Avro(e.to_string())
    }
}

/// Encodes and decodes `SegmentCall` values with the shipped schema and a wire format.
///
/// The datum layout is written out by hand (`avro_binary`) for speed and checked byte for byte
/// against apache-avro's generic writer in the tests below; the schema itself is parsed by
/// apache-avro for the fingerprint.
pub struct SegmentCallCodec {
    framed: FramedSchema,
}

impl SegmentCallCodec {
    /// A codec writing `format`.
    pub fn new(format: WireFormat) -> Self {
        Self {
            framed: FramedSchema::parse_shipped(SEGMENT_CALL_AVSC, format),
        }
    }

    /// The framed schema (fingerprint, format).
    pub fn framed(&self) -> &FramedSchema {
        &self.framed
    }

    /// Appends the framed Avro encoding of `call` to `out`.
    pub fn encode(&self, call: &SegmentCall, out: &mut Vec<u8>) -> Result<(), String> {
        self.framed.write_header(out);
        write_datum(call, &mut AvroWriter::new(out));
        Ok(())
    }

    /// Encodes `call` into a new buffer.
    pub fn encode_to_vec(&self, call: &SegmentCall) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(512);
        self.encode(call, &mut out)?;
        Ok(out)
    }

    /// Decodes one framed record value.
    pub fn decode(&self, value: &[u8]) -> Result<SegmentCall, DecodeError> {
        let datum = self.framed.datum(value)?;
        let mut r = AvroReader::new(datum);
        let call = read_datum(&mut r)?;
        r.finish()?;
        Ok(call)
    }
}

/// Writes the datum in schema field order (`schemas/segment_call.avsc`).
fn write_datum(c: &SegmentCall, w: &mut AvroWriter<'_>) {
    w.branch(match c.body {
        CallBody::Track { .. } => 0,
        CallBody::Page { .. } => 1,
        CallBody::Identify { .. } => 2,
        CallBody::Group { .. } => 3,
    });
    w.string(&c.message_id);
    w.string(&c.timestamp);
    w.opt_string(c.user_id.as_deref());
    w.opt_string(c.anonymous_id.as_deref());
    let x = &c.context;
    w.opt_string(x.group_id.as_deref());
    match &x.page {
        None => w.branch(0),
        Some(p) => {
            w.branch(1);
            for f in [&p.url, &p.path, &p.search, &p.title, &p.referrer] {
                w.opt_string(f.as_deref());
            }
        }
    }
    w.opt_string(x.traits.as_deref());
    w.opt_string(x.user_agent.as_deref());
    w.opt_string(x.locale.as_deref());
    match &x.library {
        None => w.branch(0),
        Some(l) => {
            w.branch(1);
            w.string(&l.name);
            w.string(&l.version);
        }
    }
    w.opt_string(x.extra.as_deref());
    w.opt_string(c.integrations.as_deref());
    let o = &c.origin;
    w.string(&o.source);
    w.string(&o.kind);
    w.opt_string(o.visitor_id.as_deref());
    w.opt_string(o.account_id.as_deref());
    w.opt_long(o.received_at);
    match &c.body {
        CallBody::Track { event, properties } => {
            w.string(event);
            w.string(properties);
        }
        CallBody::Page {
            name,
            category,
            properties,
        } => {
            w.opt_string(name.as_deref());
            w.opt_string(category.as_deref());
            w.string(properties);
        }
        CallBody::Identify { traits } => w.string(traits),
        CallBody::Group { group_id, traits } => {
            w.string(group_id);
            w.string(traits);
        }
    }
}

/// Reads a datum written with the shipped schema.
fn read_datum(r: &mut AvroReader<'_>) -> Result<SegmentCall, AvroReadError> {
    let branch = r.branch("SegmentCall union", 4)?;
    let message_id = r.string("messageId")?;
    let timestamp = r.string("timestamp")?;
    let user_id = r.opt_string("userId")?;
    let anonymous_id = r.opt_string("anonymousId")?;
    let group_id = r.opt_string("context.groupId")?;
    let page = if r.present("context.page")? {
        Some(PageContext {
            url: r.opt_string("context.page.url")?,
            path: r.opt_string("context.page.path")?,
            search: r.opt_string("context.page.search")?,
            title: r.opt_string("context.page.title")?,
            referrer: r.opt_string("context.page.referrer")?,
        })
    } else {
        None
    };
    let traits = r.opt_string("context.traits")?;
    let user_agent = r.opt_string("context.userAgent")?;
    let locale = r.opt_string("context.locale")?;
    let library = if r.present("context.library")? {
        Some(Library {
            name: r.string("context.library.name")?,
            version: r.string("context.library.version")?,
        })
    } else {
        None
    };
    let extra = r.opt_string("context.extra")?;
    let integrations = r.opt_string("integrations")?;
    let origin = Origin {
        source: r.string("origin.source")?,
        kind: r.string("origin.kind")?,
        visitor_id: r.opt_string("origin.visitorId")?,
        account_id: r.opt_string("origin.accountId")?,
        received_at: r.opt_long("origin.receivedAt")?,
    };
    let body = match branch {
        0 => CallBody::Track {
            event: r.string("event")?,
            properties: r.string("properties")?,
        },
        1 => CallBody::Page {
            name: r.opt_string("name")?,
            category: r.opt_string("category")?,
            properties: r.string("properties")?,
        },
        2 => CallBody::Identify {
            traits: r.string("traits")?,
        },
        _ => CallBody::Group {
            group_id: r.string("groupId")?,
            traits: r.string("traits")?,
        },
    };
    Ok(SegmentCall {
        message_id,
        timestamp,
        user_id,
        anonymous_id,
        context: CallContext {
            group_id,
            page,
            traits,
            user_agent,
            locale,
            library,
            extra,
        },
        integrations,
        origin,
        body,
    })
}

/// Record fields by name, taken out one by one.
pub(crate) struct Fields(Vec<(String, Value)>);

impl Fields {
    pub(crate) fn new(v: Value) -> Result<Self, String> {
        match v {
            Value::Record(fields) => Ok(Self(fields)),
            other => Err(format!("expected a record, got {other:?}")),
        }
    }

    pub(crate) fn take(&mut self, name: &str) -> Result<Value, String> {
        let i = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| format!("missing field {name}"))?;
        Ok(std::mem::replace(&mut self.0[i].1, Value::Null))
    }

    pub(crate) fn take_opt(&mut self, name: &str) -> Result<Option<Value>, String> {
        match self.take(name)? {
            Value::Union(_, b) => match *b {
                Value::Null => Ok(None),
                v => Ok(Some(v)),
            },
            Value::Null => Ok(None),
            v => Ok(Some(v)),
        }
    }

    pub(crate) fn string(&mut self, name: &str) -> Result<String, String> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(format!("{name}: expected a string, got {other:?}")),
        }
    }

    pub(crate) fn opt_string(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.take_opt(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("{name}: expected a string, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: CallBody) -> SegmentCall {
        SegmentCall {
            message_id: "pendo-t-0123".into(),
            timestamp: "2025-11-28T12:00:00.000Z".into(),
            user_id: Some("u-1".into()),
            anonymous_id: None,
            context: CallContext {
                group_id: Some("acct".into()),
                page: Some(PageContext {
                    url: Some("https://x.example/a?b=1".into()),
                    path: Some("/a".into()),
                    search: Some("?b=1".into()),
                    title: None,
                    referrer: None,
                }),
                traits: Some(r#"{"email":"a@b.c"}"#.into()),
                user_agent: Some("UA \"quoted\"".into()),
                locale: Some("de-DE".into()),
                library: Some(Library {
                    name: "pendo-segment".into(),
                    version: "0.1.0".into(),
                }),
                extra: Some(r#"{"app":{"name":"acme"}}"#.into()),
            },
            integrations: Some(r#"{"All":true}"#.into()),
            origin: Origin {
                source: "pendo.webhook".into(),
                kind: "featureClicked".into(),
                visitor_id: Some("vis-1".into()),
                account_id: Some("acct".into()),
                received_at: Some(1_764_330_000_123),
            },
            body,
        }
    }

    fn bodies() -> Vec<CallBody> {
        let awkward = r#"{"big":18446744073709551615,"f":1.5e300,"n":null,"b":false,"a":[1,"x",{"y":[]}],"s":"é\u0000\""}"#;
        vec![
            CallBody::Track {
                event: "Feature Clicked".into(),
                properties: awkward.into(),
            },
            CallBody::Page {
                name: Some("Reports".into()),
                category: None,
                properties: "{}".into(),
            },
            CallBody::Identify {
                traits: awkward.into(),
            },
            CallBody::Group {
                group_id: "acct".into(),
                traits: r#"{"plan":"enterprise"}"#.into(),
            },
        ]
    }

    /// apache-avro's generic writer, driven by serde: the oracle for the hand-written layout.
    struct SerdeView<'a>(&'a SegmentCall);

    impl Serialize for SerdeView<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let (index, name) = match self.0.body {
                CallBody::Track { .. } => (0, "Track"),
                CallBody::Page { .. } => (1, "Page"),
                CallBody::Identify { .. } => (2, "Identify"),
                CallBody::Group { .. } => (3, "Group"),
            };
            s.serialize_newtype_variant("SegmentCall", index, name, &RecordView(self.0))
        }
    }

    struct RecordView<'a>(&'a SegmentCall);

    impl Serialize for RecordView<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let c = self.0;
            let name = match c.body {
                CallBody::Track { .. } => "Track",
                CallBody::Page { .. } => "Page",
                CallBody::Identify { .. } => "Identify",
                CallBody::Group { .. } => "Group",
            };
            let mut r = s.serialize_struct(name, 10)?;
            r.serialize_field("messageId", &c.message_id)?;
            r.serialize_field("timestamp", &c.timestamp)?;
            r.serialize_field("userId", &c.user_id)?;
            r.serialize_field("anonymousId", &c.anonymous_id)?;
            r.serialize_field("context", &c.context)?;
            r.serialize_field("integrations", &c.integrations)?;
            r.serialize_field("origin", &c.origin)?;
            match &c.body {
                CallBody::Track { event, properties } => {
                    r.serialize_field("event", event)?;
                    r.serialize_field("properties", properties)?;
                }
                CallBody::Page {
                    name,
                    category,
                    properties,
                } => {
                    r.serialize_field("name", name)?;
                    r.serialize_field("category", category)?;
                    r.serialize_field("properties", properties)?;
                }
                CallBody::Identify { traits } => r.serialize_field("traits", traits)?,
                CallBody::Group { group_id, traits } => {
                    r.serialize_field("groupId", group_id)?;
                    r.serialize_field("traits", traits)?;
                }
            }
            r.end()
        }
    }

    fn oracle_datum(call: &SegmentCall) -> Vec<u8> {
        let framed = FramedSchema::parse_shipped(SEGMENT_CALL_AVSC, WireFormat::SingleObject);
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(framed.schema())
            .build()
            .unwrap();
        let mut out = Vec::new();
        writer.write_ser(&mut out, &SerdeView(call)).unwrap();
        out
    }

    /// Every optional field both present and absent, for each call type.
    fn variants() -> Vec<SegmentCall> {
        let mut out = Vec::new();
        for body in bodies() {
            let full = sample(body);
            out.push(full.clone());
            let mut bare = full.clone();
            bare.user_id = None;
            bare.anonymous_id = Some("anon-é".into());
            bare.context = CallContext::default();
            bare.integrations = None;
            bare.origin.visitor_id = None;
            bare.origin.account_id = None;
            bare.origin.received_at = None;
            if let CallBody::Page { name, .. } = &mut bare.body {
                *name = None;
            }
            out.push(bare);
            let mut negative = full;
            negative.origin.received_at = Some(-1);
            negative.context.page = Some(PageContext::default());
            out.push(negative);
        }
        out
    }

    #[test]
    fn hand_written_layout_matches_apache_avro_byte_for_byte() {
        let codec = SegmentCallCodec::new(WireFormat::SingleObject);
        let header = 10;
        for call in variants() {
            let ours = codec.encode_to_vec(&call).unwrap();
            assert_eq!(&ours[header..], &oracle_datum(&call)[..], "{call:?}");
            assert_eq!(codec.decode(&ours).unwrap(), call);
            // And apache-avro's generic reader reads our bytes.
            let reader =
                apache_avro::reader::datum::GenericDatumReader::builder(codec.framed().schema())
                    .build()
                    .unwrap();
            let mut datum = &ours[header..];
            let value = reader.read_value(&mut datum).unwrap();
            assert!(datum.is_empty());
            assert!(matches!(value, Value::Union(_, _)));
        }
    }

    #[test]
    fn every_call_type_round_trips_through_single_object_encoding() {
        let codec = SegmentCallCodec::new(WireFormat::SingleObject);
        for body in bodies() {
            let call = sample(body);
            let bytes = codec.encode_to_vec(&call).unwrap();
            assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            assert_eq!(codec.decode(&bytes).unwrap(), call);
        }
    }

    #[test]
    fn nulls_and_confluent_framing_round_trip() {
        let codec = SegmentCallCodec::new(WireFormat::Confluent { schema_id: 7 });
        let mut call = sample(CallBody::Identify {
            traits: "{}".into(),
        });
        call.user_id = None;
        call.anonymous_id = Some("anon".into());
        call.context = CallContext::default();
        call.integrations = None;
        call.origin.received_at = None;
        let bytes = codec.encode_to_vec(&call).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(codec.decode(&bytes).unwrap(), call);
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        let codec = SegmentCallCodec::new(WireFormat::SingleObject);
        let good = codec.encode_to_vec(&sample(bodies().remove(0))).unwrap();
        for cut in [0, 3, 10, 11, good.len() / 2, good.len() - 1] {
            assert!(codec.decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(codec.decode(&trailing).is_err());
        // Every single-byte corruption of the datum decodes to an error or a value, never a panic.
        for i in 10..good.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = codec.decode(&bad);
            }
        }
    }

    #[test]
    fn segment_json_has_type_ids_and_spliced_json() {
        let call = sample(bodies().remove(0));
        let v = call.to_segment_json();
        assert_eq!(v["type"], "track");
        assert_eq!(v["messageId"], "pendo-t-0123");
        assert_eq!(v["event"], "Feature Clicked");
        assert_eq!(v["properties"]["a"][2]["y"], serde_json::json!([]));
        assert_eq!(
            v["properties"]["big"].to_string(),
            "18446744073709551615",
            "big integers pass through unchanged"
        );
        assert_eq!(v["context"]["groupId"], "acct");
        assert_eq!(v["context"]["page"]["path"], "/a");
        assert!(v["context"]["page"].get("title").is_none());
        assert_eq!(v["context"]["traits"]["email"], "a@b.c");
        assert_eq!(v["context"]["userAgent"], "UA \"quoted\"");
        assert_eq!(v["context"]["app"]["name"], "acme");
        assert_eq!(v["context"]["library"]["name"], "pendo-segment");
        assert_eq!(v["integrations"]["All"], true);
        assert!(v.get("origin").is_none(), "origin is not sent to Segment");
        let g = sample(bodies().remove(3));
        assert_eq!(g.kafka_key(), Some("acct"));
        assert_eq!(g.to_segment_json()["groupId"], "acct");
        let mut anon = sample(CallBody::Identify {
            traits: "{}".into(),
        });
        anon.user_id = None;
        anon.anonymous_id = Some("a-1".into());
        anon.context = CallContext::default();
        assert_eq!(anon.kafka_key(), Some("a-1"));
        assert_eq!(anon.to_segment_json()["context"], serde_json::json!({}));
    }

    #[test]
    fn segment_json_of_numbers_beyond_f64_is_their_raw_text_never_a_panic() {
        // Valid JSON that serde_json's `Value` cannot hold, passed through by the lazy reader.
        let call = sample(CallBody::Track {
            event: "E".into(),
            properties: r#"{"huge":1e400,"neg":-2E+999,"ok":1.5,"s":"1e400","l":[1e400]}"#.into(),
        });
        let v = call.to_segment_json();
        assert_eq!(v["properties"]["huge"], "1e400");
        assert_eq!(v["properties"]["neg"], "-2E+999");
        assert_eq!(v["properties"]["ok"], 1.5);
        assert_eq!(v["properties"]["s"], "1e400");
        assert_eq!(v["properties"]["l"][0], "1e400");
        // JSON-text fields that are not JSON at all (a hand-made record): the text, not a panic.
        let mut broken = call.clone();
        broken.body = CallBody::Track {
            event: "E".into(),
            properties: "{not json".into(),
        };
        let v = broken.to_segment_json();
        assert!(v.as_str().is_some_and(|s| s.contains("{not json")), "{v}");
    }
}
