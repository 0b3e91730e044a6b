//! The last stage's logits, committed: what it returns is the top [`TOP_LOGITS`] of the
//! position's logits, and what it commits to in that position's leaf is the same list.
//!
//! Why only the top ones. The client samples the next token from what it receives, so those
//! values are the last stage's real output: they must be in the trace the client acknowledges
//! and an auditor re-executes. The whole row (49,152 floats for SmolLM2, 192 KiB) in every leaf
//! that returned logits would make traces, vouchers' hashing and openings far heavier for
//! nothing: the client samples only among the top [`TOP_LOGITS`] (as llama.cpp samples among
//! its default top 40), which for greedy decoding is exactly the argmax of the whole row.
//!
//! What an auditor checks ([`verify_top`]), given the logits it recomputed from the committed
//! output hidden state: the list has [`TOP_LOGITS`] entries (or the vocabulary's size if
//! smaller) of distinct ids in the vocabulary with finite values; each value is within
//! `rel × (the largest |logit| of the row) + abs` of the recomputed one ([`Tolerance`]'s
//! `rel` and `abs`: 1e-3 of about 20 for SmolLM2, so 0.02, a probability ratio of 1.02); and
//! no other token's recomputed logit is above the lowest listed one by more than that: a last
//! stage can neither change which tokens the client may pick nor, beyond that slack, how
//! likely they are. Per value and not L2 over the list: swapping the two best tokens moves
//! two values of sixty-four, which an L2 bound over the list would forgive.

use crate::{Logit, Tolerance};

/// How many of a position's logits a last stage returns and commits to.
pub const TOP_LOGITS: usize = 64;

/// Why a list of committed logits is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopError {
    /// Not [`TOP_LOGITS`] entries (or the vocabulary's size, if smaller).
    #[error("{got} logits, expected {expected}")]
    Count {
        /// Entries given.
        got: usize,
        /// Entries expected.
        expected: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    OutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// The same token twice.
    #[error("token id {id} is listed twice")]
    Duplicate {
        /// The id.
        id: u32,
    },
    /// NaN or infinite.
    #[error("the logit of token {id} is not finite")]
    NotFinite {
        /// The id.
        id: u32,
    },
    /// A listed value is not the one the head gives.
    #[error("token {id}'s listed logit {listed} is not the head's {head}")]
    Values {
        /// The first token whose value is off.
        id: u32,
        /// Its listed logit.
        listed: f32,
        /// Its recomputed logit.
        head: f32,
    },
    /// A token left out of the list has a higher logit than one listed.
    #[error("token {id} (logit {logit}) is left out although above the lowest listed ({lowest})")]
    LeftOut {
        /// The token left out.
        id: u32,
        /// Its recomputed logit.
        logit: f32,
        /// The lowest recomputed logit of the listed tokens.
        lowest: f32,
    },
}

/// The top [`TOP_LOGITS`] of `logits` (a row over the vocabulary), highest first; equal values
/// in increasing id order. What an honest last stage returns and commits to.
pub fn top_logits(logits: &[f32]) -> Vec<Logit> {
    let by_value = |a: &Logit, b: &Logit| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut all: Vec<Logit> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    let k = TOP_LOGITS.min(all.len());
    if k < all.len() {
        all.select_nth_unstable_by(k, by_value);
        all.truncate(k);
    }
    all.sort_unstable_by(by_value);
    all
}

/// Checks the shape of a list of logits for a vocabulary of `vocab` tokens: its length, ids
/// in range and distinct, finite values. The client checks this of what it receives, an
/// auditor of what was committed.
pub fn check_top(top: &[Logit], vocab: usize) -> Result<(), TopError> {
    let expected = TOP_LOGITS.min(vocab);
    if top.len() != expected {
        return Err(TopError::Count { got: top.len(), expected });
    }
    let mut seen = vec![false; vocab];
    for &(id, x) in top {
        let slot = seen.get_mut(id as usize).ok_or(TopError::OutOfRange { id, vocab })?;
        if std::mem::replace(slot, true) {
            return Err(TopError::Duplicate { id });
        }
        if !x.is_finite() {
            return Err(TopError::NotFinite { id });
        }
    }
    Ok(())
}

/// Checks committed logits `top` against `recomputed`, the head's logits over the whole
/// vocabulary for the committed hidden state: see the [module docs](self).
pub fn verify_top(recomputed: &[f32], top: &[Logit], tolerance: Tolerance) -> Result<(), TopError> {
    check_top(top, recomputed.len())?;
    let scale = recomputed.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
    let slack = tolerance.rel * scale + tolerance.abs;
    for &(id, listed) in top {
        let head = recomputed[id as usize];
        // A NaN recomputed logit fails.
        if !at_most((f64::from(listed) - f64::from(head)).abs(), slack) {
            return Err(TopError::Values { id, listed, head });
        }
    }
    let Some(lowest) = top.iter().map(|&(id, _)| recomputed[id as usize]).min_by(f32::total_cmp)
    else {
        // An empty vocabulary: nothing to list.
        return Ok(());
    };
    let mut listed_ids = vec![false; recomputed.len()];
    for &(id, _) in top {
        listed_ids[id as usize] = true;
    }
    for (id, &x) in recomputed.iter().enumerate() {
        // A NaN recomputed logit fails too.
        if !listed_ids[id] && !at_most(f64::from(x), f64::from(lowest) + slack) {
            return Err(TopError::LeftOut { id: id as u32, logit: x, lowest });
        }
    }
    Ok(())
}

/// Whether `x <= bound`; false if either is NaN.
fn at_most(x: f64, bound: f64) -> bool {
    use std::cmp::Ordering::{Equal, Less};
    matches!(x.partial_cmp(&bound), Some(Less | Equal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> Vec<f32> {
        // Distinct values in a scrambled order.
        (0..n).map(|i| ((i * 7919) % n) as f32 * 0.1 - 50.0).collect()
    }

    #[test]
    fn the_top_ones_highest_first_ties_by_id() {
        let r = row(1000);
        let top = top_logits(&r);
        assert_eq!(top.len(), TOP_LOGITS);
        let mut sorted: Vec<Logit> = r.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(top, sorted[..TOP_LOGITS]);
        assert_eq!(top_logits(&[1.0, 3.0, 3.0]), [(1, 3.0), (2, 3.0), (0, 1.0)]);
        assert!(r.iter().all(|x| x.abs() <= 50.0));
        assert!(top_logits(&[]).is_empty());
        verify_top(&r, &top, Tolerance::default()).unwrap();
        verify_top(&[1.0, 3.0, 3.0], &top_logits(&[1.0, 3.0, 3.0]), Tolerance::default()).unwrap();
    }

    #[test]
    fn other_logits_are_refused() {
        let r = row(1000);
        let top = top_logits(&r);
        let tol = Tolerance::default();
        // Promoting a token: its listed value is not the head's.
        let mut promoted = top.clone();
        promoted[40].1 = promoted[0].1 + 1.0;
        assert!(matches!(verify_top(&r, &promoted, tol), Err(TopError::Values { .. })));
        // Swapping which tokens hold the top two values (0.1 apart, the slack 0.05).
        let mut swapped = top.clone();
        let (a, b) = (swapped[0].0, swapped[1].0);
        swapped[0].0 = b;
        swapped[1].0 = a;
        assert!(matches!(verify_top(&r, &swapped, tol), Err(TopError::Values { .. })));
        // Leaving the best token out, listing the 65th with its true value.
        let mut all: Vec<Logit> = r.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        let without_best = all[1..=TOP_LOGITS].to_vec();
        assert_eq!(
            verify_top(&r, &without_best, tol),
            Err(TopError::LeftOut { id: all[0].0, logit: all[0].1, lowest: all[TOP_LOGITS].1 })
        );
        // Shapes.
        assert_eq!(
            verify_top(&r, &top[1..], tol),
            Err(TopError::Count { got: TOP_LOGITS - 1, expected: TOP_LOGITS })
        );
        let mut dup = top.clone();
        dup[1] = dup[0];
        assert_eq!(verify_top(&r, &dup, tol), Err(TopError::Duplicate { id: dup[0].0 }));
        let mut far = top.clone();
        far[3].0 = 1000;
        assert_eq!(verify_top(&r, &far, tol), Err(TopError::OutOfRange { id: 1000, vocab: 1000 }));
        let mut nan = top.clone();
        nan[5].1 = f32::NAN;
        assert_eq!(verify_top(&r, &nan, tol), Err(TopError::NotFinite { id: nan[5].0 }));
        // A recomputed NaN outside the list fails too.
        let mut bad = r.clone();
        let outside = all[TOP_LOGITS + 3].0 as usize;
        bad[outside] = f32::NAN;
        assert!(matches!(verify_top(&bad, &top, tol), Err(TopError::LeftOut { .. })));
    }

    #[test]
    fn last_bit_differences_pass() {
        let r = row(1000);
        let top = top_logits(&r);
        let nudged: Vec<f32> = r.iter().map(|x| x * (1.0 + 1e-6)).collect();
        verify_top(&nudged, &top, Tolerance::default()).unwrap();
    }
}
