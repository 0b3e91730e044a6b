//! Bitorch's inference engine: Llama-family transformers run as layer-sharded stages on candle.
//!
//! - [`Checkpoint`] opens a GGUF file (quantized) or a safetensors directory with
//!   `config.json` (f32/f16/bf16) and reads nothing but the tensor index.
//! - [`Stage`] loads layers `[start, end)` of it, only those tensors (plus the embedding for the
//!   first stage, the final norm and LM head for the last), and runs them with a per-session
//!   [`Cache`]: `forward(&self, x, pos, &mut cache)`. Its numerics are those of
//!   candle-transformers' `quantized_llama` / `llama`, so any split gives the same tokens.
//! - GGUF weights run four ways ([`GgufWeights`]): candle's quantized kernels (bit-identical to
//!   `quantized_llama`, but they quantize activations to 8 bits, which derails SmolLM2-135M's
//!   answers), dequantized to f32 at load, our Q4_1 kernel with f32 activations (`q4_1.rs`), or,
//!   by default, our integer kernels for Q4_1 and Q8_0 against 16-bit activations (`q8.rs`,
//!   batch-invariant, about three times the f32 path's generation speed).
//! - [`Pipeline`] chains stages through hidden-state tensors, and [`Session`] holds a
//!   generation's caches and, optionally, each stage's activation-commitment trace
//!   ([`bitorch_commitment`]); [`Stage`] implements [`bitorch_commitment::Reexecute`] so an
//!   auditor can check a committed run.
//! - [`Tokenizer`] is rebuilt from GGUF metadata (or read from `tokenizer.json`), with the
//!   ChatML chat template, UTF-8-safe streaming ([`TextStream`]) and stop strings.
//! - [`Engine`] ties it together for the CLI: load, then [`Engine::generate`] with a streaming
//!   callback and [`SamplingParams`] (greedy, temperature, top-k, top-p, repetition penalty,
//!   seed).
//!
//! CPU is the default device; the `cuda` feature builds candle's CUDA backend
//! ([`parse_device`]`("cuda")`). No threads or channels of its own: candle parallelizes matmuls
//! on its own thread pool (`RAYON_NUM_THREADS` bounds it).

mod attention;
mod commit;
mod pool;
mod q4_1;
mod q8;

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod model;
pub mod pipeline;
pub mod sampling;
pub mod tokenizer;

pub use checkpoint::{ByteSource, Checkpoint, GgufCheckpoint, ReadSeek};
pub use config::Config;
pub use error::{Error, Result};
pub use model::{split_layers, Cache, Flavor, GgufWeights, Kernel, LoadOptions, Stage};
pub use pipeline::{
    parse_device, Engine, EngineOptions, FinishReason, GenerateRequest, Generation, Pipeline,
    Session,
};
pub use pool::{prewake, spawn_engine_thread, with_threads};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{ChatMessage, ChatTemplate, StopStrings, TextStream, Tokenizer};

pub use bitorch_commitment as commitment;
pub use candle_core::{DType, Device};
