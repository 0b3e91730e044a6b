//! The staking pallet: bonds, unbonding with a delay, the validator candidates and the active
//! validator set, the worker set, and slashing.
//!
//! Rules:
//! - Bonded and unlocking amounts are the account's *reserved* balance in the currency (the
//!   balances pallet in the runtime): bonding reserves, withdrawing a matured unlocking chunk
//!   unreserves. For every account, reserved-by-staking == bonded + sum of unlocking chunks.
//! - `Unbond` moves an amount from `bonded` into an unlocking chunk that matures
//!   `unbonding_delay` blocks later (at most [`MAX_UNLOCK_CHUNKS`] chunks; unbondings in the
//!   same block merge). It is rejected while the account holds a role (validator candidate,
//!   worker) whose minimum bond the remainder would not meet: deregister first.
//! - A validator candidate or worker always has a non-zero bond of at least its role's
//!   minimum. Registration checks it, unbonding keeps it, slashing below it removes the role.
//! - The active validator set of the next block is computed in [`Pallet::on_finalize`]:
//!   candidates with at least the minimum bond, by bond descending then account bytes
//!   ascending, truncated to `max_validators`.
//! - Slashing takes from `bonded` first, then from unlocking chunks (the latest to mature
//!   first). **Slashed stake is burned**: it leaves the account's reserved balance and total
//!   issuance falls by the same amount.

use bitorch_pallet_support::{
    self as support, Context, Currency, CurrencyError, Storage, StorageError, WorkerRegistry,
};
use bitorch_primitives::vote::{DoubleProposal, Equivocation};
use bitorch_primitives::{keys, AccountId, Balance, BlockNumber, UNIT};
use parity_scale_codec::{Decode, Encode};
use std::marker::PhantomData;

mod error;
pub use error::Error;

#[cfg(test)]
mod tests;

const PALLET: &str = "staking";

/// The most unlocking chunks a ledger may hold.
pub const MAX_UNLOCK_CHUNKS: u32 = 32;
/// The most validator candidates.
pub const MAX_CANDIDATES: u32 = 1_000;

/// Staking parameters, set at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Params {
    /// Minimum bond of a validator candidate (a non-zero bond is always required).
    #[codec(compact)]
    pub min_validator_bond: Balance,
    /// Minimum bond of a worker (a non-zero bond is always required).
    #[codec(compact)]
    pub min_worker_bond: Balance,
    /// Blocks between `Unbond` and the moment the amount can be withdrawn.
    #[codec(compact)]
    pub unbonding_delay: BlockNumber,
    /// Size limit of the active validator set.
    #[codec(compact)]
    pub max_validators: u32,
}

impl Default for Params {
    /// Development values: 100 BTR per validator, 10 BTR per worker, 100 blocks, 100 validators.
    fn default() -> Self {
        Self {
            min_validator_bond: 100 * UNIT,
            min_worker_bond: 10 * UNIT,
            unbonding_delay: 100,
            max_validators: 100,
        }
    }
}

/// An amount on its way out of the bond.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct UnlockChunk {
    /// Amount unlocking.
    #[codec(compact)]
    pub amount: Balance,
    /// First block at which it can be withdrawn.
    #[codec(compact)]
    pub unlock_at: BlockNumber,
}

/// An account's stake. All of it (bonded and unlocking) is reserved in the currency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Ledger {
    /// Actively bonded amount (counts for roles and the validator set).
    #[codec(compact)]
    pub bonded: Balance,
    /// Amounts unbonding, oldest first (at most [`MAX_UNLOCK_CHUNKS`]).
    pub unlocking: Vec<UnlockChunk>,
}

impl Ledger {
    /// Sum of the unlocking chunks.
    pub fn unlocking_total(&self) -> Balance {
        self.unlocking.iter().fold(0, |acc: Balance, c| acc.saturating_add(c.amount))
    }

    /// bonded + unlocking: what staking holds reserved for the account.
    pub fn total(&self) -> Balance {
        self.bonded.saturating_add(self.unlocking_total())
    }

    fn is_empty(&self) -> bool {
        self.bonded == 0 && self.unlocking.is_empty()
    }
}

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WorkerRegistration {
    /// Block at which it registered.
    #[codec(compact)]
    pub registered_at: BlockNumber,
}

/// Calls of the staking pallet.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// Reserves `amount` of free balance and adds it to the bond.
    #[codec(index = 0)]
    Bond {
        /// Amount in base units.
        #[codec(compact)]
        amount: Balance,
    },
    /// Moves `amount` from the bond into an unlocking chunk.
    #[codec(index = 1)]
    Unbond {
        /// Amount in base units.
        #[codec(compact)]
        amount: Balance,
    },
    /// Unreserves every unlocking chunk that has matured.
    #[codec(index = 2)]
    WithdrawUnbonded,
    /// Becomes a validator candidate.
    #[codec(index = 3)]
    RegisterValidator,
    /// Becomes a worker.
    #[codec(index = 4)]
    RegisterWorker,
    /// Stops being a validator candidate (leaves the active set at the end of the block).
    #[codec(index = 5)]
    DeregisterValidator,
    /// Stops being a worker.
    #[codec(index = 6)]
    DeregisterWorker,
    /// Reports a validator that signed two conflicting votes (anyone may report; the
    /// reporter pays the fee). The offender loses [`EQUIVOCATION_SLASH_PERCENT`]% of its stake
    /// (burned) and its validator candidacy.
    #[codec(index = 7)]
    ReportEquivocation {
        /// The two conflicting signed votes.
        evidence: Box<Equivocation>,
    },
    /// Reports a validator that signed two different proposals at one height and round; the
    /// same punishment as [`Call::ReportEquivocation`], and the same offence (one slash for
    /// all the misbehaviour up to the block that jails it).
    #[codec(index = 8)]
    ReportDoubleProposal {
        /// The two conflicting signed proposals.
        evidence: Box<DoubleProposal>,
    },
}

/// Percentage of an equivocating validator's stake (bonded + unlocking) that is slashed.
pub const EQUIVOCATION_SLASH_PERCENT: u8 = 10;

/// The staking pallet, over the currency `C` that holds bonds as reserved balance.
pub struct Pallet<C>(PhantomData<C>);

fn ledger_key(who: &AccountId) -> Vec<u8> {
    support::map_key(PALLET, "ledger", who)
}

fn worker_key(who: &AccountId) -> Vec<u8> {
    support::map_key(PALLET, "worker", who)
}

fn params_key() -> Vec<u8> {
    support::value_key(PALLET, "params")
}

fn candidates_key() -> Vec<u8> {
    support::value_key(PALLET, "candidates")
}

fn active_key() -> Vec<u8> {
    support::value_key(PALLET, "active")
}

/// A role's effective minimum: a role always needs a non-zero bond.
fn required(min: Balance) -> Balance {
    min.max(1)
}

/// A currency failure while burning stake that the ledger says is reserved: the two disagree,
/// which only corrupt state can cause.
fn inconsistent(who: &AccountId, e: CurrencyError) -> StorageError {
    match e {
        CurrencyError::Storage(e) => e,
        other => StorageError::Corrupt {
            key: format!(
                "staking:ledger of {} disagrees with its reserve: {other}",
                keys::to_ss58(who)
            ),
        },
    }
}

impl<C: Currency> Pallet<C> {
    /// The staking parameters (the [`Params::default`] values when none were set).
    pub fn params<S: Storage + ?Sized>(s: &S) -> Result<Params, StorageError> {
        Ok(support::get(s, &params_key())?.unwrap_or_default())
    }

    /// Genesis: sets the staking parameters.
    pub fn set_params<S: Storage + ?Sized>(s: &mut S, params: &Params) {
        support::put(s, params_key(), params);
    }

    /// `who`'s ledger (empty when it has none).
    pub fn ledger<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<Ledger, StorageError> {
        support::get_or_default(s, &ledger_key(who))
    }

    fn set_ledger<S: Storage + ?Sized>(s: &mut S, who: &AccountId, ledger: &Ledger) {
        if ledger.is_empty() {
            support::remove(s, ledger_key(who));
        } else {
            support::put(s, ledger_key(who), ledger);
        }
    }

    /// The validator candidates, in registration order.
    pub fn candidates<S: Storage + ?Sized>(s: &S) -> Result<Vec<AccountId>, StorageError> {
        support::get_or_default(s, &candidates_key())
    }

    fn set_candidates<S: Storage + ?Sized>(s: &mut S, c: &Vec<AccountId>) {
        support::put(s, candidates_key(), c);
    }

    /// Whether `who` is a validator candidate.
    pub fn is_candidate<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<bool, StorageError> {
        Ok(Self::candidates(s)?.contains(who))
    }

    /// `who`'s worker record, if it is a worker.
    pub fn worker_info<S: Storage + ?Sized>(
        s: &S,
        who: &AccountId,
    ) -> Result<Option<WorkerRegistration>, StorageError> {
        support::get(s, &worker_key(who))
    }

    /// The active validator set of the current block (stored by the previous block's
    /// [`Pallet::on_finalize`], or genesis).
    pub fn validator_set<S: Storage + ?Sized>(s: &S) -> Result<Vec<AccountId>, StorageError> {
        support::get_or_default(s, &active_key())
    }

    /// The active validator set with each member's bonded stake (what voting power is
    /// derived from).
    pub fn validator_stakes<S: Storage + ?Sized>(
        s: &S,
    ) -> Result<Vec<(AccountId, Balance)>, StorageError> {
        Self::validator_set(s)?
            .into_iter()
            .map(|who| Ok((who.clone(), Self::ledger(s, &who)?.bonded)))
            .collect()
    }

    /// The validator set the candidates and bonds select now: candidates bonded at least the
    /// minimum, by bond descending then account bytes ascending, at most `max_validators`.
    pub fn compute_validator_set<S: Storage + ?Sized>(
        s: &S,
    ) -> Result<Vec<AccountId>, StorageError> {
        let params = Self::params(s)?;
        let min = required(params.min_validator_bond);
        let mut ranked = Vec::new();
        for who in Self::candidates(s)? {
            let bonded = Self::ledger(s, &who)?.bonded;
            if bonded >= min {
                ranked.push((bonded, who));
            }
        }
        ranked.sort_by(|(ba, a), (bb, b)| bb.cmp(ba).then_with(|| a.cmp(b)));
        ranked.truncate(usize::try_from(params.max_validators).unwrap_or(usize::MAX));
        Ok(ranked.into_iter().map(|(_, who)| who).collect())
    }

    /// End of block: stores [`Pallet::compute_validator_set`] as the active set of the next
    /// block.
    pub fn on_finalize<S: Storage + ?Sized>(s: &mut S, _ctx: &Context) -> Result<(), StorageError> {
        let set = Self::compute_validator_set(s)?;
        support::put(s, active_key(), &set);
        Ok(())
    }

    /// Genesis: bonds `amount` for `who` (which must hold it free), registers the requested
    /// roles, and stores the active validator set.
    pub fn genesis_stake<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
        validator: bool,
        worker: bool,
        ctx: &Context,
    ) -> Result<(), Error> {
        Self::bond(s, who, amount)?;
        if validator {
            Self::register_validator(s, who)?;
        }
        if worker {
            Self::register_worker(s, who, ctx)?;
        }
        Self::on_finalize(s, ctx)?;
        Ok(())
    }

    /// Dispatches a call signed by `who`.
    pub fn dispatch<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        call: &Call,
        ctx: &Context,
    ) -> Result<(), Error> {
        match call {
            Call::Bond { amount } => Self::bond(s, who, *amount),
            Call::Unbond { amount } => Self::unbond(s, who, *amount, ctx),
            Call::WithdrawUnbonded => Self::withdraw_unbonded(s, who, ctx),
            Call::RegisterValidator => Self::register_validator(s, who),
            Call::RegisterWorker => Self::register_worker(s, who, ctx),
            Call::DeregisterValidator => {
                let mut candidates = Self::candidates(s)?;
                let pos = candidates.iter().position(|c| c == who).ok_or(Error::NotValidator)?;
                candidates.remove(pos);
                Self::set_candidates(s, &candidates);
                Ok(())
            }
            Call::DeregisterWorker => {
                if Self::worker_info(s, who)?.is_none() {
                    return Err(Error::NotWorker);
                }
                support::remove(s, worker_key(who));
                Ok(())
            }
            Call::ReportEquivocation { evidence } => {
                Self::report_equivocation(s, evidence, ctx).map(|_| ())
            }
            Call::ReportDoubleProposal { evidence } => {
                if !evidence.verify(&ctx.genesis_hash) {
                    return Err(Error::InvalidEvidence);
                }
                Self::punish_equivocation(s, evidence.offender(), evidence.first.height, ctx)
                    .map(|_| ())
            }
        }
    }

    /// Verifies double-vote evidence and slashes the offender once per offence (see
    /// [`Call::ReportEquivocation`]); removes it from the validator candidates. Returns the
    /// amount slashed (burned).
    pub fn report_equivocation<S: Storage + ?Sized>(
        s: &mut S,
        evidence: &Equivocation,
        ctx: &Context,
    ) -> Result<Balance, Error> {
        if !evidence.verify(&ctx.genesis_hash) {
            return Err(Error::InvalidEvidence);
        }
        Self::punish_equivocation(s, evidence.offender(), evidence.first.height, ctx)
    }

    /// Slashes `offender` for a verified equivocation at `height` (double vote or double
    /// proposal) and removes it from the validator candidates, once per offence.
    fn punish_equivocation<S: Storage + ?Sized>(
        s: &mut S,
        offender: &AccountId,
        height: BlockNumber,
        ctx: &Context,
    ) -> Result<Balance, Error> {
        if Self::ledger(s, offender)?.total() == 0 {
            return Err(Error::OffenderNotStaked);
        }
        // One offence, one slash: the first report removes the offender from the candidates
        // (it stops validating from the next block on), and double votes or proposals it
        // signed at heights up to that block belong to the same offence, however many rounds,
        // kinds or heights they span. Only an offence after it registers again is slashed
        // again.
        let key = support::map_key(PALLET, "jailedAt", offender);
        if let Some(at) = support::get::<BlockNumber>(s, &key)? {
            if height <= at {
                return Err(Error::AlreadyReported);
            }
        }
        support::put(s, key, &ctx.block_number.max(height));
        let mut candidates = Self::candidates(s)?;
        if let Some(pos) = candidates.iter().position(|c| c == offender) {
            candidates.remove(pos);
            Self::set_candidates(s, &candidates);
        }
        Ok(<Self as WorkerRegistry>::slash_percent(s, offender, EQUIVOCATION_SLASH_PERCENT, ctx)?)
    }

    fn bond<S: Storage + ?Sized>(s: &mut S, who: &AccountId, amount: Balance) -> Result<(), Error> {
        if amount == 0 {
            return Err(Error::ZeroAmount);
        }
        let mut ledger = Self::ledger(s, who)?;
        ledger.bonded = ledger.bonded.checked_add(amount).ok_or(Error::Overflow)?;
        C::reserve(s, who, amount)?;
        Self::set_ledger(s, who, &ledger);
        Ok(())
    }

    fn unbond<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
        ctx: &Context,
    ) -> Result<(), Error> {
        if amount == 0 {
            return Err(Error::ZeroAmount);
        }
        let params = Self::params(s)?;
        let mut ledger = Self::ledger(s, who)?;
        let remaining = ledger
            .bonded
            .checked_sub(amount)
            .ok_or(Error::InsufficientBond { bonded: ledger.bonded, requested: amount })?;
        if Self::is_candidate(s, who)? && remaining < required(params.min_validator_bond) {
            return Err(Error::BelowValidatorMinimum {
                remaining,
                minimum: required(params.min_validator_bond),
            });
        }
        if Self::worker_info(s, who)?.is_some() && remaining < required(params.min_worker_bond) {
            return Err(Error::BelowWorkerMinimum {
                remaining,
                minimum: required(params.min_worker_bond),
            });
        }
        let unlock_at =
            ctx.block_number.checked_add(params.unbonding_delay).ok_or(Error::Overflow)?;
        match ledger.unlocking.last_mut() {
            Some(last) if last.unlock_at == unlock_at => {
                last.amount = last.amount.checked_add(amount).ok_or(Error::Overflow)?;
            }
            _ => {
                if ledger.unlocking.len() >= MAX_UNLOCK_CHUNKS as usize {
                    return Err(Error::TooManyUnlockChunks { max: MAX_UNLOCK_CHUNKS });
                }
                ledger.unlocking.push(UnlockChunk { amount, unlock_at });
            }
        }
        ledger.bonded = remaining;
        Self::set_ledger(s, who, &ledger);
        Ok(())
    }

    fn withdraw_unbonded<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        ctx: &Context,
    ) -> Result<(), Error> {
        let mut ledger = Self::ledger(s, who)?;
        let mut matured: Balance = 0;
        for c in ledger.unlocking.iter().filter(|c| c.unlock_at <= ctx.block_number) {
            matured = matured.checked_add(c.amount).ok_or(Error::Overflow)?;
        }
        if matured == 0 {
            return Err(Error::NothingToWithdraw);
        }
        ledger.unlocking.retain(|c| c.unlock_at > ctx.block_number);
        C::unreserve(s, who, matured)?;
        Self::set_ledger(s, who, &ledger);
        Ok(())
    }

    fn register_validator<S: Storage + ?Sized>(s: &mut S, who: &AccountId) -> Result<(), Error> {
        let params = Self::params(s)?;
        let bonded = Self::ledger(s, who)?.bonded;
        let minimum = required(params.min_validator_bond);
        if bonded < minimum {
            return Err(Error::ValidatorBondTooLow { bonded, minimum });
        }
        let mut candidates = Self::candidates(s)?;
        if candidates.contains(who) {
            return Err(Error::AlreadyValidator);
        }
        if candidates.len() >= MAX_CANDIDATES as usize {
            return Err(Error::TooManyCandidates { max: MAX_CANDIDATES });
        }
        candidates.push(who.clone());
        Self::set_candidates(s, &candidates);
        Ok(())
    }

    fn register_worker<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        ctx: &Context,
    ) -> Result<(), Error> {
        let params = Self::params(s)?;
        let bonded = Self::ledger(s, who)?.bonded;
        let minimum = required(params.min_worker_bond);
        if bonded < minimum {
            return Err(Error::WorkerBondTooLow { bonded, minimum });
        }
        if Self::worker_info(s, who)?.is_some() {
            return Err(Error::AlreadyWorker);
        }
        support::put(s, worker_key(who), &WorkerRegistration { registered_at: ctx.block_number });
        Ok(())
    }

    /// Slashes up to `amount` of `who`'s stake: from `bonded` first, then from unlocking
    /// chunks, latest to mature first. The slashed stake is **burned** (total issuance falls).
    /// An account left below a role's minimum bond loses that role. Returns the amount
    /// actually slashed (less than `amount` when the stake is smaller).
    pub fn slash<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
        _ctx: &Context,
    ) -> Result<Balance, StorageError> {
        let mut ledger = Self::ledger(s, who)?;
        let from_bond = amount.min(ledger.bonded);
        ledger.bonded -= from_bond;
        let mut left = amount - from_bond;
        // Latest to mature first; chunks are pushed in order, but the delay may have changed.
        let mut order: Vec<usize> = (0..ledger.unlocking.len()).collect();
        order.sort_by(|a, b| {
            let (ca, cb) = (&ledger.unlocking[*a], &ledger.unlocking[*b]);
            cb.unlock_at.cmp(&ca.unlock_at).then_with(|| b.cmp(a))
        });
        for i in order {
            if left == 0 {
                break;
            }
            if let Some(chunk) = ledger.unlocking.get_mut(i) {
                let take = left.min(chunk.amount);
                chunk.amount -= take;
                left -= take;
            }
        }
        ledger.unlocking.retain(|c| c.amount > 0);
        let slashed = amount - left;
        if slashed > 0 {
            C::burn_reserved(s, who, slashed).map_err(|e| inconsistent(who, e))?;
            Self::set_ledger(s, who, &ledger);
        }
        let params = Self::params(s)?;
        if ledger.bonded < required(params.min_validator_bond) {
            let mut candidates = Self::candidates(s)?;
            if let Some(pos) = candidates.iter().position(|c| c == who) {
                candidates.remove(pos);
                Self::set_candidates(s, &candidates);
            }
        }
        if ledger.bonded < required(params.min_worker_bond) && Self::worker_info(s, who)?.is_some()
        {
            support::remove(s, worker_key(who));
        }
        Ok(slashed)
    }
}

impl<C: Currency> WorkerRegistry for Pallet<C> {
    fn is_worker<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<bool, StorageError> {
        if Self::worker_info(s, who)?.is_none() {
            return Ok(false);
        }
        let min = required(Self::params(s)?.min_worker_bond);
        Ok(Self::ledger(s, who)?.bonded >= min)
    }

    fn is_validator<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<bool, StorageError> {
        Ok(Self::validator_set(s)?.contains(who))
    }

    /// Each active validator's voting power (its bond in whole tokens, at least 1): the weight
    /// consensus counts, so that a quorum means the same in both.
    fn validator_weights<S: Storage + ?Sized>(
        s: &S,
    ) -> Result<Vec<(AccountId, u64)>, StorageError> {
        Ok(Self::validator_stakes(s)?
            .into_iter()
            .map(|(who, stake)| (who, bitorch_primitives::voting_power(stake)))
            .collect())
    }

    fn stake<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<Balance, StorageError> {
        Ok(Self::ledger(s, who)?.total())
    }

    /// Slashes `percent`% (capped at 100) of `who`'s whole stake, bonded plus unlocking (so
    /// unbonding does not escape a pending slash), rounded down; see [`Pallet::slash`].
    fn slash_percent<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        percent: u8,
        ctx: &Context,
    ) -> Result<Balance, StorageError> {
        let total = Self::ledger(s, who)?.total();
        Self::slash(s, who, support::percent_of(total, percent), ctx)
    }
}
