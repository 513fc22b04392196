//! A local Pendo-compatible sample API (`pendo-segment sample-pendo-api`): the quickstart's
//! stand-in for a Pendo subscription, so `pendo-poller` runs with no account anywhere. It serves
//! the reads the poller makes — `GET /api/v1/token/verify`, `POST /api/v1/aggregation` (sources
//! `accounts`, `visitors`, `events`, `featureEvents`, `guideEvents`, `pollEvents` with `filter`,
//! `sort` and `limit`) and the catalogue `GET /api/v1/{feature|page|guide|tracktype}` — over
//! a small generated data set ([`data`]) dated relative to now, and refuses what Pendo refuses
//! (no key: 401; an event source without a `timeSeries` of at most 30 days, an unknown operator,
//! more than 5,000 rows: 400). Writes are not served: `pendo-sink` uses its `dry_run_file`.
//!
//! Split by idea: [`data`] (the sample subscription, and the change it makes every
//! `--change-every-s`), [`pipeline`] (the aggregation subset) and [`server`] (the routes).

pub mod data;
pub mod pipeline;
pub mod server;

pub use server::serve;
