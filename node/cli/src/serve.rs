//! `bitorch node --serve-model`: the node as a worker and a paying gateway.
//!
//! - [`load`] loads a GGUF model's stage (weights dequantized to f32, the engine's default) and
//!   its tokenizer, and describes the model as a [`Manifest`].
//! - [`register`] finds the model on chain by its manifest hash, or registers it from the
//!   worker key and waits until it is included; the registry id is the model id workers serve
//!   and jobs name.
//! - [`spawn_worker`] runs the stage as a [`Worker`] actor signing receipts with the worker key.
//! - [`stage_handler`] answers peers' `/bitorch/stage/1` requests with that worker, and
//!   [`announce`] announces it in the DHT (model id, layers, capacity, throughput, account).
//! - [`GatewayBackend`] implements [`Backend`] with a [`Gateway`] over the node's workers: its
//!   own worker, called directly, and the workers the DHT announces for the model, called over
//!   `/bitorch/stage/1` ([`NodeTransport`]). Per request it opens a job on chain from the API account (escrow), runs the generation and
//!   streams its text, then submits the workers' receipts and closes the job (the jobs pallet
//!   pays after the challenge window). A generation that fails closes the job with no receipts,
//!   which refunds the escrow.
//!
//! What is still simple: the manifest has one chunk for all layers whose root is the blake2-256
//! of the whole GGUF file (also the tokenizer hash, since the tokenizer is in its metadata);
//! chunked distribution replaces it. The announced throughput is a constant, not measured.

use anyhow::{anyhow, bail, Context as _, Result};
use bitorch_api::{
    Backend, BackendError, BoxFuture, ChatRequest, Event, Events, FinishReason, Finished,
    ModelInfo, Usage,
};
use bitorch_compute::{
    protocol, worker, Gateway, GatewayConfig, GatewayRequest, StageRequest, StageResponse,
    StageTransport, TransportError, Worker, WorkerConfig, WorkerHandle, WorkerInfo,
};
use bitorch_inference::{
    ChatMessage, Checkpoint, FinishReason as GenFinish, GgufWeights, LoadOptions, SamplingParams,
    Stage, StopStrings, TextStream, Tokenizer,
};
use bitorch_network::{Handle as NetHandle, PeerId, WorkerAnnouncement};
use bitorch_primitives::{blake2_256, keys::account_of, AccountId, Balance, Pair, H256};
use bitorch_runtime::{
    jobs::{self, JobId, SignedReceipt},
    models::{self, Chunk, ChunkKind, HyperParams, Manifest, ModelStatus},
    Balances, Call, Jobs, Models, UncheckedExtrinsic,
};
use bitorch_service::{p2p::StageHandler, Handle, TxStatus};
use parity_scale_codec::Encode;
use std::ops::{ControlFlow, Range};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Mutex};

const TARGET: &str = "serve";
/// Longest wait for a transaction to be included.
const INCLUSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Blocks a transaction of ours stays valid.
const MORTALITY: u64 = 64;
/// Piece size written into the manifest's chunk.
const PIECE_SIZE: u32 = 1 << 20;
/// The throughput a worker announces and the gateway assumes for its own worker, tokens per
/// second (not measured yet).
const TOKENS_PER_SEC: u32 = 10;

/// A model loaded to serve: one stage, its tokenizer and its manifest.
pub struct Loaded {
    /// The stage this node serves.
    pub stage: Stage,
    /// The model's tokenizer (from the GGUF metadata).
    pub tokenizer: Tokenizer,
    /// The model's manifest.
    pub manifest: Manifest,
    /// Its context window.
    pub context_length: u32,
}

/// Parses `--layers A..B` for a model of `n` layers (all of them when `None`).
pub fn parse_layers(s: Option<&str>, n: usize) -> Result<Range<usize>> {
    let Some(s) = s else { return Ok(0..n) };
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| anyhow!("--layers {s}: expected START..END, e.g. 0..10"))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().with_context(|| format!("--layers {s}: bad start"))?,
        b.trim().parse().with_context(|| format!("--layers {s}: bad end"))?,
    );
    if a >= b || b > n {
        bail!("--layers {s}: the model has {n} layers; pick START..END with START < END <= {n}");
    }
    Ok(a..b)
}

fn u32_of(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// Loads layers `layers` (all when `None`) of the GGUF model at `path`.
pub fn load(path: &Path, layers: Option<&str>) -> Result<Loaded> {
    let ckpt = Checkpoint::open(path).with_context(|| format!("opening {}", path.display()))?;
    let Checkpoint::Gguf(g) = &ckpt else {
        bail!("--serve-model takes a GGUF file for now; {} is not one", path.display());
    };
    let cfg = g.config.clone();
    let range = parse_layers(layers, cfg.num_layers)?;
    let tokenizer = Tokenizer::from_gguf(&g.content)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file_hash = blake2_256(&bytes);
    // The file's name is what the user chose; GGUF's `general.name` is often a training-run id.
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .or_else(|| {
            g.content.metadata.get("general.name").and_then(|v| v.to_string().ok().cloned())
        })
        .unwrap_or_else(|| "model".into());
    let mut name = name.into_bytes();
    name.truncate(models::MAX_NAME_LEN);
    let manifest = Manifest {
        name,
        architecture: b"llama".to_vec(),
        hyper: HyperParams {
            hidden_size: u32_of(cfg.hidden_size),
            intermediate_size: u32_of(cfg.intermediate_size),
            num_attention_heads: u32_of(cfg.num_heads),
            num_kv_heads: u32_of(cfg.num_kv_heads),
            vocab_size: u32_of(cfg.vocab_size),
            context_length: u32_of(cfg.context_length),
            rope_theta: (cfg.rope_theta as u32).max(1),
            rms_norm_eps_e9: ((cfg.rms_norm_eps * 1e9).round() as u32).max(1),
        },
        layer_count: u32_of(cfg.num_layers),
        tokenizer_hash: file_hash,
        chunks: vec![Chunk {
            kind: ChunkKind::Layers { start: 0, end: u32_of(cfg.num_layers) },
            root: file_hash,
            size: bytes.len() as u64,
            piece_size: PIECE_SIZE,
        }],
    };
    manifest.validate().map_err(|e| anyhow!("the model's manifest is invalid: {e:?}"))?;
    drop(bytes);
    let options = LoadOptions { gguf: GgufWeights::Dequantized, ..Default::default() };
    let stage = Stage::load(&ckpt, range, &options)?;
    Ok(Loaded { stage, tokenizer, manifest, context_length: u32_of(cfg.context_length) })
}

/// Signs `calls` from `key` with consecutive nonces, submits them, and waits until all are in
/// a block.
pub async fn submit_and_wait(
    chain: &Handle,
    key: &Pair,
    genesis: H256,
    calls: Vec<Call>,
) -> Result<(), String> {
    let mut events = chain.subscribe();
    let key2 = key.clone();
    let hashes = chain
        .with(move |s| {
            let me = account_of(&key2);
            let mut out = Vec::new();
            for call in calls {
                let nonce = Balances::nonce(s.chain.state(), &me).unwrap_or(0);
                let nonce = s.pool.next_nonce(&me, nonce);
                let valid_until = s.chain.best().number + MORTALITY;
                let xt = UncheckedExtrinsic::sign(&key2, &genesis, nonce, 0, valid_until, call);
                out.push(s.submit(&xt.encode()).map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(out)
        })
        .await
        .map_err(|e| e.to_string())??;
    let mut pending: Vec<H256> = hashes;
    let wait = async {
        while !pending.is_empty() {
            match events.recv().await {
                Ok(bitorch_service::Event::Tx(h, status)) if pending.contains(&h) => match status {
                    TxStatus::InBlock(_) | TxStatus::Finalized(_) => pending.retain(|x| *x != h),
                    TxStatus::Invalid(e) => return Err(format!("transaction {h} invalid: {e}")),
                    TxStatus::Dropped => return Err(format!("transaction {h} was dropped")),
                    TxStatus::Ready | TxStatus::Future => {}
                },
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err("the chain service stopped".into())
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(INCLUSION_TIMEOUT, wait)
        .await
        .map_err(|_| "timed out waiting for inclusion".to_string())?
}

/// The id of the active model with this manifest on chain, registering it from `key` first if
/// there is none.
///
/// Workers started together may each find none and each register (ids differ by owner); the
/// registry keeps ids in registration order and each looks again after its own registration is
/// included, so all of them serve the first one registered, and find each other by its id.
pub async fn register(
    chain: &Handle,
    key: &Pair,
    genesis: H256,
    manifest: &Manifest,
) -> Result<H256> {
    let hash = manifest.hash();
    let find = move |s: &mut bitorch_service::service::State| -> Option<H256> {
        let st = s.chain.state();
        Models::model_ids(st).ok()?.into_iter().find(|id| {
            matches!(Models::model(st, id), Ok(Some(r))
                if r.manifest_hash == hash && r.status == ModelStatus::Active)
        })
    };
    if let Some(id) = chain.with(find).await? {
        tracing::info!(target: TARGET, model = %id, "model already registered");
        return Ok(id);
    }
    let call = Call::Models(models::Call::Register { manifest: manifest.clone() });
    submit_and_wait(chain, key, genesis, vec![call])
        .await
        .map_err(|e| anyhow!("registering the model: {e}"))?;
    let id = chain.with(find).await?.ok_or_else(|| {
        anyhow!("the model registration was included but the model is not on chain")
    })?;
    tracing::info!(target: TARGET, model = %id, owner = %account_of(key), "registered the model");
    Ok(id)
}

/// Runs `stage` as a worker for model `model`, signing receipts with `key`.
pub fn spawn_worker(
    stage: Stage,
    key: Pair,
    model: H256,
    genesis: H256,
) -> Result<(WorkerHandle, WorkerInfo<Peer>)> {
    let w = Worker::new(stage, key, WorkerConfig::new(model, genesis));
    let (layers, account) = (w.info().layers, w.account());
    let capacity = u32_of(w.config().max_sessions);
    // The thread stops when every handle is dropped.
    let (handle, _thread) = worker::spawn(w, 64)?;
    let info = WorkerInfo {
        id: Peer::Local,
        account,
        model,
        layers: layers.0..layers.1,
        capacity,
        tokens_per_sec: f64::from(TOKENS_PER_SEC),
    };
    Ok((handle, info))
}

/// A [`StageHandler`] answering peers' stage requests with the worker set in `worker`;
/// requests are refused until it is set (while the model is being registered).
pub fn stage_handler(worker: Arc<OnceLock<WorkerHandle>>) -> StageHandler {
    Arc::new(move |peer, bytes| {
        let worker = worker.get().cloned();
        Box::pin(async move {
            match worker?.call_bytes(bytes).await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    tracing::warn!(target: TARGET, %peer, error = %e, "the worker stopped");
                    None
                }
            }
        })
    })
}

/// Announces this node's worker `info` in the DHT (the network keeps it fresh).
pub async fn announce(net: &NetHandle, info: &WorkerInfo<Peer>) -> Result<()> {
    let account: &[u8; 32] = info.account.as_ref();
    net.announce_worker(WorkerAnnouncement {
        model: info.model.0,
        layer_start: info.layers.start,
        layer_end: info.layers.end,
        capacity: info.capacity,
        free: info.capacity,
        tokens_per_sec: TOKENS_PER_SEC,
        account: *account,
        expires_at_ms: 0,
    })
    .await
    .context("announcing the worker in the DHT")
}

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
}

struct Inner {
    gateway: Gateway<NodeTransport>,
    /// This node's worker.
    local: Option<WorkerInfo<Peer>>,
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
        let (handle, local) = match o.local {
            Some((h, w)) => (Some(h), Some(w)),
            None => (None, None),
        };
        let transport = NodeTransport { local: handle, net: o.net.clone() };
        let gateway = Gateway::new(transport, GatewayConfig::new(o.payer.genesis));
        Self(Arc::new(Inner {
            gateway,
            local,
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
        }))
    }
}

impl Inner {
    fn me(&self) -> AccountId {
        account_of(&self.payer.key)
    }

    /// The workers to route over: this node's and those announced in the DHT.
    async fn workers(&self) -> Vec<WorkerInfo<Peer>> {
        let mut out: Vec<_> = self.local.iter().cloned().collect();
        let Some(net) = &self.net else { return out };
        let found = match net.find_workers(self.model.0).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %e, "finding workers in the DHT failed");
                return out;
            }
        };
        let me = net.local_peer_id();
        out.extend(found.into_iter().filter(|(peer, _)| *peer != me).map(|(peer, a)| WorkerInfo {
            id: Peer::Remote(peer),
            account: AccountId::new(a.account),
            model: H256(a.model),
            layers: a.layer_start..a.layer_end,
            capacity: a.free,
            tokens_per_sec: f64::from(a.tokens_per_sec),
        }));
        tracing::debug!(target: TARGET, workers = out.len(), "workers for the route");
        out
    }

    async fn submit(&self, calls: Vec<Call>) -> Result<(), String> {
        let p = &self.payer;
        submit_and_wait(&p.chain, &p.key, p.genesis, calls).await
    }

    /// Opens a job for `positions` token positions and returns its id once it is on chain.
    async fn open_job(&self, positions: u32) -> Result<JobId, BackendError> {
        let _one = self.opening.lock().await;
        let me = self.me();
        let pay = |e: String| BackendError::Payment(format!("opening the job on chain: {e}"));
        let before = self
            .payer
            .chain
            .with(|s| Jobs::next_job_id(s.chain.state()))
            .await
            .map_err(|e| pay(e.to_string()))?
            .map_err(|e| pay(e.to_string()))?;
        let call = Call::Jobs(jobs::Call::OpenJob {
            model: self.model,
            max_tokens: positions,
            price_per_layer_token: self.payer.price,
        });
        self.submit(vec![call]).await.map_err(pay)?;
        let found = self
            .payer
            .chain
            .with(move |s| {
                let st = s.chain.state();
                let next = Jobs::next_job_id(st).unwrap_or(before);
                (before..next).rev().find(|id| {
                    matches!(Jobs::job(st, *id), Ok(Some(j))
                        if j.client == me && j.status == jobs::JobStatus::Open)
                })
            })
            .await
            .map_err(|e| pay(e.to_string()))?;
        found.ok_or_else(|| {
            pay("the job was not opened (is the account's free balance enough for the escrow?)"
                .into())
        })
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
        let template = self.tokenizer.chat_template().ok_or_else(|| {
            BackendError::Internal("the model has no chat template we support (ChatML)".into())
        })?;
        let messages: Vec<ChatMessage<'_>> =
            req.messages.iter().map(|m| ChatMessage::new(m.role.as_str(), &m.content)).collect();
        let prompt = self
            .tokenizer
            .encode(&template.render(&messages))
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let context = self.context_length as usize;
        if prompt.len() >= context {
            return Err(BackendError::bad_param(
                "messages",
                format!(
                    "the conversation is {} tokens, but the model's context is {context}; \
                     shorten it",
                    prompt.len()
                ),
            ));
        }
        let max_new = req.max_tokens.map_or(usize::MAX, |m| m as usize).min(context - prompt.len());
        let positions = u32_of(prompt.len() + max_new);
        let job = self.open_job(positions).await?;
        tracing::info!(target: TARGET, job, prompt = prompt.len(), max_new, "job opened");
        let greq = GatewayRequest {
            model: self.model,
            num_layers: self.num_layers,
            prompt,
            max_tokens: max_new,
            sampling: SamplingParams {
                temperature: req.temperature,
                top_p: (req.top_p < 1.0).then_some(req.top_p),
                seed: req.seed.unwrap_or_else(rand::random),
                ..SamplingParams::greedy()
            },
            eos: self.tokenizer.eos().to_vec(),
            job: Some(job),
        };
        // At most one text event per token plus the tail and the end: never full.
        let (tx, rx) = mpsc::channel(max_new.saturating_add(2));
        let this = self.clone();
        tokio::spawn(async move { this.run(greq, req.stop, tx).await });
        Ok(rx)
    }

    async fn run(&self, greq: GatewayRequest, stop: Vec<String>, tx: mpsc::Sender<Event>) {
        let job = greq.job.unwrap_or_default();
        let mut stream = TextStream::new();
        let mut stops = StopStrings::new(&stop);
        let mut stopped = false;
        let mut failed = None;
        let eos = greq.eos.clone();
        let workers = self.workers().await;
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
            (Err(e), _) => {
                tracing::warn!(target: TARGET, job, error = %e, "generation failed");
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
                // No receipts: closing refunds the escrow.
                self.settle(job, Vec::new()).await;
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
}

#[cfg(test)]
mod tests {
    use super::parse_layers;

    #[test]
    fn layers_parse_and_check_bounds() {
        assert_eq!(parse_layers(None, 30).unwrap(), 0..30);
        assert_eq!(parse_layers(Some("10..20"), 30).unwrap(), 10..20);
        assert!(parse_layers(Some("20..10"), 30).is_err());
        assert!(parse_layers(Some("0..31"), 30).is_err());
        assert!(parse_layers(Some("5"), 30).is_err());
    }
}
