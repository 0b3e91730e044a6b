//! Errors of the node services.

use crate::pool::PoolError;
use bitorch_primitives::{header::CommitError, AccountId, BlockNumber, Hash};

/// What went wrong in the chain service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transaction pool refused a transaction.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The block is invalid.
    #[error("invalid block: {0}")]
    Block(#[from] bitorch_runtime::error::BlockError),
    /// Database failure.
    #[error(transparent)]
    Storage(#[from] bitorch_storage::Error),
    /// Corrupt state value.
    #[error("corrupt state: {0}")]
    State(#[from] bitorch_pallet_support::StorageError),
    /// The chain spec is invalid.
    #[error(transparent)]
    Spec(#[from] bitorch_chain_spec::Error),
    /// The database holds another chain.
    #[error("the database holds a chain with genesis {stored:?}, but the chain spec gives {spec:?}; use another --base-path or run `bitorch purge-chain`")]
    GenesisMismatch {
        /// In the database.
        stored: Hash,
        /// From the spec.
        spec: Hash,
    },
    /// The database is inconsistent.
    #[error("database is inconsistent: {0}; run `bitorch purge-chain` to start over")]
    Corrupt(String),
    /// The block does not extend the best block.
    #[error("block #{number} (parent {parent:?}) does not extend the best block #{best_number} ({best:?})")]
    NotNextBlock {
        /// Its number.
        number: BlockNumber,
        /// Its parent.
        parent: Hash,
        /// Best number.
        best_number: BlockNumber,
        /// Best hash.
        best: Hash,
    },
    /// The commit certificate names another block.
    #[error("the commit certificate is for another block or height")]
    CommitForOtherBlock,
    /// The certificate does not verify.
    #[error("invalid commit certificate: {0}")]
    Commit(#[from] CommitError),
    /// The author is not a validator.
    #[error("block author {0} is not in the validator set")]
    AuthorNotValidator(AccountId),
    /// State root differs.
    #[error("state root mismatch: header says {header:?}, execution gives {computed:?}")]
    StateRootMismatch {
        /// In the header.
        header: Hash,
        /// Computed.
        computed: Hash,
    },
    /// The service has stopped.
    #[error("the chain service has stopped")]
    Stopped,
    /// The consensus write-ahead log cannot be opened or written.
    #[error(transparent)]
    Wal(#[from] bitorch_consensus::WalError),
    /// Node key problem.
    #[error("invalid validator key: {0}")]
    Key(String),
}
