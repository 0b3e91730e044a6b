//! The Merkle tree over a stage run's leaves (`merkle-cbt`, blake2-256), and its proofs.

use crate::{Error, Hash, Leaf};
use merkle_cbt::{
    merkle_tree::{Merge, MerkleProof},
    CBMT,
};
use std::cmp::Reverse;

/// blake2-256 of the two children concatenated.
pub struct Blake2Merge;

impl Merge for Blake2Merge {
    type Item = Hash;
    fn merge(left: &Hash, right: &Hash) -> Hash {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(left);
        buf[32..].copy_from_slice(right);
        sp_crypto_hashing::blake2_256(&buf)
    }
}

type Cbmt = CBMT<Hash, Blake2Merge>;

/// What a worker signs for a stage run: how many positions it covers and the Merkle root of
/// their leaves. The count is part of the commitment because a complete binary Merkle tree's
/// shape, and so every proof, depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commitment {
    /// Number of leaves (token positions), from position 0.
    pub len: u32,
    /// The `merkle-cbt` root of the leaf hashes (all zeros when `len` is 0).
    pub root: Hash,
}

impl Commitment {
    /// The commitment to the given leaf hashes, in position order.
    pub fn from_leaf_hashes(hashes: &[Hash]) -> Self {
        Self { len: hashes.len() as u32, root: Cbmt::build_merkle_root(hashes) }
    }
}

/// A multi-proof for some positions of a commitment: the sibling hashes needed to rebuild the
/// root. Which tree node each opened leaf sits at is derived from its position, never taken from
/// the proof, so a proof cannot move a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The lemmas, in the order `merkle-cbt` consumes them.
    pub lemmas: Vec<Hash>,
}

/// Node indices of the given positions in a tree of `len` leaves, ordered the way
/// `merkle-cbt` pairs them with the leaves (by leaf hash).
fn node_indices(len: u32, positions_and_hashes: &[(u32, Hash)]) -> Vec<u32> {
    let mut pairs: Vec<(u32, Hash)> =
        positions_and_hashes.iter().map(|(p, h)| (len - 1 + p, *h)).collect();
    pairs.sort_by_key(|p| p.1);
    pairs.into_iter().map(|(i, _)| i).collect()
}

/// Builds the proof for `positions` (distinct, any order) over all leaf hashes of a run.
pub fn prove(hashes: &[Hash], positions: &[u32]) -> Result<Proof, Error> {
    let len = hashes.len() as u32;
    if positions.is_empty() {
        return Err(Error::BadPositions);
    }
    for &position in positions {
        if position >= len {
            return Err(Error::PositionOutOfRange { position, len });
        }
    }
    let tree = Cbmt::build_merkle_tree(hashes);
    // build_proof walks the tree bottom-up; lemmas do not depend on the order of the indices.
    let mut sorted = positions.to_vec();
    sorted.sort_by_key(|p| Reverse(*p));
    sorted.dedup();
    if sorted.len() != positions.len() {
        return Err(Error::BadPositions);
    }
    let proof = tree.build_proof(&sorted).ok_or(Error::BadPositions)?;
    Ok(Proof { lemmas: proof.lemmas().to_vec() })
}

/// Checks that `leaves` (each hashed canonically, at its own position) and `proof` rebuild the
/// commitment's root.
pub fn verify_proof(commitment: &Commitment, leaves: &[Leaf], proof: &Proof) -> Result<(), Error> {
    let hashed: Vec<(u32, Hash)> = leaves.iter().map(|l| (l.position, l.hash())).collect();
    verify_hashes(commitment, &hashed, proof)
}

/// Like [`verify_proof`], for leaves already hashed: `(position, leaf hash)` pairs.
pub fn verify_hashes(
    commitment: &Commitment,
    leaves: &[(u32, Hash)],
    proof: &Proof,
) -> Result<(), Error> {
    if leaves.is_empty() {
        return Err(Error::BadPositions);
    }
    let mut positions: Vec<u32> = leaves.iter().map(|l| l.0).collect();
    positions.sort_unstable();
    positions.dedup();
    if positions.len() != leaves.len() {
        return Err(Error::BadPositions);
    }
    for &(position, _) in leaves {
        if position >= commitment.len {
            return Err(Error::PositionOutOfRange { position, len: commitment.len });
        }
    }
    let indices = node_indices(commitment.len, leaves);
    let hashes: Vec<Hash> = leaves.iter().map(|l| l.1).collect();
    let proof = MerkleProof::<Hash, Blake2Merge>::new(indices, proof.lemmas.clone());
    if proof.verify(&commitment.root, &hashes) {
        Ok(())
    } else {
        Err(Error::BadProof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(position: u32) -> Leaf {
        Leaf {
            position,
            input: vec![position as f32, 1.5],
            output: vec![-(position as f32), 2.5, 3.5],
            logits: Vec::new(),
        }
    }

    fn run(len: u32) -> (Vec<Leaf>, Vec<Hash>, Commitment) {
        let leaves: Vec<Leaf> = (0..len).map(leaf).collect();
        let hashes: Vec<Hash> = leaves.iter().map(Leaf::hash).collect();
        let commitment = Commitment::from_leaf_hashes(&hashes);
        (leaves, hashes, commitment)
    }

    fn pick(leaves: &[Leaf], positions: &[u32]) -> Vec<Leaf> {
        positions.iter().map(|&p| leaves[p as usize].clone()).collect()
    }

    #[test]
    fn single_leaf() {
        let (leaves, hashes, c) = run(1);
        assert_eq!(c.root, hashes[0]);
        let proof = prove(&hashes, &[0]).unwrap();
        verify_proof(&c, &leaves, &proof).unwrap();
    }

    #[test]
    fn out_of_range_and_duplicates() {
        let (leaves, hashes, c) = run(5);
        assert!(matches!(prove(&hashes, &[5]), Err(Error::PositionOutOfRange { .. })));
        assert!(matches!(prove(&hashes, &[1, 1]), Err(Error::BadPositions)));
        let proof = prove(&hashes, &[1]).unwrap();
        let dup = pick(&leaves, &[1, 1]);
        assert!(verify_proof(&c, &dup, &proof).is_err());
        let mut far = leaves[1].clone();
        far.position = 9;
        assert!(matches!(verify_proof(&c, &[far], &proof), Err(Error::PositionOutOfRange { .. })));
        assert!(verify_proof(&c, &[], &proof).is_err());
    }

    proptest! {
        #[test]
        fn honest_proofs_verify(len in 1u32..70, seed in proptest::collection::vec(any::<u32>(), 1..8)) {
            let (leaves, hashes, c) = run(len);
            let mut positions: Vec<u32> = seed.iter().map(|s| s % len).collect();
            positions.sort_unstable();
            positions.dedup();
            let proof = prove(&hashes, &positions).unwrap();
            // Any order of the opened leaves verifies.
            let mut opened = pick(&leaves, &positions);
            opened.reverse();
            prop_assert!(verify_proof(&c, &opened, &proof).is_ok());
        }

        #[test]
        fn tampering_is_rejected(
            len in 2u32..70,
            pos in any::<u32>(),
            which in 0usize..5,
            byte in 0usize..32,
        ) {
            let (leaves, hashes, c) = run(len);
            let p = pos % len;
            let proof = prove(&hashes, &[p]).unwrap();
            let mut opened = vec![leaves[p as usize].clone()];
            let mut proof = proof;
            let mut commitment = c;
            match which {
                // A changed float in the output.
                0 => opened[0].output[0] += 1e-3,
                // A leaf claimed at another position.
                1 => opened[0].position = (p + 1) % len,
                // A flipped bit in a lemma.
                2 => {
                    let i = byte % proof.lemmas.len();
                    proof.lemmas[i][byte] ^= 1;
                }
                // A dropped lemma.
                3 => { proof.lemmas.pop(); }
                // A commitment of another length.
                _ => commitment.len += 1,
            }
            prop_assert!(verify_proof(&commitment, &opened, &proof).is_err());
        }

        #[test]
        fn proof_for_other_positions_is_rejected(len in 3u32..70, a in any::<u32>(), b in any::<u32>()) {
            let (leaves, hashes, c) = run(len);
            let (a, b) = (a % len, b % len);
            prop_assume!(a != b);
            let proof = prove(&hashes, &[a]).unwrap();
            prop_assert!(verify_proof(&c, &pick(&leaves, &[b]), &proof).is_err());
            prop_assert!(verify_proof(&c, &pick(&leaves, &[a, b]), &proof).is_err());
        }
    }
}
