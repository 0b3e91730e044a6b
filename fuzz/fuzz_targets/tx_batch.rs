//! Fuzzes decoding a transactions gossip message (`bitorch_network::tx_batch`), as a node does
//! with what a peer publishes: never a panic, at most `MAX_TXS` transactions, and whatever
//! decodes encodes back to the same bytes.
#![no_main]

use bitorch_network::tx_batch::{decode, encode, MAX_TXS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(txs) = decode(data) {
        assert!(txs.len() <= MAX_TXS);
        assert_eq!(encode(&txs), data);
    }
});
