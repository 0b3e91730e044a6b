//! Errors of the primitives crate.

/// What went wrong parsing or checking a primitive value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A secret URI, mnemonic or seed that could not be turned into a key.
    #[error("invalid secret URI or phrase: {0}")]
    InvalidSecret(String),
    /// Not an SS58 address or a 0x-prefixed 32-byte hex public key.
    #[error("invalid account '{0}': expected an SS58 address (prefix 42) or 0x followed by 64 hex digits")]
    InvalidAccount(String),
    /// An SS58 address for another network.
    #[error("address '{address}' has SS58 prefix {prefix}, expected 42")]
    WrongSs58Prefix {
        /// The address given.
        address: String,
        /// Its prefix.
        prefix: u16,
    },
    /// An amount that is not a non-negative decimal with at most 12 fractional digits.
    #[error("invalid amount '{0}': expected whole tokens such as 10 or 1.5 (at most 12 decimals)")]
    InvalidAmount(String),
    /// Hex that does not decode.
    #[error("invalid hex: {0}")]
    InvalidHex(String),
}
