//! Stages chained into a whole model, sessions over them, and text generation.

use crate::{
    model::{split_layers, GgufWeights, Kernel, LoadOptions},
    Checkpoint, Error, Result, Sampler, SamplingParams, Stage, StopStrings, TextStream, Tokenizer,
};
use bitorch_commitment::{Commitment, Trace};
use candle_core::{DType, Device, Tensor};
use std::{ops::Range, path::Path, time::Instant};

/// All stages of a model, in layer order, run in one process. Stages talk only through the
/// hidden-state tensor each hands to the next, exactly what crosses a network hop.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

/// One generation's state: a KV cache per stage, and optionally the commitment trace of each
/// stage.
#[derive(Debug, Clone)]
pub struct Session {
    caches: Vec<crate::Cache>,
    traces: Option<Vec<Trace>>,
    pos: usize,
    commit_secs: f64,
}

impl Session {
    /// Positions processed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Each stage's commitment trace, when the session records them.
    pub fn traces(&self) -> Option<&[Trace]> {
        self.traces.as_deref()
    }

    /// Seconds spent recording commitment leaves (copying hidden states out and hashing them).
    pub fn commit_secs(&self) -> f64 {
        self.commit_secs
    }
}

impl Pipeline {
    /// Loads the given layer ranges, which must cover the model's layers in order.
    pub fn load(ckpt: &Checkpoint, ranges: &[Range<usize>], options: &LoadOptions) -> Result<Self> {
        let n = ckpt.config().num_layers;
        let mut next = 0;
        for r in ranges {
            if r.start != next || r.start >= r.end || r.end > n {
                return Err(Error::LayerRange { start: r.start, end: r.end, num_layers: n });
            }
            next = r.end;
        }
        if next != n {
            return Err(Error::LayerRange { start: next, end: n, num_layers: n });
        }
        let stages = ranges
            .iter()
            .map(|r| Stage::load(ckpt, r.clone(), options))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stages })
    }

    /// Loads the model split evenly into `stages` stages.
    pub fn load_split(ckpt: &Checkpoint, stages: usize, options: &LoadOptions) -> Result<Self> {
        Self::load(ckpt, &split_layers(ckpt.config().num_layers, stages)?, options)
    }

    /// The stages.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Positions the model can hold.
    pub fn context_length(&self) -> usize {
        self.stages[0].config().context_length
    }

    /// A new session; with `record`, each stage keeps the leaves of its commitment and uses the
    /// batch-invariant attention kernel (so that an auditor's batched re-execution reproduces
    /// the outputs exactly), else candle's reference kernel.
    pub fn new_session(&self, record: bool) -> Session {
        let kernel = if record { Kernel::BatchInvariant } else { Kernel::Reference };
        self.new_session_with(record, kernel)
    }

    /// A new session with an explicit attention kernel.
    pub fn new_session_with(&self, record: bool, kernel: Kernel) -> Session {
        Session {
            caches: self.stages.iter().map(|s| s.new_cache_with(kernel)).collect(),
            traces: record.then(|| vec![Trace::new(); self.stages.len()]),
            pos: 0,
            commit_secs: 0.0,
        }
    }

    /// Feeds `tokens` (the whole prompt in one batched pass, then one token per step) and returns
    /// the logits `(1, vocab)` of the last one.
    pub fn step(&self, session: &mut Session, tokens: &[u32]) -> Result<Tensor> {
        let limit = self.context_length();
        let (pos, n) = (session.pos, tokens.len());
        if pos == 0 && n > limit {
            return Err(Error::PromptTooLong { tokens: n, limit });
        }
        if n == 0 || pos + n > limit {
            return Err(Error::ContextFull { pos, end: pos + n, limit });
        }
        let first = &self.stages[0];
        let ids = Tensor::new(tokens, first.device())?.unsqueeze(0)?;
        let mut h = first.embed(&ids)?;
        let last = self.stages.len() - 1;
        let mut logits = None;
        for (i, (stage, cache)) in self.stages.iter().zip(session.caches.iter_mut()).enumerate() {
            let out = stage.forward_layers(&h, pos, cache)?;
            if i == last {
                logits = Some(stage.head(&out)?);
            }
            if let Some(traces) = session.traces.as_mut() {
                let t = Instant::now();
                // The first stage commits to the token ids, the others to their hidden input.
                let inputs = if i == 0 {
                    let width = stage.config().hidden_size;
                    tokens.iter().map(|&id| bitorch_commitment::token_row(id, width)).collect()
                } else {
                    rows(&h)?
                };
                let outputs = rows(&out)?;
                let n = outputs.len();
                for (r, (x, y)) in inputs.into_iter().zip(outputs).enumerate() {
                    // The last stage commits to the logits it returns, at the last position.
                    let top = match &logits {
                        Some(l) if i == last && r + 1 == n => bitorch_commitment::top_logits(
                            &l.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                        ),
                        _ => Vec::new(),
                    };
                    traces[i].push(x, y, top);
                }
                session.commit_secs += t.elapsed().as_secs_f64();
            }
            h = out;
        }
        session.pos = pos + n;
        logits.ok_or_else(|| Error::StageInput("a pipeline has a last stage".into()))
    }
}

/// The rows of `(1, seq, hidden)` as f32.
fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// How a model is loaded.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// In-process stages to split the layers into (1 = the whole model in one stage).
    pub stages: usize,
    /// Where to run.
    pub device: Device,
    /// Compute dtype of safetensors models (GGUF models compute in f32).
    pub dtype: DType,
    /// How GGUF weights are multiplied (see [`GgufWeights`]). The default for the engine is
    /// [`GgufWeights::Int16`]: our integer kernels for Q4_1 and Q8_0 generate 2.5–3× faster
    /// than f32 weights here, in a fraction of the memory, with the same greedy answers on the
    /// test prompts, and batch-invariant (what commitments need) to the bit;
    /// [`GgufWeights::Dequantized`] is exact against the stored weights (and faster on long
    /// prompts), [`GgufWeights::Candle`] bit-exact with `quantized_llama`.
    pub gguf: GgufWeights,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { stages: 1, device: Device::Cpu, dtype: DType::F32, gguf: GgufWeights::Int16 }
    }
}

/// A text generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt (the user message when `chat` is set).
    pub prompt: String,
    /// Wrap the prompt in the model's chat template.
    pub chat: bool,
    /// System message for chat (the template's default when `None`).
    pub system: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop when the text contains one of these (not included in the output).
    pub stop: Vec<String>,
    /// Record each stage's activation commitment.
    pub record_commitments: bool,
}

impl GenerateRequest {
    /// A greedy request for up to `max_tokens` tokens.
    pub fn new(prompt: impl Into<String>, max_tokens: usize) -> Self {
        Self {
            prompt: prompt.into(),
            chat: false,
            system: None,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            record_commitments: false,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context window is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text (what was streamed).
    pub text: String,
    /// Prompt token ids (after the chat template).
    pub prompt_tokens: Vec<u32>,
    /// Generated token ids (an end-of-sequence token included).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Seconds spent on the prompt (one batched pass) and its first token.
    pub prompt_secs: f64,
    /// Seconds spent on the following tokens.
    pub generate_secs: f64,
    /// Each stage's commitment, when recorded.
    pub commitments: Option<Vec<Commitment>>,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens.len() as f64 / self.prompt_secs.max(1e-9)
    }

    /// Generated tokens per second, after the first.
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.generate_secs.max(1e-9)
    }
}

/// A loaded model with its tokenizer: the library behind `bitorch infer`.
///
/// ```no_run
/// use bitorch_inference::{Engine, EngineOptions, GenerateRequest};
/// let engine = Engine::load("model.gguf", &EngineOptions { stages: 3, ..Default::default() })?;
/// let mut req = GenerateRequest::new("What is the capital of France?", 128);
/// req.chat = true;
/// let out = engine.generate(&req, |piece| {
///     print!("{piece}");
///     true // keep going
/// })?;
/// eprintln!("\n{:.1} tokens/s", out.tokens_per_sec());
/// # Ok::<(), bitorch_inference::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    pipeline: Pipeline,
    tokenizer: Tokenizer,
}

impl Engine {
    /// Loads a GGUF file or a safetensors directory (with `config.json` and `tokenizer.json`).
    pub fn load(path: impl AsRef<Path>, options: &EngineOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::open(path)?, options)
    }

    /// Loads an opened checkpoint (a file's, or one read from a store's chunks).
    pub fn from_checkpoint(ckpt: &Checkpoint, options: &EngineOptions) -> Result<Self> {
        let tokenizer = match ckpt {
            Checkpoint::Gguf(g) => Tokenizer::from_gguf(&g.content)?,
            Checkpoint::Safetensors(s) => {
                Tokenizer::from_bytes(&s.tokenizer_json()?, eos_from_config(&s.config_json))?
            }
        };
        let load = LoadOptions {
            dtype: options.dtype,
            device: options.device.clone(),
            gguf: options.gguf,
        };
        let pipeline = Pipeline::load_split(ckpt, options.stages, &load)?;
        Ok(Self { pipeline, tokenizer })
    }

    /// Builds an engine from parts.
    pub fn new(pipeline: Pipeline, tokenizer: Tokenizer) -> Self {
        Self { pipeline, tokenizer }
    }

    /// The stages.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt's token ids, after the chat template when `chat` is set.
    pub fn prompt_tokens(&self, req: &GenerateRequest) -> Result<Vec<u32>> {
        let text = if req.chat {
            let t = self.tokenizer.chat_template().ok_or_else(|| {
                Error::Tokenizer("the model has no chat template we support (ChatML)".into())
            })?;
            t.apply(req.system.as_deref(), &req.prompt)
        } else {
            req.prompt.clone()
        };
        self.tokenizer.encode(&text)
    }

    /// Generates text, calling `on_text` with each new piece as soon as it is complete UTF-8
    /// and cannot be part of a stop string; `on_text` returns `false` to stop early.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prompt = self.prompt_tokens(req)?;
        let mut stream = TextStream::new();
        let mut stops = StopStrings::new(&req.stop);
        let mut text = String::new();
        let mut cancelled = false;
        let mut stopped = false;
        let mut gen = self.generate_tokens(
            &prompt,
            req.max_tokens,
            &req.sampling,
            req.record_commitments,
            |tok| {
                if self.tokenizer.eos().contains(&tok) {
                    return Ok(true);
                }
                if let Some(piece) = stream.push(&self.tokenizer, tok)? {
                    let (show, hit) = stops.push(&piece);
                    if !show.is_empty() {
                        text.push_str(&show);
                        cancelled = !on_text(&show);
                    }
                    stopped = hit;
                }
                Ok(stopped || cancelled)
            },
        )?;
        if !stopped && !cancelled {
            let tail = stream.finish(&self.tokenizer)?;
            let (mut show, hit) = stops.push(&tail);
            if !hit {
                show.push_str(&stops.finish());
            }
            if !show.is_empty() {
                text.push_str(&show);
                on_text(&show);
            }
            stopped = hit;
        }
        if stopped {
            gen.finish = FinishReason::Stop;
        } else if cancelled {
            gen.finish = FinishReason::Cancelled;
        }
        gen.text = text;
        Ok(gen)
    }

    /// The token loop: prefill `prompt` in one pass, then sample and feed one token per step
    /// until an end-of-sequence token, `max_tokens`, a full context, or `on_token` returning
    /// `Ok(true)` (checked after each token, which is kept).
    pub fn generate_tokens(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: &SamplingParams,
        record: bool,
        mut on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(sampling.clone())?;
        let mut session = self.pipeline.new_session(record);
        let mut history = prompt.to_vec();
        let mut tokens = Vec::new();
        let limit = self.pipeline.context_length();
        let start = Instant::now();
        let mut prompt_secs = 0.0;
        let mut finish = FinishReason::Length;
        if max_tokens > 0 {
            let mut logits = self.pipeline.step(&mut session, prompt)?;
            loop {
                let tok = sampler.sample(&logits, &history)?;
                tokens.push(tok);
                history.push(tok);
                if tokens.len() == 1 {
                    prompt_secs = start.elapsed().as_secs_f64();
                }
                if self.tokenizer.eos().contains(&tok) {
                    on_token(tok)?;
                    finish = FinishReason::Eos;
                    break;
                }
                if on_token(tok)? {
                    finish = FinishReason::Cancelled;
                    break;
                }
                if tokens.len() >= max_tokens {
                    break;
                }
                if session.position() >= limit {
                    finish = FinishReason::ContextFull;
                    break;
                }
                logits = self.pipeline.step(&mut session, &[tok])?;
            }
        } else if prompt.len() > limit {
            return Err(Error::PromptTooLong { tokens: prompt.len(), limit });
        }
        let total = start.elapsed().as_secs_f64();
        let commitments =
            session.traces().map(|ts| ts.iter().map(Trace::commitment).collect::<Vec<_>>());
        Ok(Generation {
            text: String::new(),
            prompt_tokens: prompt.to_vec(),
            tokens,
            finish,
            prompt_secs,
            generate_secs: total - prompt_secs,
            commitments,
        })
    }
}

/// End-of-sequence ids from a Hugging Face `config.json` (a number or a list).
pub fn eos_from_config(json: &str) -> Vec<u32> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => {
            a.iter().filter_map(|n| n.as_u64()).map(|n| n as u32).collect()
        }
        _ => Vec::new(),
    }
}

/// Parses a device name: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n.strip_prefix("cuda:").map(str::parse::<usize>).unwrap_or(Ok(0));
            let ordinal = ordinal.map_err(|_| Error::Device(n.to_string()))?;
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Device(n.to_string()));
            }
            Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("{n}: {e}")))
        }
        other => Err(Error::Device(other.to_string())),
    }
}
