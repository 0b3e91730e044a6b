//! A minimal `bitorch infer`: `infer MODEL [--stages N] [--max-tokens N] [--temperature T]
//! [--seed S] [--chat] [--commit] [--gguf candle|f32|compact] [--tokens] PROMPT`. The real CLI lives in node/cli.

use anyhow::{bail, Context, Result};
use bitorch_inference::{Engine, EngineOptions, GenerateRequest, GgufWeights};
use std::io::Write;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().context("usage: infer MODEL [options] PROMPT")?;
    let mut opts = EngineOptions::default();
    let mut req = GenerateRequest::new("", 256);
    let mut show_tokens = false;
    let mut prompt = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--stages" => opts.stages = val()?.parse()?,
            "--max-tokens" => req.max_tokens = val()?.parse()?,
            "--temperature" => req.sampling.temperature = val()?.parse()?,
            "--seed" => req.sampling.seed = val()?.parse()?,
            "--chat" => req.chat = true,
            "--commit" => req.record_commitments = true,
            "--gguf" => {
                opts.gguf = match val()?.as_str() {
                    "candle" => GgufWeights::Candle,
                    "f32" => GgufWeights::Dequantized,
                    "compact" => GgufWeights::Compact,
                    other => bail!("--gguf takes candle, f32 or compact, not {other}"),
                }
            }
            "--tokens" => show_tokens = true,
            p if !p.starts_with("--") => prompt = Some(p.to_string()),
            other => bail!("unknown option {other}"),
        }
    }
    req.prompt = prompt.context("no prompt")?;
    let engine = Engine::load(&model, &opts)?;
    if show_tokens {
        let ids = engine.prompt_tokens(&req)?;
        eprintln!("prompt tokens: {ids:?}");
    }
    let out = engine.generate(&req, |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    println!();
    if show_tokens {
        eprintln!("generated: {:?}", out.tokens);
    }
    eprintln!(
        "{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({:?})",
        out.prompt_tokens.len(),
        out.prompt_tokens_per_sec(),
        out.tokens.len(),
        out.tokens_per_sec(),
        out.finish
    );
    Ok(())
}
