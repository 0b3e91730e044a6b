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
}
