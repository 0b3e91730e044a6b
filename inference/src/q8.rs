//! Integer kernels: GGUF weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K) against
//! activations quantized to 16 bits per block of 32 values. llama.cpp quantizes activations to 8
//! bits for these types; on SmolLM2-135M with the chat prompt 8 bits derail the answer (so does
//! candle's 8-bit path), 16 bits keep it.
//!
//! Weights are kept in their quantization, converted at load to one of four block forms of 32
//! values that hold the same numbers exactly: 4-bit unsigned values with a scale and a minimum
//! (Q4_1; Q4_0 is its case `minimum = -8 × scale`; Q4_K's sub-blocks of 32, whose 6-bit scales
//! and minimums times the super-block's are exact in f32), 8-bit signed values with a scale
//! (Q8_0; Q5_0 as `value - 16`), with a scale and a minimum (Q5_1), or with one scale per half
//! (Q6_K, whose sub-blocks are 16 values).
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

use crate::pool::{Pool, Task};
use crate::q4_1::{f16_to_f32, input_rows, output_rows};
use candle_core::{
    quantized::{GgmlDType, QTensor},
    Result, Tensor,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const QK: usize = 32;

/// The block form a matrix is kept in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Scale, minimum, 16 bytes of nibbles (value `j` in the low nibble of byte `j`, value
    /// `j + 16` in its high nibble): `scale × q + minimum`.
    Q41,
    /// Scale, 32 signed bytes: `scale × q`.
    Q80,
    /// Scale, minimum, 32 signed bytes: `scale × q + minimum`.
    Q81,
    /// A scale for values `0..16`, another (kept in `m`) for `16..32`, 32 signed bytes.
    Halves,
}

impl Kind {
    /// Bytes of a block's values.
    fn qbytes(self) -> usize {
        if self == Kind::Q41 {
            16
        } else {
            32
        }
    }

    /// Whether `m` holds minimums.
    fn has_min(self) -> bool {
        matches!(self, Kind::Q41 | Kind::Q81)
    }
}

/// One block of 32 weights in the form of its [`Kind`]: `d`, `m` (a minimum or the second
/// half's scale, else 0) and the values' bytes (16 or 32 used).
struct Block {
    d: f32,
    m: f32,
    q: [u8; 32],
}

/// The GGUF types taken, with their [`Kind`], the bytes of one of their blocks and the blocks of
/// 32 in one.
fn layout(dtype: GgmlDType) -> Option<(Kind, usize, usize)> {
    Some(match dtype {
        GgmlDType::Q4_0 => (Kind::Q41, 18, 1),
        GgmlDType::Q4_1 => (Kind::Q41, 20, 1),
        GgmlDType::Q5_0 => (Kind::Q80, 22, 1),
        GgmlDType::Q5_1 => (Kind::Q81, 24, 1),
        GgmlDType::Q8_0 => (Kind::Q80, 34, 1),
        GgmlDType::Q4K => (Kind::Q41, 144, 8),
        GgmlDType::Q6K => (Kind::Halves, 210, 8),
        _ => return None,
    })
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The blocks of 32 of one stored block `b` of type `dtype`, in order (the numbers of
/// candle's and llama.cpp's dequantization, exactly).
fn blocks_of(dtype: GgmlDType, b: &[u8], out: &mut Vec<Block>) {
    let nibbles = |v: &[u8; 32]| -> [u8; 32] {
        let mut q = [0u8; 32];
        for j in 0..16 {
            q[j] = (v[j] & 0x0f) | (v[j + 16] << 4);
        }
        q
    };
    match dtype {
        GgmlDType::Q4_0 => {
            let d = f16_at(b, 0);
            let mut q = [0u8; 32];
            q[..16].copy_from_slice(&b[2..18]);
            out.push(Block { d, m: -8.0 * d, q });
        }
        GgmlDType::Q4_1 => {
            let mut q = [0u8; 32];
            q[..16].copy_from_slice(&b[4..20]);
            out.push(Block { d: f16_at(b, 0), m: f16_at(b, 2), q });
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let one = dtype == GgmlDType::Q5_1;
            let at = if one { 4 } else { 2 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let qs = &b[at + 4..at + 20];
            let mut q = [0u8; 32];
            for j in 0..16 {
                let lo = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
                let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                // Q5_0's values are centred: `q - 16`, as signed bytes.
                let (lo, hi) =
                    if one { (lo, hi) } else { (lo.wrapping_sub(16), hi.wrapping_sub(16)) };
                q[j] = lo;
                q[j + 16] = hi;
            }
            let m = if one { f16_at(b, 2) } else { 0.0 };
            out.push(Block { d: f16_at(b, 0), m, q });
        }
        GgmlDType::Q8_0 => {
            let mut q = [0u8; 32];
            q.copy_from_slice(&b[2..34]);
            out.push(Block { d: f16_at(b, 0), m: 0.0, q });
        }
        GgmlDType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            let scale_min = |j: usize| -> (u8, u8) {
                if j < 4 {
                    (scales[j] & 63, scales[j + 4] & 63)
                } else {
                    (
                        (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
                        (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                    )
                }
            };
            for j in 0..4 {
                let bytes = &qs[j * 32..j * 32 + 32];
                for (half, shift) in [(0, 0), (1, 4)] {
                    let (sc, mn) = scale_min(2 * j + half);
                    let mut v = [0u8; 32];
                    for (o, &x) in v.iter_mut().zip(bytes) {
                        *o = (x >> shift) & 0x0f;
                    }
                    let q = nibbles(&v);
                    out.push(Block { d: d * f32::from(sc), m: -(dmin * f32::from(mn)), q });
                }
            }
        }
        GgmlDType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            let mut vals = [0i8; 256];
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                let y = &mut vals[128 * n..];
                for l in 0..32 {
                    y[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                    y[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                }
            }
            // Value `i` has scale `sc[i / 16]`.
            for c in 0..8 {
                let mut q = [0u8; 32];
                for (o, &v) in q.iter_mut().zip(&vals[32 * c..32 * c + 32]) {
                    *o = v as u8;
                }
                let scale = |s: u8| d * f32::from(s as i8);
                out.push(Block { d: scale(sc[2 * c]), m: scale(sc[2 * c + 1]), q });
            }
        }
        _ => {}
    }
}

/// Output rows are computed [`G`] at a time, and stored that way.
const G: usize = 4;

/// A weight matrix `(n, k)` of Q4_1 or Q8_0 blocks, unpacked into scales, minimums and bytes and
/// repacked for the kernels: rows in groups of [`G`] (the last group padded with zero rows),
/// and within a group the rows' blocks interleaved, so that one pass over an input row reads
/// the group's weights as one sequential stream: block `b` of row `g × G + i` is entry
/// `(g × nb + b) × G + i` of `d` and `m`, and its bytes are that entry's `qbytes` in `qs`.
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
    /// From a `QTensor` of shape `(n, k)` of a type the kernels take (see the module docs);
    /// `None` for another type, or rows that are not whole blocks of the type.
    pub(crate) fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let Some((kind, bytes, per)) = layout(t.dtype()) else { return Ok(None) };
        let (n, k) = t.shape().dims2()?;
        if k % (QK * per) != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let nb = k / QK;
        if data.len() != n * (nb / per) * bytes {
            candle_core::bail!(
                "tensor has {} bytes, expected {}",
                data.len(),
                n * nb / per * bytes
            );
        }
        let qbytes = kind.qbytes();
        let entries = n.div_ceil(G) * nb * G;
        let mut d = vec![0f32; entries];
        let mut m = vec![0f32; if kind == Kind::Q80 { 0 } else { entries }];
        let mut qs = vec![0u8; entries * qbytes];
        let mut blocks = Vec::with_capacity(per);
        for (i, b) in data.chunks_exact(bytes).enumerate() {
            blocks.clear();
            blocks_of(t.dtype(), b, &mut blocks);
            for (j, block) in blocks.iter().enumerate() {
                let blk = i * per + j;
                let (r, c) = (blk / nb, blk % nb);
                let at = ((r / G) * nb + c) * G + r % G;
                d[at] = block.d;
                if kind != Kind::Q80 {
                    m[at] = block.m;
                }
                qs[at * qbytes..][..qbytes].copy_from_slice(&block.q[..qbytes]);
            }
        }
        Ok(Some(Self { n, k, kind, d, m, qs }))
    }

    /// The entry of block `b` of output row `r`.
    fn entry(&self, r: usize, b: usize) -> usize {
        ((r / G) * (self.k / QK) + b) * G + r % G
    }

    /// Entry `blk`'s integer products with `x`, summed into 8 lanes per half the way AVX2's
    /// `madd` leaves them: lane `l` of the first holds values `2l` and `2l + 1`, of the second
    /// `16 + 2l` and `17 + 2l`. At most 2 × 128 × 32,767 in magnitude, so exact in an f32 too
    /// (and the two halves' sum, below 2^24).
    fn halves_scalar(&self, blk: usize, x: &[i16; QK]) -> ([i32; 8], [i32; 8]) {
        let mut w = [0i32; QK];
        if self.kind == Kind::Q41 {
            for (j, &b) in self.qs[blk * 16..][..16].iter().enumerate() {
                w[j] = i32::from(b & 0x0f);
                w[j + 16] = i32::from(b >> 4);
            }
        } else {
            for (o, &b) in w.iter_mut().zip(&self.qs[blk * 32..][..32]) {
                *o = i32::from(b as i8);
            }
        }
        let p = |j: usize| w[j] * i32::from(x[j]);
        (
            std::array::from_fn(|l| p(2 * l) + p(2 * l + 1)),
            std::array::from_fn(|l| p(16 + 2 * l) + p(17 + 2 * l)),
        )
    }

    /// Output row `r` dotted with `x`, scalar: each block's 8 integer lanes (the halves' sum,
    /// or each half with its own scale), converted to f32, times the block's scale, added lane by
    /// lane to 8 accumulators with one rounding (the float arithmetic of the AVX2 path, step for
    /// step), then [`finish`] with the minimums' term.
    fn dot_scalar(&self, r: usize, x: &Q8Row) -> f32 {
        let nb = self.k / QK;
        let mut acc = [0f32; 8];
        let mut mins = 0f32;
        for b in 0..nb {
            let blk = self.entry(r, b);
            let (lo, hi) = self.halves_scalar(blk, &x.q[b]);
            let scale = self.d[blk] * x.d[b];
            if self.kind == Kind::Halves {
                let second = self.m[blk] * x.d[b];
                for ((a, l), h) in acc.iter_mut().zip(lo).zip(hi) {
                    *a = (l as f32).mul_add(scale, *a);
                    *a = (h as f32).mul_add(second, *a);
                }
            } else {
                for ((a, l), h) in acc.iter_mut().zip(lo).zip(hi) {
                    *a = ((l + h) as f32).mul_add(scale, *a);
                }
            }
            if self.kind.has_min() {
                mins += self.m[blk] * x.s[b];
            }
        }
        finish(acc, mins)
    }

    /// Number of row groups, the last one padded.
    fn groups(&self) -> usize {
        self.n.div_ceil(G)
    }

    /// Output rows `first..` (`out` holds all input rows' values for each, whole groups;
    /// `first` a multiple of [`G`]) dotted with every input row.
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
    pub(crate) fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        let mut out = forward_many(std::slice::from_ref(self), x)?;
        Ok(out.remove(0))
    }
}

/// `x @ m^T` for each of `mats` (all with the same `k`), as one job of the engine's
/// [`Pool`]: the input quantized once, the matrices' row groups split evenly among the parts.
pub(crate) fn forward_many(mats: &[Arc<Q8Matrix>], x: &Tensor) -> Result<Vec<Tensor>> {
    let Some(k) = mats.first().map(|m| m.k) else { return Ok(Vec::new()) };
    if mats.iter().any(|m| m.k != k) {
        candle_core::bail!("matrices of different widths in one product");
    }
    let (flat, lead) = input_rows(x, k)?;
    let rows: usize = lead.iter().product();
    let xs: Vec<Q8Row> = flat.chunks_exact(k).map(quantize).collect();
    let pool = Pool::global();
    let total: usize = mats.iter().map(|m| m.groups()).sum();
    let chunks = (pool.parts() * CHUNKS_PER_THREAD).min(total).max(1);
    let task = Arc::new(Product {
        mats: mats.to_vec(),
        xs,
        next: AtomicUsize::new(0),
        outs: (0..chunks).map(|_| Mutex::new(Vec::new())).collect(),
    });
    pool.run(task.clone());
    // The chunks' buffers, in order, are every matrix's groups in order.
    let mut all = Vec::with_capacity(mats.iter().map(|m| m.groups() * G).sum::<usize>() * rows);
    for o in &task.outs {
        all.extend_from_slice(&o.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(mats.len());
    for m in mats {
        out.push(output_rows(&all[at..at + m.n * rows], m.n, lead.clone(), x.device())?);
        at += m.groups() * G * rows;
    }
    Ok(out)
}

/// A job's row groups are cut into this many chunks per thread, which the threads take in turn:
/// a thread that started late or was interrupted takes fewer.
const CHUNKS_PER_THREAD: usize = 2;

/// One product job: all the matrices' row groups in fixed chunks (`outs.len()` of them), which
/// the pool's threads take one at a time.
struct Product {
    mats: Vec<Arc<Q8Matrix>>,
    xs: Vec<Q8Row>,
    next: AtomicUsize,
    outs: Vec<Mutex<Vec<f32>>>,
}

impl Task for Product {
    fn run(&self, _part: usize, _parts: usize) {
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.outs.len() {
                return;
            }
            self.chunk(c);
        }
    }
}

impl Product {
    fn chunk(&self, c: usize) {
        let total: usize = self.mats.iter().map(|m| m.groups()).sum();
        let chunks = self.outs.len();
        let (lo, hi) = (c * total / chunks, (c + 1) * total / chunks);
        let nx = self.xs.len().max(1);
        let mut buf = vec![0f32; (hi - lo) * G * nx];
        let (mut start, mut filled) = (0, 0);
        for m in &self.mats {
            let end = start + m.groups();
            let (a, b) = (lo.max(start), hi.min(end));
            if a < b {
                let len = (b - a) * G * nx;
                m.rows((a - start) * G, &mut buf[filled..filled + len], &self.xs);
                filled += len;
            }
            start = end;
        }
        *self.outs[c].lock().unwrap_or_else(|e| e.into_inner()) = buf;
    }
}

/// The 8 lane accumulators summed in a fixed order (the upper half onto the lower, twice, then
/// the last pair), plus the Q4_1 minimums' term.
#[inline(always)]
fn finish(acc: [f32; 8], mins: f32) -> f32 {
    let a = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    ((a[0] + a[2]) + (a[1] + a[3])) + mins
}

/// [`Q8Matrix::rows`] with AVX2: the same integers (weights widened to i16, `madd` sums pairs of
/// i16 products exactly into i32) and the same float steps as the scalar path, four output rows
/// per pass over an input row's blocks.
#[cfg(target_arch = "x86_64")]
struct Avx2Rows<'a> {
    m: &'a Q8Matrix,
    simd: pulp::x86::V3,
    first: usize,
    out: &'a mut [f32],
    xs: &'a [Q8Row],
}

/// The [`G`] rows of group `g` of `m` (of the kind `NIB`, `MIN`, `TWO` say: nibbles, minimums,
/// a scale per half) dotted with `x`, with AVX2: per block one load of the input's 32 integers
/// for the whole group, then per row the weights widened to i16 (one `pmovzx`/`pmovsx` per 16
/// bytes, nibbles split into low and high), two `madd`s, and the float steps of
/// [`Q8Matrix::dot_scalar`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn group_dots<const NIB: bool, const MIN: bool, const TWO: bool>(
    m: &Q8Matrix,
    simd: pulp::x86::V3,
    g: usize,
    x: &Q8Row,
) -> [f32; G] {
    use std::arch::x86_64::__m128i;
    let avx2 = simd.avx2;
    let qb = if NIB { 16 } else { 32 };
    let nb = m.k / QK;
    let qs = &m.qs[g * nb * G * qb..][..nb * G * qb];
    let nib = simd.avx._mm256_set1_epi16(0x0f);
    let mut acc = Acc::<MIN, TWO>::new(simd);
    for (b, (q, wq)) in x.q.iter().zip(qs.chunks_exact(G * qb)).enumerate() {
        let (x0, x1) = halves(q);
        let scales = acc.block(m, g, b, x);
        for (i, w) in wq.chunks_exact(qb).enumerate() {
            let (w0, w1) = if NIB {
                let raw: [u8; 16] = w.try_into().unwrap_or([0; 16]);
                let wide = avx2._mm256_cvtepu8_epi16(pulp::cast::<[u8; 16], __m128i>(raw));
                (avx2._mm256_and_si256(wide, nib), avx2._mm256_srli_epi16::<4>(wide))
            } else {
                let lo: [u8; 16] = w[..16].try_into().unwrap_or([0; 16]);
                let hi: [u8; 16] = w[16..].try_into().unwrap_or([0; 16]);
                (
                    avx2._mm256_cvtepi8_epi16(pulp::cast::<[u8; 16], __m128i>(lo)),
                    avx2._mm256_cvtepi8_epi16(pulp::cast::<[u8; 16], __m128i>(hi)),
                )
            };
            acc.add(i, &scales, avx2._mm256_madd_epi16(w0, x0), avx2._mm256_madd_epi16(w1, x1));
        }
    }
    acc.finish()
}

/// A block's 32 input integers as two vectors of 16.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn halves(q: &[i16; QK]) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::__m256i;
    (
        pulp::cast::<[i16; 16], __m256i>(q[..16].try_into().unwrap_or([0; 16])),
        pulp::cast::<[i16; 16], __m256i>(q[16..].try_into().unwrap_or([0; 16])),
    )
}

/// The float side of a group's products with one input row: per row 8 lane accumulators, and
/// the minimums' term.
#[cfg(target_arch = "x86_64")]
struct Acc<const MIN: bool, const TWO: bool> {
    simd: pulp::x86::V3,
    acc: [std::arch::x86_64::__m256; G],
    mins: std::arch::x86_64::__m128,
}

#[cfg(target_arch = "x86_64")]
impl<const MIN: bool, const TWO: bool> Acc<MIN, TWO> {
    #[inline(always)]
    fn new(simd: pulp::x86::V3) -> Self {
        Self { simd, acc: [simd.avx._mm256_setzero_ps(); G], mins: simd.sse._mm_setzero_ps() }
    }

    /// Block `b` of group `g`: its rows' scales times the input's (and the second halves'),
    /// and the minimums' term added.
    #[inline(always)]
    fn block(&mut self, m: &Q8Matrix, g: usize, b: usize, x: &Q8Row) -> [[f32; G]; 2] {
        use std::arch::x86_64::__m128;
        let sse = self.simd.sse;
        let at = (g * (m.k / QK) + b) * G;
        let four = |v: &[f32]| -> __m128 {
            pulp::cast::<[f32; 4], __m128>(v[at..at + G].try_into().unwrap_or([0.0; 4]))
        };
        let xd = sse._mm_set1_ps(x.d[b]);
        let first = pulp::cast::<__m128, [f32; 4]>(sse._mm_mul_ps(four(&m.d), xd));
        let mut second = [0.0; G];
        if MIN {
            self.mins =
                sse._mm_add_ps(self.mins, sse._mm_mul_ps(four(&m.m), sse._mm_set1_ps(x.s[b])));
        }
        if TWO {
            second = pulp::cast::<__m128, [f32; 4]>(sse._mm_mul_ps(four(&m.m), xd));
        }
        [first, second]
    }

    /// Row `i`'s block: the two `madd` results of its halves.
    #[inline(always)]
    fn add(
        &mut self,
        i: usize,
        scales: &[[f32; G]; 2],
        lo: std::arch::x86_64::__m256i,
        hi: std::arch::x86_64::__m256i,
    ) {
        let (avx, avx2, fma) = (self.simd.avx, self.simd.avx2, self.simd.fma);
        let s = avx._mm256_set1_ps(scales[0][i]);
        if TWO {
            let s2 = avx._mm256_set1_ps(scales[1][i]);
            self.acc[i] = fma._mm256_fmadd_ps(avx._mm256_cvtepi32_ps(lo), s, self.acc[i]);
            self.acc[i] = fma._mm256_fmadd_ps(avx._mm256_cvtepi32_ps(hi), s2, self.acc[i]);
        } else {
            let lanes = avx2._mm256_add_epi32(lo, hi);
            self.acc[i] = fma._mm256_fmadd_ps(avx._mm256_cvtepi32_ps(lanes), s, self.acc[i]);
        }
    }

    #[inline(always)]
    fn finish(self) -> [f32; G] {
        use std::arch::x86_64::{__m128, __m256};
        let mins = pulp::cast::<__m128, [f32; 4]>(self.mins);
        let acc = self.acc;
        std::array::from_fn(|i| finish(pulp::cast::<__m256, [f32; 8]>(acc[i]), mins[i]))
    }
}

/// Group `g`'s weights widened to i16 once, for several input rows: block `b` of the group's
/// row `i` is `out[b × G + i]`, its values `0..16` and `16..32`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn decode_group<const NIB: bool>(
    m: &Q8Matrix,
    simd: pulp::x86::V3,
    g: usize,
    out: &mut Vec<[std::arch::x86_64::__m256i; 2]>,
) {
    use std::arch::x86_64::__m128i;
    let avx2 = simd.avx2;
    let nb = m.k / QK;
    let qb = if NIB { 16 } else { 32 };
    let qs = &m.qs[g * nb * G * qb..][..nb * G * qb];
    let nib = simd.avx._mm256_set1_epi16(0x0f);
    out.clear();
    // A loop, not a closure: a closure would not inherit the target features.
    for w in qs.chunks_exact(qb) {
        let pair = if NIB {
            let raw: [u8; 16] = w.try_into().unwrap_or([0; 16]);
            let wide = avx2._mm256_cvtepu8_epi16(pulp::cast::<[u8; 16], __m128i>(raw));
            [avx2._mm256_and_si256(wide, nib), avx2._mm256_srli_epi16::<4>(wide)]
        } else {
            let lo: [u8; 16] = w[..16].try_into().unwrap_or([0; 16]);
            let hi: [u8; 16] = w[16..].try_into().unwrap_or([0; 16]);
            [
                avx2._mm256_cvtepi8_epi16(pulp::cast::<[u8; 16], __m128i>(lo)),
                avx2._mm256_cvtepi8_epi16(pulp::cast::<[u8; 16], __m128i>(hi)),
            ]
        };
        out.push(pair);
    }
}

/// [`group_dots`] over weights [`decode_group`] widened: the same integers and float steps.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn decoded_dots<const MIN: bool, const TWO: bool>(
    m: &Q8Matrix,
    simd: pulp::x86::V3,
    g: usize,
    w: &[[std::arch::x86_64::__m256i; 2]],
    x: &Q8Row,
) -> [f32; G] {
    let avx2 = simd.avx2;
    let mut acc = Acc::<MIN, TWO>::new(simd);
    for (b, (q, wb)) in x.q.iter().zip(w.chunks_exact(G)).enumerate() {
        let (x0, x1) = halves(q);
        let scales = acc.block(m, g, b, x);
        for (i, [w0, w1]) in wb.iter().enumerate() {
            acc.add(i, &scales, avx2._mm256_madd_epi16(*w0, x0), avx2._mm256_madd_epi16(*w1, x1));
        }
    }
    acc.finish()
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Avx2Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Self { m, simd, first, out, xs } = self;
        let n = xs.len().max(1);
        let mut decoded = Vec::new();
        for (j, group) in out.chunks_mut(G * n).enumerate() {
            let g = first / G + j;
            if n > 1 {
                // Several input rows: widen the weights once, not once per row.
                if m.kind == Kind::Q41 {
                    decode_group::<true>(m, simd, g, &mut decoded);
                } else {
                    decode_group::<false>(m, simd, g, &mut decoded);
                }
                for (i, x) in xs.iter().enumerate() {
                    let v = match m.kind {
                        Kind::Q41 | Kind::Q81 => {
                            decoded_dots::<true, false>(m, simd, g, &decoded, x)
                        }
                        Kind::Q80 => decoded_dots::<false, false>(m, simd, g, &decoded, x),
                        Kind::Halves => decoded_dots::<false, true>(m, simd, g, &decoded, x),
                    };
                    for (o, v) in group.chunks_mut(n).zip(v) {
                        o[i] = v;
                    }
                }
                continue;
            }
            for (i, x) in xs.iter().enumerate() {
                let v = match m.kind {
                    Kind::Q41 => group_dots::<true, true, false>(m, simd, g, x),
                    Kind::Q80 => group_dots::<false, false, false>(m, simd, g, x),
                    Kind::Q81 => group_dots::<false, true, false>(m, simd, g, x),
                    Kind::Halves => group_dots::<false, false, true>(m, simd, g, x),
                };
                for (o, v) in group.chunks_mut(n).zip(v) {
                    o[i] = v;
                }
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
        // k-quants come in super-blocks of 256.
        let k = if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) { 256 } else { 96 };
        let w = bitorch_test_support::tiny::seeded(&mut seed, &[42, k], 1.0);
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours = Arc::new(Q8Matrix::from_qtensor(&q).unwrap().unwrap());
        let x = bitorch_test_support::tiny::seeded(&mut seed, &[1, 5, k], 1.0);
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
        let rows: Vec<Q8Row> = flat.chunks_exact(k).map(quantize).collect();
        let all = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, row) in rows.iter().enumerate() {
            for r in 0..42 {
                assert_eq!(ours.dot_scalar(r, row).to_bits(), all[i * 42 + r].to_bits());
            }
        }
        // Batch-invariant: one row at a time gives the same bits.
        for i in 0..5 {
            let one = ours.forward(&x.narrow(1, i, 1).unwrap()).unwrap();
            assert_eq!(
                one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                all[i * 42..(i + 1) * 42]
            );
        }
    }

    #[test]
    fn every_type_taken_is_close_to_its_dequantized_weights_with_the_same_bits_on_every_path() {
        use GgmlDType::*;
        for dtype in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q6K] {
            check(dtype);
        }
    }

    #[test]
    fn the_blocks_hold_the_dequantized_weights_exactly() {
        use GgmlDType::*;
        for dtype in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q6K] {
            let w = bitorch_test_support::tiny::seeded(&mut 7, &[8, 512], 1.0);
            let q = QTensor::quantize(&w, dtype).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let m = Q8Matrix::from_qtensor(&q).unwrap().unwrap();
            for (r, row) in want.iter().enumerate() {
                for b in 0..512 / QK {
                    let at = m.entry(r, b);
                    let v = |j: usize| -> f32 {
                        let q = match m.kind {
                            Kind::Q41 => {
                                let byte = m.qs[at * 16 + j % 16];
                                f32::from(if j < 16 { byte & 0x0f } else { byte >> 4 })
                            }
                            _ => f32::from(m.qs[at * 32 + j] as i8),
                        };
                        match m.kind {
                            Kind::Halves if j >= 16 => m.m[at] * q,
                            Kind::Q41 | Kind::Q81 => m.d[at] * q + m.m[at],
                            _ => m.d[at] * q,
                        }
                    };
                    for j in 0..QK {
                        assert_eq!(v(j), row[b * QK + j], "{dtype:?} row {r} value {}", b * QK + j);
                    }
                }
            }
        }
    }

    #[test]
    fn one_job_for_several_matrices_gives_each_its_own_product() {
        let mut seed = 5;
        let mats: Vec<Arc<Q8Matrix>> =
            [(42, GgmlDType::Q4_1), (8, GgmlDType::Q8_0), (13, GgmlDType::Q4_1)]
                .into_iter()
                .map(|(n, dtype)| {
                    let w = bitorch_test_support::tiny::seeded(&mut seed, &[n, 64], 1.0);
                    let q = QTensor::quantize(&w, dtype).unwrap();
                    Arc::new(Q8Matrix::from_qtensor(&q).unwrap().unwrap())
                })
                .collect();
        let x = bitorch_test_support::tiny::seeded(&mut seed, &[1, 3, 64], 1.0);
        let together = forward_many(&mats, &x).unwrap();
        for (m, t) in mats.iter().zip(&together) {
            let alone = m.forward(&x).unwrap();
            assert_eq!(t.dims(), &[1, 3, m.n]);
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                alone.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn other_types_are_not_taken() {
        for dtype in [GgmlDType::Q5K, GgmlDType::F16] {
            let w = bitorch_test_support::tiny::seeded(&mut 1, &[4, 256], 1.0);
            let q = QTensor::quantize(&w, dtype).unwrap();
            assert!(Q8Matrix::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
        }
    }
}
