//! Property-based hostile input (proptest): what an attacker controls — webhook bodies and
//! signatures, every field of a Pendo or Segment event, the bytes of a record — is generated at
//! random, and every stage it reaches must neither panic nor produce anything outside its
//! limits:
//!
//! - the body splitter: events within `max_event_bytes`, each a slice of the body, the count
//!   within `max_events_per_request`;
//! - the signature check: never panics, accepts exactly what was signed with a configured secret;
//! - the connectors' identity reading and admission: any key or kind they let through fits its
//!   bound;
//! - both transformers, on fixtures mutated at random (values replaced by arbitrary JSON, fields
//!   added, numbers Rust cannot hold such as `1e400`, long and multi-byte strings): no panic;
//!   every Segment call within `max_call_bytes`, encodable, decodable back to itself and
//!   renderable as Segment JSON; every Pendo update encodable and decodable;
//! - Avro decoding of arbitrary bytes, and dead letters of arbitrary records, which always fit.
//!
//! Each property runs `PROPTEST_CASES` cases (default below); the README reports the total.

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use pendo_segment::connectors::webhook::body::split_events;
use pendo_segment::connectors::webhook::signature::{SignatureSecrets, sign_hex, signed_part};
use pendo_segment::idmap::BiIdMap;
use pendo_segment::kafka::dead_letter::DeadLetter;
use pendo_segment::kafka::record_size::{fits, record_bytes};
use pendo_segment::schema::{
    IdMappingCodec, PendoMetadataUpdateCodec, PendoSegmentChangeCodec, SegmentCallCodec, WireFormat,
};
use pendo_segment::secret::Secret;
use pendo_segment::transform::mapping::PendoMapping;
use pendo_segment::transform::pendo_to_segment::{MapOutcome, MapperSettings, PendoToSegment};
use pendo_segment::transform::segment_to_pendo::{
    SegmentMapperSettings, SegmentOutcome, SegmentToPendo,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Cases per property unless `PROPTEST_CASES` says otherwise: enough to find the defects this
/// suite was written against in seconds, small enough for CI.
const CASES: u32 = 2_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        // Failures are reported with their minimal input; no files written into the repository.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn fixtures(dir: &str) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.ends_with("index.json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        match serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap() {
            Value::Array(items) => out.extend(items),
            v => out.push(v),
        }
    }
    out
}

/// Strings an attacker would try: empty, long, multi-byte at awkward offsets, escapes, controls.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_]{0,12}".prop_map(|s| s),
        any::<String>(),
        (
            0usize..200,
            prop::sample::select(vec!["é", "😀", "\u{0}", "\\", "\"", "€"])
        )
            .prop_map(|(n, c)| format!("{}{c}", "x".repeat(n))),
        (1usize..40_000).prop_map(|n| "z".repeat(n)),
        Just("_PENDO_T_".to_string()),
    ]
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer of `v` (objects and arrays included).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A fixture with some of its values replaced and some fields added, as JSON text, sometimes
/// with numbers no f64 holds spliced into its first object (valid JSON that serde_json's `Value`
/// refuses, but the lazy reader passes through).
fn mutated_event(events: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(events),
        prop::collection::vec((any::<prop::sample::Index>(), json_value()), 0..4),
        prop::collection::vec((hostile_string(), json_value()), 0..3),
        prop::option::of(prop::sample::select(vec![
            "1e400",
            "-1e400",
            "1e-400",
            "123456789012345678901234567890",
            "-0",
            "1.50",
        ])),
    )
        .prop_map(|(mut event, replace, add, raw_number)| {
            let mut paths = Vec::new();
            pointers(&event, String::new(), &mut paths);
            for (i, v) in replace {
                let p = &paths[i.index(paths.len())];
                if p.is_empty() {
                    continue; // keep an object at the top, most of the time
                }
                if let Some(slot) = event.pointer_mut(p) {
                    *slot = v;
                }
            }
            if let Value::Object(m) = &mut event {
                for (k, v) in add {
                    m.insert(k, v);
                }
                if let Some(props) = m.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert("hostile".into(), json!("x"));
                }
            }
            let mut text = serde_json::to_string(&event).unwrap();
            if let Some(n) = raw_number {
                // Into `properties` when it is an object, else the top level.
                let at = text
                    .find("\"properties\":{")
                    .map(|i| i + "\"properties\":{".len())
                    .or_else(|| text.starts_with('{').then_some(1));
                if let Some(at) = at {
                    let tail = &text[at..];
                    let sep = if tail.starts_with('}') { "" } else { "," };
                    text = format!("{}\"big\":{n}{sep}{tail}", &text[..at]);
                }
            }
            text.into_bytes()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_body_splitter_keeps_its_limits(
        elements in prop::collection::vec(json_value(), 0..20),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        as_array in any::<bool>(),
        max_events in 1usize..10,
        max_event_bytes in 1usize..4_000,
    ) {
        let mut body = if as_array {
            serde_json::to_vec(&elements).unwrap()
        } else {
            serde_json::to_vec(elements.first().unwrap_or(&json!({}))).unwrap()
        };
        if garbage.len() % 3 == 0 {
            body.extend_from_slice(&garbage);
        }
        let body = Bytes::from(body);
        if let Ok(events) = split_events(&body, max_events, max_event_bytes) {
            prop_assert!(events.len() <= max_events);
            for e in &events {
                prop_assert!(e.len() <= max_event_bytes);
                // A slice of the body, byte for byte.
                prop_assert!(body.windows(e.len().max(1)).any(|w| w == &e[..]) || e.is_empty());
                prop_assert!(serde_json::from_slice::<serde_json::Map<String, Value>>(e).is_ok());
            }
        }
        // Raw garbage is judged too, never a panic.
        let _ = split_events(&Bytes::from(garbage), max_events, max_event_bytes);
    }

    #[test]
    fn signatures_accept_exactly_what_was_signed(
        secret in "[ -~]{16,64}",
        other in "[ -~]{16,64}",
        body in prop::collection::vec(any::<u8>(), 0..512),
        header in prop::collection::vec(any::<u8>(), 0..80),
        flip in any::<prop::sample::Index>(),
    ) {
        let secrets = SignatureSecrets::new(&[Secret::inline(secret.clone())]);
        // Arbitrary header bytes: never a panic, and a random header almost never verifies.
        let _ = secrets.verify(&header, &body);
        let good = sign_hex(secret.as_bytes(), signed_part(&body));
        prop_assert!(secrets.verify(good.as_bytes(), &body));
        if other != secret {
            let forged = sign_hex(other.as_bytes(), signed_part(&body));
            prop_assert!(!secrets.verify(forged.as_bytes(), &body));
        }
        let signed = signed_part(&body).to_vec();
        if !signed.is_empty() {
            let mut tampered = body.clone();
            let start = signed.as_ptr() as usize; // recompute on the copy below
            let _ = start;
            let offset = signed_part(&body).as_ptr() as usize - body.as_ptr() as usize;
            let i = offset + flip.index(signed.len());
            tampered[i] ^= 0x01;
            // Flipping a byte of the signed part changes what is signed (or what is read as
            // signed): the old signature must not verify the new body unless the signed bytes
            // happen to be identical.
            if signed_part(&tampered) != signed.as_slice() {
                prop_assert!(!secrets.verify(good.as_bytes(), &tampered));
            }
        }
    }

    #[test]
    fn identity_reading_never_panics_and_admission_bounds_what_it_keeps(
        event in json_value(),
        raw in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        use pendo_segment::connectors::webhook::server::{MAX_EVENT_KEY_BYTES, MAX_EVENT_KIND_BYTES};
        let text = serde_json::to_vec(&event).unwrap();
        for identify in [
            pendo_segment::connectors::pendo_webhook::envelope::identify,
            pendo_segment::connectors::segment_webhook::envelope::identify,
        ] {
            for input in [&text[..], &raw[..]] {
                let id = identify(input);
                if id.check(None).is_ok() {
                    prop_assert!(id.key.as_ref().is_none_or(|k| k.len() <= MAX_EVENT_KEY_BYTES));
                    prop_assert!(id.kind.as_ref().is_none_or(|k| k.len() <= MAX_EVENT_KIND_BYTES));
                } else {
                    prop_assert!(!id.key_field.is_empty() || !id.kind_field.is_empty());
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for format in [WireFormat::SingleObject, WireFormat::Confluent { schema_id: 7 }] {
            let _ = SegmentCallCodec::new(format).decode(&bytes);
            let _ = PendoMetadataUpdateCodec::new(format).decode(&bytes);
            let _ = PendoSegmentChangeCodec::new(format).decode(&bytes);
            let _ = IdMappingCodec::new(format).decode(&bytes);
        }
    }

    #[test]
    fn dead_letters_of_any_record_fit_their_topic(
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..3_000)),
        payload_len in 0usize..1_200_000,
        detail in hostile_string(),
        headers in prop::collection::vec(("[a-z-]{1,20}", 0usize..5_000), 0..60),
        limit in prop::sample::select(vec![1_048_588usize, 3 * 1024 * 1024, 64 * 1024, 2_048]),
    ) {
        let payload = vec![b'p'; payload_len];
        let values: Vec<(String, Vec<u8>)> =
            headers.into_iter().map(|(k, n)| (k, vec![b'v'; n])).collect();
        let letter = DeadLetter::new("stage", "reason", &detail, key.as_deref(), &payload)
            .from_source("topic", 1, 2)
            .carrying(values.iter().map(|(k, v)| (k.as_str(), &v[..])))
            .fit(limit);
        let size = record_bytes(letter.key(), letter.payload(), letter.headers());
        prop_assert!(fits(size, limit), "{size} > {limit}");
        let detail_len = letter
            .headers()
            .iter()
            .find(|(k, _)| *k == "dlq-detail")
            .map_or(0, |(_, v)| v.len());
        prop_assert!(detail_len <= 1024);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn transform_pendo_maps_any_event_within_its_limits(event in mutated_event(fixtures("pendo"))) {
        thread_local! {
            static MAPPER: PendoToSegment =
                PendoToSegment::new(PendoMapping::default_mapping(), MapperSettings::default());
        }
        let codec = SegmentCallCodec::new(WireFormat::SingleObject);
        let ids: HashMap<String, String> = HashMap::new();
        let max_call_bytes = MapperSettings::default().max_call_bytes;
        MAPPER.with(|mapper| -> Result<(), TestCaseError> {
            let (outcome, _obs) = mapper.map(&event, Some(1_764_330_000_000), &ids);
            match outcome {
                MapOutcome::Calls(calls) => {
                    for call in calls {
                        let segment = call.to_segment_json();
                        let text = serde_json::to_vec(&segment).unwrap();
                        prop_assert!(text.len() <= max_call_bytes, "{} bytes", text.len());
                        let bytes = codec.encode_to_vec(&call).unwrap();
                        let back = codec.decode(&bytes).unwrap();
                        prop_assert_eq!(back, call);
                    }
                }
                MapOutcome::DeadLetter { detail, .. } => prop_assert!(!detail.is_empty()),
                MapOutcome::Filtered(_) | MapOutcome::Dropped => {}
            }
            Ok(())
        })?;
    }

    #[test]
    fn transform_segment_maps_any_event_within_its_limits(
        event in mutated_event(fixtures("segment")),
        received_at in prop::option::of(any::<i64>()),
    ) {
        let mapper = SegmentToPendo::new(SegmentMapperSettings::default());
        let ids = BiIdMap::default();
        let codec = PendoMetadataUpdateCodec::new(WireFormat::SingleObject);
        let changes = PendoSegmentChangeCodec::new(WireFormat::SingleObject);
        let mappings = IdMappingCodec::new(WireFormat::SingleObject);
        let (outcome, _kind) = mapper.map(&event, received_at, &ids);
        match outcome {
            SegmentOutcome::Updates { updates, segment_changes, mappings: learned } => {
                for u in updates {
                    let bytes = codec.encode_to_vec(&u).unwrap();
                    prop_assert_eq!(codec.decode(&bytes).unwrap(), u);
                }
                for c in segment_changes {
                    let bytes = changes.encode_to_vec(&c).unwrap();
                    prop_assert_eq!(changes.decode(&bytes).unwrap(), c);
                }
                for m in learned {
                    let bytes = mappings.encode_to_vec(&m).unwrap();
                    prop_assert_eq!(mappings.decode(&bytes).unwrap(), m);
                }
            }
            SegmentOutcome::Ignored { mappings: learned } => {
                for m in learned {
                    mappings.encode_to_vec(&m).unwrap();
                }
            }
            SegmentOutcome::DeadLetter { detail, .. } => prop_assert!(!detail.is_empty()),
            SegmentOutcome::Dropped => {}
        }
    }
}
