//! Errors of the consensus crate.

/// What can go wrong in consensus: bad configuration, undecodable peer messages, or an
/// internal failure of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A validator set must have at least one member.
    #[error("the validator set is empty; stake at least one validator in the chain spec")]
    EmptyValidatorSet,
    /// A validator with zero voting power.
    #[error("validator {0} has zero voting power")]
    ZeroVotingPower(String),
    /// An account appears twice in a validator set.
    #[error("validator {0} appears twice in the validator set")]
    DuplicateValidator(String),
    /// The sum of voting powers is too large for the engine's threshold arithmetic.
    #[error("the total voting power of the validator set is too large")]
    VotingPowerTooLarge,
    /// A key or signature of the wrong length.
    #[error("a key or signature of {0} bytes; expected 32 (key) or 64 (signature)")]
    BadKeyLength(usize),
    /// A message from a peer is larger than [`crate::wire::MAX_MESSAGE_BYTES`].
    #[error("consensus message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A message from a peer has an unknown wire version.
    #[error("consensus message version {0} is not supported")]
    UnsupportedVersion(u8),
    /// A message from a peer does not decode.
    #[error("undecodable consensus message: {0}")]
    Decode(#[from] parity_scale_codec::Error),
    /// A message from a peer carries a malformed field (e.g. a nil round on a vote).
    #[error("malformed consensus message: {0}")]
    Malformed(&'static str),
    /// A decided certificate could not be turned into a [`bitorch_primitives::Commit`].
    #[error("commit certificate at height {height} has no round")]
    CertificateWithoutRound {
        /// Its height.
        height: u64,
    },
    /// The engine failed while processing an input.
    #[error("consensus engine error: {0}")]
    Engine(String),
    /// The write-ahead log failed or could not be replayed; the engine signs nothing more at
    /// this height.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// What can go wrong with the write-ahead log: the storage behind it, or an entry that does not
/// decode.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading or writing the log failed.
    #[error(
        "write-ahead log I/O failed: {0}; check the disk holding the chain's consensus directory"
    )]
    Io(#[from] std::io::Error),
    /// An entry is larger than [`crate::wal::MAX_ENTRY_BYTES`].
    #[error("write-ahead log entry of {size} bytes exceeds the limit of {limit}")]
    EntryTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The log reached its size limit within one height; nothing more is signed at that
    /// height (the next height starts a new log).
    #[error("write-ahead log is full ({size} bytes, limit {limit}); this validator stops signing until the next height")]
    Full {
        /// Bytes the log would hold with the entry.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry was written by an unknown format version.
    #[error("write-ahead log entry version {0} is not supported; this node is older than the one that wrote the log")]
    UnsupportedVersion(u8),
    /// An entry does not decode.
    #[error("undecodable write-ahead log entry: {0}")]
    Decode(#[from] parity_scale_codec::Error),
    /// An entry decodes but cannot be what the engine recorded (e.g. a nil round on a vote),
    /// or the engine asked to record an input the log does not cover.
    #[error("malformed write-ahead log entry: {0}")]
    Malformed(&'static str),
    /// An entry belongs to another height than the log it is in.
    #[error("write-ahead log entry for height {entry} in the log of height {log}")]
    WrongHeight {
        /// The log's height.
        log: u64,
        /// The entry's height.
        entry: u64,
    },
    /// The stored log's header is damaged, or the file is not a write-ahead log: which height
    /// it records is unknown.
    #[error("the write-ahead log header is damaged or the file is not a write-ahead log; move the file away to start (the validator may then vote again, differently, at the height it was deciding)")]
    BadHeader,
    /// The stored log is damaged before its end (not a torn last record): the entries after the
    /// damage are lost, so replaying the rest could sign a conflicting vote.
    #[error("the write-ahead log of height {height} is corrupt at byte {offset}; this validator sits out that height (the next height starts a new log)")]
    Corrupt {
        /// The height it records.
        height: u64,
        /// Where the damage starts.
        offset: u64,
    },
}
