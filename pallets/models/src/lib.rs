//! The models pallet: the on-chain registry of model manifests.
//!
//! A manifest describes a Llama-family model as the network distributes it: architecture,
//! hyper-parameters, tokenizer hash, and the content-addressed chunks (embeddings, layer
//! ranges, head), each with the Merkle root of its pieces. Workers fetch chunks from peers and
//! verify every piece against these roots; the jobs pallet reads a model's layer count to price
//! work.
//!
//! Rules:
//! - A model's id derives from its content ([`Manifest::id`]): everything in the manifest but
//!   its name, which is a label. Two peers importing the same weights get the same id without
//!   asking each other; another quantization is other chunks, so another id. Registering
//!   content that is already registered fails with [`Error::ModelExists`] (its id is the
//!   answer).
//! - Manifests are validated on registration ([`Manifest::validate`]): names, non-zero
//!   hyper-parameters whose head counts divide, layer chunks that are sorted, non-overlapping
//!   and cover `0..layer_count` exactly, and pieces that a peer can fetch (at most
//!   [`MAX_PIECE_SIZE`] bytes, at most [`MAX_PIECES_PER_CHUNK`] per chunk).
//! - Only the owner may retire a model; a retired model is no longer offered to jobs. Records
//!   are never deleted, so an id is never reused. (A manifest cannot be changed: other
//!   content is another model.)

use bitorch_pallet_support::{self as support, Context, ModelRegistry, Storage, StorageError};
use bitorch_primitives::{blake2_256, AccountId, BlockNumber, Hash, H256};
use parity_scale_codec::{Decode, Encode};

mod error;
pub use error::{Error, HyperField, ManifestError};

#[cfg(test)]
mod tests;

const PALLET: &str = "models";

/// Longest model name in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest architecture name in bytes.
pub const MAX_ARCHITECTURE_LEN: usize = 32;
/// Most layers a model may have.
pub const MAX_LAYERS: u32 = 1_024;
/// Most chunks a manifest may have.
pub const MAX_CHUNKS: usize = 4_096;
/// Most models the registry holds.
pub const MAX_MODELS: u32 = 10_000;

pub use bitorch_primitives::ModelId;

/// Largest piece of a chunk, in bytes: what one piece request answers.
pub const MAX_PIECE_SIZE: u32 = 4 << 20;
/// Most pieces in one chunk (its piece hashes travel in one answer: 2 MiB at most).
pub const MAX_PIECES_PER_CHUNK: u64 = 65_536;

/// Transformer hyper-parameters.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct HyperParams {
    /// Width of the hidden state.
    pub hidden_size: u32,
    /// Width of the MLP.
    pub intermediate_size: u32,
    /// Query heads.
    pub num_attention_heads: u32,
    /// Key/value heads (grouped-query attention).
    pub num_kv_heads: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Maximum context in tokens.
    pub context_length: u32,
    /// Rotary embedding base.
    pub rope_theta: u32,
    /// RMS-norm epsilon times 10^9 (1e-5 is 10_000).
    pub rms_norm_eps_e9: u32,
}

/// What a chunk holds.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ChunkKind {
    /// Token embeddings.
    #[codec(index = 0)]
    Embeddings,
    /// Transformer layers `start..end`.
    #[codec(index = 1)]
    Layers {
        /// First layer.
        start: u32,
        /// One past the last layer.
        end: u32,
    },
    /// Final norm and LM head.
    #[codec(index = 2)]
    Head,
    /// What every stage or the ends need besides their layers: the checkpoint's header
    /// (metadata and tokenizer), embeddings, final norm and head.
    #[codec(index = 3)]
    Shared,
}

/// A content-addressed part of a model.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Chunk {
    /// What it holds.
    pub kind: ChunkKind,
    /// Merkle root of the hashes of its pieces.
    pub root: H256,
    /// Size in bytes.
    pub size: u64,
    /// Size of each piece in bytes (the last may be shorter).
    pub piece_size: u32,
}

/// A model manifest.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Manifest {
    /// Model name, UTF-8, 1..=[`MAX_NAME_LEN`] bytes.
    pub name: Vec<u8>,
    /// Architecture, UTF-8, 1..=[`MAX_ARCHITECTURE_LEN`] bytes (e.g. `llama`).
    pub architecture: Vec<u8>,
    /// Hyper-parameters.
    pub hyper: HyperParams,
    /// Number of transformer layers, 1..=[`MAX_LAYERS`].
    pub layer_count: u32,
    /// Hash of the tokenizer.
    pub tokenizer_hash: H256,
    /// The chunks, 1..=[`MAX_CHUNKS`].
    pub chunks: Vec<Chunk>,
}

impl Manifest {
    /// blake2-256 of the manifest's encoding.
    pub fn hash(&self) -> Hash {
        blake2_256(&self.encode())
    }

    /// The model's id: blake2-256 of everything in the manifest but the name (a label), so
    /// that the same content gets the same id whoever imports it.
    pub fn id(&self) -> ModelId {
        blake2_256(
            &(
                b"bitorch/model",
                &self.architecture,
                &self.hyper,
                self.layer_count,
                &self.tokenizer_hash,
                &self.chunks,
            )
                .encode(),
        )
    }

    /// Checks every rule of a manifest.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(ManifestError::NameLength { len: self.name.len(), max: MAX_NAME_LEN });
        }
        if std::str::from_utf8(&self.name).is_err() {
            return Err(ManifestError::NameNotUtf8);
        }
        if self.architecture.is_empty() || self.architecture.len() > MAX_ARCHITECTURE_LEN {
            return Err(ManifestError::ArchitectureLength {
                len: self.architecture.len(),
                max: MAX_ARCHITECTURE_LEN,
            });
        }
        if std::str::from_utf8(&self.architecture).is_err() {
            return Err(ManifestError::ArchitectureNotUtf8);
        }
        let h = &self.hyper;
        for (value, field) in [
            (h.hidden_size, HyperField::HiddenSize),
            (h.intermediate_size, HyperField::IntermediateSize),
            (h.num_attention_heads, HyperField::NumAttentionHeads),
            (h.num_kv_heads, HyperField::NumKvHeads),
            (h.vocab_size, HyperField::VocabSize),
            (h.context_length, HyperField::ContextLength),
            (h.rope_theta, HyperField::RopeTheta),
            (h.rms_norm_eps_e9, HyperField::RmsNormEpsE9),
        ] {
            if value == 0 {
                return Err(ManifestError::ZeroHyperParameter(field));
            }
        }
        if h.hidden_size % h.num_attention_heads != 0 {
            return Err(ManifestError::HeadsDoNotDivideHidden {
                hidden_size: h.hidden_size,
                heads: h.num_attention_heads,
            });
        }
        if h.num_attention_heads % h.num_kv_heads != 0 {
            return Err(ManifestError::KvHeadsDoNotDivideHeads {
                heads: h.num_attention_heads,
                kv_heads: h.num_kv_heads,
            });
        }
        if self.layer_count == 0 || self.layer_count > MAX_LAYERS {
            return Err(ManifestError::LayerCount {
                layer_count: self.layer_count,
                max: MAX_LAYERS,
            });
        }
        if self.chunks.is_empty() || self.chunks.len() > MAX_CHUNKS {
            return Err(ManifestError::ChunkCount { count: self.chunks.len(), max: MAX_CHUNKS });
        }
        let mut covered = 0u32;
        for (index, chunk) in self.chunks.iter().enumerate() {
            if chunk.size == 0 {
                return Err(ManifestError::ZeroChunkSize { index });
            }
            if chunk.piece_size == 0 {
                return Err(ManifestError::ZeroPieceSize { index });
            }
            if chunk.piece_size > MAX_PIECE_SIZE
                || chunk.size.div_ceil(u64::from(chunk.piece_size)) > MAX_PIECES_PER_CHUNK
            {
                return Err(ManifestError::Pieces {
                    index,
                    piece_size: chunk.piece_size,
                    size: chunk.size,
                });
            }
            if let ChunkKind::Layers { start, end } = chunk.kind {
                if start >= end || end > self.layer_count {
                    return Err(ManifestError::InvalidLayerRange {
                        index,
                        start,
                        end,
                        layer_count: self.layer_count,
                    });
                }
                if start != covered {
                    return Err(ManifestError::LayersNotContiguous {
                        index,
                        start,
                        expected: covered,
                    });
                }
                covered = end;
            }
        }
        if covered != self.layer_count {
            return Err(ManifestError::LayersIncomplete { covered, layer_count: self.layer_count });
        }
        Ok(())
    }
}

/// Whether a model may be used.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ModelStatus {
    /// Offered to jobs.
    #[codec(index = 0)]
    Active,
    /// Withdrawn by its owner.
    #[codec(index = 1)]
    Retired,
}

/// A registered model.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ModelRecord {
    /// The account that registered it.
    pub owner: AccountId,
    /// The current manifest.
    pub manifest: Manifest,
    /// [`Manifest::hash`] of `manifest`.
    pub manifest_hash: Hash,
    /// Active or retired.
    pub status: ModelStatus,
    /// Block of registration.
    #[codec(compact)]
    pub registered_at: BlockNumber,
    /// Block of the last change (registration or retirement).
    #[codec(compact)]
    pub updated_at: BlockNumber,
}

/// Calls of the models pallet.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// Registers a new model owned by the signer.
    #[codec(index = 0)]
    Register {
        /// Its manifest.
        manifest: Manifest,
    },
    // Index 1 was `Update`: a manifest cannot change (its id is its content).
    /// Retires a model the signer owns.
    #[codec(index = 2)]
    Retire {
        /// The model.
        id: ModelId,
    },
}

/// The models pallet.
pub struct Pallet;

fn model_key(id: &ModelId) -> Vec<u8> {
    support::map_key(PALLET, "model", id)
}

fn ids_key() -> Vec<u8> {
    support::value_key(PALLET, "ids")
}

impl Pallet {
    /// The model with this id.
    pub fn model<S: Storage + ?Sized>(
        s: &S,
        id: &ModelId,
    ) -> Result<Option<ModelRecord>, StorageError> {
        support::get(s, &model_key(id))
    }

    /// Ids of all registered models (retired included), in registration order.
    pub fn model_ids<S: Storage + ?Sized>(s: &S) -> Result<Vec<ModelId>, StorageError> {
        support::get_or_default(s, &ids_key())
    }

    /// Dispatches a call signed by `who`.
    pub fn dispatch<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        call: &Call,
        ctx: &Context,
    ) -> Result<(), Error> {
        match call {
            Call::Register { manifest } => {
                Self::register(s, who, manifest.clone(), ctx)?;
                Ok(())
            }
            Call::Retire { id } => {
                let mut record = Self::owned(s, who, id)?;
                if record.status != ModelStatus::Active {
                    return Err(Error::Retired);
                }
                record.status = ModelStatus::Retired;
                record.updated_at = ctx.block_number;
                support::put(s, model_key(id), &record);
                Ok(())
            }
        }
    }

    /// Registers `manifest` for `owner` and returns its id: what the `Register` call does,
    /// also usable at genesis.
    pub fn register<S: Storage + ?Sized>(
        s: &mut S,
        owner: &AccountId,
        manifest: Manifest,
        ctx: &Context,
    ) -> Result<ModelId, Error> {
        manifest.validate()?;
        let id = manifest.id();
        if Self::model(s, &id)?.is_some() {
            return Err(Error::ModelExists(id));
        }
        let mut ids = Self::model_ids(s)?;
        if ids.len() >= MAX_MODELS as usize {
            return Err(Error::TooManyModels { max: MAX_MODELS });
        }
        ids.push(id);
        let record = ModelRecord {
            owner: owner.clone(),
            manifest_hash: manifest.hash(),
            manifest,
            status: ModelStatus::Active,
            registered_at: ctx.block_number,
            updated_at: ctx.block_number,
        };
        support::put(s, model_key(&id), &record);
        support::put(s, ids_key(), &ids);
        Ok(id)
    }

    fn owned<S: Storage + ?Sized>(
        s: &S,
        who: &AccountId,
        id: &ModelId,
    ) -> Result<ModelRecord, Error> {
        let record = Self::model(s, id)?.ok_or(Error::UnknownModel(*id))?;
        if &record.owner != who {
            return Err(Error::NotOwner);
        }
        Ok(record)
    }
}

impl ModelRegistry for Pallet {
    fn active_layer_count<S: Storage + ?Sized>(
        s: &S,
        model: &Hash,
    ) -> Result<Option<u32>, StorageError> {
        Ok(Self::model(s, model)?
            .filter(|r| r.status == ModelStatus::Active)
            .map(|r| r.manifest.layer_count))
    }
}

/// A valid manifest of a small Llama-style model with `layers` layers (valid for
/// 1..=[`MAX_LAYERS`]): an embeddings chunk, one chunk per layer, and a head chunk, with
/// deterministic placeholder roots. For tests and development tooling.
pub fn example_manifest(layers: u32) -> Manifest {
    let root = |tag: &str, i: u32| blake2_256(&(b"bitorch/example-chunk", tag, i).encode());
    let mut chunks = Vec::with_capacity(usize::try_from(layers).unwrap_or(0).saturating_add(2));
    chunks.push(Chunk {
        kind: ChunkKind::Embeddings,
        root: root("embeddings", 0),
        size: 256 * 64 * 4,
        piece_size: 16 * 1024,
    });
    for i in 0..layers {
        chunks.push(Chunk {
            kind: ChunkKind::Layers { start: i, end: i + 1 },
            root: root("layer", i),
            size: 100_000,
            piece_size: 16 * 1024,
        });
    }
    chunks.push(Chunk {
        kind: ChunkKind::Head,
        root: root("head", 0),
        size: 256 * 64 * 4,
        piece_size: 16 * 1024,
    });
    Manifest {
        name: format!("example-{layers}").into_bytes(),
        architecture: b"llama".to_vec(),
        hyper: HyperParams {
            hidden_size: 64,
            intermediate_size: 128,
            num_attention_heads: 4,
            num_kv_heads: 2,
            vocab_size: 256,
            context_length: 512,
            rope_theta: 10_000,
            rms_norm_eps_e9: 10_000,
        },
        layer_count: layers,
        tokenizer_hash: blake2_256(b"bitorch/example-tokenizer"),
        chunks,
    }
}
