//! Errors of the models pallet.

use bitorch_pallet_support::StorageError;
use std::fmt;

/// A hyper-parameter of a manifest, named in validation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HyperField {
    /// `hidden_size`.
    HiddenSize,
    /// `intermediate_size`.
    IntermediateSize,
    /// `num_attention_heads`.
    NumAttentionHeads,
    /// `num_kv_heads`.
    NumKvHeads,
    /// `vocab_size`.
    VocabSize,
    /// `context_length`.
    ContextLength,
    /// `rope_theta`.
    RopeTheta,
    /// `rms_norm_eps_e9`.
    RmsNormEpsE9,
}

impl fmt::Display for HyperField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HyperField::HiddenSize => "hidden_size",
            HyperField::IntermediateSize => "intermediate_size",
            HyperField::NumAttentionHeads => "num_attention_heads",
            HyperField::NumKvHeads => "num_kv_heads",
            HyperField::VocabSize => "vocab_size",
            HyperField::ContextLength => "context_length",
            HyperField::RopeTheta => "rope_theta",
            HyperField::RmsNormEpsE9 => "rms_norm_eps_e9",
        })
    }
}

/// Why a manifest is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// `name` is empty or longer than the limit.
    #[error("manifest name must be 1 to {max} bytes, got {len}")]
    NameLength {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// `name` is not UTF-8.
    #[error("manifest name is not valid UTF-8")]
    NameNotUtf8,
    /// `architecture` is empty or longer than the limit.
    #[error("manifest architecture must be 1 to {max} bytes, got {len}")]
    ArchitectureLength {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// `architecture` is not UTF-8.
    #[error("manifest architecture is not valid UTF-8")]
    ArchitectureNotUtf8,
    /// A hyper-parameter is zero.
    #[error("hyper-parameter {0} must be greater than zero")]
    ZeroHyperParameter(HyperField),
    /// `num_attention_heads` does not divide `hidden_size`.
    #[error("num_attention_heads ({heads}) must divide hidden_size ({hidden_size})")]
    HeadsDoNotDivideHidden {
        /// hidden_size.
        hidden_size: u32,
        /// num_attention_heads.
        heads: u32,
    },
    /// `num_kv_heads` does not divide `num_attention_heads`.
    #[error("num_kv_heads ({kv_heads}) must divide num_attention_heads ({heads})")]
    KvHeadsDoNotDivideHeads {
        /// num_attention_heads.
        heads: u32,
        /// num_kv_heads.
        kv_heads: u32,
    },
    /// `layer_count` is out of range.
    #[error("layer_count must be 1 to {max}, got {layer_count}")]
    LayerCount {
        /// The value given.
        layer_count: u32,
        /// The maximum.
        max: u32,
    },
    /// `chunks` is empty or longer than the limit.
    #[error("a manifest must have 1 to {max} chunks, got {count}")]
    ChunkCount {
        /// Number of chunks.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// A chunk has `size` zero.
    #[error("chunk {index} has size zero")]
    ZeroChunkSize {
        /// Chunk index.
        index: usize,
    },
    /// A chunk has `piece_size` zero.
    #[error("chunk {index} has piece_size zero")]
    ZeroPieceSize {
        /// Chunk index.
        index: usize,
    },
    /// A chunk's pieces are larger than a peer sends in one answer, or too many.
    #[error("chunk {index} of {size} bytes in pieces of {piece_size}: pieces must be at most {} bytes and at most {} per chunk", crate::MAX_PIECE_SIZE, crate::MAX_PIECES_PER_CHUNK)]
    Pieces {
        /// Chunk index.
        index: usize,
        /// Its piece size.
        piece_size: u32,
        /// Its size.
        size: u64,
    },
    /// A layers chunk with `start >= end` or `end > layer_count`.
    #[error("chunk {index} has layer range {start}..{end}, which is not a non-empty range within 0..{layer_count}")]
    InvalidLayerRange {
        /// Chunk index.
        index: usize,
        /// start.
        start: u32,
        /// end.
        end: u32,
        /// layer_count.
        layer_count: u32,
    },
    /// Layers chunks are out of order, overlap or leave a gap.
    #[error("chunk {index} starts at layer {start}, expected {expected}: layer chunks must be sorted, contiguous and non-overlapping")]
    LayersNotContiguous {
        /// Chunk index.
        index: usize,
        /// Its start.
        start: u32,
        /// Where the previous layer chunk ended.
        expected: u32,
    },
    /// The layers chunks do not reach `layer_count`.
    #[error("layer chunks cover layers 0..{covered}, expected 0..{layer_count}")]
    LayersIncomplete {
        /// End of the last layer chunk (0 if none).
        covered: u32,
        /// layer_count.
        layer_count: u32,
    },
}

/// Why a models call was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The manifest is invalid.
    #[error("invalid manifest: {0}")]
    InvalidManifest(#[from] ManifestError),
    /// A model with this content is already registered (under this id).
    #[error("a model with this content is already registered (id {0:?})")]
    ModelExists(bitorch_primitives::H256),
    /// No model with this id.
    #[error("no model with id {0:?}")]
    UnknownModel(bitorch_primitives::H256),
    /// The signer does not own the model.
    #[error("only the model's owner may change it")]
    NotOwner,
    /// The model is retired.
    #[error("the model is retired and can no longer be changed")]
    Retired,
    /// The registry is full.
    #[error("the model registry is full ({max} models)")]
    TooManyModels {
        /// The maximum.
        max: u32,
    },
    /// Corrupt state.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
