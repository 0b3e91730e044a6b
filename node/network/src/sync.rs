//! The block sync protocol, `/bitorch/sync/1`: ask a peer for the blocks from a height on.
//!
//! One request and one response per stream, each a SCALE value read up to an explicit size
//! limit. Blocks travel as opaque SCALE bytes with their commit bytes; this crate does not
//! look inside them (the node verifies them). A request or response that is too large or does
//! not decode reaches the service as a [`WireError`], so the sender can be answered with a
//! typed refusal and penalised instead of the stream just failing.

use crate::request::Refusal;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use parity_scale_codec::{Decode, DecodeLimit, Encode};
use std::io;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/bitorch/sync/1");
/// Largest request accepted (a request encodes in 12 bytes).
pub const MAX_REQUEST_BYTES: usize = 64;
/// Most blocks one request may ask for; larger requests are clamped to this.
pub const MAX_BLOCKS_PER_REQUEST: u32 = 128;
/// Largest response accepted; a responder drops trailing blocks to stay under it.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Nesting depth limit for decoding.
const DECODE_DEPTH_LIMIT: u32 = 16;

/// Ask for up to `max` consecutive blocks starting at height `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Request {
    /// First height wanted.
    pub from: u64,
    /// Most blocks wanted (at most [`MAX_BLOCKS_PER_REQUEST`] are sent).
    pub max: u32,
}

/// One block with the commit certificate that finalized it, both as opaque SCALE bytes.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SyncBlock {
    /// The SCALE-encoded block.
    pub block: Vec<u8>,
    /// The SCALE-encoded commit certificate.
    pub commit: Vec<u8>,
}

/// A peer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    /// Consecutive blocks from the requested height; fewer than asked (possibly none) when the
    /// peer has no more.
    Blocks(Vec<SyncBlock>),
    /// The peer will not answer.
    Refused(Refusal),
}

/// Why bytes from a peer were not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More bytes than the limit.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// The bytes are not a SCALE value of the expected type.
    #[error("undecodable message")]
    Undecodable,
}

/// A message as read from the wire: the value, or why it is not one.
pub(crate) type Frame<T> = Result<T, WireError>;

/// Keeps the encoded response under [`MAX_RESPONSE_BYTES`] by dropping trailing blocks.
pub(crate) fn truncate_to_limit(response: &mut Response) {
    if let Response::Blocks(blocks) = response {
        // Enum tag + compact length prefix of the vector.
        let mut size = 1 + 9;
        let keep = blocks
            .iter()
            .take_while(|b| {
                size += b.encoded_size();
                size <= MAX_RESPONSE_BYTES
            })
            .count();
        blocks.truncate(keep);
    }
}

/// Reads one SCALE value of at most `limit` bytes until the end of the stream.
pub(crate) async fn read_frame<T, M>(io: &mut T, limit: usize) -> io::Result<Frame<M>>
where
    T: AsyncRead + Unpin + Send,
    M: Decode,
{
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Ok(Err(WireError::TooLarge(limit)));
    }
    decode_frame(&buf)
}

/// Decodes one whole frame. Bytes that end before the value does are a cut stream, not a
/// bad message: an honest peer whose request timed out while it was still being written (a
/// congested or partitioned link) closes the stream after part of it. That is an I/O error
/// (no penalty); anything else that does not decode is [`WireError::Undecodable`].
pub fn decode_frame<M: Decode>(buf: &[u8]) -> io::Result<Frame<M>> {
    let mut input = Tracked { rest: buf, ran_out: false };
    let value = M::decode_with_depth_limit(DECODE_DEPTH_LIMIT, &mut input);
    match value {
        Ok(v) if input.rest.is_empty() => Ok(Ok(v)),
        Err(_) if input.ran_out => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended inside a message"))
        }
        _ => Ok(Err(WireError::Undecodable)),
    }
}

/// A SCALE input that remembers whether a read went past its end.
struct Tracked<'a> {
    rest: &'a [u8],
    ran_out: bool,
}

impl parity_scale_codec::Input for Tracked<'_> {
    fn remaining_len(&mut self) -> Result<Option<usize>, parity_scale_codec::Error> {
        Ok(Some(self.rest.len()))
    }

    fn read(&mut self, into: &mut [u8]) -> Result<(), parity_scale_codec::Error> {
        if into.len() > self.rest.len() {
            self.ran_out = true;
            return Err("not enough data".into());
        }
        let (head, tail) = self.rest.split_at(into.len());
        into.copy_from_slice(head);
        self.rest = tail;
        Ok(())
    }
}

async fn write_frame<T, M>(io: &mut T, frame: Frame<M>) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Encode,
{
    let message = frame.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&message.encode()).await
}

/// The request-response codec of [`PROTOCOL`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Frame<Request>;
    type Response = Frame<Response>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST_BYTES).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::io::Cursor;

    async fn decode<M: Decode>(bytes: Vec<u8>, limit: usize) -> Frame<M> {
        read_frame(&mut Cursor::new(bytes), limit).await.expect("in-memory read")
    }

    #[tokio::test]
    async fn request_and_response_round_trip() {
        let req = Request { from: 42, max: 7 };
        assert_eq!(decode::<Request>(req.encode(), MAX_REQUEST_BYTES).await, Ok(req));
        let resp = Response::Blocks(vec![SyncBlock { block: vec![1, 2], commit: vec![3] }]);
        assert_eq!(decode::<Response>(resp.encode(), MAX_RESPONSE_BYTES).await, Ok(resp));
        let refused = Response::Refused(Refusal::Busy);
        assert_eq!(decode::<Response>(refused.encode(), MAX_RESPONSE_BYTES).await, Ok(refused));
    }

    #[tokio::test]
    async fn garbage_trailing_bytes_and_oversize_are_rejected() {
        // No such response variant.
        let garbage = decode::<Response>(vec![0x07, 0, 0], MAX_RESPONSE_BYTES).await;
        assert_eq!(garbage, Err(WireError::Undecodable));
        let mut trailing = Request { from: 1, max: 1 }.encode();
        trailing.push(0);
        assert_eq!(
            decode::<Request>(trailing, MAX_REQUEST_BYTES).await,
            Err(WireError::Undecodable)
        );
        let huge = decode::<Request>(vec![0; MAX_REQUEST_BYTES + 1], MAX_REQUEST_BYTES).await;
        assert_eq!(huge, Err(WireError::TooLarge(MAX_REQUEST_BYTES)));
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_message_is_an_io_error_not_a_bad_message() {
        // What an honest peer leaves when its request times out half written: no penalty.
        let whole = Request { from: 42, max: 7 }.encode();
        for cut in [0, 1, whole.len() - 1] {
            let read = read_frame::<_, Request>(&mut Cursor::new(whole[..cut].to_vec()), 64).await;
            let err = read.expect_err("a cut frame is an I/O error");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        // But a length prefix claiming more blocks than the whole frame could hold is a lie,
        // not a cut (it fails cleanly, without allocating what it claims).
        let lying = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode::<Response>(lying, MAX_RESPONSE_BYTES).await,
            Err(WireError::Undecodable)
        );
    }

    #[test]
    fn responses_are_truncated_to_the_limit() {
        let big = SyncBlock { block: vec![0; MAX_RESPONSE_BYTES / 3], commit: vec![] };
        let mut resp = Response::Blocks(vec![big.clone(), big.clone(), big.clone(), big]);
        truncate_to_limit(&mut resp);
        assert!(matches!(&resp, Response::Blocks(b) if b.len() == 2));
        assert!(resp.encoded_size() <= MAX_RESPONSE_BYTES);
    }
}
