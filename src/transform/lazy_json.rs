//! A JSON object parsed only as deep as it is read: members stay borrowed, validated JSON text
//! (`RawValue`) until a path goes into them, and are written back verbatim (minus insignificant
//! whitespace).
//!
//! Why: a Pendo event is 0.4-2 KB of which the mapping reads a dozen fields; building a full
//! `serde_json::Value` tree, cloning its `properties` and serialising them again was most of the
//! transformer's CPU (allocations and map inserts for values that are only copied through).
//! Objects that the mapping reads from are opened when the event is parsed ([`OpenTree`], derived
//! from the mapping once); anything else is opened on demand, so a missing entry in the tree
//! costs time, never correctness.
//!
//! Opened objects are written with their members sorted by key, like `serde_json::Map`, so the
//! JSON written is the same object the `Value` path produced. Differences are only in how equal JSON is spelled: a copied-through
//! number keeps its digits (`1.50`, integers beyond 64 bits are not rounded) and a string keeps
//! its escapes; duplicate keys are resolved (last wins) only in the objects that are opened.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Up to this many members, objects are scanned rather than indexed.
const SMALL: usize = 32;

/// One member value: untouched text, an opened object, or a value the mapping computed.
#[derive(Debug, Clone)]
pub enum LazyNode<'a> {
    /// Validated JSON text borrowed from the input, not parsed yet.
    Raw(&'a RawValue),
    /// An object whose members were parsed (lazily in turn).
    Object(LazyObject<'a>),
    /// A value built by the mapping (literals, computed fields).
    Owned(Value),
}

/// An object's members in the order they came, duplicates included; of equal keys the last
/// counts (as in serde_json's map). Sorted only when written. (Objects are small: a scan that
/// compares lengths first beats a tree's node allocations and its string comparisons.)
#[derive(Debug, Clone, Default)]
pub struct LazyObject<'a>(Vec<(Cow<'a, str>, LazyNode<'a>)>);

/// Which members are opened when an object is parsed: a tree of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenTree(HashMap<String, OpenTree>);

impl OpenTree {
    /// Opens every object on the way to `path` (so reading it needs no further parsing), but not
    /// the value at `path` itself.
    pub fn add_read(&mut self, path: &[String]) {
        if let Some((_, parents)) = path.split_last() {
            self.add_object(parents);
        }
    }

    /// Opens the object at `path` and every object on the way to it.
    pub fn add_object(&mut self, path: &[String]) {
        let mut node = self;
        for key in path {
            node = node.0.entry(key.clone()).or_default();
        }
    }
}

/// Why bytes are not a lazily readable object.
#[derive(Debug)]
pub enum LazyParseError {
    /// Not JSON at all (the parser's message).
    Invalid(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
}

impl fmt::Display for LazyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LazyParseError::Invalid(e) => write!(f, "not JSON: {e}"),
            LazyParseError::NotAnObject => f.write_str("not a JSON object"),
        }
    }
}

/// A key as the parser hands it over: borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor(PhantomData))
    }
}

/// The members of one object, each kept as raw text.
struct RawMembers<'a>(LazyObject<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for RawMembers<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
            type Value = RawMembers<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<RawMembers<'a>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'a>, &'a RawValue>()? {
                    members.push((k, LazyNode::Raw(v)));
                }
                Ok(RawMembers(LazyObject(members)))
            }
        }
        d.deserialize_map(MembersVisitor(PhantomData))
    }
}

/// Whether raw text is an object (it is validated JSON: the first byte decides).
fn is_object(raw: &RawValue) -> bool {
    raw.get().as_bytes().first() == Some(&b'{')
}

/// The members of a raw object, or `None` when it is not one.
fn open_raw<'a>(raw: &'a RawValue) -> Option<LazyObject<'a>> {
    if !is_object(raw) {
        return None;
    }
    serde_json::from_str::<RawMembers<'a>>(raw.get())
        .ok()
        .map(|m| m.0)
}

/// A value as `serde_json::Value` (`None` for text `Value` cannot hold: a number out of `f64`
/// range, which `RawValue` accepts).
fn raw_value(raw: &RawValue) -> Option<Value> {
    serde_json::from_str(raw.get()).ok()
}

/// The text of raw JSON when it is a string (validated JSON: the first byte decides; the text
/// between the quotes is the string itself unless it has escapes).
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Appends `s` as a JSON string. Text that needs no escape (keys and most values) is copied
/// between quotes; anything else is escaped by `serde_json`, so the output is the same.
fn write_json_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
    }
}

/// Appends validated JSON text without the whitespace between tokens.
fn write_compact(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &c) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
            out.extend_from_slice(&bytes[start..i]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A value found by a read: a member, or text inside a member that was not opened.
#[derive(Debug, Clone, Copy)]
pub enum Found<'n, 'a> {
    /// A member node.
    Node(&'n LazyNode<'a>),
    /// Raw text found inside raw text (read through an object that was not opened).
    Raw(&'a RawValue),
    /// Inside a computed value.
    Value(&'n Value),
}

impl<'n, 'a> Found<'n, 'a> {
    fn child(self, key: &str) -> Option<Found<'n, 'a>> {
        match self {
            Found::Node(LazyNode::Object(o)) => o.find(key).map(Found::Node),
            Found::Node(&LazyNode::Raw(r)) | Found::Raw(r) => {
                open_raw(r).and_then(|o| match o.find(key)? {
                    LazyNode::Raw(inner) => Some(Found::Raw(inner)),
                    _ => None,
                })
            }
            Found::Node(LazyNode::Owned(v)) | Found::Value(v) => {
                v.as_object()?.get(key).map(Found::Value)
            }
        }
    }

    /// The value, parsed (cheap for the scalars the mapping reads).
    pub fn to_value(self) -> Option<Value> {
        match self {
            Found::Node(n) => n.to_value(),
            Found::Raw(r) => raw_value(r),
            Found::Value(v) => Some(v.clone()),
        }
    }

    /// The text of a string, borrowed from the input when it has no escapes (most ids, names
    /// and URLs): a read that needs the text only allocates nothing and parses nothing. `None`
    /// when this is not a string.
    pub fn as_str(self) -> Option<Cow<'n, str>> {
        match self {
            Found::Node(&LazyNode::Raw(r)) | Found::Raw(r) => raw_str(r),
            Found::Node(LazyNode::Owned(Value::String(s))) | Found::Value(Value::String(s)) => {
                Some(Cow::Borrowed(s))
            }
            Found::Node(_) | Found::Value(_) => None,
        }
    }

    /// The object's members (a copy), or `None` when this is not an object.
    pub fn to_object(self) -> Option<LazyObject<'a>> {
        match self {
            Found::Node(n) => n.clone().into_object(),
            Found::Raw(r) => open_raw(r),
            Found::Value(Value::Object(m)) => Some(LazyObject::from_map(m.clone())),
            Found::Value(_) => None,
        }
    }
}

impl<'a> LazyNode<'a> {
    /// The value, parsed.
    pub fn to_value(&self) -> Option<Value> {
        match self {
            LazyNode::Raw(r) => raw_value(r),
            LazyNode::Object(o) => o.to_value().map(Value::Object),
            LazyNode::Owned(v) => Some(v.clone()),
        }
    }

    /// The members, when this is an object.
    pub fn into_object(self) -> Option<LazyObject<'a>> {
        match self {
            LazyNode::Raw(r) => open_raw(r),
            LazyNode::Object(o) => Some(o),
            LazyNode::Owned(Value::Object(m)) => Some(LazyObject::from_map(m)),
            LazyNode::Owned(_) => None,
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            LazyNode::Raw(r) => write_compact(r.get(), out),
            LazyNode::Object(o) => o.write_json(out),
            LazyNode::Owned(Value::String(s)) => write_json_str(s, out),
            LazyNode::Owned(v) => serde_json::to_writer(&mut *out, v).expect("writing to a Vec"),
        }
    }
}

impl<'a> LazyObject<'a> {
    /// Where the member `key` that counts is (the last of that name).
    fn position(&self, key: &str) -> Option<usize> {
        self.0
            .iter()
            .rposition(|(k, _)| k.len() == key.len() && k.as_ref() == key)
    }

    fn find(&self, key: &str) -> Option<&LazyNode<'a>> {
        self.position(key).map(|i| &self.0[i].1)
    }

    fn find_mut(&mut self, key: &str) -> Option<&mut LazyNode<'a>> {
        self.position(key).map(|i| &mut self.0[i].1)
    }

    /// Removes every member named `key`, returning the one that counted. Linear however many
    /// duplicates there are (one pass removes them all, instead of a scan and a shift each).
    fn take(&mut self, key: &str) -> Option<LazyNode<'a>> {
        let taken = self.0.remove(self.position(key)?).1;
        if self.0.iter().any(|(k, _)| k.as_ref() == key) {
            self.0.retain(|(k, _)| k.as_ref() != key);
        }
        Some(taken)
    }

    /// The members that count, sorted by key.
    fn sorted(&self) -> Vec<&(Cow<'a, str>, LazyNode<'a>)> {
        let mut members: Vec<_> = self.0.iter().collect();
        // Stable: of equal keys the last stays last, and is the one kept.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                *earlier = *later;
            }
            same
        });
        members
    }

    /// Parses `bytes` as an object, opening the members `open` names (recursively).
    pub fn parse(bytes: &'a [u8], open: &OpenTree) -> Result<Self, LazyParseError> {
        // UTF-8 is checked once for the whole input (vectorised), so the parser reads it as
        // text and checks no string or raw member again; invalid UTF-8 gets the parser's own
        // error from the byte path.
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str::<RawMembers<'a>>(text),
            Err(_) => serde_json::from_slice::<RawMembers<'a>>(bytes),
        };
        let mut root = match parsed {
            Ok(m) => m.0,
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(LazyParseError::NotAnObject);
            }
            Err(e) => return Err(LazyParseError::Invalid(e)),
        };
        root.open(open);
        Ok(root)
    }

    fn open(&mut self, open: &OpenTree) {
        for (key, sub) in &open.0 {
            if let Some(node) = self.find_mut(key) {
                if let LazyNode::Raw(r) = node
                    && let Some(o) = open_raw(r)
                {
                    *node = LazyNode::Object(o);
                }
                if let LazyNode::Object(o) = node {
                    o.open(sub);
                }
            }
        }
    }

    /// An object of computed values.
    pub fn from_map(map: Map<String, Value>) -> Self {
        // serde_json's map is sorted and unique already.
        Self(
            map.into_iter()
                .map(|(k, v)| (Cow::Owned(k), LazyNode::Owned(v)))
                .collect(),
        )
    }

    /// The member keys, in the order they came (a duplicate key more than once).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// Whether `key` is a member.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// The member `key`.
    pub fn member(&self, key: &str) -> Option<Found<'_, 'a>> {
        self.find(key).map(Found::Node)
    }

    /// The value at `path` (object keys from here).
    pub fn get(&self, path: &[String]) -> Option<Found<'_, 'a>> {
        let (first, rest) = path.split_first()?;
        let mut found = self.member(first)?;
        for key in rest {
            found = found.child(key)?;
        }
        Some(found)
    }

    /// Sets a member.
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: LazyNode<'a>) {
        let key = key.into();
        match self.position(&key) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Sets a member if it is absent.
    pub fn insert_if_absent(&mut self, key: Cow<'a, str>, value: LazyNode<'a>) {
        if self.position(&key).is_none() {
            self.0.push((key, value));
        }
    }

    /// Keeps the members for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(k, _)| keep(k));
    }

    /// Takes out the members that count (one per key), in their order.
    pub fn into_members(self) -> impl Iterator<Item = (Cow<'a, str>, LazyNode<'a>)> {
        let members = self.0;
        // Small objects: a scan. Large ones (an event may hold an object of thousands of
        // members): a set, so the work stays linear.
        let last_of_each = if members.len() <= SMALL {
            let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
            (0..members.len())
                .map(|i| !keys[i + 1..].contains(&keys[i]))
                .collect::<Vec<bool>>()
        } else {
            let mut seen = HashSet::with_capacity(members.len());
            let mut keep: Vec<bool> = members
                .iter()
                .rev()
                .map(|(k, _)| seen.insert(k.as_ref()))
                .collect();
            keep.reverse();
            keep
        };
        members
            .into_iter()
            .zip(last_of_each)
            .filter_map(|(m, keep)| keep.then_some(m))
    }

    /// Adds the members of `other` whose keys are absent here (flattening).
    pub fn merge_absent(&mut self, other: LazyObject<'a>) {
        if self.0.len() + other.0.len() <= SMALL {
            for (k, v) in other.into_members() {
                self.insert_if_absent(k, v);
            }
            return;
        }
        let mut present: HashSet<Cow<'a, str>> = self.0.iter().map(|(k, _)| k.clone()).collect();
        for (k, v) in other.into_members() {
            if present.insert(k.clone()) {
                self.0.push((k, v));
            }
        }
    }

    /// Removes and returns the value at `path`, opening objects on the way as needed.
    pub fn remove(&mut self, path: &[String]) -> Option<LazyNode<'a>> {
        let (last, parents) = path.split_last()?;
        let mut here = self;
        for (i, key) in parents.iter().enumerate() {
            let node = here.find_mut(key)?;
            if let LazyNode::Raw(r) = node {
                *node = LazyNode::Object(open_raw(r)?);
            }
            match node {
                LazyNode::Object(o) => here = o,
                LazyNode::Owned(v) => {
                    let mut m = v.as_object_mut()?;
                    for key in &parents[i + 1..] {
                        m = m.get_mut(key)?.as_object_mut()?;
                    }
                    return m.remove(last).map(LazyNode::Owned);
                }
                LazyNode::Raw(_) => unreachable!("opened above"),
            }
        }
        here.take(last)
    }

    /// The whole object as a `serde_json` map (`None` if some number is beyond `f64`).
    pub fn to_value(&self) -> Option<Map<String, Value>> {
        self.0
            .iter()
            .map(|(k, v)| Some((k.to_string(), v.to_value()?)))
            .collect()
    }

    /// Appends the object as compact JSON, members sorted by key.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.sorted().into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(k, out);
            out.push(b':');
            v.write_json(out);
        }
        out.push(b'}');
    }

    /// The object as compact JSON text.
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        // Keys are escaped by serde_json, values are validated JSON or serde_json output.
        String::from_utf8(out).expect("JSON text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    fn open(paths: &[&str]) -> OpenTree {
        let mut t = OpenTree::default();
        for p in paths {
            t.add_object(&path(p));
        }
        t
    }

    const DOC: &str = r#"{ "event" : "x", "n": 1.50, "big": 123456789012345678901234567890,
        "properties": {"a": {"b": [1, {"c": "d e"}], "s": "q\"uo\\te \n"}, "k\u00e9y": true},
        "dup": 1, "dup": 2 }"#;

    #[test]
    fn written_json_equals_the_parsed_value_whatever_is_opened() {
        let expected: Value = serde_json::from_str(DOC).unwrap();
        for opened in [
            &[][..],
            &["properties"],
            &["properties.a", "n"],
            &["nope.x"],
        ] {
            let o = LazyObject::parse(DOC.as_bytes(), &open(opened)).unwrap();
            let text = o.to_json_string();
            assert!(!text.contains(": ") && !text.contains('\n'), "{text}");
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, expected, "opened {opened:?}: {text}");
        }
        // Copied-through numbers keep their digits.
        let o = LazyObject::parse(DOC.as_bytes(), &OpenTree::default()).unwrap();
        let text = o.to_json_string();
        assert!(text.contains("\"n\":1.50"), "{text}");
        assert!(text.contains("123456789012345678901234567890"), "{text}");
    }

    #[test]
    fn reads_through_opened_and_unopened_objects_alike() {
        for opened in [&[][..], &["properties.a"]] {
            let o = LazyObject::parse(DOC.as_bytes(), &open(opened)).unwrap();
            let get = |p: &str| o.get(&path(p)).and_then(Found::to_value);
            assert_eq!(get("properties.a.s"), Some(json!("q\"uo\\te \n")));
            assert_eq!(get("properties.kéy"), Some(json!(true)));
            assert_eq!(get("properties.a.b"), Some(json!([1, {"c": "d e"}])));
            assert_eq!(get("dup"), Some(json!(2)));
            assert_eq!(get("event.x"), None);
            assert_eq!(get("properties.a.nope"), None);
            assert_eq!(get("big"), Some(json!(1.2345678901234568e29)));
        }
    }

    #[test]
    fn remove_opens_what_it_goes_through() {
        let mut o = LazyObject::parse(DOC.as_bytes(), &OpenTree::default()).unwrap();
        assert_eq!(
            o.remove(&path("properties.a.s")).and_then(|n| n.to_value()),
            Some(json!("q\"uo\\te \n"))
        );
        assert!(o.remove(&path("properties.a.s")).is_none());
        assert!(o.remove(&path("event.x")).is_none(), "not an object");
        o.insert(
            "set",
            LazyNode::Owned(json!({"in": {"deep": 1, "keep": 2}})),
        );
        assert_eq!(
            o.remove(&path("set.in.deep")).and_then(|n| n.to_value()),
            Some(json!(1))
        );
        let back: Value = serde_json::from_str(&o.to_json_string()).unwrap();
        assert_eq!(back["properties"]["a"], json!({"b": [1, {"c": "d e"}]}));
        assert_eq!(back["set"], json!({"in": {"keep": 2}}));
    }

    #[test]
    fn large_objects_merge_in_linear_time() {
        // 20,000 members with duplicates: flattening must neither take quadratic time nor lose
        // the last-wins rule.
        let n = 20_000;
        let mut text = String::from("{\"inner\":{");
        for i in 0..n {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k0\":\"last\"}}");
        for outer in [&[][..], &[("k1", "outer")]] {
            let started = std::time::Instant::now();
            let mut o = LazyObject::parse(text.as_bytes(), &OpenTree::default()).unwrap();
            let inner = o.remove(&path("inner")).unwrap().into_object().unwrap();
            for (k, v) in outer {
                o.insert(*k, LazyNode::Owned(json!(v)));
            }
            o.merge_absent(inner);
            let v: Value = serde_json::from_str(&o.to_json_string()).unwrap();
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            let m = v.as_object().unwrap();
            assert_eq!(m.len(), n);
            assert_eq!(m["k0"], json!("last"), "the later duplicate counts");
            assert_eq!(m["k19999"], json!(19999));
            if !outer.is_empty() {
                assert_eq!(m["k1"], json!("outer"), "present keys are kept");
            }
        }
    }

    #[test]
    fn errors_tell_invalid_json_from_other_json() {
        let t = OpenTree::default();
        assert!(matches!(
            LazyObject::parse(b"[1,2]", &t),
            Err(LazyParseError::NotAnObject)
        ));
        assert!(matches!(
            LazyObject::parse(b"\"s\"", &t),
            Err(LazyParseError::NotAnObject)
        ));
        for bad in [
            &b"{\"a\":"[..],
            b"{\"a\":1} x",
            b"nope",
            b"",
            b"{\"a\":\xff}",
        ] {
            assert!(
                matches!(LazyObject::parse(bad, &t), Err(LazyParseError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn strings_read_as_text_equal_their_parsed_values() {
        let text = r#"{"plain": "abc", "escaped": "a\"b\u00e9\n", "empty": "", "n": 12,
            "o": {"inner": "x y"}, "utf8": "Grüße – ok"}"#;
        let obj = LazyObject::parse(text.as_bytes(), &OpenTree::default()).unwrap();
        for key in ["plain", "escaped", "empty", "utf8"] {
            let found = obj.member(key).unwrap();
            assert_eq!(
                found.as_str().map(|s| Value::String(s.into_owned())),
                found.to_value(),
                "{key}"
            );
        }
        assert!(matches!(
            obj.member("plain").unwrap().as_str(),
            Some(Cow::Borrowed("abc"))
        ));
        assert_eq!(obj.member("n").unwrap().as_str(), None);
        assert_eq!(obj.member("o").unwrap().as_str(), None);
        assert_eq!(
            obj.get(&path("o.inner")).unwrap().as_str().as_deref(),
            Some("x y")
        );
        let computed = Value::String("v".into());
        assert_eq!(Found::Value(&computed).as_str().as_deref(), Some("v"));
        // Invalid UTF-8 is still refused as invalid JSON.
        let bad = b"{\"a\": \"\xff\"}";
        assert!(matches!(
            LazyObject::parse(bad, &OpenTree::default()),
            Err(LazyParseError::Invalid(_))
        ));
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for text in [
            "",
            "plain key",
            "quote \" here",
            "back\\slash",
            "tab\t",
            "\u{1}",
            "Grüße – ✓",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            write_json_str(text, &mut out);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn compact_writing_keeps_string_contents() {
        let mut out = Vec::new();
        write_compact("[ \"a \\\" b\" ,\n\t{ \"k\" : \" \\\\\" } ]", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[\"a \\\" b\",{\"k\":\" \\\\\"}]"
        );
    }

    #[test]
    fn removing_a_key_with_many_duplicates_is_linear() {
        // 50,000 duplicates of "a", then 50,000 of "b": removing "a" used to rescan and shift the
        // "b"s once per duplicate (quadratic).
        let n = 50_000;
        let mut text = String::from("{");
        for _ in 0..n {
            text.push_str("\"a\":1,");
        }
        for _ in 0..n {
            text.push_str("\"b\":2,");
        }
        text.push_str("\"c\":3}");
        let mut obj = LazyObject::parse(text.as_bytes(), &OpenTree::default()).unwrap();
        let start = std::time::Instant::now();
        let taken = obj.remove(&path("a")).expect("a is there");
        assert_eq!(taken.to_value(), Some(Value::from(1)));
        assert!(!obj.contains_key("a"));
        assert_eq!(obj.keys().count(), n + 1);
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
        assert_eq!(obj.to_json_string(), r#"{"b":2,"c":3}"#);
    }
}
