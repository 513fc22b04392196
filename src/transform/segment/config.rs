//! `[transform_segment]`: which Pendo fields audience membership writes, how Segment users
//! become Pendo visitors, which event fields name a Pendo visitor id (identity learning), and the
//! rules that map non-audience events (`[[transform_segment.rules]]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::transform::message_id::MAX_PREFIX_LEN;
use crate::transform::segment_rules::{SegmentRuleConfig, SegmentRules};
use crate::transform::segment_to_pendo::{
    AudienceTarget, FieldMode, SegmentMapperSettings, UnmappedUserPolicy,
};

/// Settings of the `transform-segment` role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSegmentConfig {
    /// `per_audience_boolean` (field `<field_prefix><audience_key>` = true/false),
    /// `audience_list` (one list field, `audience_list_field`, of the entity's current audience
    /// keys; the Pendo sink keeps the membership in `state.pendo-audience-lists`) or `both`.
    pub field_mode: FieldMode,
    /// The list field of `audience_list` / `both` (a Pendo field name: letters, digits, `_`,
    /// not starting with a digit; created in Pendo as a list field).
    pub audience_list_field: String,
    /// Prefix of per-audience field names; with the key it must form a Pendo field name
    /// (letters, digits, `_`; other characters of keys become `_`).
    pub field_prefix: String,
    /// Pendo field group written: `custom` (fields created under Data Mappings) or `agent`.
    pub field_group: String,
    /// Segment users with no Pendo visitor in `idmap.visitor-to-user`: `use_user_id` (visitor
    /// id = userId), `drop` (counted) or `dlq`.
    pub unmapped_user: UnmappedUserPolicy,
    /// Traits (`traits` or `context.traits`) holding the Pendo visitor id; such events also
    /// publish the visitor -> user mapping (identity learning). Empty disables. A trust
    /// decision: whoever can set these traits in a Segment event (client-side sources, anyone
    /// sending to the webhook) can remap a visitor to another user for both flows, so list only
    /// fields that trusted (server-side) sources set.
    pub visitor_id_traits: Vec<String>,
    /// `context.externalIds[].type` values whose `id` is the Pendo visitor id (identity
    /// learning, the same trust decision as `visitor_id_traits`). Empty disables.
    pub visitor_id_external_types: Vec<String>,
    /// Namespace of update ids (`<prefix>-<hash>`), at most 60 characters. Changing it makes
    /// replayed events new to the Pendo sink's de-duplication.
    pub update_id_prefix: String,
    /// Where audiences not listed in `audience_targets` are written: `field` (a metadata field,
    /// `field_mode`), `pendo_segment` (a Pendo Segment per audience, visitors only) or `both`.
    pub audience_target: AudienceTarget,
    /// Target per audience key, e.g. `{ "power_users_30d" = "pendo_segment" }`.
    pub audience_targets: BTreeMap<String, AudienceTarget>,
    /// Pendo Segments are named `<prefix><audience_key>` (at most 100 characters in all is
    /// advised; the name is set once, at creation).
    pub pendo_segment_name_prefix: String,
    /// Rules mapping non-audience identify/track/group calls to metadata writes
    /// (`[[transform_segment.rules]]`, see `segment_rules`). None: such events are ignored
    /// (counted), as before rules existed. Last, so the rendered config keeps its tables last.
    pub rules: Vec<SegmentRuleConfig>,
}

impl Default for TransformSegmentConfig {
    fn default() -> Self {
        let d = SegmentMapperSettings::default();
        Self {
            field_mode: d.field_mode,
            audience_list_field: d.audience_list_field,
            field_prefix: d.field_prefix,
            field_group: d.field_group,
            unmapped_user: d.unmapped_user,
            visitor_id_traits: d.visitor_id_traits,
            visitor_id_external_types: d.visitor_id_external_types,
            update_id_prefix: d.update_id_prefix,
            audience_target: d.audience_target,
            audience_targets: d.audience_targets,
            pendo_segment_name_prefix: d.pendo_segment_name_prefix,
            rules: Vec::new(),
        }
    }
}

impl TransformSegmentConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.audience_list_field;
        if f.len() > 64
            || !f
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "transform_segment.audience_list_field must be 1 to 64 letters, digits or '_', starting with a letter or '_' (a Pendo field name), got {f:?}"
            ));
        }
        let p = &self.field_prefix;
        if p.len() > 64
            || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || p.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!(
                "transform_segment.field_prefix must be at most 64 letters, digits or '_', not starting with a digit (a Pendo field name), got {p:?}"
            ));
        }
        if !matches!(self.field_group.as_str(), "custom" | "agent") {
            return Err(format!(
                "transform_segment.field_group must be \"custom\" or \"agent\", got {:?}",
                self.field_group
            ));
        }
        let p = &self.update_id_prefix;
        if p.is_empty() || p.len() > MAX_PREFIX_LEN || !p.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "transform_segment.update_id_prefix must be 1 to {MAX_PREFIX_LEN} printable ASCII characters, got {p:?}"
            ));
        }
        for (key, names) in [
            ("visitor_id_traits", &self.visitor_id_traits),
            ("visitor_id_external_types", &self.visitor_id_external_types),
        ] {
            if names.iter().any(|n| n.trim().is_empty()) {
                return Err(format!("transform_segment.{key} holds an empty name"));
            }
        }
        for key in self.audience_targets.keys() {
            if key.trim().is_empty() || key.trim() != key || key.chars().any(char::is_control) {
                return Err(format!(
                    "transform_segment.audience_targets: {key:?} is not an audience key (empty, padded or with control characters)"
                ));
            }
        }
        let p = &self.pendo_segment_name_prefix;
        if p.chars().count() > 100 || p.chars().any(char::is_control) {
            return Err(format!(
                "transform_segment.pendo_segment_name_prefix must be at most 100 characters without control characters, got {p:?}"
            ));
        }
        self.compiled_rules()?;
        Ok(())
    }

    /// The checked `rules`; the error names the rule and its bad key or field.
    pub fn compiled_rules(&self) -> Result<SegmentRules, String> {
        SegmentRules::compile(&self.rules, &self.field_group)
    }

    /// Whether any audience (the default or a listed one) is written to a Pendo Segment.
    pub fn uses_pendo_segments(&self) -> bool {
        self.audience_target.writes_segment()
            || self.audience_targets.values().any(|t| t.writes_segment())
    }

    /// The mapper settings for events from `source`.
    pub fn mapper_settings(&self, source: &str) -> SegmentMapperSettings {
        SegmentMapperSettings {
            field_prefix: self.field_prefix.clone(),
            field_group: self.field_group.clone(),
            unmapped_user: self.unmapped_user,
            visitor_id_traits: self.visitor_id_traits.clone(),
            visitor_id_external_types: self.visitor_id_external_types.clone(),
            update_id_prefix: self.update_id_prefix.clone(),
            source: source.to_string(),
            audience_target: self.audience_target,
            audience_targets: self.audience_targets.clone(),
            pendo_segment_name_prefix: self.pendo_segment_name_prefix.clone(),
            field_mode: self.field_mode,
            audience_list_field: self.audience_list_field.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_invalid_values_are_refused() {
        TransformSegmentConfig::default().validate().unwrap();
        for mode in ["per_audience_boolean", "audience_list", "both"] {
            let c: TransformSegmentConfig =
                toml::from_str(&format!("field_mode = \"{mode}\"\n")).unwrap();
            c.validate().unwrap();
            assert_eq!(c.field_mode.name(), mode);
            assert_eq!(c.mapper_settings("s").field_mode, c.field_mode);
        }
        let c: TransformSegmentConfig =
            toml::from_str("field_mode = \"audience_list\"\naudience_list_field = \"audiences\"\n")
                .unwrap();
        assert_eq!(c.mapper_settings("s").audience_list_field, "audiences");
        assert_eq!(
            TransformSegmentConfig::default().audience_list_field,
            "segment_audiences"
        );
        for bad in [
            TransformSegmentConfig {
                field_mode: FieldMode::AudienceList,
                audience_list_field: String::new(),
                ..Default::default()
            },
            TransformSegmentConfig {
                audience_list_field: "9lists".into(),
                ..Default::default()
            },
            TransformSegmentConfig {
                audience_list_field: "my-audiences".into(),
                ..Default::default()
            },
            TransformSegmentConfig {
                field_prefix: "segment-".into(),
                ..Default::default()
            },
            TransformSegmentConfig {
                field_group: "other".into(),
                ..Default::default()
            },
            TransformSegmentConfig {
                update_id_prefix: String::new(),
                ..Default::default()
            },
            TransformSegmentConfig {
                visitor_id_traits: vec![" ".into()],
                ..Default::default()
            },
            TransformSegmentConfig {
                audience_targets: BTreeMap::from([(" k".into(), AudienceTarget::Both)]),
                ..Default::default()
            },
            TransformSegmentConfig {
                pendo_segment_name_prefix: "a\nb".into(),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_parse_per_audience_and_unknown_targets_are_refused_by_name() {
        let c: TransformSegmentConfig = toml::from_str(
            "audience_target = \"both\"\naudience_targets = { power_users = \"pendo_segment\", trial = \"field\" }\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.uses_pendo_segments());
        assert_eq!(
            c.audience_targets["power_users"],
            AudienceTarget::PendoSegment
        );
        assert!(!TransformSegmentConfig::default().uses_pendo_segments());
        let e = toml::from_str::<TransformSegmentConfig>(
            "audience_targets = { power_users = \"segment\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pendo_segment") && e.contains("segment"), "{e}");
    }

    #[test]
    fn rules_parse_as_tables_and_a_bad_rule_is_refused_by_index_and_name() {
        let c: TransformSegmentConfig = toml::from_str(
            "field_group = \"agent\"\n\n[[rules]]\nname = \"traits\"\nmatch = { type = \"identify\" }\ntarget = \"visitor\"\nfields = { plan = \"traits.plan\" }\n",
        )
        .unwrap();
        c.validate().unwrap();
        let rules = c.compiled_rules().unwrap();
        let r: Vec<_> = rules.matching("identify", None).collect();
        assert_eq!(
            r[0].field_group, "agent",
            "the section's field group is the default"
        );
        // The effective configuration renders (tables last) and reads back the same.
        let text = toml::to_string_pretty(&c).unwrap();
        let back: TransformSegmentConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.rules, c.rules);
        let bad = TransformSegmentConfig {
            rules: vec![c.rules[0].clone(), {
                let mut r = c.rules[0].clone();
                r.name = "second".into();
                r.fields = BTreeMap::from([("plan tier".into(), "traits.plan".into())]);
                r
            }],
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(
            e.contains("rules.1 (rule 2")
                && e.contains("\"second\"")
                && e.contains("\"plan tier\""),
            "{e}"
        );
        assert!(
            TransformSegmentConfig::default()
                .compiled_rules()
                .unwrap()
                .is_empty()
        );
    }
}
