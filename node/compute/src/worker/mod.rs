//! A stage worker: one loaded [`Stage`] serving many sessions.
//!
//! [`Worker`] is the synchronous core ([`Worker::handle`]); [`spawn`] runs it as an actor on a
//! thread of its own (a stage forward pass is CPU-bound work that must not block an async
//! runtime) behind a cloneable [`WorkerHandle`] with a bounded queue.
//!
//! Each session has its own KV cache (with the batch-invariant attention kernel, so that an
//! auditor's batched re-execution reproduces the outputs bit for bit) and the commitment
//! [`Trace`] of every position the stage computed.
//!
//! A session opened for a job is paid by its client's vouchers ([`Voucher`]): it opens only
//! with the client's [`SessionAuth`] for this worker, each forward after the first must carry
//! the client's signature over the voucher for every position computed so far (with the trace
//! hash the worker returned), and the latest voucher is the session's claim
//! ([`Worker::take_claims`]), which the node submits on chain. The worker never runs more than
//! one forward ahead of what the client acknowledged. Resources are bounded: at most
//! `max_sessions` sessions, at most `max_cached_positions` positions cached over all of them
//! (a new session or a forward that does not fit is answered [`StageResponse::Busy`] once idle
//! sessions have been evicted), positions per message and message bytes per [`Limits`], and a
//! session idle for `idle_timeout` is evicted. A request that is malformed or does not fit the
//! stage is answered with a [`StageError`] and changes nothing; only a failure inside the
//! computation closes its (one) session.

mod actor;

pub use actor::{spawn, WorkerHandle};

use crate::protocol::{
    self, Activation, ActivationKind, Closure, Floats, Limits, Logits, ModelId, SessionId,
    StageError, StageInfo, StageRequest, StageResponse,
};
use bitorch_commitment::{token_row, top_logits, Trace};
use bitorch_inference::{Cache, Kernel, Stage};
use bitorch_primitives::receipt::{JobId, SessionAuth, SignedVoucher, Voucher};
use bitorch_primitives::{keys, AccountId, Pair, Signature, H256};
use candle_core::{DType, Tensor};
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

const TARGET: &str = "bitorch::compute::worker";

/// How a worker serves its stage.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The model it serves (its manifest hash).
    pub model: ModelId,
    /// Genesis hash of the chain its receipts are for (part of what it signs).
    pub genesis: H256,
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Most positions cached over all sessions (each position holds keys and values for every
    /// layer of the stage).
    pub max_cached_positions: usize,
    /// A session unused this long is evicted.
    pub idle_timeout: Duration,
    /// Message limits.
    pub limits: Limits,
    /// Attention kernel of sessions. Committed runs need [`Kernel::BatchInvariant`] (the
    /// default) so that audits reproduce them; [`Kernel::Reference`] is for experiments.
    pub kernel: Kernel,
    /// Claims of closed or evicted paid sessions kept for [`Worker::take_claims`]; the oldest
    /// are dropped beyond this.
    pub max_unclaimed: usize,
    /// For tests of the audits only: cheat this way.
    pub cheat: Option<Cheat>,
}

/// How a worker built for adversarial tests cheats (`--unsafe-cheat`); never on a real network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cheat {
    /// Returns, and commits to, random hidden states of the right shape instead of computing
    /// its layers' outputs.
    RandomOutputs,
    /// Commits to other outputs (zeros) than its layers computed: a stage that is not last
    /// returns its real outputs (the client's check of the trace hash catches it at once); a
    /// last stage returns the zeros it committed to, with the logits of its real outputs, so
    /// the answer is honest and the trace it would open is not the work it did.
    OtherTrace,
    /// A last stage that computes honestly but returns (and commits to) other logits: the
    /// sixth best token's logit raised above the best's, so greedy decoding picks it.
    OtherLogits,
    /// Computes honestly but claims 16 positions more than the client acknowledged (the
    /// voucher's signature no longer covers it).
    Overclaim,
}

impl WorkerConfig {
    /// Defaults for `model` on the chain `genesis`: 16 sessions, 16384 cached positions, 60 s
    /// idle timeout, default [`Limits`], the batch-invariant kernel.
    pub fn new(model: ModelId, genesis: H256) -> Self {
        Self {
            model,
            genesis,
            max_sessions: 16,
            max_cached_positions: 16_384,
            idle_timeout: Duration::from_secs(60),
            limits: Limits::default(),
            kernel: Kernel::BatchInvariant,
            max_unclaimed: 1_024,
            cheat: None,
        }
    }
}

struct Session {
    cache: Cache,
    trace: Trace,
    /// For a session of a job: who pays, and what it acknowledged.
    paid: Option<Paid>,
    last_used: Instant,
}

/// The payment side of a session opened for a job.
struct Paid {
    job: JobId,
    /// The job's client, whose vouchers count.
    client: AccountId,
    /// The latest voucher (the claim), once the client acknowledged any position.
    latest: Option<SignedVoucher>,
}

/// One loaded stage serving sessions; see the [module docs](self).
pub struct Worker {
    stage: Stage,
    key: Pair,
    config: WorkerConfig,
    info: StageInfo,
    sessions: HashMap<SessionId, Session>,
    unclaimed: VecDeque<ClaimedSession>,
    /// Measured seconds per one-position forward (a generation step), smoothed.
    step_secs: Option<f64>,
    work: WorkCounters,
}

/// A paid session's claim and the leaves it covers (what an audit opens), taken by the node to
/// submit the claim and keep the leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedSession {
    /// The latest voucher of the session.
    pub claim: SignedVoucher,
    /// The leaves of the positions the voucher covers.
    pub leaves: Vec<bitorch_commitment::Leaf>,
}

/// What a worker reports about its load, for its DHT announcement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerStats {
    /// Open sessions.
    pub sessions: usize,
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Generation steps per second of this stage, measured on one-position forwards (by
    /// [`Worker::benchmark`] and then on real sessions); `None` before any.
    pub tokens_per_sec: Option<f64>,
    /// What it computed since it started.
    pub work: WorkCounters,
}

/// What a worker computed since it started (its benchmark not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkCounters {
    /// Forward requests computed.
    pub forwards: u64,
    /// Positions (tokens) computed.
    pub positions: u64,
    /// Bytes of activations received and sent in forwards (values, not framing).
    pub activation_bytes_in: u64,
    /// See `activation_bytes_in`.
    pub activation_bytes_out: u64,
    /// Runs of the stage: one per batch of sessions stepped together.
    pub batches: u64,
    /// Forwards that ran in a batch with at least one other session's.
    pub batched_forwards: u64,
}

impl WorkerStats {
    /// Sessions it can still open.
    pub fn free(&self) -> usize {
        self.max_sessions.saturating_sub(self.sessions)
    }
}

/// Weight of a new measurement in the smoothed step time.
const STEP_EMA: f64 = 0.1;

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("layers", &self.info.layers)
            .field("account", &keys::account_of(&self.key))
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

use bitorch_primitives::saturating_u32 as to_u32;

impl Worker {
    /// A worker serving `stage` as the account of `key` (the one clients' vouchers name).
    pub fn new(stage: Stage, key: Pair, config: WorkerConfig) -> Self {
        let cfg = stage.config();
        let layers = stage.layers();
        let info = StageInfo {
            layers: (to_u32(layers.start), to_u32(layers.end)),
            hidden_size: to_u32(cfg.hidden_size),
            vocab_size: to_u32(cfg.vocab_size),
            context_length: to_u32(cfg.context_length),
            max_positions: config.limits.max_positions,
            max_message_bytes: to_u32(config.limits.max_message_bytes),
        };
        Self {
            stage,
            key,
            config,
            info,
            sessions: HashMap::new(),
            unclaimed: VecDeque::new(),
            step_secs: None,
            work: WorkCounters::default(),
        }
    }

    /// Its load and measured speed.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            sessions: self.sessions.len(),
            max_sessions: self.config.max_sessions,
            tokens_per_sec: self.step_secs.filter(|s| *s > 0.0).map(|s| 1.0 / s),
            work: self.work,
        }
    }

    /// Measures the stage's generation speed: runs `steps` one-position forwards in a session
    /// of its own (token 0, or hidden states of zeros, as input; no job), closes it, and
    /// returns the steps per second, also the starting point of [`WorkerStats::tokens_per_sec`].
    /// The first step is a warm-up and not timed.
    pub fn benchmark(&mut self, steps: u32) -> Result<f64, StageError> {
        let session: SessionId = rand::random();
        let now = Instant::now();
        match self.handle_at(
            StageRequest::Open {
                session,
                model: self.config.model,
                layers: self.info.layers,
                job: None,
                auth: None,
            },
            now,
        ) {
            StageResponse::Opened(_) => {}
            StageResponse::Error(e) => return Err(e),
            _ => return Err(StageError::Compute),
        }
        let (first, width) = (self.stage.is_first(), self.info.hidden_size);
        let input = move || -> Activation {
            if first {
                Activation::Tokens(vec![0])
            } else {
                let zeros = vec![0.0; width as usize];
                Activation::Hidden(Floats::new(1, width, &zeros).expect("1 x hidden"))
            }
        };
        let steps = steps.max(1);
        let mut timed = 0.0;
        let mut result = Ok(());
        // The benchmark's own forwards are not work done for anyone.
        let work = self.work;
        for pos in 0..=steps {
            let t = Instant::now();
            let req = StageRequest::Forward { session, pos, input: input(), voucher: None };
            match self.handle_at(req, Instant::now()) {
                StageResponse::Output { .. } => {}
                StageResponse::Error(e) => {
                    result = Err(e);
                    break;
                }
                _ => {
                    result = Err(StageError::Compute);
                    break;
                }
            }
            if pos > 0 {
                timed += t.elapsed().as_secs_f64();
            }
        }
        self.sessions.remove(&session);
        self.work = work;
        result?;
        let per_step = timed / f64::from(steps);
        self.step_secs = Some(per_step);
        Ok(if per_step > 0.0 { 1.0 / per_step } else { f64::INFINITY })
    }

    /// What it tells gateways about its stage.
    pub fn info(&self) -> StageInfo {
        self.info
    }

    /// Its configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// The account it works as (what vouchers and session authorizations name).
    pub fn account(&self) -> bitorch_primitives::AccountId {
        keys::account_of(&self.key)
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Positions cached over all sessions.
    pub fn cached_positions(&self) -> usize {
        self.sessions.values().map(|s| s.cache.len()).sum()
    }

    /// The commitment trace of an open session (what an auditor would open).
    pub fn trace(&self, session: &SessionId) -> Option<&Trace> {
        self.sessions.get(session).map(|s| &s.trace)
    }

    /// Decodes a request from untrusted bytes (within the configured limits), handles it for
    /// an unknown client ([`Worker::handle`]) and encodes the answer; bytes that do not decode
    /// get [`StageError::Malformed`].
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        let resp = match protocol::decode_request(bytes, &self.config.limits) {
            Ok(req) => self.handle(req),
            Err(e) => {
                tracing::debug!(target: TARGET, error = %e, "malformed request");
                StageResponse::Error(StageError::Malformed(e))
            }
        };
        protocol::encode(&resp)
    }

    /// Handles one request now, not knowing any job's client: an opening for a job is refused
    /// ([`StageError::Unauthorized`]); see [`Worker::handle_for`].
    pub fn handle(&mut self, req: StageRequest) -> StageResponse {
        self.handle_for(req, None, Instant::now())
    }

    /// Handles one request at time `now` (idle times are measured against it), for a job
    /// whose client is `client` (the caller looked it up on chain: the job is open for this
    /// model). An opening for a job is served only when its `auth` is `client`'s signature
    /// over the [`SessionAuth`] for this worker.
    pub fn handle_for(
        &mut self,
        req: StageRequest,
        client: Option<&AccountId>,
        now: Instant,
    ) -> StageResponse {
        self.evict_idle(now);
        match req {
            StageRequest::Open { session, model, layers, job, auth } => {
                let paid = match job {
                    None => None,
                    Some(job) => match self.authorize(session, model, layers, job, auth, client) {
                        Some(client) => Some(Paid { job, client, latest: None }),
                        None => return StageResponse::Error(StageError::Unauthorized { job }),
                    },
                };
                self.open(session, model, layers, paid, now)
            }
            StageRequest::Forward { session, pos, input, voucher } => {
                self.forward(session, pos, input, voucher, now)
            }
            // Openings are served by the node from the traces it keeps on disk.
            StageRequest::Opening(o) => StageResponse::Error(StageError::NoOpening {
                job: o.job,
                claim_index: o.claim_index,
                reason: "this worker keeps no traces".into(),
            }),
            StageRequest::Close { session, voucher } => match self.sessions.remove(&session) {
                Some(mut s) => {
                    let ack = voucher.and_then(|sig| self.acknowledgement(&session, &s, sig));
                    if let (Some(v), Some(paid)) = (ack, s.paid.as_mut()) {
                        paid.latest = Some(v);
                    }
                    StageResponse::Closed(self.close(s))
                }
                None => StageResponse::Error(StageError::UnknownSession),
            },
        }
    }

    /// Handles one request at `now` for an unknown client ([`Worker::handle_for`]).
    pub fn handle_at(&mut self, req: StageRequest, now: Instant) -> StageResponse {
        self.handle_for(req, None, now)
    }

    /// The client, if `auth` is its signature over this opening for this worker.
    fn authorize(
        &self,
        session: SessionId,
        model: ModelId,
        layers: (u32, u32),
        job: JobId,
        auth: Option<Signature>,
        client: Option<&AccountId>,
    ) -> Option<AccountId> {
        let (client, sig) = (client?, auth?);
        let asked = SessionAuth { session, model, layers, job, worker: self.account() };
        asked.verify(&sig, client, &self.config.genesis).then(|| client.clone())
    }

    /// The voucher of `s` for everything it computed so far.
    fn voucher(&self, session: &SessionId, s: &Session, job: JobId) -> Voucher {
        Voucher {
            job,
            session: *session,
            worker: self.account(),
            layers: self.info.layers,
            positions: to_u32(s.trace.len()),
            trace: H256(s.trace.chain()),
        }
    }

    /// The client's voucher for everything `s` computed, if `sig` is the client's signature
    /// over it.
    fn acknowledgement(
        &self,
        session: &SessionId,
        s: &Session,
        sig: Signature,
    ) -> Option<SignedVoucher> {
        let paid = s.paid.as_ref()?;
        let signed = SignedVoucher { voucher: self.voucher(session, s, paid.job), signature: sig };
        signed.verify(&paid.client, &self.config.genesis).then_some(signed)
    }

    /// Evicts sessions idle for `idle_timeout` at `now`; returns how many. The claims of
    /// evicted paid sessions are kept for [`Worker::take_claims`].
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let timeout = self.config.idle_timeout;
        let idle: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_used) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &idle {
            if let Some(s) = self.sessions.remove(id) {
                tracing::debug!(target: TARGET, positions = s.cache.len(), "evicted idle session");
                self.close(s);
            }
        }
        idle.len()
    }

    /// The jobs that open paid sessions are for.
    pub fn paid_jobs(&self) -> Vec<JobId> {
        let mut jobs: Vec<JobId> =
            self.sessions.values().filter_map(|s| s.paid.as_ref().map(|p| p.job)).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }

    /// Closes every open session of `job` (its client vanished, or the job stopped taking
    /// work: what was acknowledged must be claimed within the job's claim window); their
    /// claims are kept for [`Worker::take_claims`]. Returns how many were closed.
    pub fn close_job(&mut self, job: JobId) -> usize {
        let of_job: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.paid.as_ref().is_some_and(|p| p.job == job))
            .map(|(id, _)| *id)
            .collect();
        for id in &of_job {
            if let Some(s) = self.sessions.remove(id) {
                tracing::info!(target: TARGET, job, positions = s.cache.len(), "closed a session of a job that stopped taking work");
                self.close(s);
            }
        }
        of_job.len()
    }

    /// Takes the claims of paid sessions closed or evicted since the last call: the latest
    /// voucher of each, to submit on chain, with the leaves it covers.
    pub fn take_claims(&mut self) -> Vec<ClaimedSession> {
        self.unclaimed.drain(..).collect()
    }

    fn keep_unclaimed(&mut self, v: ClaimedSession) {
        if self.config.max_unclaimed == 0 {
            return;
        }
        while self.unclaimed.len() >= self.config.max_unclaimed {
            self.unclaimed.pop_front();
        }
        self.unclaimed.push_back(v);
    }

    /// Closes a session: its commitment, and its claim queued for [`Worker::take_claims`].
    fn close(&mut self, s: Session) -> Closure {
        let c = s.trace.commitment();
        let claim = s.paid.and_then(|p| p.latest);
        if let Some(v) = &claim {
            let n = (v.voucher.positions as usize).min(s.trace.len());
            let leaves = s.trace.leaves()[..n].to_vec();
            let mut claim = v.clone();
            if self.config.cheat == Some(Cheat::Overclaim) {
                claim.voucher.positions += 16;
            }
            self.keep_unclaimed(ClaimedSession { claim, leaves });
        }
        Closure { positions: c.len, root: H256(c.root), trace: H256(s.trace.chain()), claim }
    }

    fn open(
        &mut self,
        session: SessionId,
        model: ModelId,
        layers: (u32, u32),
        paid: Option<Paid>,
        now: Instant,
    ) -> StageResponse {
        if model != self.config.model {
            return StageResponse::Error(StageError::WrongModel { served: self.config.model });
        }
        if layers != self.info.layers {
            return StageResponse::Error(StageError::WrongLayers { served: self.info.layers });
        }
        if self.sessions.contains_key(&session) {
            return StageResponse::Error(StageError::SessionExists);
        }
        if self.sessions.len() >= self.config.max_sessions
            || self.cached_positions() >= self.config.max_cached_positions
        {
            tracing::debug!(target: TARGET, sessions = self.sessions.len(), "busy: refused a session");
            return StageResponse::Busy;
        }
        let cache = self.stage.new_cache_with(self.config.kernel);
        self.sessions.insert(session, Session { cache, trace: Trace::new(), paid, last_used: now });
        StageResponse::Opened(self.info)
    }

    /// Checks a forward against the stage and the session without changing anything.
    fn check_forward(&self, s: &Session, pos: u32, input: &Activation) -> Result<(), StageError> {
        let info = &self.info;
        let n = input.positions();
        let max = self.config.limits.max_positions;
        if n == 0 || n > max {
            return Err(StageError::BadPositionCount { got: n, max });
        }
        let expected =
            if self.stage.is_first() { ActivationKind::Tokens } else { ActivationKind::Hidden };
        match input {
            Activation::Tokens(ids) if expected == ActivationKind::Tokens => {
                if let Some(&token) = ids.iter().find(|&&t| t >= info.vocab_size) {
                    return Err(StageError::TokenOutOfRange { token, vocab: info.vocab_size });
                }
            }
            Activation::Hidden(f) if expected == ActivationKind::Hidden => {
                if f.cols() != info.hidden_size {
                    return Err(StageError::WidthMismatch {
                        expected: info.hidden_size,
                        got: f.cols(),
                    });
                }
            }
            other => return Err(StageError::WrongInput { expected, got: other.kind() }),
        }
        let done = to_u32(s.cache.len());
        if pos != done {
            return Err(StageError::PositionMismatch { expected: done, got: pos });
        }
        let end = done.saturating_add(n);
        if end > info.context_length {
            return Err(StageError::ContextFull { end, limit: info.context_length });
        }
        Ok(())
    }

    fn forward(
        &mut self,
        session: SessionId,
        pos: u32,
        input: Activation,
        voucher: Option<Signature>,
        now: Instant,
    ) -> StageResponse {
        let mut out = self.forward_batch(vec![(session, pos, input, voucher)], now);
        out.pop().unwrap_or(StageResponse::Error(StageError::Compute))
    }

    /// Handles several `Forward` requests (`(session, pos, input, voucher)`, one per session)
    /// at `now`, as [`Worker::handle_for`] would one by one, but runs the admitted ones
    /// together: where the stage [batches exactly](Stage::batches_exactly) their rows go through
    /// each matrix in one pass, and each session gets the bits (and the trace) it would get
    /// alone. Answers are in the requests' order; a session named twice gets
    /// [`StageError::PositionMismatch`] or runs after the first, never both at once.
    pub fn handle_forwards(
        &mut self,
        reqs: Vec<(SessionId, u32, Activation, Option<Signature>)>,
        now: Instant,
    ) -> Vec<StageResponse> {
        self.evict_idle(now);
        self.forward_batch(reqs, now)
    }

    /// Admits one forward: the checks, the voucher and the cache budget (`pending` positions
    /// already admitted in this batch count against it).
    fn admit(
        &mut self,
        session: &SessionId,
        pos: u32,
        input: &Activation,
        voucher: Option<Signature>,
        pending: usize,
    ) -> Result<(), Box<StageResponse>> {
        let Some(s) = self.sessions.get(session) else {
            return Err(Box::new(StageResponse::Error(StageError::UnknownSession)));
        };
        if let Err(e) = self.check_forward(s, pos, input) {
            return Err(Box::new(StageResponse::Error(e)));
        }
        // A paid session goes on only once the client acknowledged what was computed.
        if s.paid.is_some() && pos > 0 {
            let Some(ack) = voucher.and_then(|sig| self.acknowledgement(session, s, sig)) else {
                tracing::debug!(target: TARGET, pos, "refused a forward: not acknowledged");
                return Err(Box::new(StageResponse::Error(StageError::VoucherRequired {
                    positions: pos,
                })));
            };
            if let Some(paid) = self.sessions.get_mut(session).and_then(|s| s.paid.as_mut()) {
                paid.latest = Some(ack);
            }
        }
        let n = input.positions() as usize;
        if self.cached_positions() + pending + n > self.config.max_cached_positions {
            tracing::debug!(target: TARGET, "busy: cache budget full");
            return Err(Box::new(StageResponse::Busy));
        }
        Ok(())
    }

    fn forward_batch(
        &mut self,
        reqs: Vec<(SessionId, u32, Activation, Option<Signature>)>,
        now: Instant,
    ) -> Vec<StageResponse> {
        let mut out: Vec<Option<StageResponse>> = (0..reqs.len()).map(|_| None).collect();
        let mut admitted: Vec<(usize, SessionId, Session, Activation)> = Vec::new();
        let mut later = Vec::new();
        let mut pending = 0;
        for (i, (session, pos, input, voucher)) in reqs.into_iter().enumerate() {
            if admitted.iter().any(|(_, id, _, _)| *id == session) {
                later.push((i, session, pos, input, voucher));
                continue;
            }
            match self.admit(&session, pos, &input, voucher, pending) {
                Ok(()) => {
                    pending += input.positions() as usize;
                    if let Some(mut s) = self.sessions.remove(&session) {
                        s.last_used = now;
                        admitted.push((i, session, s, input));
                    }
                }
                Err(resp) => out[i] = Some(*resp),
            }
        }
        if !admitted.is_empty() {
            self.run_admitted(admitted, &mut out);
        }
        for (i, session, pos, input, voucher) in later {
            out[i] = Some(self.forward(session, pos, input, voucher, now));
        }
        out.into_iter().map(|r| r.unwrap_or(StageResponse::Error(StageError::Compute))).collect()
    }

    /// Runs the admitted forwards (`(request index, session, its state, input)`, at least one)
    /// as one batch, puts their answers in `out` and their sessions back.
    fn run_admitted(
        &mut self,
        admitted: Vec<(usize, SessionId, Session, Activation)>,
        out: &mut [Option<StageResponse>],
    ) {
        let one_position = admitted.iter().all(|(_, _, _, x)| x.positions() == 1);
        let batch = admitted.len() as u64;
        let bytes_in: u64 = admitted.iter().map(|(_, _, _, x)| x.value_bytes()).sum();
        let positions: u64 = admitted.iter().map(|(_, _, _, x)| u64::from(x.positions())).sum();
        let (mut owned, inputs): (Vec<_>, Vec<_>) =
            admitted.into_iter().map(|(i, id, s, input)| ((i, id, s), input)).unzip();
        let mut sessions: Vec<&mut Session> = owned.iter_mut().map(|(_, _, s)| s).collect();
        let t = Instant::now();
        match run(&self.stage, &mut sessions, inputs, self.config.cheat) {
            Ok(outputs) => {
                if one_position {
                    let secs = t.elapsed().as_secs_f64();
                    self.step_secs = Some(match self.step_secs {
                        Some(old) => old * (1.0 - STEP_EMA) + secs * STEP_EMA,
                        None => secs,
                    });
                }
                let w = &mut self.work;
                w.forwards += batch;
                w.positions += positions;
                w.activation_bytes_in += bytes_in;
                w.activation_bytes_out += outputs.iter().map(Activation::value_bytes).sum::<u64>();
                w.batches += 1;
                if batch > 1 {
                    w.batched_forwards += batch;
                }
                for ((i, id, s), output) in owned.into_iter().zip(outputs) {
                    out[i] = Some(StageResponse::Output { output, trace: H256(s.trace.chain()) });
                    self.sessions.insert(id, s);
                }
            }
            Err(e) => {
                // A cache may hold some layers' keys for these positions and not others.
                tracing::warn!(
                    target: TARGET,
                    error = %e,
                    sessions = owned.len(),
                    "stage forward failed; sessions closed"
                );
                for (i, _, _) in owned {
                    out[i] = Some(StageResponse::Error(StageError::Compute));
                }
            }
        }
    }
}

/// Runs the stage over the checked inputs of several sessions at once (one per session),
/// records each one's positions in its trace.
fn run(
    stage: &Stage,
    sessions: &mut [&mut Session],
    inputs: Vec<Activation>,
    cheat: Option<Cheat>,
) -> bitorch_inference::Result<Vec<Activation>> {
    let dev = stage.device();
    let hidden = stage.config().hidden_size;
    // The trace commits to the input as received (token ids as token rows), so that the client
    // that sent it can check every leaf it has the output of.
    let mut xs = Vec::with_capacity(inputs.len());
    let mut rows_in = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (x, rows) = match input {
            Activation::Tokens(ids) => {
                let rows: Vec<Vec<f32>> = ids.iter().map(|&id| token_row(id, hidden)).collect();
                (stage.embed(&Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?)?, rows)
            }
            Activation::Hidden(f) => {
                let n = f.rows() as usize;
                let flat = f.to_vec();
                let rows: Vec<Vec<f32>> =
                    flat.chunks_exact(hidden.max(1)).map(<[f32]>::to_vec).collect();
                (Tensor::from_vec(flat, (1, n, hidden), dev)?.to_dtype(stage.dtype())?, rows)
            }
            Activation::Last { .. } => {
                return Err(bitorch_inference::Error::StageInput("logits are not an input".into()))
            }
        };
        xs.push(x);
        rows_in.push(rows);
    }
    let mut caches: Vec<&mut Cache> = sessions.iter_mut().map(|s| &mut s.cache).collect();
    let ys = stage.forward_layers_batch(&xs, &mut caches)?;
    let ys = match cheat {
        Some(Cheat::RandomOutputs) => {
            ys.iter().map(|y| y.randn_like(0.0, 1.0)).collect::<candle_core::Result<Vec<_>>>()?
        }
        _ => ys,
    };
    // A last stage returns the top logits of each session's last position.
    let logits = if stage.is_last() { stage.head_batch(&ys)? } else { Vec::new() };
    let mut out = Vec::with_capacity(ys.len());
    for (i, (s, (y, xs))) in sessions.iter_mut().zip(ys.iter().zip(rows_in)).enumerate() {
        let logits = match logits.get(i) {
            Some(l) => Some(l.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        out.push(finish(stage, s, y, xs, logits, cheat)?);
    }
    Ok(out)
}

/// One session's output of [`run`]: `y` its stage output, `xs` its input rows, `logits` its
/// last position's (last stage); records the trace and builds the answer.
fn finish(
    stage: &Stage,
    s: &mut Session,
    y: &Tensor,
    xs: Vec<Vec<f32>>,
    logits: Option<Vec<f32>>,
    cheat: Option<Cheat>,
) -> bitorch_inference::Result<Activation> {
    let hidden = stage.config().hidden_size;
    let ys: Vec<Vec<f32>> = y.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let n = ys.len();
    let mut top = Vec::new();
    if let Some(logits) = logits {
        top = top_logits(&logits);
        if cheat == Some(Cheat::OtherLogits) && top.len() > 5 {
            top[5].1 = top[0].1 + 1.0;
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
    }
    let other_trace = cheat == Some(Cheat::OtherTrace);
    // It returns what it computed (a cheating last stage: what it commits to instead).
    let flat: Vec<f32> = if other_trace && stage.is_last() {
        vec![0.0; n * hidden]
    } else {
        ys.iter().flatten().copied().collect()
    };
    let out = if stage.is_last() {
        Activation::Last { hidden: floats(n, &flat)?, logits: Logits::new(&top) }
    } else {
        Activation::Hidden(floats(n, &flat)?)
    };
    for (r, (i, o)) in xs.into_iter().zip(ys).enumerate() {
        let o = if other_trace { vec![0.0; o.len()] } else { o };
        let logits = if r + 1 == n { std::mem::take(&mut top) } else { Vec::new() };
        s.trace.push(i, o, logits);
    }
    Ok(out)
}

fn floats(rows: usize, values: &[f32]) -> bitorch_inference::Result<Floats> {
    let cols = values.len().checked_div(rows).unwrap_or(0);
    Floats::new(to_u32(rows), to_u32(cols), values)
        .ok_or_else(|| bitorch_inference::Error::StageInput("output shape".into()))
}
