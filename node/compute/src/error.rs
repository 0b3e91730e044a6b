//! Errors of the compute crate: decoding wire messages, planning routes, transports, and a
//! gateway's generation.

use crate::protocol::StageError;
use parity_scale_codec::{Decode, Encode};
use std::ops::Range;

/// Why bytes from a peer are not a valid stage message. Sent back on the wire inside
/// [`StageError::Malformed`], so it is SCALE-encodable too.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    #[codec(index = 0)]
    Empty,
    /// Over the size limit; nothing was parsed.
    #[error("message of {bytes} bytes exceeds the limit of {max}")]
    #[codec(index = 1)]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A protocol version we do not speak.
    #[error("protocol version {got} is not supported (this node speaks {supported}); upgrade the older peer")]
    #[codec(index = 2)]
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
        /// The version we speak.
        supported: u8,
    },
    /// Not a valid SCALE encoding of a message (unknown variant, truncated, trailing bytes, a
    /// float tensor whose bytes do not match its shape, or nested too deep).
    #[error("invalid encoding")]
    #[codec(index = 3)]
    Invalid,
    /// An activation with no positions.
    #[error("activation carries no positions")]
    #[codec(index = 4)]
    NoPositions,
    /// An activation with more positions than one message may carry.
    #[error("activation carries {got} positions, more than the {max} one message may carry")]
    #[codec(index = 5)]
    TooManyPositions {
        /// Positions carried.
        got: u32,
        /// The limit.
        max: u32,
    },
    /// More logits for one position than a last stage returns and commits to.
    #[error("{got} logits for one position, more than {max}")]
    #[codec(index = 6)]
    TooManyLogits {
        /// Logits carried.
        got: u32,
        /// The limit ([`bitorch_commitment::TOP_LOGITS`]).
        max: u32,
    },
    /// An opening whose inputs, outputs and logits do not have the same number of rows (or
    /// inputs and outputs not the same width).
    #[error("an opening's inputs, outputs and logits disagree in shape")]
    #[codec(index = 7)]
    OpeningShape,
}

/// Why no route covers a model's layers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// Some layers are served by no usable worker (none announced, or all banned, busy or
    /// without capacity).
    #[error(
        "no available worker serves layers {}; start a worker for them (--layers) or wait for bans to expire",
        fmt_ranges(missing)
    )]
    MissingLayers {
        /// The uncovered layer ranges, in order.
        missing: Vec<Range<u32>>,
    },
    /// Every layer is served, but no chain of workers' ranges meets end to end.
    #[error(
        "workers cover every layer, but no chain of their ranges meets at layer {stuck_at} \
         (stages must start where the previous one ends)"
    )]
    NoChain {
        /// The furthest layer boundary a chain from layer 0 reaches.
        stuck_at: u32,
    },
    /// A model with no layers.
    #[error("the model has no layers")]
    NoLayers,
    /// Workers cover the model, but none of their routes is within the request's price.
    #[error(
        "no route at or below {} BTR per layer-token: the cheapest route costs {} BTR per layer-token",
        bitorch_primitives::format_balance(*cap),
        bitorch_primitives::format_balance(*cheapest)
    )]
    TooExpensive {
        /// The most the request pays per layer per token.
        cap: bitorch_primitives::Balance,
        /// The lowest price at which a route exists.
        cheapest: bitorch_primitives::Balance,
    },
}

fn fmt_ranges(rs: &[Range<u32>]) -> String {
    rs.iter().map(|r| format!("{}..{}", r.start, r.end)).collect::<Vec<_>>().join(", ")
}

/// Why a transport could not deliver a request or its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The worker cannot be reached (not connected, dial failed, connection closed).
    #[error("worker unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("worker did not answer in time")]
    Timeout,
    /// The answer did not decode.
    #[error("worker sent an invalid answer: {0}")]
    BadResponse(#[from] DecodeError),
}

/// Why a gateway's generation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No route covers the model's layers.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Workers kept failing; the last failure is given.
    #[error("gave up after {failovers} failovers; last failure: {last}")]
    TooManyFailures {
        /// Failovers tried.
        failovers: u32,
        /// The last failure.
        last: String,
    },
    /// An empty prompt.
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    /// The prompt does not fit the route's context.
    #[error("prompt has {tokens} tokens but the model's context holds {limit}; shorten it")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context length.
        limit: usize,
    },
    /// Invalid sampling parameters, or sampling failed.
    #[cfg(feature = "engine")]
    #[error("sampling: {0}")]
    Sampling(#[from] bitorch_inference::Error),
}

/// Why one stage of a route failed a request; the gateway bans the worker and fails over.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StageFailure {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The worker is busy.
    #[error("worker is busy")]
    Busy,
    /// The worker rejected the request.
    #[error("worker rejected the request: {0}")]
    Rejected(StageError),
    /// The worker answered something that does not fit the request.
    #[error("worker answered out of protocol: {0}")]
    Unexpected(String),
}

/// The worker's thread has stopped (its handles can no longer reach it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the worker has stopped")]
pub struct WorkerStopped;
