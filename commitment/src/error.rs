//! Errors of the commitment crate.

/// Why a commitment, proof or opening was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A position at or past the number of committed leaves.
    #[error("position {position} is outside the commitment ({len} leaves)")]
    PositionOutOfRange {
        /// The position asked for.
        position: u32,
        /// How many leaves were committed.
        len: u32,
    },
    /// An opening with no leaves, or positions not strictly increasing.
    #[error("opening must list distinct positions in increasing order, at least one")]
    BadPositions,
    /// The opening does not cover every position from 0 up to the last one checked; attention
    /// makes a position's output depend on all earlier inputs, so re-execution needs them all.
    #[error("opening must cover positions 0..={last} without gaps to re-execute the stage")]
    NotAPrefix {
        /// The last position of the opening.
        last: u32,
    },
    /// Hidden states of different sizes in one opening.
    #[error("leaf at position {position} has {got} floats in its {which}, expected {expected}")]
    HiddenSize {
        /// The leaf's position.
        position: u32,
        /// "input" or "output".
        which: &'static str,
        /// Its length.
        got: usize,
        /// The length of the first leaf's input.
        expected: usize,
    },
    /// The leaves and proof do not hash to the committed root.
    #[error("Merkle proof does not match the committed root")]
    BadProof,
    /// The re-executing stage failed.
    #[error("re-execution failed: {0}")]
    Reexecution(String),
    /// The re-executed stage returned the wrong number or size of outputs.
    #[error("re-execution returned {got} outputs, expected {expected}")]
    ReexecutionShape {
        /// Outputs returned.
        got: usize,
        /// Outputs expected.
        expected: usize,
    },
    /// A committed output does not follow from its committed inputs.
    #[error(
        "output at position {position} differs from re-execution: relative L2 error {error:e} \
         exceeds tolerance {tolerance:e}"
    )]
    OutputMismatch {
        /// The first mismatching position.
        position: u32,
        /// `||committed - recomputed|| / ||recomputed||` (infinite for NaN).
        error: f64,
        /// The tolerance it exceeded.
        tolerance: f64,
    },
    /// Stage k's output is not bit-identical to stage k+1's input at a position.
    #[error("stage outputs do not chain into the next stage's inputs at position {position}")]
    BrokenChain {
        /// The first position where they differ.
        position: u32,
    },
    /// The logits a leaf holds are not the top of the head's logits for its output.
    #[error("the logits committed at position {position} are not the head's: {error}")]
    Logits {
        /// The leaf's position.
        position: u32,
        /// What is wrong with them.
        error: crate::TopError,
    },
}
