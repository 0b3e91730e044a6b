//! Block header and commit certificate.

use crate::{blake2_256, keys, AccountId, BlockNumber, Hash, Signature};
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
    /// `validators` sign, and together they are more than two thirds of the set.
    pub fn verify(&self, genesis: &Hash, validators: &[AccountId]) -> Result<(), CommitError> {
        if validators.is_empty() {
            return Err(CommitError::EmptyValidatorSet);
        }
        let payload = Self::signing_payload(genesis, self.height, self.round, &self.block_hash);
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.signatures {
            if !validators.contains(&s.validator) {
                return Err(CommitError::NotAValidator(keys::to_ss58(&s.validator)));
            }
            if !seen.insert(s.validator.clone()) {
                return Err(CommitError::DuplicateSigner(keys::to_ss58(&s.validator)));
            }
            if !keys::verify(&s.signature, &payload, &s.validator) {
                return Err(CommitError::BadSignature(keys::to_ss58(&s.validator)));
            }
        }
        if seen.len() * 3 <= validators.len() * 2 {
            return Err(CommitError::NoSupermajority { signed: seen.len(), set: validators.len() });
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
    /// Two thirds or fewer signed.
    #[error("commit has {signed} of {set} validator signatures; more than two thirds are needed")]
    NoSupermajority {
        /// Distinct valid signers.
        signed: usize,
        /// Size of the validator set.
        set: usize,
    },
}
