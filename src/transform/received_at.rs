//! The connectors' `received-at` header, as both transformers and `mapping preview` read it: when
//! the pipeline received an event, for `receivedAt` and the end-to-end latency.

use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers};

use crate::kafka::headers;
use crate::transform::pendo_to_segment::plausible_epoch_ms;

/// The connector's `received-at` header (epoch ms), if present and a plausible time (see
/// [`parse_received_at`]).
pub(crate) fn received_at(record: &BorrowedMessage<'_>) -> Option<i64> {
    received_at_of(record.headers()?)
}

/// The `received-at` header among `h`, as [`received_at`] reads it.
pub(crate) fn received_at_of(h: &BorrowedHeaders) -> Option<i64> {
    h.iter()
        .find(|x| x.key == headers::RECEIVED_AT)
        .and_then(|x| parse_received_at(x.value?))
}

/// A `received-at` header value as epoch ms: `None` unless it is a number between 1970 and
/// 3000 (exclusive; the range event times are accepted in). Any producer can write the header,
/// and an absurd value (`i64::MAX`, negative) is treated as absent rather than carried into
/// timestamps and latencies, where it would not fit.
pub(crate) fn parse_received_at(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value)
        .ok()?
        .parse()
        .ok()
        .filter(|&ms| plausible_epoch_ms(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_headers_out_of_range_are_absent() {
        assert_eq!(parse_received_at(b"1764340000000"), Some(1_764_340_000_000));
        for bad in [
            i64::MAX.to_string(),
            i64::MIN.to_string(),
            "-1".to_string(),
            "0".to_string(),
            "32503680000000".to_string(),
            "99999999999999999999".to_string(),
            "12.5".to_string(),
            "soon".to_string(),
            String::new(),
        ] {
            assert_eq!(parse_received_at(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
