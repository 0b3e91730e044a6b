//! Helpers shared by the integration tests: tiny random models and the real test model.
#![allow(dead_code)]

use bitorch_inference::{Pipeline, Sampler, SamplingParams};
use candle_core::{Device, Tensor};

pub use bitorch_test_support::real_model;
#[allow(unused_imports)]
pub use bitorch_test_support::tiny::{hf_config, hf_tensors, write_gguf, write_safetensors, Tiny};

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
