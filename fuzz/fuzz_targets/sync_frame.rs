//! Fuzzes decoding a block sync request and answer (`/bitorch/sync/1`), as a node does with
//! the bytes a peer sends: never a panic, and whatever decodes as a whole frame encodes back
//! to the same bytes; a cut frame is an I/O error, never a value.
#![no_main]

use bitorch_network::sync::{decode_frame, Request, Response};
use libfuzzer_sys::fuzz_target;
use parity_scale_codec::Encode;

fuzz_target!(|data: &[u8]| {
    if let Ok(Ok(request)) = decode_frame::<Request>(data) {
        assert_eq!(request.encode(), data);
    }
    if let Ok(Ok(response)) = decode_frame::<Response>(data) {
        assert_eq!(response.encode(), data);
    }
});
