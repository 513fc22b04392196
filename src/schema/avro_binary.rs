//! Avro binary encoding primitives (spec section "Binary Encoding"): zig-zag varint longs,
//! length-prefixed strings, union branch indexes.
//!
//! Why by hand: the canonical records are on the hot path of every role, and apache-avro's
//! generic writer and `Value` reader cost ~2 µs per Segment call (measured in
//! `benches/transform_pendo.rs`), more than the rest of the mapping. The record layouts built on
//! these primitives are tested byte for byte against apache-avro and decoded by fastavro
//! (`tests/avro_independent_decoder.rs`), so the shipped `.avsc` files stay the contract.

/// Why a datum could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroReadError {
    /// The datum ended inside a value.
    #[error("datum truncated while reading {0}")]
    Truncated(&'static str),
    /// A varint longer than 10 bytes.
    #[error("malformed varint in {0}")]
    BadVarint(&'static str),
    /// A negative or oversized length.
    #[error("invalid length {len} for {what}")]
    BadLength {
        /// What was read.
        what: &'static str,
        /// The length found.
        len: i64,
    },
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A union branch the schema does not have.
    #[error("union branch {index} out of range for {what}")]
    BadBranch {
        /// What was read.
        what: &'static str,
        /// The branch index found.
        index: i64,
    },
    /// Bytes left after the datum.
    #[error("{0} trailing bytes after the datum")]
    Trailing(usize),
}

/// Appends Avro binary values to a buffer.
pub struct AvroWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> AvroWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// `long` (and `int`): zig-zag varint.
    pub fn long(&mut self, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            self.out.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
    }

    /// `string`: length, then UTF-8 bytes.
    pub fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// `["null", "string"]`.
    pub fn opt_string(&mut self, s: Option<&str>) {
        match s {
            None => self.long(0),
            Some(s) => {
                self.long(1);
                self.string(s);
            }
        }
    }

    /// `["null", "long"]`.
    pub fn opt_long(&mut self, v: Option<i64>) {
        match v {
            None => self.long(0),
            Some(v) => {
                self.long(1);
                self.long(v);
            }
        }
    }

    /// A union branch index.
    pub fn branch(&mut self, index: usize) {
        self.long(index as i64);
    }

    /// `boolean`: one byte.
    pub fn boolean(&mut self, b: bool) {
        self.out.push(u8::from(b));
    }

    /// `double`: 8 bytes, little-endian IEEE 754.
    pub fn double(&mut self, d: f64) {
        self.out.extend_from_slice(&d.to_le_bytes());
    }

    /// An array's or map's items as one block (count, items, then the closing empty block);
    /// an empty array or map is the closing block alone.
    pub fn block<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut item: impl FnMut(&mut Self, T),
    ) {
        if items.len() > 0 {
            self.long(items.len() as i64);
            for i in items {
                item(self, i);
            }
        }
        self.long(0);
    }
}

/// Reads Avro binary values from a slice, front to back.
pub struct AvroReader<'a> {
    rest: &'a [u8],
}

impl<'a> AvroReader<'a> {
    /// A reader over one datum.
    pub fn new(datum: &'a [u8]) -> Self {
        Self { rest: datum }
    }

    /// `long` (and `int`).
    pub fn long(&mut self, what: &'static str) -> Result<i64, AvroReadError> {
        let mut n: u64 = 0;
        for (i, &b) in self.rest.iter().enumerate().take(10) {
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        if self.rest.len() < 10 {
            Err(AvroReadError::Truncated(what))
        } else {
            Err(AvroReadError::BadVarint(what))
        }
    }

    /// `string`, borrowed from the datum.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, AvroReadError> {
        let len = self.long(what)?;
        if len < 0 {
            return Err(AvroReadError::BadLength { what, len });
        }
        let len = len as usize;
        if len > self.rest.len() {
            return Err(AvroReadError::Truncated(what));
        }
        let (s, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(s).map_err(|_| AvroReadError::NotUtf8(what))
    }

    /// `string`, owned.
    pub fn string(&mut self, what: &'static str) -> Result<String, AvroReadError> {
        self.str(what).map(str::to_owned)
    }

    /// A union branch index below `branches`.
    pub fn branch(&mut self, what: &'static str, branches: usize) -> Result<usize, AvroReadError> {
        let index = self.long(what)?;
        if index < 0 || index as usize >= branches {
            return Err(AvroReadError::BadBranch { what, index });
        }
        Ok(index as usize)
    }

    /// `["null", X]`: whether X follows.
    pub fn present(&mut self, what: &'static str) -> Result<bool, AvroReadError> {
        Ok(self.branch(what, 2)? == 1)
    }

    /// `["null", "string"]`, borrowed.
    pub fn opt_str(&mut self, what: &'static str) -> Result<Option<&'a str>, AvroReadError> {
        if self.present(what)? {
            self.str(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `["null", "string"]`, owned.
    pub fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, AvroReadError> {
        Ok(self.opt_str(what)?.map(str::to_owned))
    }

    /// `["null", "long"]`.
    pub fn opt_long(&mut self, what: &'static str) -> Result<Option<i64>, AvroReadError> {
        if self.present(what)? {
            self.long(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails unless the whole datum was read.
    pub fn finish(self) -> Result<(), AvroReadError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(AvroReadError::Trailing(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_match_the_spec_examples_and_round_trip() {
        // Spec table: 0 -> 00, -1 -> 01, 1 -> 02, -2 -> 03, 2 -> 04, -64 -> 7f, 64 -> 80 01.
        for (v, bytes) in [
            (0i64, vec![0x00u8]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-2, vec![0x03]),
            (2, vec![0x04]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            AvroWriter::new(&mut out).long(v);
            assert_eq!(out, bytes, "{v}");
        }
        for v in [i64::MIN, i64::MAX, 0, -1, 1_764_330_000_123, -300] {
            let mut out = Vec::new();
            AvroWriter::new(&mut out).long(v);
            let mut r = AvroReader::new(&out);
            assert_eq!(r.long("v").unwrap(), v);
            r.finish().unwrap();
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(
            AvroReader::new(&[0x80]).long("x"),
            Err(AvroReadError::Truncated("x"))
        );
        assert_eq!(
            AvroReader::new(&[0xff; 11]).long("x"),
            Err(AvroReadError::BadVarint("x"))
        );
        // Length 5 with 2 bytes.
        assert_eq!(
            AvroReader::new(&[0x0a, b'a', b'b']).str("s"),
            Err(AvroReadError::Truncated("s"))
        );
        assert!(matches!(
            AvroReader::new(&[0x01]).str("s"),
            Err(AvroReadError::BadLength { len: -1, .. })
        ));
        assert_eq!(
            AvroReader::new(&[0x02, 0xff]).str("s"),
            Err(AvroReadError::NotUtf8("s"))
        );
        assert!(matches!(
            AvroReader::new(&[0x04]).present("u"),
            Err(AvroReadError::BadBranch { index: 2, .. })
        ));
        let r = AvroReader::new(&[0x00, 0x00]);
        assert_eq!(r.finish(), Err(AvroReadError::Trailing(2)));
    }
}
