//! Activation commitments for stage runs.
//!
//! A worker that runs a stage (a contiguous range of a model's layers) over a session commits to
//! what it computed: a [`Leaf`] per token position holds the stage's input and output hidden
//! states, hashed with blake2-256 over a canonical byte encoding ([`encode_leaf`]); the leaf
//! hashes form a complete binary Merkle tree (`merkle-cbt`) whose root, with the number of
//! leaves, is the [`Commitment`] the worker signs.
//!
//! An auditor asks the worker to open a prefix of positions ([`Trace::open_prefix`]), checks the
//! opening against the commitment ([`verify_proof`]) and re-executes the stage on the committed
//! inputs in one batched pass through a [`Reexecute`] implementation (the inference crate
//! provides one), accepting only if every committed output is within [`Tolerance`] of the
//! recomputed one ([`verify_stage`]). Consecutive stages chain: stage k's output at a position
//! must be bit-identical to stage k+1's input there ([`verify_chain`]), which anyone can check
//! without running a model.
//!
//! This crate does no I/O and has no model dependency, so the jobs pallet can use it too.

pub mod error;
pub mod file;
pub mod leaf;
pub mod probe;
pub mod top;
pub mod tree;

pub use error::Error;
pub use leaf::{encode_leaf, leaf_hash, token_of, token_row, Leaf, Logit};
pub use top::{top_logits, verify_top, TopError, TOP_LOGITS};
pub use tree::{prove, verify_hashes, verify_proof, Blake2Merge, Commitment, Proof};

/// A blake2-256 hash.
pub type Hash = [u8; 32];

/// The leaves of one stage run over a session, kept by the worker so it can open them later.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    leaves: Vec<Leaf>,
    hashes: Vec<Hash>,
    chain: Hash,
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the next position's input and output hidden states, and the logits a last
    /// stage returned there (empty if none); returns its position.
    pub fn push(&mut self, input: Vec<f32>, output: Vec<f32>, logits: Vec<Logit>) -> u32 {
        let position = self.leaves.len() as u32;
        let leaf = Leaf { position, input, output, logits };
        let hash = leaf.hash();
        self.chain = chain_step(&self.chain, &hash);
        self.hashes.push(hash);
        self.leaves.push(leaf);
        position
    }

    /// The running hash of every leaf recorded so far ([`chain_of`] of [`Trace::hashes`]),
    /// kept up to date in constant time per position: what a client's voucher signs.
    pub fn chain(&self) -> Hash {
        self.chain
    }

    /// Number of recorded positions.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The recorded leaves, by position.
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// The leaf hashes, by position.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The commitment to everything recorded so far.
    pub fn commitment(&self) -> Commitment {
        Commitment::from_leaf_hashes(&self.hashes)
    }

    /// Opens the given positions (distinct, any order).
    pub fn open(&self, positions: &[u32]) -> Result<Opening, Error> {
        let proof = prove(&self.hashes, positions)?;
        let mut positions = positions.to_vec();
        positions.sort_unstable();
        let leaves = positions.iter().map(|&p| self.leaves[p as usize].clone()).collect();
        Ok(Opening { leaves, proof })
    }

    /// Opens positions `0..=last`, what [`verify_stage`] needs to check position `last`.
    pub fn open_prefix(&self, last: u32) -> Result<Opening, Error> {
        let positions: Vec<u32> = (0..=last).collect();
        self.open(&positions)
    }
}

/// One step of the running trace hash: `blake2_256(b"bitorch/trace/1" ‖ prev ‖ leaf)`.
pub fn chain_step(prev: &Hash, leaf: &Hash) -> Hash {
    let mut buf = [0u8; 15 + 64];
    buf[..15].copy_from_slice(b"bitorch/trace/1");
    buf[15..47].copy_from_slice(prev);
    buf[47..].copy_from_slice(leaf);
    sp_crypto_hashing::blake2_256(&buf)
}

/// The running trace hash of leaf hashes in position order, from all zeros (the hash of an
/// empty trace). Unlike the Merkle root it extends in constant time per position, so a client
/// can acknowledge every step of a session (vouchers) without
/// rehashing the whole trace; an auditor given every leaf hash recomputes it.
pub fn chain_of(hashes: &[Hash]) -> Hash {
    hashes.iter().fold([0u8; 32], |acc, h| chain_step(&acc, h))
}

/// Committed leaves and the proof that they belong to a commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct Opening {
    /// The opened leaves, by increasing position.
    pub leaves: Vec<Leaf>,
    /// Their multi-proof.
    pub proof: Proof,
}

/// A stage that can be re-executed on committed inputs.
pub trait Reexecute {
    /// Runs the stage from an empty cache over `inputs`, the input hidden states of positions
    /// `0..inputs.len()`, in one batched pass, and returns the output hidden state of every
    /// position.
    fn reexecute(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String>;

    /// A last stage's logits over the whole vocabulary for each of `outputs` (output hidden
    /// states of its last layer): its final norm and LM head. A stage without the head has
    /// none to give.
    fn logits(&self, outputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
        let _ = outputs;
        Err("this stage has no LM head".into())
    }
}

/// How close a committed output must be to the recomputed one.
///
/// The check is per position, on the relative L2 error:
/// `||committed - recomputed||_2 <= rel * ||recomputed||_2 + abs * sqrt(n)` with `n` the hidden
/// size. NaN or infinite values never pass.
///
/// Why these defaults. An honest worker decodes one token at a time while the auditor
/// re-executes the whole prefix in one batch. With the inference crate's batch-invariant
/// attention kernel, which committed sessions use, the two agree bit for bit on the same backend
/// with candle's quantized kernels and with the compact Q4_1 kernel (measured on SmolLM2-135M).
/// With weights dequantized to f32 they do not: the f32 matmul of one row and of a batch
/// accumulate in different orders, so a one-token step differs from the same position of a
/// batch in the last bits (found on layers 10..20 of SmolLM2-135M); such audits pass within
/// the tolerance below, and a gateway replaying a session feeds positions in their original
/// batches to stay exact. With candle's
/// own attention they do not: on f32 weights the outputs differ by about 1e-6, but on quantized
/// weights, whose matmuls re-quantize activations to 8 bits, last-bit differences get amplified
/// to whole quantization steps, up to 1.2e-2 measured, which is why committed sessions do not use
/// it. The cheats we test (a skipped layer, other weights, outputs of other inputs) give errors of
/// 1e-1 and more, and noise of relative size 1e-2 gives 1e-2. `rel = 1e-3` is ten times below the
/// smallest of those and leaves f32 re-association room (a different CPU or BLAS) for
/// unquantized matmuls; an auditor of a quantized model should run the worker's kernels (same
/// backend and instruction set), since 8-bit re-quantization can amplify those differences too.
/// L2 rather than max-abs: Llama-family hidden states have a few outlier channels hundreds of
/// times larger than the rest, which would make a max-abs bound either flag honest runs or miss
/// noise on the ordinary channels. The tiny `abs` floor only matters for all-zero states.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative L2 tolerance.
    pub rel: f64,
    /// Absolute per-element floor (scaled by `sqrt(n)`).
    pub abs: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self { rel: 1e-3, abs: 1e-6 }
    }
}

impl Tolerance {
    /// The relative L2 error of `got` against `want` (infinite on NaN, infinity or a length
    /// mismatch).
    pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
        if got.len() != want.len() {
            return f64::INFINITY;
        }
        let (mut diff, mut norm) = (0f64, 0f64);
        for (&g, &w) in got.iter().zip(want) {
            let d = g as f64 - w as f64;
            diff += d * d;
            norm += (w as f64) * (w as f64);
        }
        let err = diff.sqrt() / norm.sqrt().max(f64::MIN_POSITIVE);
        if err.is_finite() {
            err
        } else {
            f64::INFINITY
        }
    }

    /// Whether `got` is close enough to `want`.
    pub fn accepts(&self, got: &[f32], want: &[f32]) -> bool {
        if got.len() != want.len() {
            return false;
        }
        let (mut diff, mut norm) = (0f64, 0f64);
        for (&g, &w) in got.iter().zip(want) {
            let d = g as f64 - w as f64;
            diff += d * d;
            norm += (w as f64) * (w as f64);
        }
        let bound = self.rel * norm.sqrt() + self.abs * (got.len() as f64).sqrt();
        // NaN compares false, so it never passes.
        diff.sqrt() <= bound
    }
}

/// Verifies an opened stage run: the opening must cover positions `0..=last` (attention makes
/// every output depend on all earlier inputs), its leaves and proof must rebuild the committed
/// root, re-executing the stage on the committed inputs must reproduce every committed
/// output within `tolerance`, and where a leaf holds logits, they must be the top of the head's
/// logits for its committed output ([`verify_top`]).
pub fn verify_stage<R: Reexecute + ?Sized>(
    commitment: &Commitment,
    opening: &Opening,
    stage: &R,
    tolerance: Tolerance,
) -> Result<(), Error> {
    let leaves = &opening.leaves;
    let last = leaves.last().ok_or(Error::BadPositions)?.position;
    for (i, leaf) in leaves.iter().enumerate() {
        if leaf.position != i as u32 {
            return Err(Error::NotAPrefix { last });
        }
    }
    let hidden = leaves[0].input.len();
    for leaf in leaves {
        for (which, xs) in [("input", &leaf.input), ("output", &leaf.output)] {
            if xs.len() != hidden {
                return Err(Error::HiddenSize {
                    position: leaf.position,
                    which,
                    got: xs.len(),
                    expected: hidden,
                });
            }
        }
    }
    verify_proof(commitment, leaves, &opening.proof)?;
    let inputs: Vec<Vec<f32>> = leaves.iter().map(|l| l.input.clone()).collect();
    let outputs = stage.reexecute(&inputs).map_err(Error::Reexecution)?;
    if outputs.len() != leaves.len() {
        return Err(Error::ReexecutionShape { got: outputs.len(), expected: leaves.len() });
    }
    for (leaf, recomputed) in leaves.iter().zip(&outputs) {
        if !tolerance.accepts(&leaf.output, recomputed) {
            return Err(Error::OutputMismatch {
                position: leaf.position,
                error: Tolerance::relative_error(&leaf.output, recomputed),
                tolerance: tolerance.rel,
            });
        }
    }
    verify_logits(leaves, stage, tolerance)
}

/// Checks every leaf that holds logits against the head applied to its committed output
/// ([`verify_top`]), all such leaves in one call of [`Reexecute::logits`].
pub fn verify_logits<R: Reexecute + ?Sized>(
    leaves: &[Leaf],
    stage: &R,
    tolerance: Tolerance,
) -> Result<(), Error> {
    let with: Vec<&Leaf> = leaves.iter().filter(|l| !l.logits.is_empty()).collect();
    if with.is_empty() {
        return Ok(());
    }
    let outputs: Vec<Vec<f32>> = with.iter().map(|l| l.output.clone()).collect();
    let recomputed = stage.logits(&outputs).map_err(Error::Reexecution)?;
    if recomputed.len() != with.len() {
        return Err(Error::ReexecutionShape { got: recomputed.len(), expected: with.len() });
    }
    for (leaf, r) in with.iter().zip(&recomputed) {
        verify_top(r, &leaf.logits, tolerance)
            .map_err(|error| Error::Logits { position: leaf.position, error })?;
    }
    Ok(())
}

/// Checks that stage k's opened outputs are bit-identical to stage k+1's opened inputs at every
/// position both openings cover. (Each opening is checked against its own commitment separately,
/// with [`verify_proof`].)
pub fn verify_chain(stage_k: &[Leaf], stage_k1: &[Leaf]) -> Result<(), Error> {
    let next: std::collections::HashMap<u32, &Leaf> =
        stage_k1.iter().map(|b| (b.position, b)).collect();
    for a in stage_k {
        if let Some(b) = next.get(&a.position) {
            let same = a.output.len() == b.input.len()
                && a.output.iter().zip(&b.input).all(|(x, y)| x.to_bits() == y.to_bits());
            if !same {
                return Err(Error::BrokenChain { position: a.position });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy "stage": output at position p is the running sum of inputs 0..=p, times 2.
    struct PrefixSum;

    impl Reexecute for PrefixSum {
        fn reexecute(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
            let mut acc = vec![0f32; inputs[0].len()];
            Ok(inputs
                .iter()
                .map(|x| {
                    for (a, v) in acc.iter_mut().zip(x) {
                        *a += v;
                    }
                    acc.iter().map(|a| a * 2.0).collect()
                })
                .collect())
        }
    }

    fn honest(n: usize) -> Trace {
        let inputs: Vec<Vec<f32>> =
            (0..n).map(|i| vec![i as f32 + 1.0, 0.5 - i as f32, 3.0]).collect();
        let outputs = PrefixSum.reexecute(&inputs).unwrap();
        let mut trace = Trace::new();
        for (i, o) in inputs.into_iter().zip(outputs) {
            trace.push(i, o, Vec::new());
        }
        trace
    }

    #[test]
    fn the_running_trace_hash_is_the_chain_of_the_leaf_hashes_and_moves_with_any_leaf() {
        let trace = honest(5);
        assert_eq!(trace.chain(), chain_of(trace.hashes()));
        assert_eq!(Trace::new().chain(), [0; 32]);
        let mut other = Trace::new();
        for (i, leaf) in trace.leaves().iter().enumerate() {
            let mut output = leaf.output.clone();
            if i == 3 {
                output[0] = f32::from_bits(output[0].to_bits() ^ 1);
            }
            other.push(leaf.input.clone(), output, Vec::new());
        }
        assert_ne!(other.chain(), trace.chain(), "one bit of one output changes the hash");
        let mut swapped = trace.hashes().to_vec();
        swapped.swap(1, 2);
        assert_ne!(chain_of(&swapped), trace.chain(), "the order is committed to");
    }

    #[test]
    fn honest_run_verifies() {
        let trace = honest(9);
        let opening = trace.open_prefix(6).unwrap();
        verify_stage(&trace.commitment(), &opening, &PrefixSum, Tolerance::default()).unwrap();
    }

    /// [`PrefixSum`] with a "head": logits over a vocabulary of 100, token `t`'s logit the
    /// dot product of the output with `(1, t/100, -1)`.
    struct WithHead;

    impl Reexecute for WithHead {
        fn reexecute(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
            PrefixSum.reexecute(inputs)
        }

        fn logits(&self, outputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
            let head = |o: &Vec<f32>| -> Vec<f32> {
                (0..100).map(|t| o[0] + o[1] * t as f32 / 100.0 - o[2]).collect()
            };
            Ok(outputs.iter().map(head).collect())
        }
    }

    #[test]
    fn committed_logits_are_checked_against_the_head() {
        let inputs: Vec<Vec<f32>> =
            (0..4).map(|i| vec![i as f32 + 1.0, 0.5 - i as f32, 3.0]).collect();
        let outputs = PrefixSum.reexecute(&inputs).unwrap();
        let run = |promote: bool| {
            let mut trace = Trace::new();
            for (p, (i, o)) in inputs.iter().zip(&outputs).enumerate() {
                // Logits at positions 1 (a prompt's last) and 3 (a step's).
                let mut logits = match p {
                    1 | 3 => top_logits(&WithHead.logits(std::slice::from_ref(o)).unwrap()[0]),
                    _ => Vec::new(),
                };
                if promote && p == 3 {
                    logits[10].1 = logits[0].1 + 1.0;
                }
                trace.push(i.clone(), o.clone(), logits);
            }
            trace
        };
        let honest = run(false);
        assert_eq!(honest.leaves()[1].logits.len(), TOP_LOGITS);
        verify_stage(
            &honest.commitment(),
            &honest.open_prefix(3).unwrap(),
            &WithHead,
            Tolerance::default(),
        )
        .unwrap();
        let cheat = run(true);
        let err = verify_stage(
            &cheat.commitment(),
            &cheat.open_prefix(3).unwrap(),
            &WithHead,
            Tolerance::default(),
        );
        assert!(
            matches!(err, Err(Error::Logits { position: 3, error: TopError::Values { .. } })),
            "{err:?}"
        );
        // A stage without a head cannot vouch for logits.
        let err = verify_stage(
            &honest.commitment(),
            &honest.open_prefix(1).unwrap(),
            &PrefixSum,
            Tolerance::default(),
        );
        assert!(matches!(err, Err(Error::Reexecution(_))), "{err:?}");
    }

    #[test]
    fn wrong_output_is_rejected() {
        let mut trace = Trace::new();
        trace.push(vec![1.0, 2.0], vec![2.0, 4.0], Vec::new());
        trace.push(vec![1.0, 1.0], vec![4.0, 6.1], Vec::new());
        let opening = trace.open_prefix(1).unwrap();
        let err = verify_stage(&trace.commitment(), &opening, &PrefixSum, Tolerance::default());
        assert!(matches!(err, Err(Error::OutputMismatch { position: 1, .. })), "{err:?}");
    }

    #[test]
    fn gaps_and_tampering_are_rejected() {
        let trace = honest(5);
        let c = trace.commitment();
        let gap = trace.open(&[0, 2]).unwrap();
        assert!(matches!(
            verify_stage(&c, &gap, &PrefixSum, Tolerance::default()),
            Err(Error::NotAPrefix { .. })
        ));
        let mut opening = trace.open_prefix(3).unwrap();
        opening.leaves[1].input[0] += 1.0;
        assert!(matches!(
            verify_stage(&c, &opening, &PrefixSum, Tolerance::default()),
            Err(Error::BadProof)
        ));
    }

    #[test]
    fn nan_never_passes() {
        let t = Tolerance::default();
        assert!(!t.accepts(&[f32::NAN], &[1.0]));
        assert!(!t.accepts(&[1.0], &[f32::NAN]));
        assert!(t.accepts(&[0.0], &[0.0]));
        assert!(t.accepts(&[1.0005], &[1.0]));
        assert!(!t.accepts(&[1.01], &[1.0]));
    }

    #[test]
    fn chain() {
        let a = honest(3);
        let mut b = Trace::new();
        for leaf in a.leaves() {
            b.push(leaf.output.clone(), vec![0.0; 3], Vec::new());
        }
        verify_chain(a.leaves(), b.leaves()).unwrap();
        let mut broken = b.leaves().to_vec();
        broken[2].input[1] = f32::from_bits(broken[2].input[1].to_bits() ^ 1);
        assert!(matches!(
            verify_chain(a.leaves(), &broken),
            Err(Error::BrokenChain { position: 2 })
        ));
    }
}
