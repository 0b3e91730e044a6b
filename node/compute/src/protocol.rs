//! The `/bitorch/stage/1` protocol: what a gateway and a stage worker say to each other.
//!
//! Every message is one SCALE-encoded value preceded by a version byte ([`VERSION`]). A gateway
//! opens a session on a worker for the worker's layer range ([`StageRequest::Open`]), feeds it
//! activations position by position ([`StageRequest::Forward`]: the whole prompt in one batch,
//! then one position per generated token) and closes it ([`StageRequest::Close`]), receiving the
//! commitment to everything the stage computed.
//!
//! A paid session (one opened for a job, with the job's client's [`SessionAuth`]) is paid by
//! vouchers ([`bitorch_primitives::receipt::Voucher`]): every output carries the worker's
//! running trace hash, and every later forward, and the close, carries the client's signature
//! over the voucher for all positions so far with that hash. A worker computes nothing more for
//! a session whose client has not acknowledged what it already computed
//! ([`StageError::VoucherRequired`]), and claims its pay on chain with the latest voucher; so
//! neither side can lose more than one step to the other.
//!
//! Untrusted bytes are decoded with [`decode_request`] / [`decode_response`]: the size is checked
//! before anything is parsed, SCALE decoding runs with a depth limit and must consume the whole
//! message, and activations are checked against [`Limits`] (positions per message). Float
//! tensors ([`Floats`]) cannot be built with a byte length that disagrees with their shape, not
//! even by the decoder. Whether a hidden state's width matches the stage is the worker's check
//! (it knows its model), answered with [`StageError::WidthMismatch`].

use crate::error::DecodeError;
pub use bitorch_primitives::receipt::SessionAuth;
use bitorch_primitives::receipt::{JobId, SignedVoucher};
use bitorch_primitives::{AccountId, Signature, H256};
use parity_scale_codec::{Decode, DecodeLimit, Encode, Error as CodecError, Input};

/// The libp2p protocol name.
pub const PROTOCOL_NAME: &str = "/bitorch/stage/1";

/// The version byte every message starts with.
pub const VERSION: u8 = 5;

/// Deepest nesting the decoder follows. Our messages nest four levels at most; the limit only
/// stops a hostile message from recursing through a future recursive type.
pub const MAX_DEPTH: u32 = 16;

/// A session's id, chosen at random by the gateway.
pub type SessionId = [u8; 16];

pub use bitorch_primitives::ModelId;

/// Limits on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of an encoded message (version byte included).
    pub max_message_bytes: usize,
    /// Most token positions one activation may carry.
    pub max_positions: u32,
}

impl Default for Limits {
    /// 32 MiB and 512 positions: a 512-token prefill of a model with hidden size 8192 in f32 is
    /// 16 MiB; longer prompts are sent in several batches.
    fn default() -> Self {
        Self { max_message_bytes: 32 << 20, max_positions: 512 }
    }
}

/// A row-major matrix of f32, carried as little-endian bytes: `rows × cols` floats, so
/// `bytes.len() == rows * cols * 4` always holds (the decoder rejects anything else).
#[derive(Clone, PartialEq, Eq, Encode)]
pub struct Floats {
    rows: u32,
    cols: u32,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Floats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Floats({}x{})", self.rows, self.cols)
    }
}

impl Floats {
    /// A `rows × cols` matrix from row-major values; `None` if `values.len() != rows * cols`
    /// or the byte length would overflow.
    pub fn new(rows: u32, cols: u32, values: &[f32]) -> Option<Self> {
        let n = (rows as usize).checked_mul(cols as usize)?;
        if values.len() != n {
            return None;
        }
        n.checked_mul(4)?;
        let mut bytes = Vec::with_capacity(n * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Some(Self { rows, cols, bytes })
    }

    /// A `rows × cols` matrix from its little-endian bytes; `None` if the length disagrees.
    pub fn from_bytes(rows: u32, cols: u32, bytes: Vec<u8>) -> Option<Self> {
        let want = (rows as u64).checked_mul(cols as u64)?.checked_mul(4)?;
        (bytes.len() as u64 == want).then_some(Self { rows, cols, bytes })
    }

    /// Rows (token positions).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Columns (hidden size, or vocabulary size for logits).
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// The little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The values, row-major.
    pub fn to_vec(&self) -> Vec<f32> {
        self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

impl Decode for Floats {
    fn decode<I: Input>(input: &mut I) -> Result<Self, CodecError> {
        let rows = u32::decode(input)?;
        let cols = u32::decode(input)?;
        let bytes = Vec::<u8>::decode(input)?;
        Self::from_bytes(rows, cols, bytes)
            .ok_or_else(|| "float tensor's byte length does not match its shape".into())
    }
}

/// The logits a last stage returns for one position, highest first: token ids and values
/// (carried as the f32's bits, exact). At most [`bitorch_commitment::TOP_LOGITS`] of them,
/// which is what it returns and commits to ([`bitorch_commitment::top`]).
#[derive(Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Logits(Vec<(u32, u32)>);

impl std::fmt::Debug for Logits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Logits({})", self.0.len())
    }
}

impl Logits {
    /// From `(token id, logit)` pairs.
    pub fn new(logits: &[bitorch_commitment::Logit]) -> Self {
        Self(logits.iter().map(|&(id, x)| (id, x.to_bits())).collect())
    }

    /// The `(token id, logit)` pairs.
    pub fn to_vec(&self) -> Vec<bitorch_commitment::Logit> {
        self.0.iter().map(|&(id, x)| (id, f32::from_bits(x))).collect()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn check(&self) -> Result<(), DecodeError> {
        let max = bitorch_commitment::TOP_LOGITS;
        if self.0.len() > max {
            return Err(DecodeError::TooManyLogits {
                got: self.0.len().try_into().unwrap_or(u32::MAX),
                max: max as u32,
            });
        }
        Ok(())
    }
}

/// What a stage takes or gives at some positions.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Activation {
    /// Token ids: the input of the first stage.
    #[codec(index = 0)]
    Tokens(Vec<u32>),
    /// Hidden states, `positions × hidden_size`: the input of every other stage and the output
    /// of every stage but the last.
    #[codec(index = 1)]
    Hidden(Floats),
    /// The output of the last stage: the hidden states after its last layer at every position
    /// of the request, `positions × hidden_size` (what its trace commits to, so that the
    /// client can check the trace hash it acknowledges), and the top logits of the last
    /// position (committed in that position's leaf), which the client samples from.
    #[codec(index = 2)]
    Last {
        /// Hidden states after the stage's last layer.
        hidden: Floats,
        /// The last position's top logits, highest first.
        logits: Logits,
    },
}

impl Activation {
    /// Bytes of the values it carries (4 per token id, float, or logit's value and id each).
    pub fn value_bytes(&self) -> u64 {
        let n = match self {
            Self::Tokens(t) => t.len() as u64,
            Self::Hidden(f) => u64::from(f.rows()) * u64::from(f.cols()),
            Self::Last { hidden, logits } => {
                u64::from(hidden.rows()) * u64::from(hidden.cols()) + 2 * logits.len() as u64
            }
        };
        4 * n
    }

    /// Token positions it carries.
    pub fn positions(&self) -> u32 {
        match self {
            Self::Tokens(t) => t.len().try_into().unwrap_or(u32::MAX),
            Self::Hidden(f) | Self::Last { hidden: f, .. } => f.rows(),
        }
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> ActivationKind {
        match self {
            Self::Tokens(_) => ActivationKind::Tokens,
            Self::Hidden(_) => ActivationKind::Hidden,
            Self::Last { .. } => ActivationKind::Last,
        }
    }
}

/// The three kinds of [`Activation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ActivationKind {
    /// [`Activation::Tokens`].
    #[codec(index = 0)]
    Tokens,
    /// [`Activation::Hidden`].
    #[codec(index = 1)]
    Hidden,
    /// [`Activation::Last`].
    #[codec(index = 2)]
    Last,
}

impl std::fmt::Display for ActivationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tokens => "token ids",
            Self::Hidden => "hidden states",
            Self::Last => "a last stage's hidden states and logits",
        })
    }
}

/// A gateway's request to a stage worker.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum StageRequest {
    /// Opens a session for `model`'s layers `layers.0..layers.1` (the worker's whole range).
    #[codec(index = 0)]
    Open {
        /// The new session's id.
        session: SessionId,
        /// The model.
        model: ModelId,
        /// The layer range the gateway expects the worker to run.
        layers: (u32, u32),
        /// The on-chain job paying for it, if any (the session is then paid by vouchers).
        job: Option<JobId>,
        /// The job's client's signature over the [`SessionAuth`] of this opening (the worker
        /// being the one asked); a networked worker serves a session for a job only with it.
        auth: Option<Signature>,
    },
    /// Runs positions `pos..pos + n` of a session, `n` the positions `input` carries.
    #[codec(index = 1)]
    Forward {
        /// The session.
        session: SessionId,
        /// The first position; must equal the positions the session has processed.
        pos: u32,
        /// Token ids for the first stage, hidden states for the others.
        input: Activation,
        /// For a paid session past position 0: the client's signature over the voucher for
        /// positions `0..pos` with the trace hash the worker last returned.
        voucher: Option<Signature>,
    },
    /// Ends a session and frees its cache.
    #[codec(index = 2)]
    Close {
        /// The session.
        session: SessionId,
        /// For a paid session: the client's signature over the voucher for every position
        /// processed (the worker claims with it; without it, with the last one it got).
        voucher: Option<Signature>,
    },
    /// An assigned auditor asks for the opening of a claim the chain chose for audit: the
    /// leaves of the positions the audit names and the leaf hashes after them.
    #[codec(index = 3)]
    Opening(OpeningRequest),
}

/// What an auditor asks a worker to open.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OpeningRequest {
    /// The job.
    pub job: JobId,
    /// The claim's index in the job.
    pub claim_index: u32,
    /// The auditor (one the chain assigned to the claim).
    pub auditor: AccountId,
    /// The first position wanted: an opening comes in pages of at most
    /// [`OPENING_PAGE_BYTES`] of rows, and the auditor asks for the next from where the last
    /// ended.
    pub from: u32,
    /// The auditor's signature over [`OpeningRequest::signing_payload`].
    pub signature: Signature,
}

/// Most bytes of rows (inputs and outputs, with the leaf hashes of the first page) one page of
/// an opening carries: well under the network's 8 MiB response limit, whatever the model's
/// width or the claim's length.
pub const OPENING_PAGE_BYTES: usize = 4 << 20;

impl OpeningRequest {
    /// What the auditor signs: `(b"bitorch/opening/2", genesis, job, claim_index, auditor,
    /// from)`.
    pub fn signing_payload(
        genesis: &H256,
        job: JobId,
        claim_index: u32,
        auditor: &AccountId,
        from: u32,
    ) -> Vec<u8> {
        (b"bitorch/opening/2", genesis, job, claim_index, auditor, from).encode()
    }

    /// A request for the page starting at position `from`, signed by `auditor`.
    pub fn sign(
        auditor: &bitorch_primitives::Pair,
        genesis: &H256,
        job: JobId,
        claim_index: u32,
        from: u32,
    ) -> Self {
        let account = bitorch_primitives::keys::account_of(auditor);
        let payload = Self::signing_payload(genesis, job, claim_index, &account, from);
        let signature = bitorch_primitives::keys::sign(auditor, &payload);
        Self { job, claim_index, auditor: account, from, signature }
    }

    /// Whether the signature is the auditor's, on the chain `genesis`.
    pub fn verify(&self, genesis: &H256) -> bool {
        let payload =
            Self::signing_payload(genesis, self.job, self.claim_index, &self.auditor, self.from);
        bitorch_primitives::keys::verify(&self.signature, &payload, &self.auditor)
    }
}

/// A page of a worker's opening of a claimed session for its audit: the committed inputs and
/// outputs of positions `from..` (each a row; the request's `from`) and the logits committed
/// there (a last stage's), up to `last` or as many as fit in [`OPENING_PAGE_BYTES`], and, in
/// the first page only, the leaf hashes of the positions after `last`, up to the claim's. From
/// all pages the auditor recomputes the voucher's trace hash and re-executes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TraceOpening {
    /// Inputs, `rows × hidden`.
    pub inputs: Floats,
    /// Outputs, `rows × hidden`.
    pub outputs: Floats,
    /// The logits committed at each row's position (none for most).
    pub logits: Vec<Logits>,
    /// Leaf hashes of positions `last + 1..positions` (first page), or none.
    pub hashes_after: Vec<H256>,
}

/// What a worker tells a gateway about the stage it opened a session on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct StageInfo {
    /// The layers it runs.
    pub layers: (u32, u32),
    /// Width of the hidden states it takes (unless first) and gives (unless last).
    pub hidden_size: u32,
    /// Vocabulary size (the width of the last stage's logits).
    pub vocab_size: u32,
    /// Positions a session can hold.
    pub context_length: u32,
    /// Most positions per [`StageRequest::Forward`].
    pub max_positions: u32,
    /// Most bytes per message.
    pub max_message_bytes: u32,
}

/// What a closed session leaves: the commitment to its trace and, for a job, the claim.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Closure {
    /// Positions processed (leaves of the commitment).
    pub positions: u32,
    /// Merkle root of the trace's leaves (`bitorch_commitment`), all zeros when empty.
    pub root: H256,
    /// Running hash of the trace's leaves (`bitorch_commitment::chain_of`), what vouchers
    /// sign.
    pub trace: H256,
    /// The latest voucher of a paid session, which the worker claims with on chain; `None`
    /// for an unpaid session or one that was never acknowledged.
    pub claim: Option<SignedVoucher>,
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum StageResponse {
    /// The session is open.
    #[codec(index = 0)]
    Opened(StageInfo),
    /// Hidden states of every position of the request (or the logits of its last position, from
    /// the last stage), and the session's trace hash after them (what the next voucher signs).
    #[codec(index = 1)]
    Output {
        /// The output.
        output: Activation,
        /// The running hash of the session's trace so far.
        trace: H256,
    },
    /// The worker has no room now (session cap or memory budget); try another.
    #[codec(index = 2)]
    Busy,
    /// The session is closed.
    #[codec(index = 3)]
    Closed(Closure),
    /// The request was rejected; other sessions are unaffected.
    #[codec(index = 4)]
    Error(StageError),
    /// The opening an auditor asked for.
    #[codec(index = 5)]
    Opening(TraceOpening),
}

/// Why a worker rejected a request. Unless noted, the session (if any) is unchanged and can
/// go on.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum StageError {
    /// The bytes did not decode.
    #[error("malformed message: {0}")]
    #[codec(index = 0)]
    Malformed(DecodeError),
    /// No open session has this id (never opened, closed, or evicted when idle).
    #[error("unknown session (closed, evicted after idling, or never opened)")]
    #[codec(index = 1)]
    UnknownSession,
    /// A session with this id is already open.
    #[error("a session with this id is already open")]
    #[codec(index = 2)]
    SessionExists,
    /// The worker serves another model.
    #[error("this worker serves model {served:?}")]
    #[codec(index = 3)]
    WrongModel {
        /// The model it serves.
        served: ModelId,
    },
    /// The worker serves other layers.
    #[error("this worker serves layers {}..{}", served.0, served.1)]
    #[codec(index = 4)]
    WrongLayers {
        /// The layers it serves.
        served: (u32, u32),
    },
    /// Token ids sent to a stage that is not first, or hidden states to the first stage.
    #[error("this stage takes {expected}, got {got}")]
    #[codec(index = 5)]
    WrongInput {
        /// What it takes.
        expected: ActivationKind,
        /// What came.
        got: ActivationKind,
    },
    /// Hidden states of the wrong width.
    #[error("hidden states must have {expected} columns, got {got}")]
    #[codec(index = 6)]
    WidthMismatch {
        /// The stage's hidden size.
        expected: u32,
        /// The width sent.
        got: u32,
    },
    /// An activation with no positions, or more than the worker takes per message.
    #[error("a forward must carry 1..={max} positions, got {got}")]
    #[codec(index = 7)]
    BadPositionCount {
        /// Positions sent.
        got: u32,
        /// Most accepted.
        max: u32,
    },
    /// `pos` is not the number of positions the session has processed.
    #[error("session is at position {expected}, request starts at {got}")]
    #[codec(index = 8)]
    PositionMismatch {
        /// Positions processed so far.
        expected: u32,
        /// The request's `pos`.
        got: u32,
    },
    /// The session would exceed the model's context length.
    #[error("positions up to {end} exceed the context length {limit}")]
    #[codec(index = 9)]
    ContextFull {
        /// One past the last position asked for.
        end: u32,
        /// Context length.
        limit: u32,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    #[codec(index = 10)]
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// Vocabulary size.
        vocab: u32,
    },
    /// The stage failed while computing; the session is closed (its cache may be partial).
    #[error("stage computation failed; the session was closed")]
    #[codec(index = 11)]
    Compute,
    /// The job named when opening is not open on chain for this model (unknown, closed, past
    /// its deadline, or another model's): the worker would not be paid, so it does not work.
    #[error("job {job} is not open on chain for this model")]
    #[codec(index = 12)]
    JobNotOpen {
        /// The job.
        job: JobId,
    },
    /// A session opened without a job on a worker that serves paid sessions only (sessions
    /// without a job are for the peers its operator allows: `--allow-unpaid`).
    #[error("this worker serves paid sessions only: open the session for a job")]
    #[codec(index = 13)]
    JobRequired,
    /// The session names a job but lacks its client's signature over the opening (or the
    /// signature is not the client's): nobody but the client may spend the job's escrow.
    #[error("the session for job {job} is not authorized by the job's client")]
    #[codec(index = 14)]
    Unauthorized {
        /// The job.
        job: JobId,
    },
    /// A paid session's forward without a valid voucher from the job's client for the
    /// positions already computed (missing, not the client's, or for another trace hash): the
    /// worker computes nothing more until its work is acknowledged.
    #[error("send the client's voucher for positions 0..{positions} of this session")]
    #[codec(index = 15)]
    VoucherRequired {
        /// Positions computed so far, which the voucher must cover.
        positions: u32,
    },
    /// An opening this worker cannot serve: the claim is not this worker's, not under an open
    /// audit, the requester is not one of its auditors (or did not sign), or the trace is gone.
    #[error("no opening for claim {claim_index} of job {job}: {reason}")]
    #[codec(index = 16)]
    NoOpening {
        /// The job.
        job: JobId,
        /// The claim.
        claim_index: u32,
        /// Why.
        reason: String,
    },
    /// The job pays less per layer per token than this worker asks (`--price`).
    #[error("job {job} pays {offered} per layer-token; this worker asks {asked}")]
    #[codec(index = 17)]
    PriceTooLow {
        /// The job.
        job: JobId,
        /// What the job pays per layer per token, in base units.
        offered: u128,
        /// What the worker asks.
        asked: u128,
    },
}

/// Encodes a message with its version byte.
pub fn encode<T: Encode>(msg: &T) -> Vec<u8> {
    (VERSION, msg).encode()
}

fn decode<T: Decode>(bytes: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { bytes: bytes.len() as u64, max: max_bytes as u64 });
    }
    let (&version, mut rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { got: version, supported: VERSION });
    }
    T::decode_all_with_depth_limit(MAX_DEPTH, &mut rest).map_err(|_| DecodeError::Invalid)
}

fn check_activation(a: &Activation, limits: &Limits) -> Result<(), DecodeError> {
    if let Activation::Last { logits, .. } = a {
        logits.check()?;
    }
    let n = a.positions();
    if n == 0 {
        return Err(DecodeError::NoPositions);
    }
    if n > limits.max_positions {
        return Err(DecodeError::TooManyPositions { got: n, max: limits.max_positions });
    }
    Ok(())
}

/// Decodes a request from untrusted bytes, within `limits`.
pub fn decode_request(bytes: &[u8], limits: &Limits) -> Result<StageRequest, DecodeError> {
    let req: StageRequest = decode(bytes, limits.max_message_bytes)?;
    if let StageRequest::Forward { input, .. } = &req {
        check_activation(input, limits)?;
    }
    Ok(req)
}

/// Decodes a response from untrusted bytes, within `limits`.
pub fn decode_response(bytes: &[u8], limits: &Limits) -> Result<StageResponse, DecodeError> {
    let resp: StageResponse = decode(bytes, limits.max_message_bytes)?;
    match &resp {
        StageResponse::Output { output, .. } => check_activation(output, limits)?,
        StageResponse::Opening(o) => {
            let rows = o.inputs.rows() as usize;
            if rows != o.outputs.rows() as usize
                || o.inputs.cols() != o.outputs.cols()
                || o.logits.len() != rows
            {
                return Err(DecodeError::OpeningShape);
            }
            o.logits.iter().try_for_each(Logits::check)?;
        }
        _ => {}
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits { max_message_bytes: 1 << 16, max_positions: 8 }
    }

    fn forward(rows: u32, cols: u32) -> StageRequest {
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        StageRequest::Forward {
            session: [7; 16],
            pos: 3,
            input: Activation::Hidden(Floats::new(rows, cols, &values).unwrap()),
            voucher: Some(Signature::from_raw([6; 64])),
        }
    }

    #[test]
    fn round_trips() {
        let msgs = vec![
            StageRequest::Open {
                session: [1; 16],
                model: H256::repeat_byte(9),
                layers: (10, 20),
                job: Some(4),
                auth: Some(Signature::from_raw([5; 64])),
            },
            forward(2, 5),
            StageRequest::Forward {
                session: [2; 16],
                pos: 0,
                input: Activation::Tokens(vec![1]),
                voucher: None,
            },
            StageRequest::Close { session: [3; 16], voucher: Some(Signature::from_raw([7; 64])) },
            StageRequest::Opening(OpeningRequest {
                job: 5,
                claim_index: 2,
                auditor: AccountId::new([4; 32]),
                from: 7,
                signature: Signature::from_raw([8; 64]),
            }),
        ];
        for m in msgs {
            assert_eq!(decode_request(&encode(&m), &limits()).unwrap(), m);
        }
        let resps = vec![
            StageResponse::Busy,
            StageResponse::Error(StageError::WidthMismatch { expected: 576, got: 575 }),
            StageResponse::Error(StageError::Malformed(DecodeError::Invalid)),
            StageResponse::Closed(Closure {
                positions: 3,
                root: H256::zero(),
                trace: H256::repeat_byte(2),
                claim: None,
            }),
            StageResponse::Output {
                output: Activation::Last {
                    hidden: Floats::new(2, 1, &[0.5, 0.25]).unwrap(),
                    logits: Logits::new(&[(2, 3.5), (0, 1.0), (1, -2.0)]),
                },
                trace: H256::repeat_byte(3),
            },
            StageResponse::Opening(TraceOpening {
                inputs: Floats::new(2, 2, &[1.0, 2.0, 3.0, 4.0]).unwrap(),
                outputs: Floats::new(2, 2, &[5.0, 6.0, 7.0, 8.0]).unwrap(),
                logits: vec![Logits::default(), Logits::new(&[(7, f32::NAN)])],
                hashes_after: vec![H256::repeat_byte(9)],
            }),
            StageResponse::Error(StageError::NoOpening {
                job: 1,
                claim_index: 0,
                reason: "no".into(),
            }),
        ];
        for r in resps {
            assert_eq!(decode_response(&encode(&r), &limits()).unwrap(), r);
        }
    }

    #[test]
    fn an_opening_request_verifies_only_as_signed() {
        let pair = bitorch_primitives::keys::pair_from_suri("//Dave").unwrap();
        let g = H256::repeat_byte(1);
        let req = OpeningRequest::sign(&pair, &g, 3, 1, 0);
        assert!(req.verify(&g));
        assert!(!req.verify(&H256::repeat_byte(2)), "another chain");
        assert!(!OpeningRequest { claim_index: 2, ..req.clone() }.verify(&g), "another claim");
        assert!(!OpeningRequest { from: 1, ..req.clone() }.verify(&g), "another page");
        let other = bitorch_primitives::keys::account_of(
            &bitorch_primitives::keys::pair_from_suri("//Eve").unwrap(),
        );
        assert!(!OpeningRequest { auditor: other, ..req }.verify(&g), "another auditor");
    }

    #[test]
    fn openings_with_mismatched_shapes_are_refused() {
        let page = |outputs: u32, logits: usize| {
            StageResponse::Opening(TraceOpening {
                inputs: Floats::new(2, 2, &[0.0; 4]).unwrap(),
                outputs: Floats::new(outputs, 2, &vec![0.0; outputs as usize * 2]).unwrap(),
                logits: vec![Logits::default(); logits],
                hashes_after: vec![],
            })
        };
        assert!(decode_response(&encode(&page(2, 2)), &limits()).is_ok());
        for bad in [page(1, 2), page(2, 1), page(2, 3)] {
            assert_eq!(decode_response(&encode(&bad), &limits()), Err(DecodeError::OpeningShape));
        }
    }

    #[test]
    fn more_logits_than_a_last_stage_commits_to_are_refused() {
        let max = bitorch_commitment::TOP_LOGITS;
        let many = Logits::new(&vec![(1, 0.5); max + 1]);
        let err = Err(DecodeError::TooManyLogits { got: max as u32 + 1, max: max as u32 });
        let out = StageResponse::Output {
            output: Activation::Last {
                hidden: Floats::new(1, 2, &[0.0; 2]).unwrap(),
                logits: many.clone(),
            },
            trace: H256::zero(),
        };
        assert_eq!(decode_response(&encode(&out), &limits()), err);
        let page = StageResponse::Opening(TraceOpening {
            inputs: Floats::new(1, 2, &[0.0; 2]).unwrap(),
            outputs: Floats::new(1, 2, &[0.0; 2]).unwrap(),
            logits: vec![many],
            hashes_after: vec![],
        });
        assert_eq!(decode_response(&encode(&page), &limits()), err);
    }

    #[test]
    fn floats_are_little_endian_and_exact() {
        let f = Floats::new(1, 2, &[1.0, f32::from_bits(0x7fc0_0001)]).unwrap();
        assert_eq!(&f.bytes()[..4], &1.0f32.to_le_bytes());
        assert_eq!(f.to_vec()[1].to_bits(), 0x7fc0_0001);
        assert!(Floats::new(2, 2, &[1.0]).is_none());
        assert!(Floats::from_bytes(1, 2, vec![0; 7]).is_none());
    }

    #[test]
    fn limits_are_enforced() {
        let l = limits();
        let too_many = encode(&forward(9, 2));
        assert_eq!(
            decode_request(&too_many, &l),
            Err(DecodeError::TooManyPositions { got: 9, max: 8 })
        );
        let empty = StageRequest::Forward {
            session: [0; 16],
            pos: 0,
            input: Activation::Tokens(vec![]),
            voucher: None,
        };
        assert_eq!(decode_request(&encode(&empty), &l), Err(DecodeError::NoPositions));
        let big = encode(&forward(8, 4096));
        assert!(matches!(decode_request(&big, &l), Err(DecodeError::TooLarge { .. })));
        // Version 2 had no vouchers.
        let mut wrong_version = encode(&forward(1, 1));
        wrong_version[0] = 1;
        assert_eq!(
            decode_request(&wrong_version, &l),
            Err(DecodeError::UnsupportedVersion { got: 1, supported: VERSION })
        );
        assert_eq!(decode_request(&[], &l), Err(DecodeError::Empty));
        let mut trailing = encode(&forward(1, 1));
        trailing.push(0);
        assert_eq!(decode_request(&trailing, &l), Err(DecodeError::Invalid));
    }

    #[test]
    fn shape_and_bytes_must_agree() {
        // rows=1, cols=2 but 4 bytes: a hand-built Floats the constructor would refuse.
        let mut bytes = vec![VERSION, 1];
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.push(1); // Activation::Hidden
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&(4u32 << 2).to_le_bytes()[..1]); // compact length 4
        bytes.extend_from_slice(&[0; 4]);
        bytes.push(0); // no voucher
        assert_eq!(decode_request(&bytes, &limits()), Err(DecodeError::Invalid));
        // The same message with a consistent byte length decodes.
        let mut good = bytes.clone();
        good[31] = 8u8 << 2;
        good.splice(32..36, [0u8; 8]);
        assert!(decode_request(&good, &limits()).is_ok(), "{good:?}");
    }

    proptest! {
        #[test]
        fn hidden_round_trip(rows in 1u32..8, cols in 1u32..64, seed in any::<u32>()) {
            let values: Vec<f32> =
                (0..rows * cols).map(|i| f32::from_bits(i.wrapping_mul(seed) ^ seed)).collect();
            let f = Floats::new(rows, cols, &values).unwrap();
            let back: Vec<u32> = f.to_vec().iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(back, want);
            let req = StageRequest::Forward { session: [1; 16], pos: seed, input: Activation::Hidden(f), voucher: None };
            prop_assert_eq!(decode_request(&encode(&req), &limits()).unwrap(), req);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes, &limits());
            let _ = decode_response(&bytes, &limits());
        }
    }
}
