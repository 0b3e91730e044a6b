//! Errors of the runtime: why a transaction or a block is rejected.

use bitorch_pallet_support::{CurrencyError, StorageError};
use bitorch_primitives::{BlockNumber, Nonce};

/// A call's dispatch failed; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// From the balances pallet.
    #[error("balances: {0}")]
    Balances(#[from] crate::balances::Error),
    /// From the staking pallet.
    #[error("staking: {0}")]
    Staking(#[from] crate::staking::Error),
    /// From the models pallet.
    #[error("models: {0}")]
    Models(#[from] crate::models::Error),
    /// From the jobs pallet.
    #[error("jobs: {0}")]
    Jobs(#[from] crate::jobs::Error),
}

/// Why a transaction is invalid; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// Larger than the maximum extrinsic size.
    #[error("transaction is {size} bytes; the maximum is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid SCALE-encoded extrinsic.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// Unknown format version.
    #[error("unsupported transaction version {0}; this node accepts version 1")]
    UnsupportedVersion(u8),
    /// The signature does not verify (wrong key, tampered, or signed for another chain).
    #[error("bad signature: not signed by the sender for this chain (genesis), or tampered with")]
    BadSignature,
    /// Nonce already used.
    #[error("stale nonce {nonce}: the account's next nonce is {expected}")]
    StaleNonce {
        /// Given.
        nonce: Nonce,
        /// Expected.
        expected: Nonce,
    },
    /// Nonce ahead of the account's next nonce.
    #[error("future nonce {nonce}: the account's next nonce is {expected}")]
    FutureNonce {
        /// Given.
        nonce: Nonce,
        /// Expected.
        expected: Nonce,
    },
    /// Nonce too far ahead to queue.
    #[error("nonce {nonce} is too far in the future: the account's next nonce is {expected}, at most {max_gap} ahead is queued")]
    NonceTooFarAhead {
        /// Given.
        nonce: Nonce,
        /// Expected.
        expected: Nonce,
        /// Allowed gap.
        max_gap: Nonce,
    },
    /// Past its `valid_until`.
    #[error("transaction expired: valid until block {valid_until}, but the next block is {next}")]
    Expired {
        /// Its expiry.
        valid_until: BlockNumber,
        /// The block it would be in.
        next: BlockNumber,
    },
    /// Cannot pay the fee.
    #[error("cannot pay the fee of {fee} base units: {cause}")]
    CannotPayFee {
        /// The fee.
        fee: u128,
        /// Why.
        cause: CurrencyError,
    },
    /// The call itself failed.
    #[error("{0}")]
    Dispatch(#[from] DispatchError),
    /// Corrupt state.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a block is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// An extrinsic in it is invalid.
    #[error("extrinsic {index} is invalid: {error}")]
    Extrinsic {
        /// Its position.
        index: usize,
        /// Why.
        error: TransactionError,
    },
    /// The extrinsics root in the header does not match the body.
    #[error("extrinsics root mismatch")]
    ExtrinsicsRoot,
    /// Corrupt state.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
