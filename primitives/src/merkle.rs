//! A binary Merkle root over blake2-256 leaves (`merkle-cbt`), used for a block's extrinsics.

use crate::Hash;
use merkle_cbt::{merkle_tree::Merge, CBMT};

/// blake2-256 of the two children concatenated.
pub struct Blake2Merge;

impl Merge for Blake2Merge {
    type Item = [u8; 32];
    fn merge(left: &Self::Item, right: &Self::Item) -> Self::Item {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(left);
        buf[32..].copy_from_slice(right);
        sp_crypto_hashing::blake2_256(&buf)
    }
}

/// The complete binary Merkle tree type over blake2-256 leaves.
pub type Blake2Cbmt = CBMT<[u8; 32], Blake2Merge>;

/// Merkle root of the given leaves (all zeros for no leaves).
pub fn merkle_root(leaves: &[[u8; 32]]) -> Hash {
    Hash::from(Blake2Cbmt::build_merkle_root(leaves))
}
