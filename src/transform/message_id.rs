//! Deterministic Segment messageIds.
//!
//! Segment de-duplicates on `messageId` alone, so the id must depend only on the source event's
//! identity: the same Pendo event delivered twice (webhook retry, replay from an offset, the
//! same guide interaction from the webhook and the poller) yields the same id, and two calls made
//! from one event (NPS track + identify) yield different ones. The id is
//! `<prefix>-<32 hex digits of SHA-256>` over a versioned, unambiguous encoding of the kind, the
//! call type and the identity fields; at most 100 characters (Segment's limit).

use sha2::{Digest, Sha256};

/// Longest prefix accepted, so that ids stay within Segment's 100 characters.
pub const MAX_PREFIX_LEN: usize = 60;

/// Builds one messageId from its parts, in order.
pub struct MessageIdBuilder {
    hasher: Sha256,
}

impl MessageIdBuilder {
    /// Starts an id for `kind` (case-folded, so kind aliases that differ only in case agree)
    /// and the call type.
    pub fn new(kind: &str, call_type: &str) -> Self {
        let mut b = Self {
            hasher: Sha256::new(),
        };
        b.hasher.update(b"pendo-segment/message-id/v1");
        if kind.is_ascii() && kind.len() <= 64 {
            // Same bytes as `to_lowercase` for ASCII, without an allocation per event.
            let mut buf = [0u8; 64];
            let lower = &mut buf[..kind.len()];
            lower.copy_from_slice(kind.as_bytes());
            lower.make_ascii_lowercase();
            b.part(lower);
        } else {
            b.part(kind.to_lowercase().as_bytes());
        }
        b.part(call_type.as_bytes());
        b
    }

    /// Adds one identity field (length-prefixed, so no two sequences of parts collide).
    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// Adds an absent field (distinct from any present value, including the empty string).
    pub fn absent(&mut self) -> &mut Self {
        self.hasher.update(u64::MAX.to_le_bytes());
        self
    }

    /// Finishes the id with `prefix`.
    pub fn finish(self, prefix: &str) -> String {
        let digest = self.hasher.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(prefix.len() + 33);
        id.push_str(prefix);
        id.push('-');
        for b in &digest[..16] {
            id.push(HEX[(b >> 4) as usize] as char);
            id.push(HEX[(b & 15) as usize] as char);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, call: &str, parts: &[Option<&str>]) -> String {
        let mut b = MessageIdBuilder::new(kind, call);
        for p in parts {
            match p {
                Some(p) => b.part(p.as_bytes()),
                None => b.absent(),
            };
        }
        b.finish("pendo")
    }

    #[test]
    fn same_identity_same_id_and_every_difference_counts() {
        let a = id("featureClicked", "track", &[Some("u1"), Some("v1")]);
        assert_eq!(a, id("FEATURECLICKED", "track", &[Some("u1"), Some("v1")]));
        assert_eq!(a.len(), "pendo-".len() + 32);
        assert!(a.starts_with("pendo-"));
        for other in [
            id("featureClicked", "identify", &[Some("u1"), Some("v1")]),
            id("pageLoaded", "track", &[Some("u1"), Some("v1")]),
            id("featureClicked", "track", &[Some("u1v1")]),
            id("featureClicked", "track", &[Some("u1"), Some("")]),
            id("featureClicked", "track", &[Some("u1"), None]),
            id("featureClicked", "track", &[Some("v1"), Some("u1")]),
        ] {
            assert_ne!(a, other);
        }
        // Pinned: a change of the encoding would re-send every replayed event to Segment
        // (the golden tests pin whole calls, this pins the hash on its own).
        assert_eq!(
            id("npsSubmitted", "track", &[Some("x")]),
            id("npssubmitted", "track", &[Some("x")])
        );
        assert_eq!(
            id("npsSubmitted", "track", &[Some("x")]),
            "pendo-7a494d2cd57b7d17cd86fa71d6a02106"
        );
        assert_eq!(
            id("Ünknown", "track", &[None]),
            id("ünknown", "track", &[None]),
            "non-ASCII kinds fold case too"
        );
    }
}
