//! Body signatures: the sender signs what it sends with a shared secret, and the receiver checks
//! the signature before it believes (or keeps) anything of the body.
//!
//! Segment's webhook destinations send `X-Signature: <lowercase hex HMAC-SHA1(secret, body)>`.
//! For a batched delivery (a JSON array, Actions destination) the signature covers only the raw
//! bytes of the array's FIRST element, so those bytes are located without re-encoding anything
//! ([`signed_part`]). Comparison is constant-time and every configured secret is tried (no early
//! exit), so several secrets can be active while one is rotated.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha1::Sha1;
use subtle::{Choice, ConstantTimeEq};

use crate::secret::Secret;

type HmacSha1 = Hmac<Sha1>;

/// Length of an HMAC-SHA1 in bytes.
pub const HMAC_SHA1_LEN: usize = 20;

/// The secrets a signature may have been made with.
#[derive(Clone)]
pub struct SignatureSecrets {
    /// One keyed HMAC state per secret, cloned per request so the key is hashed only once.
    keys: Vec<HmacSha1>,
}

impl SignatureSecrets {
    /// Accepts signatures made with any of `secrets`. Empty means nothing verifies.
    pub fn new(secrets: &[Secret]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| {
                HmacSha1::new_from_slice(s.expose().as_bytes())
                    .expect("HMAC takes keys of any length")
            })
            .collect();
        Self { keys }
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `signature` (the header value: hex HMAC-SHA1) signs `body` with one of the
    /// secrets. The signed bytes are [`signed_part`] of `body`. Every secret is tried and each
    /// comparison takes the same time wherever the bytes differ.
    pub fn verify(&self, signature: &[u8], body: &[u8]) -> bool {
        let Some(presented) = parse_hex_signature(signature) else {
            return false;
        };
        let signed = signed_part(body);
        let mut ok = Choice::from(0);
        for key in &self.keys {
            let mut mac = key.clone();
            mac.update(signed);
            ok |= mac.finalize().into_bytes().as_slice().ct_eq(&presented);
        }
        bool::from(ok)
    }
}

/// Hex HMAC-SHA1 of `data` with `secret`, lowercase: what a sender puts in `X-Signature` (tests,
/// tools that sign deliveries).
pub fn sign_hex(secret: &[u8], data: &[u8]) -> String {
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The 20 bytes of a hex signature (surrounding blanks ignored; Segment sends lowercase, upper
/// case is accepted too since it is the same value). `None` for anything else, so a malformed
/// header can be refused before the body is read.
pub fn parse_hex_signature(value: &[u8]) -> Option<[u8; HMAC_SHA1_LEN]> {
    let hex = value.trim_ascii();
    if hex.len() != 2 * HMAC_SHA1_LEN {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; HMAC_SHA1_LEN];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// The bytes a Segment signature covers: for a JSON array body, the exact bytes of its first
/// element (as `split_events` slices it: no surrounding blanks); for anything else (an object, an
/// empty array, a body that is not JSON or whose first element is not readable) the whole raw
/// body, so every body can be authenticated before it is judged or kept in the dead-letter topic.
///
/// Only the first element is read, and only skimmed (serde_json reads a raw value without
/// recursion, so deep nesting cannot overflow the stack); the rest of the array is left for
/// `split_events`, which judges the body after it is authenticated.
pub fn signed_part(body: &[u8]) -> &[u8] {
    let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return body;
    };
    if body[open] != b'[' {
        return body;
    }
    let rest = &body[open + 1..];
    let mut de = serde_json::Deserializer::from_slice(rest);
    // Reads exactly one value and leaves what follows it (`,` or `]`) unread.
    match <&RawValue>::deserialize(&mut de) {
        Ok(first) => {
            let text = first.get().as_bytes();
            // `RawValue` borrows from `rest`, so its text is a sub-slice of it.
            let start = text.as_ptr() as usize - rest.as_ptr() as usize;
            &rest[start..start + text.len()]
        }
        Err(_) => body,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;

    use super::*;
    use crate::connectors::webhook::body::split_events;

    const FIXTURE_SECRET: &str = "fixture-shared-secret";

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/segment")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn fixture_names() -> Vec<String> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/segment");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
    }

    fn secrets(values: &[&str]) -> SignatureSecrets {
        SignatureSecrets::new(
            &values
                .iter()
                .map(|v| Secret::inline(*v))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn rfc_2202_hmac_sha1_vectors() {
        // RFC 2202, test cases 1, 2 and 6 (a key longer than the block size).
        assert_eq!(
            sign_hex(&[0x0b; 20], b"Hi There"),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            sign_hex(b"Jefe", b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            sign_hex(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
        let s = SignatureSecrets::new(&[Secret::inline("Jefe")]);
        assert!(s.verify(
            b"effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            b"what do ya want for nothing?"
        ));
        // Same value in upper case, with blanks around it: still that signature.
        assert!(s.verify(
            b" EFFCDF6AE5EB2FA2D27416D5F184DF9C259A7C79 ",
            b"what do ya want for nothing?"
        ));
    }

    #[test]
    fn every_fixture_verifies_and_a_modified_body_does_not() {
        let s = secrets(&[FIXTURE_SECRET]);
        let names = fixture_names();
        assert!(names.len() >= 6, "segment fixtures missing: {names:?}");
        for name in &names {
            let body = fixture(name);
            let sig = sign_hex(FIXTURE_SECRET.as_bytes(), signed_part(&body));
            assert!(s.verify(sig.as_bytes(), &body), "{name}");
            // One byte changed inside the signed part: refused.
            let mut changed = body.clone();
            let at = changed.iter().position(|&b| b == b'u').expect("a 'u'");
            changed[at] = b'v';
            assert!(!s.verify(sig.as_bytes(), &changed), "{name} modified");
            // Another secret, a truncated or a garbage signature: refused.
            let other = sign_hex(b"another-secret", signed_part(&body));
            assert!(!s.verify(other.as_bytes(), &body), "{name} other secret");
            assert!(!s.verify(&sig.as_bytes()[..39], &body));
            assert!(!s.verify(b"", &body));
            assert!(!s.verify(&[b'z'; 40], &body));
        }
    }

    #[test]
    fn a_single_object_is_signed_over_the_whole_raw_body() {
        let body = fixture("audience-track-entered.json");
        assert_eq!(
            signed_part(&body),
            body.as_slice(),
            "trailing newline included"
        );
        let s = secrets(&[FIXTURE_SECRET]);
        let whole = sign_hex(FIXTURE_SECRET.as_bytes(), &body);
        assert!(s.verify(whole.as_bytes(), &body));
        // A signature over the trimmed text is not a signature over the body that was sent.
        let trimmed = sign_hex(FIXTURE_SECRET.as_bytes(), body.trim_ascii());
        assert!(!s.verify(trimmed.as_bytes(), &body));
    }

    #[test]
    fn an_array_is_signed_over_its_first_element_raw_bytes() {
        let body = fixture("actions-batch.json");
        let elements = split_events(&Bytes::from(body.clone()), 100, usize::MAX).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(signed_part(&body), &elements[0][..]);
        assert!(signed_part(&body).starts_with(b"{\"type\":\"track\""));
        assert!(signed_part(&body).ends_with(b"\"2026-11-27T10:00:00.000Z\"}"));

        let s = secrets(&[FIXTURE_SECRET]);
        let first = sign_hex(FIXTURE_SECRET.as_bytes(), &elements[0]);
        assert!(s.verify(first.as_bytes(), &body));
        // Over the whole array, or over the second element: not Segment's signature.
        let whole = sign_hex(FIXTURE_SECRET.as_bytes(), &body);
        assert!(!s.verify(whole.as_bytes(), &body));
        let second = sign_hex(FIXTURE_SECRET.as_bytes(), &elements[1]);
        assert!(!s.verify(second.as_bytes(), &body));

        // The first element modified: refused. Only the first element is covered (Segment's
        // scheme): a change in a later element does not break the signature.
        let text = String::from_utf8(body.clone()).unwrap();
        let tampered = text.replacen("user-1001", "user-1002", 1);
        assert!(!s.verify(first.as_bytes(), tampered.as_bytes()));
        let later = text.replacen("user-2002", "user-2003", 1);
        assert!(s.verify(first.as_bytes(), later.as_bytes()));
    }

    #[test]
    fn first_element_matches_body_splitting_for_odd_layouts() {
        for body in [
            "[{\"a\":1}]",
            " \n[ {\"a\" : [1,{\"b\":\"]\"}]} , {\"c\":2} ]\n",
            "[{\"s\":\"\\\"},{\"}, {}]",
        ] {
            let split = split_events(&Bytes::from(body.to_string()), 10, usize::MAX).unwrap();
            assert_eq!(signed_part(body.as_bytes()), &split[0][..], "{body:?}");
        }
    }

    #[test]
    fn bodies_without_a_readable_first_element_are_signed_whole() {
        for body in [
            &b""[..],
            b"   ",
            b"[]",
            b"[ ]",
            b"[{\"a\":",
            b"[nope",
            b"not json",
            b"{\"a\":1}",
            b"42",
        ] {
            assert_eq!(
                signed_part(body),
                body,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // A deeply nested first element is skimmed without recursion: no stack overflow (the
        // body is refused later by `split_events`' depth limit, after authentication).
        let deep = format!("[{}1{}]", "[".repeat(100_000), "]".repeat(100_000));
        let part = signed_part(deep.as_bytes());
        assert!(
            part.len() == deep.len() - 2,
            "first element: {} bytes",
            part.len()
        );
        // A first element that is a scalar is still "the first element".
        assert_eq!(signed_part(b"[1, {}]"), b"1");
    }

    #[test]
    fn any_of_several_secrets_verifies_rotation() {
        let body = fixture("audience-identify-entered.json");
        let s = secrets(&["old-secret", FIXTURE_SECRET]);
        for key in ["old-secret", FIXTURE_SECRET] {
            let sig = sign_hex(key.as_bytes(), &body);
            assert!(s.verify(sig.as_bytes(), &body), "{key}");
        }
        let sig = sign_hex(b"retired-secret", &body);
        assert!(!s.verify(sig.as_bytes(), &body));
        let none = SignatureSecrets::new(&[]);
        assert!(none.is_empty());
        assert!(!none.verify(sign_hex(b"", &body).as_bytes(), &body));
    }

    #[test]
    fn hex_signature_parsing() {
        assert_eq!(
            parse_hex_signature(b"00ff10"),
            None,
            "wrong length is refused"
        );
        let p = parse_hex_signature(b"000102030405060708090a0b0c0d0e0f10111213").unwrap();
        assert_eq!(p[0], 0);
        assert_eq!(p[19], 0x13);
        assert_eq!(
            parse_hex_signature(b"sha1=000102030405060708090a0b0c0d0e0f10"),
            None
        );
        assert_eq!(
            parse_hex_signature(b"g00102030405060708090a0b0c0d0e0f1011121"),
            None
        );
    }
}
