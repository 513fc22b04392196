//! `IdMapTable`: the in-memory view of `idmap.visitor-to-user`, O(1) lookups on the hot path.
//!
//! Every transformer instance holds the whole mapping (millions of entries), so the layout is
//! compact: all ids live in one byte arena, entries are three `u32`s, and the hash index holds
//! entry numbers — about 60 bytes per mapping instead of ~170 for a map of boxed strings.
//! Replaced and deleted ids leave garbage in the arena, reclaimed by compaction once it is more
//! than half of it.

use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

/// Looks up the Segment user id of a Pendo visitor (what `transform-pendo` asks the id map).
pub trait UserIdLookup {
    /// The mapped user id, if any.
    fn user_id(&self, visitor_id: &str) -> Option<String>;
}

impl UserIdLookup for std::collections::HashMap<String, String> {
    fn user_id(&self, visitor_id: &str) -> Option<String> {
        self.get(visitor_id).cloned()
    }
}

/// Arena size below which garbage is not worth a compaction.
const COMPACT_MIN_BYTES: usize = 1 << 20;

/// Pendo visitor id -> Segment user id. Cloning shares the table.
#[derive(Clone, Default)]
pub struct IdMapTable {
    inner: Arc<RwLock<Compact>>,
}

#[derive(Clone, Copy)]
struct Entry {
    /// Start of the visitor id in the arena; the user id follows it.
    offset: u32,
    visitor_len: u32,
    user_len: u32,
}

#[derive(Default)]
struct Compact {
    arena: Vec<u8>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: std::hash::RandomState,
    garbage: usize,
}

impl Compact {
    fn visitor(&self, e: Entry) -> &[u8] {
        &self.arena[e.offset as usize..(e.offset + e.visitor_len) as usize]
    }

    fn user(&self, e: Entry) -> &[u8] {
        let start = (e.offset + e.visitor_len) as usize;
        &self.arena[start..start + e.user_len as usize]
    }

    fn find(&self, visitor: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(visitor.as_bytes());
        self.index
            .find(hash, |&i| {
                self.visitor(self.entries[i as usize]) == visitor.as_bytes()
            })
            .copied()
    }

    fn append(&mut self, visitor: &[u8], user: &[u8]) -> Entry {
        let offset = u32::try_from(self.arena.len()).expect("id arena under 4 GiB");
        self.arena.extend_from_slice(visitor);
        self.arena.extend_from_slice(user);
        Entry {
            offset,
            visitor_len: visitor.len() as u32,
            user_len: user.len() as u32,
        }
    }

    fn insert(&mut self, visitor: &str, user: &str) {
        if let Some(i) = self.find(visitor) {
            let e = self.entries[i as usize];
            if self.user(e) == user.as_bytes() {
                return;
            }
            self.garbage += (e.visitor_len + e.user_len) as usize;
            self.entries[i as usize] = self.append(visitor.as_bytes(), user.as_bytes());
        } else {
            let e = self.append(visitor.as_bytes(), user.as_bytes());
            let i = match self.free.pop() {
                Some(i) => {
                    self.entries[i as usize] = e;
                    i
                }
                None => {
                    self.entries.push(e);
                    u32::try_from(self.entries.len() - 1).expect("under 4 billion mappings")
                }
            };
            let hash = self.hasher.hash_one(visitor.as_bytes());
            let (arena, entries, hasher) = (&self.arena, &self.entries, &self.hasher);
            self.index.insert_unique(hash, i, |&j| {
                let e = entries[j as usize];
                hasher.hash_one(&arena[e.offset as usize..(e.offset + e.visitor_len) as usize])
            });
        }
        self.maybe_compact();
    }

    fn remove(&mut self, visitor: &str) {
        let hash = self.hasher.hash_one(visitor.as_bytes());
        let (arena, entries) = (&self.arena, &self.entries);
        let found = self.index.find_entry(hash, |&i| {
            let e = entries[i as usize];
            &arena[e.offset as usize..(e.offset + e.visitor_len) as usize] == visitor.as_bytes()
        });
        if let Ok(entry) = found {
            let (i, _) = entry.remove();
            let e = self.entries[i as usize];
            self.garbage += (e.visitor_len + e.user_len) as usize;
            self.entries[i as usize] = Entry {
                offset: 0,
                visitor_len: 0,
                user_len: 0,
            };
            self.free.push(i);
            self.maybe_compact();
        }
    }

    /// Rewrites the arena without garbage once garbage is most of it.
    fn maybe_compact(&mut self) {
        if self.arena.len() < COMPACT_MIN_BYTES || self.garbage * 2 < self.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        let free: std::collections::HashSet<u32> = self.free.iter().copied().collect();
        for (i, e) in self.entries.iter_mut().enumerate() {
            if free.contains(&(i as u32)) {
                continue;
            }
            let start = e.offset as usize;
            let len = (e.visitor_len + e.user_len) as usize;
            let offset = arena.len() as u32;
            arena.extend_from_slice(&self.arena[start..start + len]);
            e.offset = offset;
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

impl IdMapTable {
    /// Sets (or replaces) a mapping.
    pub fn insert(&self, visitor_id: &str, user_id: &str) {
        self.inner
            .write()
            .expect("idmap lock")
            .insert(visitor_id, user_id);
    }

    /// Deletes a mapping (a tombstone on the topic).
    pub fn remove(&self, visitor_id: &str) {
        self.inner.write().expect("idmap lock").remove(visitor_id);
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.inner.read().expect("idmap lock").index.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user id of a visitor.
    pub fn get(&self, visitor_id: &str) -> Option<String> {
        let t = self.inner.read().expect("idmap lock");
        let i = t.find(visitor_id)?;
        // Ids are inserted from `&str`, so the bytes are UTF-8.
        Some(String::from_utf8_lossy(t.user(t.entries[i as usize])).into_owned())
    }

    /// Returns spare capacity after the initial load (the arena doubled its way there).
    pub fn shrink_to_fit(&self) {
        let mut t = self.inner.write().expect("idmap lock");
        t.arena.shrink_to_fit();
        t.entries.shrink_to_fit();
    }

    /// Bytes held by the table's own structures (arena, entries, index), for the memory report.
    pub fn heap_bytes(&self) -> usize {
        let t = self.inner.read().expect("idmap lock");
        t.arena.capacity()
            + t.entries.capacity() * std::mem::size_of::<Entry>()
            + t.free.capacity() * 4
            + t.index.capacity() * (std::mem::size_of::<u32>() + 1)
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
    use std::collections::HashMap;

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
        t.remove("never");
        t.insert("", "empty visitor id is a key like any other");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn behaves_like_a_hash_map_under_random_churn_and_compaction() {
        let t = IdMapTable::default();
        let mut model: HashMap<String, String> = HashMap::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = format!("visitor-{}", x % 5_000);
            match x % 10 {
                0..=5 => {
                    let u = format!("user-{step}-{}", "x".repeat((x % 40) as usize));
                    t.insert(&v, &u);
                    model.insert(v, u);
                }
                6..=7 => {
                    t.remove(&v);
                    model.remove(&v);
                }
                _ => assert_eq!(t.get(&v), model.get(&v).cloned(), "step {step}"),
            }
        }
        assert_eq!(t.len(), model.len());
        for (v, u) in &model {
            assert_eq!(t.get(v).as_ref(), Some(u));
        }
        let inner = t.inner.read().unwrap();
        assert!(
            inner.arena.len() < 4 * COMPACT_MIN_BYTES,
            "garbage is reclaimed: arena {} bytes",
            inner.arena.len()
        );
    }
}
