//! Errors of the balances pallet.

use bitorch_pallet_support::{CurrencyError, StorageError};

/// Why a balances call was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A transfer of zero.
    #[error("transfer amount must be greater than zero")]
    ZeroAmount,
    /// A transfer to oneself.
    #[error("cannot transfer to the sending account itself")]
    TransferToSelf,
    /// The currency operation failed.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Currency(e.into())
    }
}
