//! `pendo-segment tail TOPIC`: prints the records of any pipeline topic as JSON lines, decoded
//! exactly like `inspect` (Segment calls as the sink will send them, dead letters with their
//! `dlq-*` headers, id mappings, raw events), from a chosen position, and with `--follow` keeps
//! printing new records until Ctrl-C.
//!
//! `inspect` answers "what does this topic hold"; `tail` answers "what happened since T / after
//! offset N / from now on". Like `inspect` it reads `read_committed` (what the roles see), assigns
//! partitions itself, never joins a consumer group and never commits, so it cannot disturb the
//! roles.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::inspect::{Decoder, one_line, render, resolve_topic};
use crate::kafka::client_config;
use crate::kafka::context::ReadToEndContext;
use crate::kafka::metadata::topic_partitions;
use crate::kafka::read_to_end::{Polled, poll_pending};
use crate::shutdown::Shutdown;

/// `tail` arguments.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// A default topic name (e.g. canonical.segment-calls, dlq.segment-sink) or the effective
    /// name.
    pub topic: String,
    /// Where to start in each partition: `beginning`, `end`, an offset (a plain number), or a
    /// time: RFC 3339 (`2026-11-29T08:00:00Z`, `...+01:00`) or epoch milliseconds written
    /// `@1764403200000` (the first record at or after that time). An offset outside the
    /// partition's retained range is moved to its nearest end. Default: `beginning`, or `end`
    /// with `--follow`.
    #[arg(long, value_name = "POSITION")]
    pub from: Option<StartFrom>,
    /// Keep printing new records until Ctrl-C (SIGINT) or SIGTERM; without it, stop at each
    /// partition's end as it was when `tail` started.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only this partition; repeat for several (default: all).
    #[arg(long = "partition", value_name = "N")]
    pub partitions: Vec<i32>,
    /// One short human-readable line per record (as `inspect --brief`).
    #[arg(long)]
    pub brief: bool,
}

/// Where `tail` starts reading each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained record.
    Beginning,
    /// After the newest record (only records produced from now on).
    End,
    /// This offset.
    Offset(i64),
    /// The first record whose timestamp is at or after these epoch milliseconds.
    Timestamp(i64),
}

impl FromStr for StartFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "beginning" | "earliest" => Ok(StartFrom::Beginning),
            "end" | "latest" => Ok(StartFrom::End),
            _ if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map(StartFrom::Offset)
                .map_err(|e| format!("offset {s:?}: {e}")),
            _ => parse_timestamp_ms(s)
                .map(StartFrom::Timestamp)
                .map_err(|e| {
                    format!(
                        "{e}; expected beginning, end, an offset (a number), an RFC 3339 time or \
                     @<epoch milliseconds>"
                    )
                }),
        }
    }
}

/// Parses a point in time given on the command line into epoch milliseconds: RFC 3339 with `Z`
/// or a `+hh:mm`/`-hh:mm` offset (fractional seconds allowed), or epoch milliseconds as digits,
/// optionally prefixed with `@` (required where a plain number means an offset, as in `tail
/// --from`). Shared by `tail --from` and `replay --to-timestamp` so both read times alike.
pub fn parse_timestamp_ms(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix('@').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return digits
            .parse()
            .map_err(|e| format!("epoch milliseconds {s:?}: {e}"));
    }
    let bad = |why: &str| format!("time {s:?} is not RFC 3339 ({why})");
    // humantime reads UTC (`Z`) only: apply a numeric offset ourselves.
    let split = s
        .len()
        .checked_sub(6)
        .and_then(|i| Some((s.get(..i)?, s.get(i..)?)));
    let (utc, offset_s) = match split {
        Some((rest, off))
            if (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':' =>
        {
            let h: i64 = off[1..3].parse().map_err(|_| bad("bad offset hours"))?;
            let m: i64 = off[4..6].parse().map_err(|_| bad("bad offset minutes"))?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (format!("{rest}Z"), sign * (h * 3600 + m * 60))
        }
        _ => (s.to_string(), 0),
    };
    let t = humantime::parse_rfc3339(&utc).map_err(|e| bad(&e.to_string()))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad("before 1970"))?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|_| bad("too far in the future"))?;
    Ok(ms - offset_s * 1000)
}

/// Runs `tail`: exit 0 when done (or stopped by a signal), 1 on a Kafka failure, 2 on a usage
/// error (unknown partition, unreadable topic name).
pub async fn tail(config: &Config, args: TailArgs) -> ExitCode {
    let (name, decoder) = resolve_topic(config, &args.topic);
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        eprintln!("error: cannot listen for signals: {e}");
        return ExitCode::from(1);
    }
    let config = config.clone();
    let stop = shutdown.clone();
    let result =
        tokio::task::spawn_blocking(move || read(&config, &name, &decoder, &args, &stop)).await;
    match result {
        Ok(Ok(n)) => {
            eprintln!("{n} record(s)");
            ExitCode::SUCCESS
        }
        Ok(Err(TailError::Usage(e))) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(Err(TailError::Kafka(e))) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why `tail` failed: the command line (exit 2) or Kafka (exit 1).
enum TailError {
    Usage(String),
    Kafka(anyhow::Error),
}

impl From<KafkaError> for TailError {
    fn from(e: KafkaError) -> Self {
        TailError::Kafka(e.into())
    }
}

/// Where one partition starts and where it ended when `tail` started.
struct Range {
    start: i64,
    end: i64,
}

fn read(
    config: &Config,
    topic: &str,
    decoder: &Decoder,
    args: &TailArgs,
    shutdown: &Shutdown,
) -> Result<u64, TailError> {
    let timeout = Duration::from_millis(config.kafka.admin_timeout_ms);
    let mut cc = client_config::consumer(config, "tail");
    cc.set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "0");
    let consumer: BaseConsumer<ReadToEndContext> = cc.create_with_context(ReadToEndContext)?;
    let all = topic_partitions(&consumer, topic, Duration::ZERO)
        .map_err(|e| TailError::Usage(format!("{e}, or check the name")))?;
    let chosen: Vec<i32> = if args.partitions.is_empty() {
        all.clone()
    } else {
        if let Some(p) = args.partitions.iter().find(|p| !all.contains(p)) {
            return Err(TailError::Usage(format!(
                "topic {topic} has no partition {p} (it has 0..{})",
                all.len()
            )));
        }
        let mut p = args.partitions.clone();
        p.sort_unstable();
        p.dedup();
        p
    };
    let from = args.from.unwrap_or(if args.follow {
        StartFrom::End
    } else {
        StartFrom::Beginning
    });
    let ranges = resolve_start(&consumer, topic, &chosen, from, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for (p, r) in &ranges {
        tpl.add_partition_offset(topic, *p, Offset::Offset(r.start))?;
    }
    consumer.assign(&tpl)?;
    // Without --follow, a partition is done once it reached the end it had at the start.
    let mut pending: HashSet<i32> = ranges
        .iter()
        .filter(|(_, r)| r.start < r.end)
        .map(|(p, _)| *p)
        .collect();
    if args.follow {
        eprintln!(
            "following {topic} (partition(s) {}) from {}; Ctrl-C to stop",
            ranges
                .keys()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            describe(&ranges)
        );
    }
    let stdout = std::io::stdout();
    let (mut printed, mut idle_since) = (0u64, Instant::now());
    loop {
        if shutdown.is_triggered() || (!args.follow && pending.is_empty()) {
            break;
        }
        match poll_pending(&consumer, Duration::from_millis(200), &mut pending)? {
            // Without --follow, a partition that never reports its end (the broker went away)
            // must not hang the command: give up after 10 quiet seconds, as `inspect` does.
            Polled::Nothing if !args.follow && idle_since.elapsed() > Duration::from_secs(10) => {
                eprintln!("note: no records and no end-of-partition for 10 s; stopping");
                break;
            }
            Polled::Nothing | Polled::End => {}
            Polled::Record(m) => {
                idle_since = Instant::now();
                let end = ranges.get(&m.partition()).map_or(i64::MAX, |r| r.end);
                if !args.follow {
                    if m.offset() >= end - 1 {
                        pending.remove(&m.partition());
                    }
                    if m.offset() >= end {
                        continue;
                    }
                }
                let v = render(&m, decoder);
                let line = if args.brief {
                    one_line(&v)
                } else {
                    v.to_string()
                };
                let mut out = stdout.lock();
                // A closed stdout (`tail ... | head`) ends the command quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
                printed += 1;
            }
        }
    }
    Ok(printed)
}

/// The concrete start offset of every chosen partition, and its end (high watermark) now.
fn resolve_start(
    consumer: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    partitions: &[i32],
    from: StartFrom,
    timeout: Duration,
) -> Result<BTreeMap<i32, Range>, TailError> {
    let mut watermarks = BTreeMap::new();
    for p in partitions {
        watermarks.insert(*p, consumer.fetch_watermarks(topic, *p, timeout)?);
    }
    let by_time = match from {
        StartFrom::Timestamp(ts) => {
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                tpl.add_partition_offset(topic, *p, Offset::Offset(ts))?;
            }
            let found = consumer.offsets_for_times(tpl, timeout)?;
            found
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect::<BTreeMap<_, _>>()
        }
        _ => BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for (p, (low, high)) in watermarks {
        let start = match from {
            StartFrom::Beginning => low,
            StartFrom::End => high,
            StartFrom::Offset(o) => {
                let clamped = o.clamp(low, high);
                if clamped != o {
                    eprintln!(
                        "note: partition {p} holds offsets {low}..{high}: starting at {clamped}"
                    );
                }
                clamped
            }
            // No record at or after the time: the partition's end.
            StartFrom::Timestamp(_) => match by_time.get(&p) {
                Some(Offset::Offset(o)) => (*o).clamp(low, high),
                _ => high,
            },
        };
        out.insert(p, Range { start, end: high });
    }
    Ok(out)
}

/// "p0@12, p1@40" — where each partition starts, for the `--follow` banner.
fn describe(ranges: &BTreeMap<i32, Range>) -> String {
    ranges
        .iter()
        .map(|(p, r)| format!("p{p}@{}", r.start))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!("beginning".parse(), Ok(StartFrom::Beginning));
        assert_eq!("end".parse(), Ok(StartFrom::End));
        assert_eq!("42".parse(), Ok(StartFrom::Offset(42)));
        assert_eq!("@1000".parse(), Ok(StartFrom::Timestamp(1000)));
        assert_eq!(
            "1970-01-01T00:00:01Z".parse(),
            Ok(StartFrom::Timestamp(1000))
        );
        assert!("yesterday".parse::<StartFrom>().is_err());
        assert!("".parse::<StartFrom>().is_err());
    }

    #[test]
    fn timestamps_parse_with_offsets_and_fractions() {
        assert_eq!(parse_timestamp_ms("1764403200000"), Ok(1_764_403_200_000));
        assert_eq!(
            parse_timestamp_ms("2025-11-29T08:00:00Z"),
            parse_timestamp_ms("2025-11-29T09:00:00+01:00")
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-29T08:00:00Z"),
            parse_timestamp_ms("2025-11-29T02:30:00-05:30")
        );
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.250Z"), Ok(250));
        assert!(parse_timestamp_ms("2025-13-01T00:00:00Z").is_err());
        assert!(parse_timestamp_ms("2025-11-29 08:00").is_err());
        assert!(parse_timestamp_ms("-1").is_err());
    }
}
