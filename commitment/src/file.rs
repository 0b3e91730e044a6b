//! The file a worker keeps a claimed session's leaves in until its audits are over: `b"BTRC1"`,
//! the number of leaves `n` and their width `w` (u32 little-endian each), then per leaf its
//! input and its output, `w` f32 little-endian each, bit for bit. Read back by the worker when
//! an auditor asks for an opening, so decoding checks everything: a damaged or foreign file is
//! an error, never a half trace.

use crate::Leaf;

/// The file's first bytes.
pub const MAGIC: &[u8; 5] = b"BTRC1";

/// Bytes before the leaves.
pub const HEADER: usize = 13;

/// Why bytes are not a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Too short, or another magic.
    #[error("not a trace file")]
    NotATrace,
    /// The length is not what the header promises.
    #[error("its length does not match its header")]
    Length,
    /// Leaves of different widths cannot be kept in one file.
    #[error("leaves of mixed widths")]
    MixedWidths,
}

/// The file's bytes for `leaves` (positions `0..n`, in order).
pub fn encode_leaves(leaves: &[Leaf]) -> Result<Vec<u8>, FileError> {
    let width = leaves.first().map_or(0, |l| l.input.len());
    if leaves.iter().any(|l| l.input.len() != width || l.output.len() != width) {
        return Err(FileError::MixedWidths);
    }
    let mut bytes = Vec::with_capacity(HEADER + leaves.len() * width * 8);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(leaves.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(width as u32).to_le_bytes());
    for l in leaves {
        for x in l.input.iter().chain(&l.output) {
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
    let word = |at: usize| {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
    };
    let (n, width) = (word(5), word(9));
    let want =
        n.checked_mul(width).and_then(|x| x.checked_mul(8)).and_then(|x| x.checked_add(HEADER));
    if want != Some(bytes.len()) {
        return Err(FileError::Length);
    }
    let floats: Vec<f32> = bytes[HEADER..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if width == 0 {
        // Leaves of no width: the header's count, each empty.
        return Ok((0..n)
            .map(|p| Leaf { position: p as u32, input: Vec::new(), output: Vec::new() })
            .collect());
    }
    Ok(floats
        .chunks_exact(2 * width)
        .enumerate()
        .map(|(p, row)| Leaf {
            position: p as u32,
            input: row[..width].to_vec(),
            output: row[width..].to_vec(),
        })
        .collect())
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
        let mixed = [leaves[0].clone(), Leaf { position: 1, input: vec![1.0], output: vec![] }];
        assert_eq!(encode_leaves(&mixed), Err(FileError::MixedWidths));
        assert_eq!(decode_leaves(&encode_leaves(&[]).unwrap()).unwrap(), Vec::<Leaf>::new());
    }
}
