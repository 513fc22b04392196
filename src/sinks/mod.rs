//! Sinks: the roles that deliver canonical records from Kafka to a destination's API.
//!
//! A sink commits a Kafka offset only once the destination has accepted the record (or the
//! record was dead-lettered with the reason), so delivery is at least once and the destination's
//! de-duplication (Segment's `messageId`) makes it effectively once. Each sink is split into
//! pure, separately tested parts (configuration, encoding, batching, retry policy, rate limit,
//! HTTP service), in the manner of Vector's sinks.

pub mod segment;
