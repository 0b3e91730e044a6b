//! Our Q4_1 matrix-vector kernel: Q4_1 weights against f32 activations.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 (its dot product is the scalar reference loop), and it
//! quantizes activations to 8 bits (Q8_1) first, which costs accuracy: on SmolLM2-135M the
//! answers derail. This kernel keeps activations in f32 and unpacks the 4-bit weights on the fly,
//! so it computes the same products as dequantizing the weights to f32 (to rounding), while
//! reading a sixth of the bytes. Each output is a fixed-order sum (sixteen lanes across blocks,
//! then a fixed reduction) that does not depend on how many rows are multiplied at once, so it
//! is batch-invariant like the attention kernel (`attention.rs`). Written in safe Rust for the
//! compiler to vectorize the sixteen-lane loop; on a plain x86-64 (SSE2) release build it runs at
//! about half the speed of candle's scalar Q4_1 kernel, so it is for memory, not speed, for now.

use candle_core::{quantized::QTensor, Result, Tensor};
use rayon::prelude::*;

const QK: usize = 32;
/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;

/// IEEE half to single precision (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        0 => {
            let v = man as f32 / 16_777_216.0;
            if sign != 0 {
                -v
            } else {
                v
            }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// The rows of `x` (shape `(..., k)`) as f32, row-major, and the leading dimensions; an error
/// unless its last dimension is `k`. The input side of our matrix kernels.
pub(crate) fn input_rows(x: &Tensor, k: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    let dims = x.dims();
    let Some((&cols, lead)) = dims.split_last() else { candle_core::bail!("matmul of a scalar") };
    if cols != k {
        candle_core::bail!("matmul: input has {cols} columns, weights {k}");
    }
    Ok((x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?, lead.to_vec()))
}

/// The output side of our matrix kernels: `out_t`, computed output row by output row (`n` of
/// them, each over every input row), transposed to shape `(lead..., n)`.
pub(crate) fn output_rows(
    out_t: &[f32],
    n: usize,
    mut lead: Vec<usize>,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let rows = out_t.len().checked_div(n).unwrap_or(0);
    let mut out = vec![0f32; rows * n];
    for r in 0..n {
        for i in 0..rows {
            out[i * n + r] = out_t[r * rows + i];
        }
    }
    lead.push(n);
    Tensor::from_vec(out, lead, device)
}

/// A Q4_1 matrix `(n, k)`, unpacked into scales, minimums and nibbles.
#[derive(Debug)]
pub(crate) struct Q41Matrix {
    n: usize,
    k: usize,
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<[u8; 16]>,
}

impl Q41Matrix {
    /// From a Q4_1 `QTensor` of shape `(n, k)`.
    pub(crate) fn from_qtensor(t: &QTensor) -> Result<Self> {
        let (n, k) = t.shape().dims2()?;
        if k % QK != 0 {
            candle_core::bail!("Q4_1 rows of {k} values are not whole blocks");
        }
        let data = t.data()?;
        let blocks = n * k / QK;
        if data.len() != blocks * BLOCK_BYTES {
            candle_core::bail!(
                "Q4_1 tensor has {} bytes, expected {}",
                data.len(),
                blocks * BLOCK_BYTES
            );
        }
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(blocks);
        let mut qs = Vec::with_capacity(blocks);
        for b in data.chunks_exact(BLOCK_BYTES) {
            d.push(f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
            m.push(f16_to_f32(u16::from_le_bytes([b[2], b[3]])));
            let mut q = [0u8; 16];
            q.copy_from_slice(&b[4..20]);
            qs.push(q);
        }
        Ok(Self { n, k, d, m, qs })
    }

    /// Output row `r` dotted with the activations `x` (`k` values) whose block sums are `xsum`.
    fn dot(&self, r: usize, x: &[f32], xsum: &[f32]) -> f32 {
        let nb = self.k / QK;
        let (d, m, qs) =
            (&self.d[r * nb..][..nb], &self.m[r * nb..][..nb], &self.qs[r * nb..][..nb]);
        let mut acc = [0f32; 16];
        let mut mins = 0f32;
        for b in 0..nb {
            let xa: &[f32; 16] = x[b * QK..b * QK + 16].try_into().unwrap_or(&[0.0; 16]);
            let xb: &[f32; 16] = x[b * QK + 16..b * QK + 32].try_into().unwrap_or(&[0.0; 16]);
            let q = &qs[b];
            let db = d[b];
            for j in 0..16 {
                let lo = (q[j] & 0x0f) as f32;
                let hi = (q[j] >> 4) as f32;
                acc[j] += db * (lo * xa[j] + hi * xb[j]);
            }
            mins += m[b] * xsum[b];
        }
        let mut s8 = [0f32; 8];
        for j in 0..8 {
            s8[j] = acc[j] + acc[j + 8];
        }
        ((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7])) + mins
    }

    /// `x @ self^T` for `x` of shape `(..., k)`: `(..., n)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.k;
        let (xs, lead) = input_rows(x, k)?;
        let rows: usize = lead.iter().product();
        let nb = k / QK;
        let xsum: Vec<f32> = xs
            .chunks_exact(QK)
            .map(|c| {
                // A fixed-order block sum (the same for any number of rows).
                let mut s = [0f32; 8];
                for (i, v) in c.iter().enumerate() {
                    s[i % 8] += v;
                }
                ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
            })
            .collect();
        // Output rows in parallel; each computes all input rows.
        let mut out_t = vec![0f32; self.n * rows];
        out_t.par_chunks_mut(rows).enumerate().for_each(|(r, o)| {
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = self.dot(r, &xs[i * k..(i + 1) * k], &xsum[i * nb..(i + 1) * nb]);
            }
        });
        output_rows(&out_t, self.n, lead, x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{quantized::GgmlDType, Device, Module};

    #[test]
    fn half_conversion() {
        let cases: [(u16, f32); 8] = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 1.0 / 16_777_216.0),
            (0x0400, 1.0 / 16384.0),
            (0x7c00, f32::INFINITY),
            (0x8000, -0.0),
            (0x3555, 0.333_251_95),
        ];
        for (h, want) in cases {
            assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "{h:#06x}");
        }
    }

    #[test]
    fn matches_dequantized_matmul_and_is_batch_invariant() {
        let dev = Device::Cpu;
        let mut seed = 41;
        let w = bitorch_test_support::tiny::seeded(&mut seed, &[40, 96], 1.0);
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&q).unwrap();
        let x = bitorch_test_support::tiny::seeded(&mut seed, &[1, 5, 96], 1.0);
        let got = ours.forward(&x).unwrap();
        let deq = candle_core::quantized::QMatMul::Tensor(q.dequantize(&dev).unwrap());
        let want = deq.forward(&x).unwrap();
        let diff = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        for i in 0..5 {
            let one = ours.forward(&x.narrow(1, i, 1).unwrap()).unwrap();
            let row = got.narrow(1, i, 1).unwrap();
            assert_eq!(
                one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                row.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}
