//! The Pendo visitor id -> Segment user id mapping: the compacted topic
//! `idmap.visitor-to-user` (Avro `IdMapping`, tombstone = delete), its in-memory table, the
//! follower that keeps the table current, and the `idmap` CLI commands.

pub mod commands;
pub mod csv_file;
pub mod follower;
pub mod reverse;
pub mod table;

pub use reverse::{BiIdMap, IdMapStore, VisitorIdLookup};
pub use table::{IdMapTable, UserIdLookup};
