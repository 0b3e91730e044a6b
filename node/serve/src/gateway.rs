//! The node as a paying gateway: a [`Backend`] that routes generations over the workers and
//! pays for them on chain.
//!
//! Per request it plans a route (no route, no job: nothing is escrowed for a request that
//! cannot run), takes the job opened ahead or opens one from the API account, runs the
//! generation through [`Gateway`] and streams its text, then submits the workers' receipts
//! and closes the job (the jobs pallet pays after the challenge window). A generation that
//! fails pays the checked receipts of the stages that worked until then ([`bitorch_compute::Failed`])
//! and refunds the rest of the escrow; all of it when no stage did any work.

use crate::chain::submit_and_wait;
use crate::{u32_of, TARGET};
use bitorch_api::{
    Backend, BackendError, BackendStats, BoxFuture, ChatRequest, Event, Events, FinishReason,
    Finished, ModelInfo, Usage,
};
use bitorch_compute::{
    plan_route, protocol, Gateway, GatewayConfig, GatewayRequest, StageRequest, StageResponse,
    StageTransport, TransportError, WorkerHandle, WorkerInfo,
};
use bitorch_inference::{FinishReason as GenFinish, StopStrings, TextStream, Tokenizer};
use bitorch_network::{Handle as NetHandle, PeerId};
use bitorch_primitives::{keys::account_of, AccountId, Balance, Pair, H256};
use bitorch_runtime::{
    jobs::{self, JobId, SignedReceipt},
    Call,
};
use bitorch_service::Handle;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Mutex};

/// How the gateway addresses a worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// This node's own worker.
    Local,
    /// Another node's worker, over `/bitorch/stage/1`.
    Remote(PeerId),
}

/// The node's [`StageTransport`]: its own worker through its handle, others' over the
/// network.
pub struct NodeTransport {
    local: Option<WorkerHandle>,
    net: Option<NetHandle>,
}

impl StageTransport for NodeTransport {
    type WorkerId = Peer;

    fn call(
        &self,
        worker: &Peer,
        req: StageRequest,
    ) -> impl std::future::Future<Output = Result<StageResponse, TransportError>> + Send {
        let (local, remote) = match worker {
            Peer::Local => (self.local.clone(), None),
            Peer::Remote(peer) => (None, self.net.clone().map(|net| (net, *peer))),
        };
        async move {
            if let Some((net, peer)) = remote {
                if matches!(req, StageRequest::Open { .. }) {
                    tracing::info!(target: TARGET, worker = %peer, "opening a stage session");
                }
                let bytes = net
                    .stage_request(peer, protocol::encode(&req))
                    .await
                    .map_err(|e| TransportError::Unreachable(e.to_string()))?;
                return Ok(protocol::decode_response(&bytes, &protocol::Limits::default())?);
            }
            let h = local.ok_or_else(|| TransportError::Unreachable("no local worker".into()))?;
            h.call(req).await.map_err(|e| TransportError::Unreachable(e.to_string()))
        }
    }
}

/// Who pays: the API account's key, and the price it offers.
pub struct Payer {
    /// The chain.
    pub chain: Handle,
    /// The paying account's key.
    pub key: Pair,
    /// The chain's genesis hash.
    pub genesis: H256,
    /// Price per layer per token.
    pub price: Balance,
    /// Keep one job opened ahead (escrow for a whole context) for the next request, so that
    /// a request does not wait for its job to be included before its first token.
    pub job_ahead: bool,
}

/// How often the job opened ahead is checked for age.
const AHEAD_CHECK: Duration = Duration::from_secs(2);

/// A job opened ahead of the request that will use it.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    id: JobId,
    /// Positions its escrow covers.
    positions: u32,
    /// Block after which it takes no receipts.
    deadline: u64,
    /// Blocks from opening to the deadline.
    lifetime: u64,
}

/// How long the workers found in the DHT are reused before a new lookup.
const WORKERS_TTL: Duration = Duration::from_secs(3);

struct Inner {
    gateway: Gateway<NodeTransport>,
    /// This node's worker.
    local: Option<(WorkerHandle, WorkerInfo<Peer>)>,
    /// The workers last found in the DHT, and when.
    found: Mutex<Option<(std::time::Instant, Vec<WorkerInfo<Peer>>)>>,
    /// The network, where the other workers are found.
    net: Option<NetHandle>,
    model: H256,
    num_layers: u32,
    context_length: u32,
    tokenizer: Tokenizer,
    info: ModelInfo,
    payer: Payer,
    /// One job opening at a time per account, so the new job is known to be ours.
    opening: Mutex<()>,
    /// The job opened ahead for the next request ([`Payer::job_ahead`]).
    ahead: Mutex<Option<Ahead>>,
    /// Told when a request takes the job opened ahead.
    taken: tokio::sync::Notify,
    /// The job counters of [`BackendStats`] (locked briefly, never across an await).
    counts: std::sync::Mutex<BackendStats>,
}

/// A [`Backend`] running generations through the [`Gateway`] and paying for them on chain.
#[derive(Clone)]
pub struct GatewayBackend(Arc<Inner>);

/// What [`GatewayBackend::new`] needs.
pub struct GatewayOptions {
    /// The model id on chain.
    pub model: H256,
    /// The name requests use.
    pub name: String,
    /// Its layers.
    pub num_layers: u32,
    /// Its context window.
    pub context_length: u32,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// This node's worker, if it serves one.
    pub local: Option<(WorkerHandle, WorkerInfo<Peer>)>,
    /// The network, if the node has one: the workers announced there serve too.
    pub net: Option<NetHandle>,
    /// Who pays.
    pub payer: Payer,
}

impl GatewayBackend {
    /// A backend for one model.
    pub fn new(o: GatewayOptions) -> Self {
        let created =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let handle = o.local.as_ref().map(|(h, _)| h.clone());
        let transport = NodeTransport { local: handle, net: o.net.clone() };
        // The API account is the jobs' client: it signs each paid session's authorization.
        let config = GatewayConfig {
            client: Some(o.payer.key.clone()),
            ..GatewayConfig::new(o.payer.genesis)
        };
        let gateway = Gateway::new(transport, config);
        Self(Arc::new(Inner {
            gateway,
            local: o.local,
            found: Mutex::new(None),
            net: o.net,
            model: o.model,
            num_layers: o.num_layers,
            context_length: o.context_length,
            tokenizer: o.tokenizer,
            info: ModelInfo {
                id: o.name,
                owned_by: "bitorch".into(),
                context_length: o.context_length,
                created,
            },
            payer: o.payer,
            opening: Mutex::new(()),
            ahead: Mutex::new(None),
            taken: tokio::sync::Notify::new(),
            counts: std::sync::Mutex::new(BackendStats::default()),
        }))
    }
}

impl GatewayBackend {
    /// Opens the first job ahead (with [`Payer::job_ahead`]), so that even the first request
    /// does not wait for a block.
    pub fn prepare(&self) {
        if self.0.payer.job_ahead {
            tokio::spawn(self.0.clone().keep_ahead());
        }
    }

    /// Waits, at most `within`, until the first job opened ahead is on chain (at once without
    /// [`Payer::job_ahead`]); returns whether it is. A node opens its API after this, so that
    /// its first request does not wait for blocks: measured on the dev node, the first
    /// request's time to first token was 1.7 s when it came before the job ahead (it waited for
    /// that job's block, then for its own), 0.14 s after.
    pub async fn ready(&self, within: Duration) -> bool {
        if !self.0.payer.job_ahead {
            return true;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.0.ahead.lock().await.is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut BackendStats)) {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The counters, with the gateway's own (generations, failovers, sessions per worker).
    async fn stats(&self) -> BackendStats {
        let mut out = self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.ahead_job = self.ahead.lock().await.map(|a| a.id);
        let g = self.gateway.stats();
        out.generations = g.generations;
        out.failovers = g.failovers;
        out.sessions_opened = g
            .sessions_opened
            .into_iter()
            .map(|(peer, n)| {
                let name = match peer {
                    Peer::Local => "local".to_string(),
                    Peer::Remote(p) => p.to_string(),
                };
                (name, n)
            })
            .collect();
        out
    }

    fn me(&self) -> AccountId {
        account_of(&self.payer.key)
    }

    /// The workers to route over: this node's (with its free sessions now) and those
    /// announced in the DHT (looked up at most every [`WORKERS_TTL`]).
    async fn workers(&self) -> Vec<WorkerInfo<Peer>> {
        let mut out = Vec::new();
        if let Some((handle, info)) = &self.local {
            let mut info = info.clone();
            if let Ok(stats) = handle.stats().await {
                info.capacity = u32_of(stats.free());
                info.tokens_per_sec = stats.tokens_per_sec.unwrap_or(info.tokens_per_sec);
            }
            out.push(info);
        }
        out.extend(self.remote_workers().await);
        tracing::debug!(target: TARGET, workers = out.len(), "workers for the route");
        out
    }

    async fn remote_workers(&self) -> Vec<WorkerInfo<Peer>> {
        let Some(net) = &self.net else { return Vec::new() };
        let mut found = self.found.lock().await;
        if let Some((at, workers)) = &*found {
            if at.elapsed() < WORKERS_TTL {
                return workers.clone();
            }
        }
        let announced = match net.find_workers(self.model).await {
            Ok(announced) => announced,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %e, "finding workers in the DHT failed");
                return Vec::new();
            }
        };
        let me = net.local_peer_id();
        let workers: Vec<_> = announced
            .into_iter()
            .filter(|(peer, _)| *peer != me)
            .map(|(peer, a)| WorkerInfo {
                id: Peer::Remote(peer),
                account: AccountId::new(a.account),
                model: a.model,
                layers: a.layer_start..a.layer_end,
                capacity: a.free,
                tokens_per_sec: f64::from(a.tokens_per_sec),
            })
            .collect();
        *found = Some((std::time::Instant::now(), workers.clone()));
        workers
    }

    async fn submit(&self, calls: Vec<Call>) -> Result<(), String> {
        submit_and_wait(&self.payer.chain, &self.payer.key, calls).await
    }

    /// Opens a job for `positions` token positions and returns it, with its id, once it is on
    /// chain.
    async fn open_job(&self, positions: u32) -> Result<(JobId, jobs::Job), BackendError> {
        let _one = self.opening.lock().await;
        let me = self.me();
        let pay = |e: String| BackendError::Payment(format!("opening the job on chain: {e}"));
        let before = self.payer.chain.next_job_id().await.map_err(|e| pay(e.to_string()))?;
        let call = Call::Jobs(jobs::Call::OpenJob {
            model: self.model,
            max_tokens: positions,
            price_per_layer_token: self.payer.price,
        });
        self.submit(vec![call]).await.map_err(pay)?;
        let found =
            self.payer.chain.newest_open_job(me, before).await.map_err(|e| pay(e.to_string()))?;
        found.ok_or_else(|| {
            pay("the job was not opened (is the account's free balance enough for the escrow?)"
                .into())
        })
    }

    /// The job opened ahead, if it covers `positions` and has at least half its life left
    /// (a generation must end before the deadline for its receipts to count).
    async fn take_ahead(&self, positions: u32) -> Option<JobId> {
        let mut ahead = self.ahead.lock().await;
        let a = (*ahead)?;
        let best = self.payer.chain.best().await.ok()?.number;
        if a.positions >= positions && best.saturating_add(a.lifetime / 2) < a.deadline {
            *ahead = None;
            self.count(|c| c.jobs_ahead_used += 1);
            self.taken.notify_one();
            return Some(a.id);
        }
        None
    }

    /// Opens a job for a whole context, to be used by a later request.
    async fn open_ahead(&self) -> Result<Ahead, BackendError> {
        let (id, job) = self.open_job(self.context_length).await?;
        self.count(|c| c.jobs_ahead_opened += 1);
        let lifetime = job.deadline.saturating_sub(job.opened_at);
        Ok(Ahead { id, positions: job.max_tokens, deadline: job.deadline, lifetime })
    }

    /// Keeps a job opened ahead ([`Payer::job_ahead`]) for as long as the node runs: opens
    /// one when there is none (retried with back-off: early on the transaction may not reach a
    /// proposer yet), and replaces one at half its life, closing it for a refund, so that an
    /// idle gateway still has a usable one.
    async fn keep_ahead(self: Arc<Self>) {
        let mut wait = Duration::from_secs(1);
        loop {
            let current = *self.ahead.lock().await;
            let Some(a) = current else {
                match self.open_ahead().await {
                    Ok(a) => {
                        tracing::info!(target: TARGET, job = a.id, deadline = a.deadline,
                            "opened a job ahead for the next request");
                        *self.ahead.lock().await = Some(a);
                        wait = Duration::from_secs(1);
                    }
                    Err(e) => {
                        tracing::warn!(target: TARGET, error = %e, retry_in_secs = wait.as_secs(),
                            "cannot open a job ahead");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
                continue;
            };
            tokio::select! {
                _ = self.taken.notified() => continue,
                _ = tokio::time::sleep(AHEAD_CHECK) => {}
            }
            let best = self.payer.chain.best().await.map(|h| h.number).unwrap_or(0);
            if best.saturating_add(a.lifetime / 2) >= a.deadline {
                let mut ahead = self.ahead.lock().await;
                if ahead.map(|x| x.id) == Some(a.id) {
                    *ahead = None;
                    drop(ahead);
                    tracing::info!(target: TARGET, job = a.id, "replacing the job opened ahead");
                    self.count(|c| {
                        c.jobs_ahead_replaced += 1;
                        c.last_replaced_job = Some(a.id);
                    });
                    self.settle(a.id, Vec::new()).await;
                }
            }
        }
    }

    /// Submits the receipts and closes the job.
    async fn settle(&self, job: JobId, receipts: Vec<SignedReceipt>) {
        let n = receipts.len();
        let mut calls: Vec<Call> = receipts
            .into_iter()
            .map(|receipt| Call::Jobs(jobs::Call::SubmitReceipt { receipt }))
            .collect();
        calls.push(Call::Jobs(jobs::Call::CloseJob { job }));
        match self.submit(calls).await {
            Ok(()) => tracing::info!(target: TARGET, job, receipts = n, "job closed"),
            Err(e) => tracing::warn!(target: TARGET, job, error = %e, "closing the job failed"),
        }
    }

    async fn start(self: Arc<Self>, req: ChatRequest) -> Result<Events, BackendError> {
        req.validate()?;
        if req.model != self.info.id {
            return Err(BackendError::UnknownModel { model: req.model });
        }
        if req.payer != bitorch_api::Payer::Node {
            return Err(BackendError::Payment(
                "this node pays only from its API account (--api-account)".into(),
            ));
        }
        let prompt = self
            .tokenizer
            .encode(&req.render(&self.tokenizer, &self.info.id)?)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let max_new = req.room_after(prompt.len(), self.context_length as usize)?;
        let positions = u32_of(prompt.len() + max_new);
        // No route, no job: nothing is escrowed for a request that cannot run.
        let workers = self.workers().await;
        if let Err(e) = plan_route(self.num_layers, &workers, |id| self.gateway.is_banned(id)) {
            tracing::warn!(target: TARGET, error = %e, "no route for the request");
            self.count(|c| c.refused_no_route += 1);
            return Err(BackendError::Unavailable(e.to_string()));
        }
        let job = match self.take_ahead(positions).await {
            Some(job) => {
                tracing::info!(target: TARGET, job, prompt = prompt.len(), max_new,
                    "using the job opened ahead");
                job
            }
            None => {
                let (job, _) = self.open_job(positions).await?;
                self.count(|c| c.jobs_opened += 1);
                tracing::info!(target: TARGET, job, prompt = prompt.len(), max_new, "job opened");
                job
            }
        };

        let greq = GatewayRequest {
            model: self.model,
            num_layers: self.num_layers,
            prompt,
            max_tokens: max_new,
            sampling: req.sampling(),
            eos: self.tokenizer.eos().to_vec(),
            job: Some(job),
        };
        // At most one text event per token plus the tail and the end: never full.
        let (tx, rx) = mpsc::channel(max_new.saturating_add(2));
        let this = self.clone();
        tokio::spawn(async move { this.run(greq, req.stop, tx, workers).await });
        Ok(rx)
    }

    async fn run(
        &self,
        greq: GatewayRequest,
        stop: Vec<String>,
        tx: mpsc::Sender<Event>,
        workers: Vec<WorkerInfo<Peer>>,
    ) {
        let job = greq.job.unwrap_or_default();
        let mut stream = TextStream::new();
        let mut stops = StopStrings::new(&stop);
        let mut stopped = false;
        let mut failed = None;
        let eos = greq.eos.clone();
        let result = self
            .gateway
            .generate(&workers, &greq, |tok| {
                if eos.contains(&tok) {
                    return ControlFlow::Continue(());
                }
                match stream.push(&self.tokenizer, tok) {
                    Ok(Some(piece)) => {
                        let (show, hit) = stops.push(&piece);
                        if !show.is_empty() {
                            let _ = tx.try_send(Event::Text(show));
                        }
                        stopped = hit;
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e.to_string()),
                }
                if stopped || failed.is_some() || tx.is_closed() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        let gen = match (result, failed) {
            (Ok(gen), None) => gen,
            (Ok(gen), Some(e)) => {
                let _ = tx.try_send(Event::Error(BackendError::Internal(e)));
                let receipts = gen.receipts.iter().filter_map(|r| r.receipt.clone()).collect();
                self.settle(job, receipts).await;
                return;
            }
            (Err(failed), _) => {
                let e = failed.error;
                tracing::warn!(target: TARGET, job, error = %e, paid_stages = failed.receipts.len(),
                    "generation failed");
                let err = match &e {
                    bitorch_compute::Error::Plan(_)
                    | bitorch_compute::Error::TooManyFailures { .. } => {
                        BackendError::Unavailable(e.to_string())
                    }
                    bitorch_compute::Error::PromptTooLong { .. }
                    | bitorch_compute::Error::EmptyPrompt => {
                        BackendError::bad_request(e.to_string())
                    }
                    _ => BackendError::Internal(e.to_string()),
                };
                let _ = tx.try_send(Event::Error(err));
                // The stages that worked until the failure are paid for what they did; the rest
                // of the escrow is refunded (all of it when none did any work).
                let receipts = failed.receipts.iter().filter_map(|r| r.receipt.clone()).collect();
                self.settle(job, receipts).await;
                return;
            }
        };
        let cancelled = gen.finish == GenFinish::Cancelled && !stopped;
        if !stopped && !cancelled {
            let tail = stream.finish(&self.tokenizer).unwrap_or_default();
            let (mut show, hit) = stops.push(&tail);
            if !hit {
                show.push_str(&stops.finish());
            }
            if !show.is_empty() {
                let _ = tx.try_send(Event::Text(show));
            }
            stopped = hit;
        }
        let finish_reason = match gen.finish {
            _ if stopped => FinishReason::Stop,
            GenFinish::Eos | GenFinish::Stop => FinishReason::Stop,
            GenFinish::Length | GenFinish::ContextFull => FinishReason::Length,
            GenFinish::Cancelled => FinishReason::Cancelled,
        };
        let _ = tx.try_send(Event::Finished(Finished {
            finish_reason,
            usage: Usage {
                prompt_tokens: u32_of(gen.prompt_tokens.len()),
                completion_tokens: u32_of(gen.tokens.len()),
            },
        }));
        for r in &gen.rejected {
            tracing::warn!(target: TARGET, job, worker = ?r.worker, reason = %r.reason,
                "receipt rejected");
        }
        let receipts: Vec<_> = gen.receipts.iter().filter_map(|r| r.receipt.clone()).collect();
        tracing::info!(target: TARGET, job, tokens = gen.tokens.len(),
            receipts = receipts.len(), secs = gen.prompt_secs + gen.generate_secs,
            "generation done");
        self.settle(job, receipts).await;
    }
}

impl Backend for GatewayBackend {
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, BackendError>> {
        Box::pin(async move { Ok(vec![self.0.info.clone()]) })
    }

    fn generate(&self, request: ChatRequest) -> BoxFuture<'_, Result<Events, BackendError>> {
        Box::pin(self.0.clone().start(request))
    }

    fn stats(&self) -> BoxFuture<'_, BackendStats> {
        Box::pin(self.0.stats())
    }
}
