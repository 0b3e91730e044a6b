//! Deliberate misbehaviour, for testing that the network catches it.
//!
//! A node started with `bitorch node --unsafe-equivocate` (a hidden flag, for end-to-end
//! tests only) passes every consensus message it broadcasts through [`conflicting_vote`] and
//! [`conflicting_proposal`] and broadcasts the result as well: for each of its own votes, a
//! second signed vote of the same kind, height and round for another block, and for each of
//! its proposals a second one for another value. Honest validators turn the pairs into
//! [`Equivocation`](bitorch_primitives::vote::Equivocation) and
//! [`DoubleProposal`](bitorch_primitives::vote::DoubleProposal) evidence, and the chain
//! slashes the offender. Nothing here runs unless that flag is given.

use crate::wire::Message;
use bitorch_primitives::vote::{proposal_sign_bytes, vote_sign_bytes};
use bitorch_primitives::{blake2_256, keys::account_of, Hash, Pair};
use parity_scale_codec::Encode;
use sp_core::Pair as _;

/// For `bytes` that are one of our own votes, the same vote signed for a different block (a
/// vote for a block becomes one for a made-up hash, a nil vote one for a made-up hash too);
/// `None` for anything else.
pub fn conflicting_vote(bytes: &[u8], key: &Pair, genesis: &Hash) -> Option<Vec<u8>> {
    let Ok(Message::Vote(vote)) = Message::from_bytes(bytes) else { return None };
    if vote.validator != account_of(key) {
        return None;
    }
    let seed = (b"bitorch/equivocate", vote.height, vote.round, vote.value).encode();
    let other = Hash::from(blake2_256(&seed));
    let mut conflicting = vote;
    conflicting.value = Some(other);
    let payload = vote_sign_bytes(
        genesis,
        conflicting.height,
        conflicting.round,
        conflicting.kind,
        Some(&other),
    );
    conflicting.signature = key.sign(&payload);
    Some(Message::Vote(conflicting).to_bytes())
}

/// For `bytes` that are one of our own proposals, a second proposal for the same height and
/// round with another value (a made-up block hash over the same bytes, which honest nodes
/// will find invalid), signed; `None` for anything else.
pub fn conflicting_proposal(bytes: &[u8], key: &Pair, genesis: &Hash) -> Option<Vec<u8>> {
    let Ok(Message::Proposal(p)) = Message::from_bytes(bytes) else { return None };
    if p.proposer != account_of(key) {
        return None;
    }
    let seed = (b"bitorch/double-propose", p.height, p.round, p.value.hash).encode();
    let mut conflicting = p;
    conflicting.value.hash = Hash::from(blake2_256(&seed));
    let payload = proposal_sign_bytes(
        genesis,
        conflicting.height,
        conflicting.round,
        conflicting.pol_round,
        &conflicting.value.hash,
        &blake2_256(&conflicting.value.bytes),
        &conflicting.proposer,
    );
    conflicting.signature = key.sign(&payload);
    Some(Message::Proposal(conflicting).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_primitives::keys::pair_from_suri;
    use bitorch_primitives::vote::{Equivocation, SignedVote, VoteKind};

    fn signed(key: &Pair, genesis: &Hash, kind: VoteKind, value: Option<Hash>) -> SignedVote {
        let payload = vote_sign_bytes(genesis, 7, 1, kind, value.as_ref());
        SignedVote {
            height: 7,
            round: 1,
            kind,
            value,
            validator: account_of(key),
            signature: key.sign(&payload),
        }
    }

    #[test]
    fn our_votes_get_a_validly_signed_twin_that_is_evidence() {
        let key = pair_from_suri("//Alice").unwrap();
        let genesis = Hash::repeat_byte(9);
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            for value in [Some(Hash::repeat_byte(1)), None] {
                let vote = signed(&key, &genesis, kind, value);
                let bytes = Message::Vote(vote.clone()).to_bytes();
                let twin = conflicting_vote(&bytes, &key, &genesis).expect("a twin");
                let Ok(Message::Vote(twin)) = Message::from_bytes(&twin) else { panic!("a vote") };
                assert_ne!(twin.value, vote.value);
                assert_eq!((twin.height, twin.round, twin.kind), (vote.height, vote.round, kind));
                let evidence = Equivocation { first: vote, second: twin };
                assert!(evidence.verify(&genesis), "{kind:?} {value:?}");
            }
        }
    }

    #[test]
    fn other_messages_and_other_validators_votes_are_left_alone() {
        let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
        let genesis = Hash::repeat_byte(9);
        let bobs = Message::Vote(signed(&bob, &genesis, VoteKind::Prevote, None)).to_bytes();
        assert!(conflicting_vote(&bobs, &alice, &genesis).is_none());
        assert!(conflicting_vote(b"garbage", &alice, &genesis).is_none());
    }
}
