//! The audit probe: what only re-executing a stage yields, so that an auditor cannot give a
//! verdict without doing the work (the verifier's dilemma).
//!
//! When the chain selects a claim for audit it draws a seed. Every assigned auditor builds the
//! same probe input from it ([`input`]: the opened input of the last audited position with its
//! values permuted), appends it after the opened prefix in its one batched re-execution, and
//! reports what the stage's layers added to it at a few coordinates the seed picks ([`sketch`]).
//! Nobody computed that input before, so the worker's opening does not contain the answer and a
//! lazy auditor can only guess; honest auditors agree to within rounding. The jobs pallet
//! compares the auditors' sketches and voids the findings that no other auditor's matches.

use crate::Reexecute;

/// How many values a sketch holds.
pub const VALUES: usize = 8;

/// Sketch values are in units of `1 / SCALE`.
pub const SCALE: f32 = 1024.0;

/// A deterministic stream of words from the seed: blake2-256 over (domain, seed, counter).
fn words(seed: [u8; 32], domain: &'static [u8]) -> impl Iterator<Item = u64> {
    (0u64..).flat_map(move |i| {
        let mut bytes = domain.to_vec();
        bytes.extend_from_slice(&seed);
        bytes.extend_from_slice(&i.to_le_bytes());
        let h = sp_crypto_hashing::blake2_256(&bytes);
        (0..4).map(move |k| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[k * 8..k * 8 + 8]);
            u64::from_le_bytes(w)
        })
    })
}

/// The probe input for `seed`: `row` (an opened input) with its values permuted
/// (Fisher–Yates driven by the seed).
pub fn input(seed: &[u8; 32], row: &[f32]) -> Vec<f32> {
    let mut out = row.to_vec();
    let mut w = words(*seed, b"bitorch/probe/permute");
    for i in (1..out.len()).rev() {
        let j = (w.next().unwrap_or(0) % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

/// The coordinates of a `width`-wide row the sketch reports, for `seed`.
pub fn coordinates(seed: &[u8; 32], width: usize) -> [usize; VALUES] {
    let mut w = words(*seed, b"bitorch/probe/coordinates");
    std::array::from_fn(|_| (w.next().unwrap_or(0) % width.max(1) as u64) as usize)
}

/// What the layers added to the probe (`output − input`) at [`coordinates`], in units of
/// `1 / SCALE`, saturated to `i32`. Rows of another width than each other give zeros.
pub fn sketch(seed: &[u8; 32], input: &[f32], output: &[f32]) -> [i32; VALUES] {
    if input.len() != output.len() {
        return [0; VALUES];
    }
    coordinates(seed, input.len()).map(|c| {
        let d =
            (output.get(c).copied().unwrap_or(0.0) - input.get(c).copied().unwrap_or(0.0)) * SCALE;
        // `as` saturates, and maps NaN to 0.
        d.round() as i32
    })
}

/// An auditor's re-execution of the opened prefix `inputs` with the probe for `seed`: the probe
/// ([`input`] of the last opened input) is appended after the prefix in the same batched pass,
/// or, when the context has no `room` for one more position, put in place of the last input
/// in a second pass. Returns the recomputed outputs of `inputs` and the probe's [`sketch`].
pub fn reexecute<R: Reexecute + ?Sized>(
    stage: &R,
    inputs: &[Vec<f32>],
    seed: &[u8; 32],
    room: bool,
) -> Result<(Vec<Vec<f32>>, [i32; VALUES]), String> {
    let last = inputs.last().ok_or("nothing to re-execute")?;
    let probe = input(seed, last);
    let mut with_probe = inputs.to_vec();
    let (outputs, probe_out) = if room {
        with_probe.push(probe.clone());
        let mut out = stage.reexecute(&with_probe)?;
        let probe_out = out.pop().unwrap_or_default();
        (out, probe_out)
    } else {
        let out = stage.reexecute(inputs)?;
        *with_probe.last_mut().ok_or("nothing to re-execute")? = probe.clone();
        (out, stage.reexecute(&with_probe)?.pop().unwrap_or_default())
    };
    Ok((outputs, sketch(seed, &probe, &probe_out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_input_is_a_permutation_fixed_by_the_seed() {
        let row: Vec<f32> = (0..576).map(|i| i as f32).collect();
        let a = input(&[1; 32], &row);
        assert_eq!(a, input(&[1; 32], &row));
        assert_ne!(a, row);
        assert_ne!(a, input(&[2; 32], &row));
        let mut sorted = a.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, row);
    }

    #[test]
    fn the_sketch_is_what_the_layers_added_at_the_seeds_coordinates() {
        let x = vec![1.0f32; 64];
        let y: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 / 4.0).collect();
        let cs = coordinates(&[7; 32], 64);
        let s = sketch(&[7; 32], &x, &y);
        for (c, v) in cs.iter().zip(s) {
            assert_eq!(v, (*c as f32 / 4.0 * SCALE) as i32);
        }
        assert_eq!(sketch(&[7; 32], &x, &y[..10]), [0; VALUES]);
        assert_eq!(sketch(&[7; 32], &[f32::NAN; 4], &[f32::INFINITY; 4]), [0; VALUES]);
    }

    /// A "stage" whose output at each position is the running sum of its inputs.
    struct Prefix;
    impl Reexecute for Prefix {
        fn reexecute(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
            let mut acc = vec![0.0; inputs[0].len()];
            Ok(inputs
                .iter()
                .map(|x| {
                    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
                    acc.clone()
                })
                .collect())
        }
    }

    #[test]
    fn the_probe_runs_after_the_prefix_or_in_place_of_its_last_position() {
        let inputs: Vec<Vec<f32>> =
            (0..3).map(|p| (0..16).map(|i| (p * 16 + i) as f32).collect()).collect();
        let seed = [3; 32];
        let (outs, sk) = reexecute(&Prefix, &inputs, &seed, true).unwrap();
        assert_eq!(outs, Prefix.reexecute(&inputs).unwrap());
        // After the prefix, the probe adds the sum of all three inputs.
        let sum = &outs[2];
        let want = coordinates(&seed, 16).map(|c| (sum[c] * SCALE).round() as i32);
        assert_eq!(sk, want);
        // In place of the last, it adds the sum of the first two.
        let (outs2, sk2) = reexecute(&Prefix, &inputs, &seed, false).unwrap();
        assert_eq!(outs2, outs);
        let want = coordinates(&seed, 16).map(|c| (outs[1][c] * SCALE).round() as i32);
        assert_eq!(sk2, want);
        assert!(reexecute(&Prefix, &[], &seed, true).is_err());
    }
}
