//! The poller's memory, kept in the compacted topic `state.pendo-poller` and written in the same
//! Kafka transaction as the records it covers, so a crash never loses or repeats a window.
//!
//! Keys and values (JSON):
//! - `cursor:<name>` -> `{"at": <epoch ms>}`: a watermark (`visitors.firstvisit`) or the end
//!   of the last complete cycle (`accounts.cycle`, `catalog.cycle`);
//! - `account:<id>` -> `{"fp": "<hex>"}`: fingerprint of the account's selected metadata as
//!   last emitted, so a cycle emits only accounts that changed;
//! - `visitor:<id>` -> `{"seen": <bool>, "fp": "<hex>"}`: whether the visitor's first visit was
//!   emitted (overlapping windows never emit it again), and the fingerprint of its selected
//!   metadata as last sent (first visit or profile sync), so a profile sync sends only visitors
//!   that changed. Written as `{"seen": true}` before profile syncs existed: read as seen, with
//!   no fingerprint (the next sync sends that visitor's profile once);
//! - `catalog:<kind>:<id>` -> `{"fp": "<hex>"}`: the catalogue entry as last published;
//! - on `state.milestones`, `<rule>:<visitor>` -> `{"reached": true}`: the visitor's milestone
//!   was emitted;
//! - `row:<hex>` -> `{"at": <browserTime>}`: a guide/poll interaction row was emitted (deleted
//!   by a tombstone once the settle window no longer re-reads it);
//! - `rejected:<hex>` -> `{"seen": true}`: an unusable row already dead-lettered (re-reading it
//!   in the next cycle does not dead-letter it again);
//! - `usage:<visitor|account>:<id>` -> `{"fp": "<hex>"}`: fingerprint of the subject's computed
//!   usage traits as last sent (deleted by a tombstone once zeros were sent).

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

/// Fingerprint of emitted content (128 bits of SHA-256 over canonical JSON).
pub type Fingerprint = [u8; 16];

/// One change to the state topic.
#[derive(Debug, Clone, PartialEq)]
pub enum StateUpdate {
    /// A watermark moved.
    Cursor {
        /// Cursor name.
        name: String,
        /// Epoch ms.
        at: i64,
    },
    /// An account was emitted with this content.
    Account {
        /// Pendo account id.
        id: String,
        /// Its fingerprint.
        fp: Fingerprint,
    },
    /// A visitor's first visit or profile was emitted.
    Visitor {
        /// Pendo visitor id.
        id: String,
        /// Whether its first visit was emitted.
        seen: bool,
        /// Fingerprint of the selected metadata sent.
        fp: Fingerprint,
    },
    /// An unusable row with this fingerprint was dead-lettered.
    Rejected {
        /// The row's fingerprint.
        fp: Fingerprint,
    },
    /// A guide/poll interaction row was emitted (`at`: its browserTime, for forgetting it once
    /// no window re-reads it).
    SeenRow {
        /// The row's fingerprint.
        fp: Fingerprint,
        /// Its browserTime (epoch ms).
        at: i64,
    },
    /// An interaction row is older than any window will re-read: its marker is deleted.
    ForgetRow {
        /// The row's fingerprint.
        fp: Fingerprint,
    },
    /// A visitor reached a milestone rule (written to `state.milestones`).
    Milestone {
        /// Rule name.
        rule: String,
        /// Pendo visitor id.
        visitor: String,
    },
    /// A subject's computed usage was sent with this content (`None`: zeros were sent, the
    /// entry is deleted).
    Usage {
        /// `<visitor|account>:<id>`.
        key: String,
        /// Fingerprint of the traits sent.
        fp: Option<Fingerprint>,
    },
    /// A catalogue entry was published with this content.
    Catalog {
        /// `<kind>:<id>`.
        key: String,
        /// Its fingerprint.
        fp: Fingerprint,
    },
}

impl StateUpdate {
    /// Whether the update belongs on `state.milestones` (else `state.pendo-poller`).
    pub fn is_milestone(&self) -> bool {
        matches!(self, StateUpdate::Milestone { .. })
    }

    /// The record key and value (on `state.milestones` for milestones, else
    /// `state.pendo-poller`).
    /// `None` as the value is a tombstone.
    pub fn to_record(&self) -> (String, Option<Vec<u8>>) {
        let (key, value) = match self {
            StateUpdate::SeenRow { fp, at } => (format!("row:{}", hex(fp)), json!({"at": at})),
            StateUpdate::ForgetRow { fp } => return (format!("row:{}", hex(fp)), None),
            StateUpdate::Cursor { name, at } => (format!("cursor:{name}"), json!({"at": at})),
            StateUpdate::Account { id, fp } => (format!("account:{id}"), json!({"fp": hex(fp)})),
            StateUpdate::Visitor { id, seen, fp } => (
                format!("visitor:{id}"),
                json!({"seen": seen, "fp": hex(fp)}),
            ),
            StateUpdate::Catalog { key, fp } => (format!("catalog:{key}"), json!({"fp": hex(fp)})),
            StateUpdate::Usage { key, fp: None } => return (format!("usage:{key}"), None),
            StateUpdate::Usage { key, fp: Some(fp) } => {
                (format!("usage:{key}"), json!({"fp": hex(fp)}))
            }
            StateUpdate::Rejected { fp } => {
                (format!("rejected:{}", hex(fp)), json!({"seen": true}))
            }
            StateUpdate::Milestone { rule, visitor } => {
                (format!("{rule}:{visitor}"), json!({"reached": true}))
            }
        };
        (key, Some(value.to_string().into_bytes()))
    }
}

/// What the poller remembers of one visitor: 18 bytes beside its id (a million visitors: 183 MiB
/// resident for the whole poller, `benches/pendo_poller_state.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitorMemo {
    /// Fingerprint of the selected metadata as last sent; `None` for state written before
    /// profile syncs existed.
    pub fp: Option<Fingerprint>,
    /// Whether the visitor's first visit was emitted.
    pub seen: bool,
}

/// What the poller remembers between cycles and restarts.
#[derive(Debug, Default)]
pub struct PollerState {
    cursors: HashMap<String, i64>,
    accounts: HashMap<Box<str>, Fingerprint>,
    visitors: HashMap<Box<str>, VisitorMemo>,
    catalog: HashMap<Box<str>, Fingerprint>,
    usage: HashMap<Box<str>, Fingerprint>,
    rejected: HashSet<Fingerprint>,
    milestones: HashSet<Box<str>>,
    rows: HashMap<Fingerprint, i64>,
}

impl PollerState {
    /// Applies one record read back from the state topic; a tombstone (`None`) forgets the key.
    /// Unknown keys and unreadable values are reported, never fatal: the worst outcome of a
    /// forgotten entry is one repeated emission (same messageId downstream).
    pub fn apply_record(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let parsed: Option<Value> = match value {
            None => None,
            Some(v) => {
                Some(serde_json::from_slice(v).map_err(|e| format!("state key {key:?}: {e}"))?)
            }
        };
        let (kind, rest) = key
            .split_once(':')
            .ok_or_else(|| format!("state key {key:?} has no kind"))?;
        match (kind, parsed) {
            ("cursor", None) => {
                self.cursors.remove(rest);
            }
            ("cursor", Some(v)) => {
                let at = v["at"]
                    .as_i64()
                    .ok_or_else(|| format!("state key {key:?}: no `at`"))?;
                self.cursors.insert(rest.to_string(), at);
            }
            ("account", None) => {
                self.accounts.remove(rest);
            }
            ("account", Some(v)) => {
                self.accounts.insert(rest.into(), parse_fp(key, &v)?);
            }
            ("visitor", None) => {
                self.visitors.remove(rest);
            }
            ("visitor", Some(v)) => {
                let fp = match v.get("fp") {
                    None => None,
                    Some(_) => Some(parse_fp(key, &v)?),
                };
                let seen = v["seen"].as_bool().unwrap_or(false);
                self.visitors.insert(rest.into(), VisitorMemo { fp, seen });
            }
            ("catalog", None) => {
                self.catalog.remove(rest);
            }
            ("catalog", Some(v)) => {
                self.catalog.insert(rest.into(), parse_fp(key, &v)?);
            }
            ("usage", None) => {
                self.usage.remove(rest);
            }
            ("usage", Some(v)) => {
                self.usage.insert(rest.into(), parse_fp(key, &v)?);
            }
            ("row", v) => {
                let mut fp = [0u8; 16];
                parse_hex(key, rest, &mut fp)?;
                match v {
                    Some(v) => {
                        let at = v["at"]
                            .as_i64()
                            .ok_or_else(|| format!("state key {key:?}: no `at`"))?;
                        self.rows.insert(fp, at);
                    }
                    None => {
                        self.rows.remove(&fp);
                    }
                }
            }
            ("rejected", v) => {
                let mut fp = [0u8; 16];
                parse_hex(key, rest, &mut fp)?;
                if v.is_some() {
                    self.rejected.insert(fp);
                } else {
                    self.rejected.remove(&fp);
                }
            }
            _ => return Err(format!("state key {key:?}: unknown kind")),
        }
        Ok(())
    }

    /// Applies updates that were committed.
    pub fn apply(&mut self, updates: &[StateUpdate]) {
        for u in updates {
            match u {
                StateUpdate::Cursor { name, at } => {
                    self.cursors.insert(name.clone(), *at);
                }
                StateUpdate::Account { id, fp } => {
                    self.accounts.insert(id.as_str().into(), *fp);
                }
                StateUpdate::Visitor { id, seen, fp } => {
                    let memo = VisitorMemo {
                        fp: Some(*fp),
                        seen: *seen,
                    };
                    match self.visitors.get_mut(id.as_str()) {
                        Some(m) => *m = memo,
                        None => {
                            self.visitors.insert(id.as_str().into(), memo);
                        }
                    }
                }
                StateUpdate::Catalog { key, fp } => {
                    self.catalog.insert(key.as_str().into(), *fp);
                }
                StateUpdate::Rejected { fp } => {
                    self.rejected.insert(*fp);
                }
                StateUpdate::Usage { key, fp: Some(fp) } => {
                    self.usage.insert(key.as_str().into(), *fp);
                }
                StateUpdate::Usage { key, fp: None } => {
                    self.usage.remove(key.as_str());
                }
                StateUpdate::Milestone { rule, visitor } => {
                    self.milestones.insert(format!("{rule}:{visitor}").into());
                }
                StateUpdate::SeenRow { fp, at } => {
                    self.rows.insert(*fp, *at);
                }
                StateUpdate::ForgetRow { fp } => {
                    self.rows.remove(fp);
                }
            }
        }
    }

    /// A cursor's value (epoch ms).
    pub fn cursor(&self, name: &str) -> Option<i64> {
        self.cursors.get(name).copied()
    }

    /// The fingerprint an account was last emitted with.
    pub fn account(&self, id: &str) -> Option<&Fingerprint> {
        self.accounts.get(id)
    }

    /// Whether a visitor's first visit was emitted.
    pub fn visitor_seen(&self, id: &str) -> bool {
        self.visitors.get(id).is_some_and(|m| m.seen)
    }

    /// What is remembered of a visitor, if anything.
    pub fn visitor(&self, id: &str) -> Option<VisitorMemo> {
        self.visitors.get(id).copied()
    }

    /// The fingerprint a subject's computed usage was last sent with (`<visitor|account>:<id>`;
    /// `None`: never sent, or zeros).
    pub fn usage(&self, key: &str) -> Option<&Fingerprint> {
        self.usage.get(key)
    }

    /// The subjects whose last sent usage was not all zeros.
    pub fn usage_keys(&self) -> impl Iterator<Item = &str> {
        self.usage.keys().map(|k| &**k)
    }

    /// The fingerprint a catalogue entry was last published with.
    pub fn catalog(&self, key: &str) -> Option<&Fingerprint> {
        self.catalog.get(key)
    }

    /// Applies one record of `state.milestones` (key `<rule>:<visitor>`; `present` false for a
    /// tombstone, which lets the visitor reach the milestone again).
    pub fn apply_milestone_record(&mut self, key: &str, present: bool) {
        if present {
            self.milestones.insert(key.into());
        } else {
            self.milestones.remove(key);
        }
    }

    /// Whether `visitor` reached milestone `rule` already.
    pub fn milestone_reached(&self, rule: &str, visitor: &str) -> bool {
        self.milestones
            .contains(format!("{rule}:{visitor}").as_str())
    }

    /// Whether an interaction row with this fingerprint was emitted (and not forgotten).
    pub fn row_seen(&self, fp: &Fingerprint) -> bool {
        self.rows.contains_key(fp)
    }

    /// Interaction rows older than `before` (epoch ms): no window re-reads them.
    pub fn rows_before(&self, before: i64) -> Vec<Fingerprint> {
        self.rows
            .iter()
            .filter(|(_, at)| **at < before)
            .map(|(fp, _)| *fp)
            .collect()
    }

    /// Whether an unusable row with this fingerprint was dead-lettered already.
    pub fn rejected(&self, fp: &Fingerprint) -> bool {
        self.rejected.contains(fp)
    }

    /// Entries held (for the start-up log).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.accounts.len(), self.visitors.len(), self.catalog.len())
    }
}

fn parse_fp(key: &str, v: &Value) -> Result<Fingerprint, String> {
    let text = v["fp"]
        .as_str()
        .ok_or_else(|| format!("state key {key:?}: no `fp`"))?;
    let mut fp = [0u8; 16];
    parse_hex(key, text, &mut fp)?;
    Ok(fp)
}

fn parse_hex(key: &str, text: &str, fp: &mut Fingerprint) -> Result<(), String> {
    let bad = || format!("state key {key:?}: bad fingerprint");
    if text.len() != 32 || !text.is_ascii() {
        return Err(bad());
    }
    for (i, b) in fp.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(())
}

fn hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_update_reads_back_as_it_was_written() {
        let updates = vec![
            StateUpdate::Cursor {
                name: "visitors.firstvisit".into(),
                at: 1_764_000_000_000,
            },
            StateUpdate::Account {
                id: "acct:1".into(),
                fp: [7; 16],
            },
            StateUpdate::Visitor {
                id: "v 1".into(),
                seen: true,
                fp: [5; 16],
            },
            StateUpdate::Visitor {
                id: "v 2".into(),
                seen: false,
                fp: [6; 16],
            },
            StateUpdate::Rejected { fp: [9; 16] },
            StateUpdate::Catalog {
                key: "feature:f1".into(),
                fp: [255; 16],
            },
        ];
        let mut s = PollerState::default();
        for u in &updates {
            let (k, v) = u.to_record();
            s.apply_record(&k, v.as_deref()).unwrap();
        }
        let seen = StateUpdate::SeenRow {
            fp: [3; 16],
            at: 10,
        };
        let (k, v) = seen.to_record();
        s.apply_record(&k, v.as_deref()).unwrap();
        assert!(s.row_seen(&[3; 16]));
        assert_eq!(s.rows_before(11), vec![[3; 16]]);
        assert!(s.rows_before(10).is_empty());
        let (k, v) = StateUpdate::ForgetRow { fp: [3; 16] }.to_record();
        assert!(v.is_none(), "a tombstone");
        s.apply_record(&k, None).unwrap();
        assert!(!s.row_seen(&[3; 16]));
        assert_eq!(s.cursor("visitors.firstvisit"), Some(1_764_000_000_000));
        assert_eq!(s.account("acct:1"), Some(&[7; 16]));
        assert!(s.visitor_seen("v 1"));
        assert_eq!(s.visitor("v 1").unwrap().fp, Some([5; 16]));
        assert!(!s.visitor_seen("v 2"), "profile sent, first visit not yet");
        assert_eq!(s.visitor("v 2").unwrap().fp, Some([6; 16]));
        // State written before profile syncs: seen, fingerprint unknown.
        s.apply_record("visitor:old", Some(b"{\"seen\":true}"))
            .unwrap();
        assert!(s.visitor_seen("old"));
        assert_eq!(s.visitor("old").unwrap().fp, None);
        assert_eq!(s.catalog("feature:f1"), Some(&[255; 16]));
        assert!(s.rejected(&[9; 16]));
        let usage = StateUpdate::Usage {
            key: "account:a:1".into(),
            fp: Some([4; 16]),
        };
        let (k, v) = usage.to_record();
        assert_eq!(k, "usage:account:a:1");
        s.apply_record(&k, v.as_deref()).unwrap();
        assert_eq!(s.usage("account:a:1"), Some(&[4; 16]));
        assert_eq!(s.usage_keys().collect::<Vec<_>>(), vec!["account:a:1"]);
        let (k, v) = StateUpdate::Usage {
            key: "account:a:1".into(),
            fp: None,
        }
        .to_record();
        assert!(v.is_none(), "zeros sent: a tombstone");
        s.apply_record(&k, None).unwrap();
        assert_eq!(s.usage("account:a:1"), None);
        let m = StateUpdate::Milestone {
            rule: "r".into(),
            visitor: "v:1".into(),
        };
        assert!(m.is_milestone());
        let (k, _) = m.to_record();
        assert_eq!(k, "r:v:1");
        s.apply_milestone_record(&k, true);
        assert!(s.milestone_reached("r", "v:1"));
        s.apply_milestone_record(&k, false);
        assert!(!s.milestone_reached("r", "v:1"));
        s.apply_record("account:acct:1", None).unwrap();
        assert_eq!(s.account("acct:1"), None);
        assert!(s.apply_record("bogus", Some(b"{}")).is_err());
        assert!(
            s.apply_record("account:x", Some(b"{\"fp\":\"zz\"}"))
                .is_err()
        );
    }
}
