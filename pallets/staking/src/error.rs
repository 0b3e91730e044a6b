//! Errors of the staking pallet.

use bitorch_pallet_support::{CurrencyError, StorageError};
use bitorch_primitives::Balance;

/// Why a staking call was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A bond or unbond of zero.
    #[error("amount must be greater than zero")]
    ZeroAmount,
    /// Unbonding more than is bonded.
    #[error("cannot unbond {requested}: only {bonded} is bonded (base units)")]
    InsufficientBond {
        /// Currently bonded.
        bonded: Balance,
        /// Requested.
        requested: Balance,
    },
    /// Unbonding would leave a validator candidate below the validator minimum.
    #[error(
        "unbonding would leave {remaining} bonded, below the validator minimum of {minimum}; \
         deregister as a validator first"
    )]
    BelowValidatorMinimum {
        /// Bond that would remain.
        remaining: Balance,
        /// The minimum validator bond.
        minimum: Balance,
    },
    /// Unbonding would leave a worker below the worker minimum.
    #[error(
        "unbonding would leave {remaining} bonded, below the worker minimum of {minimum}; \
         deregister as a worker first"
    )]
    BelowWorkerMinimum {
        /// Bond that would remain.
        remaining: Balance,
        /// The minimum worker bond.
        minimum: Balance,
    },
    /// The ledger already has the maximum number of unlocking chunks.
    #[error("too many pending unbondings (at most {max}); withdraw matured ones or wait")]
    TooManyUnlockChunks {
        /// The maximum.
        max: u32,
    },
    /// No unlocking chunk has matured yet.
    #[error("nothing to withdraw: no unbonded amount has passed its unbonding delay yet")]
    NothingToWithdraw,
    /// The bond is below the validator minimum.
    #[error("bonded {bonded} is below the validator minimum of {minimum}; bond more first")]
    ValidatorBondTooLow {
        /// Currently bonded.
        bonded: Balance,
        /// Required.
        minimum: Balance,
    },
    /// The bond is below the worker minimum.
    #[error("bonded {bonded} is below the worker minimum of {minimum}; bond more first")]
    WorkerBondTooLow {
        /// Currently bonded.
        bonded: Balance,
        /// Required.
        minimum: Balance,
    },
    /// Already a validator candidate.
    #[error("the account is already a validator candidate")]
    AlreadyValidator,
    /// Already a worker.
    #[error("the account is already a registered worker")]
    AlreadyWorker,
    /// Not a validator candidate.
    #[error("the account is not a validator candidate")]
    NotValidator,
    /// Not a worker.
    #[error("the account is not a registered worker")]
    NotWorker,
    /// The candidate list is full.
    #[error("the validator candidate list is full ({max} candidates)")]
    TooManyCandidates {
        /// The maximum.
        max: u32,
    },
    /// The evidence does not show two valid conflicting votes by one validator.
    #[error("invalid equivocation evidence: it must be two votes of one kind by one validator at one height and round, for different values, both validly signed for this chain")]
    InvalidEvidence,
    /// The offender has no stake to slash.
    #[error("the offender has no stake")]
    OffenderNotStaked,
    /// This equivocation was already punished.
    #[error("this equivocation was already punished: the offender was slashed for double votes up to the block that jailed it")]
    AlreadyReported,
    /// An amount overflowed.
    #[error("arithmetic overflow in staking amounts")]
    Overflow,
    /// The currency operation failed.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Currency(e.into())
    }
}
