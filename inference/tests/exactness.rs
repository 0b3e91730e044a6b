//! Our sharded engine against candle-transformers' single-process references: same greedy
//! tokens (and, for the tiny models, bit-identical logits) for any number of stages.

mod common;

use bitorch_inference::{
    split_layers, Checkpoint, Engine, EngineOptions, GgufWeights, LoadOptions, Pipeline,
};
use candle_core::{
    quantized::{gguf_file, GgmlDType},
    DType, Device, Tensor,
};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, quantized_llama};
use common::*;

fn candle_llama(dir: &std::path::Path, dtype: DType) -> (llama::Llama, llama::Cache) {
    let cfg: llama::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, dtype, &Device::Cpu).unwrap();
    let model = llama::Llama::load(vb, &cfg).unwrap();
    let cache = llama::Cache::new(true, dtype, &cfg, &Device::Cpu).unwrap();
    (model, cache)
}

fn check_safetensors(tiny: Tiny, dtype: DType) {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(dir.path(), &tiny, 11, dtype, None);
    let prompt: Vec<u32> = vec![1, 5, 9, 33, 2, 70, 64, 8];
    let n = 40;
    let (model, mut cache) = candle_llama(dir.path(), dtype);
    let want = greedy_ref(|x, pos| model.forward(x, pos, &mut cache).unwrap(), &prompt, n);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    for stages in [1, 2, tiny.layers] {
        let p = Pipeline::load_split(&ckpt, stages, &LoadOptions::new(dtype)).unwrap();
        assert_eq!(greedy(&p, &prompt, n), want, "{stages} stages, {dtype:?}");
    }
    // Bit-identical prefill logits, too.
    let (model, mut cache) = candle_llama(dir.path(), dtype);
    let x = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let want =
        model.forward(&x, 0, &mut cache).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let p = Pipeline::load_split(&ckpt, 3, &LoadOptions::new(dtype)).unwrap();
    let mut s = p.new_session(false);
    let got = p.step(&mut s, &prompt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got, want);
}

#[test]
fn tiny_safetensors_matches_candle_llama() {
    check_safetensors(Tiny::default(), DType::F32);
    check_safetensors(Tiny { tie: true, kv_heads: 4, ..Tiny::default() }, DType::F32);
}

#[test]
fn tiny_safetensors_half_precision_matches_candle_llama() {
    check_safetensors(Tiny::default(), DType::BF16);
    check_safetensors(Tiny::default(), DType::F16);
}

#[test]
fn tiny_gguf_matches_quantized_llama() {
    let tiny = Tiny { hidden: 256, inter: 512, vocab: 130, layers: 3, ..Tiny::default() };
    let prompt: Vec<u32> = vec![3, 17, 99, 4, 120, 7];
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::F16,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_gguf(&path, &tiny, 5, dtype);
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut model = quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        let want = greedy_ref(|x, pos| model.forward(x, pos).unwrap(), &prompt, 30);
        let ckpt = Checkpoint::open(&path).unwrap();
        for stages in [1, 2, 3] {
            let p = Pipeline::load_split(&ckpt, stages, &LoadOptions::default()).unwrap();
            assert_eq!(greedy(&p, &prompt, 30), want, "{dtype:?}, {stages} stages");
        }
    }
}

/// The exactness requirement on the real model: 1, 2, 3 and 30 stages give exactly
/// candle's `quantized_llama` greedy tokens for 64 generated tokens from several prompts.
#[test]
fn real_model_stages_match_quantized_llama() {
    let path = real_model();
    let engine1 =
        Engine::load(&path, &EngineOptions { gguf: GgufWeights::Candle, ..Default::default() })
            .unwrap();
    let prompts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "The three laws of thermodynamics are",
    ];
    let ckpt = Checkpoint::open(&path).unwrap();
    let num_layers = ckpt.config().num_layers;
    assert_eq!(num_layers, 30);
    let mut pipelines = Vec::new();
    for stages in [2, 3, 30] {
        let ranges = split_layers(num_layers, stages).unwrap();
        pipelines.push((stages, Pipeline::load(&ckpt, &ranges, &LoadOptions::default()).unwrap()));
    }
    for prompt in prompts {
        let ids = engine1.tokenizer().encode(prompt).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut model = quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        let want = greedy_ref(|x, pos| model.forward(x, pos).unwrap(), &ids, 64);
        assert_eq!(greedy(engine1.pipeline(), &ids, 64), want, "1 stage, prompt {prompt:?}");
        for (stages, p) in &pipelines {
            assert_eq!(greedy(p, &ids, 64), want, "{stages} stages, prompt {prompt:?}");
        }
    }
}

/// Greedy logits of every step of a recording session (the batch-invariant attention workers
/// run).
fn logits_of(p: &Pipeline, prompt: &[u32], n: usize) -> Vec<Vec<f32>> {
    let mut s = p.new_session(true);
    let mut logits = p.step(&mut s, prompt).unwrap();
    let mut all = Vec::new();
    for _ in 0..n {
        let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let t = (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).unwrap();
        all.push(v);
        logits = p.step(&mut s, &[t as u32]).unwrap();
    }
    all
}

/// Our integer kernels on tiny models of every type they take: 1, 2 and 3 stages and 1, 2 and
/// 3 threads give the same bits, close to the same weights dequantized to f32.
#[test]
fn tiny_gguf_integer_kernels_are_the_same_bits_across_stages_and_threads() {
    let tiny = Tiny { hidden: 256, inter: 512, vocab: 130, layers: 3, ..Tiny::default() };
    let prompt: Vec<u32> = vec![3, 17, 99, 4, 120, 7];
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_gguf(&path, &tiny, 5, dtype);
        let ckpt = Checkpoint::open(&path).unwrap();
        let ints = LoadOptions { gguf: GgufWeights::Int16, ..LoadOptions::default() };
        let one = Pipeline::load_split(&ckpt, 1, &ints).unwrap();
        assert!(one.stages()[0].batches_exactly(), "{dtype:?}: every matrix on our kernels");
        let want = logits_of(&one, &prompt, 12);
        for stages in [2, 3] {
            let p = Pipeline::load_split(&ckpt, stages, &ints).unwrap();
            assert!(logits_of(&p, &prompt, 12) == want, "{dtype:?}, {stages} stages");
        }
        for threads in [1, 3] {
            let got = bitorch_inference::with_threads(threads, || logits_of(&one, &prompt, 12));
            assert!(got == want, "{dtype:?}, {threads} threads");
        }
        let f32s = LoadOptions { gguf: GgufWeights::Dequantized, ..LoadOptions::default() };
        let reference = logits_of(&Pipeline::load_split(&ckpt, 1, &f32s).unwrap(), &prompt, 1);
        let scale = reference[0].iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = want[0].iter().zip(&reference[0]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff / scale < 1e-3, "{dtype:?}: {:e} of the largest logit", diff / scale);
    }
}
