//! Fuzzes decoding and validating a model manifest from untrusted bytes (a registration
//! transaction's, or a manifest file in the store): no panic, and a manifest that decodes and
//! validates encodes back to the same bytes and keeps its id.
#![no_main]

use bitorch_runtime::models::Manifest;
use libfuzzer_sys::fuzz_target;
use parity_scale_codec::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let Ok(m) = Manifest::decode(&mut input) else { return };
    if m.validate().is_ok() {
        let consumed = &data[..data.len() - input.len()];
        assert_eq!(m.encode(), consumed);
        let again = Manifest::decode(&mut &consumed[..]).unwrap();
        assert_eq!(again.id(), m.id());
    }
});
