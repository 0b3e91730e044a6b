//! Consensus votes as signed data, and equivocation evidence built from them.
//!
//! The consensus engine and the chain agree here on the exact bytes a validator signs: a
//! precommit for a block signs [`Commit::signing_payload`] (so precommits are the signatures
//! of a commit certificate), a nil precommit and a prevote sign their own domain-tagged
//! payloads. Two valid votes of one kind by one validator at one height and round for
//! different values are an [`Equivocation`], which the staking pallet slashes.

use crate::{keys, AccountId, BlockNumber, Commit, Hash, Signature};
use parity_scale_codec::{Decode, Encode};

/// Domain tag of a nil precommit.
const PRECOMMIT_NIL_TAG: &[u8; 23] = b"bitorch/precommit-nil/1";
/// Domain tag of a prevote.
const PREVOTE_TAG: &[u8; 17] = b"bitorch/prevote/1";
/// Domain tag of a proposal.
const PROPOSAL_TAG: &[u8; 18] = b"bitorch/proposal/1";

/// The bytes a proposer signs for a proposal of `block` (whose encoding hashes to
/// `bytes_hash`) at `height` and `round`, re-proposing the polka of `pol_round` if any. They
/// bind the block hash and a hash of the block bytes, so a peer relaying the proposal cannot
/// swap the bytes under a valid signature.
pub fn proposal_sign_bytes(
    genesis: &Hash,
    height: BlockNumber,
    round: u32,
    pol_round: Option<u32>,
    block: &Hash,
    bytes_hash: &Hash,
    proposer: &AccountId,
) -> Vec<u8> {
    (PROPOSAL_TAG, genesis, height, round, pol_round, block, bytes_hash, proposer).encode()
}

/// A signed proposal as kept in evidence: what was signed, without the block bytes (their
/// hash is enough to check the signature).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedProposal {
    /// Height.
    pub height: BlockNumber,
    /// Round.
    pub round: u32,
    /// The polka round it re-proposes, if any.
    pub pol_round: Option<u32>,
    /// The proposed block's hash.
    pub block: Hash,
    /// The hash of the proposed block's bytes.
    pub bytes_hash: Hash,
    /// The proposer.
    pub proposer: AccountId,
    /// sr25519 signature over [`proposal_sign_bytes`].
    pub signature: Signature,
}

impl SignedProposal {
    /// Whether the signature is valid for the proposer on the chain `genesis`.
    pub fn verify(&self, genesis: &Hash) -> bool {
        let bytes = proposal_sign_bytes(
            genesis,
            self.height,
            self.round,
            self.pol_round,
            &self.block,
            &self.bytes_hash,
            &self.proposer,
        );
        keys::verify(&self.signature, &bytes, &self.proposer)
    }
}

/// A proposer signed two different proposals at one height and round.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct DoubleProposal {
    /// The first proposal seen.
    pub first: SignedProposal,
    /// The conflicting one.
    pub second: SignedProposal,
}

impl DoubleProposal {
    /// The offender.
    pub fn offender(&self) -> &AccountId {
        &self.first.proposer
    }

    /// Whether this is real evidence: same proposer, height and round, something signed
    /// differs, and both signatures are valid for the chain `genesis`.
    pub fn verify(&self, genesis: &Hash) -> bool {
        let (a, b) = (&self.first, &self.second);
        a.proposer == b.proposer
            && a.height == b.height
            && a.round == b.round
            && (a.block, a.bytes_hash, a.pol_round) != (b.block, b.bytes_hash, b.pol_round)
            && a.verify(genesis)
            && b.verify(genesis)
    }
}

/// Prevote or precommit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum VoteKind {
    /// First voting step.
    Prevote,
    /// Second voting step; a quorum of precommits for a block decides it.
    Precommit,
}

/// The bytes a validator signs for a vote.
pub fn vote_sign_bytes(
    genesis: &Hash,
    height: BlockNumber,
    round: u32,
    kind: VoteKind,
    value: Option<&Hash>,
) -> Vec<u8> {
    match (kind, value) {
        (VoteKind::Precommit, Some(hash)) => Commit::signing_payload(genesis, height, round, hash),
        (VoteKind::Precommit, None) => (PRECOMMIT_NIL_TAG, genesis, height, round).encode(),
        (VoteKind::Prevote, value) => (PREVOTE_TAG, genesis, height, round, value).encode(),
    }
}

/// A signed vote as it travels and as it is kept in evidence.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedVote {
    /// Height.
    pub height: BlockNumber,
    /// Round.
    pub round: u32,
    /// Prevote or precommit.
    pub kind: VoteKind,
    /// The block voted for, or `None` for nil.
    pub value: Option<Hash>,
    /// The voter.
    pub validator: AccountId,
    /// sr25519 signature over [`vote_sign_bytes`].
    pub signature: Signature,
}

impl SignedVote {
    /// The bytes the validator signed for this vote.
    pub fn sign_bytes(&self, genesis: &Hash) -> Vec<u8> {
        vote_sign_bytes(genesis, self.height, self.round, self.kind, self.value.as_ref())
    }

    /// Whether the signature is valid for the validator on the chain `genesis`.
    pub fn verify(&self, genesis: &Hash) -> bool {
        keys::verify(&self.signature, &self.sign_bytes(genesis), &self.validator)
    }
}

/// A validator signed two different votes of one kind at one height and round. Both votes
/// carry their signatures, so anyone can check the evidence with [`Equivocation::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Equivocation {
    /// The first vote seen.
    pub first: SignedVote,
    /// The conflicting vote.
    pub second: SignedVote,
}

impl Equivocation {
    /// The offender.
    pub fn offender(&self) -> &AccountId {
        &self.first.validator
    }

    /// Whether this is real evidence: same validator, height, round and kind, different
    /// values, and both signatures valid for the chain `genesis`.
    pub fn verify(&self, genesis: &Hash) -> bool {
        let (a, b) = (&self.first, &self.second);
        a.validator == b.validator
            && a.height == b.height
            && a.round == b.round
            && a.kind == b.kind
            && a.value != b.value
            && a.verify(genesis)
            && b.verify(genesis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{account_of, pair_from_suri};
    use sp_core::crypto::Pair as _;

    fn vote(suri: &str, value: Option<Hash>, genesis: &Hash) -> SignedVote {
        let pair = pair_from_suri(suri).unwrap();
        let bytes = vote_sign_bytes(genesis, 7, 1, VoteKind::Precommit, value.as_ref());
        SignedVote {
            height: 7,
            round: 1,
            kind: VoteKind::Precommit,
            value,
            validator: account_of(&pair),
            signature: pair.sign(&bytes),
        }
    }

    fn proposal(suri: &str, block: Hash, round: u32, genesis: &Hash) -> SignedProposal {
        let pair = pair_from_suri(suri).unwrap();
        let proposer = account_of(&pair);
        let bytes_hash = crate::blake2_256(block.as_bytes());
        let payload = proposal_sign_bytes(genesis, 7, round, None, &block, &bytes_hash, &proposer);
        SignedProposal {
            height: 7,
            round,
            pol_round: None,
            block,
            bytes_hash,
            proposer,
            signature: pair.sign(&payload),
        }
    }

    #[test]
    fn a_double_proposal_needs_two_valid_conflicting_proposals() {
        let g = Hash::repeat_byte(3);
        let a = proposal("//Alice", Hash::repeat_byte(1), 0, &g);
        let b = proposal("//Alice", Hash::repeat_byte(2), 0, &g);
        assert!(a.verify(&g) && b.verify(&g));
        assert!(DoubleProposal { first: a.clone(), second: b.clone() }.verify(&g));
        assert!(!DoubleProposal { first: a.clone(), second: a.clone() }.verify(&g), "same");
        assert!(!DoubleProposal { first: a.clone(), second: b.clone() }.verify(&Hash::zero()));
        let bob = proposal("//Bob", Hash::repeat_byte(2), 0, &g);
        assert!(!DoubleProposal { first: a.clone(), second: bob }.verify(&g), "two proposers");
        let later = proposal("//Alice", Hash::repeat_byte(2), 1, &g);
        assert!(!DoubleProposal { first: a.clone(), second: later }.verify(&g), "two rounds");
        let mut forged = b;
        forged.block = Hash::repeat_byte(9);
        assert!(!DoubleProposal { first: a, second: forged }.verify(&g), "bad signature");
    }

    #[test]
    fn equivocation_needs_two_valid_conflicting_votes() {
        let g = Hash::repeat_byte(3);
        let a = vote("//Alice", Some(Hash::repeat_byte(1)), &g);
        let b = vote("//Alice", Some(Hash::repeat_byte(2)), &g);
        assert!(Equivocation { first: a.clone(), second: b.clone() }.verify(&g));
        assert!(!Equivocation { first: a.clone(), second: a.clone() }.verify(&g), "same vote");
        assert!(!Equivocation { first: a.clone(), second: b.clone() }.verify(&Hash::zero()));
        let other = vote("//Bob", Some(Hash::repeat_byte(2)), &g);
        assert!(!Equivocation { first: a.clone(), second: other }.verify(&g), "two validators");
        let mut later = b;
        later.round = 2;
        assert!(!Equivocation { first: a, second: later }.verify(&g), "other round, bad sig");
    }
}
