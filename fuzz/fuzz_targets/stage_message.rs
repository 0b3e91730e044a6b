//! Fuzzes decoding `/bitorch/stage/1` requests and responses from a peer's untrusted bytes:
//! never a panic, never an allocation beyond the message's own size limit, and whatever decodes
//! encodes back to the same bytes.
#![no_main]

use bitorch_compute::protocol::{decode_request, decode_response, encode, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message_bytes: 1 << 20, max_positions: 64 };
    if let Ok(req) = decode_request(data, &limits) {
        assert_eq!(encode(&req), data);
    }
    if let Ok(resp) = decode_response(data, &limits) {
        assert_eq!(encode(&resp), data);
    }
});
