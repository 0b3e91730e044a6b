//! Accuracy of the engine's paths on chat prompts with known answers: for each prompt of a TSV
//! file (`question<TAB>answer|other accepted answer`, lower case), the greedy answer (48 tokens at
//! most, through the chat template) of our integer kernels (the default) and of the weights
//! dequantized to f32 (the reference), whether each contains an accepted answer, and how far the
//! integer kernels' logits are from the reference's while both choose the same tokens (relative
//! to the largest logit). Run through `scripts/bench-accuracy.sh`, which adds llama.cpp.
//!
//! Usage: `accuracy MODEL.gguf PROMPTS.tsv`; prints one line per prompt, then
//! `correct: OURS REFERENCE of N; worst relative logit error E over T tokens`.

use anyhow::{Context, Result};
use bitorch_inference::{
    Checkpoint, Engine, GgufWeights, LoadOptions, Pipeline, Sampler, SamplingParams,
};

/// Greedy tokens (until end of sequence or `max`) and each step's logits.
fn run(p: &Pipeline, prompt: &[u32], eos: &[u32], max: usize) -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut s = p.new_session(true);
    let mut sampler = Sampler::new(SamplingParams::greedy())?;
    let mut logits = p.step(&mut s, prompt)?;
    let (mut toks, mut all) = (Vec::new(), Vec::new());
    for _ in 0..max {
        all.push(logits.flatten_all()?.to_vec1::<f32>()?);
        let t = sampler.sample(&logits, &[])?;
        toks.push(t);
        if eos.contains(&t) {
            break;
        }
        logits = p.step(&mut s, &[t])?;
    }
    Ok((toks, all))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model, prompts) = match (args.get(1), args.get(2)) {
        (Some(m), Some(p)) => (m, p),
        _ => anyhow::bail!("usage: accuracy MODEL.gguf PROMPTS.tsv"),
    };
    let engine = Engine::load(model, &Default::default())?;
    let ckpt = Checkpoint::open(model)?;
    let load = |gguf| Pipeline::load_split(&ckpt, 1, &LoadOptions { gguf, ..Default::default() });
    let ours = load(GgufWeights::Int16)?;
    let reference = load(GgufWeights::Dequantized)?;
    let eos = engine.tokenizer().eos().to_vec();
    let text = std::fs::read_to_string(prompts).with_context(|| format!("reading {prompts}"))?;
    let (mut n, mut ok_ours, mut ok_ref, mut tokens) = (0, 0, 0, 0);
    let mut worst = 0f32;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (question, answers) = line.split_once('\t').context("a line without a tab")?;
        let accepted: Vec<&str> = answers.split('|').collect();
        let mut req = bitorch_inference::GenerateRequest::new(question, 48);
        req.chat = true;
        let ids = engine.prompt_tokens(&req)?;
        let (t_ours, l_ours) = run(&ours, &ids, &eos, 48)?;
        let (t_ref, l_ref) = run(&reference, &ids, &eos, 48)?;
        let same = t_ours.iter().zip(&t_ref).take_while(|(a, b)| a == b).count();
        for (a, b) in l_ours.iter().zip(&l_ref).take(same + 1) {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(diff / scale);
            tokens += 1;
        }
        let answer = |t: &[u32]| -> Result<String> {
            let t: Vec<u32> = t.iter().copied().filter(|t| !eos.contains(t)).collect();
            Ok(engine.tokenizer().decode(&t)?)
        };
        let (a_ours, a_ref) = (answer(&t_ours)?, answer(&t_ref)?);
        let right = |a: &str| accepted.iter().any(|x| a.to_lowercase().contains(x));
        n += 1;
        ok_ours += usize::from(right(&a_ours));
        ok_ref += usize::from(right(&a_ref));
        println!(
            "{}\t{}\t{}\t{:?}\t{:?}",
            question,
            if right(&a_ours) { "ok" } else { "WRONG" },
            if right(&a_ref) { "ok" } else { "WRONG" },
            a_ours.replace('\n', " "),
            a_ref.replace('\n', " ")
        );
    }
    println!(
        "correct: {ok_ours} {ok_ref} of {n}; worst relative logit error {worst:.1e} over {tokens} tokens"
    );
    Ok(())
}
