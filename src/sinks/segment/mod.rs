//! The Segment sink's parts: delivery of `SegmentCall`s to Segment's `POST /v1/batch`.
//!
//! Segment answers 200 to almost everything and silently drops what it cannot use (an event
//! without ids, the 2,501st event of a batch), so every limit is enforced here, before sending.
//! Who checks what:
//!
//! | check | where | on failure |
//! |---|---|---|
//! | call size without `context.library` (`transform_pendo.max_call_bytes`) | transformer | dead-lettered there |
//! | `type`, userId/anonymousId, `event`, `groupId`, `messageId`, JSON texts | [`encoding::validate_event`] | dead-lettered, never sent |
//! | event size as sent (with `context.library`) ≤ `max_event_bytes` | [`encoding::encode_event`] | dead-lettered, never sent |
//! | events per request, exact body bytes per request | [`batch::SegmentBatch::push`] | the batch is sent, the event starts the next one |
//! | anything Segment still refuses (400/413) | Segment | [`batch::SegmentBatch::split`] until the offender is alone, then dead-lettered |
//!
//! [`retry`] classifies answers and paces retries, [`rate_limit`] keeps under the workspace's
//! rate limit, [`service`] performs one request. The role that ties them to the consumer loop
//! comes separately.

pub mod batch;
pub mod config;
pub mod encoding;
pub mod rate_limit;
pub mod retry;
pub mod service;

pub use config::SegmentSinkConfig;
