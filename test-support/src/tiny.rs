//! Tiny random Llama models for tests, the same for the same seed on every machine.

use candle_core::{
    quantized::{gguf_file, GgmlDType, QTensor},
    DType, Device, Tensor,
};
use std::collections::HashMap;
use std::path::Path;

/// Shape of a tiny random model.
#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub inter: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context window.
    pub context: usize,
    /// The output head shares the embeddings (no `lm_head.weight`).
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

/// `shape` values uniform in `[-scale, scale)` from a xorshift generator seeded with `seed`
/// (advanced in place, so that consecutive calls give different tensors): candle's
/// `Tensor::randn` is not seeded, and tests must be reproducible.
pub fn seeded(seed: &mut u64, shape: &[usize], scale: f32) -> Tensor {
    if *seed == 0 {
        *seed = 1;
    }
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("a shape of its own length")
}

/// Hugging Face names and shapes of every tensor of a tiny model.
pub fn hf_tensors(t: &Tiny, seed: u64) -> Vec<(String, Tensor)> {
    let mut s = seed.max(1);
    let hd = t.hidden / t.heads;
    let (q, kv) = (t.heads * hd, t.kv_heads * hd);
    let norm = |s: &mut u64| (seeded(s, &[t.hidden], 0.2) + 1.0).expect("f32 add");
    let mut out =
        vec![("model.embed_tokens.weight".to_string(), seeded(&mut s, &[t.vocab, t.hidden], 1.0))];
    let w = 1.0 / (t.hidden as f32).sqrt();
    for l in 0..t.layers {
        let p = format!("model.layers.{l}");
        for (n, shape, scale) in [
            ("self_attn.q_proj.weight", [q, t.hidden], 2.0 * w),
            ("self_attn.k_proj.weight", [kv, t.hidden], 2.0 * w),
            ("self_attn.v_proj.weight", [kv, t.hidden], w),
            ("self_attn.o_proj.weight", [t.hidden, q], w),
            ("mlp.gate_proj.weight", [t.inter, t.hidden], w),
            ("mlp.up_proj.weight", [t.inter, t.hidden], w),
            ("mlp.down_proj.weight", [t.hidden, t.inter], w),
        ] {
            out.push((format!("{p}.{n}"), seeded(&mut s, &shape, scale)));
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            out.push((format!("{p}.{n}.weight"), norm(&mut s)));
        }
    }
    out.push(("model.norm.weight".into(), norm(&mut s)));
    if !t.tie {
        out.push(("lm_head.weight".into(), seeded(&mut s, &[t.vocab, t.hidden], w)));
    }
    out
}

/// The `config.json` of a tiny model.
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
    std::fs::create_dir_all(dir).expect("create the model folder");
    let tensors: HashMap<String, Tensor> = hf_tensors(t, seed)
        .into_iter()
        .filter(|(n, _)| skip.is_none_or(|s| !n.contains(s)))
        .map(|(n, x)| (n, x.to_dtype(dtype).expect("dtype conversion")))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
        .expect("write model.safetensors");
    std::fs::write(dir.join("config.json"), hf_config(t)).expect("write config.json");
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
            (map(&n), QTensor::quantize(&x, q).expect("quantize"))
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
    let mut f = std::fs::File::create(path).expect("create the GGUF file");
    gguf_file::write(&mut f, &md_refs, &t_refs).expect("write the GGUF file");
}
