//! Activation commitments of real stage runs: honest runs verify, cheats are rejected.

mod common;

use bitorch_inference::{
    commitment::{verify_chain, verify_stage, Error as CError, Logit, Opening, Tolerance, Trace},
    Checkpoint, GgufWeights, LoadOptions, Pipeline, Stage,
};
use candle_core::DType;
use common::*;

/// Runs a prompt then `gen` greedy tokens through a recording session; returns the traces.
fn traces(p: &Pipeline, prompt: &[u32], gen: usize) -> Vec<Trace> {
    let mut s = p.new_session(true);
    let mut sampler = bitorch_inference::Sampler::new(Default::default()).unwrap();
    let mut logits = p.step(&mut s, prompt).unwrap();
    for _ in 0..gen {
        let t = sampler.sample(&logits, &[]).unwrap();
        logits = p.step(&mut s, &[t]).unwrap();
    }
    s.traces().unwrap().to_vec()
}

/// A trace committing to the given inputs with the given outputs.
fn forged(inputs: &[Vec<f32>], outputs: Vec<Vec<f32>>) -> Trace {
    let mut t = Trace::new();
    for (i, o) in inputs.iter().zip(outputs) {
        t.push(i.clone(), o, Vec::new());
    }
    t
}

fn inputs(t: &Trace) -> Vec<Vec<f32>> {
    t.leaves().iter().map(|l| l.input.clone()).collect()
}

/// Outputs of `stage` run on `inputs` in one batched pass.
fn run(stage: &Stage, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    bitorch_inference::commitment::Reexecute::reexecute(stage, inputs).unwrap()
}

fn check(t: &Trace, stage: &Stage) -> Result<(), CError> {
    let opening: Opening = t.open_prefix(t.len() as u32 - 1).unwrap();
    verify_stage(&t.commitment(), &opening, stage, Tolerance::default())
}

fn mismatch(r: Result<(), CError>) -> bool {
    eprintln!("  -> {r:?}");
    matches!(r, Err(CError::OutputMismatch { .. }))
}

/// Adds noise of relative L2 size `rel` to every output.
fn noisy(outputs: &[Vec<f32>], rel: f32) -> Vec<Vec<f32>> {
    let mut seed = 0x9e37_79b9u32;
    outputs
        .iter()
        .map(|o| {
            let noise: Vec<f32> = (0..o.len())
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
                })
                .collect();
            let n = noise.iter().map(|x| x * x).sum::<f32>().sqrt();
            let on = o.iter().map(|x| x * x).sum::<f32>().sqrt();
            o.iter().zip(&noise).map(|(x, e)| x + e * rel * on / n).collect()
        })
        .collect()
}

#[test]
fn real_model_commitments() {
    let ckpt = Checkpoint::open(real_model()).unwrap();
    let p = Pipeline::load_split(&ckpt, 3, &LoadOptions::default()).unwrap();
    let prompt: Vec<u32> = vec![1, 4093, 314, 253, 1345, 2821, 30, 2, 198, 1, 520, 9531, 198];
    let ts = traces(&p, &prompt, 12);
    assert_eq!(ts[0].len(), prompt.len() + 12);
    // Honest: every stage verifies, and consecutive stages chain.
    let mut worst = 0f64;
    for (stage, t) in p.stages().iter().zip(&ts) {
        check(t, stage).unwrap();
        let redo = run(stage, &inputs(t));
        for (l, r) in t.leaves().iter().zip(&redo) {
            worst = worst.max(Tolerance::relative_error(&l.output, r));
        }
    }
    eprintln!("honest decode vs batched re-execution: worst relative L2 error {worst:e}");
    verify_chain(ts[0].leaves(), ts[1].leaves()).unwrap();
    verify_chain(ts[1].leaves(), ts[2].leaves()).unwrap();
    assert!(verify_chain(ts[0].leaves(), ts[2].leaves()).is_err());

    let mid = &p.stages()[1];
    let (start, end) = (mid.layers().start, mid.layers().end);
    let t = &ts[1];
    let xs = inputs(t);
    // A worker that skips the stage's last layer.
    let lazy = Stage::load(&ckpt, start..end - 1, &LoadOptions::default()).unwrap();
    assert!(mismatch(check(&forged(&xs, run(&lazy, &xs)), mid)));
    // Noise of relative size 1e-2 on its outputs.
    let honest: Vec<Vec<f32>> = t.leaves().iter().map(|l| l.output.clone()).collect();
    assert!(mismatch(check(&forged(&xs, noisy(&honest, 1e-2)), mid)));
    // Other weights: the same number of layers, one further on.
    let shifted = Stage::load(&ckpt, start + 1..end + 1, &LoadOptions::default()).unwrap();
    assert!(mismatch(check(&forged(&xs, run(&shifted, &xs)), mid)));
    // Outputs that do not follow from the inputs: another prompt's outputs.
    let other = traces(&p, &[1, 9690, 2, 198, 1, 520], 19);
    let theirs: Vec<Vec<f32>> = other[1].leaves().iter().map(|l| l.output.clone()).collect();
    assert!(mismatch(check(&forged(&xs, theirs), mid)));
    // Or the honest outputs shifted by one position.
    let mut shifted_out = honest.clone();
    shifted_out.rotate_left(1);
    assert!(mismatch(check(&forged(&xs, shifted_out), mid)));
    // A tampered proof or leaf is rejected before any compute.
    let mut opening = t.open_prefix(5).unwrap();
    opening.proof.lemmas[0][3] ^= 0x10;
    assert!(matches!(
        verify_stage(&t.commitment(), &opening, mid, Tolerance::default()),
        Err(CError::BadProof)
    ));
    let mut opening = t.open_prefix(5).unwrap();
    opening.leaves[2].output[7] += 0.5;
    assert!(matches!(
        verify_stage(&t.commitment(), &opening, mid, Tolerance::default()),
        Err(CError::BadProof)
    ));
    // An opening of a prefix verifies on its own.
    let opening = t.open_prefix(3).unwrap();
    verify_stage(&t.commitment(), &opening, mid, Tolerance::default()).unwrap();

    // The last stage committed to the logits it returned: at the prompt's last position and
    // at every step's (checked against its head above). Other logits are refused.
    let last = &p.stages()[2];
    let t = &ts[2];
    let with: Vec<u32> =
        t.leaves().iter().filter(|l| !l.logits.is_empty()).map(|l| l.position).collect();
    let want: Vec<u32> = (prompt.len() as u32 - 1..prompt.len() as u32 + 12).collect();
    assert_eq!(with, want);
    let relogit = |change: &dyn Fn(&mut Vec<Logit>)| {
        let mut forged = Trace::new();
        for l in t.leaves() {
            let mut logits = l.logits.clone();
            if l.position == 20 {
                change(&mut logits);
            }
            forged.push(l.input.clone(), l.output.clone(), logits);
        }
        forged
    };
    let logits_err = |r: Result<(), CError>| {
        eprintln!("  -> {r:?}");
        matches!(r, Err(CError::Logits { position: 20, .. }))
    };
    // The 6th token promoted above the best.
    assert!(logits_err(check(&relogit(&|l| l[5].1 = l[0].1 + 0.5), last)));
    // The best token left out.
    assert!(logits_err(check(&relogit(&|l| l[0].0 = 0), last)));
    // Fewer logits.
    assert!(logits_err(check(&relogit(&|l| l.truncate(8)), last)));
}

/// The f32-activation modes a worker would run: our Q4_1 kernel reproduces bit for bit; f32
/// weights (candle's f32 matmuls, whose blocking depends on the batch) within 1e-5; both reject
/// 1e-2 noise.
#[test]
fn real_model_commitments_f32_activations() {
    let ckpt = Checkpoint::open(real_model()).unwrap();
    for (gguf, bound) in [(GgufWeights::Compact, 0.0), (GgufWeights::Dequantized, 1e-5)] {
        let opts = LoadOptions { gguf, ..Default::default() };
        let p = Pipeline::load_split(&ckpt, 3, &opts).unwrap();
        let ts = traces(&p, &[1, 4093, 314, 253, 1345, 2821, 30, 2, 198], 8);
        for (stage, t) in p.stages().iter().zip(&ts) {
            let redo = run(stage, &inputs(t));
            let outs: Vec<Vec<f32>> = t.leaves().iter().map(|l| l.output.clone()).collect();
            let worst = outs
                .iter()
                .zip(&redo)
                .map(|(a, b)| Tolerance::relative_error(a, b))
                .fold(0f64, f64::max);
            eprintln!("{gguf:?} {:?}: honest relative error {worst:e}", stage.layers());
            assert!(worst <= bound, "{gguf:?}: {worst:e}");
            check(t, stage).unwrap();
            assert!(mismatch(check(&forged(&inputs(t), noisy(&outs, 1e-2)), stage)));
        }
        verify_chain(ts[0].leaves(), ts[1].leaves()).unwrap();
    }
}

#[test]
fn tiny_model_commitments_and_other_weights() {
    let tiny = Tiny::default();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_safetensors(a.path(), &tiny, 1, DType::F32, None);
    write_safetensors(b.path(), &tiny, 2, DType::F32, None);
    let pa = Pipeline::load_split(&Checkpoint::open(a.path()).unwrap(), 2, &LoadOptions::default())
        .unwrap();
    let pb = Pipeline::load_split(&Checkpoint::open(b.path()).unwrap(), 2, &LoadOptions::default())
        .unwrap();
    let prompt = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let ta = traces(&pa, &prompt, 10);
    for (stage, t) in pa.stages().iter().zip(&ta) {
        check(t, stage).unwrap();
    }
    // Stage 1 of model B run on model A's stage-1 inputs: rejected by model A's stage 1.
    let xs = inputs(&ta[1]);
    let theirs = run(&pb.stages()[1], &xs);
    assert!(mismatch(check(&forged(&xs, theirs), &pa.stages()[1])));
    // A leaf whose hidden size is wrong is rejected, not a panic.
    let mut bad = Trace::new();
    bad.push(vec![0.0; 3], vec![0.0; 3], Vec::new());
    let r = check(&bad, &pa.stages()[1]);
    assert!(matches!(r, Err(CError::Reexecution(_))), "{r:?}");
}

/// Committed runs on our integer kernels: an auditor on the same kernels reproduces them bit for
/// bit (logits included); runs of the f32 weights, which compute the same products without
/// rounding the activations, pass within tolerance; runs of candle's 8-bit kernels (another
/// computation) are refused.
#[test]
fn real_model_commitments_integer_kernels() {
    let ckpt = Checkpoint::open(real_model()).unwrap();
    let int16 = LoadOptions { gguf: GgufWeights::Int16, ..Default::default() };
    let p = Pipeline::load_split(&ckpt, 3, &int16).unwrap();
    let prompt = [1, 4093, 314, 253, 1345, 2821, 30, 2, 198];
    let ts = traces(&p, &prompt, 8);
    for (stage, t) in p.stages().iter().zip(&ts) {
        let redo = run(stage, &inputs(t));
        assert!(t.leaves().iter().zip(&redo).all(|(l, r)| l.output == *r), "bit for bit");
        check(t, stage).unwrap();
    }
    for (other, passes) in [(GgufWeights::Dequantized, true), (GgufWeights::Candle, false)] {
        let q = Pipeline::load_split(&ckpt, 3, &LoadOptions { gguf: other, ..Default::default() })
            .unwrap();
        let theirs = traces(&q, &prompt, 8);
        for (i, (stage, t)) in p.stages().iter().zip(&theirs).enumerate() {
            let r = check(t, stage);
            eprintln!("{other:?} stage {i} audited on integer kernels: {r:?}");
            assert_eq!(r.is_ok(), passes, "{other:?} stage {i}");
        }
    }
}
