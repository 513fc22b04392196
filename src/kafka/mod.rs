//! Shared Kafka plumbing: client configuration, the webhooks' transactional appender and the
//! transformers' and poller's transactional output, the one consume-process-commit loop every
//! consumer role runs, reading a topic to its end, the topic catalogue, and the record-size
//! guarantee (records and dead letters that always fit their topic).

pub mod client_config;
pub mod consumer_loop;
pub mod context;
pub mod dead_letter;
pub mod failover;
pub mod headers;
pub mod metadata;
pub mod read_to_end;
pub mod record_size;
pub mod topics;
pub mod transactional_appender;
pub mod transactional_output;
pub mod undecided;
