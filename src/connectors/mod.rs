//! Connectors: the roles that bring data from outside into Kafka (webhook receivers, pollers).
//! They interpret payloads only as far as needed to key and label records; mapping is the
//! transformers' job.

pub mod pendo_poller;
pub mod pendo_webhook;
pub mod segment_webhook;
pub mod webhook;
