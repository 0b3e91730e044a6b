//! Choosing the next token: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//!
//! Always among the [`TOP_LOGITS`] most likely tokens: that is all a network's last stage
//! returns and commits to ([`bitorch_commitment::top`]), so the same sampler gives the same
//! tokens in one process and over the network (greedy decoding is unaffected; sampling at a
//! temperature is as with a top-64 cut, llama.cpp's default cut being 40).

use crate::{Error, Result};
use bitorch_commitment::{top_logits, TOP_LOGITS};
use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// How to pick tokens. The default is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less) means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (nucleus sampling).
    pub top_p: Option<f64>,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this; 1 is
    /// off.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random generator: the same seed, model and prompt give the same text.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 299_792_458,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    fn check(&self) -> Result<()> {
        if !self.temperature.is_finite() {
            return Err(Error::Sampling("temperature must be a finite number".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Sampling(format!("top-p {p} is not in (0, 1]")));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::Sampling("top-k must be at least 1".into()));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(Error::Sampling("repeat penalty must be positive".into()));
        }
        Ok(())
    }
}

/// A seeded sampler (candle-transformers' `LogitsProcessor`, plus the repetition penalty).
pub struct Sampler {
    params: SamplingParams,
    inner: LogitsProcessor,
}

impl Sampler {
    /// A sampler for these parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.check()?;
        let t = params.temperature;
        let sampling = if t <= 0.0 {
            Sampling::ArgMax
        } else {
            match (params.top_k, params.top_p) {
                (None, None) => Sampling::All { temperature: t },
                (Some(k), None) => Sampling::TopK { k, temperature: t },
                (None, Some(p)) => Sampling::TopP { p, temperature: t },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature: t },
            }
        };
        Ok(Self { inner: LogitsProcessor::from_sampling(params.seed, sampling), params })
    }

    /// Picks a token from logits `(vocab)` or `(1, vocab)`, given the tokens so far: among the
    /// top [`TOP_LOGITS`] (the others' logits count as minus infinity), then the repetition
    /// penalty, then the sampling.
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let logits = logits.flatten_all()?.to_dtype(DType::F32)?;
        let all = logits.to_vec1::<f32>()?;
        let logits = if all.len() > TOP_LOGITS {
            let mut kept = vec![f32::NEG_INFINITY; all.len()];
            for (id, x) in top_logits(&all) {
                kept[id as usize] = x;
            }
            Tensor::from_vec(kept, all.len(), logits.device())?
        } else {
            logits
        };
        let logits = if self.params.repeat_penalty == 1.0 {
            logits
        } else {
            let start = history.len().saturating_sub(self.params.repeat_last_n);
            candle_transformers::utils::apply_repeat_penalty(
                &logits,
                self.params.repeat_penalty,
                &history[start..],
            )?
        };
        Ok(self.inner.sample(&logits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits() -> Tensor {
        Tensor::new(&[1.0f32, 3.0, 2.9, -1.0, 0.5], &Device::Cpu).unwrap()
    }

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&logits(), &[1]).unwrap(), 1);
        let mut s =
            Sampler::new(SamplingParams { repeat_penalty: 1.5, ..Default::default() }).unwrap();
        assert_eq!(s.sample(&logits(), &[1]).unwrap(), 2);
    }

    #[test]
    fn only_the_top_logits_are_ever_picked() {
        // 200 tokens, token t's logit t/1000: nearly flat at temperature 10.
        let flat: Vec<f32> = (0..200).map(|t| t as f32 / 1000.0).collect();
        let logits = Tensor::new(flat.as_slice(), &Device::Cpu).unwrap();
        let p = SamplingParams { temperature: 10.0, seed: 3, ..Default::default() };
        let mut s = Sampler::new(p).unwrap();
        let picks: Vec<u32> = (0..500).map(|_| s.sample(&logits, &[]).unwrap()).collect();
        let lowest_kept = (200 - TOP_LOGITS) as u32;
        assert!(picks.iter().all(|&t| t >= lowest_kept), "{picks:?}");
        assert!(picks.iter().any(|&t| t < lowest_kept + 8), "the whole top is reachable");
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let p = SamplingParams {
            temperature: 1.5,
            top_k: Some(4),
            top_p: Some(0.95),
            seed: 7,
            ..Default::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..32).map(|_| s.sample(&logits(), &[]).unwrap()).collect::<Vec<_>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p));
        assert!(a.iter().all(|&t| t != 3), "top-k 4 never picks the least likely token");
        assert!(a.iter().any(|&t| t != a[0]), "temperature 1.5 varies");
        assert_ne!(a, run(&SamplingParams { seed: 8, ..p }));
    }

    #[test]
    fn bad_params() {
        assert!(Sampler::new(SamplingParams { top_p: Some(1.5), ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_k: Some(0), ..Default::default() }).is_err());
        assert!(
            Sampler::new(SamplingParams { temperature: f64::NAN, ..Default::default() }).is_err()
        );
    }
}
