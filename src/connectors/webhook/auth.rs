//! Shared-secret authentication of webhook senders, compared in constant time. Several secrets
//! may be active at once so they can be rotated without downtime.
//!
//! What is compared are SHA-256 digests, not the secrets: digests all have one length, so the
//! comparison takes the same time whatever the length of the value presented (a byte-wise
//! constant-time compare still returns at once on a length mismatch, which tells a prober how
//! long the secret is).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The secrets a sender may present, kept as their SHA-256 digests.
#[derive(Clone)]
pub struct SharedSecrets {
    digests: Vec<[u8; 32]>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl SharedSecrets {
    /// Accepts any of `secrets`. Empty means nobody is accepted.
    pub fn new(secrets: Vec<Secret>) -> Self {
        let digests = secrets
            .iter()
            .map(|s| sha256(s.expose().as_bytes()))
            .collect();
        Self { digests }
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` equals one of the secrets. Every secret is compared (no early exit)
    /// and each comparison is of two 32-byte digests, so it takes the same time wherever the
    /// bytes differ and whatever their lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented = sha256(presented);
        let mut ok = subtle::Choice::from(0);
        for d in &self.digests {
            ok |= d.ct_eq(&presented);
        }
        bool::from(ok)
    }
}

/// Extracts the secret from a header value: with a scheme (`Bearer <secret>`, scheme matched
/// case-insensitively) or, when `scheme` is empty, the whole value.
pub fn credential_from_header<'a>(value: &'a [u8], scheme: &str) -> Option<&'a [u8]> {
    if scheme.is_empty() {
        return Some(value);
    }
    let s = scheme.as_bytes();
    if value.len() > s.len() && value[..s.len()].eq_ignore_ascii_case(s) && value[s.len()] == b' ' {
        Some(value[s.len() + 1..].trim_ascii())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_active_secret_matches() {
        let s = SharedSecrets::new(vec![Secret::inline("old-secret"), Secret::inline("new")]);
        assert!(s.matches(b"old-secret"));
        assert!(s.matches(b"new"));
        assert!(!s.matches(b"ne"));
        assert!(!s.matches(b"new "));
        assert!(!s.matches(b""));
        assert!(!SharedSecrets::new(vec![]).matches(b""));
    }

    #[test]
    fn presented_values_of_every_length_are_judged_alike() {
        // Digests are compared, so lengths around the secret's (and far beyond) only ever
        // give "no", and the secret itself "yes".
        let secret = "a-secret-of-24-bytes-xyz";
        let s = SharedSecrets::new(vec![Secret::inline(secret)]);
        assert!(s.matches(secret.as_bytes()));
        for len in (0..=64).chain([1024, 1 << 20]) {
            let mut v = secret.as_bytes().to_vec();
            v.resize(len, b'z');
            assert_eq!(s.matches(&v), len == secret.len(), "length {len}");
        }
        // The secret is not kept, only its digest.
        assert!(s.digests.iter().all(|d| d.len() == 32 && d != &[0; 32]));
    }

    #[test]
    fn bearer_scheme_is_parsed() {
        assert_eq!(
            credential_from_header(b"Bearer abc", "Bearer"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            credential_from_header(b"bearer abc", "Bearer"),
            Some(&b"abc"[..])
        );
        assert_eq!(credential_from_header(b"Basic abc", "Bearer"), None);
        assert_eq!(credential_from_header(b"Bearer", "Bearer"), None);
        assert_eq!(credential_from_header(b"raw", ""), Some(&b"raw"[..]));
    }
}
