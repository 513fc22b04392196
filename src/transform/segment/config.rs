//! `[transform_segment]`: which Pendo fields audience membership writes, how Segment users
//! become Pendo visitors, which event fields name a Pendo visitor id (identity learning), and the
//! rules that map non-audience events (`[[transform_segment.rules]]`).

use serde::{Deserialize, Serialize};

use crate::transform::message_id::MAX_PREFIX_LEN;
use crate::transform::segment_rules::{SegmentRuleConfig, SegmentRules};
use crate::transform::segment_to_pendo::SegmentMapperSettings;

/// Settings of the `transform-segment` role.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSegmentConfig {
    /// How audience events are mapped (the keys sit directly in `[transform_segment]`).
    #[serde(flatten)]
    pub mapping: SegmentMapperSettings,
    /// Rules mapping non-audience identify/track/group calls to metadata writes
    /// (`[[transform_segment.rules]]`, see `segment_rules`). None: such events are ignored
    /// (counted), as before rules existed. Last, so the rendered config keeps its tables last.
    pub rules: Vec<SegmentRuleConfig>,
}

impl TransformSegmentConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.mapping.audience_list_field;
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
        let p = &self.mapping.field_prefix;
        if p.len() > 64
            || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || p.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!(
                "transform_segment.field_prefix must be at most 64 letters, digits or '_', not starting with a digit (a Pendo field name), got {p:?}"
            ));
        }
        if !matches!(self.mapping.field_group.as_str(), "custom" | "agent") {
            return Err(format!(
                "transform_segment.mapping.field_group must be \"custom\" or \"agent\", got {:?}",
                self.mapping.field_group
            ));
        }
        let p = &self.mapping.update_id_prefix;
        if p.is_empty() || p.len() > MAX_PREFIX_LEN || !p.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "transform_segment.update_id_prefix must be 1 to {MAX_PREFIX_LEN} printable ASCII characters, got {p:?}"
            ));
        }
        for (key, names) in [
            ("visitor_id_traits", &self.mapping.visitor_id_traits),
            (
                "visitor_id_external_types",
                &self.mapping.visitor_id_external_types,
            ),
        ] {
            if names.iter().any(|n| n.trim().is_empty()) {
                return Err(format!("transform_segment.{key} holds an empty name"));
            }
        }
        for key in self.mapping.audience_targets.keys() {
            if key.trim().is_empty() || key.trim() != key || key.chars().any(char::is_control) {
                return Err(format!(
                    "transform_segment.audience_targets: {key:?} is not an audience key (empty, padded or with control characters)"
                ));
            }
        }
        let p = &self.mapping.pendo_segment_name_prefix;
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
        SegmentRules::compile(&self.rules, &self.mapping.field_group)
    }

    /// Whether any audience (the default or a listed one) is written to a Pendo Segment.
    pub fn uses_pendo_segments(&self) -> bool {
        self.mapping.audience_target.writes_segment()
            || self
                .mapping
                .audience_targets
                .values()
                .any(|t| t.writes_segment())
    }

    /// The mapper settings for events from `source`.
    pub fn mapper_settings(&self, source: &str) -> SegmentMapperSettings {
        SegmentMapperSettings {
            source: source.to_string(),
            ..self.mapping.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::transform::segment_to_pendo::{AudienceTarget, FieldMode};

    #[test]
    fn defaults_validate_and_invalid_values_are_refused() {
        TransformSegmentConfig::default().validate().unwrap();
        for mode in ["per_audience_boolean", "audience_list", "both"] {
            let c: TransformSegmentConfig =
                toml::from_str(&format!("field_mode = \"{mode}\"\n")).unwrap();
            c.validate().unwrap();
            assert_eq!(c.mapping.field_mode.name(), mode);
            assert_eq!(c.mapper_settings("s").field_mode, c.mapping.field_mode);
        }
        let c: TransformSegmentConfig =
            toml::from_str("field_mode = \"audience_list\"\naudience_list_field = \"audiences\"\n")
                .unwrap();
        assert_eq!(c.mapper_settings("s").audience_list_field, "audiences");
        assert_eq!(
            TransformSegmentConfig::default()
                .mapping
                .audience_list_field,
            "segment_audiences"
        );
        for bad in [
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    field_mode: FieldMode::AudienceList,
                    audience_list_field: String::new(),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    audience_list_field: "9lists".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    audience_list_field: "my-audiences".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    field_prefix: "segment-".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    field_group: "other".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    update_id_prefix: String::new(),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    visitor_id_traits: vec![" ".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    audience_targets: BTreeMap::from([(" k".into(), AudienceTarget::Both)]),
                    ..Default::default()
                },
                ..Default::default()
            },
            TransformSegmentConfig {
                mapping: SegmentMapperSettings {
                    pendo_segment_name_prefix: "a\nb".into(),
                    ..Default::default()
                },
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
            c.mapping.audience_targets["power_users"],
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
