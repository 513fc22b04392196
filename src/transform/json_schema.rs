//! The subset of JSON Schema (draft-07) that tracking plans use, compiled once and checked
//! against every call: `type`, `enum`, `const`, `properties`, `required`,
//! `additionalProperties`, `items`, `minimum`/`maximum` (and the exclusive forms),
//! `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`. Annotations (`title`,
//! `description`, `format`, `examples`, ...) are accepted and not checked.
//!
//! Any other keyword (`$ref`, `allOf`, `oneOf`, `if`, `patternProperties`, ...) is refused when
//! the plan is loaded, naming where it is: a plan whose rules would silently not be checked is
//! worse than no plan. Written here rather than taken from a general JSON Schema crate because
//! the subset is small and such crates bring regex engines, URL resolution and HTTP clients
//! into every build.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// Deepest nesting of schemas accepted (plans are written by people; this only stops a file
/// from overflowing the stack).
const MAX_SCHEMA_DEPTH: usize = 32;

/// Keywords that describe and never constrain.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "readOnly",
    "writeOnly",
    "deprecated",
    "labels",
];

/// What kind of constraint a value broke: a bounded set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchemaRule {
    /// A required member is missing.
    Required,
    /// Wrong JSON type.
    Type,
    /// Not one of the allowed values.
    Enum,
    /// Not the one allowed value.
    Const,
    /// A member the schema does not list (`additionalProperties: false` or its schema).
    AdditionalProperties,
    /// A string that does not match `pattern`.
    Pattern,
    /// A number below `minimum` / at or below `exclusiveMinimum`.
    Minimum,
    /// A number above `maximum` / at or above `exclusiveMaximum`.
    Maximum,
    /// A string shorter than `minLength`.
    MinLength,
    /// A string longer than `maxLength`.
    MaxLength,
    /// An array with fewer than `minItems`.
    MinItems,
    /// An array with more than `maxItems`.
    MaxItems,
    /// The `false` schema: nothing is allowed.
    Never,
}

impl SchemaRule {
    /// The rule's name in metrics, dead-letter details and previews.
    pub fn name(self) -> &'static str {
        match self {
            SchemaRule::Required => "required",
            SchemaRule::Type => "type",
            SchemaRule::Enum => "enum",
            SchemaRule::Const => "const",
            SchemaRule::AdditionalProperties => "additional_properties",
            SchemaRule::Pattern => "pattern",
            SchemaRule::Minimum => "minimum",
            SchemaRule::Maximum => "maximum",
            SchemaRule::MinLength => "min_length",
            SchemaRule::MaxLength => "max_length",
            SchemaRule::MinItems => "min_items",
            SchemaRule::MaxItems => "max_items",
            SchemaRule::Never => "never",
        }
    }
}

/// One broken constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// Which constraint.
    pub rule: SchemaRule,
    /// Path of the offending value from the checked root, as keys and array indices
    /// (`["properties", "plan"]`); for `required`, the path of the missing member.
    pub path: Vec<PathStep>,
    /// What was expected, for people.
    pub message: String,
}

/// One step of a [`SchemaViolation`] path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

impl SchemaViolation {
    /// The path in dotted form (`properties.items.0.price`).
    pub fn dotted_path(&self) -> String {
        let mut s = String::new();
        for (i, step) in self.path.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            match step {
                PathStep::Key(k) => s.push_str(k),
                PathStep::Index(n) => s.push_str(&n.to_string()),
            }
        }
        s
    }
}

/// A JSON type as `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Object,
    Array,
    Number,
    Integer,
    String,
}

impl JsonType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "string" => JsonType::String,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::String => "string",
        }
    }

    fn matches(self, v: &Value) -> bool {
        match (self, v) {
            (JsonType::Null, Value::Null)
            | (JsonType::Boolean, Value::Bool(_))
            | (JsonType::Object, Value::Object(_))
            | (JsonType::Array, Value::Array(_))
            | (JsonType::Number, Value::Number(_))
            | (JsonType::String, Value::String(_)) => true,
            (JsonType::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

/// What `additionalProperties` allows.
#[derive(Debug, Clone)]
enum Additional {
    Any,
    None,
    Schema(Box<JsonSchema>),
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct JsonSchema {
    /// `false` schema.
    never: bool,
    types: Vec<JsonType>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    properties: Vec<(String, JsonSchema)>,
    required: Vec<String>,
    additional: Additional,
    items: Option<Box<JsonSchema>>,
    minimum: Option<(f64, bool)>,
    maximum: Option<(f64, bool)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<(regex_lite::Regex, String)>,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

impl JsonSchema {
    fn any() -> Self {
        Self {
            never: false,
            types: Vec::new(),
            enumeration: None,
            constant: None,
            properties: Vec::new(),
            required: Vec::new(),
            additional: Additional::Any,
            items: None,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
            min_items: None,
            max_items: None,
        }
    }

    /// Compiles `schema`; `at` names where it is in its file, for errors.
    pub fn compile(schema: &Value, at: &str) -> Result<Self, String> {
        compile(schema, at, 0)
    }

    /// The schema of member `key` (from `properties`), if listed.
    pub fn property(&self, key: &str) -> Option<&JsonSchema> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s)
    }

    /// The members this schema lists in `properties` or `required`: the parts of a value it
    /// reads.
    pub fn mentioned_members(&self) -> impl Iterator<Item = &str> {
        self.properties
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(self.required.iter().map(String::as_str))
    }

    /// Whether an object may carry members not listed in `properties`.
    pub fn allows_additional(&self) -> bool {
        !matches!(self.additional, Additional::None)
    }

    /// Checks `value`, appending what it breaks to `out`; `at` is the value's path from the
    /// checked root.
    pub fn check(&self, value: &Value, at: Path<'_>, out: &mut Vec<SchemaViolation>) {
        if self.never {
            out.push(violation(
                SchemaRule::Never,
                at,
                "no value is allowed here".into(),
            ));
            return;
        }
        if !self.types.is_empty() && !self.types.iter().any(|t| t.matches(value)) {
            out.push(self.type_violation(type_name(value), at));
            // The other constraints describe a value of the right type.
            return;
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.iter().any(|a| json_eq(a, value))
        {
            let message = format!("{} is not one of {}", short(value), short_list(allowed));
            out.push(violation(SchemaRule::Enum, at, message));
        }
        if let Some(c) = &self.constant
            && !json_eq(c, value)
        {
            let message = format!("{} is not {}", short(value), short(c));
            out.push(violation(SchemaRule::Const, at, message));
        }
        match value {
            Value::Object(members) => {
                self.check_members(
                    members.iter().map(|(k, v)| (k.as_str(), Member::Parsed(v))),
                    |k| members.contains_key(k),
                    at,
                    out,
                );
            }
            Value::Array(items) => {
                self.check_count(items.len(), at, out);
                if let Some(item_schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        item_schema.check(item, Some(&Frame::index(at, i)), out);
                    }
                }
            }
            Value::String(text) => self.check_string(text, at, out),
            Value::Number(n) => self.check_number(n, at, out),
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// [`check`](Self::check) of JSON text, reading it only as deep as the schema looks: the
    /// members of an object are not parsed unless a constraint needs their values, so checking
    /// a call's properties costs a scan of their text rather than a tree of allocations. Finds
    /// exactly what `check` finds on the parsed value.
    pub fn check_raw(&self, text: &str, at: Path<'_>, out: &mut Vec<SchemaViolation>) {
        let text = text.trim_start();
        let needs_value = self.never || self.enumeration.is_some() || self.constant.is_some();
        match text.as_bytes().first() {
            Some(b'{') if !needs_value => {
                if !self.allows_type(JsonType::Object) {
                    out.push(self.type_violation("object", at));
                    return;
                }
                if self.properties.is_empty()
                    && self.required.is_empty()
                    && matches!(self.additional, Additional::Any)
                {
                    return;
                }
                match serde_json::from_str::<RawMembers<'_>>(text) {
                    Ok(RawMembers(members)) => self.check_members(
                        members
                            .iter()
                            .map(|(k, v)| (k.as_ref(), Member::Raw(v.get()))),
                        |k| members.iter().any(|(m, _)| m == k),
                        at,
                        out,
                    ),
                    Err(_) => self.check_parsed_text(text, at, out),
                }
            }
            Some(b'[') if !needs_value => {
                if !self.allows_type(JsonType::Array) {
                    out.push(self.type_violation("array", at));
                    return;
                }
                if self.items.is_none() && self.min_items.is_none() && self.max_items.is_none() {
                    return;
                }
                match serde_json::from_str::<Vec<&RawValue>>(text) {
                    Ok(items) => {
                        self.check_count(items.len(), at, out);
                        if let Some(item_schema) = &self.items {
                            for (i, item) in items.iter().enumerate() {
                                item_schema.check_raw(item.get(), Some(&Frame::index(at, i)), out);
                            }
                        }
                    }
                    Err(_) => self.check_parsed_text(text, at, out),
                }
            }
            // A string without escapes is checked in place.
            Some(b'"') if !self.never && text.len() >= 2 && !text.contains('\\') => {
                if !self.allows_type(JsonType::String) {
                    out.push(self.type_violation("string", at));
                    return;
                }
                let inner = &text[1..text.len() - 1];
                let is = |v: &Value| matches!(v, Value::String(x) if x == inner);
                let value = || Value::String(inner.to_string());
                if let Some(allowed) = &self.enumeration
                    && !allowed.iter().any(is)
                {
                    let message =
                        format!("{} is not one of {}", short(&value()), short_list(allowed));
                    out.push(violation(SchemaRule::Enum, at, message));
                }
                if let Some(c) = &self.constant
                    && !is(c)
                {
                    let message = format!("{} is not {}", short(&value()), short(c));
                    out.push(violation(SchemaRule::Const, at, message));
                }
                if self.min_length.is_some() || self.max_length.is_some() || self.pattern.is_some()
                {
                    self.check_string(inner, at, out);
                }
            }
            // A scalar constrained by its type alone is told from its first bytes.
            Some(_) if !needs_value && self.scalar_type_only() => {
                if let Some((t, name)) = raw_scalar_type(text)
                    && !self.types.is_empty()
                    && !self.types.iter().any(|want| {
                        *want == t || (*want == JsonType::Number && t == JsonType::Integer)
                    })
                {
                    out.push(self.type_violation(name, at));
                }
            }
            _ => self.check_parsed_text(text, at, out),
        }
    }

    /// [`check`](Self::check) of an object made of `members` and one more member given as
    /// JSON text (a call's properties, kept as text).
    pub fn check_object_with_raw(
        &self,
        members: &Map<String, Value>,
        (key, raw): (&str, &str),
        out: &mut Vec<SchemaViolation>,
    ) {
        if self.never
            || self.enumeration.is_some()
            || self.constant.is_some()
            || !self.allows_type(JsonType::Object)
        {
            let mut whole = members.clone();
            let member = serde_json::from_str(raw).unwrap_or(Value::Null);
            whole.insert(key.to_string(), member);
            self.check(&Value::Object(whole), None, out);
            return;
        }
        self.check_members(
            members
                .iter()
                .map(|(k, v)| (k.as_str(), Member::Parsed(v)))
                .chain(std::iter::once((key, Member::Raw(raw)))),
            |k| k == key || members.contains_key(k),
            None,
            out,
        );
    }

    fn check_parsed_text(&self, text: &str, at: Path<'_>, out: &mut Vec<SchemaViolation>) {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.check(&v, at, out),
            // Text that is not JSON never reaches here (calls are written by the mapper);
            // checked as null, it breaks what a null breaks.
            Err(_) => self.check(&Value::Null, at, out),
        }
    }

    /// No constraint but `type` applies to a scalar.
    fn scalar_type_only(&self) -> bool {
        self.minimum.is_none()
            && self.maximum.is_none()
            && self.min_length.is_none()
            && self.max_length.is_none()
            && self.pattern.is_none()
    }

    fn allows_type(&self, t: JsonType) -> bool {
        self.types.is_empty() || self.types.contains(&t)
    }

    fn type_violation(&self, got: &str, at: Path<'_>) -> SchemaViolation {
        let want: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
        let message = format!("expected {}, got {got}", want.join(" or "));
        violation(SchemaRule::Type, at, message)
    }

    fn check_count(&self, n: usize, at: Path<'_>, out: &mut Vec<SchemaViolation>) {
        let n = n as u64;
        if let Some(min) = self.min_items
            && n < min
        {
            let message = format!("{n} item(s), at least {min} required");
            out.push(violation(SchemaRule::MinItems, at, message));
        }
        if let Some(max) = self.max_items
            && n > max
        {
            let message = format!("{n} item(s), at most {max} allowed");
            out.push(violation(SchemaRule::MaxItems, at, message));
        }
    }

    fn check_string(&self, s: &str, at: Path<'_>, out: &mut Vec<SchemaViolation>) {
        if self.min_length.is_some() || self.max_length.is_some() {
            let chars = s.chars().count() as u64;
            if let Some(min) = self.min_length
                && chars < min
            {
                let message = format!("{chars} character(s), at least {min} required");
                out.push(violation(SchemaRule::MinLength, at, message));
            }
            if let Some(max) = self.max_length
                && chars > max
            {
                let message = format!("{chars} character(s), at most {max} allowed");
                out.push(violation(SchemaRule::MaxLength, at, message));
            }
        }
        if let Some((re, source)) = &self.pattern
            && !re.is_match(s)
        {
            let message = format!(
                "{} does not match /{source}/",
                short(&Value::String(s.to_string()))
            );
            out.push(violation(SchemaRule::Pattern, at, message));
        }
    }

    fn check_number(&self, n: &Number, at: Path<'_>, out: &mut Vec<SchemaViolation>) {
        let Some(x) = n.as_f64() else { return };
        if let Some((min, exclusive)) = self.minimum
            && (x < min || (exclusive && x == min))
        {
            let op = if exclusive { ">" } else { ">=" };
            out.push(violation(
                SchemaRule::Minimum,
                at,
                format!("{n} is not {op} {min}"),
            ));
        }
        if let Some((max, exclusive)) = self.maximum
            && (x > max || (exclusive && x == max))
        {
            let op = if exclusive { "<" } else { "<=" };
            out.push(violation(
                SchemaRule::Maximum,
                at,
                format!("{n} is not {op} {max}"),
            ));
        }
    }

    /// `required`, `properties` and `additionalProperties` over an object's members.
    fn check_members<'m>(
        &self,
        members: impl Iterator<Item = (&'m str, Member<'m>)>,
        has: impl Fn(&str) -> bool,
        at: Path<'_>,
        out: &mut Vec<SchemaViolation>,
    ) {
        for key in &self.required {
            if !has(key) {
                let message = format!("required member `{key}` is missing");
                out.push(violation(
                    SchemaRule::Required,
                    Some(&Frame::key(at, key)),
                    message,
                ));
            }
        }
        for (key, member) in members {
            let here = Frame::key(at, key);
            let schema = match (self.property(key), &self.additional) {
                (Some(s), _) => s,
                (None, Additional::Any) => continue,
                (None, Additional::None) => {
                    let message = format!("`{key}` is not in the plan");
                    out.push(violation(
                        SchemaRule::AdditionalProperties,
                        Some(&here),
                        message,
                    ));
                    continue;
                }
                (None, Additional::Schema(s)) => s,
            };
            match member {
                Member::Parsed(v) => schema.check(v, Some(&here), out),
                Member::Raw(r) => schema.check_raw(r, Some(&here), out),
            }
        }
    }
}

/// Where a checked value is: a chain of borrowed frames up to the root (`None`), turned into
/// a [`SchemaViolation`] path only when something is wrong, so a value that passes costs no
/// allocation.
pub type Path<'a> = Option<&'a Frame<'a>>;

/// One step of a [`Path`].
pub struct Frame<'a> {
    parent: Path<'a>,
    step: FrameStep<'a>,
}

enum FrameStep<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> Frame<'a> {
    /// The member `key` of the value at `parent`.
    pub fn key(parent: Path<'a>, key: &'a str) -> Self {
        Self {
            parent,
            step: FrameStep::Key(key),
        }
    }

    fn index(parent: Path<'a>, i: usize) -> Self {
        Self {
            parent,
            step: FrameStep::Index(i),
        }
    }
}

fn to_steps(at: Path<'_>) -> Vec<PathStep> {
    let mut steps = Vec::new();
    let mut cur = at;
    while let Some(f) = cur {
        steps.push(match f.step {
            FrameStep::Key(k) => PathStep::Key(k.to_string()),
            FrameStep::Index(i) => PathStep::Index(i),
        });
        cur = f.parent;
    }
    steps.reverse();
    steps
}

fn violation(rule: SchemaRule, at: Path<'_>, message: String) -> SchemaViolation {
    SchemaViolation {
        rule,
        path: to_steps(at),
        message,
    }
}

/// A member of an object being checked: parsed, or still JSON text.
enum Member<'a> {
    Parsed(&'a Value),
    Raw(&'a str),
}

/// The type of a scalar's JSON text from its first bytes (numbers: integer unless written with a
/// fraction or exponent that makes them one), with its name as [`type_name`] gives it; `None`
/// for anything else.
fn raw_scalar_type(text: &str) -> Option<(JsonType, &'static str)> {
    match text.as_bytes().first()? {
        b'"' => Some((JsonType::String, "string")),
        b't' | b'f' => Some((JsonType::Boolean, "boolean")),
        b'n' => Some((JsonType::Null, "null")),
        b'-' | b'0'..=b'9' => {
            if !text.contains(['.', 'e', 'E']) {
                return Some((JsonType::Integer, "integer"));
            }
            // `1.0` is an integer to JSON Schema, though `type_name` calls it a number.
            let n: Number = serde_json::from_str(text).ok()?;
            let whole = n.as_f64().is_some_and(|f| f.fract() == 0.0);
            Some((
                if whole {
                    JsonType::Integer
                } else {
                    JsonType::Number
                },
                "number",
            ))
        }
        _ => None,
    }
}

/// An object's members as borrowed JSON text, in document order (keys unescaped only when
/// they contain escapes).
struct RawMembers<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<RawKey<'de>, &'de RawValue>()? {
                    out.push((k.0, v));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct RawKey<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for RawKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl<'de> Visitor<'de> for Key {
            type Value = RawKey<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Key)
    }
}

fn compile(schema: &Value, at: &str, depth: usize) -> Result<JsonSchema, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "{at}: schemas nested deeper than {MAX_SCHEMA_DEPTH} levels"
        ));
    }
    let obj = match schema {
        Value::Bool(true) => return Ok(JsonSchema::any()),
        Value::Bool(false) => {
            return Ok(JsonSchema {
                never: true,
                ..JsonSchema::any()
            });
        }
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "{at}: a schema must be an object or a boolean, got {}",
                type_name(other)
            ));
        }
    };
    let mut s = JsonSchema::any();
    for (key, v) in obj {
        let here = format!("{at}.{key}");
        match key.as_str() {
            "type" => {
                let names: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for n in names {
                    let t = n
                        .as_str()
                        .and_then(JsonType::parse)
                        .ok_or_else(|| format!("{here}: unknown type {n}"))?;
                    s.types.push(t);
                }
            }
            "enum" => {
                let a = v
                    .as_array()
                    .ok_or_else(|| format!("{here}: must be an array"))?;
                s.enumeration = Some(a.clone());
            }
            "const" => s.constant = Some(v.clone()),
            "properties" => {
                let o = v
                    .as_object()
                    .ok_or_else(|| format!("{here}: must be an object"))?;
                for (name, sub) in o {
                    s.properties.push((
                        name.clone(),
                        compile(sub, &format!("{here}.{name}"), depth + 1)?,
                    ));
                }
            }
            "required" => {
                let a = v
                    .as_array()
                    .ok_or_else(|| format!("{here}: must be an array of names"))?;
                for n in a {
                    s.required.push(
                        n.as_str()
                            .ok_or_else(|| format!("{here}: {n} is not a name"))?
                            .to_string(),
                    );
                }
            }
            "additionalProperties" => {
                s.additional = match v {
                    Value::Bool(true) => Additional::Any,
                    Value::Bool(false) => Additional::None,
                    other => Additional::Schema(Box::new(compile(other, &here, depth + 1)?)),
                }
            }
            "items" => {
                if v.is_array() {
                    return Err(format!(
                        "{here}: tuple validation (an array of schemas) is not supported"
                    ));
                }
                s.items = Some(Box::new(compile(v, &here, depth + 1)?));
            }
            "minimum" => s.minimum = Some((number(v, &here)?, false)),
            "maximum" => s.maximum = Some((number(v, &here)?, false)),
            "exclusiveMinimum" => s.minimum = Some((number(v, &here)?, true)),
            "exclusiveMaximum" => s.maximum = Some((number(v, &here)?, true)),
            "minLength" => s.min_length = Some(count(v, &here)?),
            "maxLength" => s.max_length = Some(count(v, &here)?),
            "minItems" => s.min_items = Some(count(v, &here)?),
            "maxItems" => s.max_items = Some(count(v, &here)?),
            "pattern" => {
                let p = v
                    .as_str()
                    .ok_or_else(|| format!("{here}: must be a string"))?;
                let re = regex_lite::Regex::new(p)
                    .map_err(|e| format!("{here}: invalid pattern: {e}"))?;
                s.pattern = Some((re, p.to_string()));
            }
            k if ANNOTATIONS.contains(&k) => {}
            other => {
                return Err(format!(
                    "{here}: keyword `{other}` is not supported (supported: type, enum, const, \
                     properties, required, additionalProperties, items, minimum, maximum, \
                     exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern, \
                     minItems, maxItems; annotations such as title, description and format are \
                     accepted and not checked)"
                ));
            }
        }
    }
    Ok(s)
}

fn number(v: &Value, at: &str) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{at}: must be a number"))
}

fn count(v: &Value, at: &str) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{at}: must be a non-negative integer"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`, as JSON Schema says).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A value for a message, cut to a readable length (values come from events).
fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut cut = 57;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn short_list(values: &[Value]) -> String {
    let shown: Vec<String> = values.iter().take(8).map(short).collect();
    let more = if values.len() > 8 { ", ..." } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn violations(schema: Value, value: Value) -> Vec<(SchemaRule, String)> {
        let s = JsonSchema::compile(&schema, "schema").unwrap();
        let mut out = Vec::new();
        s.check(&value, None, &mut out);
        let mut got: Vec<(SchemaRule, String)> =
            out.into_iter().map(|v| (v.rule, v.dotted_path())).collect();
        // Checking the text finds the same, with the same messages.
        let text = serde_json::to_string(&value).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.check(&value, None, &mut a);
        s.check_raw(&text, None, &mut b);
        let key = |v: &SchemaViolation| (v.rule, v.dotted_path(), v.message.clone());
        let mut a: Vec<_> = a.iter().map(key).collect();
        let mut b: Vec<_> = b.iter().map(key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "check and check_raw agree on {text}");
        got.sort();
        got
    }

    #[test]
    fn object_rules() {
        let schema = json!({
            "type": "object",
            "properties": {
                "plan": {"type": "string", "enum": ["free", "pro"]},
                "seats": {"type": "integer", "minimum": 1, "maximum": 1000},
                "email": {"type": ["string", "null"], "pattern": "^[^@]+@[^@]+$"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}
            },
            "required": ["plan", "seats"],
            "additionalProperties": false
        });
        assert_eq!(
            violations(
                schema.clone(),
                json!({"plan": "pro", "seats": 3.0, "email": null})
            ),
            vec![]
        );
        let mut got = violations(
            schema,
            json!({"plan": "gold", "email": "nope", "tags": ["a", "toolong", "c"], "x": 1}),
        );
        got.sort();
        assert_eq!(
            got,
            vec![
                (SchemaRule::Required, "seats".into()),
                (SchemaRule::Enum, "plan".into()),
                (SchemaRule::AdditionalProperties, "x".into()),
                (SchemaRule::Pattern, "email".into()),
                (SchemaRule::MaxLength, "tags.1".into()),
                (SchemaRule::MaxItems, "tags".into()),
            ]
        );
    }

    #[test]
    fn a_wrong_type_is_one_violation_and_numbers_compare_by_value() {
        let schema = json!({"type": "integer", "enum": [1, 2], "minimum": 0});
        assert_eq!(
            violations(schema.clone(), json!("1")),
            vec![(SchemaRule::Type, String::new())]
        );
        assert_eq!(violations(schema.clone(), json!(1.0)), vec![]);
        assert_eq!(
            violations(json!({"exclusiveMaximum": 10}), json!(10)),
            vec![(SchemaRule::Maximum, String::new())]
        );
        assert_eq!(
            violations(json!(false), json!(null)),
            vec![(SchemaRule::Never, String::new())]
        );
    }

    #[test]
    fn checking_text_agrees_with_checking_values() {
        // `violations` asserts that check and check_raw agree; these cover the raw shortcuts.
        let schemas = [
            json!({"type": "integer"}),
            json!({"type": "number"}),
            json!({"type": ["string", "null"]}),
            json!({"type": "boolean"}),
            json!({"type": "object"}),
            json!({"type": "array"}),
            json!({"enum": [1, "a", null, {"x": [1]}]}),
            json!({"const": {"a": 1}}),
            json!({"type": "string", "pattern": "^\\w+$", "maxLength": 3}),
            json!({"properties": {"a": {"type": "integer"}, "b": {"items": {"type": "string"}}},
                "required": ["c"], "additionalProperties": {"type": "boolean"}}),
            json!({"items": {"properties": {"k": {"minimum": 2}}}, "minItems": 2}),
            json!(false),
            json!(true),
        ];
        let values = [
            json!(1),
            json!(1.0),
            json!(-2.5),
            json!(1e3),
            json!("abé"),
            json!("a\"b\u{e9}\\n"),
            json!(true),
            json!(null),
            json!([]),
            json!(["x", 1, {"k": 1}]),
            json!({"a": 1.0, "b": ["s", 2], "z": true, "y": "no", "a\"q": false}),
            json!({"x": [1]}),
            json!({"a": 1}),
        ];
        for s in &schemas {
            for v in &values {
                violations(s.clone(), v.clone());
            }
        }
    }

    #[test]
    fn unsupported_keywords_are_refused_with_their_place() {
        let e = JsonSchema::compile(
            &json!({"properties": {"a": {"anyOf": [{"type": "string"}]}}}),
            "rules[0]",
        )
        .unwrap_err();
        assert!(
            e.starts_with("rules[0].properties.a.anyOf: keyword `anyOf`"),
            "{e}"
        );
        let e = JsonSchema::compile(&json!({"type": "strnig"}), "r").unwrap_err();
        assert!(e.contains("unknown type"), "{e}");
        let e = JsonSchema::compile(&json!({"pattern": "("}), "r").unwrap_err();
        assert!(e.contains("invalid pattern"), "{e}");
        // Annotations are fine.
        JsonSchema::compile(
            &json!({"description": "x", "format": "date-time", "type": "string"}),
            "r",
        )
        .unwrap();
    }

    #[test]
    fn deep_schemas_are_refused_not_overflowed() {
        let mut s = json!({"type": "object"});
        for _ in 0..100 {
            s = json!({"properties": {"a": s}});
        }
        assert!(JsonSchema::compile(&s, "r").unwrap_err().contains("deeper"));
    }
}
