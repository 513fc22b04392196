//! `split_events` judges the number of events before it holds them: a body of a million tiny
//! elements is refused without ever allocating a million-entry vector. Its own test binary,
//! because it measures allocations with a global allocator (no broker needed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use pendo_segment::connectors::webhook::body::{BodyError, split_events};
use pendo_segment::connectors::webhook::server::dead_letter_parts;

/// The system allocator, remembering the largest single allocation of each thread.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations while the thread is torn down are not measured.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded to `System` unchanged; only sizes are noted.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn a_million_tiny_elements_are_refused_without_a_million_entry_vector() {
    let n = 1_000_000;
    let mut text = String::with_capacity(3 * n + 2);
    text.push('[');
    for i in 0..n {
        if i > 0 {
            text.push(',');
        }
        text.push_str("{}");
    }
    text.push(']');
    let body = Bytes::from(text);
    LARGEST.with(|l| l.set(0));
    let result = split_events(&body, 4_000, 1024);
    let largest = LARGEST.with(Cell::get);
    assert_eq!(
        result.unwrap_err(),
        BodyError::TooManyEvents {
            count: n,
            max: 4_000
        },
        "the error still names the full count"
    );
    // 4,000 slices of the body at most (a few hundred KB), never 1,000,000 (16 MB).
    assert!(
        largest < 1024 * 1024,
        "largest allocation while splitting: {largest} bytes"
    );
    // The same array followed by garbage is malformed: judged, and kept in the dead-letter topic
    // (cut to a record), without a vector of its elements either.
    let mut garbage = body.to_vec();
    garbage.extend_from_slice(b" trailing");
    let garbage = Bytes::from(garbage);
    LARGEST.with(|l| l.set(0));
    let result = split_events(&garbage, 4_000, 1024);
    assert!(matches!(result, Err(BodyError::Malformed(_))), "{result:?}");
    let parts = dead_letter_parts(&garbage, 2 * 1024 * 1024);
    let largest = LARGEST.with(Cell::get);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].0.len(), 2 * 1024 * 1024);
    assert!(
        largest < 1024 * 1024,
        "largest allocation while judging and dead-lettering: {largest} bytes"
    );
    // Within the limit, every element is still returned.
    let small = Bytes::from_static(b"[{},{\"a\":1},{}]");
    assert_eq!(split_events(&small, 3, 1024).unwrap().len(), 3);
}
