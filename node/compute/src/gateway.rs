//! The gateway: runs a whole generation over a route of stage workers.
//!
//! [`Gateway::generate`] plans a route ([`crate::route`]), opens a session on every stage,
//! prefills the prompt, then per step sends one position along the route and samples the next
//! token from the last stage's top logits with the same [`Sampler`] as
//! [`bitorch_inference::Engine::generate_tokens`], streaming each token to a callback as soon as
//! it is sampled.
//!
//! The gateway is a relay: every activation goes gateway → worker → gateway, so it holds the
//! session's inputs at every stage boundary (token ids at layer 0, hidden states at the others).
//! That is what makes failover exact: when a worker fails (transport error, timeout, error
//! answer, answer out of protocol, or busy in the middle of a session) it is banned for a while,
//! the route is re-planned with the stages still alive kept (they cost nothing to keep), the new
//! stages get sessions and the positions so far in one batched prefill each, and the step goes
//! on. The replay is checked: a replacement's outputs at positions the next stage already
//! consumed must be bit-identical to what its predecessor sent. Batch-invariant workers (the
//! batch-invariant attention kernel, which committed sessions use, with GGUF weights run by
//! candle's quantized kernels or our Q4_1 kernel) reproduce them from one batched prefill, and
//! that is what the gateway sends first. Weights dequantized to f32 are not batch-invariant (a
//! one-row matmul takes another kernel than a many-row one), so when the batched replay differs,
//! the replacement's session is reopened and the positions replayed in the batches they were
//! first fed in (the prompt, then one position per step), which reproduces them on the same
//! backend. Either way the tokens are those an uninterrupted run would have produced. If even
//! that differs (other hardware), the stored values are replaced and the next stage's session is
//! restarted on them, and so on down the route, so the commitments still chain.
//!
//! Commitments chain by construction, since the gateway forwards exactly the bytes it received,
//! and are checked as they grow: every answer carries the stage's running trace hash, which
//! must be the chain of the leaves of what it was sent (token rows for the first stage) and
//! what it returned — for the last stage, the hidden states after its last layer and, at the
//! last position of each answer, the top logits ([`bitorch_commitment::top`]) the gateway
//! samples from. A stage whose hash is anything else is failed over and never acknowledged. At
//! the end every stage's [`Closure`] must cover the positions it was sent; for a stage between
//! two others the gateway also recomputes the Merkle root itself. Whether the returned outputs
//! (logits included) follow from the inputs is what auditors check.
//!
//! A generation for a job pays by vouchers: the gateway, holding the job's client's key, signs
//! each stage's [`Voucher`] for every position the stage returned (with the trace hash it
//! returned) on the next forward and at the close, and counts what it acknowledged
//! ([`GatewayGeneration::acknowledged`]). Each worker claims on chain itself. The closure's
//! claim must be the gateway's last voucher for that stage.

use crate::{
    error::{Error, StageFailure, TransportError},
    protocol::{
        Activation, Closure, Floats, ModelId, SessionAuth, SessionId, StageError, StageInfo,
        StageRequest, StageResponse,
    },
    route::{plan_route_with, Bans, CostModel, WorkerInfo},
};
use bitorch_commitment::{chain_of, chain_step, leaf_hash, token_row, Commitment, Logit};
use bitorch_inference::{FinishReason, Sampler, SamplingParams};
use bitorch_primitives::receipt::{JobId, SignedVoucher, Voucher};
use bitorch_primitives::{Balance, Pair, Signature, H256};
use candle_core::{Device, Tensor};
use std::{
    collections::HashMap,
    fmt::Debug,
    future::Future,
    hash::Hash,
    ops::{ControlFlow, Range},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

const TARGET: &str = "bitorch::compute::gateway";

/// Bytes of a forward message besides its floats (version, variants, session, position,
/// shape, length prefix), rounded up.
const FORWARD_OVERHEAD: u32 = 64;

/// How a gateway reaches workers: one request, one answer. The libp2p request-response
/// behaviour implements it in the node; tests use an in-memory one.
pub trait StageTransport: Send + Sync {
    /// How workers are addressed (a peer id).
    type WorkerId: Clone + Eq + Hash + Debug + Send + Sync;

    /// Sends `req` to `worker` and waits for its answer. The gateway adds its own timeout.
    fn call(
        &self,
        worker: &Self::WorkerId,
        req: StageRequest,
    ) -> impl Future<Output = Result<StageResponse, TransportError>> + Send;

    /// The workers announced for `model` now, looked up afresh. A generation that lost a
    /// stage and finds no other worker for its layers among those it started with asks once
    /// per failure before it gives up (the list it was given may have missed one). `None`:
    /// this transport cannot look them up.
    fn find_workers(
        &self,
        model: &ModelId,
    ) -> impl Future<Output = Option<Vec<WorkerInfo<Self::WorkerId>>>> + Send {
        let _ = model;
        async { None }
    }
}

/// How a gateway runs generations.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Genesis hash of the chain the vouchers are for.
    pub genesis: H256,
    /// How long a failed worker is not used.
    pub ban_duration: Duration,
    /// How long a busy worker is not used.
    pub busy_backoff: Duration,
    /// Longest wait for one answer.
    pub call_timeout: Duration,
    /// Most worker failures (busy ones included) one generation survives.
    pub max_failovers: u32,
    /// How routes are costed.
    pub cost: CostModel,
    /// The key of the jobs' client (the paying account), which signs each paid session's
    /// [`SessionAuth`] for the worker asked and its vouchers; `None`: sessions carry neither
    /// (a worker then refuses those with a job).
    pub client: Option<Pair>,
    /// For the adversarial tests only: sign the sessions' authorizations but never a voucher
    /// (a client that withholds its acknowledgements).
    pub unsafe_withhold_vouchers: bool,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's key is shown by its account, never its secret.
        let client = self.client.as_ref().map(bitorch_primitives::keys::account_of);
        f.debug_struct("GatewayConfig")
            .field("genesis", &self.genesis)
            .field("ban_duration", &self.ban_duration)
            .field("busy_backoff", &self.busy_backoff)
            .field("call_timeout", &self.call_timeout)
            .field("max_failovers", &self.max_failovers)
            .field("cost", &self.cost)
            .field("client", &client)
            .field("unsafe_withhold_vouchers", &self.unsafe_withhold_vouchers)
            .finish()
    }
}

impl GatewayConfig {
    /// Defaults for the chain `genesis`: 10-minute bans, 5 s busy backoff, 60 s call timeout,
    /// 16 failovers.
    pub fn new(genesis: H256) -> Self {
        Self {
            genesis,
            ban_duration: Duration::from_secs(600),
            busy_backoff: Duration::from_secs(5),
            call_timeout: Duration::from_secs(60),
            max_failovers: 16,
            cost: CostModel::default(),
            client: None,
            unsafe_withhold_vouchers: false,
        }
    }
}

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    /// The model.
    pub model: ModelId,
    /// Its number of layers.
    pub num_layers: u32,
    /// Prompt token ids (after any chat template).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// End-of-sequence token ids.
    pub eos: Vec<u32>,
    /// The on-chain job paying for it, if any (the gateway then signs vouchers).
    pub job: Option<JobId>,
    /// The job's price per layer per token: workers asking more are not used (they would
    /// refuse the session). `None`: any worker (sessions without a job).
    pub max_price: Option<bitorch_primitives::Balance>,
}

/// A stage's closed session, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReceipt<Id> {
    /// The worker.
    pub worker: Id,
    /// Its layers.
    pub layers: Range<u32>,
    /// Positions its commitment covers.
    pub positions: u32,
    /// Merkle root of its commitment.
    pub root: H256,
    /// Whether the gateway recomputed the root itself (stages between two others).
    pub root_recomputed: bool,
    /// The claim the worker holds: the gateway's last voucher of the session, for a job.
    pub claim: Option<SignedVoucher>,
}

/// A stage whose closure or receipt did not check out (its worker is banned).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedReceipt<Id> {
    /// The worker.
    pub worker: Id,
    /// Its layers.
    pub layers: Range<u32>,
    /// What was wrong.
    pub reason: String,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct GatewayGeneration<Id> {
    /// The prompt.
    pub prompt_tokens: Vec<u32>,
    /// Generated tokens (an end-of-sequence token included).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// The route at the end.
    pub route: Vec<WorkerInfo<Id>>,
    /// The checked closures of the final route's stages, in layer order.
    pub receipts: Vec<StageReceipt<Id>>,
    /// Closures that failed their checks.
    pub rejected: Vec<RejectedReceipt<Id>>,
    /// Worker failures survived.
    pub failovers: u32,
    /// Layer-positions acknowledged by vouchers over every session of the run (those of
    /// stages that failed or were replaced included): at most what the workers can claim.
    pub acknowledged: u64,
    /// Seconds to the first token (planning, opening, prefill).
    pub prompt_secs: f64,
    /// Seconds for the following tokens.
    pub generate_secs: f64,
}

/// A generation that failed, with the checked receipts of the stages still on its route when
/// it did: they worked until then, and their work is paid (a stage that failed is not on the
/// route any more, and gets nothing).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failed<Id> {
    /// Why it failed.
    #[source]
    pub error: Error,
    /// What the stages still on the route committed to, checked as at the end of a
    /// generation that succeeded.
    pub receipts: Vec<StageReceipt<Id>>,
    /// Layer-positions acknowledged by vouchers ([`GatewayGeneration::acknowledged`]).
    pub acknowledged: u64,
}

impl<Id> From<Error> for Failed<Id> {
    fn from(error: Error) -> Self {
        Self { error, receipts: Vec::new(), acknowledged: 0 }
    }
}

/// What a gateway has done since it started, summed over its generations (for operators and
/// tests: structured facts rather than log lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStats<Id: Hash + Eq> {
    /// Generations started.
    pub generations: u64,
    /// Stage sessions the gateway asked each worker to open (answered or not).
    pub sessions_opened: HashMap<Id, u64>,
    /// Stage failures survived by re-routing (each banned the worker for a while).
    pub failovers: u64,
}

impl<Id: Hash + Eq> Default for GatewayStats<Id> {
    fn default() -> Self {
        Self { generations: 0, sessions_opened: HashMap::new(), failovers: 0 }
    }
}

/// Runs generations over a [`StageTransport`]; see the [module docs](self). Bans are shared by
/// all generations of one gateway.
#[derive(Debug)]
pub struct Gateway<T: StageTransport> {
    transport: T,
    config: GatewayConfig,
    bans: Mutex<Bans<T::WorkerId>>,
    stats: Mutex<GatewayStats<T::WorkerId>>,
}

impl<T: StageTransport> Gateway<T> {
    /// A gateway over `transport`.
    pub fn new(transport: T, config: GatewayConfig) -> Self {
        Self {
            transport,
            config,
            bans: Mutex::new(Bans::new()),
            stats: Mutex::new(GatewayStats::default()),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    fn bans(&self) -> std::sync::MutexGuard<'_, Bans<T::WorkerId>> {
        // A panic elsewhere cannot leave a ban table half written; keep using it.
        self.bans.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats_mut(&self) -> std::sync::MutexGuard<'_, GatewayStats<T::WorkerId>> {
        // Counters only: a panic elsewhere leaves them usable.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this gateway has done so far.
    pub fn stats(&self) -> GatewayStats<T::WorkerId> {
        self.stats_mut().clone()
    }

    /// Whether `worker` is banned now.
    pub fn is_banned(&self, worker: &T::WorkerId) -> bool {
        self.bans().is_banned(worker, Instant::now())
    }

    /// Bans `worker` for `duration`.
    pub fn ban(&self, worker: T::WorkerId, duration: Duration) {
        self.bans().ban(worker, duration, Instant::now());
    }

    /// Lifts a ban.
    pub fn lift_ban(&self, worker: &T::WorkerId) {
        self.bans().lift(worker);
    }

    /// Runs one generation over the announced `workers` (those of other models are ignored),
    /// calling `on_token` with each token as it is sampled; `ControlFlow::Break` stops after
    /// that token. See the [module docs](self). A generation that fails still closes the
    /// sessions of its route and returns their checked receipts with the error ([`Failed`]).
    pub async fn generate(
        &self,
        workers: &[WorkerInfo<T::WorkerId>],
        req: &GatewayRequest,
        mut on_token: impl FnMut(u32) -> ControlFlow<()> + Send,
    ) -> Result<GatewayGeneration<T::WorkerId>, Failed<T::WorkerId>> {
        let mut sampler = Sampler::new(req.sampling.clone()).map_err(Error::from)?;
        if req.prompt.is_empty() {
            return Err(Error::EmptyPrompt.into());
        }
        let start = Instant::now();
        self.stats_mut().generations += 1;
        let mut run = Run {
            gw: self,
            workers: workers
                .iter()
                .filter(|w| admits(w, req.model, req.max_price))
                .cloned()
                .collect(),
            max_price: req.max_price,
            looked_up: None,
            waited: Duration::ZERO,
            model: req.model,
            num_layers: req.num_layers,
            job: req.job,
            route: Vec::new(),
            tokens: req.prompt.clone(),
            prompt_len: req.prompt.len() as u32,
            hidden: HashMap::new(),
            width: None,
            vocab: None,
            logits: Vec::new(),
            logits_at: 0,
            failovers: 0,
            acknowledged: AtomicU64::new(0),
        };
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        let mut prompt_secs = 0.0;
        let span = tracing::info_span!(target: TARGET, "generate", prompt = req.prompt.len(),
            job = ?req.job);
        if req.max_tokens > 0 {
            let r = run.generate(req, &mut sampler, &mut tokens, &mut prompt_secs, &mut on_token);
            match tracing::Instrument::instrument(r, span.clone()).await {
                Ok(f) => finish = f,
                Err(error) => {
                    // The stages still on the route worked until now: close them and keep
                    // what checks out (without banning on a mismatch: the run was cut short).
                    let close = run.close_all(false);
                    let (receipts, _) = tracing::Instrument::instrument(close, span).await;
                    let acknowledged = run.acknowledged.load(Ordering::Relaxed);
                    return Err(Failed { error, receipts, acknowledged });
                }
            }
        }
        let (receipts, rejected) = tracing::Instrument::instrument(run.close_all(true), span).await;
        let total = start.elapsed().as_secs_f64();
        tracing::debug!(target: TARGET, tokens = tokens.len(), failovers = run.failovers,
            rejected = rejected.len(), secs = total, "generation done");
        Ok(GatewayGeneration {
            prompt_tokens: req.prompt.clone(),
            tokens,
            finish,
            route: run.route.iter().map(|h| h.worker.clone()).collect(),
            receipts,
            rejected,
            failovers: run.failovers,
            acknowledged: run.acknowledged.load(Ordering::Relaxed),
            prompt_secs,
            generate_secs: total - prompt_secs,
        })
    }
}

/// A stage of the route being run.
struct Hop<Id> {
    worker: WorkerInfo<Id>,
    session: SessionId,
    /// What the worker said when the session opened; `None` until then.
    info: Option<StageInfo>,
    /// Positions it has processed.
    done: u32,
    /// Its session must start over (its inputs changed under it, or its batched replay did not
    /// reproduce what it replaced).
    restart: bool,
    /// Replay positions in the batches they were first fed in (the prompt, then one per step)
    /// rather than all at once.
    as_fed: bool,
    /// The running hash of its trace over the `done` positions, as it last reported it.
    trace: H256,
    /// The same hash computed here from what it was sent and returned.
    checked: [u8; 32],
}

impl<Id> Hop<Id> {
    fn new(worker: WorkerInfo<Id>) -> Self {
        Self {
            worker,
            session: rand::random(),
            info: None,
            done: 0,
            restart: false,
            as_fed: false,
            trace: H256::zero(),
            checked: [0; 32],
        }
    }
}

/// Whether a generation of `model` paying at most `max_price` per layer-token can route
/// over `w`.
fn admits<Id>(w: &WorkerInfo<Id>, model: ModelId, max_price: Option<Balance>) -> bool {
    w.model == model && max_price.is_none_or(|p| w.price <= p)
}

/// One generation's state.
struct Run<'g, T: StageTransport> {
    gw: &'g Gateway<T>,
    /// The workers of the model within the price that routes are planned over.
    workers: Vec<WorkerInfo<T::WorkerId>>,
    /// The most a stage may ask per layer-token.
    max_price: Option<Balance>,
    /// How many failovers there had been when the workers were last looked up afresh.
    looked_up: Option<u32>,
    /// Time spent waiting for briefly banned workers.
    waited: Duration,
    model: ModelId,
    num_layers: u32,
    job: Option<JobId>,
    route: Vec<Hop<T::WorkerId>>,
    /// The inputs of layer 0: every token fed or about to be fed.
    tokens: Vec<u32>,
    prompt_len: u32,
    /// The inputs at every inner boundary of the route: row-major `positions × width` floats.
    hidden: HashMap<u32, Vec<f32>>,
    width: Option<u32>,
    vocab: Option<u32>,
    /// The last stage's top logits for the last position, highest first.
    logits: Vec<Logit>,
    /// How many positions had been processed when `logits` were produced.
    logits_at: u32,
    failovers: u32,
    /// Layer-positions acknowledged by the vouchers sent so far, counted as each session
    /// ends (closed, dropped, or failed).
    acknowledged: AtomicU64,
}

impl<T: StageTransport> Run<'_, T> {
    /// No route over the workers known: before giving up, look the workers up again (once per
    /// failure: the list the generation started with may have missed one), then wait out a
    /// brief ban (a worker busy for a moment, or not yet seeing the job) that ends within
    /// [`GatewayConfig::busy_backoff`], waiting at most twice that in all. Returns whether to
    /// plan again.
    async fn recover(&mut self) -> bool {
        if self.looked_up.is_none_or(|n| n < self.failovers) {
            self.looked_up = Some(self.failovers);
            if let Some(found) = self.gw.transport.find_workers(&self.model).await {
                let known = |w: &WorkerInfo<T::WorkerId>| {
                    self.workers.iter().any(|k| k.id == w.id && k.layers == w.layers)
                };
                let fresh: Vec<_> = found
                    .into_iter()
                    .filter(|w| admits(w, self.model, self.max_price) && !known(w))
                    .collect();
                if !fresh.is_empty() {
                    tracing::info!(target: TARGET, found = fresh.len(),
                        "looked the workers up again: new ones to route over");
                    self.workers.extend(fresh);
                    return true;
                }
            }
        }
        let backoff = self.gw.config.busy_backoff;
        let now = Instant::now();
        let soonest = {
            let bans = self.gw.bans();
            self.workers
                .iter()
                .filter(|w| w.capacity > 0)
                .filter_map(|w| bans.until(&w.id, now))
                .filter(|&t| t - now <= backoff)
                .min()
        };
        match soonest {
            Some(t) if self.waited + (t - now) <= backoff * 2 => {
                tracing::info!(target: TARGET, secs = (t - now).as_secs_f64(),
                    "no route now: waiting for a briefly banned worker");
                self.waited += t - now;
                tokio::time::sleep_until(t.into()).await;
                true
            }
            _ => false,
        }
    }

    async fn generate(
        &mut self,
        req: &GatewayRequest,
        sampler: &mut Sampler,
        tokens: &mut Vec<u32>,
        prompt_secs: &mut f64,
        on_token: &mut (impl FnMut(u32) -> ControlFlow<()> + Send),
    ) -> Result<FinishReason, Error> {
        let start = Instant::now();
        self.establish().await?;
        let limit = self.context_length();
        if req.prompt.len() > limit {
            return Err(Error::PromptTooLong { tokens: req.prompt.len(), limit });
        }
        let mut history = req.prompt.clone();
        let mut target = req.prompt.len() as u32;
        self.advance(target).await?;
        loop {
            // Sampled among the top logits the last stage returned (and committed to); every
            // other token is out of reach, as with a top-k sampler.
            let vocab = self.vocab.unwrap_or(0) as usize;
            let mut dense = vec![f32::NEG_INFINITY; vocab];
            for (id, x) in std::mem::take(&mut self.logits) {
                if let Some(slot) = dense.get_mut(id as usize) {
                    *slot = x;
                }
            }
            let logits = Tensor::from_vec(dense, (1, vocab), &Device::Cpu)
                .map_err(bitorch_inference::Error::from)?;
            let tok = sampler.sample(&logits, &history)?;
            tokens.push(tok);
            history.push(tok);
            if tokens.len() == 1 {
                *prompt_secs = start.elapsed().as_secs_f64();
            }
            if req.eos.contains(&tok) {
                let _ = on_token(tok);
                return Ok(FinishReason::Eos);
            }
            if on_token(tok).is_break() {
                return Ok(FinishReason::Cancelled);
            }
            if tokens.len() >= req.max_tokens {
                return Ok(FinishReason::Length);
            }
            if target as usize >= self.context_length() {
                return Ok(FinishReason::ContextFull);
            }
            self.tokens.push(tok);
            target += 1;
            self.advance(target).await?;
        }
    }

    fn context_length(&self) -> usize {
        self.route
            .iter()
            .filter_map(|h| h.info.map(|i| i.context_length as usize))
            .min()
            .unwrap_or(0)
    }

    /// Brings every stage to `target` positions and leaves the last position's logits in
    /// `self.logits`, failing over as needed.
    async fn advance(&mut self, target: u32) -> Result<(), Error> {
        loop {
            match self.pass(target).await {
                Ok(()) if self.logits_at == target && !self.logits.is_empty() => return Ok(()),
                Ok(()) => {
                    // Only reachable if the last stage was already at `target` without logits
                    // for it, which the pass order rules out; fail over rather than panic.
                    let i = self.route.len().saturating_sub(1);
                    let f = StageFailure::Unexpected("no logits for the last position".into());
                    self.fail(i, f).await?;
                }
                Err((i, f)) => self.fail(i, f).await?,
            }
            self.establish().await?;
        }
    }

    /// One pass down the route: each stage gets the positions it lacks up to `target`.
    async fn pass(&mut self, target: u32) -> Result<(), (usize, StageFailure)> {
        let n = self.num_layers;
        let mut i = 0;
        while i < self.route.len() {
            if self.route[i].restart {
                tracing::info!(target: TARGET, worker = ?self.route[i].worker.id,
                    as_fed = self.route[i].as_fed, "restarting a stage's session");
                let fresh =
                    Hop { as_fed: self.route[i].as_fed, ..Hop::new(self.route[i].worker.clone()) };
                let old = std::mem::replace(&mut self.route[i], fresh);
                self.close_quietly(&old).await;
                self.open(i).await.map_err(|f| (i, f))?;
            }
            let (start, end) = (self.route[i].worker.layers.start, self.route[i].worker.layers.end);
            let last = end == n;
            let info =
                self.route[i].info.ok_or((i, StageFailure::Unexpected("not open".into())))?;
            let width = info.hidden_size;
            let by_bytes = info.max_message_bytes.saturating_sub(FORWARD_OVERHEAD)
                / width.saturating_mul(4).max(1);
            let max_rows = info.max_positions.min(by_bytes).max(1);
            let mut redo = false;
            while self.route[i].done < target {
                let done = self.route[i].done;
                // As fed: the prompt, then one position per step, the way the stage this one
                // replaces computed them.
                let batch_end = if !self.route[i].as_fed {
                    target
                } else if done < self.prompt_len {
                    self.prompt_len.min(target)
                } else {
                    done + 1
                };
                let chunk = (batch_end - done).min(max_rows);
                let (lo, hi) = (done as usize, (done + chunk) as usize);
                let input = if start == 0 {
                    Activation::Tokens(self.tokens[lo..hi].to_vec())
                } else {
                    let w = width as usize;
                    let rows = self.hidden.get(&start).map(Vec::as_slice).unwrap_or_default();
                    let Some(slice) = rows.get(lo * w..hi * w) else {
                        let f = StageFailure::Unexpected("missing inputs".into());
                        return Err((i, f));
                    };
                    Activation::Hidden(
                        Floats::new(chunk, width, slice)
                            .ok_or((i, StageFailure::Unexpected("shape".into())))?,
                    )
                };
                let session = self.route[i].session;
                let voucher = self.voucher(&self.route[i]);
                let req = StageRequest::Forward { session, pos: done, input, voucher };
                let resp = self.call(i, req).await.map_err(|f| (i, f))?;
                match resp {
                    StageResponse::Output { output: Activation::Hidden(f), trace }
                        if !last && f.rows() == chunk && f.cols() == width =>
                    {
                        let values = f.to_vec();
                        self.take_trace(i, start, done, &values, width as usize, &[], trace)?;
                        if let Some(p) = self.diverges(end, done, &values, width as usize) {
                            if !self.route[i].as_fed {
                                // A stage that is not batch-invariant (f32 matmuls pick other
                                // kernels for one row than for many) computed other bits in one
                                // batch than its predecessor did step by step: replay again the
                                // way the positions were first fed.
                                tracing::info!(target: TARGET, worker = ?self.route[i].worker.id,
                                    position = p, "batched replay differs; replaying as fed");
                                self.route[i].as_fed = true;
                                self.route[i].restart = true;
                                redo = true;
                                break;
                            }
                            self.replace_from(i, end, p, width as usize);
                        }
                        self.append(end, done, &values, width as usize);
                    }
                    StageResponse::Output {
                        output: Activation::Last { hidden, logits },
                        trace,
                    } if last && hidden.rows() == chunk && hidden.cols() == width => {
                        let top = logits.to_vec();
                        let vocab = self.vocab.unwrap_or(0) as usize;
                        if let Err(e) = bitorch_commitment::top::check_top(&top, vocab) {
                            let f = StageFailure::Unexpected(format!("its logits: {e}"));
                            return Err((i, f));
                        }
                        let values = hidden.to_vec();
                        self.take_trace(i, start, done, &values, width as usize, &top, trace)?;
                        if done + chunk == target {
                            self.logits = top;
                            self.logits_at = target;
                        }
                    }
                    other => return Err((i, unexpected(other))),
                }
                self.route[i].done = done + chunk;
            }
            if !redo {
                i += 1;
            }
        }
        Ok(())
    }

    /// Takes stage `i`'s new trace hash `trace` if it is the chain of what it was sent and
    /// returned ([`Self::chain_io`]); a stage whose hash is anything else is failed and never
    /// acknowledged for it.
    #[allow(clippy::too_many_arguments)]
    fn take_trace(
        &mut self,
        i: usize,
        start: u32,
        from: u32,
        values: &[f32],
        w: usize,
        logits: &[Logit],
        trace: H256,
    ) -> Result<(), (usize, StageFailure)> {
        if self.chain_io(i, start, from, values, w, logits) != Some(trace.0) {
            let f = StageFailure::Unexpected(
                "its trace hash is not the chain of what it was sent and returned".into(),
            );
            return Err((i, f));
        }
        self.route[i].trace = trace;
        self.route[i].checked = trace.0;
        Ok(())
    }

    /// Stage `i`'s trace hash extended from what was checked before by the leaves of positions
    /// `from..` it was sent (token rows from the tokens when it starts at layer 0, else the
    /// hidden states stored at boundary `start`) and returned (`values`, rows of width `w`, and
    /// a last stage's `logits` at the last of them); `None` when the inputs are not here.
    fn chain_io(
        &self,
        i: usize,
        start: u32,
        from: u32,
        values: &[f32],
        w: usize,
        logits: &[Logit],
    ) -> Option<[u8; 32]> {
        let mut chain = self.route[i].checked;
        let rows = values.len() / w.max(1);
        for (r, out) in values.chunks_exact(w.max(1)).enumerate() {
            let p = from as usize + r;
            let input = if start == 0 {
                token_row(*self.tokens.get(p)?, w)
            } else {
                self.hidden.get(&start)?.get(p * w..(p + 1) * w)?.to_vec()
            };
            let at_last = if r + 1 == rows { logits } else { &[] };
            chain = chain_step(&chain, &leaf_hash(p as u32, &input, out, at_last));
        }
        Some(chain)
    }

    /// The first position in `from..` where `values` (rows of width `w`) differ from what is
    /// stored at boundary `end` (computed by a stage the one now producing them replaced).
    fn diverges(&self, end: u32, from: u32, values: &[f32], w: usize) -> Option<usize> {
        let buf = self.hidden.get(&end)?;
        let (from, have, rows) = (from as usize, buf.len() / w, values.len() / w);
        let overlap = have.saturating_sub(from).min(rows);
        (0..overlap)
            .find(|&r| {
                let a = &buf[(from + r) * w..(from + r + 1) * w];
                let b = &values[r * w..(r + 1) * w];
                a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits())
            })
            .map(|r| from + r)
    }

    /// Stage `i` computed other values from position `p` on than those stored at `end` (other
    /// hardware, or other inputs): drop the stored ones from `p`, and restart the next stage if
    /// it consumed them, so that every stage's commitment chains into the next.
    fn replace_from(&mut self, i: usize, end: u32, p: usize, w: usize) {
        tracing::warn!(target: TARGET, worker = ?self.route[i].worker.id, position = p,
            "stage computed other values than the stage it replaced");
        if let Some(buf) = self.hidden.get_mut(&end) {
            buf.truncate(p * w);
        }
        if let Some(next) = self.route.get_mut(i + 1) {
            if next.done as usize > p {
                next.restart = true;
                // Its positions before `p` have the same inputs: as fed, they come out the same.
                next.as_fed = true;
            }
        }
    }

    /// Appends the rows of `values` for positions `from..` that boundary `end` lacks.
    fn append(&mut self, end: u32, from: u32, values: &[f32], w: usize) {
        let buf = self.hidden.entry(end).or_default();
        let skip = (buf.len() / w).saturating_sub(from as usize).min(values.len() / w);
        buf.extend_from_slice(&values[skip * w..]);
    }

    async fn call(&self, i: usize, req: StageRequest) -> Result<StageResponse, StageFailure> {
        call(self.gw, &self.route[i].worker.id, req).await
    }

    /// Opens stage `i`'s session.
    async fn open(&mut self, i: usize) -> Result<(), StageFailure> {
        let hop = &self.route[i];
        let layers = (hop.worker.layers.start, hop.worker.layers.end);
        // A paid session carries the client's authorization for this worker.
        let auth = match (self.job, &self.gw.config.client) {
            (Some(job), Some(client)) => Some(
                SessionAuth {
                    session: hop.session,
                    model: self.model,
                    layers,
                    job,
                    worker: hop.worker.account.clone(),
                }
                .sign(client, &self.gw.config.genesis),
            ),
            _ => None,
        };
        let req = StageRequest::Open {
            session: hop.session,
            model: self.model,
            layers,
            job: self.job,
            auth,
        };
        *self.gw.stats_mut().sessions_opened.entry(hop.worker.id.clone()).or_default() += 1;
        match self.call(i, req).await? {
            StageResponse::Opened(info) => {
                let consistent = info.layers == layers
                    && info.hidden_size > 0
                    && self.width.is_none_or(|w| w == info.hidden_size)
                    && self.vocab.is_none_or(|v| v == info.vocab_size)
                    && info.max_positions > 0;
                if !consistent {
                    let close =
                        StageRequest::Close { session: self.route[i].session, voucher: None };
                    let _ = self.call(i, close).await;
                    return Err(StageFailure::Unexpected(format!("inconsistent stage {info:?}")));
                }
                self.width = Some(info.hidden_size);
                self.vocab = Some(info.vocab_size);
                self.route[i].info = Some(info);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Plans a route with the stages still open kept (they cost nothing), closes those no
    /// longer used, and opens the new ones; a stage that cannot be opened is banned and the
    /// route planned again.
    async fn establish(&mut self) -> Result<(), Error> {
        'plan: loop {
            let now = Instant::now();
            let plan = {
                let bans = self.gw.bans();
                let cost = self.gw.config.cost;
                let route = &self.route;
                plan_route_with(self.num_layers, &self.workers, |w| {
                    if bans.is_banned(&w.id, now) {
                        None
                    } else if route
                        .iter()
                        .any(|h| h.worker.id == w.id && h.worker.layers == w.layers)
                    {
                        Some(0.0)
                    } else {
                        (w.capacity > 0).then(|| cost.stage_secs(w))
                    }
                })
            };
            let plan = match plan {
                Ok(plan) => plan,
                Err(e) => {
                    if self.recover().await {
                        continue 'plan;
                    }
                    return Err(e.into());
                }
            };
            let mut old: Vec<Option<Hop<T::WorkerId>>> =
                std::mem::take(&mut self.route).into_iter().map(Some).collect();
            for w in plan.stages {
                let kept = old.iter_mut().find(|h| {
                    h.as_ref().is_some_and(|h| h.worker.id == w.id && h.worker.layers == w.layers)
                });
                self.route.push(kept.and_then(Option::take).unwrap_or_else(|| Hop::new(w)));
            }
            for hop in old.into_iter().flatten() {
                self.close_quietly(&hop).await;
            }
            let starts: Vec<u32> = self.route.iter().map(|h| h.worker.layers.start).collect();
            self.hidden.retain(|b, _| starts.contains(b));
            for i in 0..self.route.len() {
                if self.route[i].info.is_some() {
                    continue;
                }
                if let Err(f) = self.open(i).await {
                    self.fail(i, f).await?;
                    continue 'plan;
                }
            }
            tracing::debug!(target: TARGET, route = ?self.route.iter().map(|h| (&h.worker.id, h.worker.layers.clone())).collect::<Vec<_>>(), "route");
            return Ok(());
        }
    }

    /// Stage `i` failed: ban its worker, drop it from the route (closing its session when the
    /// worker may still be alive), and count the failover.
    async fn fail(&mut self, i: usize, f: StageFailure) -> Result<(), Error> {
        let cfg = &self.gw.config;
        let Some(hop) = (i < self.route.len()).then(|| self.route.remove(i)) else {
            return Err(Error::TooManyFailures { failovers: self.failovers, last: f.to_string() });
        };
        tracing::warn!(target: TARGET, worker = ?hop.worker.id, layers = ?hop.worker.layers,
            error = %f, "stage failed; failing over");
        // Busy, or not (yet) seeing the job on chain: worth trying again soon. Anything else
        // is a fault.
        let brief =
            matches!(f, StageFailure::Busy | StageFailure::Rejected(StageError::JobNotOpen { .. }));
        let duration = if brief { cfg.busy_backoff } else { cfg.ban_duration };
        self.gw.bans().ban(hop.worker.id.clone(), duration, Instant::now());
        self.gw.stats_mut().failovers += 1;
        if hop.info.is_some() && !matches!(f, StageFailure::Transport(_)) {
            self.close_quietly(&hop).await;
        } else {
            // Unreachable now, but its last forward may have carried a voucher for `done`.
            self.count_acknowledged(&hop);
        }
        self.failovers += 1;
        if self.failovers > cfg.max_failovers {
            return Err(Error::TooManyFailures { failovers: self.failovers, last: f.to_string() });
        }
        Ok(())
    }

    /// Closes a session the route no longer uses, acknowledging what it computed.
    async fn close_quietly(&self, hop: &Hop<T::WorkerId>) {
        if hop.info.is_some() {
            let req = StageRequest::Close { session: hop.session, voucher: self.voucher(hop) };
            self.count_acknowledged(hop);
            let _ = call(self.gw, &hop.worker.id, req).await;
        }
    }

    /// The client's signature over the voucher for everything `hop` returned so far: `None`
    /// without a job or a client key, or before the first position.
    fn voucher(&self, hop: &Hop<T::WorkerId>) -> Option<Signature> {
        let (job, client) = (self.job?, self.gw.config.client.as_ref()?);
        (hop.done > 0 && !self.gw.config.unsafe_withhold_vouchers)
            .then(|| self.voucher_of(hop, job).sign(client, &self.gw.config.genesis).signature)
    }

    fn voucher_of(&self, hop: &Hop<T::WorkerId>, job: JobId) -> Voucher {
        Voucher {
            job,
            session: hop.session,
            worker: hop.worker.account.clone(),
            layers: (hop.worker.layers.start, hop.worker.layers.end),
            positions: hop.done,
            trace: hop.trace,
        }
    }

    /// Counts `hop`'s acknowledged work once its session ends.
    fn count_acknowledged(&self, hop: &Hop<T::WorkerId>) {
        if self.job.is_some() && self.gw.config.client.is_some() {
            let layers = u64::from(hop.worker.layers.end.saturating_sub(hop.worker.layers.start));
            self.acknowledged.fetch_add(layers * u64::from(hop.done), Ordering::Relaxed);
        }
    }

    /// Closes every stage and checks what each committed to; a stage whose commitment does not
    /// check out is banned when `ban` is set.
    async fn close_all(
        &mut self,
        ban: bool,
    ) -> (Vec<StageReceipt<T::WorkerId>>, Vec<RejectedReceipt<T::WorkerId>>) {
        let mut receipts = Vec::new();
        let mut rejected = Vec::new();
        for i in 0..self.route.len() {
            let hop = &self.route[i];
            let req = StageRequest::Close { session: hop.session, voucher: self.voucher(hop) };
            self.count_acknowledged(hop);
            let checked = match call(self.gw, &hop.worker.id, req).await {
                Ok(StageResponse::Closed(c)) => {
                    self.check(hop, &c).map(|recomputed| (c, recomputed))
                }
                Ok(other) => Err(unexpected(other).to_string()),
                Err(f) => Err(f.to_string()),
            };
            match checked {
                Ok((c, root_recomputed)) => receipts.push(StageReceipt {
                    worker: hop.worker.id.clone(),
                    layers: hop.worker.layers.clone(),
                    positions: c.positions,
                    root: c.root,
                    root_recomputed,
                    claim: c.claim,
                }),
                Err(reason) => {
                    tracing::warn!(target: TARGET, worker = ?hop.worker.id, %reason,
                        "stage's commitment rejected");
                    if ban {
                        let cfg = &self.gw.config;
                        self.gw.bans().ban(hop.worker.id.clone(), cfg.ban_duration, Instant::now());
                    }
                    rejected.push(RejectedReceipt {
                        worker: hop.worker.id.clone(),
                        layers: hop.worker.layers.clone(),
                        reason,
                    });
                }
            }
        }
        (receipts, rejected)
    }

    /// Checks a stage's closure; returns whether its root was recomputed here.
    fn check(&self, hop: &Hop<T::WorkerId>, c: &Closure) -> Result<bool, String> {
        let layers = &hop.worker.layers;
        if c.positions != hop.done {
            return Err(format!(
                "commitment covers {} positions, {} were sent",
                c.positions, hop.done
            ));
        }
        if c.trace != hop.trace {
            return Err("the closure's trace hash is not the one the stage last returned".into());
        }
        let inner = layers.start > 0 && layers.end < self.num_layers;
        if inner {
            let w = self.width.unwrap_or(0) as usize;
            let (ins, outs) = (self.hidden.get(&layers.start), self.hidden.get(&layers.end));
            let (Some(ins), Some(outs)) = (ins, outs) else {
                return Err("gateway lost the stage's activations".into());
            };
            let n = c.positions as usize;
            if ins.len() < n * w || outs.len() < n * w {
                return Err("gateway lost the stage's activations".into());
            }
            let hashes: Vec<_> = (0..n)
                .map(|p| {
                    leaf_hash(p as u32, &ins[p * w..(p + 1) * w], &outs[p * w..(p + 1) * w], &[])
                })
                .collect();
            if Commitment::from_leaf_hashes(&hashes).root != c.root.0 {
                return Err("commitment root does not match the activations exchanged".into());
            }
            if chain_of(&hashes) != c.trace.0 {
                return Err("trace hash does not match the activations exchanged".into());
            }
        }
        let paid = self.job.zip(self.gw.config.client.as_ref());
        match (&c.claim, paid) {
            (None, None) => {}
            (None, Some(_)) if c.positions == 0 => {}
            (None, Some(_)) => return Err("no claim for a paid session".into()),
            (Some(_), None) => return Err("a claim for an unpaid session".into()),
            (Some(claim), Some((job, client))) => {
                if claim.voucher != self.voucher_of(hop, job) {
                    return Err(format!("claim is not the last voucher: {:?}", claim.voucher));
                }
                let client = bitorch_primitives::keys::account_of(client);
                if !claim.verify(&client, &self.gw.config.genesis) {
                    return Err("claim's signature is not the client's".into());
                }
            }
        }
        Ok(inner)
    }
}

async fn call<T: StageTransport>(
    gw: &Gateway<T>,
    worker: &T::WorkerId,
    req: StageRequest,
) -> Result<StageResponse, StageFailure> {
    match tokio::time::timeout(gw.config.call_timeout, gw.transport.call(worker, req)).await {
        Err(_) => Err(TransportError::Timeout.into()),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(resp)) => Ok(resp),
    }
}

fn unexpected(resp: StageResponse) -> StageFailure {
    match resp {
        StageResponse::Busy => StageFailure::Busy,
        StageResponse::Error(e) => StageFailure::Rejected(e),
        other => StageFailure::Unexpected(format!("{other:?}")),
    }
}
