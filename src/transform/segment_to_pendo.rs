//! One raw Segment event -> Pendo metadata updates (the reverse flow's mapping, issue #7).
//!
//! Segment Engage delivers audience membership in three shapes (`docs/external-apis.md`, "Segment Engage audiences"), all understood:
//! - **identify** with `context.personas.computation_class = "audience"` and the boolean trait
//!   named by `computation_key` (`true` on entry, `false` on exit) -> the visitor;
//! - **track** `Audience Entered` / `Audience Exited` with `properties.audience_key` and
//!   `properties[<key>]` (the event name decides when the boolean is absent) -> the visitor;
//! - **group** with the audience's boolean trait (account audiences) -> the account `groupId`.
//!
//! Under `field_mode = "per_audience_boolean"` the update sets one custom field per audience,
//! `<prefix><audience_key>` = true/false. Under `"audience_list"` it carries a membership delta
//! instead (`listChanges`: `{field: <audience_list_field>, key, member}`, no `values`), and the
//! Pendo sink, which keeps each entity's current list as state, writes the whole list
//! (role `pendo-sink`, `src/sinks/pendo/audience_lists.rs`); `"both"` writes both. Either way the mapper is
//! stateless: each event carries everything its update needs, so replays, backfills and
//! duplicates per identifier give the same update again (idempotent; the Pendo sink coalesces,
//! and a delta re-applied leaves the list as it was).
//!
//! Visitors: the Pendo visitor id named in the event (trait or external id, from config) wins;
//! else the reverse id mapping of the userId; else the unmapped-user policy. An event that names
//! both a visitor id and a userId also yields the mapping, published to `idmap.visitor-to-user`.
//!
//! Other events (ordinary identify / track / group calls) are ignored and counted, unless rules
//! of `[[transform_segment.rules]]` ([`crate::transform::segment_rules`]) map them: each matching
//! rule writes one update of its fields, to the visitor resolved exactly as for audiences, or to
//! an account. Rule update ids hash the same event identity as audience ids, the rule's name and
//! what it writes, so replays give the same ids.
//!
//! Nothing here panics on input: every malformed event is a [`SegmentOutcome::DeadLetter`] with
//! a short reason code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::idmap::VisitorIdLookup;
use crate::schema::IdMapping;
use crate::schema::pendo_metadata_update::{
    FieldValue, ListChange, PendoEntity, PendoMetadataUpdate, UpdateOrigin,
};
use crate::schema::pendo_segment_change::{PendoSegmentChange, SegmentChangeOrigin};
use crate::transform::message_id::MessageIdBuilder;
use crate::transform::pendo_to_segment::{event_time_ms, iso_millis, plausible_epoch_ms};
use crate::transform::segment_rules::{SegmentRule, SegmentRules};

/// What to do with an audience event of a Segment user that has no Pendo visitor in the id
/// mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedUserPolicy {
    /// The visitor id is the userId (Pendo installed with the app's user id: the common setup).
    UseUserId,
    /// Skip the event (counted as `dropped`).
    Drop,
    /// Dead-letter the event until a mapping exists (replay it later).
    Dlq,
}

/// Declares a setting that chooses one of two outputs, or both: the enum (configured by the
/// given names), one predicate per output, and `name()` for messages. Written once because
/// `field_mode` and `audience_target` are both this shape.
macro_rules! one_or_both {
    (
        $(#[$meta:meta])* $name:ident {
            $(#[$first_doc:meta])* $first:ident = $first_name:literal, $writes_first:ident;
            $(#[$second_doc:meta])* $second:ident = $second_name:literal, $writes_second:ident;
            $(#[$both_doc:meta])* Both;
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        pub enum $name {
            $(#[$first_doc])*
            #[serde(rename = $first_name)]
            $first,
            $(#[$second_doc])*
            #[serde(rename = $second_name)]
            $second,
            $(#[$both_doc])*
            #[serde(rename = "both")]
            Both,
        }

        impl $name {
            #[doc = concat!("Whether `", $first_name, "` (or `both`) is chosen.")]
            pub fn $writes_first(self) -> bool {
                matches!(self, $name::$first | $name::Both)
            }

            #[doc = concat!("Whether `", $second_name, "` (or `both`) is chosen.")]
            pub fn $writes_second(self) -> bool {
                matches!(self, $name::$second | $name::Both)
            }

            /// The configuration value.
            pub fn name(self) -> &'static str {
                match self {
                    $name::$first => $first_name,
                    $name::$second => $second_name,
                    $name::Both => "both",
                }
            }
        }
    };
}

one_or_both! {
    /// Which Pendo fields an audience membership writes.
    FieldMode {
        /// One boolean field per audience, `<prefix><audience_key>`: stateless and idempotent, but
        /// each audience's field must be created in Pendo first.
        PerAudienceBoolean = "per_audience_boolean", writes_boolean;
        /// One list field (`audience_list_field`) of the visitor's or account's current audience
        /// keys: one Pendo field for all audiences. The update carries the membership delta; the
        /// Pendo sink keeps the current lists as state and writes them whole.
        AudienceList = "audience_list", writes_list;
        /// Both: the boolean field per audience and the list field.
        Both;
    }
}

one_or_both! {
    /// Where an audience's membership is written in Pendo.
    AudienceTarget {
        /// A metadata field per audience (`field_mode`), via `canonical.pendo-updates`.
        Field = "field", writes_field;
        /// A Pendo Segment per audience (visitors only), via `canonical.pendo-segment-changes`.
        PendoSegment = "pendo_segment", writes_segment;
        /// Both.
        Both;
    }
}

/// The mapper's settings: the keys of `[transform_segment]` that decide how an audience event
/// is mapped (flattened into that section), and the source it came from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SegmentMapperSettings {
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
    /// `origin.source` of the updates, and `source` of learned mappings.
    #[serde(skip)]
    pub source: String,
    /// Where audiences not listed in `audience_targets` are written: `field` (a metadata field,
    /// `field_mode`), `pendo_segment` (a Pendo Segment per audience, visitors only) or `both`.
    pub audience_target: AudienceTarget,
    /// Target per audience key, e.g. `{ "power_users_30d" = "pendo_segment" }`.
    pub audience_targets: BTreeMap<String, AudienceTarget>,
    /// Pendo Segments are named `<prefix><audience_key>` (at most 100 characters in all is
    /// advised; the name is set once, at creation).
    pub pendo_segment_name_prefix: String,
    /// `per_audience_boolean` (field `<field_prefix><audience_key>` = true/false),
    /// `audience_list` (one list field, `audience_list_field`, of the entity's current audience
    /// keys; the Pendo sink keeps the membership in `state.pendo-audience-lists`) or `both`.
    pub field_mode: FieldMode,
    /// The list field of `audience_list` / `both` (a Pendo field name: letters, digits, `_`,
    /// not starting with a digit; created in Pendo as a list field).
    pub audience_list_field: String,
}

impl Default for SegmentMapperSettings {
    fn default() -> Self {
        Self {
            field_prefix: "segment_".into(),
            field_group: "custom".into(),
            unmapped_user: UnmappedUserPolicy::UseUserId,
            visitor_id_traits: vec!["pendo_visitor_id".into()],
            visitor_id_external_types: vec!["pendo_visitor_id".into()],
            update_id_prefix: "segment".into(),
            source: "segment.webhook".into(),
            audience_target: AudienceTarget::Field,
            audience_targets: BTreeMap::new(),
            pendo_segment_name_prefix: "Segment: ".into(),
            field_mode: FieldMode::PerAudienceBoolean,
            audience_list_field: "segment_audiences".into(),
        }
    }
}

/// The result of mapping one event.
#[derive(Debug, Clone, PartialEq)]
pub enum SegmentOutcome {
    /// Updates to publish, and learned id mappings to publish with them.
    Updates {
        /// Metadata updates (one per audience membership whose target is a field, or one per
        /// matching rule that found a field).
        updates: Vec<PendoMetadataUpdate>,
        /// Pendo Segment changes (one per audience membership whose target is a Pendo Segment).
        segment_changes: Vec<PendoSegmentChange>,
        /// Visitor -> user mappings the event revealed and the table does not hold yet.
        mappings: Vec<IdMapping>,
    },
    /// Not an audience event and no rule wrote anything: nothing to write (a learned mapping
    /// may still be published).
    Ignored {
        /// Visitor -> user mappings the event revealed.
        mappings: Vec<IdMapping>,
    },
    /// An audience event skipped by policy (unmapped user under `drop`, anonymous visitor).
    Dropped,
    /// The event cannot be used.
    DeadLetter {
        /// Short reason code (a metric label and the `dlq-reason` header).
        reason: &'static str,
        /// Human-readable explanation.
        detail: String,
    },
}

/// Maps raw Segment events to Pendo metadata updates.
pub struct SegmentToPendo {
    settings: SegmentMapperSettings,
    rules: SegmentRules,
}

fn dead(reason: &'static str, detail: impl Into<String>) -> SegmentOutcome {
    SegmentOutcome::DeadLetter {
        reason,
        detail: detail.into(),
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A Pendo field name from an audience key: Pendo accepts letters, digits and `_`, starting
/// with a letter or `_`; anything else becomes `_` (Segment audience keys are snake_case).
fn field_name(prefix: &str, key: &str) -> String {
    let mut name: String = prefix
        .chars()
        .chain(key.chars())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// One audience membership an event states, resolved to its Pendo entity and time: what
/// [`SegmentToPendo::map_event`] hands to its write phase.
struct Membership<'e> {
    entity: PendoEntity,
    entity_id: String,
    key: &'e str,
    member: bool,
    ts_ms: i64,
}

/// The membership a track call states (`Audience Entered` / `Audience Exited`); `Ok(None)` for
/// any other track event (the rules decide). The track step of [`SegmentToPendo::map_event`].
fn track_membership<'e>(
    event: &'e Value,
    computation_key: Option<&'e str>,
) -> Result<Option<(PendoEntity, &'e str, bool)>, SegmentOutcome> {
    let name = str_at(event, "event").unwrap_or_default();
    let entered = if name.eq_ignore_ascii_case("Audience Entered") {
        true
    } else if name.eq_ignore_ascii_case("Audience Exited") {
        false
    } else {
        return Ok(None);
    };
    let props = event.get("properties");
    let Some(key) = props
        .and_then(|p| str_at(p, "audience_key"))
        .or(computation_key)
    else {
        return Err(dead(
            "missing_audience_key",
            format!("`{name}` without properties.audience_key or context.personas.computation_key"),
        ));
    };
    let member = match props.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => entered,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(dead(
                "invalid_audience_value",
                format!("properties.{key} is {other}, not a boolean"),
            ));
        }
    };
    Ok(Some((PendoEntity::Visitor, key, member)))
}

/// The membership an audience identify or group call (`call_type`) states in its boolean
/// trait. The identify/group step of [`SegmentToPendo::map_event`].
fn trait_membership<'e>(
    event: &'e Value,
    call_type: &str,
    computation_key: Option<&'e str>,
) -> Result<(PendoEntity, &'e str, bool), SegmentOutcome> {
    let t = call_type;
    let Some(key) = computation_key else {
        return Err(dead(
            "missing_audience_key",
            format!("audience {t} without context.personas.computation_key"),
        ));
    };
    let member = match event.get("traits").and_then(|tr| tr.get(key)) {
        Some(Value::Bool(b)) => *b,
        None => {
            return Err(dead(
                "missing_audience_value",
                format!("audience {t} without the boolean trait `{key}`"),
            ));
        }
        Some(other) => {
            return Err(dead(
                "invalid_audience_value",
                format!("traits.{key} is {other}, not a boolean"),
            ));
        }
    };
    let entity = if t == "group" {
        PendoEntity::Account
    } else {
        PendoEntity::Visitor
    };
    Ok((entity, key, member))
}

impl SegmentToPendo {
    /// A mapper with `settings`.
    pub fn new(settings: SegmentMapperSettings) -> Self {
        Self {
            settings,
            rules: SegmentRules::default(),
        }
    }

    /// The mapper with `rules` for non-audience events (none: such events are ignored).
    pub fn with_rules(mut self, rules: SegmentRules) -> Self {
        self.rules = rules;
        self
    }

    /// The event kind for metric labels: the call type (`identify`, `track`, `group`, ...) or
    /// `none` when the record is not a Segment event.
    pub fn kind_of(event: &Value) -> &str {
        event.get("type").and_then(Value::as_str).unwrap_or("none")
    }

    /// Maps one raw record. `received_at` is the connector's receive time (epoch ms); a value
    /// that is not a plausible time (see [`plausible_epoch_ms`]) counts as absent.
    pub fn map(
        &self,
        payload: &[u8],
        received_at: Option<i64>,
        ids: &impl VisitorIdLookup,
    ) -> (SegmentOutcome, String) {
        let received_at = received_at.filter(|&ms| plausible_epoch_ms(ms));
        let event: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return (
                    dead("invalid_json", format!("not JSON: {e}")),
                    "none".into(),
                );
            }
        };
        let kind = match &event {
            Value::Object(_) => Self::kind_of(&event).to_ascii_lowercase(),
            _ => "none".into(),
        };
        let kind = if kind.len() > 32 {
            "other".into()
        } else {
            kind
        };
        (self.map_event(&event, received_at, ids), kind)
    }

    fn map_event(
        &self,
        event: &Value,
        received_at: Option<i64>,
        ids: &impl VisitorIdLookup,
    ) -> SegmentOutcome {
        let Value::Object(obj) = event else {
            return dead(
                "not_an_object",
                "a Segment event is a JSON object (batched deliveries are split by the connector)",
            );
        };
        let Some(call_type) = str_at(event, "type") else {
            return dead("missing_type", "the event has no `type`");
        };
        let user_id = str_at(event, "userId");
        let anonymous_id = str_at(event, "anonymousId");
        if user_id.is_none() && anonymous_id.is_none() {
            return dead(
                "missing_identity",
                "the event has neither `userId` nor `anonymousId`",
            );
        }
        let ts_ms = ["timestamp", "originalTimestamp", "receivedAt"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(event_time_ms))
            .or(received_at);

        // Identity learning: a visitor id named in the event, next to a userId.
        let named_visitor = self.named_visitor(obj);
        let mut mappings = Vec::new();
        if let (Some(visitor), Some(user)) = (&named_visitor, user_id)
            && ids.user_id_of(visitor).as_deref() != Some(user)
        {
            mappings.push(IdMapping {
                visitor_id: visitor.clone(),
                user_id: user.to_string(),
                source: self.settings.source.clone(),
                updated_at: ts_ms.unwrap_or(0),
            });
        }

        let personas = event
            .get("context")
            .and_then(|c| c.get("personas"))
            .filter(|p| {
                p.get("computation_class")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.eq_ignore_ascii_case("audience"))
            });
        let computation_key = personas.and_then(|p| str_at(p, "computation_key"));

        // (entity, audience key, membership); `None`: not an audience event, the rules decide.
        let audience = match call_type.to_ascii_lowercase().as_str() {
            "track" => track_membership(event, computation_key),
            t @ ("identify" | "group") if personas.is_some() => {
                trait_membership(event, t, computation_key).map(Some)
            }
            "identify" | "group" => Ok(None),
            _ => return SegmentOutcome::Ignored { mappings },
        };
        let (entity, key, member) = match audience {
            Ok(Some(membership)) => membership,
            Ok(None) => {
                let visitor = named_visitor.as_deref();
                return self.map_rules(event, visitor, ts_ms, received_at, ids, mappings);
            }
            Err(outcome) => return outcome,
        };

        let entity_id = match entity {
            PendoEntity::Account => match str_at(event, "groupId") {
                Some(g) => g.to_string(),
                None => return dead("missing_group_id", "audience group call without `groupId`"),
            },
            PendoEntity::Visitor => match self.visitor_of(named_visitor.as_deref(), user_id, ids) {
                Ok(v) => v,
                Err(outcome) => return outcome,
            },
        };
        let Some(ts_ms) = ts_ms else {
            return dead(
                "missing_timestamp",
                "no usable `timestamp` in the event and no received-at header",
            );
        };
        let membership = Membership {
            entity,
            entity_id,
            key,
            member,
            ts_ms,
        };
        self.audience_outcome(event, call_type, membership, received_at, mappings)
    }

    /// The Pendo Segment change and/or metadata update of one resolved audience membership: the
    /// write phase of [`Self::map_event`], apart from how the membership was read.
    fn audience_outcome(
        &self,
        event: &Value,
        call_type: &str,
        membership: Membership<'_>,
        received_at: Option<i64>,
        mappings: Vec<IdMapping>,
    ) -> SegmentOutcome {
        let Membership {
            entity,
            entity_id,
            key,
            member,
            ts_ms,
        } = membership;
        let message_id = str_at(event, "messageId");
        let mut id = event_identity("segment-audience", call_type, event, ts_ms);
        id.part(key.as_bytes()).part(&[u8::from(member)]);
        let mode = self.settings.field_mode;
        if mode.writes_list() {
            // Boolean-mode ids stay as they were; list and both modes write something else, so
            // their ids differ (the mode and the list field are part of the identity).
            id.part(mode.name().as_bytes())
                .part(self.settings.audience_list_field.as_bytes());
        }
        let update_id = id.finish(&self.settings.update_id_prefix);
        let target = self.target_of(key);
        if target == AudienceTarget::PendoSegment && entity == PendoEntity::Account {
            return dead(
                "unsupported_target",
                format!(
                    "audience {key:?} targets a Pendo Segment, which holds visitors; an account audience (group call) needs the target \"field\" or \"both\""
                ),
            );
        }
        let mut segment_changes = Vec::new();
        if target.writes_segment() && entity == PendoEntity::Visitor {
            segment_changes.push(PendoSegmentChange {
                change_id: update_id.clone(),
                audience_key: key.to_string(),
                segment_name: format!("{}{key}", self.settings.pendo_segment_name_prefix),
                visitor_id: entity_id.clone(),
                member,
                timestamp: iso_millis(ts_ms),
                origin: SegmentChangeOrigin {
                    source: self.settings.source.clone(),
                    segment_message_id: message_id.map(str::to_string),
                    received_at,
                },
            });
        }
        if !target.writes_field() {
            return SegmentOutcome::Updates {
                updates: Vec::new(),
                segment_changes,
                mappings,
            };
        }
        let mut values = BTreeMap::new();
        if mode.writes_boolean() {
            values.insert(
                field_name(&self.settings.field_prefix, key),
                FieldValue::Bool(member),
            );
        }
        let mut list_changes = Vec::new();
        if mode.writes_list() {
            list_changes.push(ListChange {
                field: self.settings.audience_list_field.clone(),
                key: key.to_string(),
                member,
            });
        }
        let update = PendoMetadataUpdate {
            update_id,
            entity,
            entity_id,
            field_group: self.settings.field_group.clone(),
            values,
            timestamp: iso_millis(ts_ms),
            origin: UpdateOrigin {
                source: self.settings.source.clone(),
                segment_message_id: message_id.map(str::to_string),
                audience_key: Some(key.to_string()),
                received_at,
            },
            list_changes,
        };
        SegmentOutcome::Updates {
            updates: vec![update],
            segment_changes,
            mappings,
        }
    }

    /// Applies the rules matching a non-audience event: one update per matching rule that found
    /// at least one field. All or nothing: a bad value, a missing account id or timestamp, or an
    /// unmapped user under `dlq` dead-letters the whole event. A visitor skipped by policy
    /// (`drop`, anonymous) skips the visitor rules; if nothing else is written the event is
    /// `Dropped`. No matching rule, or only absent paths: `Ignored` as before rules existed.
    fn map_rules(
        &self,
        event: &Value,
        named_visitor: Option<&str>,
        ts_ms: Option<i64>,
        received_at: Option<i64>,
        ids: &impl VisitorIdLookup,
        mappings: Vec<IdMapping>,
    ) -> SegmentOutcome {
        if self.rules.is_empty() {
            return SegmentOutcome::Ignored { mappings };
        }
        let call_type = Self::kind_of(event).to_ascii_lowercase();
        let matched: Vec<&SegmentRule> = self
            .rules
            .matching(&call_type, str_at(event, "event"))
            .collect();
        if matched.is_empty() {
            return SegmentOutcome::Ignored { mappings };
        }
        // Read every rule first: one bad value dead-letters the event before anything counts.
        let mut read = Vec::with_capacity(matched.len());
        for rule in matched {
            match rule.read(event) {
                Ok(values) => read.push((rule, values)),
                Err(detail) => return dead("invalid_rule_value", detail),
            }
        }
        let user_id = str_at(event, "userId");
        let message_id = str_at(event, "messageId");
        let mut visitor: Option<Result<String, SegmentOutcome>> = None;
        let mut dropped = false;
        let mut updates = Vec::new();
        let mut wrote = vec![false; read.len()];
        for (i, (rule, values)) in read.iter().enumerate() {
            if values.values.is_empty() {
                continue;
            }
            let entity_id = match rule.entity {
                PendoEntity::Account => match rule.account_id(event) {
                    Some(a) => a,
                    None => {
                        return dead(
                            "missing_account_id",
                            format!(
                                "rule {:?} writes an account but the event has no account id at `{}`",
                                rule.name,
                                rule.account_id_from
                                    .as_ref()
                                    .map(ToString::to_string)
                                    .unwrap_or_default()
                            ),
                        );
                    }
                },
                PendoEntity::Visitor => match visitor
                    .get_or_insert_with(|| self.visitor_of(named_visitor, user_id, ids))
                {
                    Ok(v) => v.clone(),
                    Err(SegmentOutcome::Dropped) => {
                        dropped = true;
                        continue;
                    }
                    Err(other) => return other.clone(),
                },
            };
            let Some(ts_ms) = ts_ms else {
                return dead(
                    "missing_timestamp",
                    "no usable `timestamp` in the event and no received-at header",
                );
            };
            // Same event identity as audience ids, then the rule and exactly what it writes.
            let mut id = event_identity("segment-rule", rule.call_type.name(), event, ts_ms);
            id.part(rule.name.as_bytes())
                .part(rule.field_group.as_bytes());
            for (field, value) in &values.values {
                id.part(field.as_bytes())
                    .part(value_identity(value).as_bytes());
            }
            updates.push(PendoMetadataUpdate {
                update_id: id.finish(&self.settings.update_id_prefix),
                entity: rule.entity,
                entity_id,
                field_group: rule.field_group.clone(),
                values: values.values.clone(),
                timestamp: iso_millis(ts_ms),
                origin: UpdateOrigin {
                    source: self.settings.source.clone(),
                    segment_message_id: message_id.map(str::to_string),
                    audience_key: None,
                    received_at,
                },
                list_changes: Vec::new(),
            });
            wrote[i] = true;
        }
        for ((rule, values), wrote) in read.iter().zip(wrote) {
            for field in &values.missing {
                rule.count(field, "missing");
            }
            if wrote {
                for field in values.values.keys() {
                    rule.count(field, "written");
                }
            }
        }
        if updates.is_empty() {
            return if dropped {
                SegmentOutcome::Dropped
            } else {
                SegmentOutcome::Ignored { mappings }
            };
        }
        SegmentOutcome::Updates {
            updates,
            segment_changes: Vec::new(),
            mappings,
        }
    }

    /// The configured target of audience `key`.
    pub fn target_of(&self, key: &str) -> AudienceTarget {
        self.settings
            .audience_targets
            .get(key)
            .copied()
            .unwrap_or(self.settings.audience_target)
    }

    /// The Pendo visitor id the event names (configured traits, then external ids).
    fn named_visitor(&self, obj: &Map<String, Value>) -> Option<String> {
        let context = obj.get("context");
        let trait_sources = [obj.get("traits"), context.and_then(|c| c.get("traits"))];
        // Group traits describe the account, not the user: only identify/track traits count.
        let is_group = obj
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("group"));
        for name in &self.settings.visitor_id_traits {
            for (i, traits) in trait_sources.iter().enumerate() {
                if i == 0 && is_group {
                    continue;
                }
                if let Some(v) = traits.and_then(|t| scalar_id(t.get(name)?)) {
                    return Some(v);
                }
            }
        }
        let external = context
            .and_then(|c| c.get("externalIds"))
            .and_then(Value::as_array)?;
        for ty in &self.settings.visitor_id_external_types {
            for e in external {
                if e.get("type").and_then(Value::as_str) == Some(ty.as_str())
                    && let Some(v) = e.get("id").and_then(scalar_id)
                {
                    return Some(v);
                }
            }
        }
        None
    }

    fn visitor_of(
        &self,
        named: Option<&str>,
        user_id: Option<&str>,
        ids: &impl VisitorIdLookup,
    ) -> Result<String, SegmentOutcome> {
        if let Some(v) = named {
            return Ok(v.to_string());
        }
        let Some(user) = user_id else {
            // Only an anonymousId: Pendo visitors are keyed by the app's ids, not Segment's
            // anonymous ones.
            return match self.settings.unmapped_user {
                UnmappedUserPolicy::Dlq => Err(dead(
                    "unmapped_user",
                    "event with only an anonymousId: no Pendo visitor",
                )),
                _ => Err(SegmentOutcome::Dropped),
            };
        };
        if let Some(v) = ids.visitor_id(user) {
            return Ok(v);
        }
        match self.settings.unmapped_user {
            UnmappedUserPolicy::UseUserId => Ok(user.to_string()),
            UnmappedUserPolicy::Drop => Err(SegmentOutcome::Dropped),
            UnmappedUserPolicy::Dlq => Err(dead(
                "unmapped_user",
                format!("no Pendo visitor for userId {user:?} in the id mapping"),
            )),
        }
    }
}

/// Starts an update id over the event's identity: Segment's messageId (retries and replays keep
/// it), or without one what the event says (ids, groupId, time).
fn event_identity(kind: &str, call_type: &str, event: &Value, ts_ms: i64) -> MessageIdBuilder {
    let mut id = MessageIdBuilder::new(kind, call_type);
    match str_at(event, "messageId") {
        Some(m) => {
            id.part(m.as_bytes());
        }
        None => {
            for k in ["userId", "anonymousId", "groupId"] {
                match str_at(event, k) {
                    Some(v) => id.part(v.as_bytes()),
                    None => id.absent(),
                };
            }
            id.part(ts_ms.to_string().as_bytes());
        }
    }
    id
}

/// A written value's bytes in an update id (type-tagged, so `"1"` and `1` differ).
fn value_identity(v: &FieldValue) -> String {
    match v {
        FieldValue::Null => "n".into(),
        FieldValue::Bool(b) => format!("b{b}"),
        FieldValue::Long(n) => format!("l{n}"),
        FieldValue::Double(d) => format!("d{d:?}"),
        FieldValue::Text(t) => format!("t{t}"),
        FieldValue::List(l) => format!("a{l:?}"),
    }
}

/// An id given as a string or a number (Pendo visitor ids may be numeric in the app).
fn scalar_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::{BiIdMap, IdMapStore};
    use crate::transform::segment_rules::SegmentRules;
    use std::path::Path;

    const RECEIVED: Option<i64> = Some(1_764_340_000_000);

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/segment")
                .join(name),
        )
        .unwrap()
    }

    fn mapper() -> SegmentToPendo {
        SegmentToPendo::new(SegmentMapperSettings::default())
    }

    fn expected_id(call_type: &str, message_id: &str, key: &str, member: bool) -> String {
        let mut b = MessageIdBuilder::new("segment-audience", call_type);
        b.part(message_id.as_bytes())
            .part(key.as_bytes())
            .part(&[u8::from(member)]);
        b.finish("segment")
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        call_type: &str,
        message_id: &str,
        entity: PendoEntity,
        entity_id: &str,
        key: &str,
        member: bool,
        timestamp: &str,
    ) -> PendoMetadataUpdate {
        PendoMetadataUpdate {
            update_id: expected_id(call_type, message_id, key, member),
            entity,
            entity_id: entity_id.into(),
            field_group: "custom".into(),
            values: BTreeMap::from([(format!("segment_{key}"), FieldValue::Bool(member))]),
            timestamp: timestamp.into(),
            origin: UpdateOrigin {
                source: "segment.webhook".into(),
                segment_message_id: Some(message_id.into()),
                audience_key: Some(key.into()),
                received_at: RECEIVED,
            },
            list_changes: vec![],
        }
    }

    fn updates_of(payload: &[u8], ids: &BiIdMap) -> Vec<PendoMetadataUpdate> {
        match mapper().map(payload, RECEIVED, ids).0 {
            SegmentOutcome::Updates {
                updates,
                mappings,
                segment_changes,
            } => {
                assert!(mappings.is_empty());
                assert!(segment_changes.is_empty());
                updates
            }
            other => panic!("expected updates, got {other:?}"),
        }
    }

    /// Every fixture's expected updates (the actions batch split into its two events).
    pub(crate) fn expected_fixture_updates() -> Vec<(Vec<u8>, PendoMetadataUpdate)> {
        let batch: Vec<Value> = serde_json::from_slice(&fixture("actions-batch.json")).unwrap();
        vec![
            (
                fixture("audience-identify-entered.json"),
                update(
                    "identify",
                    "personas_2hK3aa91",
                    PendoEntity::Visitor,
                    "user-8841",
                    "trial_users_expiring",
                    true,
                    "2026-11-27T08:00:00.000Z",
                ),
            ),
            (
                fixture("audience-track-entered.json"),
                update(
                    "track",
                    "personas_7Qp0b2",
                    PendoEntity::Visitor,
                    "user-8841",
                    "clicked_q4_upgrade_email",
                    true,
                    "2026-11-27T08:05:00.000Z",
                ),
            ),
            (
                fixture("audience-track-exited.json"),
                update(
                    "track",
                    "personas_8Rr9c3",
                    PendoEntity::Visitor,
                    "user-8841",
                    "clicked_q4_upgrade_email",
                    false,
                    "2026-12-04T08:05:00.000Z",
                ),
            ),
            (
                fixture("account-audience-group.json"),
                update(
                    "group",
                    "personas_9Zz1d4",
                    PendoEntity::Account,
                    "acct-fabrikam",
                    "enterprise_at_risk",
                    true,
                    "2026-11-27T09:00:00.000Z",
                ),
            ),
            (
                serde_json::to_vec(&batch[0]).unwrap(),
                update(
                    "track",
                    "personas_b01",
                    PendoEntity::Visitor,
                    "user-1001",
                    "power_users_30d",
                    true,
                    "2026-11-27T10:00:00.000Z",
                ),
            ),
            (
                serde_json::to_vec(&batch[1]).unwrap(),
                update(
                    "track",
                    "personas_b02",
                    PendoEntity::Visitor,
                    "user-2002",
                    "power_users_30d",
                    false,
                    "2026-11-27T10:00:01.000Z",
                ),
            ),
        ]
    }

    #[test]
    fn audience_list_mode_emits_membership_deltas_with_their_own_ids() {
        let ids = BiIdMap::default();
        let list = |mode: FieldMode| {
            SegmentToPendo::new(SegmentMapperSettings {
                field_mode: mode,
                audience_list_field: "segment_audiences".into(),
                ..Default::default()
            })
        };
        for (payload, boolean) in expected_fixture_updates() {
            let key = boolean.origin.audience_key.clone().unwrap();
            let member = boolean.values.values().next() == Some(&FieldValue::Bool(true));
            let change = ListChange {
                field: "segment_audiences".into(),
                key,
                member,
            };
            let of = |mode| match list(mode).map(&payload, RECEIVED, &ids).0 {
                SegmentOutcome::Updates { mut updates, .. } => {
                    assert_eq!(updates.len(), 1);
                    updates.remove(0)
                }
                other => panic!("{other:?}"),
            };
            let l = of(FieldMode::AudienceList);
            assert!(l.values.is_empty(), "{l:?}");
            assert_eq!(l.list_changes, vec![change.clone()]);
            assert_eq!(
                (&l.entity, &l.entity_id, &l.timestamp, &l.origin),
                (
                    &boolean.entity,
                    &boolean.entity_id,
                    &boolean.timestamp,
                    &boolean.origin
                )
            );
            assert_ne!(l.update_id, boolean.update_id, "the mode is in the id");
            assert_eq!(l, of(FieldMode::AudienceList), "deterministic");
            let b = of(FieldMode::Both);
            assert_eq!(b.values, boolean.values);
            assert_eq!(b.list_changes, vec![change]);
            assert_ne!(b.update_id, l.update_id);
            assert_ne!(b.update_id, boolean.update_id);
            assert_eq!(of(FieldMode::PerAudienceBoolean), boolean);
        }
        // The list field's name is part of the id too.
        let other = SegmentToPendo::new(SegmentMapperSettings {
            field_mode: FieldMode::AudienceList,
            audience_list_field: "audiences".into(),
            ..Default::default()
        });
        let payload = fixture("audience-track-entered.json");
        let ids_of = |m: &SegmentToPendo| match m.map(&payload, RECEIVED, &ids).0 {
            SegmentOutcome::Updates { updates, .. } => updates[0].clone(),
            o => panic!("{o:?}"),
        };
        let (a, b) = (ids_of(&other), ids_of(&list(FieldMode::AudienceList)));
        assert_eq!(a.list_changes[0].field, "audiences");
        assert_ne!(a.update_id, b.update_id);
    }

    #[test]
    fn every_audience_fixture_maps_to_its_expected_update() {
        let ids = BiIdMap::default();
        for (payload, expected) in expected_fixture_updates() {
            assert_eq!(updates_of(&payload, &ids), vec![expected]);
        }
    }

    #[test]
    fn the_non_audience_fixture_is_ignored() {
        let (outcome, kind) = mapper().map(
            &fixture("non-audience-track.json"),
            RECEIVED,
            &BiIdMap::default(),
        );
        assert_eq!(outcome, SegmentOutcome::Ignored { mappings: vec![] });
        assert_eq!(kind, "track");
    }

    #[test]
    fn the_reverse_id_mapping_gives_the_visitor_and_policies_apply_without_one() {
        let ids = BiIdMap::default();
        ids.upsert("pendo-visitor-77", "user-8841");
        let u = updates_of(&fixture("audience-track-entered.json"), &ids);
        assert_eq!(u[0].entity_id, "pendo-visitor-77");
        // Accounts are not mapped.
        let u = updates_of(&fixture("account-audience-group.json"), &ids);
        assert_eq!(u[0].entity_id, "acct-fabrikam");

        let empty = BiIdMap::default();
        let with = |p| {
            SegmentToPendo::new(SegmentMapperSettings {
                unmapped_user: p,
                ..Default::default()
            })
        };
        let payload = fixture("audience-track-entered.json");
        assert_eq!(
            with(UnmappedUserPolicy::Drop)
                .map(&payload, RECEIVED, &empty)
                .0,
            SegmentOutcome::Dropped
        );
        assert!(matches!(
            with(UnmappedUserPolicy::Dlq)
                .map(&payload, RECEIVED, &empty)
                .0,
            SegmentOutcome::DeadLetter {
                reason: "unmapped_user",
                ..
            }
        ));
        // Only an anonymousId: no visitor to write.
        let anon = br#"{"type":"track","event":"Audience Entered","anonymousId":"a1","properties":{"audience_key":"k","k":true},"timestamp":"2026-11-27T10:00:00Z"}"#;
        assert_eq!(
            mapper().map(anon, RECEIVED, &empty).0,
            SegmentOutcome::Dropped
        );
    }

    #[test]
    fn a_named_visitor_id_is_learned_and_used() {
        let ids = BiIdMap::default();
        let e = br#"{"type":"identify","messageId":"m1","userId":"u-1","traits":{"pendo_visitor_id":"pv-1","vip":true},"context":{"personas":{"computation_class":"audience","computation_key":"vip"}},"timestamp":"2026-11-27T10:00:00Z"}"#;
        let SegmentOutcome::Updates {
            updates, mappings, ..
        } = mapper().map(e, RECEIVED, &ids).0
        else {
            panic!()
        };
        assert_eq!(updates[0].entity_id, "pv-1");
        assert_eq!(
            mappings,
            vec![IdMapping {
                visitor_id: "pv-1".into(),
                user_id: "u-1".into(),
                source: "segment.webhook".into(),
                updated_at: 1_795_773_600_000,
            }]
        );
        // Known already: not published again.
        ids.upsert("pv-1", "u-1");
        let SegmentOutcome::Updates { mappings, .. } = mapper().map(e, RECEIVED, &ids).0 else {
            panic!()
        };
        assert!(mappings.is_empty());
        // External ids, on a non-audience event: learned, nothing else written.
        let e = br#"{"type":"track","event":"Signed In","userId":"u-2","context":{"externalIds":[{"id":"other","type":"email"},{"id":42,"type":"pendo_visitor_id"}]},"timestamp":"2026-11-27T10:00:00Z"}"#;
        let SegmentOutcome::Ignored { mappings } = mapper().map(e, None, &ids).0 else {
            panic!()
        };
        assert_eq!(mappings[0].visitor_id, "42");
        assert_eq!(mappings[0].user_id, "u-2");
    }

    #[test]
    fn bad_input_is_dead_lettered_with_a_reason_never_a_panic() {
        let ids = BiIdMap::default();
        let cases: &[(&[u8], &str)] = &[
            (b"not json at all", "invalid_json"),
            (b"[1,2]", "not_an_object"),
            (b"{\"userId\":\"u\"}", "missing_type"),
            (
                br#"{"type":"track","event":"Audience Entered","properties":{"audience_key":"k","k":true}}"#,
                "missing_identity",
            ),
            (
                br#"{"type":"track","event":"Audience Exited","userId":"u","properties":{}}"#,
                "missing_audience_key",
            ),
            (
                br#"{"type":"identify","userId":"u","traits":{},"context":{"personas":{"computation_class":"audience"}}}"#,
                "missing_audience_key",
            ),
            (
                br#"{"type":"identify","userId":"u","traits":{"k":"yes"},"context":{"personas":{"computation_class":"audience","computation_key":"k"}}}"#,
                "invalid_audience_value",
            ),
            (
                br#"{"type":"identify","userId":"u","traits":{},"context":{"personas":{"computation_class":"audience","computation_key":"k"}}}"#,
                "missing_audience_value",
            ),
            (
                br#"{"type":"group","userId":"u","traits":{"k":true},"context":{"personas":{"computation_class":"audience","computation_key":"k"}}}"#,
                "missing_group_id",
            ),
        ];
        for (payload, reason) in cases {
            match mapper().map(payload, None, &ids).0 {
                SegmentOutcome::DeadLetter { reason: r, detail } => {
                    assert_eq!(r, *reason, "{}", String::from_utf8_lossy(payload));
                    assert!(!detail.is_empty());
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(payload)),
            }
        }
        // No timestamp in the event: the received-at time is used; without both, a dead letter.
        let e = br#"{"type":"track","event":"Audience Entered","userId":"u","properties":{"audience_key":"k"}}"#;
        assert!(matches!(
            mapper().map(e, None, &ids).0,
            SegmentOutcome::DeadLetter {
                reason: "missing_timestamp",
                ..
            }
        ));
        let u = updates_of(e, &ids);
        assert_eq!(u[0].timestamp, "2025-11-28T14:26:40.000Z");
        assert_eq!(
            u[0].values["segment_k"],
            FieldValue::Bool(true),
            "the event name decides"
        );
    }

    #[test]
    fn update_ids_are_deterministic_and_field_names_valid() {
        let ids = BiIdMap::default();
        let e = br#"{"type":"track","event":"Audience Entered","userId":"u","properties":{"audience_key":"Power Users-30d","Power Users-30d":true},"timestamp":"2026-11-27T10:00:00Z"}"#;
        let a = updates_of(e, &ids);
        assert_eq!(a, updates_of(e, &ids));
        assert!(a[0].values.contains_key("segment_Power_Users_30d"));
        let exited = br#"{"type":"track","event":"Audience Exited","userId":"u","properties":{"audience_key":"Power Users-30d","Power Users-30d":false},"timestamp":"2026-11-27T10:00:00Z"}"#;
        assert_ne!(a[0].update_id, updates_of(exited, &ids)[0].update_id);
        assert_eq!(field_name("", "30d"), "_30d");
    }
    #[test]
    fn audience_targets_choose_field_segment_or_both() {
        let ids = BiIdMap::default();
        let m = SegmentToPendo::new(SegmentMapperSettings {
            audience_targets: BTreeMap::from([
                ("seg_only".to_string(), AudienceTarget::PendoSegment),
                ("both_k".to_string(), AudienceTarget::Both),
            ]),
            ..Default::default()
        });
        let ev = |key: &str, name: &str| {
            format!(
                r#"{{"type":"track","event":"{name}","messageId":"m-{key}","userId":"u-1","properties":{{"audience_key":"{key}"}},"timestamp":"2026-11-27T10:00:00Z"}}"#
            )
        };
        let out = |key: &str, name: &str| match m.map(ev(key, name).as_bytes(), RECEIVED, &ids).0 {
            SegmentOutcome::Updates {
                updates,
                segment_changes,
                ..
            } => (updates, segment_changes),
            other => panic!("{other:?}"),
        };
        let (u, c) = out("seg_only", "Audience Exited");
        assert!(u.is_empty());
        assert_eq!(c.len(), 1);
        assert_eq!(
            (
                c[0].audience_key.as_str(),
                c[0].segment_name.as_str(),
                c[0].visitor_id.as_str(),
                c[0].member
            ),
            ("seg_only", "Segment: seg_only", "u-1", false)
        );
        assert_eq!(c[0].origin.received_at, RECEIVED);
        let (u, c) = out("both_k", "Audience Entered");
        assert_eq!((u.len(), c.len()), (1, 1));
        assert_eq!(u[0].update_id, c[0].change_id);
        let (u, c) = out("other", "Audience Entered");
        assert_eq!(
            (u.len(), c.len()),
            (1, 0),
            "the default target is the field"
        );
        // Pendo Segments hold visitors: an account audience cannot target one.
        let group = br#"{"type":"group","userId":"u","groupId":"g","traits":{"seg_only":true},"context":{"personas":{"computation_class":"audience","computation_key":"seg_only"}},"timestamp":"2026-11-27T10:00:00Z"}"#;
        assert!(matches!(
            m.map(group, RECEIVED, &ids).0,
            SegmentOutcome::DeadLetter {
                reason: "unsupported_target",
                ..
            }
        ));
    }

    // --- Rules for non-audience events -------------------------------------------------------

    const RULES: &str = r#"
[[rules]]
name = "user-traits"
match = { type = "identify" }
target = "visitor"
fields = { plan = "traits.plan", seats = "traits.seats", beta_opt_in = "traits.beta_opt_in", phone = "traits.phone" }

[[rules]]
name = "plan-upgraded"
match = { type = "track", event = "Plan Upgraded" }
target = "visitor"
fields = { plan = "properties.plan", mrr = "properties.mrr", coupon = "properties.coupon" }

[[rules]]
name = "plan-upgraded-account"
match = { type = "track", event = "Plan Upgraded" }
target = "account"
account_id_from = "context.groupId"
fields = { plan = "properties.plan" }
field_group = "agent"

[[rules]]
name = "account-traits"
match = { type = "group" }
target = "account"
fields = { industry = "traits.industry", employees = "traits.employees" }
"#;

    fn rules_mapper(unmapped_user: UnmappedUserPolicy) -> SegmentToPendo {
        #[derive(Deserialize)]
        struct Wrapper {
            rules: Vec<crate::transform::segment_rules::SegmentRuleConfig>,
        }
        let rules = toml::from_str::<Wrapper>(RULES).unwrap().rules;
        SegmentToPendo::new(SegmentMapperSettings {
            unmapped_user,
            ..Default::default()
        })
        .with_rules(SegmentRules::compile(&rules, "custom").unwrap())
    }

    fn rule_fixture(name: &str) -> Vec<u8> {
        fixture(&format!("rules/{name}"))
    }

    fn rule_update_id(
        call_type: &str,
        message_id: &str,
        rule: &str,
        group: &str,
        values: &[(&str, &str)],
    ) -> String {
        let mut b = MessageIdBuilder::new("segment-rule", call_type);
        b.part(message_id.as_bytes())
            .part(rule.as_bytes())
            .part(group.as_bytes());
        for (field, value) in values {
            b.part(field.as_bytes()).part(value.as_bytes());
        }
        b.finish("segment")
    }

    fn rule_updates(m: &SegmentToPendo, payload: &[u8], ids: &BiIdMap) -> Vec<PendoMetadataUpdate> {
        match m.map(payload, RECEIVED, ids).0 {
            SegmentOutcome::Updates {
                updates,
                segment_changes,
                ..
            } => {
                assert!(segment_changes.is_empty());
                updates
            }
            other => panic!("expected updates, got {other:?}"),
        }
    }

    fn rule_metric(rule: &str, field: &str, result: &str) -> u64 {
        crate::metrics::metrics()
            .transform_rule_fields
            .with_label_values(&["transform-segment", rule, field, result])
            .get()
    }

    fn origin(message_id: &str) -> UpdateOrigin {
        UpdateOrigin {
            source: "segment.webhook".into(),
            segment_message_id: Some(message_id.into()),
            audience_key: None,
            received_at: RECEIVED,
        }
    }

    #[test]
    fn an_identify_rule_writes_the_visitor_and_leaves_absent_paths_unwritten() {
        let ids = BiIdMap::default();
        ids.upsert("pv-8841", "user-8841");
        let m = rules_mapper(UnmappedUserPolicy::UseUserId);
        let missing_before = rule_metric("user-traits", "phone", "missing");
        let written_before = rule_metric("user-traits", "plan", "written");
        let u = rule_updates(&m, &rule_fixture("identify-traits.json"), &ids);
        assert_eq!(
            u,
            vec![PendoMetadataUpdate {
                update_id: rule_update_id(
                    "identify",
                    "ajs-next-1764331000-bb22",
                    "user-traits",
                    "custom",
                    &[
                        ("beta_opt_in", "btrue"),
                        ("plan", "tgrowth"),
                        ("seats", "l25")
                    ],
                ),
                entity: PendoEntity::Visitor,
                entity_id: "pv-8841".into(),
                field_group: "custom".into(),
                values: BTreeMap::from([
                    ("beta_opt_in".into(), FieldValue::Bool(true)),
                    ("plan".into(), FieldValue::Text("growth".into())),
                    ("seats".into(), FieldValue::Long(25)),
                ]),
                timestamp: "2026-11-27T11:30:00.000Z".into(),
                origin: origin("ajs-next-1764331000-bb22"),
                list_changes: vec![],
            }]
        );
        // `phone` is absent: not written, counted.
        assert!(rule_metric("user-traits", "phone", "missing") > missing_before);
        assert!(rule_metric("user-traits", "plan", "written") > written_before);
        // Deterministic: the same event gives the same update (and id) again.
        assert_eq!(
            u,
            rule_updates(&m, &rule_fixture("identify-traits.json"), &ids)
        );
        // Only absent paths: nothing to write, ignored as without rules.
        let bare = br#"{"type":"identify","messageId":"m-bare","userId":"user-8841","traits":{"email":"x@example.com"},"timestamp":"2026-11-27T10:00:00Z"}"#;
        assert_eq!(
            m.map(bare, RECEIVED, &ids).0,
            SegmentOutcome::Ignored { mappings: vec![] }
        );
    }

    #[test]
    fn track_rules_match_the_event_name_and_can_write_visitor_and_account() {
        let ids = BiIdMap::default();
        let m = rules_mapper(UnmappedUserPolicy::UseUserId);
        let u = rule_updates(&m, &rule_fixture("track-plan-upgraded.json"), &ids);
        let msg = "ajs-next-1764331200-cc33";
        assert_eq!(
            u,
            vec![
                PendoMetadataUpdate {
                    update_id: rule_update_id(
                        "track",
                        msg,
                        "plan-upgraded",
                        "custom",
                        &[("coupon", "n"), ("mrr", "d1499.5"), ("plan", "tenterprise")],
                    ),
                    entity: PendoEntity::Visitor,
                    entity_id: "user-8841".into(),
                    field_group: "custom".into(),
                    values: BTreeMap::from([
                        ("coupon".into(), FieldValue::Null),
                        ("mrr".into(), FieldValue::Double(1499.5)),
                        ("plan".into(), FieldValue::Text("enterprise".into())),
                    ]),
                    timestamp: "2026-11-27T11:40:00.000Z".into(),
                    origin: origin(msg),
                    list_changes: vec![],
                },
                PendoMetadataUpdate {
                    update_id: rule_update_id(
                        "track",
                        msg,
                        "plan-upgraded-account",
                        "agent",
                        &[("plan", "tenterprise")],
                    ),
                    entity: PendoEntity::Account,
                    entity_id: "acct-fabrikam".into(),
                    field_group: "agent".into(),
                    values: BTreeMap::from([(
                        "plan".into(),
                        FieldValue::Text("enterprise".into())
                    )]),
                    timestamp: "2026-11-27T11:40:00.000Z".into(),
                    origin: origin(msg),
                    list_changes: vec![],
                },
            ]
        );
        // Other event names, and the non-audience fixture, match no rule: ignored as before.
        let (outcome, kind) = m.map(&fixture("non-audience-track.json"), RECEIVED, &ids);
        assert_eq!(outcome, SegmentOutcome::Ignored { mappings: vec![] });
        assert_eq!(kind, "track");
        // A different value is a different write: a different id.
        let other = String::from_utf8(rule_fixture("track-plan-upgraded.json"))
            .unwrap()
            .replace("1499.5", "1500");
        let o = rule_updates(&m, other.as_bytes(), &ids);
        assert_eq!(o[0].values["mrr"], FieldValue::Long(1500));
        assert_ne!(o[0].update_id, u[0].update_id);
        assert_eq!(
            o[1].update_id, u[1].update_id,
            "the account write is unchanged"
        );
        // Without the account id the rule names, the event is dead-lettered whole.
        let no_group = other.replace(r#""groupId":"acct-fabrikam","#, "");
        match m.map(no_group.as_bytes(), RECEIVED, &ids).0 {
            SegmentOutcome::DeadLetter { reason, detail } => {
                assert_eq!(reason, "missing_account_id");
                assert!(
                    detail.contains("plan-upgraded-account") && detail.contains("context.groupId"),
                    "{detail}"
                );
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_group_rule_writes_the_account_and_audience_events_are_untouched_by_rules() {
        let ids = BiIdMap::default();
        let m = rules_mapper(UnmappedUserPolicy::UseUserId);
        let u = rule_updates(&m, &rule_fixture("group-traits.json"), &ids);
        assert_eq!(u.len(), 1);
        assert_eq!(
            (
                u[0].entity,
                u[0].entity_id.as_str(),
                u[0].field_group.as_str()
            ),
            (PendoEntity::Account, "acct-fabrikam", "custom")
        );
        assert_eq!(
            u[0].values,
            BTreeMap::from([
                ("employees".into(), FieldValue::Long(1200)),
                ("industry".into(), FieldValue::Text("Manufacturing".into())),
            ])
        );
        // Audience deliveries keep their own mapping even when a rule matches their type.
        for (payload, expected) in expected_fixture_updates() {
            assert_eq!(rule_updates(&m, &payload, &ids), vec![expected]);
        }
    }

    #[test]
    fn objects_and_arrays_dead_letter_the_event_naming_rule_field_and_path() {
        let ids = BiIdMap::default();
        let m = rules_mapper(UnmappedUserPolicy::UseUserId);
        let before = rule_metric("user-traits", "plan", "invalid");
        for (plan, what) in [
            (r#"{"tier":"pro"}"#, "an object"),
            (r#"["pro"]"#, "an array"),
        ] {
            let e = format!(
                r#"{{"type":"identify","messageId":"m-bad","userId":"u-1","traits":{{"plan":{plan},"seats":3}},"timestamp":"2026-11-27T10:00:00Z"}}"#
            );
            match m.map(e.as_bytes(), RECEIVED, &ids).0 {
                SegmentOutcome::DeadLetter { reason, detail } => {
                    assert_eq!(reason, "invalid_rule_value");
                    assert!(
                        detail.contains("\"user-traits\"")
                            && detail.contains("`plan`")
                            && detail.contains("`traits.plan`")
                            && detail.contains(what),
                        "{detail}"
                    );
                }
                o => panic!("{o:?}"),
            }
        }
        assert!(rule_metric("user-traits", "plan", "invalid") >= before + 2);
    }

    #[test]
    fn rule_visitors_follow_the_id_mapping_and_the_unmapped_user_policy() {
        let empty = BiIdMap::default();
        let track = rule_fixture("track-plan-upgraded.json");
        // dlq: the whole event waits in the DLQ for a mapping.
        assert!(matches!(
            rules_mapper(UnmappedUserPolicy::Dlq)
                .map(&track, RECEIVED, &empty)
                .0,
            SegmentOutcome::DeadLetter {
                reason: "unmapped_user",
                ..
            }
        ));
        // drop: the visitor rule is skipped, the account rule still writes.
        let u = rule_updates(&rules_mapper(UnmappedUserPolicy::Drop), &track, &empty);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].entity, PendoEntity::Account);
        // drop with only visitor rules: the event is dropped (counted).
        assert_eq!(
            rules_mapper(UnmappedUserPolicy::Drop)
                .map(&rule_fixture("identify-traits.json"), RECEIVED, &empty)
                .0,
            SegmentOutcome::Dropped
        );
        // A named visitor id wins, and the mapping is learned alongside the update.
        let e = br#"{"type":"identify","messageId":"m-n","userId":"u-9","traits":{"pendo_visitor_id":"pv-9","plan":"pro"},"timestamp":"2026-11-27T10:00:00Z"}"#;
        let SegmentOutcome::Updates {
            updates, mappings, ..
        } = rules_mapper(UnmappedUserPolicy::Dlq)
            .map(e, RECEIVED, &empty)
            .0
        else {
            panic!()
        };
        assert_eq!(updates[0].entity_id, "pv-9");
        assert_eq!(mappings[0].visitor_id, "pv-9");
        // Only an anonymousId: no visitor (dropped), as for audiences.
        let anon = br#"{"type":"identify","anonymousId":"a-1","traits":{"plan":"pro"},"timestamp":"2026-11-27T10:00:00Z"}"#;
        assert_eq!(
            rules_mapper(UnmappedUserPolicy::UseUserId)
                .map(anon, RECEIVED, &empty)
                .0,
            SegmentOutcome::Dropped
        );
        // No time at all: dead-lettered like an audience event.
        let untimed = br#"{"type":"identify","userId":"u-1","traits":{"plan":"pro"}}"#;
        assert!(matches!(
            rules_mapper(UnmappedUserPolicy::UseUserId)
                .map(untimed, None, &empty)
                .0,
            SegmentOutcome::DeadLetter {
                reason: "missing_timestamp",
                ..
            }
        ));
        // Without a messageId the identity is the ids and the time: still deterministic.
        let m = rules_mapper(UnmappedUserPolicy::UseUserId);
        let a = rule_updates(&m, untimed, &empty);
        assert_eq!(a, rule_updates(&m, untimed, &empty));
        assert_eq!(a[0].origin.segment_message_id, None);
    }

    #[test]
    fn received_at_values_out_of_range_are_absent_never_a_panic() {
        // No event time: the received-at time would be used. Absurd ones count as absent.
        let ids = BiIdMap::default();
        let e = br#"{"type":"track","event":"Audience Entered","userId":"u","properties":{"audience_key":"k"}}"#;
        for bad in [i64::MAX, i64::MIN, -1, 0, 253_402_300_800_000] {
            assert!(
                matches!(
                    mapper().map(e, Some(bad), &ids).0,
                    SegmentOutcome::DeadLetter {
                        reason: "missing_timestamp",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        // An event time wins over any received-at value.
        let timed = br#"{"type":"track","event":"Audience Entered","userId":"u","timestamp":"2026-01-02T03:04:05.678Z","properties":{"audience_key":"k"}}"#;
        match mapper().map(timed, Some(i64::MAX), &ids).0 {
            SegmentOutcome::Updates { updates, .. } => {
                assert_eq!(updates[0].timestamp, "2026-01-02T03:04:05.678Z");
            }
            other => panic!("{other:?}"),
        }
    }
}
