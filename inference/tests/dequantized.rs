//! The dequantized-weights path on the real model: exact against candle's `quantized_llama` run
//! with `CANDLE_DEQUANTIZE_ALL=1`, and the batch-invariant attention kernel (used for committed
//! runs) within the bounds of the reference kernel.

mod common;

use bitorch_inference::{
    with_threads, Checkpoint, Engine, EngineOptions, GgufWeights, Kernel, LoadOptions, Pipeline,
    Sampler, SamplingParams,
};
use candle_core::{quantized::gguf_file, Device};
use candle_transformers::models::quantized_llama;
use common::*;

const PROMPTS: [&str; 2] = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The three laws of thermodynamics are",
];

/// Greedy tokens and each step's logits from a session with the given kernel.
fn run(p: &Pipeline, kernel: Kernel, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = p.new_session_with(false, kernel);
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut logits = p.step(&mut s, prompt).unwrap();
    let (mut toks, mut all) = (Vec::new(), Vec::new());
    for _ in 0..n {
        all.push(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let t = sampler.sample(&logits, &[]).unwrap();
        toks.push(t);
        if toks.len() == n {
            break;
        }
        logits = p.step(&mut s, &[t]).unwrap();
    }
    (toks, all)
}

/// The bounds for a path that does not compute exactly what the reference does: logits
/// within 1e-3 (relative to the largest logit) at every step while the tokens agree, and the
/// same first 32 greedy tokens.
fn check_close(
    what: &str,
    toks: &[u32],
    logits: &[Vec<f32>],
    want: &[u32],
    want_logits: &[Vec<f32>],
) {
    assert_eq!(toks[..32], want[..32], "{what}");
    let same = toks.iter().zip(want).take_while(|(a, b)| a == b).count();
    let mut worst = 0f32;
    for (a, b) in logits.iter().zip(want_logits).take(same + 1) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    eprintln!("{what}: {same}/{} tokens equal, worst relative logit error {worst:e}", toks.len());
    assert!(worst < 1e-3, "{what}");
}

#[test]
fn real_model_dequantized_matches_reference() {
    // quantized_llama reads this once per thread, when it first builds a matmul.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = real_model();
    let engine = Engine::load(
        &path,
        &EngineOptions { gguf: GgufWeights::Dequantized, ..Default::default() },
    )
    .unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    let opts = LoadOptions { gguf: GgufWeights::Dequantized, ..Default::default() };
    let fast_opts = LoadOptions { gguf: GgufWeights::Compact, ..Default::default() };
    let fast1 = Pipeline::load_split(&ckpt, 1, &fast_opts).unwrap();
    let fast3 = Pipeline::load_split(&ckpt, 3, &fast_opts).unwrap();
    let three = Pipeline::load_split(&ckpt, 3, &opts).unwrap();
    for prompt in PROMPTS {
        let ids = engine.tokenizer().encode(prompt).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut model = quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        let want = greedy_ref(|x, pos| model.forward(x, pos).unwrap(), &ids, 64);
        let (one, ref_logits) = run(engine.pipeline(), Kernel::Reference, &ids, 64);
        assert_eq!(one, want, "1 stage, {prompt:?}");
        assert_eq!(greedy(&three, &ids, 32), want[..32], "3 stages, {prompt:?}");
        // The batch-invariant kernel: logits within 1e-3 (relative to the largest logit) at
        // every step, the same first 32 greedy tokens, and stages bit-identical to one process.
        // (32 tokens from here on, to keep the suite fast.)
        let (inv, inv_logits) = run(engine.pipeline(), Kernel::BatchInvariant, &ids, 32);
        let (inv3, inv3_logits) = run(&three, Kernel::BatchInvariant, &ids, 32);
        assert_eq!(inv3, inv);
        assert_eq!(inv3_logits, inv_logits);
        check_close("batch-invariant attention", &inv, &inv_logits, &want, &ref_logits);
        // Our Q4_1 kernel, with the attention kernel workers use: the same bounds, stages
        // bit-identical.
        let (f1, f1_logits) = run(&fast1, Kernel::BatchInvariant, &ids, 32);
        let (f3, f3_logits) = run(&fast3, Kernel::BatchInvariant, &ids, 32);
        assert_eq!(f3, f1);
        assert_eq!(f3_logits, f1_logits);
        check_close("Q4_1 kernel", &f1, &f1_logits, &want, &ref_logits);
    }
}

/// Our integer kernels (16-bit activations against the Q4_1 layers and the Q8_0 head): 1, 3 and
/// 30 stages, and 1, 2 and 3 threads, give bit-identical logits; against the f32-weights path, the
/// answers and the worst logit error are reported (quantized activations are not exact).
#[test]
fn real_model_integer_kernels_are_the_same_bits_across_stages_and_threads() {
    let ckpt = Checkpoint::open(real_model()).unwrap();
    let opts = LoadOptions { gguf: GgufWeights::Int16, ..Default::default() };
    let one = Pipeline::load_split(&ckpt, 1, &opts).unwrap();
    let three = Pipeline::load_split(&ckpt, 3, &opts).unwrap();
    let thirty = Pipeline::load_split(&ckpt, 30, &opts).unwrap();
    let f32_opts = LoadOptions { gguf: GgufWeights::Dequantized, ..Default::default() };
    let reference = Pipeline::load_split(&ckpt, 1, &f32_opts).unwrap();
    let engine = Engine::load(real_model(), &EngineOptions::default()).unwrap();
    for prompt in PROMPTS {
        let ids = engine.tokenizer().encode(prompt).unwrap();
        let (t1, l1) = run(&one, Kernel::BatchInvariant, &ids, 24);
        let (t3, l3) = run(&three, Kernel::BatchInvariant, &ids, 24);
        let (t30, l30) = run(&thirty, Kernel::BatchInvariant, &ids, 24);
        assert_eq!((&t3, &t30), (&t1, &t1), "{prompt:?}");
        assert!(l3 == l1 && l30 == l1, "stages: the same bits, {prompt:?}");
        for threads in [1, 3] {
            let (tt, lt) = with_threads(threads, || run(&one, Kernel::BatchInvariant, &ids, 24));
            assert_eq!(tt, t1);
            assert!(lt == l1, "{threads} and 2 threads: the same bits, {prompt:?}");
        }
        let (want, want_logits) = run(&reference, Kernel::BatchInvariant, &ids, 24);
        let same = t1.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let mut worst = 0f32;
        for (a, b) in l1.iter().zip(&want_logits).take(same + 1) {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(diff / scale);
        }
        eprintln!(
            "integer kernels: {same}/24 greedy tokens as the f32-weights path, worst relative logit \
             error {worst:.1e}: {:?} vs {:?}",
            engine.tokenizer().decode(&t1).unwrap(),
            engine.tokenizer().decode(&want).unwrap()
        );
        // The bounds of `check_close`, over these 24 tokens.
        assert_eq!(same, 24, "the f32-weights path's answer, {prompt:?}");
        assert!(worst < 1e-3, "{prompt:?}: {worst:e}");
    }
}

/// Several sessions stepped together (`Stage::forward_layers_batch` and `head_batch`: one pass
/// over each matrix for all of them, prompts of different lengths and decode steps mixed) give
/// every session the bits it gets alone.
#[test]
fn real_model_batched_sessions_are_the_same_bits_as_alone() {
    let ckpt = Checkpoint::open(real_model()).unwrap();
    let opts = LoadOptions { gguf: GgufWeights::Int16, ..Default::default() };
    let pipeline = Pipeline::load_split(&ckpt, 1, &opts).unwrap();
    let stage = &pipeline.stages()[0];
    assert!(stage.batches_exactly());
    let engine = Engine::load(real_model(), &EngineOptions::default()).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .chain(&["Once upon a time, in a small village by the sea,"])
        .map(|p| engine.tokenizer().encode(p).unwrap())
        .collect();
    let embed = |ids: &[u32]| {
        stage.embed(&candle_core::Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap())
    };
    let greedy = |logits: &candle_core::Tensor| -> u32 {
        let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).unwrap() as u32
    };
    // Alone: each session's prompt, then 6 greedy steps.
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for ids in &prompts {
        let mut cache = stage.new_cache_with(Kernel::BatchInvariant);
        let mut input = ids.clone();
        let mut all = Vec::new();
        for _ in 0..7 {
            let y = stage.forward_layers(&embed(&input).unwrap(), cache.len(), &mut cache).unwrap();
            let logits = stage.head(&y).unwrap();
            input = vec![greedy(&logits)];
            all.push(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        alone.push(all);
    }
    // Together: the first session starts one step late, so prompts and decode steps mix.
    let mut caches: Vec<_> =
        prompts.iter().map(|_| stage.new_cache_with(Kernel::BatchInvariant)).collect();
    let mut inputs: Vec<Vec<u32>> = prompts.clone();
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for round in 0..8 {
        let live: Vec<usize> =
            (0..prompts.len()).filter(|&i| got[i].len() < 7 && (i > 0 || round > 0)).collect();
        let xs: Vec<_> = live.iter().map(|&i| embed(&inputs[i]).unwrap()).collect();
        let mut refs: Vec<&mut bitorch_inference::Cache> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| live.contains(i))
            .map(|(_, c)| c)
            .collect();
        let ys = stage.forward_layers_batch(&xs, &mut refs).unwrap();
        let logits = stage.head_batch(&ys).unwrap();
        for (&i, l) in live.iter().zip(&logits) {
            inputs[i] = vec![greedy(l)];
            got[i].push(l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }
    for (i, (a, g)) in alone.iter().zip(&got).enumerate() {
        assert!(a == g, "session {i}: batched logits differ from its own run");
    }
}
