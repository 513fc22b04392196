//! The command line: `run`, `topics apply`, `config check`, `idmap load|get|delete`,
//! `mapping check|default|preview`, `inspect TOPIC`, `tail TOPIC`, `replay --role ROLE`,
//! `sample-pendo-api`.
//!
//! Exit status: 0 success; 1 a runtime failure or unfixed topic drift; 2 a usage or
//! configuration error; 3 `mapping preview` found calls whose messageId would change and
//! `--allow-id-changes` was not given; 4 `mapping preview --fail-on-violations` found
//! tracking-plan violations the candidate introduces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app;
use crate::config::{Config, LogFormat};
use crate::idmap;
use crate::kafka::{client_config, topics};
use crate::logging;
use crate::roles::{Role, RunOptions};

/// Pendo <-> Segment through Apache Kafka, exactly once.
#[derive(Debug, Parser)]
#[command(name = "pendo-segment", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./pendo-segment.toml if it exists). Environment variables
    /// PENDO_SEGMENT_<SECTION>__<KEY> override it.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format (overrides observability.log_format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one or more roles in this process until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Manage the pipeline's Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The Pendo visitor id -> Segment user id mapping (topic idmap.visitor-to-user).
    #[command(subcommand)]
    Idmap(IdmapCommand),
    /// The Pendo -> Segment mapping file.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Print what a topic holds, decoded, one JSON object per line (Segment calls as they will
    /// be sent, dead letters with their reasons, id mappings, raw events). Reads committed data
    /// only and joins no consumer group.
    Inspect {
        /// A default topic name (e.g. canonical.segment-calls, dlq.transform-pendo) or the
        /// effective name.
        topic: String,
        /// Only the last N records of each partition.
        #[arg(long)]
        last: Option<i64>,
        /// One short human-readable line per record.
        #[arg(long)]
        brief: bool,
    },
    /// Print records of a topic as JSON lines (decoded like `inspect`, with partition, offset,
    /// timestamp, key and headers) from a chosen position; `--follow` keeps printing new ones.
    ///
    /// Reads committed data only, joins no consumer group and commits nothing, so it never
    /// disturbs the roles. Dead letters carry their reason in the `dlq-reason` header (and
    /// `dlq-detail`, `dlq-stage`, `dlq-source-*`).
    Tail(crate::tail::TailArgs),
    /// Move a consumer role's group to other offsets so it re-processes (or skips) records when
    /// it next starts.
    ///
    /// The group is `<kafka.group_id_prefix>.<role>`; by default every topic the role consumes
    /// and every partition is moved. Stop the role first: replay refuses while the group has
    /// active members (Kafka would refuse the commit anyway). Use `--dry-run` to see, per
    /// partition, the committed offset, the target and how many offsets would be re-processed
    /// or skipped (transaction markers included, so records can be fewer).
    ///
    /// Re-delivering to Segment is safe: messageIds are deterministic (derived from the Pendo
    /// event), and Segment de-duplicates a messageId it has seen within about the last 24
    /// hours. Replaying records older than that can create duplicates in Segment destinations.
    /// Replaying transform-pendo re-produces calls with the same messageIds; the segment-sink
    /// then delivers them again.
    Replay(crate::replay::ReplayArgs),
    /// Serve a local Pendo-compatible sample API (accounts, visitors, usage, guide and poll
    /// events, a catalogue) so `pendo-poller` runs without a Pendo subscription: point
    /// `pendo.base_url` at it with any `integration_key`. Used by `scripts/quickstart`; runs
    /// until SIGTERM/SIGINT.
    SamplePendoApi {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Seconds between changes of the sample data (one visitor's adoption stage and usage);
        /// 0 keeps it as generated.
        #[arg(long, default_value_t = 30)]
        change_every_s: u64,
    },
}

/// `idmap` subcommands.
#[derive(Debug, Subcommand)]
pub enum IdmapCommand {
    /// Publish the mappings of a CSV file (`visitor_id,user_id`, optional header line). Every
    /// row is checked first; if any is invalid, each is reported with its line number and
    /// nothing is published.
    Load {
        /// The CSV file.
        file: PathBuf,
        /// Recorded as the mappings' `source`.
        #[arg(long, default_value = "cli")]
        source: String,
        /// Only check the file.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the Segment user id of a Pendo visitor (exit 1 if unmapped).
    Get {
        /// The Pendo visitor id.
        visitor_id: String,
    },
    /// Delete the mapping of a visitor (publishes a tombstone).
    Delete {
        /// The Pendo visitor id.
        visitor_id: String,
    },
}

/// `mapping` subcommands.
#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Validate the configured mapping file (or FILE), and the configured tracking plan;
    /// errors name the line (mapping) or the rule (plan).
    Check {
        /// A mapping file to check instead of the configured one.
        file: Option<PathBuf>,
    },
    /// Print the shipped default mapping (a starting point for your own).
    Default,
    /// Show what a candidate mapping file would change, on recorded raw events, before
    /// deploying it.
    ///
    /// Reads `pendo.raw.webhook` and `pendo.raw.api` (read-only: no consumer group, nothing
    /// committed), maps each event with the running mapping and with CANDIDATE, and prints
    /// calls added, removed or changed, event/page names changed, properties and traits
    /// renamed, dropped, added or changing type, and calls whose messageId would change, with
    /// a few samples each; with a tracking plan, the violations the candidate introduces.
    ///
    /// Exit status: 0 no messageId changes; 2 an invalid mapping, plan or usage error; 1 a
    /// Kafka failure; 3 messageIds would change (Segment would no longer de-duplicate a replay
    /// of events delivered before the deploy) and `--allow-id-changes` was not given; 4
    /// tracking-plan violations introduced and `--fail-on-violations` given.
    Preview(crate::mapping_preview::PreviewArgs),
}

/// Which roles to run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A role to run; repeat to run several in one process.
    #[arg(
        long = "role",
        value_enum,
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub roles: Vec<Role>,
    /// Run every role in this process (local use).
    #[arg(long)]
    pub all: bool,
    /// Let webhook roles accept deliveries without a secret. Never in production.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// `topics` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics and report drift of existing ones (partitions, cleanup.policy,
    /// retention.ms). Exits 1 if drift remains unfixed.
    Apply {
        /// Also repair drift: alter configs and raise partition counts.
        #[arg(long)]
        fix: bool,
        /// Only report what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration, then print it with every secret redacted.
    Check,
}

/// Parses arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SamplePendoApi {
        listen,
        change_every_s,
    } = cli.command
    {
        // A stand-in for Pendo, not part of a deployment: no configuration file needed.
        logging::init(cli.log_format.unwrap_or_default(), "info");
        return sample_pendo_api(listen, change_every_s);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(
        cli.log_format.unwrap_or(config.observability.log_format),
        &config.observability.log_level,
    );
    let runtime = match async_runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Config(ConfigCommand::Check) => {
                print!("{}", config.to_redacted_toml());
                eprintln!("configuration is valid");
                ExitCode::SUCCESS
            }
            Command::Topics(TopicsCommand::Apply { fix, dry_run }) => {
                topics_apply(&config, fix, dry_run).await
            }
            Command::Run(args) => run(&config, args).await,
            Command::Idmap(IdmapCommand::Load {
                file,
                source,
                dry_run,
            }) => idmap::commands::load(&config, &file, &source, dry_run).await,
            Command::Idmap(IdmapCommand::Get { visitor_id }) => {
                idmap::commands::get(&config, &visitor_id).await
            }
            Command::Idmap(IdmapCommand::Delete { visitor_id }) => {
                idmap::commands::delete(&config, &visitor_id).await
            }
            Command::Inspect { topic, last, brief } => {
                crate::inspect::inspect(&config, &topic, last, brief).await
            }
            Command::Tail(args) => crate::tail::tail(&config, args).await,
            Command::Replay(args) => crate::replay::replay(&config, args).await,
            Command::SamplePendoApi { .. } => {
                unreachable!("served before the configuration is loaded")
            }
            Command::Mapping(MappingCommand::Default) => {
                print!("{}", crate::transform::mapping::DEFAULT_PENDO_MAPPING);
                ExitCode::SUCCESS
            }
            Command::Mapping(MappingCommand::Preview(args)) => {
                crate::mapping_preview::preview(&config, args).await
            }
            Command::Mapping(MappingCommand::Check { file }) => {
                let result = match &file {
                    Some(f) => crate::transform::mapping::PendoMapping::load(f)
                        .map_err(anyhow::Error::from),
                    None => crate::transform::pendo::load_mapping(&config),
                };
                let plan = crate::transform::pendo::load_tracking_plan(&config);
                match result.and_then(|m| Ok((m, plan?))) {
                    Ok((m, plan)) => {
                        eprintln!(
                            "mapping is valid: {} kinds, fingerprint {}",
                            m.kinds().len(),
                            m.fingerprint()
                        );
                        if let Some(plan) = plan {
                            eprintln!(
                                "tracking plan is valid: {} rules, fingerprint {}",
                                plan.rule_count(),
                                plan.fingerprint()
                            );
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::from(2)
                    }
                }
            }
        }
    });
    // Everything that matters finished inside `block_on`. What may still run on the blocking
    // pool is a Kafka client call abandoned after it overran its deadline during a broker
    // failover (its role was restarted with new clients meanwhile); the process must not wait
    // for it to exit.
    runtime.shutdown_timeout(SHUTDOWN_ABANDONED_CALLS);
    code
}

/// The multi-threaded runtime (`workers` threads, default one per CPU), or the exit code of a
/// failure to start it (said on stderr).
fn async_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::from(1)
    })
}

/// `sample-pendo-api`: serves until SIGTERM/SIGINT.
fn sample_pendo_api(listen: std::net::SocketAddr, change_every_s: u64) -> ExitCode {
    let runtime = match async_runtime(Some(1)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let shutdown = crate::shutdown::Shutdown::new();
        if let Err(e) = shutdown.listen_for_signals() {
            eprintln!("error: cannot listen for signals: {e}");
            return ExitCode::from(1);
        }
        let every = (change_every_s > 0).then(|| Duration::from_secs(change_every_s));
        let stop = async move { shutdown.wait().await };
        match crate::sample_pendo::serve(listen, every, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

/// How long the process waits at exit for Kafka client calls abandoned on the blocking pool.
const SHUTDOWN_ABANDONED_CALLS: Duration = Duration::from_secs(2);

async fn run(config: &Config, args: RunArgs) -> ExitCode {
    let options = RunOptions {
        insecure_no_auth: args.insecure_no_auth,
    };
    let mut tasks = Vec::new();
    if args.all {
        // `--all` is the local "everything that exists" mode: run every built role and say
        // which ones this build does not have yet.
        for role in Role::ALL {
            match role.task(config, options) {
                Ok(t) => tasks.push(t),
                Err(e) => eprintln!("note: skipping: {e}"),
            }
        }
        if tasks.is_empty() {
            eprintln!("error: no role is built yet; nothing to run");
            return ExitCode::from(2);
        }
    } else {
        let mut roles = args.roles;
        roles.dedup();
        for role in roles {
            match role.task(config, options) {
                Ok(t) => tasks.push(t),
                Err(e) => {
                    eprintln!("error: {e}; nothing was started");
                    return ExitCode::from(2);
                }
            }
        }
    }
    match app::run_roles(config, tasks).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn topics_apply(config: &Config, fix: bool, dry_run: bool) -> ExitCode {
    let admin = match topics::TopicAdmin::new(
        &client_config::admin(config),
        Duration::from_millis(config.kafka.admin_timeout_ms),
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let specs = topics::desired_topics(config);
    let plan = match admin.plan(&specs).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for note in &plan.notes {
        println!("note: {note}");
    }
    if plan.changes.is_empty() {
        println!(
            "no changes: all {} topics match the configuration",
            plan.topics
        );
        return ExitCode::SUCCESS;
    }
    for change in &plan.changes {
        println!("{change}");
    }
    if dry_run {
        println!("dry run: nothing changed");
        return ExitCode::SUCCESS;
    }
    match admin.apply(&plan, fix).await {
        Ok(done) => {
            for d in &done {
                println!("done: {d}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let drift = plan.changes.iter().filter(|c| c.is_drift()).count();
    if drift > 0 && !fix {
        println!("{drift} drifted setting(s) left as they are; run `topics apply --fix` to repair");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
