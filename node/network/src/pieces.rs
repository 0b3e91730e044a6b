//! The piece protocol, `/bitorch/pieces/1`: peers fetch the pieces of model chunks from each
//! other, and the DHT says who holds which chunk.
//!
//! A chunk (one transformer layer of a model, or what every stage shares) is named by the
//! Merkle root of its pieces' blake2-256 hashes. A puller first asks a holder for the chunk's
//! piece hashes ([`Request::Hashes`]) and checks them against the root it got from the chain,
//! then asks holders for pieces ([`Request::Piece`]) and checks each against its hash before
//! writing it. Nothing a peer sends is trusted: the checks are the puller's, this module only
//! carries and bounds the messages.
//!
//! On the wire both ways travel as the stage protocol's frames ([`crate::stage`]): a request
//! is the SCALE encoding of [`Request`] (at most [`MAX_REQUEST_BYTES`]); an answer is the
//! SCALE encoding of [`Response`] (at most [`MAX_RESPONSE_BYTES`]: a piece of the largest
//! size the chain allows, or the hashes of the most pieces it allows). Decoding
//! ([`Request::decode_bounded`], [`Response::decode_bounded`]) rejects trailing bytes, and a
//! piece or hash list longer than those bounds, with a typed [`DecodeError`].
//!
//! Holders announce each complete chunk as a provider record under [`chunk_key`] (one key per
//! chunk, not per piece) and refresh it with their worker announcements; the DHT stores up to
//! [`Config::max_workers_per_model`](crate::Config) providers per key (256 by default, not
//! libp2p's 20) and a lookup returns those it finds within
//! [`Config::find_workers_timeout`](crate::Config).

use libp2p::kad;
use libp2p::StreamProtocol;
use parity_scale_codec::{Decode, Encode};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/bitorch/pieces/1");
/// Largest piece a peer sends (the chain's limit on a manifest's piece size).
pub const MAX_PIECE_BYTES: usize = 4 << 20;
/// Most piece hashes in one answer (the chain's limit on pieces per chunk).
pub const MAX_HASHES: usize = 65_536;
/// Largest request on the wire.
pub const MAX_REQUEST_BYTES: usize = 64;
/// Largest answer on the wire: a piece or a hash list, and their tag and length.
pub const MAX_RESPONSE_BYTES: usize = MAX_PIECE_BYTES + 16;

/// A chunk's name: the Merkle root of its piece hashes.
pub type ChunkRoot = [u8; 32];

/// The DHT key under which the holders of a chunk are providers.
pub fn chunk_key(root: &ChunkRoot) -> kad::RecordKey {
    let mut key = b"bitorch/chunk/".to_vec();
    key.extend_from_slice(root);
    kad::RecordKey::new(&key)
}

/// What a puller asks. The variants keep their indices forever.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// The hashes of every piece of the chunk, in order.
    #[codec(index = 0)]
    Hashes {
        /// The chunk.
        root: ChunkRoot,
    },
    /// One piece of the chunk.
    #[codec(index = 1)]
    Piece {
        /// The chunk.
        root: ChunkRoot,
        /// The piece's index, from 0.
        index: u32,
    },
}

/// What a holder answers. The variants keep their indices forever.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    /// The piece hashes of the chunk asked for.
    #[codec(index = 0)]
    Hashes(Vec<[u8; 32]>),
    /// The piece asked for.
    #[codec(index = 1)]
    Piece(Vec<u8>),
    /// The node holds no complete chunk with this root.
    #[codec(index = 2)]
    NotFound,
    /// The chunk has no piece of this index.
    #[codec(index = 3)]
    NoSuchPiece,
    /// The node is sending as much as it may now; ask another holder or later.
    #[codec(index = 4)]
    Busy,
}

/// Why bytes are not a message of this protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the protocol allows.
    #[error("{size} bytes, more than the {limit} a {what} may have")]
    TooLarge {
        /// What was decoded.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not the SCALE encoding of a message.
    #[error("not a {what}: {reason}")]
    Malformed {
        /// What was decoded.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A message followed by more bytes.
    #[error("{extra} bytes after the {what}")]
    TrailingBytes {
        /// What was decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A hash list or piece longer than the protocol allows.
    #[error("{what} of {len} entries, more than {limit}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

fn decode_exact<T: Decode>(
    bytes: &[u8],
    what: &'static str,
    limit: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { what, size: bytes.len(), limit });
    }
    let mut input = bytes;
    let value = T::decode(&mut input)
        .map_err(|e| DecodeError::Malformed { what, reason: e.to_string() })?;
    if !input.is_empty() {
        return Err(DecodeError::TrailingBytes { what, extra: input.len() });
    }
    Ok(value)
}

impl Request {
    /// Decodes a request of at most [`MAX_REQUEST_BYTES`].
    pub fn decode_bounded(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(bytes, "piece request", MAX_REQUEST_BYTES)
    }
}

impl Response {
    /// Decodes an answer of at most [`MAX_RESPONSE_BYTES`], with at most [`MAX_HASHES`]
    /// hashes or [`MAX_PIECE_BYTES`] bytes of piece.
    pub fn decode_bounded(bytes: &[u8]) -> Result<Self, DecodeError> {
        let r: Self = decode_exact(bytes, "piece answer", MAX_RESPONSE_BYTES)?;
        match &r {
            Self::Hashes(h) if h.len() > MAX_HASHES => {
                Err(DecodeError::TooLong { what: "hash list", len: h.len(), limit: MAX_HASHES })
            }
            Self::Piece(p) if p.len() > MAX_PIECE_BYTES => {
                Err(DecodeError::TooLong { what: "piece", len: p.len(), limit: MAX_PIECE_BYTES })
            }
            _ => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_bytes_are_typed_errors() {
        for r in [Request::Hashes { root: [7; 32] }, Request::Piece { root: [1; 32], index: 9 }] {
            assert_eq!(Request::decode_bounded(&r.encode()).unwrap(), r);
        }
        for r in [
            Response::Hashes(vec![[3; 32]; 5]),
            Response::Piece(vec![1, 2, 3]),
            Response::NotFound,
            Response::NoSuchPiece,
            Response::Busy,
        ] {
            assert_eq!(Response::decode_bounded(&r.encode()).unwrap(), r);
        }
        let mut long = Request::Hashes { root: [0; 32] }.encode();
        long.push(0);
        assert!(matches!(
            Request::decode_bounded(&long),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        assert!(matches!(Request::decode_bounded(&[9]), Err(DecodeError::Malformed { .. })));
        assert!(matches!(
            Request::decode_bounded(&[0; 65]),
            Err(DecodeError::TooLarge { size: 65, .. })
        ));
        // Truncated: a piece whose length says more than follows.
        let piece = Response::Piece(vec![5; 100]).encode();
        assert!(matches!(
            Response::decode_bounded(&piece[..50]),
            Err(DecodeError::Malformed { .. })
        ));
        let too_many = Response::Hashes(vec![[0; 32]; MAX_HASHES + 1]).encode();
        assert!(matches!(Response::decode_bounded(&too_many), Err(DecodeError::TooLong { .. })));
        assert_ne!(chunk_key(&[1; 32]), chunk_key(&[2; 32]));
    }
}
