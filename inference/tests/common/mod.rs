//! Helpers shared by the integration tests: tiny random models and the real test model.
#![allow(dead_code)]

use bitorch_inference::{Pipeline, Sampler, SamplingParams};
use candle_core::{
    quantized::{gguf_file, GgmlDType, QTensor},
    DType, Device, Tensor,
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// The real test model (SmolLM2-135M-Instruct Q4_1), from `BITORCH_TEST_MODEL`.
pub fn real_model() -> PathBuf {
    match std::env::var_os("BITORCH_TEST_MODEL") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "BITORCH_TEST_MODEL must name the test model (now {other:?}): run scripts/fetch-model.sh \
             and set BITORCH_TEST_MODEL to the path it prints"
        ),
    }
}

/// Shape of a tiny random model.
#[derive(Clone, Copy)]
pub struct Tiny {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    pub tie: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            hidden: 64,
            inter: 160,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            vocab: 97,
            context: 96,
            tie: false,
        }
    }
}

fn randn(seed: &mut u64, shape: &[usize], scale: f32) -> Tensor {
    // A small xorshift generator: tests must be reproducible and candle's randn is not seeded.
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Hugging Face names and shapes of every tensor of a tiny model.
pub fn hf_tensors(t: &Tiny, seed: u64) -> Vec<(String, Tensor)> {
    let mut s = seed.max(1);
    let hd = t.hidden / t.heads;
    let (q, kv) = (t.heads * hd, t.kv_heads * hd);
    let mut out =
        vec![("model.embed_tokens.weight".to_string(), randn(&mut s, &[t.vocab, t.hidden], 1.0))];
    for l in 0..t.layers {
        let p = format!("model.layers.{l}");
        let w = 1.0 / (t.hidden as f32).sqrt();
        let mut push = |n: &str, shape: &[usize], scale: f32| {
            out.push((format!("{p}.{n}"), randn(&mut s, shape, scale)));
        };
        push("self_attn.q_proj.weight", &[q, t.hidden], 2.0 * w);
        push("self_attn.k_proj.weight", &[kv, t.hidden], 2.0 * w);
        push("self_attn.v_proj.weight", &[kv, t.hidden], w);
        push("self_attn.o_proj.weight", &[t.hidden, q], w);
        push("mlp.gate_proj.weight", &[t.inter, t.hidden], w);
        push("mlp.up_proj.weight", &[t.inter, t.hidden], w);
        push("mlp.down_proj.weight", &[t.hidden, t.inter], w);
        out.push((
            format!("{p}.input_layernorm.weight"),
            (randn(&mut s, &[t.hidden], 0.2) + 1.0).unwrap(),
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            (randn(&mut s, &[t.hidden], 0.2) + 1.0).unwrap(),
        ));
    }
    out.push(("model.norm.weight".into(), (randn(&mut s, &[t.hidden], 0.2) + 1.0).unwrap()));
    if !t.tie {
        out.push((
            "lm_head.weight".into(),
            randn(&mut s, &[t.vocab, t.hidden], 1.0 / (t.hidden as f32).sqrt()),
        ));
    }
    out
}

pub fn hf_config(t: &Tiny) -> String {
    format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": {}, "intermediate_size": {},
        "vocab_size": {}, "num_hidden_layers": {}, "num_attention_heads": {},
        "num_key_value_heads": {}, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": {}, "tie_word_embeddings": {}, "eos_token_id": 0,
        "torch_dtype": "float32"}}"#,
        t.hidden, t.inter, t.vocab, t.layers, t.heads, t.kv_heads, t.context, t.tie
    )
}

/// Writes a tiny random safetensors model (config.json + model.safetensors) into `dir`, in
/// `dtype`; `skip` leaves out tensors whose name contains it.
pub fn write_safetensors(dir: &Path, t: &Tiny, seed: u64, dtype: DType, skip: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let tensors: HashMap<String, Tensor> = hf_tensors(t, seed)
        .into_iter()
        .filter(|(n, _)| skip.is_none_or(|s| !n.contains(s)))
        .map(|(n, x)| (n, x.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), hf_config(t)).unwrap();
}

/// Writes a tiny random GGUF model (llama.cpp names) with weights quantized to `dtype`.
pub fn write_gguf(path: &Path, t: &Tiny, seed: u64, dtype: GgmlDType) {
    let map = |n: &str| -> String {
        n.replace("model.embed_tokens", "token_embd")
            .replace("model.layers.", "blk.")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("input_layernorm", "attn_norm")
            .replace("model.norm", "output_norm")
            .replace("lm_head", "output")
    };
    let qt: Vec<(String, QTensor)> = hf_tensors(t, seed)
        .into_iter()
        .map(|(n, x)| {
            let q = if x.rank() == 1 { GgmlDType::F32 } else { dtype };
            (map(&n), QTensor::quantize(&x, q).unwrap())
        })
        .collect();
    use gguf_file::Value as V;
    let u = |x: usize| V::U32(x as u32);
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.context_length", u(t.context)),
        ("llama.embedding_length", u(t.hidden)),
        ("llama.feed_forward_length", u(t.inter)),
        ("llama.block_count", u(t.layers)),
        ("llama.attention.head_count", u(t.heads)),
        ("llama.attention.head_count_kv", u(t.kv_heads)),
        ("llama.rope.dimension_count", u(t.hidden / t.heads)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.freq_base", V::F32(10000.0)),
    ];
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qt.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// Greedy tokens from one of our pipelines.
pub fn greedy(p: &Pipeline, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = p.new_session(false);
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut logits = p.step(&mut s, prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = sampler.sample(&logits, &[]).unwrap();
        out.push(t);
        if out.len() == n {
            break;
        }
        logits = p.step(&mut s, &[t]).unwrap();
    }
    out
}

/// Greedy tokens from any `forward(tokens, pos) -> logits` reference.
pub fn greedy_ref(
    mut forward: impl FnMut(&Tensor, usize) -> Tensor,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let x = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut logits = forward(&x, 0);
    let mut out = Vec::new();
    for pos in prompt.len().. {
        let t = sampler.sample(&logits, &[]).unwrap();
        out.push(t);
        if out.len() == n {
            break;
        }
        let x = Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        logits = forward(&x, pos);
    }
    out
}
