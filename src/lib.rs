//! pendo-segment: a stream processor between Pendo and Segment through Apache Kafka.
//!
//! Roles (webhook connectors, pollers, transformers, sinks) are parts of one binary; each runs as
//! a Kafka consumer group or a producer and keeps no state that Kafka does not hold. This crate
//! holds the shared plumbing: configuration, Kafka clients and the consumer loop, metrics, the
//! ops server, and the process runtime.

#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod health;
pub mod http;
pub mod idmap;
pub mod inspect;
pub mod internal_events;
pub mod kafka;
pub mod logging;
pub mod mapping_preview;
pub mod metrics;
pub mod ops_server;
pub mod pendo_api;
pub mod replay;
pub mod roles;
pub mod sample_pendo;
pub mod schema;
pub mod secret;
pub mod shutdown;
pub mod sinks;
pub mod tail;
pub mod task;
pub mod transform;
