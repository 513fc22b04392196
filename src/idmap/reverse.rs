//! The id mapping in both directions, for the reverse flow: Segment userId -> Pendo visitorId.
//!
//! `idmap.visitor-to-user` is keyed by visitor id, so a reverse lookup needs a second index.
//! [`BiIdMap`] holds the forward table (to know, on a tombstone or a change of user, which
//! reverse entry to drop) and a reverse table (an [`IdMapTable`] whose keys are user ids), both
//! filled by the same follower from the same compacted topic: no second topic to keep in step.
//!
//! Several visitors may map to one user (a user with two Pendo visitor ids). The reverse table
//! keeps the most recently published one; when that mapping is deleted the user becomes
//! unmapped even if an older visitor still maps to it (the reverse flow then applies its
//! unmapped-user policy). Keeping every visitor per user would need a multimap; one Pendo
//! visitor per Segment user is the common setup.

use super::table::IdMapTable;

/// Where the id-mapping follower applies the records it reads.
pub trait IdMapStore: Send + Sync + 'static {
    /// A mapping was set (or replaced).
    fn upsert(&self, visitor_id: &str, user_id: &str);
    /// A mapping was deleted (tombstone).
    fn delete(&self, visitor_id: &str);
    /// Mappings held (for the `idmap_entries` gauge).
    fn entries(&self) -> usize;
    /// Returns spare capacity once the initial load is done.
    fn loaded(&self);
}

impl IdMapStore for IdMapTable {
    fn upsert(&self, visitor_id: &str, user_id: &str) {
        self.insert(visitor_id, user_id);
    }
    fn delete(&self, visitor_id: &str) {
        self.remove(visitor_id);
    }
    fn entries(&self) -> usize {
        self.len()
    }
    fn loaded(&self) {
        self.shrink_to_fit();
    }
}

/// Looks up the Pendo visitor id of a Segment user, and the reverse.
pub trait VisitorIdLookup {
    /// The visitor mapped to `user_id`, if any.
    fn visitor_id(&self, user_id: &str) -> Option<String>;
    /// The user `visitor_id` maps to, if any (to skip re-publishing a known mapping).
    fn user_id_of(&self, visitor_id: &str) -> Option<String>;
}

/// Visitor -> user and user -> visitor. Cloning shares both tables.
#[derive(Clone, Default)]
pub struct BiIdMap {
    forward: IdMapTable,
    reverse: IdMapTable,
}

impl BiIdMap {
    /// Number of user ids with a visitor.
    pub fn users(&self) -> usize {
        self.reverse.len()
    }
}

impl IdMapStore for BiIdMap {
    fn upsert(&self, visitor_id: &str, user_id: &str) {
        if let Some(old) = self.forward.get(visitor_id)
            && old != user_id
            && self.reverse.get(&old).as_deref() == Some(visitor_id)
        {
            self.reverse.remove(&old);
        }
        self.forward.insert(visitor_id, user_id);
        self.reverse.insert(user_id, visitor_id);
    }

    fn delete(&self, visitor_id: &str) {
        if let Some(user) = self.forward.get(visitor_id)
            && self.reverse.get(&user).as_deref() == Some(visitor_id)
        {
            self.reverse.remove(&user);
        }
        self.forward.remove(visitor_id);
    }

    fn entries(&self) -> usize {
        self.forward.len()
    }

    fn loaded(&self) {
        self.forward.shrink_to_fit();
        self.reverse.shrink_to_fit();
    }
}

impl VisitorIdLookup for BiIdMap {
    fn visitor_id(&self, user_id: &str) -> Option<String> {
        self.reverse.get(user_id)
    }
    fn user_id_of(&self, visitor_id: &str) -> Option<String> {
        self.forward.get(visitor_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_follows_upserts_changes_and_tombstones() {
        let m = BiIdMap::default();
        m.upsert("v1", "u1");
        assert_eq!(m.visitor_id("u1").as_deref(), Some("v1"));
        assert_eq!(m.user_id_of("v1").as_deref(), Some("u1"));
        // The visitor moves to another user: the old user is unmapped.
        m.upsert("v1", "u2");
        assert_eq!(m.visitor_id("u1"), None);
        assert_eq!(m.visitor_id("u2").as_deref(), Some("v1"));
        // A second visitor of the same user: the latest wins; deleting the older one keeps it.
        m.upsert("v0", "u2");
        assert_eq!(m.visitor_id("u2").as_deref(), Some("v0"));
        m.delete("v1");
        assert_eq!(m.visitor_id("u2").as_deref(), Some("v0"));
        m.delete("v0");
        assert_eq!(m.visitor_id("u2"), None);
        assert_eq!(m.entries(), 0);
        assert_eq!(m.users(), 0);
        m.delete("never");
    }
}
