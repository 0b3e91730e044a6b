//! Fuzzes reading a safetensors bundle's prefix (the start of a stored model's shared chunk,
//! which a peer sent and anyone could have registered): no panic and no allocation beyond the
//! format's bounds; whatever is accepted has every tensor inside its shard's data.
#![no_main]

use bitorch_inference::checkpoint::read_bundle_index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = read_bundle_index(&mut &data[..], std::path::Path::new("fuzz")) else {
        return;
    };
    let end = index.prefix_len.saturating_add(index.data_len);
    for (_, start, len) in index.tensor_ranges() {
        assert!(start >= index.prefix_len && start.saturating_add(len) <= end);
    }
});
