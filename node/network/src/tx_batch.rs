//! The payload of a transactions gossip message: several SCALE-encoded transactions relayed
//! together (a SCALE `Vec<Vec<u8>>`). The network does not look inside the transactions; the
//! node decodes and checks each one.

use parity_scale_codec::{Compact, Decode, Encode};

/// Most transactions in one message.
pub const MAX_TXS: usize = 2048;

/// Why a transactions gossip message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxBatchError {
    /// The count or a transaction's length prefix does not decode, or promises more bytes than
    /// the message has.
    #[error("transaction batch does not decode")]
    Invalid,
    /// More transactions than [`MAX_TXS`].
    #[error("transaction batch of {count}; at most {MAX_TXS}")]
    TooMany {
        /// The count the message claims.
        count: usize,
    },
    /// Bytes after the last transaction.
    #[error("transaction batch has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes transactions (each already SCALE-encoded) as one gossip message.
pub fn encode(txs: &[Vec<u8>]) -> Vec<u8> {
    txs.encode()
}

/// Decodes a peer's transactions gossip message: at most [`MAX_TXS`] transactions (the count is
/// checked before anything is allocated for them), nothing after them.
pub fn decode(bytes: &[u8]) -> Result<Vec<Vec<u8>>, TxBatchError> {
    let mut input = bytes;
    let count = Compact::<u32>::decode(&mut input).map_err(|_| TxBatchError::Invalid)?.0 as usize;
    if count > MAX_TXS {
        return Err(TxBatchError::TooMany { count });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(<Vec<u8>>::decode(&mut input).map_err(|_| TxBatchError::Invalid)?);
    }
    if !input.is_empty() {
        return Err(TxBatchError::TrailingBytes(input.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_bad_input_is_refused() {
        let txs = vec![vec![1u8, 2, 3], vec![], vec![9; 300]];
        assert_eq!(decode(&encode(&txs)).unwrap(), txs);
        let mut trailing = encode(&txs);
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(TxBatchError::TrailingBytes(1)));
        let too_many = Compact(MAX_TXS as u32 + 1).encode();
        assert_eq!(decode(&too_many), Err(TxBatchError::TooMany { count: MAX_TXS + 1 }));
        // A length prefix that promises more bytes than there are.
        let mut short = Compact(1u32).encode();
        short.extend(Compact(1_000_000u32).encode());
        assert_eq!(decode(&short), Err(TxBatchError::Invalid));
        assert_eq!(decode(&[]), Err(TxBatchError::Invalid));
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<Vec<u8>>::new());
    }
}
