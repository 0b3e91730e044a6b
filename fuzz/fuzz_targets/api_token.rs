//! Fuzzes parsing an API token (`Authorization: Bearer btr_…`, or JSON-RPC's `api_key`) from
//! untrusted text: no panic, and a token that parses prints back to the same text and parses
//! to itself; verifying it never panics.
#![no_main]

use bitorch_primitives::api_token::ApiToken;
use bitorch_primitives::{AccountId, H256};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(token) = ApiToken::parse(text) else { return };
    assert_eq!(ApiToken::parse(&token.to_text()).as_ref(), Ok(&token));
    let _ = token.verify(&AccountId::new([1; 32]), &H256::zero(), 0);
});
