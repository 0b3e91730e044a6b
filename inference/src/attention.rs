//! Batch-invariant attention, for runs that are committed to and audited.
//!
//! candle's attention (two batched f32 matmuls and a softmax) rounds differently depending on
//! how many query rows and keys a call has, so decoding one token at a time and re-executing the
//! same positions in one batch differ in the last bits. In a quantized model those bits do not
//! stay small: activations are re-quantized to 8 bits before every matmul, and a last-bit change
//! that moves a value across a rounding boundary moves it by a whole quantization step. Measured
//! on SmolLM2 Q4_1, a stage's outputs then differed by up to 1.2e-2 (relative L2) between the
//! sequential decode and the batched audit: as large as the cheating we must catch.
//!
//! This kernel computes every (head, query) row with the same fixed-order loops whatever the batch
//! and the position, so a row's result depends only on its own query and the keys and values at
//! or before it. With every other operation of a layer already row-wise (quantized matmuls
//! quantize and reduce row by row, norms, rotary embeddings and the MLP are per position), a stage
//! then produces bit-identical outputs for a position whether it ran in the prompt, in a decode
//! step or in an auditor's batch.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Dot product with eight fixed lanes (so it vectorizes) and a fixed final reduction.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0f32;
    for d in chunks * 8..a.len() {
        tail += a[d] * b[d];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Causal attention of `q` `(1, heads, seq, head_dim)` over `k`, `v`
/// `(1, kv_heads, pos + seq, head_dim)`, queries at positions `pos..pos + seq`. All f32.
/// Returns `(1, heads, seq, head_dim)`.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, pos: usize) -> Result<Tensor> {
    let (b, nh, seq, hd) = q.dims4()?;
    let (_, nkv, kv_len, _) = k.dims4()?;
    if b != 1 || kv_len != pos + seq || nh % nkv != 0 {
        candle_core::bail!("attention: q {:?} k {:?} at position {pos}", q.dims(), k.dims());
    }
    let rep = nh / nkv;
    let qs = q.flatten_all()?.to_vec1::<f32>()?;
    let ks = k.flatten_all()?.to_vec1::<f32>()?;
    let vs = v.flatten_all()?.to_vec1::<f32>()?;
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let mut out = vec![0f32; nh * seq * hd];
    out.par_chunks_mut(hd).enumerate().for_each(|(row, o)| {
        let (h, i) = (row / seq, row % seq);
        let g = h / rep;
        let qrow = &qs[row * hd..(row + 1) * hd];
        let keys = pos + i + 1;
        let kbase = g * kv_len * hd;
        let mut scores: Vec<f32> = (0..keys)
            .map(|j| dot(qrow, &ks[kbase + j * hd..kbase + (j + 1) * hd]) * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (j, &p) in scores.iter().enumerate() {
            let vrow = &vs[kbase + j * hd..kbase + (j + 1) * hd];
            for (od, &vd) in o.iter_mut().zip(vrow) {
                *od += p * vd;
            }
        }
        let inv = 1.0 / sum;
        for od in o.iter_mut() {
            *od *= inv;
        }
    });
    Tensor::from_vec(out, (1, nh, seq, hd), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let dev = Device::Cpu;
        let mut seed = 9;
        let q = bitorch_test_support::tiny::seeded(&mut seed, &[1, 4, 9, 16], 1.0);
        let k = bitorch_test_support::tiny::seeded(&mut seed, &[1, 2, 9, 16], 1.0);
        let v = bitorch_test_support::tiny::seeded(&mut seed, &[1, 2, 9, 16], 1.0);
        let all = attention(&q, &k, &v, 0).unwrap();
        for i in 0..9 {
            let one = attention(
                &q.i((.., .., i..i + 1, ..)).unwrap().contiguous().unwrap(),
                &k.i((.., .., ..i + 1, ..)).unwrap().contiguous().unwrap(),
                &v.i((.., .., ..i + 1, ..)).unwrap().contiguous().unwrap(),
                i,
            )
            .unwrap();
            let a = all
                .i((.., .., i..i + 1, ..))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(one.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
        }
        // And it is attention: close to candle's softmax(q k^T / sqrt(d)) v.
        let kr = candle_transformers::utils::repeat_kv(k, 2).unwrap();
        let vr = candle_transformers::utils::repeat_kv(v, 2).unwrap();
        let att = (q.matmul(&kr.t().unwrap()).unwrap() / 4.0).unwrap();
        let mask = candle_transformers::utils::build_causal_mask(9, 0, &dev).unwrap();
        let ninf = Tensor::new(f32::NEG_INFINITY, &dev).unwrap().broadcast_as(att.shape()).unwrap();
        let att = mask.broadcast_as(att.shape()).unwrap().where_cond(&ninf, &att).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&att).unwrap().matmul(&vr).unwrap();
        let diff = (want - &all).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
