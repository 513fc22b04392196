//! `IdMapTable`: the in-memory view of `idmap.visitor-to-user`, O(1) lookups on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::transform::pendo_to_segment::UserIdLookup;

/// Pendo visitor id -> Segment user id. Cloning shares the table.
#[derive(Clone, Default)]
pub struct IdMapTable {
    inner: Arc<RwLock<HashMap<Box<str>, Box<str>>>>,
}

impl IdMapTable {
    /// Sets (or replaces) a mapping.
    pub fn insert(&self, visitor_id: &str, user_id: &str) {
        self.inner
            .write()
            .expect("idmap lock")
            .insert(visitor_id.into(), user_id.into());
    }

    /// Deletes a mapping (a tombstone on the topic).
    pub fn remove(&self, visitor_id: &str) {
        self.inner.write().expect("idmap lock").remove(visitor_id);
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.inner.read().expect("idmap lock").len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user id of a visitor.
    pub fn get(&self, visitor_id: &str) -> Option<String> {
        self.inner
            .read()
            .expect("idmap lock")
            .get(visitor_id)
            .map(|u| u.to_string())
    }
}

impl UserIdLookup for IdMapTable {
    fn user_id(&self, visitor_id: &str) -> Option<String> {
        self.get(visitor_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replace_remove() {
        let t = IdMapTable::default();
        t.insert("v", "u1");
        t.insert("v", "u2");
        assert_eq!(t.user_id("v").as_deref(), Some("u2"));
        assert_eq!(t.len(), 1);
        t.remove("v");
        assert!(t.is_empty());
        assert_eq!(t.get("v"), None);
    }
}
