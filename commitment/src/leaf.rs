//! The canonical leaf: one token position of one stage run.

use crate::Hash;

/// One of the logits a last stage returned: a token id and its logit.
pub type Logit = (u32, f32);

/// What a stage computed at one token position: the hidden state it received and the one it
/// produced. For the first stage the input is the token id it received, as a [`token_row`], so
/// that whoever sent it can check the leaf; for the last stage the output is the hidden state
/// after its last layer (before the final norm and LM head), and at each position where it
/// returned logits, the leaf also holds those it returned ([`crate::top`]): the client's
/// voucher then acknowledges the very logits it sampled from, and an auditor checks them
/// against the head applied to the committed output.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Token position in the session, from 0.
    pub position: u32,
    /// The stage's input hidden state at this position.
    pub input: Vec<f32>,
    /// The stage's output hidden state at this position.
    pub output: Vec<f32>,
    /// The logits a last stage returned at this position (the top [`crate::top::TOP_LOGITS`]);
    /// empty where it returned none (every other stage, and positions inside a batch).
    pub logits: Vec<Logit>,
}

impl Leaf {
    /// A leaf without logits.
    pub fn new(position: u32, input: Vec<f32>, output: Vec<f32>) -> Self {
        Self { position, input, output, logits: Vec::new() }
    }

    /// The canonical bytes: see [`encode_leaf`].
    pub fn encode(&self) -> Vec<u8> {
        encode_leaf(self.position, &self.input, &self.output, &self.logits)
    }

    /// blake2-256 of the canonical bytes.
    pub fn hash(&self) -> Hash {
        leaf_hash(self.position, &self.input, &self.output, &self.logits)
    }
}

/// Canonical byte encoding of a leaf: `position` as u32 little-endian, then the input as a u32
/// little-endian element count followed by each f32's IEEE-754 bits little-endian, then the
/// output the same way; then, only if there are logits, their count (u32 little-endian) and
/// each as its token id (u32) and value (f32 bits), little-endian. Floats are encoded bit for
/// bit (no NaN canonicalization): the encoding commits to exactly what was computed. The
/// length prefixes keep every part apart, so a leaf with logits never encodes like one
/// without.
pub fn encode_leaf(position: u32, input: &[f32], output: &[f32], logits: &[Logit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 4 * (input.len() + output.len()) + 8 * logits.len());
    out.extend_from_slice(&position.to_le_bytes());
    for xs in [input, output] {
        // Hidden states are a few thousand floats; u32 covers any real model.
        out.extend_from_slice(&(xs.len() as u32).to_le_bytes());
        for x in xs {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    if !logits.is_empty() {
        out.extend_from_slice(&(logits.len() as u32).to_le_bytes());
        for (id, x) in logits {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// The committed input of a first stage at a position where it received token `id`: a row of
/// the hidden width holding the id (exact in f32 below 2^24) then zeros. Re-execution embeds the
/// id in its first value.
pub fn token_row(id: u32, width: usize) -> Vec<f32> {
    let mut row = vec![0.0; width.max(1)];
    row[0] = id as f32;
    row
}

/// The token id a [`token_row`] holds, if its first value is one below `vocab`.
pub fn token_of(row: &[f32], vocab: usize) -> Option<u32> {
    let x = *row.first()?;
    (x >= 0.0 && x.fract() == 0.0 && (x as usize) < vocab).then_some(x as u32)
}

/// blake2-256 of [`encode_leaf`].
pub fn leaf_hash(position: u32, input: &[f32], output: &[f32], logits: &[Logit]) -> Hash {
    sp_crypto_hashing::blake2_256(&encode_leaf(position, input, output, logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rows_hold_the_id() {
        assert_eq!(token_row(7, 3), [7.0, 0.0, 0.0]);
        assert_eq!(token_of(&token_row(49_151, 576), 49_152), Some(49_151));
        assert_eq!(token_of(&token_row(49_152, 576), 49_152), None, "outside the vocabulary");
        assert_eq!(token_of(&[1.5], 10), None);
        assert_eq!(token_of(&[-1.0], 10), None);
        assert_eq!(token_of(&[f32::NAN], 10), None);
        assert_eq!(token_of(&[], 10), None);
    }

    #[test]
    fn encoding_layout() {
        let bytes = encode_leaf(0x0102_0304, &[1.0], &[-2.0, 0.5], &[]);
        assert_eq!(&bytes[..4], &[4, 3, 2, 1]);
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[12..16], &2u32.to_le_bytes());
        assert_eq!(&bytes[16..20], &(-2.0f32).to_le_bytes());
        assert_eq!(&bytes[20..24], &0.5f32.to_le_bytes());
        assert_eq!(bytes.len(), 24);
        let with = encode_leaf(0x0102_0304, &[1.0], &[-2.0, 0.5], &[(7, 1.5)]);
        assert_eq!(&with[..24], &bytes[..]);
        assert_eq!(&with[24..28], &1u32.to_le_bytes());
        assert_eq!(&with[28..32], &7u32.to_le_bytes());
        assert_eq!(&with[32..], &1.5f32.to_le_bytes());
    }

    #[test]
    fn length_prefix_separates_input_from_output() {
        assert_ne!(leaf_hash(0, &[1.0, 2.0], &[3.0], &[]), leaf_hash(0, &[1.0], &[2.0, 3.0], &[]));
        assert_ne!(leaf_hash(0, &[1.0], &[2.0], &[]), leaf_hash(1, &[1.0], &[2.0], &[]));
        assert_ne!(leaf_hash(0, &[0.0], &[2.0], &[]), leaf_hash(0, &[-0.0], &[2.0], &[]));
        // The logits are committed: another id or value is another leaf.
        let l = |logits: &[Logit]| leaf_hash(0, &[1.0], &[2.0], logits);
        assert_ne!(l(&[(1, 2.0)]), l(&[]));
        assert_ne!(l(&[(1, 2.0)]), l(&[(2, 2.0)]));
        assert_ne!(l(&[(1, 2.0)]), l(&[(1, 2.5)]));
        assert_ne!(l(&[(1, 2.0), (2, 1.0)]), l(&[(2, 1.0), (1, 2.0)]));
    }
}
