//! Chain spec errors.

use std::path::PathBuf;

/// Why a chain spec could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read chain spec {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("chain spec is {size} bytes; the maximum is {max}")]
    TooLarge {
        /// Size.
        size: u64,
        /// Limit.
        max: u64,
    },
    /// Not valid JSON for a chain spec.
    #[error("invalid chain spec JSON: {0}")]
    Json(String),
    /// A value is invalid.
    #[error("invalid chain spec: {0}")]
    Invalid(String),
    /// The genesis section is invalid.
    #[error("invalid chain spec genesis: {0}")]
    Genesis(#[from] bitorch_runtime::GenesisError),
}
