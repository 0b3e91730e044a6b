//! Model hyper-parameters, from GGUF metadata or a Hugging Face `config.json`.

use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

/// Llama 3 style RoPE frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    /// Overall scaling factor.
    pub factor: f32,
    /// Low-frequency factor.
    pub low_freq_factor: f32,
    /// High-frequency factor.
    pub high_freq_factor: f32,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
    /// `"llama3"` applies the scaling; `"default"` ignores it.
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// The hyper-parameters a stage needs, whatever the checkpoint format.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `general.architecture` for GGUF, `"llama"` for safetensors.
    pub architecture: String,
    /// Width of the hidden state.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head (`hidden_size / num_heads`).
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMS norm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Dimensions rotated by RoPE.
    pub rope_dim: usize,
    /// Interleaved RoPE (pairs 2i, 2i+1), as GGUF Llama checkpoints store q/k permuted for it;
    /// Hugging Face checkpoints use the half-split layout (pairs i, i + d/2).
    pub rope_interleaved: bool,
    /// Llama 3 RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Maximum number of positions (prompt plus generated tokens).
    pub context_length: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata.get(key).ok_or_else(|| Error::BadConfig(format!("GGUF metadata lacks '{key}'")))
}

fn md_usize(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    let v = md(ct, key)?;
    let n = match v {
        gguf_file::Value::U64(n) => *n,
        gguf_file::Value::I64(n) if *n >= 0 => *n as u64,
        v => v.to_u32().map_err(|e| Error::BadConfig(format!("'{key}': {e}")))? as u64,
    };
    usize::try_from(n).map_err(|_| Error::BadConfig(format!("'{key}' = {n} is too large")))
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Result<f32> {
    md(ct, key)?.to_f32().map_err(|e| Error::BadConfig(format!("'{key}': {e}")))
}

/// GGUF architectures whose RoPE is the half-split (NeoX) layout; the rest, Llama included,
/// are interleaved. Same list as candle's `quantized_llama` (from llama.cpp).
const NEOX_ARCHS: &[&str] = &[
    "qwen",
    "qwen2",
    "qwen2moe",
    "qwen3",
    "qwen3moe",
    "falcon",
    "grok",
    "dbrx",
    "phi2",
    "phi3",
    "phimoe",
    "stablelm",
    "starcoder2",
    "bert",
    "nomic-bert",
    "jina-bert-v2",
    "olmo2",
    "olmoe",
    "codeshell",
    "plamo",
];

impl Config {
    /// Reads the hyper-parameters of a GGUF checkpoint (keys `{arch}.*`).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = match ct.metadata.get("general.architecture") {
            Some(v) => v
                .to_string()
                .map_err(|e| Error::BadConfig(format!("general.architecture: {e}")))?
                .clone(),
            None => "llama".to_string(),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let hidden_size = md_usize(ct, &k("embedding_length"))?;
        let num_heads = md_usize(ct, &k("attention.head_count"))?;
        let num_kv_heads = md_usize(ct, &k("attention.head_count_kv")).unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || hidden_size % num_heads != 0 {
            return Err(Error::BadConfig(format!(
                "{hidden_size} hidden units cannot be split into {num_heads} heads"
            )));
        }
        if num_heads % num_kv_heads != 0 {
            return Err(Error::BadConfig(format!(
                "{num_heads} heads are not a multiple of {num_kv_heads} key/value heads"
            )));
        }
        let head_dim = hidden_size / num_heads;
        let vocab_size = match md_usize(ct, &k("vocab_size")) {
            Ok(n) => n,
            Err(_) => match ct.tensor_infos.get("token_embd.weight") {
                Some(info) if info.shape.rank() == 2 => info.shape.dims()[0],
                _ => return Err(Error::MissingTensor { name: "token_embd.weight".into() }),
            },
        };
        let tie_word_embeddings = !ct.tensor_infos.contains_key("output.weight");
        let cfg = Self {
            hidden_size,
            intermediate_size: md_usize(ct, &k("feed_forward_length"))?,
            num_layers: md_usize(ct, &k("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: md_f32(ct, &k("attention.layer_norm_rms_epsilon"))? as f64,
            rope_theta: md_f32(ct, &k("rope.freq_base")).unwrap_or(10_000.0),
            rope_dim: md_usize(ct, &k("rope.dimension_count")).unwrap_or(head_dim),
            rope_interleaved: !NEOX_ARCHS.contains(&arch.as_str()),
            rope_scaling: None,
            context_length: md_usize(ct, &k("context_length")).unwrap_or(4096),
            tie_word_embeddings,
            architecture: arch,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses a Hugging Face Llama `config.json`.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(json)
            .map_err(|e| Error::BadConfig(format!("config.json: {e}")))?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(Error::BadConfig(format!(
                "{} hidden units cannot be split into {} heads",
                c.hidden_size, c.num_attention_heads
            )));
        }
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if num_kv_heads == 0 || c.num_attention_heads % num_kv_heads != 0 {
            return Err(Error::BadConfig(format!(
                "{} heads are not a multiple of {num_kv_heads} key/value heads",
                c.num_attention_heads
            )));
        }
        let head_dim = c.hidden_size / c.num_attention_heads;
        let cfg = Self {
            architecture: "llama".into(),
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: c.vocab_size,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            rope_dim: head_dim,
            rope_interleaved: false,
            rope_scaling: c.rope_scaling,
            context_length: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return Err(Error::BadConfig("model has no layers, hidden units or vocabulary".into()));
        }
        if self.context_length == 0 || self.context_length > 1 << 24 {
            return Err(Error::BadConfig(format!(
                "context length {} is out of range",
                self.context_length
            )));
        }
        if self.rope_dim != self.head_dim {
            return Err(Error::BadConfig(format!(
                "partial rotary embeddings ({} of {} dims) are not supported",
                self.rope_dim, self.head_dim
            )));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f32,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_parses_and_validates() {
        let json = r#"{"hidden_size": 64, "intermediate_size": 128, "vocab_size": 100,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 64}"#;
        let c = Config::from_hf_json(json).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(!c.rope_interleaved);
        let bad = json.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        assert!(matches!(Config::from_hf_json(&bad), Err(Error::BadConfig(_))));
        assert!(matches!(Config::from_hf_json("{"), Err(Error::BadConfig(_))));
    }
}
