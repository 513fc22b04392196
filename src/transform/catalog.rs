//! The Pendo catalogue as the transformer sees it: feature, page, guide and track-type names by
//! id, followed from the compacted topic `pendo.catalog` that the poller fills. Webhook events
//! carry ids; with the catalogue, their Segment calls also carry readable names
//! (`feature_name`, `page_name`, `guide_name`) that every destination can show.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::idmap::follower::CompactedTable;

/// Names by `<kind>:<id>`, shared by the follower (writer) and the mapping threads (readers).
#[derive(Debug, Clone, Default)]
pub struct CatalogTable {
    names: Arc<RwLock<HashMap<Box<str>, Arc<str>>>>,
}

impl CatalogTable {
    /// The name of `kind` (feature, page, guide, tracktype) `id`, if the catalogue has it.
    pub fn name(&self, kind: &str, id: &str) -> Option<Arc<str>> {
        let key = format!("{kind}:{id}");
        self.names
            .read()
            .expect("catalogue lock")
            .get(key.as_str())
            .cloned()
    }

    /// Sets a name directly (tests, tools).
    pub fn insert(&self, kind: &str, id: &str, name: &str) {
        self.names
            .write()
            .expect("catalogue lock")
            .insert(format!("{kind}:{id}").into(), name.into());
    }
}

impl CompactedTable for CatalogTable {
    const WHAT: &'static str = "catalogue";

    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let mut names = self.names.write().expect("catalogue lock");
        let Some(value) = value else {
            names.remove(key);
            return Ok(());
        };
        let v: serde_json::Value =
            serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
        let name = v["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or("no `name`")?;
        names.insert(key.into(), name.into());
        Ok(())
    }

    fn entries(&self) -> usize {
        self.names.read().expect("catalogue lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_set_and_tombstones_delete_names() {
        let t = CatalogTable::default();
        t.apply(
            "feature:f1",
            Some(br#"{"kind":"feature","id":"f1","name":"Export"}"#),
        )
        .unwrap();
        assert_eq!(t.name("feature", "f1").as_deref(), Some("Export"));
        assert!(t.apply("feature:f2", Some(b"{}")).is_err());
        assert!(t.apply("feature:f3", Some(b"nope")).is_err());
        t.apply("feature:f1", None).unwrap();
        assert_eq!(t.name("feature", "f1"), None);
        assert_eq!(t.entries(), 0);
    }
}
