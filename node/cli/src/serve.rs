//! `bitorch node --serve-model`: the node as a worker and a paying gateway.
//!
//! - [`describe`] opens a GGUF model, its tokenizer, and describes it as a [`Manifest`];
//!   [`Described::load_stage`] loads a stage (weights dequantized to f32, the engine's
//!   default).
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
//! The announcement carries the worker's free sessions and its measured speed
//! ([`keep_announced`]); `--layers auto` picks the range the network serves least
//! ([`least_served`]).
//!
//! What is still simple: the manifest has one chunk for all layers whose root is the blake2-256
//! of the whole GGUF file (also the tokenizer hash, since the tokenizer is in its metadata);
//! chunked distribution replaces it.

use anyhow::{anyhow, bail, Context as _, Result};
use bitorch_api::{
    Backend, BackendError, BoxFuture, ChatRequest, Event, Events, FinishReason, Finished,
    ModelInfo, Usage,
};
use bitorch_compute::{
    plan_route, protocol, worker, Gateway, GatewayConfig, GatewayRequest, StageRequest,
    StageResponse, StageTransport, TransportError, Worker, WorkerConfig, WorkerHandle, WorkerInfo,
    WorkerStats,
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

/// A model opened to serve: its checkpoint, tokenizer and manifest, before a stage is loaded.
pub struct Described {
    ckpt: Checkpoint,
    /// The model's tokenizer (from the GGUF metadata).
    pub tokenizer: Tokenizer,
    /// The model's manifest.
    pub manifest: Manifest,
    /// Its context window.
    pub context_length: u32,
    /// Its layers.
    pub num_layers: u32,
}

/// What `--layers` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerChoice {
    /// These layers.
    Range(Range<usize>),
    /// `auto` (`span` None) or `auto:N`: the range the network serves least, chosen once the
    /// node sees the other workers ([`least_served`]).
    Auto {
        /// How many layers; `None`: fill the largest unserved gap, or all layers.
        span: Option<u32>,
    },
}

/// Parses `--layers` for a model of `n` layers: `START..END`, `auto` or `auto:N` (all layers
/// when `None`).
pub fn parse_layers(s: Option<&str>, n: usize) -> Result<LayerChoice> {
    let Some(s) = s else { return Ok(LayerChoice::Range(0..n)) };
    if let Some(rest) = s.strip_prefix("auto") {
        let span = match rest.strip_prefix(':') {
            None if rest.is_empty() => None,
            None => bail!("--layers {s}: expected auto or auto:N"),
            Some(k) => {
                let k: u32 = k.trim().parse().with_context(|| format!("--layers {s}: bad N"))?;
                if k == 0 || k as usize > n {
                    bail!("--layers {s}: the model has {n} layers; pick 1 <= N <= {n}");
                }
                Some(k)
            }
        };
        return Ok(LayerChoice::Auto { span });
    }
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| anyhow!("--layers {s}: expected START..END (e.g. 0..10), auto or auto:N"))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().with_context(|| format!("--layers {s}: bad start"))?,
        b.trim().parse().with_context(|| format!("--layers {s}: bad end"))?,
    );
    if a >= b || b > n {
        bail!("--layers {s}: the model has {n} layers; pick START..END with START < END <= {n}");
    }
    Ok(LayerChoice::Range(a..b))
}

/// The layers of a model of `n` layers the network serves least, given the layer ranges the
/// workers found serve (as Petals places a new server's blocks):
///
/// - `span` of `Some(k)`: the `k` consecutive layers whose least-served layer has the fewest
///   workers, then the fewest workers over the whole window, then the lowest start;
/// - `None`: the longest run of layers no worker serves (the first of the longest), so that
///   the model becomes complete; when every layer is served, all of them.
pub fn least_served(n: u32, span: Option<u32>, served: &[Range<u32>]) -> Range<u32> {
    let mut count = vec![0u32; n as usize];
    for r in served {
        for c in count.iter_mut().take(r.end.min(n) as usize).skip(r.start as usize) {
            *c += 1;
        }
    }
    match span {
        Some(k) => {
            let k = k.clamp(1, n.max(1));
            let best = (0..=n.saturating_sub(k))
                .min_by_key(|&s| {
                    let w = &count[s as usize..(s + k) as usize];
                    (w.iter().min().copied().unwrap_or(0), w.iter().sum::<u32>(), s)
                })
                .unwrap_or(0);
            best..best + k
        }
        None => {
            let (mut best, mut start) = (0..0, None);
            for (i, &c) in count.iter().chain(std::iter::once(&1)).enumerate() {
                let i = i as u32;
                match (c, start) {
                    (0, None) => start = Some(i),
                    (0, Some(_)) => {}
                    (_, Some(s)) => {
                        if i - s > best.end - best.start {
                            best = s..i;
                        }
                        start = None;
                    }
                    (_, None) => {}
                }
            }
            if best.is_empty() {
                0..n
            } else {
                best
            }
        }
    }
}

fn u32_of(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// Opens the GGUF model at `path` and describes it (manifest, tokenizer) without loading
/// weights.
pub fn describe(path: &Path) -> Result<Described> {
    let ckpt = Checkpoint::open(path).with_context(|| format!("opening {}", path.display()))?;
    let Checkpoint::Gguf(g) = &ckpt else {
        bail!("--serve-model takes a GGUF file for now; {} is not one", path.display());
    };
    let cfg = g.config.clone();
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
    Ok(Described {
        ckpt,
        tokenizer,
        manifest,
        context_length: u32_of(cfg.context_length),
        num_layers: u32_of(cfg.num_layers),
    })
}

impl Described {
    /// Loads the stage of `layers` (weights dequantized to f32, the engine's default).
    pub fn load_stage(&self, layers: Range<usize>) -> Result<Stage> {
        let options = LoadOptions { gguf: GgufWeights::Dequantized, ..Default::default() };
        Ok(Stage::load(&self.ckpt, layers, &options)?)
    }
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

/// One-position forwards [`spawn_worker`] times to measure the stage's speed.
const BENCHMARK_STEPS: u32 = 16;
/// How often the announcement is checked against the worker's load.
const ANNOUNCE_CHECK: Duration = Duration::from_secs(2);

/// Runs `stage` as a worker for model `model` with at most `max_sessions` sessions, signing
/// receipts with `key`; measures its speed first ([`Worker::benchmark`]).
pub fn spawn_worker(
    stage: Stage,
    key: Pair,
    model: H256,
    genesis: H256,
    max_sessions: usize,
) -> Result<(WorkerHandle, WorkerInfo<Peer>)> {
    let mut config = WorkerConfig::new(model, genesis);
    config.max_sessions = max_sessions.max(1);
    let mut w = Worker::new(stage, key, config);
    let rate = w
        .benchmark(BENCHMARK_STEPS)
        .map_err(|e| anyhow!("measuring the stage's speed failed: {e}"))?;
    let (layers, account) = (w.info().layers, w.account());
    tracing::info!(target: TARGET, layers = ?layers, tokens_per_sec = rate, "measured the stage");
    let capacity = u32_of(w.config().max_sessions);
    // The thread stops when every handle is dropped.
    let (handle, _thread) = worker::spawn(w, 64)?;
    let info = WorkerInfo {
        id: Peer::Local,
        account,
        model,
        layers: layers.0..layers.1,
        capacity,
        tokens_per_sec: rate,
    };
    Ok((handle, info))
}

/// How long a stage request naming a job waits for this node to see the job on chain (its
/// block may reach the gateway's node a little earlier).
const JOB_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// Whether `job` is open on chain for `model` now (before its deadline).
async fn job_is_open(chain: &Handle, job: JobId, model: H256) -> bool {
    chain
        .with(move |s| {
            let st = s.chain.state();
            let best = s.chain.best().number;
            matches!(Jobs::job(st, job), Ok(Some(j))
                if j.status == jobs::JobStatus::Open && j.model == model && best < j.deadline)
        })
        .await
        .unwrap_or(false)
}

/// The job a session opening names, if the bytes are an [`StageRequest::Open`] with one (other
/// requests, and bytes that do not decode, are the worker's to answer).
fn job_of_open(bytes: &[u8]) -> Option<(JobId, H256)> {
    // Version byte, then the request's variant index: only openings are decoded here.
    if bytes.get(1) != Some(&0) {
        return None;
    }
    match protocol::decode_request(bytes, &protocol::Limits::default()) {
        Ok(StageRequest::Open { job: Some(job), model, .. }) => Some((job, model)),
        _ => None,
    }
}

/// A [`StageHandler`] answering peers' stage requests with the worker set in `worker`;
/// requests are refused until it is set (while the model is being registered). A session
/// opened for a job that is not open on `chain` for the model is refused with
/// [`StageError::JobNotOpen`](bitorch_compute::StageError::JobNotOpen): its receipt would not
/// be paid.
pub fn stage_handler(worker: Arc<OnceLock<WorkerHandle>>, chain: Handle) -> StageHandler {
    Arc::new(move |peer, bytes| {
        let worker = worker.get().cloned();
        let chain = chain.clone();
        Box::pin(async move {
            let worker = worker?;
            if let Some((job, model)) = job_of_open(&bytes) {
                let deadline = tokio::time::Instant::now() + JOB_VISIBLE_WAIT;
                while !job_is_open(&chain, job, model).await {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::info!(target: TARGET, %peer, job, "refused a session: job not open");
                        let e = bitorch_compute::StageError::JobNotOpen { job };
                        return Some(protocol::encode(&StageResponse::Error(e)));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            match worker.call_bytes(bytes).await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    tracing::warn!(target: TARGET, %peer, error = %e, "the worker stopped");
                    None
                }
            }
        })
    })
}

/// Tokens per second as announced (whole, at least 1).
fn announced_rate(rate: f64) -> u32 {
    if rate.is_finite() {
        (rate.round() as u32).max(1)
    } else {
        u32::MAX
    }
}

fn announcement(info: &WorkerInfo<Peer>, stats: Option<WorkerStats>) -> WorkerAnnouncement {
    let account: &[u8; 32] = info.account.as_ref();
    let (free, rate) = match stats {
        Some(s) => (u32_of(s.free()), s.tokens_per_sec.unwrap_or(info.tokens_per_sec)),
        None => (info.capacity, info.tokens_per_sec),
    };
    WorkerAnnouncement {
        model: info.model.0,
        layer_start: info.layers.start,
        layer_end: info.layers.end,
        capacity: info.capacity,
        free,
        tokens_per_sec: announced_rate(rate),
        account: *account,
        expires_at_ms: 0,
    }
}

/// Announces this node's worker `info` in the DHT (the network keeps it fresh).
pub async fn announce(net: &NetHandle, info: &WorkerInfo<Peer>) -> Result<()> {
    net.announce_worker(announcement(info, None)).await.context("announcing the worker in the DHT")
}

/// Keeps the worker's announcement current until `cancel`: every couple of seconds its free
/// sessions and measured speed are read, and announced again when the free sessions changed
/// or the speed moved by a fifth. Then withdraws it, so that gateways stop routing to a node
/// that is going away.
pub async fn keep_announced(
    net: NetHandle,
    worker: WorkerHandle,
    info: WorkerInfo<Peer>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last = announcement(&info, None);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(ANNOUNCE_CHECK) => {}
        }
        let Ok(stats) = worker.stats().await else { break };
        let now = announcement(&info, Some(stats));
        let (old, new) = (f64::from(last.tokens_per_sec), f64::from(now.tokens_per_sec));
        if now.free != last.free || (new - old).abs() > old / 5.0 {
            match net.announce_worker(now).await {
                Ok(()) => {
                    tracing::debug!(target: TARGET, free = now.free,
                        tokens_per_sec = now.tokens_per_sec, "announcement updated");
                    last = now;
                }
                Err(e) => {
                    tracing::warn!(target: TARGET, error = %e, "cannot update the announcement")
                }
            }
        }
    }
}

/// Withdraws the worker's announcement (on shutdown), waiting at most `within`.
pub async fn withdraw(net: &NetHandle, model: H256, within: Duration) {
    match tokio::time::timeout(within, net.withdraw_worker(model.0)).await {
        Ok(Ok(_)) => tracing::info!(target: TARGET, %model, "withdrew the worker from the DHT"),
        Ok(Err(e)) => tracing::warn!(target: TARGET, error = %e, "withdrawing the worker failed"),
        Err(_) => tracing::warn!(target: TARGET, "withdrawing the worker timed out"),
    }
}

/// The layers `--layers auto[:N]` serves: the range the workers the DHT announces for
/// `model` serve least ([`least_served`]). Waits (at most ~10 s) for a first peer when the node
/// has boot nodes, so that the lookup sees the network.
pub async fn choose_layers(
    net: &NetHandle,
    model: H256,
    num_layers: u32,
    span: Option<u32>,
    has_boot_nodes: bool,
) -> Range<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while has_boot_nodes && tokio::time::Instant::now() < deadline {
        if net.connected_peers().await.map(|p| !p.is_empty()).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let me = net.local_peer_id();
    let served: Vec<Range<u32>> = match net.find_workers(model.0).await {
        Ok(found) => found
            .into_iter()
            .filter(|(peer, _)| *peer != me)
            .map(|(_, a)| a.layer_start..a.layer_end)
            .collect(),
        Err(e) => {
            tracing::warn!(target: TARGET, error = %e, "finding workers failed; choosing alone");
            Vec::new()
        }
    };
    let layers = least_served(num_layers, span, &served);
    tracing::info!(target: TARGET, ?served, "--layers auto chose layers {}..{}", layers.start,
        layers.end);
    layers
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
        let gateway = Gateway::new(transport, GatewayConfig::new(o.payer.genesis));
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
}

impl Inner {
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
        let announced = match net.find_workers(self.model.0).await {
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
                model: H256(a.model),
                layers: a.layer_start..a.layer_end,
                capacity: a.free,
                tokens_per_sec: f64::from(a.tokens_per_sec),
            })
            .collect();
        *found = Some((std::time::Instant::now(), workers.clone()));
        workers
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

    /// The job opened ahead, if it covers `positions` and has at least half its life left
    /// (a generation must end before the deadline for its receipts to count).
    async fn take_ahead(&self, positions: u32) -> Option<JobId> {
        let mut ahead = self.ahead.lock().await;
        let a = (*ahead)?;
        let best = self.payer.chain.with(|s| s.chain.best().number).await.ok()?;
        if a.positions >= positions && best.saturating_add(a.lifetime / 2) < a.deadline {
            *ahead = None;
            self.taken.notify_one();
            return Some(a.id);
        }
        None
    }

    /// Opens a job for a whole context, to be used by a later request.
    async fn open_ahead(&self) -> Result<Ahead, BackendError> {
        let positions = self.context_length;
        let id = self.open_job(positions).await?;
        let job = self
            .payer
            .chain
            .with(move |s| Jobs::job(s.chain.state(), id).ok().flatten())
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?
            .ok_or_else(|| BackendError::Internal(format!("job {id} vanished")))?;
        let lifetime = job.deadline.saturating_sub(job.opened_at);
        Ok(Ahead { id, positions, deadline: job.deadline, lifetime })
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
            let best = self.payer.chain.with(|s| s.chain.best().number).await.unwrap_or(0);
            if best.saturating_add(a.lifetime / 2) >= a.deadline {
                let mut ahead = self.ahead.lock().await;
                if ahead.map(|x| x.id) == Some(a.id) {
                    *ahead = None;
                    drop(ahead);
                    tracing::info!(target: TARGET, job = a.id, "replacing the job opened ahead");
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
        // No route, no job: nothing is escrowed for a request that cannot run.
        let workers = self.workers().await;
        if let Err(e) = plan_route(self.num_layers, &workers, |id| self.gateway.is_banned(id)) {
            tracing::warn!(target: TARGET, error = %e, "no route for the request");
            return Err(BackendError::Unavailable(e.to_string()));
        }
        let job = match self.take_ahead(positions).await {
            Some(job) => {
                tracing::info!(target: TARGET, job, prompt = prompt.len(), max_new,
                    "using the job opened ahead");
                job
            }
            None => {
                let job = self.open_job(positions).await?;
                tracing::info!(target: TARGET, job, prompt = prompt.len(), max_new, "job opened");
                job
            }
        };

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
    #![allow(clippy::single_range_in_vec_init)]
    use super::{job_of_open, least_served, parse_layers, LayerChoice};
    use bitorch_compute::{protocol, StageRequest};
    use bitorch_primitives::H256;

    #[test]
    fn only_openings_with_a_job_are_checked_on_chain() {
        let open = |job| StageRequest::Open {
            session: [1; 16],
            model: H256([7; 32]),
            layers: (0, 10),
            job,
        };
        assert_eq!(job_of_open(&protocol::encode(&open(Some(5)))), Some((5, H256([7; 32]))));
        assert_eq!(job_of_open(&protocol::encode(&open(None))), None);
        let close = StageRequest::Close { session: [1; 16] };
        assert_eq!(job_of_open(&protocol::encode(&close)), None);
        assert_eq!(job_of_open(&[protocol::VERSION, 0, 0xff]), None);
        assert_eq!(job_of_open(&[]), None);
    }

    #[test]
    fn layers_parse_and_check_bounds() {
        let range = |r| LayerChoice::Range(r);
        assert_eq!(parse_layers(None, 30).unwrap(), range(0..30));
        assert_eq!(parse_layers(Some("10..20"), 30).unwrap(), range(10..20));
        assert!(parse_layers(Some("20..10"), 30).is_err());
        assert!(parse_layers(Some("0..31"), 30).is_err());
        assert!(parse_layers(Some("5"), 30).is_err());
        assert_eq!(parse_layers(Some("auto"), 30).unwrap(), LayerChoice::Auto { span: None });
        assert_eq!(
            parse_layers(Some("auto:10"), 30).unwrap(),
            LayerChoice::Auto { span: Some(10) }
        );
        for bad in ["auto:0", "auto:31", "auto:x", "autox", "auto10"] {
            assert!(parse_layers(Some(bad), 30).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_layers_pick_the_least_served_range() {
        // Nobody yet: everything, or the first k layers.
        assert_eq!(least_served(30, None, &[]), 0..30);
        assert_eq!(least_served(30, Some(10), &[]), 0..10);
        // The gap 10..20 is filled.
        assert_eq!(least_served(30, None, &[0..10, 20..30]), 10..20);
        assert_eq!(least_served(30, Some(10), &[0..10, 20..30]), 10..20);
        // The longest of two gaps; a gap at the end counts.
        assert_eq!(least_served(30, None, &[0..5, 8..25]), 25..30);
        assert_eq!(least_served(30, None, &[3..30]), 0..3);
        // All served: a full replica without a span; with one, the thinnest window.
        assert_eq!(least_served(30, None, &[0..30]), 0..30);
        assert_eq!(least_served(30, Some(10), &[0..30, 0..10, 10..20, 0..20]), 20..30);
        // A window that overlaps the gap beats one that does not, and ranges past n are cut.
        assert_eq!(least_served(30, Some(8), &[0..12, 16..40]), 8..16);
        assert_eq!(least_served(30, Some(30), &[0..12]), 0..30);
    }
}
