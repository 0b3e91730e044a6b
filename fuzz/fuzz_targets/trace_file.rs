//! Fuzzes decoding a worker's trace file (the leaves of a claimed session, read back from disk
//! when an auditor asks for an opening): never a panic, no allocation beyond the input's size,
//! and whatever decodes encodes back to the same bytes.
#![no_main]

use bitorch_commitment::file::{decode_leaves, encode_leaves};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(leaves) = decode_leaves(data) {
        // No leaves: the header's width is not kept.
        if !leaves.is_empty() {
            assert_eq!(encode_leaves(&leaves).ok().as_deref(), Some(data));
        }
    }
});
