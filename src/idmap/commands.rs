//! `pendo-segment idmap load FILE.csv | get VISITOR_ID | delete VISITOR_ID`.
//!
//! `load` checks the whole file first and loads nothing if any row is invalid (each one is
//! reported with its line number), then publishes every mapping with the idempotent producer and
//! reports progress; it succeeds only when the broker acknowledged every record.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::csv_file::{CheckedCsv, CsvMapping, check_csv};
use crate::config::{Config, SchemaId};
use crate::kafka::client_config;
use crate::kafka::read_to_end::{StartAt, read_to_end};
use crate::kafka::topics::TopicId;
use crate::schema::{IdMapping, IdMappingCodec};

/// Most problems printed before summarising the rest.
const MAX_PROBLEMS_SHOWN: usize = 50;
/// Records awaiting acknowledgement at once (bounded memory for any file size).
const MAX_IN_FLIGHT: usize = 10_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `idmap load`.
pub async fn load(config: &Config, file: &Path, source: &str, dry_run: bool) -> ExitCode {
    let checked = match read_and_check(file) {
        Ok(checked) => checked,
        Err(code) => return code,
    };
    if dry_run {
        eprintln!("dry run: nothing was published");
        return ExitCode::SUCCESS;
    }
    publish(config, &checked.mappings, source).await
}

/// Reads and checks the whole file, reporting every problem and the valid count; `Err` is the
/// exit code when it cannot be loaded. The read+validate phase of [`load`].
fn read_and_check(file: &Path) -> Result<CheckedCsv, ExitCode> {
    let input = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", file.display());
            return Err(ExitCode::from(2));
        }
    };
    let checked = check_csv(std::io::BufReader::new(input));
    for p in checked.problems.iter().take(MAX_PROBLEMS_SHOWN) {
        eprintln!("{}:{}: {}", file.display(), p.line, p.message);
    }
    if checked.problems.len() > MAX_PROBLEMS_SHOWN {
        eprintln!(
            "... and {} more invalid rows",
            checked.problems.len() - MAX_PROBLEMS_SHOWN
        );
    }
    if !checked.problems.is_empty() {
        eprintln!(
            "error: {} invalid row(s); nothing was loaded. Fix them and run again.",
            checked.problems.len()
        );
        return Err(ExitCode::from(1));
    }
    let total = checked.mappings.len();
    eprintln!(
        "{}: {total} mapping(s) valid{}",
        file.display(),
        if checked.repeats > 0 {
            format!(", {} exact repeat(s) sent once", checked.repeats)
        } else {
            String::new()
        }
    );
    Ok(checked)
}

/// The progress display of a load: a bar on a terminal, hidden otherwise (`load` then prints a
/// line every 2 s); apart from [`publish`] to keep its loop readable.
fn progress_bar(total: usize, interactive: bool) -> indicatif::ProgressBar {
    if !interactive {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} publishing [{bar:40}] {human_pos}/{human_len} mappings ({elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Publishes every mapping with the idempotent producer, reporting progress, and succeeds only
/// when Kafka acknowledged them all. The publish phase of [`load`].
async fn publish(config: &Config, mappings: &[CsvMapping], source: &str) -> ExitCode {
    let total = mappings.len();
    let topic = config.topic_name(TopicId::IdmapVisitorToUser);
    let codec = IdMappingCodec::new(config.schema.wire_format(SchemaId::IdMapping));
    let producer: FutureProducer = match client_config::producer(config, "idmap-cli").create() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot create the Kafka producer: {e}");
            return ExitCode::from(1);
        }
    };
    let started = Instant::now();
    let updated_at = now_ms();
    // A bar on a terminal; a line every 2 s otherwise (logs, CI), and a summary either way.
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = progress_bar(total, interactive);
    let mut in_flight = FuturesUnordered::new();
    let (mut acked, mut failed) = (0usize, 0usize);
    let mut last_report = Instant::now();
    let mut first_error: Option<String> = None;
    for m in mappings {
        let value = match codec.encode_to_vec(&IdMapping {
            visitor_id: m.visitor_id.clone(),
            user_id: m.user_id.clone(),
            source: source.to_string(),
            updated_at,
        }) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: line {}: cannot encode: {e}", m.line);
                return ExitCode::from(1);
            }
        };
        let producer = &producer;
        let topic = &topic;
        let key = m.visitor_id.clone();
        in_flight.push(async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        });
        while in_flight.len() >= MAX_IN_FLIGHT {
            tally(
                in_flight.next().await,
                &mut acked,
                &mut failed,
                &mut first_error,
            );
        }
        bar.set_position((acked + failed) as u64);
        if !interactive && last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!("published {acked}/{total}");
            last_report = Instant::now();
        }
    }
    while let Some(r) = in_flight.next().await {
        tally(Some(r), &mut acked, &mut failed, &mut first_error);
        bar.set_position((acked + failed) as u64);
    }
    bar.finish_and_clear();
    if failed > 0 {
        eprintln!(
            "error: {failed} of {total} mapping(s) were not acknowledged by Kafka (first error: {}); {acked} were. Loading again is safe.",
            first_error.unwrap_or_default()
        );
        return ExitCode::from(1);
    }
    eprintln!(
        "published {acked}/{total} mapping(s) to {topic} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn tally(
    r: Option<Result<(), String>>,
    acked: &mut usize,
    failed: &mut usize,
    first_error: &mut Option<String>,
) {
    match r {
        Some(Ok(())) => *acked += 1,
        Some(Err(e)) => {
            *failed += 1;
            first_error.get_or_insert(e);
        }
        None => {}
    }
}

/// `idmap delete`: publishes a tombstone.
pub async fn delete(config: &Config, visitor_id: &str) -> ExitCode {
    let topic = config.topic_name(TopicId::IdmapVisitorToUser);
    let producer: FutureProducer = match client_config::producer(config, "idmap-cli").create() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot create the Kafka producer: {e}");
            return ExitCode::from(1);
        }
    };
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(visitor_id);
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => {
            println!("deleted the mapping of {visitor_id}");
            ExitCode::SUCCESS
        }
        Err((e, _)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `idmap get`: reads the topic to its end and prints the current user id of the visitor.
pub async fn get(config: &Config, visitor_id: &str) -> ExitCode {
    let config = config.clone();
    let visitor = visitor_id.to_string();
    crate::task::blocking_command(
        move || scan_for(&config, &visitor),
        |mapping| match mapping {
            Some(m) => {
                println!("{}", m.user_id);
                eprintln!("(source {}, updated at {} ms)", m.source, m.updated_at);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("{visitor_id} is not mapped");
                ExitCode::from(1)
            }
        },
    )
    .await
}

fn scan_for(config: &Config, visitor_id: &str) -> anyhow::Result<Option<IdMapping>> {
    let codec = IdMappingCodec::new(config.schema.wire_format(SchemaId::IdMapping));
    let mut found: Option<IdMapping> = None;
    read_to_end(
        client_config::consumer(config, "idmap-cli"),
        &config.topic_name(TopicId::IdmapVisitorToUser),
        StartAt::Beginning,
        Duration::ZERO,
        |m| {
            if m.key() == Some(visitor_id.as_bytes()) {
                // Later records replace earlier ones; a tombstone deletes.
                found = match m.payload() {
                    None => None,
                    Some(v) => Some(codec.decode(v).map_err(|e| {
                        anyhow::anyhow!("offset {} of partition {}: {e}", m.offset(), m.partition())
                    })?),
                };
            }
            Ok(())
        },
    )?;
    Ok(found)
}
