//! Pendo's REST API as the pipeline uses it, shared by the roles that talk to Pendo (the poller
//! reads, the Pendo sink writes) and the rules that must produce what Pendo accepts. It imports
//! no role.

pub mod client;
pub mod dry_run;
pub mod fields;

use crate::config::{PendoConfig, PendoRegion};

/// The base URL of `pendo`: `base_url` when set (trailing slashes ignored), else the region's.
pub fn base_url(pendo: &PendoConfig) -> String {
    match (&pendo.base_url, pendo.region) {
        (Some(u), _) => u.trim().trim_end_matches('/').to_string(),
        (None, PendoRegion::Us) => "https://app.pendo.io".into(),
        (None, PendoRegion::Us1) => "https://us1.app.pendo.io".into(),
        (None, PendoRegion::Eu) => "https://app.eu.pendo.io".into(),
        (None, PendoRegion::Jpn) => "https://app.jpn.pendo.io".into(),
        (None, PendoRegion::Au) => "https://app.au.pendo.io".into(),
    }
}
