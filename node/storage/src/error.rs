//! Storage errors.

use std::path::PathBuf;

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error(
        "cannot open the database at {path}: {reason} (is another node using this --base-path?)"
    )]
    Open {
        /// Where.
        path: PathBuf,
        /// RocksDB's reason.
        reason: String,
    },
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A column family is missing.
    #[error("database column '{0}' is missing")]
    MissingColumn(&'static str),
    /// A stored value does not decode.
    #[error("corrupt value in column '{column}': {reason}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// Why.
        reason: String,
    },
    /// RocksDB failed.
    #[error("database error: {0}")]
    Rocks(#[from] rocksdb::Error),
}
