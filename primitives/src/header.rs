//! Block header and commit certificate.

use crate::{blake2_256, keys, AccountId, BlockNumber, Hash, Signature, VotingPower};
use parity_scale_codec::{Decode, Encode};

/// A block header. Its hash (blake2-256 of its SCALE encoding) names the block.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Header {
    /// Hash of the parent block (zero for genesis).
    pub parent_hash: Hash,
    /// Height of this block.
    #[codec(compact)]
    pub number: BlockNumber,
    /// Root of the state after this block's execution.
    pub state_root: Hash,
    /// Merkle root of the hashes of the block's extrinsics.
    pub extrinsics_root: Hash,
    /// The validator that proposed the block; it receives the fees.
    pub author: AccountId,
    /// Author's wall-clock time in milliseconds since the Unix epoch (informational).
    #[codec(compact)]
    pub timestamp_ms: u64,
}

impl Header {
    /// The block hash.
    pub fn hash(&self) -> Hash {
        blake2_256(&self.encode())
    }
}

/// One validator's signature in a commit certificate.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct CommitSignature {
    /// The validator.
    pub validator: AccountId,
    /// Its sr25519 signature over [`Commit::signing_payload`].
    pub signature: Signature,
}

/// A commit certificate: more than two thirds of the validator set of `height` signed that
/// `block_hash` is decided at `height` in `round`. It makes the block final.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Commit {
    /// Height of the decided block.
    #[codec(compact)]
    pub height: BlockNumber,
    /// Consensus round in which it was decided.
    #[codec(compact)]
    pub round: u32,
    /// The decided block.
    pub block_hash: Hash,
    /// The precommit signatures.
    pub signatures: Vec<CommitSignature>,
}

impl Commit {
    /// What each validator signs: domain tag, genesis hash, height, round and block hash.
    pub fn signing_payload(
        genesis: &Hash,
        height: BlockNumber,
        round: u32,
        block_hash: &Hash,
    ) -> Vec<u8> {
        (b"bitorch/precommit/1", genesis, height, round, block_hash).encode()
    }

    /// Checks that every signature is valid, no validator signs twice, only members of
    /// `validators` (account, voting power) sign, and together they hold strictly more than
    /// two thirds of the set's voting power (the rule the consensus engine decides by).
    pub fn verify(
        &self,
        genesis: &Hash,
        validators: &[(AccountId, VotingPower)],
    ) -> Result<(), CommitError> {
        let total: u128 = validators.iter().map(|(_, p)| u128::from(*p)).sum();
        if total == 0 {
            return Err(CommitError::EmptyValidatorSet);
        }
        let payload = Self::signing_payload(genesis, self.height, self.round, &self.block_hash);
        let mut seen = std::collections::BTreeSet::new();
        let mut signed: u128 = 0;
        for s in &self.signatures {
            let Some((_, power)) = validators.iter().find(|(v, _)| v == &s.validator) else {
                return Err(CommitError::NotAValidator(keys::to_ss58(&s.validator)));
            };
            if !seen.insert(s.validator.clone()) {
                return Err(CommitError::DuplicateSigner(keys::to_ss58(&s.validator)));
            }
            if !keys::verify(&s.signature, &payload, &s.validator) {
                return Err(CommitError::BadSignature(keys::to_ss58(&s.validator)));
            }
            signed += u128::from(*power);
        }
        if signed * 3 <= total * 2 {
            return Err(CommitError::NoSupermajority { signed, total });
        }
        Ok(())
    }
}

/// Why a commit certificate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The validator set is empty.
    #[error("the validator set is empty")]
    EmptyValidatorSet,
    /// A signer is not in the validator set.
    #[error("commit signed by {0}, which is not a validator at this height")]
    NotAValidator(String),
    /// A validator signed twice.
    #[error("validator {0} signed the commit twice")]
    DuplicateSigner(String),
    /// A signature does not verify.
    #[error("invalid commit signature from {0}")]
    BadSignature(String),
    /// Signers hold two thirds of the voting power or less.
    #[error(
        "commit signers hold {signed} of {total} voting power; more than two thirds are needed"
    )]
    NoSupermajority {
        /// Voting power of the distinct valid signers.
        signed: u128,
        /// Voting power of the whole set.
        total: u128,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{account_of, pair_from_suri};
    use sp_core::crypto::Pair as _;

    #[test]
    fn commit_weighs_signatures_by_voting_power() {
        let genesis = Hash::repeat_byte(9);
        let block = Hash::repeat_byte(1);
        let pairs: Vec<_> =
            ["//Alice", "//Bob", "//Charlie"].iter().map(|s| pair_from_suri(s).unwrap()).collect();
        let sign = |i: usize| CommitSignature {
            validator: account_of(&pairs[i]),
            signature: pairs[i].sign(&Commit::signing_payload(&genesis, 5, 0, &block)),
        };
        // Alice holds 70 of 100: alone she is more than two thirds; Bob and Charlie are not.
        let set = vec![
            (account_of(&pairs[0]), 70),
            (account_of(&pairs[1]), 20),
            (account_of(&pairs[2]), 10),
        ];
        let commit = |sigs| Commit { height: 5, round: 0, block_hash: block, signatures: sigs };
        commit(vec![sign(0)]).verify(&genesis, &set).unwrap();
        assert_eq!(
            commit(vec![sign(1), sign(2)]).verify(&genesis, &set),
            Err(CommitError::NoSupermajority { signed: 30, total: 100 })
        );
        assert!(matches!(
            commit(vec![sign(0), sign(0)]).verify(&genesis, &set),
            Err(CommitError::DuplicateSigner(_))
        ));
        assert!(commit(vec![sign(0)]).verify(&Hash::zero(), &set).is_err(), "other chain");
        assert!(matches!(
            commit(vec![sign(0)]).verify(&genesis, &set[1..]),
            Err(CommitError::NotAValidator(_))
        ));
        assert_eq!(commit(vec![]).verify(&genesis, &[]), Err(CommitError::EmptyValidatorSet));
    }
}
