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

use serde_json::{Map, Value};

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

    /// Checks `value`, appending what it breaks to `out`; `path` is the value's path from the
    /// checked root.
    pub fn check(&self, value: &Value, path: &mut Vec<PathStep>, out: &mut Vec<SchemaViolation>) {
        let mut push = |rule: SchemaRule, message: String, path: &Vec<PathStep>| {
            out.push(SchemaViolation {
                rule,
                path: path.clone(),
                message,
            })
        };
        if self.never {
            push(SchemaRule::Never, "no value is allowed here".into(), path);
            return;
        }
        if !self.types.is_empty() && !self.types.iter().any(|t| t.matches(value)) {
            let want: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
            push(
                SchemaRule::Type,
                format!("expected {}, got {}", want.join(" or "), type_name(value)),
                path,
            );
            // The other constraints describe a value of the right type.
            return;
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.iter().any(|a| json_eq(a, value))
        {
            push(
                SchemaRule::Enum,
                format!("{} is not one of {}", short(value), short_list(allowed)),
                path,
            );
        }
        if let Some(c) = &self.constant
            && !json_eq(c, value)
        {
            push(
                SchemaRule::Const,
                format!("{} is not {}", short(value), short(c)),
                path,
            );
        }
        match value {
            Value::Object(members) => self.check_object(members, path, out),
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(min) = self.min_items
                    && n < min
                {
                    out.push(SchemaViolation {
                        rule: SchemaRule::MinItems,
                        path: path.clone(),
                        message: format!("{n} item(s), at least {min} required"),
                    });
                }
                if let Some(max) = self.max_items
                    && n > max
                {
                    out.push(SchemaViolation {
                        rule: SchemaRule::MaxItems,
                        path: path.clone(),
                        message: format!("{n} item(s), at most {max} allowed"),
                    });
                }
                if let Some(item_schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        path.push(PathStep::Index(i));
                        item_schema.check(item, path, out);
                        path.pop();
                    }
                }
            }
            Value::String(s) => {
                let chars = s.chars().count() as u64;
                if let Some(min) = self.min_length
                    && chars < min
                {
                    out.push(SchemaViolation {
                        rule: SchemaRule::MinLength,
                        path: path.clone(),
                        message: format!("{chars} character(s), at least {min} required"),
                    });
                }
                if let Some(max) = self.max_length
                    && chars > max
                {
                    out.push(SchemaViolation {
                        rule: SchemaRule::MaxLength,
                        path: path.clone(),
                        message: format!("{chars} character(s), at most {max} allowed"),
                    });
                }
                if let Some((re, source)) = &self.pattern
                    && !re.is_match(s)
                {
                    out.push(SchemaViolation {
                        rule: SchemaRule::Pattern,
                        path: path.clone(),
                        message: format!("{} does not match /{source}/", short(value)),
                    });
                }
            }
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return };
                if let Some((min, exclusive)) = self.minimum
                    && (x < min || (exclusive && x == min))
                {
                    let op = if exclusive { ">" } else { ">=" };
                    out.push(SchemaViolation {
                        rule: SchemaRule::Minimum,
                        path: path.clone(),
                        message: format!("{n} is not {op} {min}"),
                    });
                }
                if let Some((max, exclusive)) = self.maximum
                    && (x > max || (exclusive && x == max))
                {
                    let op = if exclusive { "<" } else { "<=" };
                    out.push(SchemaViolation {
                        rule: SchemaRule::Maximum,
                        path: path.clone(),
                        message: format!("{n} is not {op} {max}"),
                    });
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_object(
        &self,
        members: &Map<String, Value>,
        path: &mut Vec<PathStep>,
        out: &mut Vec<SchemaViolation>,
    ) {
        for key in &self.required {
            if !members.contains_key(key) {
                path.push(PathStep::Key(key.clone()));
                out.push(SchemaViolation {
                    rule: SchemaRule::Required,
                    path: path.clone(),
                    message: format!("required member `{key}` is missing"),
                });
                path.pop();
            }
        }
        for (key, v) in members {
            path.push(PathStep::Key(key.clone()));
            match self.property(key) {
                Some(s) => s.check(v, path, out),
                None => match &self.additional {
                    Additional::Any => {}
                    Additional::None => out.push(SchemaViolation {
                        rule: SchemaRule::AdditionalProperties,
                        path: path.clone(),
                        message: format!("`{key}` is not in the plan"),
                    }),
                    Additional::Schema(s) => s.check(v, path, out),
                },
            }
            path.pop();
        }
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
        s.check(&value, &mut Vec::new(), &mut out);
        out.into_iter().map(|v| (v.rule, v.dotted_path())).collect()
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
