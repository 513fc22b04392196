//! Sinks: the roles that deliver canonical records from Kafka to a destination's API.
//!
//! A sink commits a Kafka offset only once the destination has accepted the record (or the
//! record was dead-lettered with the reason), so delivery is at least once and the destination's
//! de-duplication (Segment's `messageId`) makes it effectively once. Each sink is split into
//! pure, separately tested parts (configuration, encoding, batching, retry policy, rate limit,
//! HTTP service), in the manner of Vector's sinks. The per-partition queues, flow control and
//! done-offset bookkeeping of the `Acknowledged` commit strategy are shared ([`queue`]); the
//! Pendo sink also uses the Segment sink's `Backoff`, `Retry-After` parsing, rate limiter and
//! dead-letter writer (`segment::retry`, `segment::rate_limit`, `segment::delivery`).

pub mod pendo;
pub mod queue;
pub mod segment;
