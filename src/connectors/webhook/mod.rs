//! The parts every webhook receiver shares: authentication, splitting a body into events,
//! and the HTTP handler that answers 2xx only after Kafka committed every event.

pub mod auth;
pub mod body;
pub mod server;
