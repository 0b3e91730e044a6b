//! Fuzzes decoding and verifying a worker announcement record, as a node does with the bytes a
//! peer stores in or returns from the DHT: never a panic, bounded allocations, and whatever
//! decodes encodes back to the same bytes. Also fuzzes the `/bitorch/stage/1` answer frame.
#![no_main]

use bitorch_network::stage;
use bitorch_network::workers::{decode_record, record_key, verify, WorkerRecord};
use bitorch_network::{Keypair, PeerId};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn some_peer() -> PeerId {
    static PEER: OnceLock<PeerId> = OnceLock::new();
    *PEER.get_or_init(|| match Keypair::ed25519_from_bytes([1; 32]) {
        Ok(key) => key.public().to_peer_id(),
        Err(_) => PeerId::random(),
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_record(data) {
        assert_eq!(WorkerRecord::to_bytes(&record), data);
    }
    // Verification of arbitrary bytes under an arbitrary key fails cleanly.
    let key = record_key(&bitorch_network::ModelId::zero(), &some_peer());
    if let Ok(verified) = verify(data, &key, None, 0) {
        assert_eq!(record_key(&verified.record.announcement.model, &verified.peer), key);
    }
    if let Ok(answer) = stage::decode_response(data.to_vec(), 1 << 20) {
        assert_eq!(parity_scale_codec::Encode::encode(&answer), data);
    }
});
