//! Fuzzes decoding the piece protocol's messages (`/bitorch/pieces/1`) from a peer's
//! untrusted bytes: no panic, bounds held, and what decodes encodes back to the same bytes.
#![no_main]

use bitorch_network::pieces::{Request, Response, MAX_HASHES, MAX_PIECE_BYTES};
use libfuzzer_sys::fuzz_target;
use parity_scale_codec::Encode;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode_bounded(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = Response::decode_bounded(data) {
        assert_eq!(r.encode(), data);
        match r {
            Response::Hashes(h) => assert!(h.len() <= MAX_HASHES),
            Response::Piece(p) => assert!(p.len() <= MAX_PIECE_BYTES),
            _ => {}
        }
    }
});
