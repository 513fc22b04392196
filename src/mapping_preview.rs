//! `pendo-segment mapping preview CANDIDATE`: what deploying a candidate mapping file would
//! change, measured on recorded raw Pendo events before anything is deployed.
//!
//! It reads the raw topics (`pendo.raw.webhook`, `pendo.raw.api`) like `inspect`:
//! `read_committed`, partitions assigned directly, no consumer group joined, nothing committed,
//! so no role's offsets move. Each event is mapped with the running (configured) mapping and
//! with the candidate, the two outcomes are compared ([`crate::transform::mapping_diff`]), and
//! a summary of aggregated findings with a few samples each is printed. Memory stays bounded:
//! records are streamed, only counts and capped samples are kept.
//!
//! Both sides map without identity resolution (an empty id mapping) and without the Pendo
//! catalogue (no `feature_name`/`guide_name`/`page_name` joined): those do not depend on the
//! mapping file, so they would change both sides alike and can create no finding.
//!
//! With a tracking plan (the configured one, or `--tracking-plan FILE`), both sides' calls are
//! checked against it and violations only the candidate's calls have are reported as
//! introduced (those only the running mapping's calls have, as resolved).
//!
//! Exit status: 0 no messageId changes (or `--allow-id-changes`), 1 a Kafka failure, 2 a usage
//! error or an invalid mapping or plan, 3 messageIds would change — a replay of
//! already-delivered events after deploying would no longer be de-duplicated by Segment — 4 the
//! candidate introduces tracking-plan violations and `--fail-on-violations` was given; so a
//! mapping repository's CI can gate on it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rdkafka::Message;
use serde_json::json;

use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::read_to_end::{StartAt, read_to_end};
use crate::kafka::topics::TopicId;
use crate::transform::mapping::PendoMapping;
use crate::transform::mapping_diff::{
    Category, FindingKey, Findings, Tally, diff_outcomes, diff_plan,
};
use crate::transform::pendo::load_mapping;
use crate::transform::pendo_to_segment::PendoToSegment;
use crate::transform::received_at::received_at;
use crate::transform::tracking_plan::{TrackingPlan, TrackingPlanConfig};

/// Exit status when messageIds would change and `--allow-id-changes` was not given.
pub const EXIT_MESSAGE_IDS_CHANGE: u8 = 3;

/// Exit status when the candidate introduces tracking-plan violations and
/// `--fail-on-violations` was given.
pub const EXIT_PLAN_VIOLATIONS: u8 = 4;

/// `mapping preview` arguments.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The candidate mapping file (TOML), compared with the running one
    /// (`transform_pendo.mapping_file`, or the shipped default).
    pub candidate: PathBuf,
    /// A raw topic to read: `pendo.raw.webhook` or `pendo.raw.api` (default names or effective
    /// names); repeat for both. Default: both.
    #[arg(long = "from-topic", value_name = "TOPIC")]
    pub from_topics: Vec<String>,
    /// Only the last N records of each partition (default: everything retained).
    #[arg(long, value_name = "N", conflicts_with = "since")]
    pub last: Option<i64>,
    /// Only records at or after this time: RFC 3339 (`2026-11-29T08:00:00Z`) or epoch
    /// milliseconds.
    #[arg(long, value_name = "TIME", value_parser = crate::tail::parse_timestamp_ms)]
    pub since: Option<i64>,
    /// Exit 0 even when messageIds would change (a warning is printed instead of exit 3).
    #[arg(long)]
    pub allow_id_changes: bool,
    /// The tracking plan to check both sides' calls against (default: the configured
    /// `transform_pendo.tracking_plan`, with its policies); violations only the candidate's
    /// calls have are reported.
    #[arg(long, value_name = "FILE")]
    pub tracking_plan: Option<PathBuf>,
    /// Exit 4 when the candidate introduces tracking-plan violations (after the messageId
    /// check, which takes precedence).
    #[arg(long)]
    pub fail_on_violations: bool,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Sample diffs kept per finding.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub samples: usize,
}

/// One raw topic to read and the `origin.source` its events are mapped with.
struct RawTopic {
    name: String,
    source: &'static str,
}

/// The raw topics named on the command line (default: both), or a usage error.
fn raw_topics(config: &Config, names: &[String]) -> Result<Vec<RawTopic>, String> {
    let known = [
        (TopicId::PendoRawWebhook, "pendo.webhook"),
        (TopicId::PendoRawApi, "pendo.api"),
    ];
    if names.is_empty() {
        return Ok(known
            .iter()
            .map(|(id, source)| RawTopic {
                name: config.topic_name(*id),
                source,
            })
            .collect());
    }
    let mut out: Vec<RawTopic> = Vec::new();
    for n in names {
        let (id, source) = known
            .iter()
            .find(|(id, _)| id.default_name() == n || config.topic_name(*id) == *n)
            .ok_or_else(|| {
                format!(
                    "--from-topic {n:?} is not a raw Pendo topic: use {} or {} (default names or effective names)",
                    TopicId::PendoRawWebhook.default_name(),
                    TopicId::PendoRawApi.default_name()
                )
            })?;
        let name = config.topic_name(*id);
        if !out.iter().any(|t| t.name == name) {
            out.push(RawTopic { name, source });
        }
    }
    Ok(out)
}

/// What was read, besides the findings.
struct Totals {
    /// Records read per topic, in reading order.
    per_topic: Vec<(String, u64)>,
    /// The tracking plan both sides were checked against: `<fingerprint> (<n> rules)`.
    plan: Option<String>,
}

/// Runs the preview; see the module doc for the exit statuses.
pub async fn preview(config: &Config, args: PreviewArgs) -> ExitCode {
    let topics = match raw_topics(config, &args.from_topics) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.last.is_some_and(|n| n < 1) {
        eprintln!("error: --last must be at least 1");
        return ExitCode::from(2);
    }
    let running = match load_mapping(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: the running mapping is invalid: {e:#}");
            return ExitCode::from(2);
        }
    };
    let candidate = match PendoMapping::load(&args.candidate) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: the candidate mapping is invalid: {e}");
            return ExitCode::from(2);
        }
    };
    let plan_config = match &args.tracking_plan {
        Some(file) => TrackingPlanConfig {
            file: Some(file.clone()),
            ..config.transform_pendo.tracking_plan.clone()
        },
        None => config.transform_pendo.tracking_plan.clone(),
    };
    let plan = match TrackingPlan::from_config(&plan_config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the tracking plan is invalid: {e}");
            return ExitCode::from(2);
        }
    };
    let running_name = config.transform_pendo.mapping_file.as_ref().map_or_else(
        || "the shipped default mapping".to_string(),
        |p| p.display().to_string(),
    );
    let start = match (args.last, args.since) {
        (Some(n), _) => StartAt::Last(n),
        (None, Some(ms)) => StartAt::Timestamp(ms),
        (None, None) => StartAt::Beginning,
    };
    let samples = args.samples;
    let job_config = config.clone();
    let result = tokio::task::spawn_blocking(move || {
        compare(
            &job_config,
            &topics,
            start,
            (running, candidate),
            plan.as_ref(),
            samples,
        )
    })
    .await;
    let (findings, totals) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let id_changes = findings.message_id_changes();
    let refused = id_changes > 0 && !args.allow_id_changes;
    let verdict = verdict(&findings, args.allow_id_changes);
    if args.json {
        println!(
            "{}",
            summary_json(&findings, &totals, &running_name, &args, &verdict)
        );
    } else {
        print!(
            "{}",
            summary_text(&findings, &totals, &running_name, &args, &verdict)
        );
    }
    if refused {
        ExitCode::from(EXIT_MESSAGE_IDS_CHANGE)
    } else if args.fail_on_violations && findings.plan_violations_introduced() > 0 {
        ExitCode::from(EXIT_PLAN_VIOLATIONS)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads every chosen topic and compares each event's two outcomes.
fn compare(
    config: &Config,
    topics: &[RawTopic],
    start: StartAt,
    (running, candidate): (PendoMapping, PendoMapping),
    plan: Option<&TrackingPlan>,
    samples: usize,
) -> anyhow::Result<(Findings, Totals)> {
    // Identity resolution is the same for both sides: an empty id mapping (see the module doc).
    let ids: HashMap<String, String> = HashMap::new();
    let mut findings = Findings::new(samples);
    let mut per_topic = Vec::new();
    for topic in topics {
        let settings = config.transform_pendo.mapper_settings(topic.source);
        let before = PendoToSegment::new(running.clone(), settings.clone());
        let after = PendoToSegment::new(candidate.clone(), settings);
        let mut consumer = client_config::consumer(config, "mapping-preview");
        consumer.set("statistics.interval.ms", "0");
        let read = read_to_end(
            consumer,
            &topic.name,
            start,
            std::time::Duration::ZERO,
            |m| {
                let raw = m.payload().unwrap_or_default();
                let at = received_at(m);
                let (outcome_before, obs) = before.map(raw, at, &ids);
                let (outcome_after, _) = after.map(raw, at, &ids);
                let mut diff = diff_outcomes(&outcome_before, &outcome_after, &obs.kind);
                if let Some(plan) = plan {
                    diff.extend(diff_plan(plan, &outcome_before, &outcome_after, &obs.kind));
                }
                findings.record_event(
                    &format!("{} {}@{}", topic.name, m.partition(), m.offset()),
                    diff,
                );
                Ok(())
            },
        )?;
        per_topic.push((topic.name.clone(), read));
    }
    let plan = plan.map(|p| format!("{} ({} rules)", p.fingerprint(), p.rule_count()));
    Ok((findings, Totals { per_topic, plan }))
}

/// The last line: what the exit status says, in words.
fn verdict(findings: &Findings, allow_id_changes: bool) -> String {
    let mut v = id_verdict(findings, allow_id_changes);
    let introduced = findings.plan_violations_introduced();
    if introduced > 0 {
        let _ = write!(
            v,
            "; {introduced} tracking plan violation(s) introduced (exit {EXIT_PLAN_VIOLATIONS} with --fail-on-violations)"
        );
    }
    v
}

/// The verdict on messageIds, which decides the exit status first.
fn id_verdict(findings: &Findings, allow_id_changes: bool) -> String {
    let ids = findings.message_id_changes();
    match (findings.is_empty(), ids, allow_id_changes) {
        (true, _, _) => "verdict: no changes: the candidate maps every event read exactly like the running mapping".to_string(),
        (false, 0, _) => format!(
            "verdict: {} finding(s), no messageId changes: safe to deploy as far as de-duplication goes",
            findings.len()
        ),
        (false, n, false) => format!(
            "verdict: REFUSED: {n} call(s) would get a new messageId; Segment would not de-duplicate a replay of them after deploying (exit {EXIT_MESSAGE_IDS_CHANGE}; pass --allow-id-changes to accept)"
        ),
        (false, n, true) => format!(
            "verdict: WARNING: {n} call(s) would get a new messageId (accepted with --allow-id-changes): do not replay events delivered before the deploy"
        ),
    }
}

/// `track "Feature Clicked" (kind featureClicked)`.
fn subject(key: &FindingKey) -> String {
    let mut s = if key.call_type.is_empty() {
        "event".to_string()
    } else {
        key.call_type.clone()
    };
    if !key.name.is_empty() {
        let _ = write!(s, " {:?}", key.name);
    }
    let kind = if key.kind.is_empty() {
        "(none)"
    } else {
        &key.kind
    };
    let _ = write!(s, " (kind {kind})");
    s
}

fn or_none(v: &str) -> &str {
    if v.is_empty() { "(none)" } else { v }
}

/// The human summary.
fn summary_text(
    findings: &Findings,
    totals: &Totals,
    running_name: &str,
    args: &PreviewArgs,
    verdict: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mapping preview: candidate {} against the running mapping ({running_name})",
        args.candidate.display()
    );
    let read: u64 = totals.per_topic.iter().map(|(_, n)| n).sum();
    let per_topic = totals
        .per_topic
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "records read: {read} ({per_topic})");
    if let Some(plan) = &totals.plan {
        let _ = writeln!(out, "tracking plan: {plan}, checked on both sides");
    }
    let _ = writeln!(
        out,
        "events mapped identically: {} of {}",
        findings.identical(),
        findings.events()
    );
    let _ = writeln!(out, "findings: {}", findings.len());
    for category in Category::ALL {
        let of: Vec<(&FindingKey, &Tally)> = findings
            .iter()
            .filter(|(k, _)| k.category == category)
            .collect();
        if of.is_empty() {
            continue;
        }
        let total: u64 = of.iter().map(|(_, t)| t.count).sum();
        let _ = writeln!(out, "\n{} [{}]: {total}", category.title(), category.code());
        for (key, tally) in of {
            let detail = if key.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", key.detail)
            };
            let _ = writeln!(out, "  {}{detail}: {}", subject(key), tally.count);
            for s in &tally.samples {
                let _ = writeln!(
                    out,
                    "    at {}: {} -> {}",
                    s.at,
                    or_none(&s.before),
                    or_none(&s.after)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nnote: both sides map without the id mapping and the Pendo catalogue (the same for both mappings)"
    );
    let _ = writeln!(out, "{verdict}");
    out
}

/// The machine-readable summary (`--json`).
fn summary_json(
    findings: &Findings,
    totals: &Totals,
    running_name: &str,
    args: &PreviewArgs,
    verdict: &str,
) -> serde_json::Value {
    let list: Vec<serde_json::Value> = findings
        .iter()
        .map(|(k, t)| {
            json!({
                "category": k.category.code(),
                "call_type": k.call_type,
                "name": k.name,
                "kind": k.kind,
                "detail": k.detail,
                "count": t.count,
                "samples": t.samples,
            })
        })
        .collect();
    let ids = findings.message_id_changes();
    json!({
        "candidate": args.candidate.display().to_string(),
        "running": running_name,
        "records_read": totals.per_topic.iter().map(|(_, n)| n).sum::<u64>(),
        "topics": totals.per_topic.iter().map(|(t, n)| json!({"topic": t, "records": n})).collect::<Vec<_>>(),
        "events": findings.events(),
        "identical": findings.identical(),
        "findings": list,
        "message_id_changes": ids,
        "tracking_plan": totals.plan,
        "plan_violations_introduced": findings.plan_violations_introduced(),
        "refused": ids > 0 && !args.allow_id_changes,
        "verdict": verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        toml::from_str("[kafka]\nbootstrap_servers = \"b:9092\"\n[topics]\nprefix = \"t.\"\n")
            .unwrap()
    }

    #[test]
    fn raw_topics_accept_default_and_effective_names_only() {
        let c = config();
        let both = raw_topics(&c, &[]).unwrap();
        let names: Vec<(&str, &str)> = both.iter().map(|t| (t.name.as_str(), t.source)).collect();
        assert_eq!(
            names,
            vec![
                ("t.pendo.raw.webhook", "pendo.webhook"),
                ("t.pendo.raw.api", "pendo.api")
            ]
        );
        let one = raw_topics(
            &c,
            &["t.pendo.raw.api".to_string(), "pendo.raw.api".to_string()],
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].source, "pendo.api");
        let e = raw_topics(&c, &["canonical.segment-calls".to_string()])
            .err()
            .unwrap();
        assert!(e.contains("not a raw Pendo topic"), "{e}");
    }

    #[test]
    fn verdicts_follow_message_id_changes() {
        use crate::schema::segment_call::SegmentCall;
        use crate::transform::pendo_to_segment::MapOutcome;
        let empty = Findings::new(1);
        assert!(verdict(&empty, false).contains("no changes"));
        let call = |id: &str, event: &str| SegmentCall::test_track(id, event, "{}");
        let one = |a: SegmentCall, b: SegmentCall| {
            let mut f = Findings::new(1);
            f.record_event(
                "t 0@0",
                diff_outcomes(
                    &MapOutcome::Calls(vec![a]),
                    &MapOutcome::Calls(vec![b]),
                    "k",
                ),
            );
            f
        };
        let renamed = one(call("a", "E"), call("a", "F"));
        assert!(verdict(&renamed, false).contains("no messageId changes"));
        let new_ids = one(call("a", "E"), call("b", "E"));
        assert!(verdict(&new_ids, false).starts_with("verdict: REFUSED: 1 call(s)"));
        assert!(verdict(&new_ids, true).starts_with("verdict: WARNING: 1 call(s)"));
        let text = summary_text(
            &new_ids,
            &Totals {
                per_topic: vec![("t".into(), 1)],
                plan: None,
            },
            "running.toml",
            &PreviewArgs {
                candidate: "c.toml".into(),
                from_topics: vec![],
                last: None,
                since: None,
                allow_id_changes: false,
                tracking_plan: None,
                fail_on_violations: false,
                json: false,
                samples: 3,
            },
            &verdict(&new_ids, false),
        );
        assert!(
            text.contains("  track \"E\" (kind k): 1\n    at t 0@0: a -> b\n"),
            "{text}"
        );
    }
}
