//! Worker announcements: which peers serve which layers of which model, published in the DHT.
//!
//! A worker announces a [`WorkerAnnouncement`] with
//! [`Handle::announce_worker`](crate::Handle::announce_worker). The network wraps it in a
//! [`WorkerRecord`]: the announcement, when it was published, whether it withdraws an earlier
//! one, and the addresses where the worker can be dialed, signed by the node's libp2p identity
//! key (the public key travels with it as protobuf bytes). Two things go into Kademlia:
//!
//! - a provider record under [`model_key`]`(model)`: "this peer serves some layers of `model`";
//! - the signed record under [`record_key`]`(model, peer)`.
//!
//! A node looking for workers asks for the providers of the model key, fetches each
//! provider's record and keeps those that verify ([`verify`]): the signer is the provider, the
//! record sits under the key derived from its own model and signer, it has not expired and does
//! not claim to live longer than [`MAX_RECORD_LIFETIME`]. Of several copies of one worker's
//! record the one published last wins, so that a withdrawal (a signed record with `withdrawn`
//! set) or an update (new `free` count) replaces what other nodes stored. Nodes also verify
//! records before they store them for others, so that a forger is caught where it writes.
//!
//! Records come from untrusted peers: [`decode_record`] enforces a size limit
//! ([`MAX_RECORD_BYTES`]), a nesting depth limit and bounds on every field, with typed errors.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId};
use parity_scale_codec::{Decode, DecodeLimit, Encode};
use std::time::Duration;

/// Largest encoded record accepted.
pub const MAX_RECORD_BYTES: usize = 4096;
/// Most addresses in one record.
pub const MAX_ADDRESSES: usize = 8;
/// Largest encoded address.
pub const MAX_ADDRESS_BYTES: usize = 128;
/// Largest public key (protobuf) accepted; ed25519 takes 36 bytes, ECDSA about 91.
pub const MAX_PUBLIC_KEY_BYTES: usize = 128;
/// Largest signature accepted; ed25519 takes 64 bytes, ECDSA about 72.
pub const MAX_SIGNATURE_BYTES: usize = 128;
/// A record that claims to stay valid longer than this from now is rejected: a worker that
/// went away must not stay announced for long.
pub const MAX_RECORD_LIFETIME: Duration = Duration::from_secs(3600);
/// Version byte in front of every encoded record.
pub const RECORD_VERSION: u8 = 2;
/// Nesting depth limit for decoding.
const DECODE_DEPTH_LIMIT: u32 = 8;
/// Domain separation of the signed bytes.
const SIGNING_CONTEXT: &[u8] = b"bitorch/worker-record/1";

pub use bitorch_primitives::ModelId;

/// What a worker tells the network about the stage it serves. SCALE-encoded in the DHT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct WorkerAnnouncement {
    /// The model served.
    pub model: ModelId,
    /// First layer served.
    pub layer_start: u32,
    /// One past the last layer served (`layer_start < layer_end`).
    pub layer_end: u32,
    /// Most concurrent sessions.
    pub capacity: u32,
    /// Sessions free now.
    pub free: u32,
    /// Measured throughput, in tokens per second.
    pub tokens_per_sec: u32,
    /// The worker's sr25519 chain account, that its receipts are signed with and paid to.
    pub account: [u8; 32],
    /// When the announcement lapses, in milliseconds since the Unix epoch. The network sets it
    /// at every publication to now plus [`Config::worker_record_ttl`](crate::Config); what the
    /// caller puts here is ignored.
    pub expires_at_ms: u64,
    /// The worker's price per layer per token, in base units: it takes sessions only for jobs
    /// that pay at least this.
    pub price: u128,
}

/// The signed form of an announcement, as stored in the DHT (behind [`RECORD_VERSION`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WorkerRecord {
    /// The announcement.
    pub announcement: WorkerAnnouncement,
    /// When it was published, in milliseconds since the Unix epoch: of two records of one
    /// worker, the later wins.
    pub published_at_ms: u64,
    /// This record withdraws the worker from the model (until it announces again).
    pub withdrawn: bool,
    /// Where the worker can be dialed: encoded multiaddrs, without `/p2p/`.
    pub addresses: Vec<Vec<u8>>,
    /// The signer's libp2p public key, protobuf-encoded; its peer id is the worker's.
    pub public_key: Vec<u8>,
    /// The signature of [`WorkerRecord::signed_bytes`] by that key.
    pub signature: Vec<u8>,
}

/// Why bytes from the DHT are not a valid worker record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// More than [`MAX_RECORD_BYTES`].
    #[error("record larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge,
    /// An unknown version byte.
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    /// Not a SCALE-encoded [`WorkerRecord`].
    #[error("undecodable record")]
    Undecodable,
    /// Too many addresses, or one that is too long or not a multiaddr.
    #[error("invalid address list")]
    BadAddress,
    /// The public key is too long or not a libp2p public key.
    #[error("invalid public key")]
    BadPublicKey,
    /// The signature is too long or does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// The record is signed by this peer, not by the one it is about.
    #[error("record signed by {0}, not by the worker it is about")]
    WrongSigner(PeerId),
    /// The record is stored under a key other than the one its model and signer give.
    #[error("record stored under the wrong key")]
    WrongKey,
    /// The layer range is empty.
    #[error("empty layer range")]
    EmptyLayers,
    /// The record has lapsed.
    #[error("record expired")]
    Expired,
    /// The record claims to stay valid for longer than [`MAX_RECORD_LIFETIME`].
    #[error("record expires too far in the future")]
    TooFarInFuture,
}

impl RecordError {
    /// Whether this error shows that the sender forged or corrupted the record (as opposed to
    /// it merely being old, which honest nodes also serve for a while, from a clock that is
    /// off, or from a newer version of the software).
    pub fn is_forgery(self) -> bool {
        !matches!(
            self,
            RecordError::Expired | RecordError::TooFarInFuture | RecordError::UnknownVersion(_)
        )
    }
}

/// A record that passed [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// The worker.
    pub peer: PeerId,
    /// The record.
    pub record: WorkerRecord,
    /// Its addresses, decoded.
    pub addresses: Vec<Multiaddr>,
}

/// The DHT key under which the providers of `model` are found:
/// blake2-256(`"bitorch/model/"` ++ model).
pub fn model_key(model: &ModelId) -> RecordKey {
    let mut preimage = b"bitorch/model/".to_vec();
    preimage.extend_from_slice(model.as_bytes());
    RecordKey::new(&sp_crypto_hashing::blake2_256(&preimage))
}

/// The DHT key of the record of `peer` for `model`:
/// blake2-256(`"bitorch/worker/"` ++ model ++ peer id bytes).
pub fn record_key(model: &ModelId, peer: &PeerId) -> RecordKey {
    let mut preimage = b"bitorch/worker/".to_vec();
    preimage.extend_from_slice(model.as_bytes());
    preimage.extend_from_slice(&peer.to_bytes());
    RecordKey::new(&sp_crypto_hashing::blake2_256(&preimage))
}

impl WorkerRecord {
    /// The bytes the signature covers: a context string, then everything but the key and the
    /// signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        (&self.announcement, self.published_at_ms, self.withdrawn, &self.addresses)
            .encode_to(&mut bytes);
        bytes
    }

    /// Builds and signs a record with `key`. At most [`MAX_ADDRESSES`] of `addresses` that fit
    /// [`MAX_ADDRESS_BYTES`] are kept.
    pub fn sign(
        key: &Keypair,
        announcement: WorkerAnnouncement,
        published_at_ms: u64,
        withdrawn: bool,
        addresses: &[Multiaddr],
    ) -> Result<Self, libp2p::identity::SigningError> {
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        for addr in addresses {
            let bytes = addr.to_vec();
            if bytes.len() <= MAX_ADDRESS_BYTES && !encoded.contains(&bytes) {
                encoded.push(bytes);
            }
            if encoded.len() == MAX_ADDRESSES {
                break;
            }
        }
        let mut record = WorkerRecord {
            announcement,
            published_at_ms,
            withdrawn,
            addresses: encoded,
            public_key: key.public().encode_protobuf(),
            signature: Vec::new(),
        };
        record.signature = key.sign(&record.signed_bytes())?;
        Ok(record)
    }

    /// The version byte followed by the SCALE encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![RECORD_VERSION];
        self.encode_to(&mut bytes);
        bytes
    }
}

/// Decodes a record from untrusted bytes, checking sizes but not the signature (see
/// [`verify`]).
pub fn decode_record(bytes: &[u8]) -> Result<WorkerRecord, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let (&version, mut rest) = bytes.split_first().ok_or(RecordError::Undecodable)?;
    if version != RECORD_VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    let record = WorkerRecord::decode_all_with_depth_limit(DECODE_DEPTH_LIMIT, &mut rest)
        .map_err(|_| RecordError::Undecodable)?;
    if record.addresses.len() > MAX_ADDRESSES
        || record.addresses.iter().any(|a| a.len() > MAX_ADDRESS_BYTES)
    {
        return Err(RecordError::BadAddress);
    }
    if record.public_key.len() > MAX_PUBLIC_KEY_BYTES {
        return Err(RecordError::BadPublicKey);
    }
    if record.signature.len() > MAX_SIGNATURE_BYTES {
        return Err(RecordError::BadSignature);
    }
    Ok(record)
}

/// Decodes and verifies a record found under `key` at wall-clock time `now_ms` (milliseconds
/// since the Unix epoch): the signature, that the key is the one the record's model and
/// signer give (and, when `expected` is given, that the signer is that peer), the addresses,
/// the layer range and the expiry.
pub fn verify(
    bytes: &[u8],
    key: &RecordKey,
    expected: Option<&PeerId>,
    now_ms: u64,
) -> Result<VerifiedRecord, RecordError> {
    let record = decode_record(bytes)?;
    let public = PublicKey::try_decode_protobuf(&record.public_key)
        .map_err(|_| RecordError::BadPublicKey)?;
    let signer = public.to_peer_id();
    if expected.is_some_and(|p| *p != signer) {
        return Err(RecordError::WrongSigner(signer));
    }
    if record_key(&record.announcement.model, &signer) != *key {
        return Err(RecordError::WrongKey);
    }
    if !public.verify(&record.signed_bytes(), &record.signature) {
        return Err(RecordError::BadSignature);
    }
    let addresses = record
        .addresses
        .iter()
        .map(|a| Multiaddr::try_from(a.clone()).map_err(|_| RecordError::BadAddress))
        .collect::<Result<Vec<_>, _>>()?;
    let a = &record.announcement;
    if a.layer_start >= a.layer_end {
        return Err(RecordError::EmptyLayers);
    }
    if a.expires_at_ms <= now_ms {
        return Err(RecordError::Expired);
    }
    let horizon = now_ms.saturating_add(MAX_RECORD_LIFETIME.as_millis() as u64);
    if a.expires_at_ms > horizon {
        return Err(RecordError::TooFarInFuture);
    }
    Ok(VerifiedRecord { peer: signer, record, addresses })
}

/// Milliseconds since the Unix epoch, by the wall clock (0 before 1970): the clock of
/// `expires_at_ms` and `published_at_ms`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn announcement() -> WorkerAnnouncement {
        WorkerAnnouncement {
            model: ModelId::repeat_byte(7),
            layer_start: 0,
            layer_end: 10,
            capacity: 8,
            free: 8,
            tokens_per_sec: 40,
            account: [1; 32],
            expires_at_ms: NOW + 90_000,
            price: 100_000_000,
        }
    }

    fn addr() -> Multiaddr {
        "/ip4/127.0.0.1/tcp/4001".parse().expect("address")
    }

    fn signed(key: &Keypair) -> WorkerRecord {
        WorkerRecord::sign(key, announcement(), NOW, false, &[addr()]).expect("sign")
    }

    #[test]
    fn signed_record_round_trips_and_verifies() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let record = signed(&key);
        let bytes = record.to_bytes();
        assert!(bytes.len() < 400, "a record is small: {} bytes", bytes.len());
        assert_eq!(decode_record(&bytes), Ok(record.clone()));
        let k = record_key(&ModelId::repeat_byte(7), &peer);
        let verified = verify(&bytes, &k, Some(&peer), NOW).expect("verifies");
        assert_eq!(verified.peer, peer);
        assert_eq!(verified.addresses, vec![addr()]);
        assert_eq!(verified.record, record);
        assert_eq!(verify(&bytes, &k, None, NOW).map(|v| v.peer), Ok(peer));
    }

    #[test]
    fn keys_are_distinct_per_model_and_peer() {
        let (p, q) = (PeerId::random(), PeerId::random());
        assert_ne!(
            record_key(&ModelId::repeat_byte(1), &p),
            record_key(&ModelId::repeat_byte(1), &q)
        );
        assert_ne!(
            record_key(&ModelId::repeat_byte(1), &p),
            record_key(&ModelId::repeat_byte(2), &p)
        );
        assert_ne!(model_key(&ModelId::repeat_byte(1)), model_key(&ModelId::repeat_byte(2)));
        assert_eq!(model_key(&ModelId::repeat_byte(1)).as_ref().len(), 32);
    }

    #[test]
    fn forged_tampered_and_misplaced_records_are_rejected() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let other = Keypair::generate_ed25519();
        let other_peer = other.public().to_peer_id();
        let k = record_key(&ModelId::repeat_byte(7), &peer);

        // Signed by another key: wrong signer for this peer, and the wrong key for its signer.
        let forged = signed(&other).to_bytes();
        assert_eq!(
            verify(&forged, &k, Some(&peer), NOW),
            Err(RecordError::WrongSigner(other_peer))
        );
        assert_eq!(verify(&forged, &k, None, NOW), Err(RecordError::WrongKey));

        // Another peer's public key pasted over a valid signature.
        let mut swapped = signed(&key);
        swapped.public_key = other.public().encode_protobuf();
        let k_other = record_key(&ModelId::repeat_byte(7), &other_peer);
        assert_eq!(
            verify(&swapped.to_bytes(), &k_other, Some(&other_peer), NOW),
            Err(RecordError::BadSignature)
        );

        // A field changed after signing.
        let mut tampered = signed(&key);
        tampered.announcement.free = 1000;
        assert_eq!(
            verify(&tampered.to_bytes(), &k, Some(&peer), NOW),
            Err(RecordError::BadSignature)
        );
        let mut unwithdrawn =
            WorkerRecord::sign(&key, announcement(), NOW, true, &[]).expect("sign");
        unwithdrawn.withdrawn = false;
        assert_eq!(
            verify(&unwithdrawn.to_bytes(), &k, Some(&peer), NOW),
            Err(RecordError::BadSignature)
        );

        // Another model's key.
        let bytes = signed(&key).to_bytes();
        assert_eq!(
            verify(&bytes, &record_key(&ModelId::repeat_byte(8), &peer), Some(&peer), NOW),
            Err(RecordError::WrongKey)
        );
        assert!(RecordError::WrongKey.is_forgery());
    }

    #[test]
    fn expiry_is_enforced_both_ways() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let k = record_key(&ModelId::repeat_byte(7), &peer);
        let bytes = signed(&key).to_bytes();
        assert_eq!(verify(&bytes, &k, Some(&peer), NOW + 90_000), Err(RecordError::Expired));
        let mut forever = announcement();
        forever.expires_at_ms = u64::MAX;
        let bytes = WorkerRecord::sign(&key, forever, NOW, false, &[]).expect("sign").to_bytes();
        assert_eq!(verify(&bytes, &k, Some(&peer), NOW), Err(RecordError::TooFarInFuture));
        assert!(!RecordError::Expired.is_forgery());
    }

    #[test]
    fn malformed_bytes_give_typed_errors() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let k = record_key(&ModelId::repeat_byte(7), &peer);
        assert_eq!(decode_record(&[]), Err(RecordError::Undecodable));
        assert_eq!(decode_record(&[9, 0, 0]), Err(RecordError::UnknownVersion(9)));
        assert_eq!(decode_record(&[RECORD_VERSION; 10]), Err(RecordError::Undecodable));
        assert_eq!(
            decode_record(&vec![RECORD_VERSION; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge)
        );
        let mut trailing = signed(&key).to_bytes();
        trailing.push(0);
        assert_eq!(decode_record(&trailing), Err(RecordError::Undecodable));

        let mut many = signed(&key);
        many.addresses = vec![addr().to_vec(); MAX_ADDRESSES + 1];
        assert_eq!(decode_record(&many.to_bytes()), Err(RecordError::BadAddress));
        let mut junk = signed(&key);
        junk.addresses = vec![vec![0xff, 0xff]];
        junk.signature = key.sign(&junk.signed_bytes()).expect("sign");
        assert_eq!(verify(&junk.to_bytes(), &k, Some(&peer), NOW), Err(RecordError::BadAddress));
        let mut no_key = signed(&key);
        no_key.public_key = vec![1, 2, 3];
        assert_eq!(verify(&no_key.to_bytes(), &k, None, NOW), Err(RecordError::BadPublicKey));
        let mut empty = announcement();
        empty.layer_end = 0;
        let bytes = WorkerRecord::sign(&key, empty, NOW, false, &[]).expect("sign").to_bytes();
        assert_eq!(verify(&bytes, &k, Some(&peer), NOW), Err(RecordError::EmptyLayers));
    }

    #[test]
    fn signing_keeps_a_bounded_address_list() {
        let key = Keypair::generate_ed25519();
        let addrs: Vec<Multiaddr> = (0..20u16)
            .map(|p| format!("/ip4/127.0.0.1/tcp/{p}").parse().expect("address"))
            .chain(std::iter::once(addr()))
            .collect();
        let twice: Vec<Multiaddr> = addrs.iter().chain(addrs.iter()).cloned().collect();
        let record = WorkerRecord::sign(&key, announcement(), NOW, false, &twice).expect("sign");
        assert_eq!(record.addresses.len(), MAX_ADDRESSES);
        assert!(decode_record(&record.to_bytes()).is_ok());
    }
}
