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
//! The worker side is in [`worker`], the gateway side in [`gateway`].
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
    plan_route, protocol, Gateway, GatewayConfig, GatewayRequest, StageRequest, StageResponse,
    StageTransport, TransportError, Worker, WorkerConfig, WorkerHandle, WorkerInfo, WorkerStats,
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

mod gateway;
mod worker;

pub use gateway::*;
pub use worker::*;

#[cfg(test)]
mod tests {
    #![allow(clippy::single_range_in_vec_init)]
    use super::{least_served, parse_layers, LayerChoice};

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
