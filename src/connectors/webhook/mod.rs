//! The parts every webhook receiver shares: authentication (shared secrets, body signatures),
//! splitting a body into events, the HTTP handler that answers 2xx only after Kafka committed
//! every event, and starting such a role.

pub mod auth;
pub mod body;
pub mod limits;
pub mod listener;
pub mod role;
pub mod server;
pub mod signature;
