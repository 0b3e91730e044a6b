//! Errors of the inference crate.

use std::path::PathBuf;

/// What went wrong loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file that cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A GGUF file that does not parse (truncated, corrupt, not GGUF).
    #[error("{path} is not a valid GGUF file ({reason}); re-download it (scripts/fetch-model.sh for the test model)")]
    BadGguf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A safetensors file whose header does not parse or does not match its size.
    #[error("{path} is not a valid safetensors file: {reason}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A weight the stage needs is not in the checkpoint.
    #[error("tensor '{name}' is missing from the checkpoint")]
    MissingTensor {
        /// Checkpoint name of the tensor.
        name: String,
    },
    /// A weight with an unexpected shape.
    #[error("tensor '{name}' has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// Checkpoint name of the tensor.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A safetensors dtype we do not load.
    #[error("tensor '{name}' has dtype {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype {
        /// Checkpoint name of the tensor.
        name: String,
        /// The dtype as written in the file.
        dtype: String,
    },
    /// A required metadata key or config field is missing or invalid.
    #[error("invalid model config: {0}")]
    BadConfig(String),
    /// A stage range that is empty or goes past the model's layers.
    #[error("stage layers {start}..{end} are not within the model's {num_layers} layers")]
    LayerRange {
        /// First layer of the stage.
        start: usize,
        /// One past its last layer.
        end: usize,
        /// Layers in the model.
        num_layers: usize,
    },
    /// More stages asked for than the model has layers.
    #[error("cannot split {num_layers} layers into {stages} stages (1..={num_layers})")]
    StageCount {
        /// Stages asked for.
        stages: usize,
        /// Layers in the model.
        num_layers: usize,
    },
    /// The prompt does not fit in the context window.
    #[error("prompt has {tokens} tokens but the model's context holds {limit}; shorten it")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context length.
        limit: usize,
    },
    /// A forward pass that would go past the context window.
    #[error("positions {pos}..{end} exceed the context length {limit}")]
    ContextFull {
        /// First position of the pass.
        pos: usize,
        /// One past its last position.
        end: usize,
        /// Context length.
        limit: usize,
    },
    /// A stage was given the wrong kind of input (token ids vs hidden states) or cache.
    #[error("stage input mismatch: {0}")]
    StageInput(String),
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Invalid sampling parameters.
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    /// An error from candle while computing.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The device is not available in this build.
    #[error("device {0} is not available (build with --features cuda for NVIDIA GPUs)")]
    Device(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
