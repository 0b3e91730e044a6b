//! The stage protocol, `/bitorch/stage/1`: opaque requests and answers between a gateway and
//! the workers that serve stages of a model.
//!
//! The network does not look inside the payloads (the inference crate encodes and decodes
//! them); it only carries them, with size limits both ways, a timeout, and a bound on what
//! waits for the node. One request and one answer per stream, many streams at once on one
//! connection (yamux or QUIC), so a request costs no connection setup.
//!
//! On the wire a request is the payload bytes, up to
//! [`Config::max_stage_request_bytes`](crate::Config); an answer is the SCALE value
//! [`Response`] (a tag, a compact length, the payload; or a typed refusal), its payload up to
//! [`Config::max_stage_response_bytes`](crate::Config). Payloads are read and written without
//! copying them into a second buffer.
//!
//! Inbound requests are read into memory under one budget shared by all connections
//! ([`Config::max_stage_inbound_bytes`](crate::Config)), held until the node has answered: past
//! it, requests are refused as busy instead of buffered.

use crate::request::Refusal;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use parity_scale_codec::{Compact, Decode, Encode};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/bitorch/stage/1");
/// Default largest request payload: a prefill of a long prompt.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Default largest answer payload (a last stage answers 192 KiB of logits per token).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes an answer adds around its payload: the tag and the compact length.
const RESPONSE_HEADER_BYTES: usize = 1 + 5;
/// Inbound requests are read in chunks of this size, each reserved from the budget first.
const READ_CHUNK: usize = 64 * 1024;
/// The read tried when a whole chunk no longer fits the budget.
const SMALL_READ: usize = 4 * 1024;

/// An answer as it travels. Its SCALE encoding is the wire format.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    /// The serving node's answer.
    Data(Vec<u8>),
    /// The serving node refused the request.
    Refused(Refusal),
}

/// Why an inbound request was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestFault {
    /// More bytes than the limit: the sender misbehaves.
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    /// The node's budget for inbound requests is spent: it is busy.
    #[error("inbound request budget spent")]
    OverBudget,
}

/// A request payload; inbound ones hold their share of the inbound budget until dropped.
#[derive(Debug)]
pub(crate) struct Body {
    pub(crate) data: Vec<u8>,
    pub(crate) reservation: Option<Reservation>,
}

pub(crate) type RequestFrame = Result<Body, RequestFault>;
pub(crate) type ResponseFrame = crate::sync::Frame<Response>;

/// Bytes of inbound requests held in memory, shared by every connection's codec.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    used: Arc<AtomicUsize>,
    cap: usize,
}

/// A share of a [`Budget`], returned when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    used: Arc<AtomicUsize>,
    cap: usize,
    bytes: usize,
}

impl Budget {
    pub(crate) fn new(cap: usize) -> Self {
        Self { used: Arc::new(AtomicUsize::new(0)), cap }
    }

    pub(crate) fn reserve(&self) -> Reservation {
        Reservation { used: self.used.clone(), cap: self.cap, bytes: 0 }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Reservation {
    /// Takes `n` more bytes from the budget; `false` (and nothing taken) if it does not have
    /// them.
    fn grow(&mut self, n: usize) -> bool {
        let cap = self.cap;
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= cap)
            })
            .is_ok();
        if taken {
            self.bytes += n;
        }
        taken
    }

    /// Gives `n` bytes back.
    fn shrink(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The request-response codec of [`PROTOCOL`].
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) budget: Budget,
}

/// Reads a request of at most `limit` bytes until the end of the stream, taking the memory it
/// needs from `budget` as it goes.
async fn read_request<T>(io: &mut T, limit: usize, budget: &Budget) -> io::Result<RequestFrame>
where
    T: AsyncRead + Unpin + Send,
{
    let mut reservation = budget.reserve();
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        if start > limit {
            return Ok(Err(RequestFault::TooLarge(limit)));
        }
        // One byte past the limit tells an oversized request from one of exactly the limit.
        // Near the end of the budget, a small read still finds out whether the request is
        // complete.
        let mut want = (limit + 1 - start).min(READ_CHUNK);
        if !reservation.grow(want) {
            want = want.min(SMALL_READ);
            if !reservation.grow(want) {
                return Ok(Err(RequestFault::OverBudget));
            }
        }
        buf.resize(start + want, 0);
        let n = io.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        reservation.shrink(want - n);
        if n == 0 {
            buf.shrink_to_fit();
            return Ok(Ok(Body { data: buf, reservation: Some(reservation) }));
        }
    }
}

/// Reads an answer whose payload is at most `limit` bytes, and decodes it.
pub(crate) async fn read_response<T>(io: &mut T, limit: usize) -> io::Result<ResponseFrame>
where
    T: AsyncRead + Unpin + Send,
{
    use crate::sync::WireError;
    let frame_limit = limit.saturating_add(RESPONSE_HEADER_BYTES);
    let mut buf = Vec::new();
    io.take(frame_limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > frame_limit {
        return Ok(Err(WireError::TooLarge(limit)));
    }
    Ok(decode_response(buf, limit))
}

/// Decodes the SCALE encoding of a [`Response`] whose payload is at most `limit` bytes,
/// reusing `buf` for the payload. The whole of `buf` must be the one value.
pub fn decode_response(mut buf: Vec<u8>, limit: usize) -> Result<Response, crate::sync::WireError> {
    use crate::sync::WireError;
    let mut input = &buf[..];
    match u8::decode(&mut input) {
        Ok(0) => {
            let len = Compact::<u32>::decode(&mut input).map_err(|_| WireError::Undecodable)?.0;
            let len = len as usize;
            if len > limit {
                return Err(WireError::TooLarge(limit));
            }
            if input.len() != len {
                return Err(WireError::Undecodable);
            }
            let header = buf.len() - len;
            buf.drain(..header);
            Ok(Response::Data(buf))
        }
        Ok(1) => Refusal::decode(&mut input)
            .ok()
            .filter(|_| input.is_empty())
            .map(Response::Refused)
            .ok_or(WireError::Undecodable),
        _ => Err(WireError::Undecodable),
    }
}

/// Writes `response` as its SCALE encoding, the payload straight from its buffer.
async fn write_response<T>(io: &mut T, response: &Response) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    match response {
        Response::Data(data) => {
            let len = u32::try_from(data.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "answer too large"))?;
            let mut header = Vec::with_capacity(RESPONSE_HEADER_BYTES);
            header.push(0);
            Compact(len).encode_to(&mut header);
            io.write_all(&header).await?;
            io.write_all(data).await
        }
        refused => io.write_all(&refused.encode()).await,
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = RequestFrame;
    type Response = ResponseFrame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_request(io, self.max_request_bytes, &self.budget).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_response(io, self.max_response_bytes).await
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
        let body = request.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        io.write_all(&body.data).await
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
        let response = response.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        write_response(io, &response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::WireError;
    use libp2p::futures::io::Cursor;

    async fn request(bytes: Vec<u8>, limit: usize, budget: &Budget) -> RequestFrame {
        read_request(&mut Cursor::new(bytes), limit, budget).await.expect("in-memory read")
    }

    async fn written(response: &Response) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        write_response(&mut out, response).await.expect("in-memory write");
        out.into_inner()
    }

    #[tokio::test]
    async fn answers_are_the_scale_encoding_both_ways() {
        for response in [
            Response::Data(Vec::new()),
            Response::Data(vec![7; 100]),
            Response::Data(vec![1; 70_000]),
            Response::Refused(Refusal::Busy),
            Response::Refused(Refusal::ResponseTooLarge),
        ] {
            let bytes = written(&response).await;
            assert_eq!(bytes, response.encode());
            let read = read_response(&mut Cursor::new(bytes), 70_000).await.expect("read");
            assert_eq!(read, Ok(response));
        }
    }

    #[test]
    fn bad_answers_are_rejected() {
        let undecodable = Err(WireError::Undecodable);
        assert_eq!(decode_response(vec![], 10), undecodable);
        assert_eq!(decode_response(vec![2, 0], 10), undecodable);
        assert_eq!(decode_response(vec![1, 9], 10), undecodable);
        assert_eq!(decode_response(vec![1, 1, 0], 10), undecodable);
        // The length prefix must match the bytes that follow, both ways.
        assert_eq!(decode_response(vec![0, 8, 1], 10), undecodable);
        assert_eq!(decode_response(vec![0, 4, 1, 2], 10), undecodable);
        let long = Response::Data(vec![0; 11]).encode();
        assert_eq!(decode_response(long, 10), Err(WireError::TooLarge(10)));
    }

    #[tokio::test]
    async fn oversized_answers_stop_at_the_limit() {
        let bytes = Response::Data(vec![0; 1000]).encode();
        let read = read_response(&mut Cursor::new(bytes), 100).await.expect("read");
        assert_eq!(read, Err(WireError::TooLarge(100)));
    }

    #[tokio::test]
    async fn requests_are_limited_and_charged_to_the_budget() {
        let budget = Budget::new(1 << 20);
        let body = request(vec![5; 200_000], 200_000, &budget).await.expect("fits the limit");
        assert_eq!(body.data, vec![5; 200_000]);
        assert_eq!(budget.used(), 200_000, "held while the request waits");
        drop(body);
        assert_eq!(budget.used(), 0, "returned when the request is done");

        let over = request(vec![5; 200_001], 200_000, &budget).await;
        assert_eq!(over.map(|b| b.data.len()), Err(RequestFault::TooLarge(200_000)));
        assert_eq!(budget.used(), 0);

        let empty = request(Vec::new(), 10, &budget).await.expect("empty");
        assert!(empty.data.is_empty());

        // Past the budget, requests are refused as busy, not buffered.
        let small = Budget::new(100_000);
        let held = request(vec![1; 50_000], 1 << 20, &small).await.expect("fits the budget");
        let refused = request(vec![1; 80_000], 1 << 20, &small).await;
        assert_eq!(refused.map(|b| b.data.len()), Err(RequestFault::OverBudget));
        drop(held);
        assert_eq!(small.used(), 0);
    }
}
