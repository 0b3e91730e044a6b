//! A binary Merkle root over blake2-256 leaves (`merkle-cbt`), used for a block's extrinsics.

use crate::Hash;
/// blake2-256 of the two children concatenated: the one merge every Merkle tree of ours uses
/// (defined with the activation commitments, which must not depend on this crate).
pub use bitorch_commitment::Blake2Merge;
use merkle_cbt::CBMT;

/// The complete binary Merkle tree type over blake2-256 leaves.
pub type Blake2Cbmt = CBMT<[u8; 32], Blake2Merge>;

/// Merkle root of the given leaves (all zeros for no leaves).
pub fn merkle_root(leaves: &[[u8; 32]]) -> Hash {
    Hash::from(Blake2Cbmt::build_merkle_root(leaves))
}
