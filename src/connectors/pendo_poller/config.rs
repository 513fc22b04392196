//! `[pendo_poller]`: what the poller reads from Pendo's REST API, how often, and how gently.
//!
//! Pendo publishes no rate limits and its API can lag webhooks by ~12 h
//! (`docs/external-apis.md`, "Pendo REST API"), so the defaults poll rarely, keep one
//! request at a time under a client-side rate limit, and re-read a settling window.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::milestones::MilestoneRule;
use super::usage::UsageMetric;

/// Section name used in validation messages.
const SECTION: &str = "pendo_poller";

/// Settings of the `pendo-poller` role.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PendoPollerConfig {
    /// Seconds between account snapshot cycles; 0 disables account polling.
    pub accounts_interval_s: u64,
    /// Seconds between new-visitor cycles; 0 disables visitor polling.
    pub visitors_interval_s: u64,
    /// Seconds between catalogue refreshes (features, pages, guides, track types); 0 disables.
    pub catalog_interval_s: u64,
    /// Seconds between visitor profile syncs: known visitors whose selected metadata
    /// (`visitor_fields`) changed since it was last sent become an `identify`
    /// (`visitorMetadataUpdated`); 0 disables. Each sync reads only the visitors Pendo updated
    /// since the last one (`metadata.auto.lastupdated`, re-reading `visitors_settle_s`).
    pub profiles_interval_s: u64,
    /// How far back the first profile sync looks for updated visitors, in seconds.
    pub profiles_initial_lookback_s: u64,
    /// Seconds between reads of guide interactions (`guideEvents`: advanced, dismissed,
    /// snoozed, completed — Pendo pushes no webhook for them); 0 disables.
    pub guide_events_interval_s: u64,
    /// Seconds between reads of poll answers (`pollEvents`); 0 disables.
    pub poll_events_interval_s: u64,
    /// Window each interaction read re-reads before its watermark, in seconds (Pendo's API
    /// lags by up to ~12 h); an interaction already emitted is not emitted again.
    pub events_settle_s: u64,
    /// How far back the first interaction read looks, in seconds.
    pub events_initial_lookback_s: u64,
    /// Hours of interactions per query window (1..=720).
    pub events_window_hours: u32,
    /// Seconds between evaluations of the usage milestone rules; 0 disables.
    pub milestones_interval_s: u64,
    /// Usage milestone rules (`[[pendo_poller.milestones]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub milestones: Vec<MilestoneRule>,
    /// Seconds between evaluations of the computed usage metrics; 0 disables.
    pub usage_interval_s: u64,
    /// Computed usage metrics (`[[pendo_poller.usage_metrics]]`): visitor and account traits
    /// computed from Pendo's daily aggregates, sent when their values change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usage_metrics: Vec<UsageMetric>,
    /// Metadata of an account that becomes the Segment group's traits: dotted paths under
    /// the row's `metadata` (`agent.name`, `custom.health_score`, `pendo.nps`), or a whole
    /// group (`custom`). Only these fields decide whether an account changed, so volatile
    /// fields (`auto.lastvisit`) are left out unless asked for.
    pub account_fields: Vec<String>,
    /// The same for a new visitor's identify traits.
    pub visitor_fields: Vec<String>,
    /// Rows asked for per request (keyset pagination, so no result set is unbounded).
    pub page_size: usize,
    /// How far back the first visitor cycle looks for first visits, in seconds.
    pub visitors_initial_lookback_s: u64,
    /// Window each visitor cycle re-reads before its watermark, in seconds: Pendo's API lags by
    /// up to ~12 h, and a visitor already emitted is never emitted again.
    pub visitors_settle_s: u64,
    /// Longest first-visit window of one request, in seconds (bounded queries).
    pub visitors_window_s: u64,
    /// Requests per second sent at most.
    pub requests_per_s: u32,
    /// Deadline of one HTTP request, in ms.
    pub request_timeout_ms: u64,
    /// First retry delay, in ms (doubled per attempt, jittered).
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in ms.
    pub backoff_max_ms: u64,
    /// Longest pause honoured from a `Retry-After` header, in seconds.
    pub retry_after_cap_s: u64,
    /// Attempts of one request before the cycle gives up (it is retried at the next cycle
    /// from its last checkpoint).
    pub max_attempts: u32,
    /// While Pendo refuses the key (401/403), how often it is tried again, in seconds. The
    /// poller stays up and not ready meanwhile, so the refusal is seen on `/metrics` and
    /// alerted on, and a fixed key (or a Pendo-side fix) is picked up without a restart.
    pub refused_key_retry_s: u64,
}

impl Default for PendoPollerConfig {
    fn default() -> Self {
        Self {
            accounts_interval_s: 3_600,
            visitors_interval_s: 900,
            catalog_interval_s: 3_600,
            profiles_interval_s: 900,
            profiles_initial_lookback_s: 86_400,
            guide_events_interval_s: 3_600,
            poll_events_interval_s: 3_600,
            events_settle_s: 12 * 3_600,
            events_initial_lookback_s: 86_400,
            events_window_hours: 24,
            milestones_interval_s: 21_600,
            milestones: Vec::new(),
            usage_interval_s: 21_600,
            usage_metrics: Vec::new(),
            account_fields: vec!["agent".into(), "custom".into()],
            visitor_fields: vec!["agent".into(), "custom".into()],
            page_size: 1_000,
            visitors_initial_lookback_s: 7 * 86_400,
            visitors_settle_s: 12 * 3_600,
            visitors_window_s: 86_400,
            requests_per_s: 2,
            request_timeout_ms: 60_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            retry_after_cap_s: 300,
            max_attempts: 8,
            refused_key_retry_s: 60,
        }
    }
}

impl PendoPollerConfig {
    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.page_size == 0 || self.page_size > 5_000 {
            return Err(format!("{SECTION}.page_size must be 1..=5000"));
        }
        if self.requests_per_s == 0 {
            return Err(format!("{SECTION}.requests_per_s must be > 0"));
        }
        if self.visitors_window_s == 0 || self.visitors_window_s > 30 * 86_400 {
            return Err(format!(
                "{SECTION}.visitors_window_s must be 1..=2592000 (Pendo answers at most 30 days)"
            ));
        }
        if self.events_window_hours == 0 || self.events_window_hours > 720 {
            return Err(format!(
                "{SECTION}.events_window_hours must be 1..=720 (Pendo answers at most 30 days)"
            ));
        }
        if self.request_timeout_ms == 0 || self.max_attempts == 0 || self.refused_key_retry_s == 0 {
            return Err(format!(
                "{SECTION}.request_timeout_ms, {SECTION}.max_attempts and \
                 {SECTION}.refused_key_retry_s must be > 0"
            ));
        }
        for (key, fields) in [
            ("account_fields", &self.account_fields),
            ("visitor_fields", &self.visitor_fields),
        ] {
            if let Some(bad) = fields
                .iter()
                .find(|f| f.is_empty() || f.split('.').any(str::is_empty))
            {
                return Err(format!("{SECTION}.{key}: `{bad}` is not a dotted path"));
            }
        }
        super::usage::validate_all(&self.usage_metrics)?;
        let mut names = std::collections::HashSet::new();
        for rule in &self.milestones {
            rule.validate()?;
            if !names.insert(rule.name.as_str()) {
                return Err(format!(
                    "{SECTION}.milestones: the rule name `{}` is used twice",
                    rule.name
                ));
            }
        }
        Ok(())
    }

    /// An interval setting as a duration; `None` when disabled.
    pub fn every(seconds: u64) -> Option<Duration> {
        (seconds > 0).then(|| Duration::from_secs(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_key() {
        assert_eq!(PendoPollerConfig::default().validate(), Ok(()));
        let c = PendoPollerConfig {
            page_size: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("page_size"));
        let c = PendoPollerConfig {
            account_fields: vec!["custom..x".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("account_fields"));
        let c = PendoPollerConfig {
            visitors_window_s: 31 * 86_400,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("30 days"));
    }
}
