//! Fuzzes decoding a consensus message from a peer's untrusted bytes.
#![no_main]

use bitorch_consensus::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Message::from_bytes(data);
});
