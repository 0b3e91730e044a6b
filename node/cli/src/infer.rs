//! `bitorch infer`: run a model in this process, optionally split into in-process stages
//! that exchange only hidden-state tensors, the way peers will over the network.

use anyhow::{Context, Result};
use bitorch_inference::{parse_device, Engine, EngineOptions, GenerateRequest, SamplingParams};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Options of `bitorch infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// A GGUF file, a directory with safetensors weights, config.json and tokenizer.json, or
    /// the id (0x…) of a model in the store under `--base-path` (`bitorch model list`).
    #[arg(long)]
    model: PathBuf,
    /// The node's base path, whose store holds the model named by id.
    #[arg(long, short = 'd')]
    base_path: Option<PathBuf>,
    /// Split the layers into this many in-process stages.
    #[arg(long, default_value_t = 1)]
    stages: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long)]
    top_p: Option<f64>,
    /// Penalty for repeating recent tokens (1 = none).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed of the sampler, so a run is reproducible.
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Apply the model's chat template to the prompt.
    #[arg(long)]
    chat: bool,
    /// System message for `--chat`.
    #[arg(long)]
    system: Option<String>,
    /// Stop when the output contains this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// `cpu` or `cuda` (`cuda:N`), the latter in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Record activation commitments as workers do. This selects the batch-invariant attention
    /// kernel, so the output is token for token what a node serving the model
    /// (`bitorch node --serve-model`) answers; without it candle's reference kernel runs, which
    /// rounds differently.
    #[arg(long)]
    record_commitments: bool,
    /// Print prompt and generation speed to standard error.
    #[arg(long)]
    stats: bool,
    /// The prompt.
    prompt: String,
}

/// Runs a generation and streams it to standard output.
pub fn run(args: InferArgs) -> Result<()> {
    let options = EngineOptions {
        stages: args.stages,
        device: parse_device(&args.device)?,
        ..EngineOptions::default()
    };
    let given = args.model.to_string_lossy().into_owned();
    let engine = match crate::model::parse_model_id(&given).filter(|_| !args.model.exists()) {
        None => Engine::load(&args.model, &options)
            .with_context(|| format!("loading {}", args.model.display()))?,
        Some(id) => {
            let base = match &args.base_path {
                Some(b) => b.clone(),
                None => crate::node::default_base_path()?,
            };
            let store = crate::model::open_store(&base)?;
            let manifest = store.manifest(&id)?.with_context(|| {
                format!("no model {id:?} in {} (bitorch model list)", store.dir().display())
            })?;
            let ckpt = store.checkpoint(&manifest)?;
            Engine::from_checkpoint(&ckpt, &options)
                .with_context(|| format!("loading model {id:?} from the store"))?
        }
    };
    let mut req = GenerateRequest::new(args.prompt, args.max_tokens);
    req.chat = args.chat;
    req.system = args.system;
    req.stop = args.stop;
    req.record_commitments = args.record_commitments;
    req.sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repeat_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let generation = engine.generate(&req, |piece| {
        // A closed pipe (e.g. `| head`) ends the generation instead of failing it.
        out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    let _ = writeln!(out);
    if args.stats {
        eprintln!(
            "prompt: {} tokens, {:.1} tokens/s; generated: {} tokens, {:.1} tokens/s; finish: {:?}",
            generation.prompt_tokens.len(),
            generation.prompt_tokens_per_sec(),
            generation.tokens.len(),
            generation.tokens_per_sec(),
            generation.finish
        );
    }
    Ok(())
}
