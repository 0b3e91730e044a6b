//! Fuzzes reading a keystore file (polkadot.js JSON) from untrusted bytes: parsing never panics,
//! and decryption of whatever parses ends in a key or a typed error, never a panic (scrypt's
//! cost is bounded by the parser, so a file cannot ask for gigabytes).
#![no_main]

use bitorch_primitives::keystore::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = KeyFile::parse(data) else { return };
    assert!(!file.encoding.content.is_empty());
    let _ = file.decrypt(b"password");
});
