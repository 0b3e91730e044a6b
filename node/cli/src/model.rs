//! `bitorch model import|list|rm|pull`, and the node's JSON-RPC methods for its model store.
//!
//! `import`, `list` and `rm` work on the store under `--base-path` directly (a running node
//! picks up the changes within seconds: it provides what the store holds). `pull` asks a
//! running node (`--rpc`) to fetch a model's chunks from its peers, and shows the progress.

use crate::key::OutputType;
use anyhow::{bail, Context as _, Result};
use bitorch_network::Handle as NetHandle;
use bitorch_primitives::H256;
use bitorch_serve::{Progress, PullOptions, SeedStats, Store};
use clap::{Args, Subcommand};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::types::ErrorObjectOwned;
use jsonrpsee::RpcModule;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options naming the store.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The node's base path (the store is its `models` folder).
    #[arg(long, short = 'd')]
    base_path: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output_type: OutputType,
}

/// `bitorch model` subcommands.
#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Split a model into verified chunks in the store and print its id (derived from its
    /// content: the same model gives the same id anywhere): a GGUF file, or a safetensors
    /// directory (`config.json`, `tokenizer.json`, `model.safetensors` or the shards its
    /// `model.safetensors.index.json` names).
    Import {
        /// The GGUF file or safetensors directory.
        path: PathBuf,
        /// A label for it (the file's name by default).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the models in the store and how much of each it holds.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check every chunk of a stored model against its Merkle root (each piece hashed again).
    Verify {
        /// The model's id (0x…).
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a model and the chunks no other stored model uses.
    Rm {
        /// The model's id (0x…).
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Ask a running node to pull a model's chunks from its peers.
    Pull {
        /// The model's id (0x…), as registered on chain.
        id: String,
        /// Only the chunks these layers need (`START..END`), plus the shared one.
        #[arg(long)]
        layers: Option<String>,
        /// The node's RPC URL.
        #[arg(long, default_value = "ws://127.0.0.1:9944")]
        rpc: String,
        /// Output format (the progress goes to standard error either way).
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
}

/// Parses a model id: 32 bytes in hex, with or without `0x`.
pub fn parse_model_id(s: &str) -> Option<H256> {
    let hex_part = s.strip_prefix("0x").unwrap_or(s);
    let bytes = hex::decode(hex_part).ok()?;
    (bytes.len() == 32).then(|| H256::from_slice(&bytes))
}

fn store_at(args: &StoreArgs) -> Result<Store> {
    let base = match &args.base_path {
        Some(p) => p.clone(),
        None => crate::node::default_base_path()?,
    };
    Ok(Store::open(base.join("models"))?)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}

/// Runs a `bitorch model` subcommand.
pub fn run(cmd: ModelCmd) -> Result<()> {
    match cmd {
        ModelCmd::Import { path, name, store: args } => {
            let store = store_at(&args)?;
            let t = Instant::now();
            let imported = store.import(&path, name.as_deref())?;
            let m = &imported.manifest;
            if args.output_type == OutputType::Json {
                let v = json!({
                    "id": format!("{:?}", imported.id),
                    "name": String::from_utf8_lossy(&m.name),
                    "layers": m.layer_count,
                    "chunks": m.chunks.len(),
                    "bytes": imported.bytes,
                    "reusedChunks": imported.reused_chunks,
                    "secs": t.elapsed().as_secs_f64(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("model {:?}", imported.id);
            println!(
                "  {} ({} layers), {} chunks, {} in {:.2} s{}",
                String::from_utf8_lossy(&m.name),
                m.layer_count,
                m.chunks.len(),
                human(imported.bytes),
                t.elapsed().as_secs_f64(),
                if imported.reused_chunks > 0 {
                    format!(" ({} chunks already stored)", imported.reused_chunks)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        ModelCmd::List { store: args } => {
            let store = store_at(&args)?;
            let models = store.models()?;
            if args.output_type == OutputType::Json {
                let v: Vec<Value> = models
                    .iter()
                    .map(|m| {
                        let sizes = m.manifest.chunks.iter().map(|c| c.size);
                        let held: u64 = sizes
                            .clone()
                            .zip(&m.complete)
                            .filter(|(_, done)| **done)
                            .map(|(s, _)| s)
                            .sum();
                        json!({
                            "id": format!("{:?}", m.id),
                            "name": String::from_utf8_lossy(&m.manifest.name),
                            "chunks": m.complete.len(),
                            "chunksComplete": m.complete.iter().filter(|c| **c).count(),
                            "bytes": sizes.sum::<u64>(),
                            "bytesHeld": held,
                            "layersHeld": layer_ranges(&m.manifest, &m.complete),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if models.is_empty() {
                println!("no models in {}", store.dir().display());
            }
            for m in models {
                let held: u64 = m
                    .manifest
                    .chunks
                    .iter()
                    .zip(&m.complete)
                    .filter(|(_, done)| **done)
                    .map(|(c, _)| c.size)
                    .sum();
                let total: u64 = m.manifest.chunks.iter().map(|c| c.size).sum();
                let layers: Vec<String> = layer_ranges(&m.manifest, &m.complete);
                println!(
                    "{:?}  {}  {}/{} chunks  {} of {}  layers held: {}",
                    m.id,
                    String::from_utf8_lossy(&m.manifest.name),
                    m.complete.iter().filter(|c| **c).count(),
                    m.complete.len(),
                    human(held),
                    human(total),
                    if layers.is_empty() { "none".into() } else { layers.join(", ") }
                );
            }
            Ok(())
        }
        ModelCmd::Verify { id, store: args } => {
            let model = parse_model_id(&id).context("a model id is 0x and 64 hex digits")?;
            let store = store_at(&args)?;
            let t = Instant::now();
            let (bytes, bad) = store.verify_model(&model)?;
            let secs = t.elapsed().as_secs_f64();
            if args.output_type == OutputType::Json {
                let v = json!({ "id": format!("{model:?}"), "bytes": bytes, "secs": secs, "badChunks": bad });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "verified {} in {secs:.3} s ({:.2} s per GB)",
                    human(bytes),
                    secs / (bytes.max(1) as f64 / 1e9)
                );
            }
            if !bad.is_empty() {
                bail!("{} chunks do not match their roots: {bad:?}", bad.len());
            }
            Ok(())
        }
        ModelCmd::Rm { id, store: args } => {
            let model = parse_model_id(&id).context("a model id is 0x and 64 hex digits")?;
            let store = store_at(&args)?;
            let removed = store.remove_model(&model)?;
            if args.output_type == OutputType::Json {
                let v = json!({ "id": format!("{model:?}"), "removedChunks": removed.len() });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("removed model {model:?} and {} chunks", removed.len());
            }
            Ok(())
        }
        ModelCmd::Pull { id, layers, rpc, output_type } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(pull_via_rpc(&id, layers.as_deref(), &rpc, output_type))
        }
    }
}

/// The layer ranges a store holds complete, as `a..b` strings.
fn layer_ranges(m: &bitorch_runtime::models::Manifest, complete: &[bool]) -> Vec<String> {
    use bitorch_runtime::models::ChunkKind;
    let mut out = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for (c, done) in m.chunks.iter().zip(complete) {
        if let ChunkKind::Layers { start, end } = c.kind {
            match (run, *done) {
                (Some((a, b)), true) if b == start => run = Some((a, end)),
                (Some((a, b)), true) => {
                    out.push(format!("{a}..{b}"));
                    run = Some((start, end));
                }
                (None, true) => run = Some((start, end)),
                (Some((a, b)), false) => {
                    out.push(format!("{a}..{b}"));
                    run = None;
                }
                (None, false) => {}
            }
        }
    }
    if let Some((a, b)) = run {
        out.push(format!("{a}..{b}"));
    }
    out
}

async fn pull_via_rpc(
    id: &str,
    layers: Option<&str>,
    url: &str,
    output_type: OutputType,
) -> Result<()> {
    let model = parse_model_id(id).context("a model id is 0x and 64 hex digits")?;
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .request_timeout(Duration::from_secs(24 * 3600))
        .build(url)
        .await
        .with_context(|| format!("cannot reach the node's RPC at {url} (is the node running?)"))?;
    let client = Arc::new(client);
    let params = jsonrpsee::rpc_params![format!("{model:?}"), layers];
    let c = client.clone();
    let mut call =
        tokio::spawn(async move { c.request::<Value, _>("bitorch_pullModel", params).await });
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut last_line = Instant::now();
    let report = loop {
        tokio::select! {
            r = &mut call => break r.context("the pull task")?.context("bitorch_pullModel")?,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let p: Value = client.request("bitorch_pullProgress", jsonrpsee::rpc_params![]).await.unwrap_or(Value::Null);
                let done = p["piecesDone"].as_u64().unwrap_or(0);
                let total = p["piecesTotal"].as_u64().unwrap_or(0);
                let bytes = p["bytes"].as_u64().unwrap_or(0);
                let peers = p["peers"].as_u64().unwrap_or(0);
                let mbps = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64().max(1e-3);
                if tty {
                    let width = 30usize;
                    let filled = if total == 0 { 0 } else { (done as usize * width) / total as usize };
                    eprint!("\r[{}{}] {done}/{total} pieces  {mbps:.1} MB/s  {peers} peers ", "#".repeat(filled), " ".repeat(width - filled.min(width)));
                } else if last_line.elapsed() >= Duration::from_secs(2) {
                    eprintln!("pulled {done}/{total} pieces, {mbps:.1} MB/s, {peers} peers");
                    last_line = Instant::now();
                }
            }
        }
    };
    if tty {
        eprintln!();
    }
    match output_type {
        OutputType::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputType::Text => {
            let n = |k: &str| report[k].as_u64().unwrap_or(0);
            println!(
                "pulled {} chunks: {} pieces fetched ({}) and {} already held, in {:.2} s from {} peers{}",
                n("chunks"),
                n("piecesFetched"),
                human(n("bytes")),
                n("piecesReused"),
                report["secs"].as_f64().unwrap_or(0.0),
                report["byPeer"].as_object().map_or(0, |p| p.len()),
                match n("badPieces") {
                    0 => String::new(),
                    bad => format!("; {bad} bad pieces refused, their senders penalised"),
                }
            );
        }
    }
    Ok(())
}

/// What the node's model RPC methods need.
pub struct ModelRpc {
    /// The chain.
    pub chain: bitorch_service::Handle,
    /// The network.
    pub net: NetHandle,
    /// The store.
    pub store: Arc<Store>,
    /// What the seeder sent.
    pub seed: Arc<Mutex<SeedStats>>,
    /// The latest pull's progress.
    pub progress: Arc<Mutex<Progress>>,
    /// One pull at a time.
    pub pulling: Arc<tokio::sync::Mutex<()>>,
}

fn rpc_err(code: i32, msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, msg.into(), None::<()>)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fetches the chunks `layers` of the chain's model `id` need into the store.
pub async fn pull_model(
    ctx: &ModelRpc,
    id: H256,
    layers: Option<std::ops::Range<u32>>,
) -> Result<bitorch_serve::PullReport> {
    let manifest = wait_for_model(&ctx.chain, id, Duration::from_secs(60)).await?;
    let layers = layers.unwrap_or(0..manifest.layer_count);
    if layers.start >= layers.end || layers.end > manifest.layer_count {
        bail!("--layers {layers:?}: the model has {} layers", manifest.layer_count);
    }
    let _one = ctx.pulling.lock().await;
    let report = bitorch_serve::pull(
        &ctx.net,
        &ctx.store,
        &manifest,
        layers,
        &PullOptions::default(),
        &ctx.progress,
    )
    .await?;
    Ok(report)
}

/// The manifest of the chain's model `id`, once the node has synced far enough to know it
/// (waiting at most `patience`).
pub async fn wait_for_model(
    chain: &bitorch_service::Handle,
    id: H256,
    patience: Duration,
) -> Result<bitorch_runtime::models::Manifest> {
    let t = Instant::now();
    let mut logged = Instant::now();
    loop {
        if let Some(record) = chain.model(id).await? {
            if record.status != bitorch_runtime::models::ModelStatus::Active {
                bail!("model {id:?} is retired on chain");
            }
            return Ok(record.manifest);
        }
        if t.elapsed() > patience {
            let best = chain.best().await.map(|h| h.number).unwrap_or_default();
            bail!(
                "model {id:?} is not on chain (the node is at block #{best} after waiting {} s to sync)",
                patience.as_secs()
            );
        }
        if logged.elapsed() > Duration::from_secs(10) {
            tracing::info!(target: "node", model = ?id, "waiting for the chain to know the model");
            logged = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The report of a pull as JSON.
pub fn report_json(r: &bitorch_serve::PullReport) -> Value {
    json!({
        "chunks": r.chunks,
        "piecesFetched": r.pieces_fetched,
        "piecesReused": r.pieces_reused,
        "bytes": r.bytes,
        "byPeer": r.by_peer,
        "badPieces": r.bad_pieces,
        "penalised": r.penalised,
        "secs": r.secs,
    })
}

/// The node's model methods: `bitorch_storedModels`, `bitorch_seedStats`,
/// `bitorch_pullProgress`, and with `operator` (the RPC's operator methods are on)
/// `bitorch_pullModel(id, layers?)`, which makes the node download.
pub fn rpc_module(ctx: ModelRpc, operator: bool) -> Result<RpcModule<ModelRpc>> {
    let mut m = RpcModule::new(ctx);
    m.register_method("bitorch_storedModels", |_, ctx, _| {
        let models = ctx.store.models().map_err(|e| rpc_err(-32000, e.to_string()))?;
        Ok::<_, ErrorObjectOwned>(
            models
                .into_iter()
                .map(|m| {
                    json!({
                        "id": format!("{:?}", m.id),
                        "name": String::from_utf8_lossy(&m.manifest.name),
                        "layers": m.manifest.layer_count,
                        "chunks": m.manifest.chunks.iter().zip(&m.complete).map(|(c, done)| json!({
                            "root": format!("{:?}", c.root),
                            "kind": format!("{:?}", c.kind),
                            "size": c.size,
                            "complete": done,
                        })).collect::<Vec<_>>(),
                        "layersHeld": layer_ranges(&m.manifest, &m.complete),
                    })
                })
                .collect::<Vec<_>>(),
        )
    })?;
    m.register_method("bitorch_seedStats", |_, ctx, _| {
        let s = lock(&ctx.seed).clone();
        json!({
            "pieces": s.pieces,
            "bytes": s.bytes,
            "byPeer": s.by_peer,
            "refused": s.refused,
            "provided": s.provided,
        })
    })?;
    m.register_method("bitorch_pullProgress", |_, ctx, _| {
        let p = lock(&ctx.progress).clone();
        json!({
            "piecesTotal": p.pieces_total,
            "piecesDone": p.pieces_done,
            "piecesReused": p.pieces_reused,
            "bytes": p.bytes,
            "peers": p.peers,
            "badPieces": p.bad_pieces,
            "finished": p.finished,
        })
    })?;
    if !operator {
        return Ok(m);
    }
    m.register_async_method("bitorch_pullModel", |params, ctx, _| async move {
        let mut seq = params.sequence();
        let id: String = seq.next().map_err(|e| rpc_err(-32602, e.to_string()))?;
        let layers: Option<String> =
            seq.optional_next().map_err(|e| rpc_err(-32602, e.to_string()))?;
        let id = parse_model_id(&id)
            .ok_or_else(|| rpc_err(-32602, "a model id is 0x and 64 hex digits"))?;
        let layers = match layers {
            None => None,
            Some(s) => {
                let (a, b) =
                    s.split_once("..").ok_or_else(|| rpc_err(-32602, "layers: START..END"))?;
                let parse = |x: &str| {
                    x.trim().parse::<u32>().map_err(|_| rpc_err(-32602, "layers: START..END"))
                };
                Some(parse(a)?..parse(b)?)
            }
        };
        let report =
            pull_model(&ctx, id, layers).await.map_err(|e| rpc_err(-32010, format!("{e:#}")))?;
        Ok::<_, ErrorObjectOwned>(report_json(&report))
    })?;
    Ok(m)
}

/// The model store of a node at `base`.
pub fn open_store(base: &Path) -> Result<Arc<Store>> {
    Ok(Arc::new(Store::open(base.join("models")).context("the model store")?))
}
