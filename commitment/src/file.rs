//! The file a worker keeps a claimed session's leaves in until its audits are over: `b"BTRC2"`,
//! the number of leaves `n` and their width `w` (u32 little-endian each), then per leaf its
//! input and its output, `w` f32 little-endian each, bit for bit, and the logits it holds: a
//! count (u32, at most [`TOP_LOGITS`]) and each as a token id (u32) and value (f32),
//! little-endian. Read back by the worker when an auditor asks for an opening, so decoding
//! checks everything: a damaged or foreign file is an error, never a half trace.

use crate::{Leaf, Logit, TOP_LOGITS};

/// The file's first bytes.
pub const MAGIC: &[u8; 5] = b"BTRC2";

/// Bytes before the leaves.
pub const HEADER: usize = 13;

/// Why bytes are not a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Too short, or another magic.
    #[error("not a trace file")]
    NotATrace,
    /// The length is not what the header and the leaves promise.
    #[error("its length does not match its header")]
    Length,
    /// Leaves of different widths cannot be kept in one file.
    #[error("leaves of mixed widths")]
    MixedWidths,
    /// A leaf holding more logits than a last stage commits to.
    #[error("a leaf holds {0} logits, more than {TOP_LOGITS}")]
    TooManyLogits(u32),
}

/// The file's bytes for `leaves` (positions `0..n`, in order).
pub fn encode_leaves(leaves: &[Leaf]) -> Result<Vec<u8>, FileError> {
    let width = leaves.first().map_or(0, |l| l.input.len());
    if leaves.iter().any(|l| l.input.len() != width || l.output.len() != width) {
        return Err(FileError::MixedWidths);
    }
    if let Some(l) = leaves.iter().find(|l| l.logits.len() > TOP_LOGITS) {
        return Err(FileError::TooManyLogits(l.logits.len() as u32));
    }
    let logits: usize = leaves.iter().map(|l| l.logits.len()).sum();
    let mut bytes = Vec::with_capacity(HEADER + leaves.len() * (width * 8 + 4) + logits * 8);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(leaves.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(width as u32).to_le_bytes());
    for l in leaves {
        for x in l.input.iter().chain(&l.output) {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes.extend_from_slice(&(l.logits.len() as u32).to_le_bytes());
        for (id, x) in &l.logits {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(bytes)
}

/// The leaves in a file's bytes; positions are numbered from 0.
pub fn decode_leaves(bytes: &[u8]) -> Result<Vec<Leaf>, FileError> {
    if bytes.len() < HEADER || &bytes[..5] != MAGIC {
        return Err(FileError::NotATrace);
    }
    let mut at = 5;
    let mut word = || -> Result<u32, FileError> {
        let w = bytes.get(at..at + 4).ok_or(FileError::Length)?;
        at += 4;
        Ok(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let (n, width) = (word()? as usize, word()? as usize);
    // Every leaf takes at least its rows and its logits count: refuse a header promising more
    // than the bytes hold before allocating anything for it.
    let least = n
        .checked_mul(width)
        .and_then(|x| x.checked_mul(8))
        .and_then(|x| x.checked_add(n.checked_mul(4)?)?.checked_add(HEADER));
    if least.is_none_or(|least| least > bytes.len()) {
        return Err(FileError::Length);
    }
    let mut leaves = Vec::with_capacity(n);
    let mut at = HEADER;
    let floats = |count: usize, at: &mut usize| -> Result<Vec<f32>, FileError> {
        let end = at.checked_add(count * 4).ok_or(FileError::Length)?;
        let b = bytes.get(*at..end).ok_or(FileError::Length)?;
        *at = end;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    for position in 0..n as u32 {
        let input = floats(width, &mut at)?;
        let output = floats(width, &mut at)?;
        let count = floats(1, &mut at)?[0].to_bits();
        if count as usize > TOP_LOGITS {
            return Err(FileError::TooManyLogits(count));
        }
        let pairs = floats(2 * count as usize, &mut at)?;
        let logits: Vec<Logit> = pairs.chunks_exact(2).map(|p| (p[0].to_bits(), p[1])).collect();
        leaves.push(Leaf { position, input, output, logits });
    }
    if at != bytes.len() {
        return Err(FileError::Length);
    }
    Ok(leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_come_back_bit_for_bit_and_damage_is_an_error() {
        let leaves: Vec<Leaf> = (0..3)
            .map(|p| Leaf {
                position: p,
                input: vec![p as f32, f32::NAN, -0.0],
                output: vec![f32::INFINITY, 1.5, p as f32],
                logits: if p == 1 { vec![(3, 2.5), (0, f32::NAN)] } else { Vec::new() },
            })
            .collect();
        let bytes = encode_leaves(&leaves).unwrap();
        let back = decode_leaves(&bytes).unwrap();
        assert_eq!(encode_leaves(&back).unwrap(), bytes, "bit for bit, NaN included");
        assert_eq!(decode_leaves(&bytes[..bytes.len() - 1]), Err(FileError::Length));
        let mut more = bytes.clone();
        more.push(0);
        assert_eq!(decode_leaves(&more), Err(FileError::Length));
        assert_eq!(decode_leaves(b"BTRC"), Err(FileError::NotATrace));
        assert_eq!(decode_leaves(&[b'X'; 20]), Err(FileError::NotATrace));
        // A header promising more than 4 GiB of leaves is refused without allocating them.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_leaves(&huge), Err(FileError::Length));
        let mixed = [leaves[0].clone(), Leaf::new(1, vec![1.0], vec![])];
        assert_eq!(encode_leaves(&mixed), Err(FileError::MixedWidths));
        let many = Leaf { logits: vec![(0, 0.0); TOP_LOGITS + 1], ..leaves[0].clone() };
        assert_eq!(encode_leaves(&[many]), Err(FileError::TooManyLogits(TOP_LOGITS as u32 + 1)));
        // A count past the limit in the file: refused before reading the pairs.
        let mut counted = encode_leaves(&leaves[..1]).unwrap();
        let c = counted.len() - 4;
        counted[c..].copy_from_slice(&(TOP_LOGITS as u32 + 1).to_le_bytes());
        assert_eq!(decode_leaves(&counted), Err(FileError::TooManyLogits(TOP_LOGITS as u32 + 1)));
        assert_eq!(decode_leaves(&encode_leaves(&[]).unwrap()).unwrap(), Vec::<Leaf>::new());
    }
}
