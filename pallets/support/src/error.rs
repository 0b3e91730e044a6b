//! Errors shared by all pallets.

/// The state holds a value that does not decode: a bug or corrupted storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A stored value did not decode as its type.
    #[error("corrupt state value at key '{key}'")]
    Corrupt {
        /// Printable prefix of the key.
        key: String,
    },
}

/// Why a currency operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// Not enough free balance.
    #[error("insufficient free balance: have {have}, need {need} (base units)")]
    InsufficientBalance {
        /// Free balance.
        have: u128,
        /// Required.
        need: u128,
    },
    /// Not enough reserved balance.
    #[error("insufficient reserved balance: have {have}, need {need} (base units)")]
    InsufficientReserved {
        /// Reserved balance.
        have: u128,
        /// Required.
        need: u128,
    },
    /// The operation would leave an account with a non-zero total below the minimum balance.
    #[error("the account would fall below the minimum balance of {minimum} base units")]
    BelowMinimumBalance {
        /// The existential deposit.
        minimum: u128,
    },
    /// Crediting would overflow.
    #[error("balance overflow")]
    Overflow,
    /// Corrupt state.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
