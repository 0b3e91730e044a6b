//! Bitorch consensus: Tendermint BFT with instant finality, through the core crates of the
//! Malachite engine (`arc-malachitebft-core-*`, pinned to one exact version), with no I/O.
//!
//! The node talks to consensus only through the [`Consensus`] trait, so the engine can be
//! replaced. Every call takes an input (a message from the network, a timer that fired, a
//! block to propose, a verdict on a peer's block) and returns the [`Action`]s it leads to:
//! broadcast these bytes, arm or disarm a timer, build a block, check a peer's block, import a
//! decided block with its [`Commit`](bitorch_primitives::Commit), report a double vote. The
//! node wires broadcasts to gossip, timers to its clock and decisions to
//! `Chain::import_block`; after importing height `h` it calls [`Consensus::start_height`]
//! with `h + 1` and the validator set of the new state. A node that falls behind imports
//! the missing blocks with their commits (sync) and then calls `start_height` the same way.
//!
//! Pieces:
//! - [`context`]: Bitorch's Malachite `Context`: heights are block numbers, addresses are
//!   sr25519 accounts, a value is a block (hash + SCALE bytes), voting power is stake, the
//!   proposer is round robin by `height + round` over the set sorted by account. A precommit
//!   for a block is signed over exactly `Commit::signing_payload(genesis, height, round,
//!   hash)`, so a decided certificate *is* a `Commit` that `Commit::verify` accepts.
//! - [`wire`]: the versioned SCALE wire format, with a size limit.
//! - [`driver`]: [`MalachiteConsensus`], which owns the engine state and signs with the
//!   validator key.
//! - [`wal`]: the write-ahead log: its entry format and the storage trait.
//!
//! A peer's proposal carries the whole block. The driver checks the proposer's signature (which
//! binds the block hash and the hash of the bytes) and then asks the node to check the block
//! itself ([`Action::CheckValue`]); only blocks the node found valid (or built) are voted for
//! and handed to import. If import of a decided block still fails, the node fetches the block
//! with its commit from peers, as a node that fell behind does.
//!
//! Crash safety: the driver records every input the engine asks to remember in a write-ahead
//! log ([`wal`]: the [`Wal`] trait, SCALE [`WalEntry`]s, an in-memory [`MemoryWal`]; the node
//! keeps it in a file) and makes it durable before any message it signed, or a decision, leaves
//! it. Starting a height the log holds replays it, so a validator restarted within a height
//! sends the same votes again, with their recorded signatures, and never a conflicting one; the
//! simulation crashes and restarts validators at any point and checks that no honest one is
//! ever accused of double voting. A log that is damaged before its end, or whose replay
//! diverges, keeps the validator silent for that height rather than risk a conflicting vote.
//!
//! Double votes and double proposals both become evidence ([`Action::Evidence`],
//! [`Action::DoubleProposal`]). Not yet here: vote
//! extensions (disabled).
//! `Commit::verify` weighs signatures by the same voting power the engine uses
//! ([`bitorch_primitives::voting_power`] of each validator's stake), so a decided commit
//! imports whatever the stakes.

pub mod byzantine;
pub mod context;
pub mod driver;
pub mod error;
pub mod wal;
pub mod wire;

pub use context::{ValidatorSet, Value};
pub use driver::{
    Action, Config, Decision, DoubleProposal, Equivocation, MalachiteConsensus, Timeout,
    TimeoutKind,
};
pub use error::{Error, WalError};
pub use wal::{MemoryWal, Wal, WalEntry};

/// A consensus engine as the node sees it: inputs in, [`Action`]s out, no I/O.
///
/// Errors are returned for undecodable messages (penalise the peer) and for internal engine
/// failures (log them); either way the engine stays usable.
pub trait Consensus {
    /// Starts (or moves on to) `height` with its validator set. Call it once at start, and
    /// after importing each decided block. If the write-ahead log holds entries of `height`
    /// (a restart within the height), they are replayed first; otherwise the log is reset to
    /// `height`.
    fn start_height(&mut self, height: u64, validators: ValidatorSet)
        -> Result<Vec<Action>, Error>;

    /// A consensus message from a peer (the bytes of an [`Action::Broadcast`]).
    fn on_message(&mut self, bytes: &[u8]) -> Result<Vec<Action>, Error>;

    /// A timer armed by [`Action::ScheduleTimeout`] fired.
    fn on_timeout(&mut self, timeout: Timeout) -> Result<Vec<Action>, Error>;

    /// The block this node proposes, answering [`Action::GetValue`].
    fn propose(&mut self, height: u64, round: u32, value: Value) -> Result<Vec<Action>, Error>;

    /// The node's verdict on a peer's block, answering [`Action::CheckValue`].
    fn value_checked(
        &mut self,
        height: u64,
        value: Value,
        valid: bool,
    ) -> Result<Vec<Action>, Error>;

    /// The height being decided.
    fn height(&self) -> u64;

    /// The current round, if the height has started.
    fn round(&self) -> Option<u32>;
}
