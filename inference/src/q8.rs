//! Integer kernels: Q4_1 and Q8_0 weights against activations quantized to 16 bits per block of
//! 32 values. llama.cpp quantizes activations to 8 bits for these types; on SmolLM2-135M with
//! the chat prompt 8 bits derail the answer (so does candle's 8-bit path), 16 bits keep it.
//!
//! Each activation row is quantized on its own (a block's scale is its largest magnitude over
//! 32,767, its values rounded to integers, and for Q4_1 the block's sum kept too); a block's
//! product is an exact integer sum, scaled and added to a per-output f32 accumulator in block
//! order. So an output does not depend on how many rows are multiplied at once, nor on the
//! thread count (output rows are split among threads, never a sum), nor on whether the CPU has
//! AVX2: the AVX2 path (`pulp`'s safe intrinsics, chosen at run time: the workspace forbids
//! `unsafe`) computes the same integers and the same float operations in the same order as the
//! scalar one. That makes it batch-invariant like the attention kernel, as committed sessions
//! need.

use crate::q4_1::{f16_to_f32, input_rows, output_rows};
use candle_core::{
    quantized::{GgmlDType, QTensor},
    Result, Tensor,
};
use rayon::prelude::*;

const QK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Per block: f16 scale, f16 minimum, 16 bytes of nibbles (value `j` in the low nibble of
    /// byte `j`, value `j + 16` in its high nibble).
    Q41,
    /// Per block: f16 scale, 32 signed bytes.
    Q80,
}

/// A weight matrix `(n, k)` of Q4_1 or Q8_0 blocks, unpacked into scales, minimums and bytes.
#[derive(Debug)]
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    kind: Kind,
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<u8>,
}

/// The largest integer of a quantized activation.
const QMAX: f32 = 32_767.0;

/// One activation row quantized per block: scales, scale × sum of the block's integers, and the
/// integers.
struct Q8Row {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<[i16; QK]>,
}

/// Quantizes `x` (a whole number of blocks) to 16 bits per block of 32.
fn quantize(x: &[f32]) -> Q8Row {
    let nb = x.len() / QK;
    let mut row = Q8Row { d: Vec::with_capacity(nb), s: Vec::with_capacity(nb), q: Vec::new() };
    row.q.reserve(nb);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / QMAX;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0i16; QK];
        let mut sum = 0i32;
        for (o, v) in q.iter_mut().zip(block) {
            // |v × id| <= 32,767 (up to rounding); NaN becomes 0.
            *o = (v * id).round().clamp(-QMAX, QMAX) as i16;
            sum += i32::from(*o);
        }
        row.d.push(d);
        row.s.push(d * sum as f32);
        row.q.push(q);
    }
    row
}

impl Q8Matrix {
    /// From a Q4_1 or Q8_0 `QTensor` of shape `(n, k)`; `None` for another type.
    pub(crate) fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let (kind, bytes, qbytes) = match t.dtype() {
            GgmlDType::Q4_1 => (Kind::Q41, 20, 16),
            GgmlDType::Q8_0 => (Kind::Q80, 34, 32),
            _ => return Ok(None),
        };
        let (n, k) = t.shape().dims2()?;
        if k % QK != 0 {
            candle_core::bail!("rows of {k} values are not whole blocks");
        }
        let data = t.data()?;
        let blocks = n * k / QK;
        if data.len() != blocks * bytes {
            candle_core::bail!("tensor has {} bytes, expected {}", data.len(), blocks * bytes);
        }
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::new();
        let mut qs = Vec::with_capacity(blocks * qbytes);
        for b in data.chunks_exact(bytes) {
            d.push(f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
            if kind == Kind::Q41 {
                m.push(f16_to_f32(u16::from_le_bytes([b[2], b[3]])));
            }
            qs.extend_from_slice(&b[bytes - qbytes..]);
        }
        Ok(Some(Self { n, k, kind, d, m, qs }))
    }

    /// Block `blk`'s (of the whole matrix) integer dot product with `x`: scalar. At most
    /// 32 × 128 × 32,767 in magnitude, well inside an i32.
    fn block_scalar(&self, blk: usize, x: &[i16; QK]) -> i32 {
        match self.kind {
            Kind::Q41 => {
                let w = &self.qs[blk * 16..][..16];
                (0..16)
                    .map(|j| {
                        i32::from(w[j] & 0x0f) * i32::from(x[j])
                            + i32::from(w[j] >> 4) * i32::from(x[j + 16])
                    })
                    .sum()
            }
            Kind::Q80 => {
                let w = &self.qs[blk * 32..][..32];
                w.iter().zip(x).map(|(&a, &b)| i32::from(a as i8) * i32::from(b)).sum()
            }
        }
    }

    /// Adds block `b` of output row `r` (block `blk` of the matrix), whose integer dot product
    /// is `isum`, to `acc`: the one place the float arithmetic happens, in the same order on
    /// every path.
    #[inline(always)]
    fn add_block(&self, acc: f32, blk: usize, b: usize, isum: i32, x: &Q8Row) -> f32 {
        let scaled = (self.d[blk] * x.d[b]) * isum as f32;
        match self.kind {
            Kind::Q41 => acc + (scaled + self.m[blk] * x.s[b]),
            Kind::Q80 => acc + scaled,
        }
    }

    fn dot_scalar(&self, r: usize, x: &Q8Row) -> f32 {
        let nb = self.k / QK;
        (0..nb).fold(0.0, |acc, b| {
            let blk = r * nb + b;
            self.add_block(acc, blk, b, self.block_scalar(blk, &x.q[b]), x)
        })
    }

    /// Output rows `rows` dotted with every input row.
    fn rows(&self, first: usize, out: &mut [f32], xs: &[Q8Row]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(Avx2Rows { m: self, simd, first, out, xs });
        }
        for (o, row) in out.chunks_mut(xs.len().max(1)).enumerate() {
            for (v, x) in row.iter_mut().zip(xs) {
                *v = self.dot_scalar(first + o, x);
            }
        }
    }

    /// `x @ self^T` for `x` of shape `(..., k)`: `(..., n)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (flat, lead) = input_rows(x, self.k)?;
        let rows: usize = lead.iter().product();
        let xs: Vec<Q8Row> = flat.chunks_exact(self.k).map(quantize).collect();
        // Output rows in parallel, in chunks of 16 (each computes all input rows).
        const CHUNK: usize = 16;
        let mut out_t = vec![0f32; self.n * rows];
        out_t.par_chunks_mut(CHUNK * rows.max(1)).enumerate().for_each(|(c, o)| {
            self.rows(c * CHUNK, o, &xs);
        });
        output_rows(&out_t, self.n, lead, x.device())
    }
}

/// [`Q8Matrix::rows`] with AVX2: the same integers (weights widened to i16, `madd` sums pairs of
/// i16 products exactly into i32) and the same float steps as the scalar path.
#[cfg(target_arch = "x86_64")]
struct Avx2Rows<'a> {
    m: &'a Q8Matrix,
    simd: pulp::x86::V3,
    first: usize,
    out: &'a mut [f32],
    xs: &'a [Q8Row],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Avx2Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        use std::arch::x86_64::{__m128i, __m256i};
        let Self { m, simd, first, out, xs } = self;
        let (avx2, sse2) = (simd.avx2, simd.sse2);
        let nb = m.k / QK;
        let mask = pulp::cast::<[u8; 16], __m128i>([0x0f; 16]);
        let half = |q: &[i16; QK], at: usize| -> __m256i {
            let h: [i16; 16] = q[at..at + 16].try_into().unwrap_or([0; 16]);
            pulp::cast::<[i16; 16], __m256i>(h)
        };
        for (o, row) in out.chunks_mut(xs.len().max(1)).enumerate() {
            let r = first + o;
            for (v, x) in row.iter_mut().zip(xs) {
                let mut acc = 0f32;
                for b in 0..nb {
                    let blk = r * nb + b;
                    let (x0, x1) = (half(&x.q[b], 0), half(&x.q[b], 16));
                    let (w0, w1) = match m.kind {
                        Kind::Q41 => {
                            let raw: [u8; 16] =
                                m.qs[blk * 16..][..16].try_into().unwrap_or([0; 16]);
                            let raw = pulp::cast::<[u8; 16], __m128i>(raw);
                            let lo = sse2._mm_and_si128(raw, mask);
                            let hi = sse2._mm_and_si128(sse2._mm_srli_epi16::<4>(raw), mask);
                            (avx2._mm256_cvtepu8_epi16(lo), avx2._mm256_cvtepu8_epi16(hi))
                        }
                        Kind::Q80 => {
                            let w = &m.qs[blk * 32..][..32];
                            let lo: [u8; 16] = w[..16].try_into().unwrap_or([0; 16]);
                            let hi: [u8; 16] = w[16..].try_into().unwrap_or([0; 16]);
                            (
                                avx2._mm256_cvtepi8_epi16(pulp::cast::<[u8; 16], __m128i>(lo)),
                                avx2._mm256_cvtepi8_epi16(pulp::cast::<[u8; 16], __m128i>(hi)),
                            )
                        }
                    };
                    let prods = avx2._mm256_add_epi32(
                        avx2._mm256_madd_epi16(w0, x0),
                        avx2._mm256_madd_epi16(w1, x1),
                    );
                    let sums = pulp::cast::<__m256i, [i32; 8]>(prods);
                    let isum = sums.iter().sum::<i32>();
                    acc = m.add_block(acc, blk, b, isum, x);
                }
                *v = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    fn check(dtype: GgmlDType) {
        let dev = Device::Cpu;
        let mut seed = 43;
        let w = bitorch_test_support::tiny::seeded(&mut seed, &[40, 96], 1.0);
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours = Q8Matrix::from_qtensor(&q).unwrap().unwrap();
        let x = bitorch_test_support::tiny::seeded(&mut seed, &[1, 5, 96], 1.0);
        let got = ours.forward(&x).unwrap();
        // Against the weights dequantized, in f32: 16-bit activations cost very little.
        let deq = candle_core::quantized::QMatMul::Tensor(q.dequantize(&dev).unwrap());
        let want = deq.forward(&x).unwrap();
        let err = (&got - &want).unwrap().sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let norm = want.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let rel = err.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap();
        assert!(rel < 1e-4, "{dtype:?}: relative error {rel}");
        // The scalar path gives the same bits as whichever path ran.
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows: Vec<Q8Row> = flat.chunks_exact(96).map(quantize).collect();
        let all = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, row) in rows.iter().enumerate() {
            for r in 0..40 {
                assert_eq!(ours.dot_scalar(r, row).to_bits(), all[i * 40 + r].to_bits());
            }
        }
        // Batch-invariant: one row at a time gives the same bits.
        for i in 0..5 {
            let one = ours.forward(&x.narrow(1, i, 1).unwrap()).unwrap();
            assert_eq!(
                one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                all[i * 40..(i + 1) * 40]
            );
        }
    }

    #[test]
    fn q4_1_close_to_dequantized_same_bits_on_every_path() {
        check(GgmlDType::Q4_1);
    }

    #[test]
    fn q8_0_close_to_dequantized_same_bits_on_every_path() {
        check(GgmlDType::Q8_0);
    }

    #[test]
    fn other_types_are_not_taken() {
        let w = bitorch_test_support::tiny::seeded(&mut 1, &[4, 32], 1.0);
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(Q8Matrix::from_qtensor(&q).unwrap().is_none());
    }
}
