//! `pendo-segment replay --role ROLE --to-...`: moves a role's consumer group
//! (`<kafka.group_id_prefix>.<role>`) to other offsets, so the role re-processes (or skips)
//! records when it next starts — the operator's tool after a destination lost data, a mapping
//! fix, or a backlog that must be dropped.
//!
//! It refuses while the group has active members: the broker only accepts offset commits from
//! outside a group while the group is empty, and a running member would overwrite the new
//! offsets with its own next commit anyway. `--dry-run` shows, per partition, the committed
//! offset, the target and how much would be re-processed or skipped, and commits nothing.
//!
//! The commit is made the way the roles commit: a consumer with the group's id commits an
//! explicit offset list (it never subscribes, so it never joins the group or triggers a
//! rebalance), and the result is read back to confirm it.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::metadata::topic_partitions;
use crate::kafka::topics::TopicId;
use crate::roles::Role;
use crate::tail::parse_timestamp_ms;

/// `replay` arguments.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["to_beginning", "to_end", "to_offset", "to_timestamp"])
))]
pub struct ReplayArgs {
    /// The consumer role whose group is moved (transform-pendo, segment-sink,
    /// transform-segment, pendo-sink).
    #[arg(long, value_enum)]
    pub role: Role,
    /// Re-process everything still retained (each partition's oldest offset).
    #[arg(long)]
    pub to_beginning: bool,
    /// Skip everything not yet processed (each partition's current end).
    #[arg(long)]
    pub to_end: bool,
    /// This offset in every chosen partition (moved into the retained range if outside it).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// The first record at or after this time in each partition (the end if none): RFC 3339
    /// (`2026-11-29T08:00:00Z`, `...+01:00`) or epoch milliseconds (`1764403200000` or
    /// `@1764403200000`).
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp_ms)]
    pub to_timestamp: Option<i64>,
    /// Only this topic (default name or effective name); repeat for several. Default: every
    /// topic the role consumes.
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Only this partition of each chosen topic; repeat for several. Default: all.
    #[arg(long = "partition", value_name = "N")]
    pub partitions: Vec<i32>,
    /// Print the plan (committed offset, target, records to re-process or skip per partition)
    /// and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Try the commit even though the group has active members. Measured on Kafka 4.x: the
    /// broker refuses it (UNKNOWN_MEMBER_ID: it accepts offsets from outside a group only while
    /// the group is empty), replay exits 1 and nothing changes. Were it accepted, a running
    /// member would overwrite the offsets with its next commit. Stop the role instead; a killed
    /// member leaves the group after its session timeout (45 s by default).
    #[arg(long)]
    pub force: bool,
}

/// Where the group should go.
#[derive(Debug, Clone, Copy)]
enum Target {
    Beginning,
    End,
    Offset(i64),
    Timestamp(i64),
}

impl ReplayArgs {
    fn target(&self) -> Target {
        match (self.to_offset, self.to_timestamp) {
            _ if self.to_beginning => Target::Beginning,
            _ if self.to_end => Target::End,
            (Some(o), _) => Target::Offset(o),
            (_, Some(t)) => Target::Timestamp(t),
            // clap's required "target" group makes this unreachable; beginning is the safe
            // reading of "replay" should it ever happen.
            (None, None) => Target::Beginning,
        }
    }
}

/// Why `replay` stopped: a usage error (exit 2) or a refusal / Kafka failure (exit 1).
enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<KafkaError> for Failure {
    fn from(e: KafkaError) -> Self {
        Failure::Runtime(format!("kafka: {e}"))
    }
}

/// One partition's plan.
struct Row {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    low: i64,
    high: i64,
    target: i64,
}

impl Row {
    /// Where the group effectively resumes today: its committed offset, or the oldest record
    /// (`auto.offset.reset = earliest`) when none is committed or it was deleted by retention.
    fn current(&self) -> i64 {
        self.committed
            .map_or(self.low, |c| c.clamp(self.low, self.high))
    }
    fn reprocess(&self) -> i64 {
        (self.current() - self.target).max(0)
    }
    fn skip(&self) -> i64 {
        (self.target - self.current()).max(0)
    }
}

/// Runs `replay`: exit 0 when the offsets were committed (or the dry run printed), 1 when
/// refused or Kafka failed, 2 on a usage error.
pub async fn replay(config: &Config, args: ReplayArgs) -> ExitCode {
    let config = config.clone();
    match tokio::task::spawn_blocking(move || run(&config, &args)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Failure::Usage(e))) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(Err(Failure::Runtime(e))) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The effective names of the topics to move: `--topic` values (each must be read by the
/// role), or every topic the role reads.
fn chosen_topics(config: &Config, role: Role, wanted: &[String]) -> Result<Vec<String>, Failure> {
    let reads: Vec<TopicId> = role.consumed_topics().to_vec();
    if reads.is_empty() {
        let consumers: Vec<&str> = Role::ALL
            .iter()
            .filter(|r| !r.consumed_topics().is_empty())
            .map(|r| r.name())
            .collect();
        return Err(Failure::Usage(format!(
            "role {role} is not a consumer group, so it has no offsets to move; consumer roles: {}",
            consumers.join(", ")
        )));
    }
    let names: Vec<String> = reads.iter().map(|t| config.topic_name(*t)).collect();
    if wanted.is_empty() {
        return Ok(names);
    }
    let mut out = Vec::new();
    for w in wanted {
        let found = reads
            .iter()
            .find(|t| t.default_name() == w || config.topic_name(**t) == *w);
        match found {
            Some(t) => {
                let name = config.topic_name(*t);
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            None => {
                return Err(Failure::Usage(format!(
                    "role {role} does not read topic {w}; it reads: {}",
                    names.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

fn run(config: &Config, args: &ReplayArgs) -> Result<(), Failure> {
    let role = args.role;
    let topics = chosen_topics(config, role, &args.topics)?;
    let group = config.group_id(role.name());
    let timeout = Duration::from_millis(config.kafka.admin_timeout_ms);
    let mut cc = client_config::consumer(config, role.name());
    cc.set("client.id", format!("{}.replay", config.kafka.client_id))
        .set("statistics.interval.ms", "0");
    let consumer: BaseConsumer = cc.create()?;

    // 1. Nobody may be consuming.
    let members = active_members(&consumer, &group, timeout)?;
    if !members.is_empty() {
        let list = members.join("; ");
        let msg = format!(
            "consumer group {group} has {} active member(s): {list}. Stop every `{role}` \
             process (SIGTERM; it commits and leaves the group; a killed one leaves after its \
             session timeout) and run replay again",
            members.len()
        );
        if args.dry_run {
            eprintln!("note: {msg}; a real run would be refused");
        } else if args.force {
            eprintln!(
                "warning: {msg}. --force: trying anyway; the broker refuses commits from outside \
                 a group that has members, and a member that is still running would overwrite \
                 the new offsets with its next commit"
            );
        } else {
            return Err(Failure::Runtime(format!(
                "refusing to move the offsets of an active group: {msg} (or pass --force)"
            )));
        }
    }

    // 2. The plan.
    let rows = plan(&consumer, &topics, &args.partitions, args.target(), timeout)?;
    print_plan(&group, &rows);
    if args.dry_run {
        println!("dry run: nothing committed");
        return Ok(());
    }

    // 3. Commit and read back.
    let mut tpl = TopicPartitionList::new();
    for r in &rows {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.target))?;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        return Err(Failure::Runtime(commit_error(&group, role, &e)));
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    for e in committed.elements() {
        let want = rows
            .iter()
            .find(|r| r.topic == e.topic() && r.partition == e.partition())
            .map(|r| r.target);
        if e.offset().to_raw() != want {
            return Err(Failure::Runtime(format!(
                "the commit was acknowledged but {} partition {} reads back {:?} instead of {:?}: \
                 something else committed for group {group} meanwhile",
                e.topic(),
                e.partition(),
                e.offset(),
                want
            )));
        }
    }
    let (re, skip) = totals(&rows);
    println!(
        "committed: group {group} now starts at the target offsets of {} partition(s) \
         (re-process {re}, skip {skip}); start `{role}` to resume",
        rows.len()
    );
    Ok(())
}

/// The members of `group` as `client_id@host (member_id)`; empty when the group is empty or
/// unknown.
fn active_members(
    consumer: &BaseConsumer,
    group: &str,
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    let list = consumer.fetch_group_list(Some(group), timeout)?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| format!("{}@{} ({})", m.client_id(), m.client_host(), m.id()))
        .collect())
}

/// Committed offset, retained range and target of every chosen partition.
fn plan(
    consumer: &BaseConsumer,
    topics: &[String],
    partitions: &[i32],
    target: Target,
    timeout: Duration,
) -> Result<Vec<Row>, Failure> {
    let mut tpl = TopicPartitionList::new();
    let mut seen = BTreeSet::new();
    for topic in topics {
        let all = topic_partitions(consumer, topic, Duration::ZERO)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        for p in all {
            if partitions.is_empty() || partitions.contains(&p) {
                seen.insert(p);
                tpl.add_partition(topic, p);
            }
        }
    }
    if let Some(p) = partitions.iter().find(|p| !seen.contains(*p)) {
        return Err(Failure::Usage(format!(
            "partition {p} does not exist in {}",
            topics.join(", ")
        )));
    }
    let committed = consumer.committed_offsets(tpl.clone(), timeout)?;
    let by_time = match target {
        Target::Timestamp(ts) => {
            let mut q = TopicPartitionList::new();
            for e in tpl.elements() {
                q.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ts))?;
            }
            Some(consumer.offsets_for_times(q, timeout)?)
        }
        _ => None,
    };
    let mut rows = Vec::new();
    for e in committed.elements() {
        let (topic, partition) = (e.topic().to_string(), e.partition());
        let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let wanted = match target {
            Target::Beginning => low,
            Target::End => high,
            Target::Offset(o) => o,
            Target::Timestamp(_) => by_time
                .as_ref()
                .and_then(|l| l.find_partition(&topic, partition))
                .and_then(|x| match x.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                // No record at or after the time: the end.
                .unwrap_or(high),
        };
        let target = wanted.clamp(low, high);
        if target != wanted {
            eprintln!(
                "note: {topic} partition {partition} holds offsets {low}..{high}: target \
                 {wanted} moved to {target}"
            );
        }
        rows.push(Row {
            topic,
            partition,
            committed,
            low,
            high,
            target,
        });
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

fn totals(rows: &[Row]) -> (i64, i64) {
    (
        rows.iter().map(Row::reprocess).sum(),
        rows.iter().map(Row::skip).sum(),
    )
}

/// The plan as a table: one line per partition, then the totals.
fn print_plan(group: &str, rows: &[Row]) {
    println!("group {group}");
    let w = rows.iter().map(|r| r.topic.len()).max().unwrap_or(5).max(5);
    println!(
        "{:<w$}  {:>9}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
        "TOPIC", "PARTITION", "COMMITTED", "TARGET", "END", "REPROCESS", "SKIP"
    );
    for r in rows {
        let committed = r
            .committed
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        println!(
            "{:<w$}  {:>9}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
            r.topic,
            r.partition,
            committed,
            r.target,
            r.high,
            r.reprocess(),
            r.skip()
        );
    }
    let (re, skip) = totals(rows);
    println!(
        "total: {} partition(s), re-process {re} offset(s), skip {skip} offset(s)",
        rows.len()
    );
}

/// Turns a refused commit into advice.
fn commit_error(group: &str, role: Role, e: &KafkaError) -> String {
    let code = e.rdkafka_error_code();
    let active = matches!(
        code,
        Some(
            RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::FencedMemberEpoch
                | RDKafkaErrorCode::StaleMemberEpoch
        )
    );
    if active {
        format!(
            "the broker refused the offset commit for group {group} ({e}): the group has active \
             members, and Kafka accepts offsets from outside a group only while it is empty. \
             Stop every `{role}` process and run replay again; nothing was changed"
        )
    } else {
        format!("cannot commit the offsets of group {group}: {e}; nothing was changed")
    }
}
