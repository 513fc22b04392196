//! Shared-secret authentication of webhook senders, compared in constant time. Several secrets
//! may be active at once so they can be rotated without downtime.

use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The secrets a sender may present.
#[derive(Clone)]
pub struct SharedSecrets {
    secrets: Vec<Secret>,
}

impl SharedSecrets {
    /// Accepts any of `secrets`. Empty means nobody is accepted.
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self { secrets }
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether `presented` equals one of the secrets. Every secret is compared (no early exit)
    /// and each comparison takes time independent of where the bytes differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0);
        for s in &self.secrets {
            ok |= s.expose().as_bytes().ct_eq(presented);
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
