//! A stage of a Llama-family transformer: layers `[start, end)` of one model.
//!
//! Llama (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models"):
//! pre-norm decoder blocks with RMSNorm, rotary position embeddings, grouped-query attention
//! and a SwiGLU MLP. The first stage also embeds tokens, the last also applies the final norm
//! and the LM head. Weights come from GGUF (any quantization candle supports: Q4_0, Q4_1, Q5_*,
//! Q8_0, the K-quants, F16, F32) or from safetensors (F32, F16, BF16).
//!
//! The computation is, operation for operation, that of candle-transformers'
//! `models::quantized_llama` for GGUF and `models::llama` for safetensors, so that a model split
//! into any number of stages produces bit-identical hidden states and the same tokens as those
//! single-process references (the two differ in small ways, such as which tensors are made
//! contiguous and whether attention runs in f32, which change rounding, so each flavor is kept).
//! Weights are immutable and shared; the KV cache of a session is a separate [`Cache`].

use crate::{
    checkpoint::{GgufCheckpoint, SafetensorsCheckpoint},
    Checkpoint, Config, Error, Result,
};
use candle_core::{
    quantized::{GgmlDType, QMatMul, QTensor},
    DType, Device, IndexOp, Module, Tensor,
};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm as QRmsNorm;
use std::ops::Range;

/// Which reference implementation's numerics a stage follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// GGUF weights, as in `candle_transformers::models::quantized_llama`.
    Quantized,
    /// Safetensors weights, as in `candle_transformers::models::llama`.
    Dense,
}

#[derive(Debug, Clone)]
enum Linear {
    Quantized(QMatMul),
    Dense(candle_nn::Linear),
    Q41(std::sync::Arc<crate::q4_1::Q41Matrix>),
    Int16(std::sync::Arc<crate::q8::Q8Matrix>),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Quantized(m) => m.forward(x),
            Self::Dense(l) => l.forward(x),
            Self::Q41(m) => m.forward(x),
            Self::Int16(m) => m.forward(x),
        }
    }

    /// Each of `ls` applied to `x`: one job for all of them when they are integer kernels.
    fn forward_many<const N: usize>(
        ls: [&Self; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let ints: Vec<_> = ls
            .iter()
            .filter_map(|l| match l {
                Self::Int16(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        let out = if ints.len() == N {
            crate::q8::forward_many(&ints, x)?
        } else {
            ls.iter().map(|l| l.forward(x)).collect::<candle_core::Result<Vec<_>>>()?
        };
        out.try_into().map_err(|_| candle_core::Error::Msg("forward_many: wrong count".into()))
    }
}

/// How GGUF weights are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufWeights {
    /// candle's quantized kernels, which quantize activations to 8 bits first: bit-identical to
    /// candle-transformers' `quantized_llama`.
    #[default]
    Candle,
    /// Weights dequantized to f32 at load, f32 matmuls: bit-identical to `quantized_llama` run
    /// with `CANDLE_DEQUANTIZE_ALL=1`. Four to eight times the memory.
    Dequantized,
    /// Our Q4_1 kernel with f32 activations for Q4_1 tensors (the same products as
    /// `Dequantized`, summed in another order, with a sixth of its memory), and dequantized f32
    /// for every other tensor type. Batch-invariant. On a plain x86-64 build it runs at about
    /// half the speed of candle's kernels: for memory-bound deployments, not for speed yet.
    Compact,
    /// Our integer kernels for Q4_1 and Q8_0 tensors: activations quantized to 16 bits per
    /// block of 32 (8 bits, as llama.cpp does, derail SmolLM2's chat answers), exact integer
    /// block sums (AVX2 where the CPU has it, the same bits without), and dequantized f32 for
    /// other tensor types. Batch-invariant and thread-count-invariant; the tied output head
    /// stays in Q8_0.
    Int16,
}

#[derive(Debug, Clone)]
enum Norm {
    Quantized(QRmsNorm),
    Dense(candle_nn::RmsNorm),
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Quantized(n) => n.forward(x),
            Self::Dense(n) => n.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Norm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Norm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Which attention implementation a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    /// candle's, bit-identical to the candle-transformers reference models (on candle's kernels
    /// and f32 weights; stages on our integer kernels always use the batch-invariant one).
    #[default]
    Reference,
    /// Fixed-order loops whose result for a position does not depend on how positions are
    /// batched: decoding and an auditor's batched re-execution agree to the bit. Used for
    /// committed runs (see `src/attention.rs` for why).
    BatchInvariant,
}

/// One layer's keys and values of every position seen so far.
#[derive(Debug, Clone)]
enum Kv {
    /// GGUF models (f32): each position's rows appended in place, laid out
    /// `(position, kv_head, head_dim)`, so a decode step copies one position, not the cache.
    F32 { k: std::sync::Arc<Vec<f32>>, v: std::sync::Arc<Vec<f32>> },
    /// Safetensors models: `(1, kv_heads, positions, head_dim)` in the compute dtype.
    Tensors(Tensor, Tensor),
}

/// Per-session state of one stage: the keys and values of every position seen so far, for each
/// of the stage's layers.
#[derive(Debug, Clone)]
pub struct Cache {
    kvs: Vec<Option<Kv>>,
    len: usize,
    kernel: Kernel,
}

impl Cache {
    /// Number of positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position was processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The attention kernel this session uses.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Forgets everything (a new session can reuse the cache).
    pub fn clear(&mut self) {
        self.kvs.iter_mut().for_each(|kv| *kv = None);
        self.len = 0;
    }
}

/// Layers `[start, end)` of a Llama-family model, with the embedding if `start == 0` and the
/// final norm and LM head if `end` is the last layer.
#[derive(Debug, Clone)]
pub struct Stage {
    config: Config,
    layers: Range<usize>,
    flavor: Flavor,
    dtype: DType,
    device: Device,
    embed: Option<Embedding>,
    blocks: Vec<Block>,
    head: Option<(Norm, Linear)>,
    cos: Tensor,
    sin: Tensor,
    /// Every matrix runs on our integer kernels, which split their work themselves (so the
    /// step runs on a one-thread rayon pool, see [`on_pool`]).
    own_kernels: bool,
}

/// How to load a stage's weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype of safetensors models (GGUF models always compute in f32).
    pub dtype: DType,
    /// Where to run.
    pub device: Device,
    /// How GGUF weights are multiplied. candle's quantized kernels (the default) quantize
    /// activations to 8 bits, noisy enough to derail SmolLM2-135M's answers; `Dequantized` and
    /// `Compact` keep activations in f32, `Int16` quantizes them to 16 bits per block.
    pub gguf: GgufWeights,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, gguf: GgufWeights::Candle }
    }
}

impl LoadOptions {
    /// CPU, native quantized weights, safetensors computed in `dtype`.
    pub fn new(dtype: DType) -> Self {
        Self { dtype, ..Self::default() }
    }
}

/// Splits `num_layers` layers into `stages` contiguous ranges, as even as possible (earlier
/// stages get one more layer when it does not divide).
pub fn split_layers(num_layers: usize, stages: usize) -> Result<Vec<Range<usize>>> {
    if stages == 0 || stages > num_layers {
        return Err(Error::StageCount { stages, num_layers });
    }
    let (base, extra) = (num_layers / stages, num_layers % stages);
    let mut start = 0;
    Ok((0..stages)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect())
}

impl Stage {
    /// Loads the layers `layers` of a checkpoint (and the embedding / head if the range starts at
    /// 0 / ends at the last layer). Only those tensors are read.
    pub fn load(ckpt: &Checkpoint, layers: Range<usize>, options: &LoadOptions) -> Result<Self> {
        let (dtype, device) = (options.dtype, &options.device);
        let cfg = ckpt.config();
        if layers.start >= layers.end || layers.end > cfg.num_layers {
            return Err(Error::LayerRange {
                start: layers.start,
                end: layers.end,
                num_layers: cfg.num_layers,
            });
        }
        match ckpt {
            Checkpoint::Gguf(c) => Self::load_gguf(c, layers, device, options.gguf),
            Checkpoint::Safetensors(c) => Self::load_safetensors(c, layers, dtype, device),
        }
    }

    fn load_gguf(
        c: &GgufCheckpoint,
        layers: Range<usize>,
        device: &Device,
        mode: GgufWeights,
    ) -> Result<Self> {
        let cfg = &c.config;
        let mut r = c.reader()?;
        let (h, q, kv, i) = dims(cfg);
        let is_last = layers.end == cfg.num_layers;
        let qlin = |t: QTensor| -> Result<Linear> {
            Ok(match mode {
                GgufWeights::Candle => Linear::Quantized(QMatMul::from_qtensor(t)?),
                GgufWeights::Compact if t.dtype() == GgmlDType::Q4_1 && device.is_cpu() => {
                    Linear::Q41(std::sync::Arc::new(crate::q4_1::Q41Matrix::from_qtensor(&t)?))
                }
                GgufWeights::Int16 if device.is_cpu() => {
                    match crate::q8::Q8Matrix::from_qtensor(&t)? {
                        Some(m) => Linear::Int16(std::sync::Arc::new(m)),
                        None => Linear::Quantized(QMatMul::Tensor(t.dequantize(device)?)),
                    }
                }
                _ => Linear::Quantized(QMatMul::Tensor(t.dequantize(device)?)),
            })
        };
        let qnorm = |t| -> Result<Norm> {
            Ok(Norm::Quantized(QRmsNorm::from_qtensor(t, cfg.rms_norm_eps)?))
        };
        let mut embed_q = None;
        let embed = if layers.start == 0 {
            let t = c.qtensor(&mut r, "token_embd.weight", &[cfg.vocab_size, h], device)?;
            let e = Embedding::new(t.dequantize(device)?, h);
            embed_q = Some(t);
            Some(e)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers.len());
        for l in layers.clone() {
            let mut get = |name: &str, shape: &[usize]| {
                c.qtensor(&mut r, &format!("blk.{l}.{name}.weight"), shape, device)
            };
            blocks.push(Block {
                attn_norm: qnorm(get("attn_norm", &[h])?)?,
                wq: qlin(get("attn_q", &[q, h])?)?,
                wk: qlin(get("attn_k", &[kv, h])?)?,
                wv: qlin(get("attn_v", &[kv, h])?)?,
                wo: qlin(get("attn_output", &[h, q])?)?,
                ffn_norm: qnorm(get("ffn_norm", &[h])?)?,
                gate: qlin(get("ffn_gate", &[i, h])?)?,
                up: qlin(get("ffn_up", &[i, h])?)?,
                down: qlin(get("ffn_down", &[h, i])?)?,
            });
        }
        let head = if is_last {
            let norm = qnorm(c.qtensor(&mut r, "output_norm.weight", &[h], device)?)?;
            let out = if c.has("output.weight") {
                qlin(c.qtensor(&mut r, "output.weight", &[cfg.vocab_size, h], device)?)?
            } else {
                match (embed_q, &embed) {
                    // Tied and both ends here: the head multiplies by the very f32 matrix the
                    // embedding holds (the same values a second dequantization would give)
                    // instead of a second copy of the largest tensor (49,152 × 576 here).
                    (Some(_), Some(e)) if matches!(mode, GgufWeights::Dequantized) => {
                        Linear::Quantized(QMatMul::Tensor(e.embeddings().clone()))
                    }
                    (Some(t), _) => qlin(t)?,
                    (None, _) => qlin(c.qtensor(
                        &mut r,
                        "token_embd.weight",
                        &[cfg.vocab_size, h],
                        device,
                    )?)?,
                }
            };
            Some((norm, out))
        } else {
            None
        };
        let (cos, sin) = rope_tables(cfg, DType::F32, device)?;
        Ok(Self {
            config: cfg.clone(),
            layers,
            flavor: Flavor::Quantized,
            dtype: DType::F32,
            device: device.clone(),
            embed,
            blocks,
            head,
            cos,
            sin,
            own_kernels: false,
        }
        .with_kernels_checked())
    }

    fn load_safetensors(
        c: &SafetensorsCheckpoint,
        layers: Range<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cfg = &c.config;
        let (h, q, kv, i) = dims(cfg);
        let get = |name: &str, shape: &[usize]| c.tensor(name, shape, dtype, device);
        let lin = |name: &str, shape: &[usize]| -> Result<Linear> {
            Ok(Linear::Dense(candle_nn::Linear::new(get(name, shape)?, None)))
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm::Dense(candle_nn::RmsNorm::new(get(name, &[h])?, cfg.rms_norm_eps)))
        };
        let is_last = layers.end == cfg.num_layers;
        let embed = if layers.start == 0 {
            Some(Embedding::new(get("model.embed_tokens.weight", &[cfg.vocab_size, h])?, h))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers.len());
        for l in layers.clone() {
            let p = format!("model.layers.{l}");
            blocks.push(Block {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"))?,
                wq: lin(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                wk: lin(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                wv: lin(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                wo: lin(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                ffn_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: lin(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?,
                up: lin(&format!("{p}.mlp.up_proj.weight"), &[i, h])?,
                down: lin(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
            });
        }
        let head = if is_last {
            let lm = if cfg.tie_word_embeddings {
                match &embed {
                    Some(e) => Linear::Dense(candle_nn::Linear::new(e.embeddings().clone(), None)),
                    None => lin("model.embed_tokens.weight", &[cfg.vocab_size, h])?,
                }
            } else {
                lin("lm_head.weight", &[cfg.vocab_size, h])?
            };
            Some((norm("model.norm.weight")?, lm))
        } else {
            None
        };
        let (cos, sin) = rope_tables(cfg, dtype, device)?;
        Ok(Self {
            config: cfg.clone(),
            layers,
            flavor: Flavor::Dense,
            dtype,
            device: device.clone(),
            embed,
            blocks,
            head,
            cos,
            sin,
            own_kernels: false,
        })
    }

    /// Sets `own_kernels`.
    fn with_kernels_checked(mut self) -> Self {
        let ints = |l: &Linear| matches!(l, Linear::Int16(_));
        self.own_kernels =
            self.blocks.iter().all(|b| {
                [&b.wq, &b.wk, &b.wv, &b.wo, &b.gate, &b.up, &b.down].into_iter().all(ints)
            }) && self.head.as_ref().is_none_or(|(_, l)| ints(l));
        self
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The layers this stage runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// For the adversarial tests of the audits only (`--unsafe-cheat skip-layers`): drops every
    /// other layer, so the stage does half the work while still reporting its whole range.
    #[doc(hidden)]
    pub fn unsafe_skip_every_other_layer(&mut self) {
        let mut i = 0;
        self.blocks.retain(|_| {
            i += 1;
            i % 2 == 1
        });
    }

    /// Whether this stage embeds tokens.
    pub fn is_first(&self) -> bool {
        self.embed.is_some()
    }

    /// Whether this stage produces logits.
    pub fn is_last(&self) -> bool {
        self.head.is_some()
    }

    /// Which reference's numerics it follows.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// dtype of the hidden states it takes and produces.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh cache for a new session, with the reference attention kernel.
    pub fn new_cache(&self) -> Cache {
        self.new_cache_with(Kernel::Reference)
    }

    /// A fresh cache for a new session that uses `kernel`.
    pub fn new_cache_with(&self, kernel: Kernel) -> Cache {
        Cache { kvs: vec![None; self.blocks.len()], len: 0, kernel }
    }

    /// Token ids `(1, seq)` (u32) to hidden states `(1, seq, hidden)`; first stage only.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let e = self
            .embed
            .as_ref()
            .ok_or_else(|| Error::StageInput("only the first stage embeds tokens".into()))?;
        let (_, _) = tokens.dims2()?;
        if let Ok(ids) = tokens.flatten_all()?.to_vec1::<u32>() {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(Error::StageInput(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
        }
        Ok(e.forward(tokens)?)
    }

    /// Runs the stage's layers over hidden states `(1, seq, hidden)` at positions
    /// `pos..pos + seq`; `pos` must be the number of positions already in `cache`.
    pub fn forward_layers(&self, x: &Tensor, pos: usize, cache: &mut Cache) -> Result<Tensor> {
        if pos != cache.len {
            return Err(Error::StageInput(format!(
                "position {pos} does not follow the cache's {} positions",
                cache.len
            )));
        }
        let mut out = on_pool(self.own_kernels, || {
            self.forward_layers_here(std::slice::from_ref(x), &mut [cache])
        })?;
        Ok(out.remove(0))
    }

    /// Several sessions' steps at once: `xs[i]` (hidden states `(1, seq_i, hidden)`) at the
    /// positions following `caches[i]`'s. Where every matrix runs on our integer kernels
    /// ([`Stage::batches_exactly`]) the rows of all of them go through each matrix together, one
    /// pass over the weights for all (attention stays per session), and each output has the
    /// same bits as a step of its own; otherwise the steps run one after the other. Fails, for
    /// all, if any input does not fit its cache.
    pub fn forward_layers_batch(
        &self,
        xs: &[Tensor],
        caches: &mut [&mut Cache],
    ) -> Result<Vec<Tensor>> {
        if xs.len() != caches.len() {
            return Err(Error::StageInput("one cache per input".into()));
        }
        if !self.own_kernels {
            return xs
                .iter()
                .zip(caches.iter_mut())
                .map(|(x, c)| {
                    let pos = c.len;
                    self.forward_layers(x, pos, c)
                })
                .collect();
        }
        on_pool(true, || self.forward_layers_here(xs, caches))
    }

    /// Whether [`Stage::forward_layers_batch`] runs sessions together (with results that do
    /// not depend on it).
    pub fn batches_exactly(&self) -> bool {
        self.own_kernels
    }

    fn forward_layers_here(&self, xs: &[Tensor], caches: &mut [&mut Cache]) -> Result<Vec<Tensor>> {
        let mut spans = Vec::with_capacity(xs.len());
        for (x, cache) in xs.iter().zip(caches.iter()) {
            let (b, seq, hidden) = x.dims3()?;
            if b != 1 || hidden != self.config.hidden_size || x.dtype() != self.dtype {
                return Err(Error::StageInput(format!(
                    "expected hidden states (1, seq, {}) of {:?}, got {:?} of {:?}",
                    self.config.hidden_size,
                    self.dtype,
                    x.dims(),
                    x.dtype()
                )));
            }
            if cache.kvs.len() != self.blocks.len() {
                return Err(Error::StageInput("cache belongs to another stage".into()));
            }
            let pos = cache.len;
            let limit = self.config.context_length;
            if seq == 0 || pos + seq > limit {
                return Err(Error::ContextFull { pos, end: pos + seq, limit });
            }
            let mask = if seq == 1 {
                None
            } else {
                Some(candle_transformers::utils::build_causal_mask(seq, pos, &self.device)?)
            };
            spans.push(Span { seq, pos, mask, kernel: cache.kernel });
        }
        // (`cat` of one tensor and `narrow` to all of it are that tensor.)
        let mut x = Tensor::cat(xs, 1)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let mut kvs: Vec<&mut Option<Kv>> = caches.iter_mut().map(|c| &mut c.kvs[l]).collect();
            x = self.block_forward(block, &x, &spans, &mut kvs)?;
        }
        let mut out = Vec::with_capacity(xs.len());
        let mut at = 0;
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            cache.len = span.pos + span.seq;
            out.push(x.narrow(1, at, span.seq)?);
            at += span.seq;
        }
        Ok(out)
    }

    /// Final norm and LM head on the last position of `(1, seq, hidden)`: logits `(1, vocab)`,
    /// f32. Last stage only.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        on_pool(self.own_kernels, || self.head_here(x))
    }

    /// [`Stage::head`] of several sessions' outputs: with [`Stage::batches_exactly`], their last
    /// positions go through the head together (one pass over it), with the same bits as one by
    /// one.
    pub fn head_batch(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        if !self.own_kernels || xs.len() < 2 {
            return xs.iter().map(|x| self.head(x)).collect();
        }
        let lasts = xs
            .iter()
            .map(|x| {
                let (_, seq, _) = x.dims3()?;
                x.narrow(1, seq - 1, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let all = self.head(&Tensor::cat(&lasts, 1)?.squeeze(0)?.unsqueeze(1)?)?;
        (0..xs.len()).map(|i| Ok(all.narrow(0, i, 1)?)).collect()
    }

    fn head_here(&self, x: &Tensor) -> Result<Tensor> {
        let (norm, lm) = self
            .head
            .as_ref()
            .ok_or_else(|| Error::StageInput("only the last stage has the LM head".into()))?;
        let (_, seq, _) = x.dims3()?;
        let x = norm.forward(x)?;
        Ok(match self.flavor {
            Flavor::Quantized => lm.forward(&x.i((.., seq - 1, ..))?)?,
            Flavor::Dense => {
                lm.forward(&x.i((.., seq - 1, ..))?.contiguous()?)?.to_dtype(DType::F32)?
            }
        })
    }

    /// The whole stage: embeds `x` if this is the first stage (then `x` holds u32 token ids
    /// `(1, seq)`, else hidden states `(1, seq, hidden)`), runs the layers, and if this is the
    /// last stage returns the last position's logits `(1, vocab)`, else the hidden states.
    pub fn forward(&self, x: &Tensor, pos: usize, cache: &mut Cache) -> Result<Tensor> {
        let h = if self.is_first() { self.embed(x)? } else { x.clone() };
        let h = self.forward_layers(&h, pos, cache)?;
        if self.is_last() {
            self.head(&h)
        } else {
            Ok(h)
        }
    }

    /// One layer over the rows of every span (one session's positions each) at once.
    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        spans: &[Span],
        kvs: &mut [&mut Option<Kv>],
    ) -> Result<Tensor> {
        let residual = x;
        let h = block.attn_norm.forward(x)?;
        let h = (self.attention(block, &h, spans, kvs)? + residual)?;
        let residual = &h;
        let m = block.ffn_norm.forward(&h)?;
        let [gate, up] = Linear::forward_many([&block.gate, &block.up], &m)?;
        let m = (candle_nn::ops::silu(&gate)? * up)?;
        let m = block.down.forward(&m)?;
        Ok((m + residual)?)
    }

    /// The attention sublayer over every span's rows: the projections for all rows at once,
    /// the attention itself per span, against its session's cache.
    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        spans: &[Span],
        kvs: &mut [&mut Option<Kv>],
    ) -> Result<Tensor> {
        let [q, k, v] = Linear::forward_many([&block.wq, &block.wk, &block.wv], x)?;
        let mut ys = Vec::with_capacity(spans.len());
        let mut at = 0;
        for (span, kv) in spans.iter().zip(kvs.iter_mut()) {
            let part = |t: &Tensor| t.narrow(1, at, span.seq);
            ys.push(self.attend(&part(&q)?, &part(&k)?, &part(&v)?, span, kv)?);
            at += span.seq;
        }
        Ok(block.wo.forward(&Tensor::cat(&ys, 1)?)?)
    }

    /// One session's attention: its projections `q`, `k`, `v` `(1, seq, width)` at the
    /// positions of `span`, appended to its cache `kv`; returns `(1, seq, heads × head_dim)`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        span: &Span,
        kv: &mut Option<Kv>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, seq, _) = q.dims3()?;
        let (pos, mask, kernel) = (span.pos, span.mask.as_ref(), span.kernel);
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let q = q.reshape((b, seq, nh, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, seq, nkv, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, seq, nkv, hd))?.transpose(1, 2)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        let rope = |t: &Tensor| -> candle_core::Result<Tensor> {
            if cfg.rope_interleaved {
                candle_nn::rotary_emb::rope_i(t, &cos, &sin)
            } else {
                candle_nn::rotary_emb::rope(t, &cos, &sin)
            }
        };
        let y = match self.flavor {
            Flavor::Quantized => {
                // quantized_llama: v made contiguous before the cache, q/k inside the rotary.
                let v = v.contiguous()?;
                let q = rope(&q.contiguous()?)?;
                let k = rope(&k.contiguous()?)?;
                // This step's rows, `(seq, kv_head, head_dim)`, appended to the cache.
                let rows = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
                    t.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>()
                };
                let (new_k, new_v) = (rows(&k)?, rows(&v)?);
                if pos == 0 || !matches!(kv, Some(Kv::F32 { .. })) {
                    *kv = Some(Kv::F32 { k: Default::default(), v: Default::default() });
                }
                let Some(Kv::F32 { k: ks, v: vs }) = kv else {
                    return Err(Error::StageInput("cache of another kind".into()));
                };
                // Unique but while an attention job runs, or in a cache a caller cloned.
                std::sync::Arc::make_mut(ks).extend_from_slice(&new_k);
                std::sync::Arc::make_mut(vs).extend_from_slice(&new_v);
                let len = pos + seq;
                // Our kernels' stages always take the batch-invariant attention: candle's
                // reference attention is only exact against candle's own kernels, and would
                // copy the whole cache into tensors every step.
                if kernel == Kernel::BatchInvariant || self.own_kernels {
                    let qs = q.flatten_all()?.to_vec1::<f32>()?;
                    let layout = crate::attention::KvLayout { group: hd, step: nkv * hd };
                    let (ks, vs) = (ks.clone(), vs.clone());
                    let y = crate::attention::attend(qs, (nh, seq, hd), nkv, ks, vs, layout, pos);
                    Tensor::from_vec(y, (b, nh, seq, hd), &self.device)?
                } else {
                    // The same tensors as candle's cache concatenation gives.
                    let tensor = |d: &[f32]| -> candle_core::Result<Tensor> {
                        Tensor::from_slice(d, (b, len, nkv, hd), &self.device)?
                            .transpose(1, 2)?
                            .contiguous()
                    };
                    let (k, v) = (tensor(&ks[..])?, tensor(&vs[..])?);
                    let k = candle_transformers::utils::repeat_kv(k, nh / nkv)?;
                    let v = candle_transformers::utils::repeat_kv(v, nh / nkv)?;
                    let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
                    let att = match mask {
                        None => att,
                        Some(m) => masked_fill(&att, &m.broadcast_as(att.shape())?)?,
                    };
                    let att = candle_nn::ops::softmax_last_dim(&att)?;
                    att.matmul(&v.contiguous()?)?
                }
            }
            Flavor::Dense => {
                // llama: q/k contiguous before the rotary, the cache concatenation made
                // contiguous, attention computed in f32.
                let q = rope(&q.contiguous()?)?;
                let mut k = rope(&k.contiguous()?)?;
                let mut v = v;
                if let Some(Kv::Tensors(kc, vc)) = kv.as_ref() {
                    k = Tensor::cat(&[kc, &k], 2)?.contiguous()?;
                    v = Tensor::cat(&[vc, &v], 2)?.contiguous()?;
                }
                *kv = Some(Kv::Tensors(k.clone(), v.clone()));
                let in_dtype = q.dtype();
                if kernel == Kernel::BatchInvariant {
                    let f = |t: &Tensor| t.to_dtype(DType::F32);
                    let y = crate::attention::attention(&f(&q)?, &f(&k)?, &f(&v)?, pos)?;
                    return Ok(y.to_dtype(in_dtype)?.transpose(1, 2)?.reshape((
                        b,
                        seq,
                        nh * hd,
                    ))?);
                }
                let k = candle_transformers::utils::repeat_kv(k, nh / nkv)?;
                let v = candle_transformers::utils::repeat_kv(v, nh / nkv)?;
                let q = q.to_dtype(DType::F32)?;
                let k = k.to_dtype(DType::F32)?;
                let v = v.to_dtype(DType::F32)?;
                let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
                let att = match mask {
                    None => att,
                    Some(m) => masked_fill(&att, &m.broadcast_as(att.shape())?)?,
                };
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                att.matmul(&v.contiguous()?)?.to_dtype(in_dtype)?
            }
        };
        Ok(y.transpose(1, 2)?.reshape((b, seq, nh * hd))?)
    }
}

/// One session's rows in a batched step.
struct Span {
    seq: usize,
    pos: usize,
    mask: Option<Tensor>,
    kernel: Kernel,
}

/// Runs `f` (a stage's step) on a rayon thread, at once when called on one. Calling rayon from
/// outside its pools hands the work over and puts the caller to sleep (a futex and a context
/// switch each time, hundreds per step: a fifth of a step's time here).
///
/// With `own_kernels` (every matrix on our integer kernels, which split their work among the
/// engine's [`crate::pool::Pool`] with the attention) the step runs on a one-thread pool of the
/// calling thread's own, where candle's small operations between the kernels (norms, rotary,
/// SiLU) run inline instead of waking the global pool's idle threads for microseconds of work;
/// each calling thread has its own, so sessions stepped from several threads run side by side.
/// Otherwise (candle's kernels, f32 weights) it runs on the global pool, whose threads split
/// candle's matmuls.
fn on_pool<R: Send>(own_kernels: bool, f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    if !own_kernels {
        return rayon::scope(|_| f());
    }
    thread_local! {
        static STEP: Option<rayon::ThreadPool> = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "bitorch-step".into())
            .build()
            .ok();
    }
    let threads = crate::pool::threads_override();
    STEP.with(|pool| match pool {
        Some(pool) => pool.install(|| match threads {
            Some(n) => crate::pool::with_threads(n, f),
            None => f(),
        }),
        None => f(),
    })
}

fn masked_fill(on_false: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let neg_inf = Tensor::new(f32::NEG_INFINITY, on_false.device())?
        .to_dtype(on_false.dtype())?
        .broadcast_as(mask.shape().dims())?;
    mask.where_cond(&neg_inf, on_false)
}

/// (hidden, query width, key/value width, MLP width).
fn dims(cfg: &Config) -> (usize, usize, usize, usize) {
    (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
}

/// Rotary tables `(context_length, rope_dim / 2)`, computed the way both candle references do
/// (inverse frequencies in f32, positions times frequencies as a rank-1 matmul), with Llama 3
/// scaling when configured.
fn rope_tables(cfg: &Config, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = cfg.rope_dim;
    let mut inv: Vec<f32> =
        (0..d).step_by(2).map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / d as f32)).collect();
    if let Some(s) = &cfg.rope_scaling {
        if s.rope_type.as_deref() == Some("llama3") {
            let orig = s.original_max_position_embeddings as f32;
            let low = orig / s.low_freq_factor;
            let high = orig / s.high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2. * std::f32::consts::PI / *f;
                *f = if wavelen < high {
                    *f
                } else if wavelen > low {
                    *f / s.factor
                } else {
                    let smooth = (orig / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1. - smooth) * *f / s.factor + smooth * *f
                };
            }
        }
    }
    let n = cfg.context_length;
    let theta = Tensor::new(inv.as_slice(), device)?;
    let idx_theta = Tensor::arange(0, n as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((idx_theta.cos()?.to_dtype(dtype)?, idx_theta.sin()?.to_dtype(dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_contiguous_and_even() {
        assert_eq!(split_layers(30, 3).unwrap(), vec![0..10, 10..20, 20..30]);
        assert_eq!(split_layers(5, 2).unwrap(), vec![0..3, 3..5]);
        assert_eq!(split_layers(30, 30).unwrap().len(), 30);
        assert!(matches!(split_layers(3, 4), Err(Error::StageCount { .. })));
        assert!(matches!(split_layers(3, 0), Err(Error::StageCount { .. })));
    }
}
