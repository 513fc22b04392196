//! Mapping rules for Segment events that are not audience deliveries (`[[transform_segment.rules]]`).
//!
//! Audience membership is mapped by `segment_to_pendo` itself; ordinary `identify`, `track` and
//! `group` calls were only counted as ignored. A rule turns such a call into one Pendo metadata
//! write, as data rather than code: which calls it matches, which entity it writes (the visitor,
//! or an account), and which Pendo field takes the value at which dotted path of the event:
//!
//! ```toml
//! [[transform_segment.rules]]
//! name = "plan-upgraded"                              # metric label and update-id input
//! match = { type = "track", event = "Plan Upgraded" } # type: identify | track | group
//! target = "visitor"                                  # or "account"
//! fields = { plan = "properties.plan", mrr = "properties.mrr" }
//! # account_id_from = "context.groupId"               # accounts: default `groupId` (group calls)
//! # field_group = "agent"                             # default: transform_segment.field_group
//! ```
//!
//! Paths are dotted paths from the root of the Segment event, as the `from`/`set` paths of the
//! forward mapping file are from the root of the Pendo event ([`JsonPath`]). Field names are
//! written as they are (no `field_prefix`), so they must already be Pendo field names.
//!
//! Values: strings, numbers, booleans and `null` (which clears the field) are written; a path
//! that is absent leaves its field unwritten (counted as `missing`); an object or an array is no
//! value a Pendo field holds (text, number, boolean, date), so the event is dead-lettered
//! (`invalid_rule_value`, naming the rule, field and path) rather than written half or as text
//! nobody asked for: point the path at a scalar inside it instead.
//!
//! Every rule is checked when the role starts; each error names the rule (`rules.<index>` from
//! 0, as serde's own errors do, its position from 1, and its name) and the key or field that is
//! wrong.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::metrics;
use crate::pendo_api::fields::{FIELD_GROUPS, valid_field_name};
use crate::schema::pendo_metadata_update::{FieldValue, PendoEntity};
use crate::transform::json_path::JsonPath;

/// Stage label of the rule metrics (the only role that applies rules).
const STAGE: &str = "transform-segment";

/// Segment call types a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleCallType {
    /// `identify`: user traits.
    Identify,
    /// `track`: an event, optionally only one event name.
    Track,
    /// `group`: account traits (`groupId`).
    Group,
}

impl RuleCallType {
    /// The call type as Segment writes it.
    pub fn name(self) -> &'static str {
        match self {
            RuleCallType::Identify => "identify",
            RuleCallType::Track => "track",
            RuleCallType::Group => "group",
        }
    }
}

/// Which Pendo entity a rule writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTarget {
    /// The event's user, resolved like audience events (named visitor id, reverse id mapping,
    /// `unmapped_user`).
    Visitor,
    /// The account whose id is at `account_id_from` (default `groupId`).
    Account,
}

/// Which events a rule matches (`match = { type = "track", event = "Plan Upgraded" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// The call type (case-insensitive in events).
    #[serde(rename = "type")]
    pub call_type: RuleCallType,
    /// Track calls only: the exact event name (Segment event names are case-sensitive). Absent:
    /// every track call that is not an audience delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// One rule as written in `[[transform_segment.rules]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRuleConfig {
    /// Letters, digits, `_` and `-`, unique: the `rule` label of
    /// `pendo_segment_transform_rule_fields_total` and part of the update id (so reordering
    /// rules does not change ids).
    pub name: String,
    /// Which events the rule applies to.
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    /// The visitor or an account.
    pub target: RuleTarget,
    /// `target = "account"`: the dotted path of the account id (default `groupId`, which only
    /// group calls carry, so identify/track rules must name one, e.g. `context.groupId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id_from: Option<String>,
    /// Pendo field name -> dotted path in the event.
    pub fields: BTreeMap<String, String>,
    /// `custom` or `agent`; default: `transform_segment.field_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_group: Option<String>,
}

/// A checked rule, paths parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRule {
    /// The rule's name.
    pub name: String,
    /// Matched call type.
    pub call_type: RuleCallType,
    /// Matched event name (track).
    pub event: Option<String>,
    /// Visitor or account.
    pub entity: PendoEntity,
    /// Where the account id is (accounts).
    pub account_id_from: Option<JsonPath>,
    /// Pendo field -> path, in field-name order.
    pub fields: Vec<(String, JsonPath)>,
    /// `custom` or `agent`.
    pub field_group: String,
}

/// What a rule read from one event.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleValues {
    /// Fields to write (never objects or arrays).
    pub values: BTreeMap<String, FieldValue>,
    /// Fields whose path the event does not have (not written).
    pub missing: Vec<String>,
}

/// Every configured rule, checked, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentRules {
    rules: Vec<SegmentRule>,
}

impl SegmentRules {
    /// Checks `rules`; `default_group` is `transform_segment.field_group`. The error names the
    /// rule (index, position and name) and what is wrong with it.
    pub fn compile(rules: &[SegmentRuleConfig], default_group: &str) -> Result<Self, String> {
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            // `rules.<index>` as serde names the rule in its own errors (0-based).
            let at = |what: String| {
                format!(
                    "transform_segment.rules.{i} (rule {} of the file, name {:?}): {what}",
                    i + 1,
                    r.name
                )
            };
            let n = &r.name;
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(at(
                    "`name` must be letters, digits, `_` or `-` (it is a metric label)".into(),
                ));
            }
            if !names.insert(n.as_str()) {
                return Err(at(format!(
                    "`name` {n:?} is used by an earlier rule; names must be unique"
                )));
            }
            let m = &r.matches;
            match (&m.event, m.call_type) {
                (Some(_), t) if t != RuleCallType::Track => {
                    return Err(at(format!(
                        "`match.event` needs `match.type = \"track\"` (a {} call has no event name)",
                        t.name()
                    )));
                }
                (Some(e), _) if e.trim().is_empty() => {
                    return Err(at("`match.event` is empty".into()));
                }
                _ => {}
            }
            let path = |key: &str, text: &str| {
                JsonPath::parse(text).ok_or_else(|| {
                    at(format!(
                        "{key}: {text:?} is not a dotted path (e.g. \"traits.plan\")"
                    ))
                })
            };
            let account_id_from = match (r.target, &r.account_id_from) {
                (RuleTarget::Visitor, Some(_)) => {
                    return Err(at(
                        "`account_id_from` is only for `target = \"account\"`".into()
                    ));
                }
                (RuleTarget::Visitor, None) => None,
                (RuleTarget::Account, Some(p)) => Some(path("account_id_from", p)?),
                (RuleTarget::Account, None) if m.call_type == RuleCallType::Group => {
                    Some(JsonPath::parse("groupId").expect("path"))
                }
                (RuleTarget::Account, None) => {
                    return Err(at(format!(
                        "`target = \"account\"` on {} calls needs `account_id_from` (only group calls carry `groupId`), e.g. \"context.groupId\"",
                        m.call_type.name()
                    )));
                }
            };
            if r.fields.is_empty() {
                return Err(at("`fields` is empty: name at least one Pendo field".into()));
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for (field, p) in &r.fields {
                if !valid_field_name(field) {
                    return Err(at(format!(
                        "fields: {field:?} is not a Pendo field name (letters, digits and `_`, starting with a letter or `_`)"
                    )));
                }
                fields.push((field.clone(), path(&format!("fields.{field}"), p)?));
            }
            let field_group = r.field_group.as_deref().unwrap_or(default_group);
            if !FIELD_GROUPS.contains(&field_group) {
                return Err(at(format!(
                    "`field_group` must be \"custom\" or \"agent\", got {field_group:?}"
                )));
            }
            out.push(SegmentRule {
                name: n.clone(),
                call_type: m.call_type,
                event: m.event.clone(),
                entity: match r.target {
                    RuleTarget::Visitor => PendoEntity::Visitor,
                    RuleTarget::Account => PendoEntity::Account,
                },
                account_id_from,
                fields,
                field_group: field_group.to_string(),
            });
        }
        Ok(Self { rules: out })
    }

    /// Whether no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules matching a call of `call_type` (lower case) with track event name `event`, in
    /// file order.
    pub fn matching<'a>(
        &'a self,
        call_type: &'a str,
        event: Option<&'a str>,
    ) -> impl Iterator<Item = &'a SegmentRule> + 'a {
        self.rules.iter().filter(move |r| {
            r.call_type.name() == call_type
                && r.event
                    .as_deref()
                    .is_none_or(|wanted| event == Some(wanted))
        })
    }
}

/// A Pendo field value from a JSON scalar; `None` for objects and arrays.
fn field_value(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Null => FieldValue::Null,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::String(s) => FieldValue::Text(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::Long(i),
            // Beyond i64 (or fractional): a double, Pendo's number type.
            None => FieldValue::Double(n.as_f64()?),
        },
        Value::Array(_) | Value::Object(_) => return None,
    })
}

impl SegmentRule {
    /// Reads the rule's fields from `event`; `Err` (the dead-letter detail) when a path holds
    /// an object or an array.
    pub fn read(&self, event: &Value) -> Result<RuleValues, String> {
        let mut out = RuleValues {
            values: BTreeMap::new(),
            missing: Vec::new(),
        };
        for (field, path) in &self.fields {
            match path.get(event) {
                None => out.missing.push(field.clone()),
                Some(v) => match field_value(v) {
                    Some(fv) => {
                        out.values.insert(field.clone(), fv);
                    }
                    None => {
                        self.count(field, "invalid");
                        let what = if v.is_array() {
                            "an array"
                        } else {
                            "an object"
                        };
                        return Err(format!(
                            "rule {:?}: field `{field}` reads `{path}`, which is {what}; Pendo fields hold text, numbers, booleans, dates or null (point the path at a value inside it)",
                            self.name
                        ));
                    }
                },
            }
        }
        Ok(out)
    }

    /// The account id the rule writes to (a non-empty string or a number at `account_id_from`).
    pub fn account_id(&self, event: &Value) -> Option<String> {
        match self.account_id_from.as_ref()?.get(event)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Counts one field of this rule: `written`, `missing` or `invalid`.
    pub fn count(&self, field: &str, result: &str) {
        metrics()
            .transform_rule_fields
            .with_label_values(&[STAGE, &self.name, field, result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Vec<SegmentRuleConfig> {
        #[derive(Deserialize)]
        struct Wrapper {
            rules: Vec<SegmentRuleConfig>,
        }
        toml::from_str::<Wrapper>(text).unwrap().rules
    }

    const RULES: &str = r#"
[[rules]]
name = "traits"
match = { type = "identify" }
target = "visitor"
fields = { plan = "traits.plan", seats = "traits.seats", company_name = "traits.company.name" }

[[rules]]
name = "plan-upgraded"
match = { type = "track", event = "Plan Upgraded" }
target = "visitor"
fields = { plan = "properties.plan", mrr = "properties.mrr" }
field_group = "agent"

[[rules]]
name = "account"
match = { type = "group" }
target = "account"
fields = { industry = "traits.industry" }
"#;

    #[test]
    fn rules_compile_with_defaults_and_match_by_type_and_event_name() {
        let rules = SegmentRules::compile(&parse(RULES), "custom").unwrap();
        let names = |t, e| {
            rules
                .matching(t, e)
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("identify", None), ["traits"]);
        assert_eq!(names("track", Some("Plan Upgraded")), ["plan-upgraded"]);
        assert!(names("track", Some("plan upgraded")).is_empty(), "exact");
        assert!(names("track", None).is_empty());
        assert_eq!(names("group", None), ["account"]);
        assert!(names("page", None).is_empty());
        let r: Vec<_> = rules.matching("group", None).collect();
        assert_eq!(r[0].entity, PendoEntity::Account);
        assert_eq!(r[0].field_group, "custom", "the section's field group");
        assert_eq!(
            r[0].account_id(&json!({"groupId": "acct-1"})).as_deref(),
            Some("acct-1")
        );
        assert_eq!(
            r[0].account_id(&json!({"groupId": 42})).as_deref(),
            Some("42")
        );
        assert_eq!(r[0].account_id(&json!({"groupId": " "})), None);
        assert_eq!(
            rules
                .matching("track", Some("Plan Upgraded"))
                .next()
                .unwrap()
                .field_group,
            "agent"
        );
        // A track rule without an event name matches every track call.
        let any = SegmentRules::compile(
            &parse("[[rules]]\nname = \"t\"\nmatch = { type = \"track\" }\ntarget = \"visitor\"\nfields = { x = \"properties.x\" }\n"),
            "custom",
        )
        .unwrap();
        assert_eq!(any.matching("track", Some("Anything")).count(), 1);
        assert!(SegmentRules::default().is_empty());
    }

    #[test]
    fn values_are_scalars_missing_paths_are_left_out_and_containers_refused() {
        let rules = SegmentRules::compile(&parse(RULES), "custom").unwrap();
        let rule = rules.matching("identify", None).next().unwrap();
        let read = rule
            .read(&json!({"traits": {"plan": "pro", "seats": 12, "company": {"name": null}}}))
            .unwrap();
        assert_eq!(
            read.values,
            BTreeMap::from([
                ("company_name".to_string(), FieldValue::Null),
                ("plan".to_string(), FieldValue::Text("pro".into())),
                ("seats".to_string(), FieldValue::Long(12)),
            ])
        );
        assert!(read.missing.is_empty());
        let read = rule
            .read(&json!({"traits": {"plan": true, "seats": 2.5}}))
            .unwrap();
        assert_eq!(read.values["plan"], FieldValue::Bool(true));
        assert_eq!(read.values["seats"], FieldValue::Double(2.5));
        assert_eq!(read.missing, ["company_name"]);
        let read = rule.read(&json!({"traits": {"seats": u64::MAX}})).unwrap();
        assert_eq!(read.values["seats"], FieldValue::Double(u64::MAX as f64));
        for bad in [
            json!({"traits": {"plan": {"tier": "pro"}}}),
            json!({"traits": {"plan": ["pro"]}}),
        ] {
            let e = rule.read(&bad).unwrap_err();
            assert!(
                e.contains("\"traits\"") && e.contains("`plan`") && e.contains("traits.plan"),
                "{e}"
            );
        }
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_rule_and_the_key() {
        let rule = |body: &str| {
            format!(
                "[[rules]]\nname = \"ok\"\nmatch = {{ type = \"identify\" }}\ntarget = \"visitor\"\nfields = {{ plan = \"traits.plan\" }}\n\n[[rules]]\n{body}\n"
            )
        };
        let cases = [
            (
                "name = \"bad name\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { a = \"traits.a\" }",
                "`name`",
            ),
            (
                "name = \"ok\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { a = \"traits.a\" }",
                "used by an earlier rule",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\", event = \"X\" }\ntarget = \"visitor\"\nfields = { a = \"traits.a\" }",
                "`match.event`",
            ),
            (
                "name = \"r\"\nmatch = { type = \"track\" }\ntarget = \"account\"\nfields = { a = \"properties.a\" }",
                "`account_id_from`",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\naccount_id_from = \"groupId\"\nfields = { a = \"traits.a\" }",
                "`account_id_from`",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = {}",
                "`fields` is empty",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { \"plan-tier\" = \"traits.plan\" }",
                "\"plan-tier\" is not a Pendo field name",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { \"9lives\" = \"traits.plan\" }",
                "\"9lives\" is not a Pendo field name",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { plan = \"traits..plan\" }",
                "fields.plan: \"traits..plan\" is not a dotted path",
            ),
            (
                "name = \"r\"\nmatch = { type = \"group\" }\ntarget = \"account\"\naccount_id_from = \"\"\nfields = { a = \"traits.a\" }",
                "account_id_from: \"\" is not a dotted path",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { a = \"traits.a\" }\nfield_group = \"other\"",
                "`field_group`",
            ),
        ];
        for (body, want) in cases {
            let e = SegmentRules::compile(&parse(&rule(body)), "custom").unwrap_err();
            assert!(
                e.starts_with("transform_segment.rules.1 (rule 2 of the file, name ")
                    && e.contains(want),
                "{body}: {e}"
            );
        }
        // Unknown keys and values serde refuses name themselves (and the line).
        for (body, want) in [
            (
                "name = \"r\"\nmatch = { type = \"page\" }\ntarget = \"visitor\"\nfields = {}",
                "page",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"user\"\nfields = {}",
                "user",
            ),
            (
                "name = \"r\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfield = {}",
                "field",
            ),
        ] {
            #[derive(Debug, Deserialize)]
            #[allow(dead_code)]
            struct Wrapper {
                rules: Vec<SegmentRuleConfig>,
            }
            let e = toml::from_str::<Wrapper>(&rule(body))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
