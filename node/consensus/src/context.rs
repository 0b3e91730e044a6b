//! Bitorch's [`Context`](mc::Context) for the Malachite core: what a height, an address, a value, a vote and
//! a proposal are, who proposes, and the exact bytes each validator signs.
//!
//! A precommit for a block is signed over [`bitorch_primitives::Commit::signing_payload`], so the precommit
//! signatures of a Malachite commit certificate are, unchanged, the signatures of our
//! `Commit`: import checks finality with `Commit::verify` and nothing else.

use crate::error::Error;
use bitorch_primitives::vote::{vote_sign_bytes, VoteKind};
use bitorch_primitives::{AccountId, BlockNumber, Hash, Pair, Public, Signature};
use malachitebft_core_types as mc;
use mc::{NilOrVal, Round, VoteType};
use parity_scale_codec::Encode;
use sp_core::crypto::Pair as _;
use std::fmt;

/// Largest total voting power of a validator set: Malachite's threshold check multiplies the
/// total by small constants and panics on overflow.
pub const MAX_TOTAL_VOTING_POWER: u64 = u64::MAX / 8;

/// The Bitorch consensus context. It carries the genesis hash, which every signature binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitorchContext {
    genesis: Hash,
}

impl BitorchContext {
    /// A context for the chain with genesis hash `genesis`.
    pub fn new(genesis: Hash) -> Self {
        Self { genesis }
    }

    /// The genesis hash.
    pub fn genesis(&self) -> &Hash {
        &self.genesis
    }

    /// The bytes a validator signs for `vote` ([`bitorch_primitives::vote::vote_sign_bytes`]).
    pub fn vote_sign_bytes(&self, vote: &Vote) -> Vec<u8> {
        let kind = match vote.vote_type {
            VoteType::Prevote => VoteKind::Prevote,
            VoteType::Precommit => VoteKind::Precommit,
        };
        let value = match &vote.value {
            NilOrVal::Val(h) => Some(h),
            NilOrVal::Nil => None,
        };
        vote_sign_bytes(
            &self.genesis,
            vote.height.0,
            vote.round.as_u32().unwrap_or(u32::MAX),
            kind,
            value,
        )
    }

    /// The bytes the proposer signs for `proposal`. They bind the block hash and a hash of the
    /// block bytes, so a peer relaying the proposal cannot swap the bytes under a valid
    /// signature (which would make honest nodes reject the real block).
    pub fn proposal_sign_bytes(&self, proposal: &Proposal) -> Vec<u8> {
        bitorch_primitives::vote::proposal_sign_bytes(
            &self.genesis,
            proposal.height.0,
            proposal.round.as_u32().unwrap_or(u32::MAX),
            proposal.pol_round.as_u32(),
            &proposal.value.hash,
            &bitorch_primitives::blake2_256(&proposal.value.bytes),
            &proposal.proposer.0,
        )
    }
}

/// A block height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Height(pub BlockNumber);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mc::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: its sr25519 account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub AccountId);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bitorch_primitives::keys::to_ss58(&self.0))
    }
}

impl mc::Address for Address {}

/// The value consensus decides on: a block, as its hash (the value id) and its SCALE bytes.
///
/// The consensus crate does not know the block type; the node checks that the bytes decode to
/// a block whose header hashes to `hash` before it reports the value valid.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Encode, parity_scale_codec::Decode)]
pub struct Value {
    /// The block hash; consensus votes on it.
    pub hash: Hash,
    /// The SCALE-encoded block.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({:?}, {} bytes)", self.hash, self.bytes.len())
    }
}

impl mc::Value for Value {
    type Id = Hash;

    fn id(&self) -> Hash {
        self.hash
    }
}

/// One validator and its voting power (its stake).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    address: Address,
    public_key: Public,
    voting_power: u64,
}

impl Validator {
    /// The validator's account.
    pub fn account(&self) -> &AccountId {
        &self.address.0
    }

    /// Its voting power.
    pub fn power(&self) -> u64 {
        self.voting_power
    }
}

impl mc::Validator<BitorchContext> for Validator {
    fn address(&self) -> &Address {
        &self.address
    }

    fn public_key(&self) -> &Public {
        &self.public_key
    }

    fn voting_power(&self) -> u64 {
        self.voting_power
    }
}

/// The validator set of a height, sorted by account; voting power is stake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    total: u64,
}

impl ValidatorSet {
    /// Builds a set from `(account, voting power)` pairs. Rejects an empty set, a zero power, a
    /// duplicate account and a total above [`MAX_TOTAL_VOTING_POWER`].
    pub fn new(members: impl IntoIterator<Item = (AccountId, u64)>) -> Result<Self, Error> {
        let mut validators = Vec::new();
        let mut total: u64 = 0;
        for (account, power) in members {
            if power == 0 {
                return Err(Error::ZeroVotingPower(bitorch_primitives::keys::to_ss58(&account)));
            }
            total = total
                .checked_add(power)
                .filter(|t| *t <= MAX_TOTAL_VOTING_POWER)
                .ok_or(Error::VotingPowerTooLarge)?;
            let public_key = Public::from_raw(*<AccountId as AsRef<[u8; 32]>>::as_ref(&account));
            validators.push(Validator {
                address: Address(account),
                public_key,
                voting_power: power,
            });
        }
        if validators.is_empty() {
            return Err(Error::EmptyValidatorSet);
        }
        validators.sort_by(|a, b| a.address.cmp(&b.address));
        if let Some(w) = validators.windows(2).find(|w| w[0].address == w[1].address) {
            return Err(Error::DuplicateValidator(w[0].address.to_string()));
        }
        Ok(Self { validators, total })
    }

    /// A set where every account has voting power 1.
    pub fn equal(accounts: impl IntoIterator<Item = AccountId>) -> Result<Self, Error> {
        Self::new(accounts.into_iter().map(|a| (a, 1)))
    }

    /// The validators, sorted by account.
    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    /// The accounts, sorted.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.validators.iter().map(|v| v.address.0.clone()).collect()
    }

    /// `(account, voting power)` pairs, sorted; what [`bitorch_primitives::Commit::verify`] takes.
    pub fn powers(&self) -> Vec<(AccountId, u64)> {
        self.validators.iter().map(|v| (v.address.0.clone(), v.voting_power)).collect()
    }

    /// Sum of the voting powers.
    pub fn total_power(&self) -> u64 {
        self.total
    }

    /// The validator with `account`, if any.
    pub fn get(&self, account: &AccountId) -> Option<&Validator> {
        self.validators
            .binary_search_by(|v| v.address.0.cmp(account))
            .ok()
            .and_then(|i| self.validators.get(i))
    }

    /// The proposer of `height` and `round`: round-robin over the sorted set by
    /// `height + round`. Every node computes the same answer from the same set.
    pub fn proposer(&self, height: BlockNumber, round: u32) -> &Validator {
        let n = self.validators.len() as u64;
        let index = (height.wrapping_add(u64::from(round)) % n.max(1)) as usize;
        // The set is never empty (checked in `new`), so the index is in range.
        &self.validators[index.min(self.validators.len() - 1)]
    }
}

impl mc::ValidatorSet<BitorchContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> u64 {
        self.total
    }

    fn get_by_address(&self, address: &Address) -> Option<&Validator> {
        self.get(&address.0)
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

/// A prevote or precommit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub(crate) height: Height,
    pub(crate) round: Round,
    pub(crate) vote_type: VoteType,
    pub(crate) value: NilOrVal<Hash>,
    pub(crate) validator: Address,
}

impl mc::Vote<BitorchContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<Hash> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<Hash> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        self.vote_type
    }

    fn validator_address(&self) -> &Address {
        &self.validator
    }

    fn extension(&self) -> Option<&mc::SignedExtension<BitorchContext>> {
        None
    }

    fn take_extension(&mut self) -> Option<mc::SignedExtension<BitorchContext>> {
        None
    }

    // Vote extensions are disabled; an extension is dropped rather than signed.
    fn extend(self, _extension: mc::SignedExtension<BitorchContext>) -> Self {
        self
    }
}

/// A proposal: the proposer's signed offer of a value at a height and round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub(crate) height: Height,
    pub(crate) round: Round,
    pub(crate) value: Value,
    pub(crate) pol_round: Round,
    pub(crate) proposer: Address,
}

impl mc::Proposal<BitorchContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &Value {
        &self.value
    }

    fn take_value(self) -> Value {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

/// Proposals carry their whole value, so there are no proposal parts; this type only fills
/// the slot in [`mc::Context`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoParts;

impl mc::ProposalPart<BitorchContext> for NoParts {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// sr25519 through `sp-core`, as everywhere else in Bitorch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sr25519;

impl mc::SigningScheme for Sr25519 {
    type DecodingError = Error;
    type Signature = Signature;
    type PublicKey = Public;
    type PrivateKey = Pair;

    fn decode_signature(bytes: &[u8]) -> Result<Signature, Error> {
        let raw: [u8; 64] = bytes.try_into().map_err(|_| Error::BadKeyLength(bytes.len()))?;
        Ok(Signature::from_raw(raw))
    }

    fn encode_signature(signature: &Signature) -> Vec<u8> {
        signature.0.to_vec()
    }

    fn decode_public_key(bytes: &[u8]) -> Result<Public, Error> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| Error::BadKeyLength(bytes.len()))?;
        Ok(Public::from_raw(raw))
    }

    fn encode_public_key(public_key: &Public) -> Vec<u8> {
        public_key.0.to_vec()
    }
}

impl mc::Context for BitorchContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = NoParts;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = mc::LinearTimeouts;
    type Value = Value;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Sr25519;

    fn select_proposer<'a>(
        &self,
        validator_set: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a Validator {
        validator_set.proposer(height.0, round.as_u32().unwrap_or(0))
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: Value,
        pol_round: Round,
        address: Address,
    ) -> Proposal {
        Proposal { height, round, value, pol_round, proposer: address }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<Hash>,
        address: Address,
    ) -> Vote {
        Vote { height, round, vote_type: VoteType::Prevote, value: value_id, validator: address }
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<Hash>,
        address: Address,
    ) -> Vote {
        Vote { height, round, vote_type: VoteType::Precommit, value: value_id, validator: address }
    }
}

/// Verifies an sr25519 signature by `public` over `payload`.
pub(crate) fn verify(signature: &Signature, payload: &[u8], public: &Public) -> bool {
    Pair::verify(signature, payload, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_primitives::keys::{account_of, pair_from_suri};
    use mc::Context as _;

    #[test]
    fn precommit_sign_bytes_are_the_commit_payload() {
        let ctx = BitorchContext::new(Hash::repeat_byte(7));
        let alice = account_of(&pair_from_suri("//Alice").unwrap());
        let block = Hash::repeat_byte(1);
        let vote =
            ctx.new_precommit(Height(5), Round::new(2), NilOrVal::Val(block), Address(alice));
        assert_eq!(
            ctx.vote_sign_bytes(&vote),
            bitorch_primitives::Commit::signing_payload(&Hash::repeat_byte(7), 5, 2, &block)
        );
        // Every other kind of message signs something else.
        let nil =
            ctx.new_precommit(Height(5), Round::new(2), NilOrVal::Nil, vote.validator.clone());
        let prevote =
            ctx.new_prevote(Height(5), Round::new(2), NilOrVal::Val(block), vote.validator.clone());
        assert_ne!(ctx.vote_sign_bytes(&nil), ctx.vote_sign_bytes(&vote));
        assert_ne!(ctx.vote_sign_bytes(&prevote), ctx.vote_sign_bytes(&vote));
    }

    #[test]
    fn validator_set_rules() {
        let a = account_of(&pair_from_suri("//Alice").unwrap());
        let b = account_of(&pair_from_suri("//Bob").unwrap());
        assert!(matches!(ValidatorSet::new([]), Err(Error::EmptyValidatorSet)));
        assert!(matches!(ValidatorSet::new([(a.clone(), 0)]), Err(Error::ZeroVotingPower(_))));
        assert!(matches!(
            ValidatorSet::new([(a.clone(), 1), (a.clone(), 2)]),
            Err(Error::DuplicateValidator(_))
        ));
        assert!(matches!(
            ValidatorSet::new([(a.clone(), u64::MAX), (b.clone(), 1)]),
            Err(Error::VotingPowerTooLarge)
        ));
        let set = ValidatorSet::new([(b.clone(), 3), (a.clone(), 1)]).unwrap();
        assert_eq!(set.total_power(), 4);
        let mut sorted = vec![a.clone(), b.clone()];
        sorted.sort();
        assert_eq!(set.accounts(), sorted);
        // Round robin by height + round.
        assert_eq!(set.proposer(0, 0).account(), &sorted[0]);
        assert_eq!(set.proposer(1, 0).account(), &sorted[1]);
        assert_eq!(set.proposer(1, 1).account(), &sorted[0]);
    }
}
