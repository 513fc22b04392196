//! `Retry-After`: how long a server asked us to wait (delta-seconds or an HTTP-date), capped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default and usual cap of a `Retry-After` pause.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

/// The `Retry-After` of a response's headers (see [`parse_retry_after`]); `None` when absent
/// or unreadable.
pub fn retry_after_of(headers: &reqwest::header::HeaderMap, cap: Duration) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, cap))
}

/// Reads a `Retry-After` value: delta-seconds, or an HTTP-date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) relative to now. Capped at `cap`; `None` when unreadable
/// (the caller falls back to its backoff).
pub fn parse_retry_after(value: &str, cap: Duration) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now(), cap)
}

/// [`parse_retry_after`] with an explicit current time.
pub fn parse_retry_after_at(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = parse_imf_fixdate(value)?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> the time (the obsolete HTTP date formats are not read).
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let [weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    if !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let rfc3339 = format!("{year}-{month:02}-{day}T{time}Z");
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    (t >= UNIX_EPOCH).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let cap = RETRY_AFTER_CAP;
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let p = |v: &str| parse_retry_after_at(v, now, cap);
        assert_eq!(p("7"), Some(Duration::from_secs(7)));
        assert_eq!(p(" 0 "), Some(Duration::ZERO));
        assert_eq!(p("301"), Some(cap));
        assert_eq!(p("99999999999999999999999"), Some(cap));
        assert_eq!(
            parse_retry_after_at("20", now, Duration::from_secs(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            p("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(p("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p("Mon, 07 Nov 1994 08:49:37 GMT"), Some(cap));
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("3", cap),
            Some(Duration::from_secs(3)),
            "relative to the real clock"
        );
    }

    #[test]
    fn retry_after_is_read_from_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after_of(&h, RETRY_AFTER_CAP), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            retry_after_of(&h, RETRY_AFTER_CAP),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after_of(&h, Duration::from_secs(2)),
            Some(Duration::from_secs(2))
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after_of(&h, RETRY_AFTER_CAP), None);
    }
}
