//! The poll cycles and their schedule. Every page of rows is one Kafka transaction holding the
//! records it produced *and* the state that says they were produced (fingerprints, seen
//! visitors, watermarks), so a crash at any point resumes from the last committed page: no
//! window is lost and nothing is emitted twice.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::{ApiError, PendoApi};
use super::config::PendoPollerConfig;
use super::interactions::{self, GuideSteps, HOUR_MS};
use super::milestones::{self, RuleUsage};
use super::rows::{self, ApiRecord, RowError};
use super::state::{PollerState, StateUpdate};
use super::usage::{self, UsageSubject, UsageTally};
use crate::health::ReadinessHandle;
use crate::internal_events::{DeadLetterCut, PendoRowDeadLettered, emit};
use crate::kafka::dead_letter::DeadLetter;
use crate::kafka::headers;
use crate::kafka::record_size::cut_str;
use crate::kafka::transactional_output::{SendError, TransactionalOutput, TxnError};
use crate::metrics::metrics;
use crate::shutdown::Shutdown;

/// The role's name (metrics stage, logs).
pub const STAGE: &str = "pendo-poller";
/// Watermark of the visitor cycles: first visits before it (minus the settle window) are done.
pub const VISITORS_CURSOR: &str = "visitors.firstvisit";
/// Watermark of the profile syncs: metadata updates before it (minus the settle window) are
/// done.
pub const PROFILES_CURSOR: &str = "visitors.lastupdated";
/// End of the last complete account cycle.
pub const ACCOUNTS_CURSOR: &str = "accounts.cycle";
/// End of the last complete catalogue refresh.
pub const CATALOG_CURSOR: &str = "catalog.cycle";
/// End of the last complete milestone evaluation.
pub const MILESTONES_CURSOR: &str = "milestones.cycle";
/// End of the last complete evaluation of the computed usage metrics.
pub const USAGE_CURSOR: &str = "usage.cycle";
/// Milestone and usage records per transaction at most.
const MILESTONE_CHUNK: usize = 1_000;
/// Largest page asked for when a page holds a single key value (Pendo-side bound).
const MAX_PAGE: usize = 5_000;
/// Catalogue records per transaction at most.
const CATALOG_CHUNK: usize = 5_000;

/// The topics the poller writes.
#[derive(Debug, Clone)]
pub struct PollerTopics {
    /// `pendo.raw.api`.
    pub raw_api: String,
    /// `pendo.catalog`.
    pub catalog: String,
    /// `state.pendo-poller`.
    pub state: String,
    /// `dlq.pendo-poller`.
    pub dlq: String,
    /// `state.milestones`.
    pub milestones: String,
}

/// Why a cycle stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Reading from Pendo failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Writing to Kafka failed.
    #[error("Kafka transaction: {0}")]
    Txn(#[from] TxnError),
}

impl PollError {
    /// Errors that retrying with this producer cannot fix: the role stops with the message.
    /// A transaction whose outcome is unknown ([`TxnError::Stuck`], a broker failover) stops
    /// it too, and the runtime starts it again with a new producer. A refused key is not one
    /// of them (see [`is_refused_key`](Self::is_refused_key)).
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            PollError::Txn(TxnError::Fatal(_) | TxnError::Stuck(_))
        )
    }

    /// Pendo refused the key: the poller stays up, not ready, and tries again slowly.
    fn is_refused_key(&self) -> bool {
        matches!(self, PollError::Api(ApiError::Unauthorized { .. }))
    }

    /// Counts a Kafka failure in `pendo_segment_errors_total{kind="transaction"}` (what alert
    /// PendoSegmentKafkaErrors watches). Pendo API failures are counted per request, by status,
    /// in `pendo_segment_pendo_api_requests_total` (alerts PendoSegmentPendoApiErrors and
    /// PendoSegmentPendoApiUnauthorized), not here: a Pendo outage is not a Kafka error.
    fn count(&self) {
        if let PollError::Txn(_) = self {
            metrics()
                .errors
                .with_label_values(&[STAGE, "transaction"])
                .inc();
        }
    }
}

/// Which topic a record of a step goes to.
#[derive(Debug, Clone, Copy)]
enum Dest {
    RawApi,
    Catalog,
    Dlq,
}

struct OutRecord {
    dest: Dest,
    key: String,
    value: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    kind: &'static str,
}

/// What one transaction writes.
#[derive(Default)]
struct Step {
    records: Vec<OutRecord>,
    updates: Vec<StateUpdate>,
}

impl Step {
    fn raw(&mut self, r: ApiRecord, now_ms: i64) {
        self.records.push(OutRecord {
            dest: Dest::RawApi,
            headers: vec![
                (headers::RECEIVED_AT, now_ms.to_string().into_bytes()),
                (headers::SOURCE, b"pendo-api".to_vec()),
                (headers::EVENT_KIND, r.kind.as_bytes().to_vec()),
                (headers::CONTENT_TYPE, b"application/json".to_vec()),
            ],
            key: r.key,
            value: r.value,
            kind: r.kind,
        });
    }

    /// Dead-letters an unusable row once (its fingerprint is remembered).
    fn reject(&mut self, state: &PollerState, source: &str, row: &Value, e: RowError) {
        let fp = rows::fingerprint(row);
        if state.rejected(&fp) || self.updates.contains(&StateUpdate::Rejected { fp }) {
            return;
        }
        emit(PendoRowDeadLettered {
            role: STAGE,
            source,
            reason: e.reason,
            detail: cut_str(&e.detail, 512),
        });
        self.records.push(OutRecord {
            dest: Dest::Dlq,
            key: source.to_string(),
            value: row.to_string().into_bytes(),
            headers: vec![
                (headers::DLQ_REASON, e.reason.as_bytes().to_vec()),
                (headers::DLQ_DETAIL, e.detail.into_bytes()),
                (headers::DLQ_STAGE, STAGE.as_bytes().to_vec()),
                (
                    headers::DLQ_TIME,
                    headers::now_millis().to_string().into_bytes(),
                ),
                (headers::DLQ_SOURCE_TOPIC, source.as_bytes().to_vec()),
            ],
            kind: "dead_letter",
        });
        self.updates.push(StateUpdate::Rejected { fp });
    }
}

/// The poller: one Pendo subscription into Kafka. Built by the role's start-up over its loaded
/// state.
pub struct Poller {
    /// The last step of each guide, learned from the catalogue.
    pub(super) guide_steps: GuideSteps,
    /// The Pendo read API.
    pub(super) api: PendoApi,
    /// The transactional producer of records and state.
    pub(super) out: TransactionalOutput,
    /// What was sent before (loaded from `state.pendo-poller`).
    pub(super) state: PollerState,
    /// `[pendo_poller]`.
    pub(super) cfg: PendoPollerConfig,
    /// Output topics.
    pub(super) topics: PollerTopics,
    /// Deadline of each transactional call.
    pub(super) txn_timeout: Duration,
}

impl Poller {
    /// Runs the cycles on their schedules until `shutdown`; a cycle in progress is abandoned
    /// between (or during) pages, which loses nothing: its pages are atomic.
    /// `ready` is cleared while Pendo refuses the key and set again once every job that met
    /// the refusal has completed a cycle.
    pub async fn run(mut self, shutdown: Shutdown, ready: &ReadinessHandle) -> anyhow::Result<()> {
        let milestones = if self.cfg.milestones.is_empty() {
            None
        } else {
            PendoPollerConfig::every(self.cfg.milestones_interval_s)
        };
        let usage = if self.cfg.usage_metrics.is_empty() {
            None
        } else {
            PendoPollerConfig::every(self.cfg.usage_interval_s)
        };
        let every = PendoPollerConfig::every;
        let jobs: [(Job, Option<Duration>); 8] = [
            (Job::Catalog, every(self.cfg.catalog_interval_s)),
            (Job::Accounts, every(self.cfg.accounts_interval_s)),
            (Job::Visitors, every(self.cfg.visitors_interval_s)),
            (Job::Profiles, every(self.cfg.profiles_interval_s)),
            (Job::GuideEvents, every(self.cfg.guide_events_interval_s)),
            (Job::PollEvents, every(self.cfg.poll_events_interval_s)),
            (Job::Milestones, milestones),
            (Job::Usage, usage),
        ];
        let mut due: Vec<(Job, Duration, Instant)> = jobs
            .iter()
            .filter_map(|(j, every)| every.map(|e| (*j, e, Instant::now())))
            .collect();
        if due.is_empty() {
            tracing::warn!("every pendo_poller interval is 0: nothing to poll");
            shutdown.wait().await;
            return Ok(());
        }
        let mut refused = vec![false; due.len()];
        let refused_retry = Duration::from_secs(self.cfg.refused_key_retry_s);
        loop {
            let (i, at) = due
                .iter()
                .enumerate()
                .map(|(i, d)| (i, d.2))
                .min_by_key(|(_, at)| *at)
                .expect("at least one job");
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                _ = tokio::time::sleep_until(at.into()) => {}
            }
            let (job, every, _) = due[i];
            let started = Instant::now();
            let result = tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                r = self.run_job(job) => r,
            };
            match result {
                Ok(()) => {
                    tracing::info!(
                        job = job.name(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "poll cycle complete"
                    );
                    due[i].2 = Instant::now() + every;
                    if std::mem::take(&mut refused[i]) && !refused.contains(&true) {
                        tracing::info!(
                            "Pendo accepts the integration key again; the poller is ready"
                        );
                        ready.set_ready(true);
                    }
                }
                Err(e) if e.is_refused_key() => {
                    refused[i] = true;
                    ready.set_ready(false);
                    tracing::error!(job = job.name(), error = %e,
                        retry_in_s = refused_retry.as_secs(),
                        "poll cycle refused; the poller is not ready until Pendo accepts the key \
                         (the cycle resumes from its last committed page)");
                    due[i].2 = Instant::now() + refused_retry;
                }
                Err(e) if e.is_fatal() => {
                    e.count();
                    return Err(anyhow::Error::new(e).context(format!("{} cycle", job.name())));
                }
                Err(e) => {
                    e.count();
                    let retry = every.min(Duration::from_secs(60));
                    tracing::error!(job = job.name(), error = %e, retry_in_s = retry.as_secs(),
                        "poll cycle failed; it resumes from its last committed page");
                    due[i].2 = Instant::now() + retry;
                }
            }
            self.report_lag();
        }
    }

    async fn run_job(&mut self, job: Job) -> Result<(), PollError> {
        match job {
            Job::Accounts => self.accounts_cycle().await,
            Job::Visitors => self.visitors_cycle().await,
            Job::Profiles => self.profiles_cycle().await,
            Job::Catalog => self.catalog_cycle().await,
            Job::Milestones => self.milestones_cycle().await,
            Job::Usage => self.usage_cycle().await,
            Job::GuideEvents => self.interactions_cycle(interactions::GUIDE_EVENTS).await,
            Job::PollEvents => self.interactions_cycle(interactions::POLL_EVENTS).await,
        }
    }

    /// Every account, page by page; emits those whose selected metadata changed.
    pub async fn accounts_cycle(&mut self) -> Result<(), PollError> {
        let now_ms = headers::now_millis();
        let page = self.cfg.page_size;
        let mut after: Option<String> = None;
        loop {
            let rows = self
                .api
                .aggregate("accounts", rows::accounts_page(after.as_deref(), page))
                .await?;
            let mut step = Step::default();
            for row in &rows {
                match rows::row_id(row, "accountId") {
                    Err(e) => step.reject(&self.state, "accounts", row, e),
                    Ok(id) => {
                        let selected = rows::select_metadata(row, &self.cfg.account_fields);
                        let fp = rows::fingerprint(&selected);
                        let pending = StateUpdate::Account {
                            id: id.to_string(),
                            fp,
                        };
                        if self.state.account(id) != Some(&fp) && !step.updates.contains(&pending) {
                            step.raw(
                                rows::account_event(row, selected, &fp, now_ms / 1000),
                                now_ms,
                            );
                            step.updates.push(pending);
                        }
                    }
                }
            }
            let last = last_id(&rows, "accountId");
            let done = rows.len() < page || last.is_none() || last <= after;
            if done {
                step.updates.push(StateUpdate::Cursor {
                    name: ACCOUNTS_CURSOR.into(),
                    at: now_ms,
                });
            }
            self.commit(step).await?;
            if done {
                return Ok(());
            }
            after = last;
        }
    }

    /// Visitors first seen since the watermark (re-reading the settle window), window by
    /// window, page by page; emits each visitor once.
    pub async fn visitors_cycle(&mut self) -> Result<(), PollError> {
        let lookback = self.cfg.visitors_initial_lookback_s;
        self.visitor_windows(VISITORS_CURSOR, "firstvisit", lookback, first_visit)
            .await
    }

    /// Visitors Pendo updated since the watermark (re-reading the settle window), window by
    /// window, page by page; emits those whose selected metadata differs from what was last
    /// sent for them (first visit or an earlier sync).
    pub async fn profiles_cycle(&mut self) -> Result<(), PollError> {
        let lookback = self.cfg.profiles_initial_lookback_s;
        self.visitor_windows(PROFILES_CURSOR, "lastupdated", lookback, changed_profile)
            .await
    }

    /// Visitor rows whose `metadata.auto.<field>` lies after `cursor` (minus the settle window;
    /// `lookback_s` back on a first run), in windows of `visitors_window_s`, page by page; each
    /// page's rows go through `on_row` into one transaction, the last page of a window with the
    /// cursor moved to the window's end.
    async fn visitor_windows(
        &mut self,
        cursor: &'static str,
        field: &str,
        lookback_s: u64,
        on_row: fn(&PollerState, &PendoPollerConfig, &Value, i64, &mut Step),
    ) -> Result<(), PollError> {
        let now = headers::now_millis();
        let settle = (self.cfg.visitors_settle_s * 1000) as i64;
        let window = (self.cfg.visitors_window_s * 1000) as i64;
        let page = self.cfg.page_size;
        let mut from = match self.state.cursor(cursor) {
            Some(wm) => wm - settle,
            None => now - (lookback_s * 1000) as i64,
        };
        while from < now {
            let to = (from + window).min(now);
            let mut after: Option<String> = None;
            loop {
                let rows = self
                    .api
                    .aggregate(
                        "visitors",
                        rows::visitors_page(field, from, to, after.as_deref(), page),
                    )
                    .await?;
                let mut step = Step::default();
                for row in &rows {
                    on_row(&self.state, &self.cfg, row, now, &mut step);
                }
                let last = last_id(&rows, "visitorId");
                let done = rows.len() < page || last.is_none() || last <= after;
                if done {
                    let wm = self.state.cursor(cursor).unwrap_or(i64::MIN);
                    step.updates.push(StateUpdate::Cursor {
                        name: cursor.into(),
                        at: wm.max(to),
                    });
                }
                self.commit(step).await?;
                if done {
                    break;
                }
                after = last;
            }
            from = to;
        }
        Ok(())
    }

    /// Features, pages, guides and track types; publishes entries that are new or changed.
    pub async fn catalog_cycle(&mut self) -> Result<(), PollError> {
        let now_ms = headers::now_millis();
        for kind in rows::CATALOG_KINDS {
            let items = self.api.catalog(kind).await?;
            if kind == "guide" {
                self.guide_steps.learn(&items);
            }
            let mut step = Step::default();
            for item in &items {
                match rows::catalog_entry(kind, item) {
                    Err(e) => step.reject(&self.state, kind, item, e),
                    Ok((key, value)) => {
                        let fp = rows::fingerprint(&value);
                        if self.state.catalog(&key) != Some(&fp) {
                            step.records.push(OutRecord {
                                dest: Dest::Catalog,
                                key: key.clone(),
                                value: value.to_string().into_bytes(),
                                headers: vec![(headers::SOURCE, b"pendo-api".to_vec())],
                                kind: "catalog",
                            });
                            step.updates.push(StateUpdate::Catalog { key, fp });
                        }
                    }
                }
                if step.records.len() >= CATALOG_CHUNK {
                    self.commit(std::mem::take(&mut step)).await?;
                }
            }
            self.commit(step).await?;
        }
        let mut done = Step::default();
        done.updates.push(StateUpdate::Cursor {
            name: CATALOG_CURSOR.into(),
            at: now_ms,
        });
        self.commit(done).await
    }

    /// Interaction rows of `source` (guideEvents, pollEvents) since the watermark, re-reading
    /// the settle window, hour range by hour range, page by page; each row emitted once.
    pub async fn interactions_cycle(&mut self, source: &'static str) -> Result<(), PollError> {
        let now = headers::now_millis();
        let cursor = format!("{source}.browserTime");
        let settle = (self.cfg.events_settle_s * 1000) as i64;
        let window_hours = self.cfg.events_window_hours as i64;
        let page = self.cfg.page_size;
        let start = match self.state.cursor(&cursor) {
            Some(wm) => wm - settle,
            None => now - (self.cfg.events_initial_lookback_s * 1000) as i64,
        };
        let mut from = start.div_euclid(HOUR_MS) * HOUR_MS;
        while from < now {
            let hours = window_hours
                .min((now - from + HOUR_MS - 1) / HOUR_MS)
                .max(1);
            let end = from + hours * HOUR_MS;
            let mut cont: Option<(i64, bool)> = None;
            let mut limit = page;
            loop {
                let query = interactions::events_page(source, from, hours, cont, limit);
                let mut rows = self.api.aggregate(source, query).await?;
                let next = rows::split_page(&mut rows, limit, "browserTime")
                    .and_then(|(v, inclusive)| Some((v.as_i64()?, inclusive)));
                // A full page of one millisecond: read it again wider rather than skip the
                // rest of that millisecond.
                if matches!(next, Some((_, false))) && limit < MAX_PAGE {
                    limit = (limit * 2).min(MAX_PAGE);
                    continue;
                }
                limit = page;
                let mut step = Step::default();
                for row in &rows {
                    match interactions::interaction_event(source, row, &self.guide_steps) {
                        Err(e) => step.reject(&self.state, source, row, e),
                        Ok(r) => {
                            let fp = rows::fingerprint(
                                &serde_json::json!({"source": source, "row": row}),
                            );
                            let at = row["browserTime"].as_i64().unwrap_or_default();
                            let pending = StateUpdate::SeenRow { fp, at };
                            if !self.state.row_seen(&fp) && !step.updates.contains(&pending) {
                                step.raw(r, now);
                                step.updates.push(pending);
                            }
                        }
                    }
                }
                let done = match next {
                    Some(n) if cont != Some(n) => {
                        cont = Some(n);
                        false
                    }
                    _ => true,
                };
                if done {
                    let wm = self
                        .state
                        .cursor(&cursor)
                        .unwrap_or(i64::MIN)
                        .max(end.min(now));
                    step.updates.push(StateUpdate::Cursor {
                        name: cursor.clone(),
                        at: wm,
                    });
                    // Rows no later window re-reads (the next one starts at the hour of
                    // `wm - settle`) are forgotten, so the state stays bounded.
                    for fp in self.state.rows_before(wm - settle - HOUR_MS) {
                        step.updates.push(StateUpdate::ForgetRow { fp });
                    }
                }
                self.commit(step).await?;
                if done {
                    break;
                }
            }
            from = end;
        }
        Ok(())
    }

    /// Evaluates every milestone rule over its window and emits each visitor that reached it
    /// and never did before.
    pub async fn milestones_cycle(&mut self) -> Result<(), PollError> {
        let now_ms = headers::now_millis();
        let rules = self.cfg.milestones.clone();
        for rule in &rules {
            let mut usage = RuleUsage::default();
            for feature in &rule.feature_ids {
                let filter = format!("featureId == {}", rows::literal(feature));
                for day in rule.days(now_ms) {
                    self.read_day("featureEvents", Some(&filter), day, |rows| {
                        usage.add_rows(feature, rows)
                    })
                    .await?;
                }
            }
            let reached: Vec<_> = usage
                .reached(rule)
                .into_iter()
                .filter(|(v, _, _)| !self.state.milestone_reached(&rule.name, v))
                .collect();
            for chunk in reached.chunks(MILESTONE_CHUNK) {
                let mut step = Step::default();
                for (visitor, account, count) in chunk {
                    step.raw(
                        milestones::milestone_event(
                            rule,
                            visitor,
                            account.as_deref(),
                            *count,
                            now_ms,
                        ),
                        now_ms,
                    );
                    step.updates.push(StateUpdate::Milestone {
                        rule: rule.name.clone(),
                        visitor: visitor.clone(),
                    });
                }
                self.commit(step).await?;
                metrics()
                    .milestones_emitted
                    .with_label_values(&[&rule.name])
                    .inc_by(chunk.len() as u64);
            }
        }
        let mut done = Step::default();
        done.updates.push(StateUpdate::Cursor {
            name: MILESTONES_CURSOR.into(),
            at: now_ms,
        });
        self.commit(done).await
    }

    /// Evaluates the computed usage metrics over their windows and sends each visitor and
    /// account whose values changed since they were last sent (zeros to one whose usage
    /// stopped), in chunks, each one transaction with the fingerprints it sent.
    pub async fn usage_cycle(&mut self) -> Result<(), PollError> {
        let now_ms = headers::now_millis();
        let metrics = self.cfg.usage_metrics.clone();
        let reads = usage::reads(&metrics, now_ms);
        let mut tally = UsageTally::new(&metrics, now_ms);
        for day in &reads.activity_days {
            self.read_day("events", None, *day, |rows| tally.add_activity(rows))
                .await?;
        }
        for (feature, days) in &reads.feature_days {
            let filter = format!("featureId == {}", rows::literal(feature));
            for day in days {
                self.read_day("featureEvents", Some(&filter), *day, |rows| {
                    tally.add_feature_use(feature, rows)
                })
                .await?;
            }
        }
        // Subjects with rows, and those whose last sent usage was not zeros (they may have none
        // any more).
        let mut subjects: Vec<(UsageSubject, String)> = tally
            .subjects()
            .map(|(s, id)| (s, id.to_string()))
            .collect();
        for key in self.state.usage_keys() {
            let parsed = match key.split_once(':') {
                Some(("visitor", id)) => Some((UsageSubject::Visitor, id)),
                Some(("account", id)) => Some((UsageSubject::Account, id)),
                _ => None,
            };
            if let Some((s, id)) = parsed
                && !tally.has(s, id)
            {
                subjects.push((s, id.to_string()));
            }
        }
        subjects.sort_unstable();
        // Records per transaction: at most a page, so a large change commits in steps.
        let chunk = self.cfg.page_size.min(MILESTONE_CHUNK);
        let mut step = Step::default();
        let mut sent = 0usize;
        for (subject, id) in &subjects {
            if step.updates.len() >= chunk {
                self.commit(std::mem::take(&mut step)).await?;
            }
            let key = usage::state_key(*subject, id);
            let Some(traits) = tally.traits(*subject, id) else {
                // No metric of this subject is configured any more: what was sent is forgotten.
                step.updates.push(StateUpdate::Usage { key, fp: None });
                continue;
            };
            let fp = rows::fingerprint(&Value::Object(traits.clone()));
            let zero = tally.is_zero(*subject, &traits);
            let last = self.state.usage(&key);
            if last == Some(&fp) || (last.is_none() && zero) {
                continue;
            }
            step.raw(
                usage::usage_event(*subject, id, traits, &fp, now_ms),
                now_ms,
            );
            step.updates.push(StateUpdate::Usage {
                key,
                fp: (!zero).then_some(fp),
            });
            sent += 1;
        }
        step.updates.push(StateUpdate::Cursor {
            name: USAGE_CURSOR.into(),
            at: now_ms,
        });
        self.commit(step).await?;
        tracing::info!(subjects = subjects.len(), sent, "usage metrics evaluated");
        Ok(())
    }

    /// Reads every row of `source` for one UTC day matching `filter`, page by page (keyset by
    /// visitor; a page that ends inside one visitor's rows is cut before them and continued
    /// from that visitor, a full page of one visitor read again wider), handing each page to
    /// `on_rows`.
    async fn read_day(
        &self,
        source: &str,
        filter: Option<&str>,
        day: i64,
        mut on_rows: impl FnMut(&[Value]),
    ) -> Result<(), PollError> {
        let page = self.cfg.page_size;
        let mut from: Option<(String, bool)> = None;
        let mut limit = page;
        loop {
            let query = rows::day_page(
                source,
                filter,
                day,
                from.as_ref().map(|(v, inclusive)| (v.as_str(), *inclusive)),
                limit,
            );
            let mut rows = self.api.aggregate(source, query).await?;
            let next = rows::split_page(&mut rows, limit, "visitorId");
            if matches!(next, Some((_, false))) && limit < MAX_PAGE {
                limit = (limit * 2).min(MAX_PAGE);
                continue;
            }
            limit = page;
            on_rows(&rows);
            match next.and_then(|(v, i)| Some((v.as_str()?.to_string(), i))) {
                Some(n) if from.as_ref() != Some(&n) => from = Some(n),
                _ => return Ok(()),
            }
        }
    }

    /// Writes a step in one transaction, then remembers its state.
    async fn commit(&mut self, step: Step) -> Result<(), PollError> {
        if step.records.is_empty() && step.updates.is_empty() {
            return Ok(());
        }
        let out = self.out.clone();
        let topics = self.topics.clone();
        let timeout = self.txn_timeout;
        let Step { records, updates } = step;
        let (records, updates) = tokio::task::spawn_blocking(move || {
            let result = write_transaction(&out, &topics, &records, &updates, timeout);
            result.map(|()| (records, updates))
        })
        .await
        .map_err(|e| TxnError::Fatal(format!("transaction task: {e}")))??;
        self.state.apply(&updates);
        let m = metrics();
        for r in &records {
            m.poller_records.with_label_values(&[r.kind]).inc();
        }
        // After every committed step, not only at the end of a cycle: a cycle catching up days
        // of windows (a first start, a long outage) shows how far behind it still is.
        if updates
            .iter()
            .any(|u| matches!(u, StateUpdate::Cursor { .. }))
        {
            self.report_lag();
        }
        Ok(())
    }

    /// Sets the watermark lag gauge of every cursor the state has.
    fn report_lag(&self) {
        let now = headers::now_millis();
        for name in [
            VISITORS_CURSOR,
            PROFILES_CURSOR,
            ACCOUNTS_CURSOR,
            CATALOG_CURSOR,
            MILESTONES_CURSOR,
            USAGE_CURSOR,
            "guideEvents.browserTime",
            "pollEvents.browserTime",
        ] {
            if let Some(at) = self.state.cursor(name) {
                metrics()
                    .poller_watermark_lag
                    .with_label_values(&[name])
                    .set((now - at).max(0) / 1000);
            }
        }
    }
}

/// A row of the new-visitor cycle: a visitor not emitted yet becomes `visitorFirstSeen`, with
/// the fingerprint of what it sent.
fn first_visit(
    state: &PollerState,
    cfg: &PendoPollerConfig,
    row: &Value,
    now: i64,
    step: &mut Step,
) {
    match rows::visitor_event(row, &cfg.visitor_fields) {
        Err(e) => step.reject(state, "visitors", row, e),
        Ok(r) => {
            let fp = rows::fingerprint(&rows::select_metadata(row, &cfg.visitor_fields));
            let pending = StateUpdate::Visitor {
                id: r.key.clone(),
                seen: true,
                fp,
            };
            if !state.visitor_seen(&r.key) && !step.updates.contains(&pending) {
                step.raw(r, now);
                step.updates.push(pending);
            }
        }
    }
}

/// A row of the profile sync: a visitor whose selected metadata differs from what was last
/// sent for it becomes `visitorMetadataUpdated`.
fn changed_profile(
    state: &PollerState,
    cfg: &PendoPollerConfig,
    row: &Value,
    now: i64,
    step: &mut Step,
) {
    let selected = rows::select_metadata(row, &cfg.visitor_fields);
    let fp = rows::fingerprint(&selected);
    let known = rows::row_id(row, "visitorId")
        .ok()
        .and_then(|id| state.visitor(id));
    if known.is_some_and(|m| m.fp == Some(fp)) {
        return;
    }
    match rows::visitor_update_event(row, selected, &fp) {
        Err(e) => step.reject(state, "visitors", row, e),
        Ok(r) => {
            let pending = StateUpdate::Visitor {
                id: r.key.clone(),
                seen: known.is_some_and(|m| m.seen),
                fp,
            };
            if !step.updates.contains(&pending) {
                step.raw(r, now);
                step.updates.push(pending);
            }
        }
    }
}

fn write_transaction(
    out: &TransactionalOutput,
    topics: &PollerTopics,
    records: &[OutRecord],
    updates: &[StateUpdate],
    timeout: Duration,
) -> Result<(), TxnError> {
    out.begin()?;
    let sent = (|| {
        for r in records {
            let topic = match r.dest {
                Dest::RawApi => &topics.raw_api,
                Dest::Catalog => &topics.catalog,
                Dest::Dlq => &topics.dlq,
            };
            let h: Vec<(&str, &[u8])> = r.headers.iter().map(|(k, v)| (*k, &v[..])).collect();
            let dlq_limit = out.limits().max_message_bytes(&topics.dlq);
            if let Dest::Dlq = r.dest {
                // Rows come from Pendo: their dead letters are cut to fit, never refused.
                let letter =
                    DeadLetter::from_parts(Some(r.key.as_bytes()), &r.value, h).fit(dlq_limit);
                out.send(topic, letter.key(), letter.payload(), &letter.headers())?;
                if letter.was_cut() {
                    emit(DeadLetterCut { role: STAGE });
                }
                continue;
            }
            match out.send(topic, Some(r.key.as_bytes()), &r.value, &h) {
                Err(SendError::TooLarge(e)) => {
                    // A row (or catalogue entry) Kafka would refuse: dead-lettered, never a
                    // transaction that fails again at every cycle.
                    tracing::warn!(kind = r.kind, error = %e, "Pendo row too large for its topic; dead-lettered");
                    let letter = DeadLetter::new(
                        STAGE,
                        "too_large",
                        &e.to_string(),
                        Some(r.key.as_bytes()),
                        &r.value,
                    )
                    .header(headers::DLQ_SOURCE_TOPIC, topic.as_bytes().into())
                    .carrying(h)
                    .fit(dlq_limit);
                    out.send(
                        &topics.dlq,
                        letter.key(),
                        letter.payload(),
                        &letter.headers(),
                    )?;
                    letter.count(STAGE, "too_large");
                }
                other => other?,
            }
        }
        for u in updates {
            let (k, v) = u.to_record();
            let topic = if u.is_milestone() {
                &topics.milestones
            } else {
                &topics.state
            };
            match v {
                Some(v) => out.send(topic, Some(k.as_bytes()), &v, &[])?,
                None => out.send_tombstone(topic, k.as_bytes())?,
            }
        }
        Ok::<(), SendError>(())
    })();
    if let Err(e) = sent {
        out.abort(timeout)?;
        return Err(TxnError::Abortable(format!("send: {e}")));
    }
    out.commit_records(timeout)
}

/// The last row's id (keyset pagination continues after it).
fn last_id(rows: &[Value], field: &str) -> Option<String> {
    rows.iter()
        .rev()
        .find_map(|r| r.get(field).and_then(Value::as_str))
        .map(str::to_string)
}

/// The scheduled cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Accounts,
    Visitors,
    Profiles,
    Catalog,
    Milestones,
    Usage,
    GuideEvents,
    PollEvents,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Accounts => "accounts",
            Job::Visitors => "visitors",
            Job::Profiles => "profiles",
            Job::Catalog => "catalog",
            Job::Milestones => "milestones",
            Job::Usage => "usage",
            Job::GuideEvents => "guide_events",
            Job::PollEvents => "poll_events",
        }
    }
}
