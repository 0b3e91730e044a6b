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

use crate::pool::{Pool, Task};
use candle_core::{Result, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// Where the keys (or values) of a stage's layer lie: key `j` of KV head `g` is the `head_dim`
/// values from `g × group + j × step`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvLayout {
    /// Distance between two KV heads' rows of one position.
    pub group: usize,
    /// Distance between two positions' rows of one KV head.
    pub step: usize,
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
    let qs = q.flatten_all()?.to_vec1::<f32>()?;
    let ks = k.flatten_all()?.to_vec1::<f32>()?;
    let vs = v.flatten_all()?.to_vec1::<f32>()?;
    let layout = KvLayout { group: kv_len * hd, step: hd };
    let out = attend(qs, (nh, seq, hd), nkv, Arc::new(ks), Arc::new(vs), layout, pos);
    Tensor::from_vec(out, (1, nh, seq, hd), q.device())
}

/// The kernel: queries `qs` laid out `(heads, seq, head_dim)` at positions `pos..pos + seq`,
/// against `nkv` KV heads of keys `ks` and values `vs` laid out as `layout` says; returns
/// `(heads, seq, head_dim)`. The result of a row does not depend on the layout either. Rows are
/// split among the engine's [`Pool`].
pub(crate) fn attend(
    qs: Vec<f32>,
    dims: (usize, usize, usize),
    nkv: usize,
    ks: Arc<Vec<f32>>,
    vs: Arc<Vec<f32>>,
    layout: KvLayout,
    pos: usize,
) -> Vec<f32> {
    let pool = Pool::global();
    // One chunk per row at most, a few per thread: threads take them in turn.
    let chunks = (pool.parts() * 4).min(dims.0 * dims.1).max(1);
    let task = Arc::new(Attend {
        qs,
        dims,
        nkv,
        ks,
        vs,
        layout,
        pos,
        next: AtomicUsize::new(0),
        outs: (0..chunks).map(|_| Mutex::new(Vec::new())).collect(),
    });
    pool.run(task.clone());
    let mut out = Vec::with_capacity(dims.0 * dims.1 * dims.2);
    for o in &task.outs {
        out.extend_from_slice(&o.lock().unwrap_or_else(|e| e.into_inner()));
    }
    out
}

/// One attention job: the `(head, query)` rows in fixed chunks (`outs.len()` of them), which the
/// pool's threads take one at a time.
struct Attend {
    qs: Vec<f32>,
    dims: (usize, usize, usize),
    nkv: usize,
    ks: Arc<Vec<f32>>,
    vs: Arc<Vec<f32>>,
    layout: KvLayout,
    pos: usize,
    next: AtomicUsize,
    outs: Vec<Mutex<Vec<f32>>>,
}

impl Task for Attend {
    fn run(&self, _part: usize, _parts: usize) {
        let (nh, seq, hd) = self.dims;
        let (rows, chunks) = (nh * seq, self.outs.len());
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                return;
            }
            let (lo, hi) = (c * rows / chunks, (c + 1) * rows / chunks);
            let mut out = vec![0f32; (hi - lo) * hd];
            for (row, o) in (lo..hi).zip(out.chunks_exact_mut(hd)) {
                self.row(row, o);
            }
            *self.outs[c].lock().unwrap_or_else(|e| e.into_inner()) = out;
        }
    }
}

impl Attend {
    /// Row `row` (head `row / seq`, query `row % seq`) into `o` (zeros).
    fn row(&self, row: usize, o: &mut [f32]) {
        let (nh, seq, hd) = self.dims;
        let (ks, vs, layout) = (&self.ks[..], &self.vs[..], self.layout);
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let (h, i) = (row / seq, row % seq);
        let g = h / (nh / self.nkv);
        let qrow = &self.qs[row * hd..(row + 1) * hd];
        let keys = self.pos + i + 1;
        let at = |j: usize| g * layout.group + j * layout.step;
        let mut scores: Vec<f32> =
            (0..keys).map(|j| dot(qrow, &ks[at(j)..at(j) + hd]) * scale).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (j, &p) in scores.iter().enumerate() {
            let vrow = &vs[at(j)..at(j) + hd];
            for (od, &vd) in o.iter_mut().zip(vrow) {
                *od += p * vd;
            }
        }
        let inv = 1.0 / sum;
        for od in o.iter_mut() {
            *od *= inv;
        }
    }
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
