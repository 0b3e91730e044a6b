//! `bitorch node`, `bitorch chain-spec` and `bitorch purge-chain`.

use anyhow::{bail, Context as _, Result};
use bitorch_chain_spec::ChainSpec;
use bitorch_primitives::keys::{account_of, to_ss58};
use bitorch_rpc::{NodeInfo, RpcMethods};
use bitorch_runtime::Staking;
use bitorch_service::{service, Chain, PoolLimits};
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of `bitorch node`.
/// `--rpc-methods`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcMethodsArg {
    /// Operator methods on loopback only.
    Auto,
    /// No operator methods.
    Safe,
    /// Operator methods on any interface.
    Unsafe,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Run a one-node development chain: `--chain dev`, author as `//Alice`, and a temporary
    /// base path unless `--base-path` is given.
    #[arg(long)]
    dev: bool,
    /// Chain spec: `dev`, `local`, or a path to a JSON spec.
    #[arg(long)]
    chain: Option<String>,
    /// Where the node keeps its data.
    #[arg(long, short = 'd')]
    base_path: Option<PathBuf>,
    /// Use a temporary base path, deleted when the node stops.
    #[arg(long, conflicts_with = "base_path")]
    tmp: bool,
    /// JSON-RPC port (HTTP and WebSocket).
    #[arg(long, default_value_t = 9944)]
    rpc_port: u16,
    /// Listen for RPC on all interfaces instead of 127.0.0.1. The generation methods
    /// (`bitorch_generate`, `bitorch_subscribeGeneration`) then serve only requests paid by an
    /// API token (`api_key`), never from the node's API account.
    #[arg(long)]
    rpc_external: bool,
    /// Serve the OpenAI-compatible API on all interfaces instead of 127.0.0.1; every request
    /// then needs an API token (`Authorization: Bearer btr_…`) whose user pays.
    #[arg(long)]
    api_external: bool,
    /// Browser origins that may call the RPC (HTTP and WebSocket): `all`, `none`, or a
    /// comma-separated list; `scheme://host:*` allows any port. Requests without an `Origin`
    /// (not from a web page) are not concerned. Default: local pages and polkadot.js apps.
    #[arg(long, value_parser = parse_origins, default_value = DEFAULT_CORS)]
    rpc_cors: bitorch_primitives::origins::Origins,
    /// Browser origins that may call the OpenAI-compatible API, as `--rpc-cors`.
    #[arg(long, value_parser = parse_origins, default_value = DEFAULT_CORS)]
    api_cors: bitorch_primitives::origins::Origins,
    /// Which RPC methods to serve: `auto` serves the operator methods (`system_banPeer`, …)
    /// only when the RPC listens on loopback; `safe` never; `unsafe` always.
    #[arg(long, value_enum, default_value_t = RpcMethodsArg::Auto)]
    rpc_methods: RpcMethodsArg,
    /// Test only: sign and send a second, conflicting vote for every vote (the network
    /// reports the double votes and slashes this validator).
    #[arg(long, hide = true)]
    unsafe_equivocate: bool,
    /// Test only: the worker cheats (`random-outputs`: returns and commits to random hidden
    /// states; `refuse-openings`: computes honestly but opens nothing to auditors;
    /// `other-weights`: runs candle's quantized kernels, another computation of the weights
    /// than the one workers and auditors run; `skip-layers`: runs every other
    /// layer of its range only; `other-trace`: commits to other outputs than its layers
    /// computed (a last stage answers with honest logits); `other-logits`: a last stage that
    /// returns and commits to other logits than its head gives; `overclaim`: claims more
    /// positions than acknowledged), for the adversarial tests of the audits and claims.
    #[arg(long, hide = true, value_parser = ["random-outputs", "refuse-openings", "other-weights", "skip-layers", "other-trace", "other-logits", "overclaim"])]
    unsafe_cheat: Option<String>,
    /// Test only: this validator's auditor reveals the opposite of what it found (`lie`), or
    /// says "passed" without re-executing (`lazy`).
    #[arg(long, hide = true, value_parser = ["lie", "lazy"])]
    unsafe_auditor: Option<String>,
    /// Test only: this node's API gateway never signs a voucher (`withhold-vouchers`): a client
    /// that withholds its acknowledgements.
    #[arg(long, hide = true, value_parser = ["withhold-vouchers"])]
    unsafe_client: Option<String>,
    /// Target time between blocks, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    block_time: u64,
    /// The validator key this node authors with: a keystore name or a secret URI (`--dev` uses
    /// `//Alice`).
    #[arg(long)]
    validator: Option<String>,
    /// Node name reported by `system_name`.
    #[arg(long, default_value = "Bitorch Node")]
    name: String,
    /// Peer-to-peer listen addresses (multiaddrs), repeatable: TCP (`/ip4/…/tcp/30333`) or
    /// QUIC (`/ip4/…/udp/30333/quic-v1`), or both. Used unless `--dev`.
    #[arg(long, num_args = 1.., default_value = "/ip4/127.0.0.1/tcp/30333")]
    listen_addr: Vec<String>,
    /// Boot nodes to join the network through (`/ip4/…/tcp/…/p2p/<peer id>`), repeatable.
    #[arg(long = "boot-nodes", num_args = 1..)]
    boot_nodes: Vec<String>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    mdns: bool,
    /// An address peers reach this node at (`/ip4/…/tcp/…`), repeatable: announced as its own
    /// and confirmed at once (a public node need not wait for AutoNAT before relaying).
    #[arg(long = "public-addr", num_args = 1..)]
    public_addr: Vec<String>,
    /// Relay no circuits for peers behind NAT (a reachable node relays a few by default).
    #[arg(long)]
    no_relay: bool,
    /// Do not listen through relays when AutoNAT finds this node unreachable.
    #[arg(long)]
    no_relay_client: bool,
    /// Count private IP addresses (10/8, 172.16/12, 192.168/16) as reachable: for a LAN, or a
    /// test bed of network namespaces (`scripts/netns-testnet.sh`).
    #[arg(long)]
    allow_private_ip: bool,
    /// Serve this model as a worker, and answer inference requests on the HTTP API
    /// (`--api-port`) and JSON-RPC, paying for them from `--api-account`: a GGUF file (imported
    /// into the node's model store and registered on chain), or the id (0x…) of a model
    /// registered on chain, whose chunks for `--layers` are pulled from peers if the store
    /// lacks them.
    #[arg(long)]
    serve_model: Option<String>,
    /// Most bytes per second this node sends one peer when seeding model pieces, in MB/s
    /// (no limit by default).
    #[arg(long)]
    seed_rate: Option<f64>,
    /// Most bytes per second this node sends all peers together when seeding, in MB/s.
    #[arg(long)]
    seed_total_rate: Option<f64>,
    /// Test only: corrupt every model piece this node sends (a seeder that lies).
    #[arg(long, hide = true)]
    unsafe_corrupt_pieces: bool,
    /// The layers to serve: `START..END`; `auto` (the largest range no worker of the network
    /// serves, or all layers when every one is served); `auto:N` (the N layers the network
    /// serves least). All of them when absent.
    #[arg(long, requires = "serve_model")]
    layers: Option<String>,
    /// Most concurrent inference sessions the worker holds; more are answered "busy".
    #[arg(long, default_value_t = 16, requires = "serve_model")]
    max_sessions: usize,
    /// A peer (libp2p peer id) that may open stage sessions on this worker without a job, i.e.
    /// unpaid: your own gateway nodes. Repeatable. Everyone else must name a job open on chain.
    #[arg(long = "allow-unpaid", requires = "serve_model")]
    allow_unpaid: Vec<String>,
    /// The worker key that signs receipts and registers the model, a keystore name or a secret
    /// URI (default: the
    /// `--validator` key; `//Alice` in `--dev`). It must be a worker on chain to be paid.
    #[arg(long)]
    worker_key: Option<String>,
    /// Port of the OpenAI-compatible HTTP API on 127.0.0.1 (on when the node serves a model).
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    /// The account that pays for API requests, a keystore name or a secret URI (`--dev`
    /// default: `//Alice`).
    #[arg(long)]
    api_account: Option<String>,
    #[command(flatten)]
    keystore: crate::keystore::KeystoreArgs,
    /// Port of the Prometheus endpoint (`GET /metrics`), on 127.0.0.1 unless
    /// `--prometheus-external`. A port already taken turns it off with a warning.
    #[arg(long, default_value_t = 9615)]
    prometheus_port: u16,
    /// Serve the Prometheus endpoint on all interfaces.
    #[arg(long)]
    prometheus_external: bool,
    /// No Prometheus endpoint.
    #[arg(long)]
    no_prometheus: bool,
    /// This node's worker's price per layer per token, in BTR: it takes sessions only for jobs
    /// that pay at least this, and announces it. The default, 0.0001, makes a worker's claim
    /// for a short answer worth well over its transaction fee.
    #[arg(long, value_parser = parse_price, default_value = "0.0001")]
    price: u128,
    /// The most this node's API pays per layer per token, in BTR, for a request that names no
    /// `max_price` of its own: each job is opened at the cheapest price at which workers cover
    /// the model, and a request no route serves within it is refused (402, naming the cheapest
    /// price).
    #[arg(long, value_parser = parse_price, default_value = "0.001")]
    max_price: u128,
    /// Requests per minute an API token's user may make of this node's API, on average.
    #[arg(long, default_value_t = 60)]
    key_rate: u32,
    /// Requests an API token's user may make at once after an idle while.
    #[arg(long, default_value_t = 10)]
    key_burst: u32,
    /// Requests an API token's user may have in flight.
    #[arg(long, default_value_t = 4)]
    key_concurrency: u32,
    /// Do not keep a job opened ahead (escrowing a whole context) for the next API request;
    /// each request then waits for its own job to be included in a block before its first
    /// token.
    #[arg(long)]
    no_job_ahead: bool,
}

/// `--rpc-cors` and `--api-cors`'s default: Substrate's.
const DEFAULT_CORS: &str =
    "http://localhost:*,http://127.0.0.1:*,https://localhost:*,https://127.0.0.1:*,https://polkadot.js.org";

fn parse_price(s: &str) -> Result<u128, String> {
    match bitorch_primitives::parse_amount(s).map_err(|e| e.to_string())? {
        0 => Err("a price must be more than 0 (the chain takes no job that pays nothing)".into()),
        p => Ok(p),
    }
}

fn parse_origins(s: &str) -> Result<bitorch_primitives::origins::Origins, String> {
    bitorch_primitives::origins::Origins::parse(s)
}

/// Options of `bitorch chain-spec`.
#[derive(Args, Debug)]
pub struct ChainSpecArgs {
    /// `dev` or `local`.
    #[arg(long, default_value = "dev")]
    chain: String,
    /// Number of validators of a `local` spec.
    #[arg(long, default_value_t = 2)]
    validators: usize,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

/// Options of `bitorch purge-chain`.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// The node's base path.
    #[arg(long, short = 'd')]
    base_path: PathBuf,
    /// The chain whose data to delete: `dev`, `local` or a spec path.
    #[arg(long, default_value = "dev")]
    chain: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Waits (at most `limit`) until a node that joins a network has caught up with its peers: it
/// holds blocks past genesis and its sync is not fetching full batches, twice in a row half a
/// second apart. A fresh node checks what it is about to do (register a model and pay its fee,
/// find that another node registered it already) against the network's chain, not against
/// the genesis it starts from. Returns whether it caught up; after `limit` it goes on anyway
/// (with a warning) and the chain judges what it submits.
async fn caught_up(
    chain: &bitorch_service::Handle,
    status: &bitorch_service::status::StatusReceiver,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut steady = 0;
    while tokio::time::Instant::now() < deadline {
        let best = chain.best().await.map(|h| h.number).unwrap_or(0);
        steady = if best >= 1 && !status.borrow().syncing { steady + 1 } else { 0 };
        if steady >= 2 {
            tracing::info!(target: "node", best, "caught up with the network");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::warn!(target: "node", secs = limit.as_secs(), "not caught up with the network; going on");
    false
}

fn db_path(base: &Path, spec: &ChainSpec) -> PathBuf {
    base.join("chains").join(&spec.id).join("db")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs a node until Ctrl-C or SIGTERM.
pub fn run(args: NodeArgs) -> Result<()> {
    init_logging();
    crate::metrics::count_panics();
    let chain_name =
        args.chain.clone().unwrap_or_else(|| if args.dev { "dev".into() } else { "local".into() });
    let spec = ChainSpec::load(&chain_name)?;
    let validator_suri = args.validator.clone().or_else(|| args.dev.then(|| "//Alice".to_string()));
    let mut _tmp = None;
    let base = match (&args.base_path, args.tmp || (args.dev && args.base_path.is_none())) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            let d = tempfile::Builder::new()
                .prefix("bitorch-")
                .tempdir()
                .context("creating a temporary base path")?;
            let p = d.path().to_path_buf();
            _tmp = Some(d);
            p
        }
        (None, false) => default_base_path()?,
    };
    let store = crate::model::open_store(&base)?;
    // Keys by keystore name live under the given base path (or the default one: a --dev or
    // --tmp node's temporary folder has no keystore).
    let key_base = args.base_path.clone();
    let resolve = |spec: &str, what: &str| {
        crate::keystore::resolve(spec, &args.keystore, key_base.as_deref(), what)
    };
    let validator_pair =
        validator_suri.as_deref().map(|s| resolve(s, "--validator")).transpose()?;
    let serving = match &args.serve_model {
        Some(given) => {
            let worker_suri = args
                .worker_key
                .clone()
                .or_else(|| validator_suri.clone())
                .context("--serve-model needs a key: pass --worker-key SURI")?;
            let api_suri = args
                .api_account
                .clone()
                .or_else(|| args.dev.then(|| "//Alice".to_string()))
                .context("--serve-model needs a paying account: pass --api-account SURI")?;
            if args.dev && args.layers.as_deref().is_some_and(|l| l.starts_with("auto")) {
                bail!("--layers auto needs a network to look at; --dev has none (pass a range)");
            }
            let path = Path::new(given);
            let source = if path.exists() {
                let t = std::time::Instant::now();
                let imported = store.import(path, None).with_context(|| {
                    format!("importing {} into the model store", path.display())
                })?;
                tracing::info!(target: "node", model = ?imported.id, chunks = imported.manifest.chunks.len(), secs = t.elapsed().as_secs_f64(), "imported the model into the store");
                ModelSource::Imported(imported.manifest)
            } else if let Some(id) = crate::model::parse_model_id(given) {
                ModelSource::Id(id)
            } else {
                bail!("--serve-model {given}: no such file, and not a model id (0x and 64 hex digits)");
            };
            Some((
                source,
                if args.worker_key.is_some() {
                    resolve(&worker_suri, "--worker-key")?
                } else {
                    validator_pair.clone().context("--worker-key")?
                },
                resolve(&api_suri, "--api-account")?,
            ))
        }
        None => None,
    };
    let unpaid_peers = args
        .allow_unpaid
        .iter()
        .map(|p| {
            p.parse::<bitorch_network::PeerId>()
                .with_context(|| format!("--allow-unpaid {p}: not a peer id (12D3KooW…)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let db = db_path(&base, &spec);
        let chain = Chain::open(&db, spec).with_context(|| format!("opening the chain at {}", db.display()))?;
        let genesis = chain.genesis();
        let best = chain.best().number;
        let chain_name = chain.spec().name.clone();
        let chain_id = chain.spec().id.clone();
        let networked = !args.dev;
        let key = match &validator_pair {
            None => None,
            Some(pair) if networked => Some(pair.clone()),
            Some(pair) => {
                let pair = pair.clone();
                let me = account_of(&pair);
                let set = Staking::validator_set(chain.state())?;
                if set != vec![me.clone()] {
                    bail!(
                        "validator {} cannot author alone: the validator set has {} member(s); this release produces blocks only for a single-validator chain (use --dev)",
                        to_ss58(&me),
                        set.len()
                    );
                }
                Some(pair)
            }
        };
        let cancel = CancellationToken::new();
        let (handle, mut service_task) = service::spawn(chain, PoolLimits::default(), cancel.clone());
        let network = if networked {
            let mut config = bitorch_network::Config::new(bitorch_network::NodeKey::Dir(
                base.join("chains").join(&chain_id).join("network"),
            ));
            config.listen = args
                .listen_addr
                .iter()
                .map(|a| a.parse().with_context(|| format!("--listen-addr {a}")))
                .collect::<Result<_>>()?;
            config.boot_nodes = args
                .boot_nodes
                .iter()
                .map(|a| a.parse().with_context(|| format!("--boot-nodes {a}")))
                .collect::<Result<_>>()?;
            config.mdns = args.mdns;
            config.public_addresses = args
                .public_addr
                .iter()
                .map(|a| a.parse().with_context(|| format!("--public-addr {a}")))
                .collect::<Result<_>>()?;
            if args.no_relay {
                config.relay_server = None;
            }
            config.use_relays = !args.no_relay_client;
            config.private_ips_reachable = args.allow_private_ip;
            let service = bitorch_network::spawn(config, cancel.clone())?;
            tracing::info!(target: "node", peer_id = %service.handle.local_peer_id(), validator = ?key.as_ref().map(|k| to_ss58(&account_of(k))), "joining the network");
            Some(service)
        } else {
            None
        };
        let ip = if args.rpc_external { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
        let (status_tx, status_rx) = bitorch_service::status::channel();
        let methods = match args.rpc_methods {
            RpcMethodsArg::Safe => RpcMethods::Safe,
            RpcMethodsArg::Unsafe => RpcMethods::Unsafe,
            RpcMethodsArg::Auto if args.rpc_external => RpcMethods::Safe,
            RpcMethodsArg::Auto => RpcMethods::Unsafe,
        };
        let mut module = bitorch_rpc::module(
            handle.clone(),
            NodeInfo { name: args.name.clone(), version: env!("CARGO_PKG_VERSION").into() },
            network.as_ref().map(|n| bitorch_rpc::Network {
                handle: n.handle.clone(),
                status: status_rx.clone(),
            }),
            methods,
        )?;
        let block_time = Duration::from_millis(args.block_time.max(1));
        let net_handle = network.as_ref().map(|n| n.handle.clone());
        // Peers' stage requests go to the serving service, which answers them once the model
        // is registered and its worker runs (a node that serves nothing drops the receiver, so
        // that the network refuses them).
        let (stage_worker, stage_worker_rx) = tokio::sync::watch::channel(None);
        let progress = std::sync::Arc::new(std::sync::Mutex::new(bitorch_serve::Progress::default()));
        let mut metrics = crate::metrics::Sources {
            chain: handle.clone(),
            net: net_handle.clone(),
            seed: None,
            worker: None,
            gateway: None,
            status: network.as_ref().map(|_| status_rx.clone()),
        };
        let authoring = match network {
            Some(bitorch_network::Service { handle: net, events, stage_requests, piece_requests, task: _ }) => {
                // Every networked node seeds what its store holds.
                let seed = std::sync::Arc::new(std::sync::Mutex::new(bitorch_serve::SeedStats::default()));
                metrics.seed = Some(seed.clone());
                let mbps = |r: Option<f64>| r.filter(|r| *r > 0.0).map(|r| (r * 1e6) as u64);
                let options = bitorch_serve::SeedOptions {
                    per_peer_rate: mbps(args.seed_rate),
                    total_rate: mbps(args.seed_total_rate),
                    unsafe_corrupt: args.unsafe_corrupt_pieces,
                };
                if args.unsafe_corrupt_pieces {
                    tracing::warn!(target: "node", "--unsafe-corrupt-pieces: this node sends corrupt model pieces (tests only)");
                }
                tokio::spawn(bitorch_serve::serve_pieces(piece_requests, net.clone(), store.clone(), options, seed.clone()));
                tokio::spawn(bitorch_serve::keep_provided(net.clone(), store.clone(), Duration::from_secs(2), seed.clone(), cancel.clone()));
                module.merge(crate::model::rpc_module(crate::model::ModelRpc {
                    chain: handle.clone(),
                    net: net.clone(),
                    store: store.clone(),
                    seed,
                    progress: progress.clone(),
                    pulling: Default::default(),
                }, methods == RpcMethods::Unsafe)?).context("merging the model RPC methods")?;
                if serving.is_some() {
                    let unpaid = bitorch_serve::UnpaidPolicy::allow(unpaid_peers.clone());
                    tokio::spawn(bitorch_serve::serve_stages(stage_requests, stage_worker_rx, handle.clone(), unpaid));
                }
                Some(bitorch_service::p2p::spawn(
                handle.clone(),
                net,
                events,
                bitorch_service::p2p::Options {
                    key,
                    genesis,
                    block_time,
                    wal: Some(base.join("chains").join(&chain_id).join("consensus").join("wal")),
                    status: status_tx,
                    equivocate: args.unsafe_equivocate,
                },
                cancel.clone(),
            ))
            }
            None => key.map(|k| {
                tracing::info!(target: "node", validator = %to_ss58(&account_of(&k)), block_time_ms = args.block_time, "authoring blocks");
                service::spawn_dev_authoring(handle.clone(), k, block_time, cancel.clone())
            }),
        };
        let mut served = None;
        let mut claimer = None;
        if let Some((source, worker_key, api_key)) = serving {
            let manifest = match source {
                ModelSource::Imported(manifest) => {
                    // Joining a running network: the chain it is about to check and pay on
                    // is the network's, not the genesis this node starts from.
                    if net_handle.is_some() && !args.boot_nodes.is_empty() {
                        caught_up(&handle, &status_rx, Duration::from_secs(60)).await;
                    }
                    bitorch_serve::register(&handle, &worker_key, &manifest).await?;
                    manifest
                }
                ModelSource::Id(id) => crate::model::wait_for_model(&handle, id, Duration::from_secs(300)).await?,
            };
            let model = manifest.id();
            let num_layers = manifest.layer_count;
            let choice = bitorch_serve::parse_layers(args.layers.as_deref(), num_layers as usize)?;
            let layers = match (choice, &net_handle) {
                (bitorch_serve::LayerChoice::Range(r), _) => r,
                (bitorch_serve::LayerChoice::Auto { span }, Some(net)) => {
                    let r = bitorch_serve::choose_layers(net, model, num_layers, span, !args.boot_nodes.is_empty()).await;
                    r.start as usize..r.end as usize
                }
                (bitorch_serve::LayerChoice::Auto { .. }, None) => bail!("--layers auto needs a network"),
            };
            let range = layers.start as u32..layers.end as u32;
            let missing = bitorch_serve::needed_chunks(&manifest, &range).iter().filter(|c| !store.has_chunk(&c.root)).count();
            if missing > 0 {
                let Some(net) = &net_handle else {
                    bail!("the store lacks {missing} chunks of layers {range:?} and --dev has no peers to pull them from");
                };
                tracing::info!(target: "node", %model, layers = ?range, chunks = missing, "pulling the layers' chunks from peers");
                let report = bitorch_serve::pull(net, &store, &manifest, range.clone(), &bitorch_serve::PullOptions::default(), &progress).await?;
                tracing::info!(target: "node", %model, chunks = report.chunks, pieces = report.pieces_fetched, reused = report.pieces_reused, mb = report.bytes as f64 / 1e6, secs = report.secs, peers = report.by_peer.len(), "pulled the model's chunks");
            }
            let described = tokio::task::block_in_place(|| bitorch_serve::Described::from_store(&store, &manifest))?;
            let t = std::time::Instant::now();
            let weights = if args.unsafe_cheat.as_deref() == Some("other-weights") {
                bitorch_inference::GgufWeights::Candle
            } else {
                bitorch_inference::GgufWeights::Int16
            };
            let mut stage = tokio::task::block_in_place(|| described.load_stage_with(layers, weights))?;
            if args.unsafe_cheat.as_deref() == Some("skip-layers") {
                stage.unsafe_skip_every_other_layer();
            }
            tracing::info!(target: "node", layers = ?stage.layers(), secs = t.elapsed().as_secs_f64(), "loaded the model");
            let cheat = match args.unsafe_cheat.as_deref() {
                Some("random-outputs") => Some(bitorch_compute::Cheat::RandomOutputs),
                Some("other-trace") => Some(bitorch_compute::Cheat::OtherTrace),
                Some("other-logits") => Some(bitorch_compute::Cheat::OtherLogits),
                Some("overclaim") => Some(bitorch_compute::Cheat::Overclaim),
                _ => None,
            };
            let refuse_openings = args.unsafe_cheat.as_deref() == Some("refuse-openings");
            if let Some(how) = &args.unsafe_cheat {
                tracing::warn!(target: "node", how, "--unsafe-cheat: this worker cheats (tests of the audits only)");
            }
            let local = tokio::task::block_in_place(|| bitorch_serve::spawn_worker(stage, worker_key.clone(), model, genesis, args.max_sessions, cheat, args.price))?;
            tracing::info!(target: "node", %model, worker = %to_ss58(&account_of(&worker_key)), layers = ?local.1.layers, "serving the model");
            let traces = std::sync::Arc::new(bitorch_serve::TraceStore::open(base.join("chains").join(&chain_id).join("traces")).context("the trace folder")?);
            stage_worker.send_replace(Some(bitorch_serve::StageWorker { handle: local.0.clone(), account: local.1.account.clone(), traces: traces.clone(), genesis, refuse_openings, price: args.price }));
            // The worker claims its pay itself, with the clients' vouchers, and keeps the
            // claimed sessions' leaves for audits.
            let stop = CancellationToken::new();
            let task = tokio::spawn(bitorch_serve::submit_claims(handle.clone(), worker_key.clone(), local.0.clone(), traces, stop.clone()));
            claimer = Some((stop, task));
            let described = std::sync::Arc::new(described);
            // A validator audits the claims the chain assigns it, on the model it has.
            if let (Some(net), Some(validator)) = (&net_handle, &validator_pair) {
                let auditor = bitorch_serve::Auditor {
                    chain: handle.clone(),
                    net: net.clone(),
                    key: validator.clone(),
                    genesis,
                    model,
                    described: described.clone(),
                    pretend: match args.unsafe_auditor.as_deref() {
                        Some("lie") => Some(bitorch_serve::Pretend::Lie),
                        Some("lazy") => Some(bitorch_serve::Pretend::Lazy),
                        _ => None,
                    },
                };
                tokio::spawn(bitorch_serve::run_auditor(auditor, cancel.clone()));
            }
            if let Some(net) = &net_handle {
                bitorch_serve::announce(net, &local.1).await?;
                tracing::info!(target: "node", %model, layers = ?local.1.layers, "announced the worker in the DHT");
                let stop = CancellationToken::new();
                let task = tokio::spawn(bitorch_serve::keep_announced(net.clone(), local.0.clone(), local.1.clone(), stop.clone()));
                served = Some((net.clone(), model, stop, task));
            }
            metrics.worker = Some(local.0.clone());
            let (tokenizer, context_length) = (described.tokenizer.clone(), described.context_length);
            let name = String::from_utf8_lossy(&manifest.name).into_owned();
            let backend = std::sync::Arc::new(bitorch_serve::GatewayBackend::new(bitorch_serve::GatewayOptions {
                model,
                name: name.clone(),
                num_layers: manifest.layer_count,
                context_length,
                tokenizer,
                local: Some(local),
                net: net_handle.clone(),
                payer: bitorch_serve::Payer { chain: handle.clone(), key: api_key.clone(), genesis, max_price: args.max_price, job_ahead: !args.no_job_ahead },
                unsafe_withhold_vouchers: args.unsafe_client.is_some(),
                key_limits: bitorch_serve::KeyLimits { per_minute: args.key_rate, burst: args.key_burst, concurrent: args.key_concurrency },
            }));
            backend.prepare();
            metrics.gateway = Some(backend.clone());
            // The API opens once a job is ready for its first request (bounded: a network whose
            // chain stalls must not keep the API closed).
            if !backend.ready(Duration::from_secs(15)).await {
                tracing::warn!(target: "node", "no job opened ahead yet (no route covers the model yet, or the chain is slow); the first request opens its own");
            }
            // Reached from outside, requests are paid by API tokens only: anyone who reaches
            // the port must not spend the API account's credits.
            let tokens_only = |b: std::sync::Arc<bitorch_serve::GatewayBackend>| -> std::sync::Arc<dyn bitorch_api::Backend> {
                std::sync::Arc::new(bitorch_api::TokensOnly(b))
            };
            let rpc_backend: std::sync::Arc<dyn bitorch_api::Backend> = if args.rpc_external { tokens_only(backend.clone()) } else { backend.clone() };
            module.merge(bitorch_api::rpc_module(rpc_backend)?).context("merging the generation RPC methods")?;
            let api_ip = if args.api_external { Ipv4Addr::UNSPECIFIED } else { Ipv4Addr::LOCALHOST };
            let http = bitorch_api::HttpConfig {
                addr: SocketAddr::new(IpAddr::V4(api_ip), args.api_port),
                origins: args.api_cors.clone(),
                rpc_port: Some(args.rpc_port),
                gateway: Some(to_ss58(&account_of(&api_key))),
                ..Default::default()
            };
            let api_backend: std::sync::Arc<dyn bitorch_api::Backend> = if args.api_external { tokens_only(backend.clone()) } else { backend.clone() };
            let api = bitorch_api::serve_with(http, api_backend, cancel.clone()).await?;
            tracing::info!(target: "node", model = %name, payer = %to_ss58(&account_of(&api_key)), "OpenAI-compatible API on http://{api}/v1/chat/completions");
        }
        if !args.no_prometheus {
            let ip = if args.prometheus_external { Ipv4Addr::UNSPECIFIED } else { Ipv4Addr::LOCALHOST };
            match crate::metrics::serve(SocketAddr::new(IpAddr::V4(ip), args.prometheus_port), metrics, cancel.clone()).await {
                Ok(at) => tracing::info!(target: "node", "Prometheus metrics on http://{at}/metrics"),
                Err(e) => tracing::warn!(target: "node", error = %format!("{e:#}"), "no Prometheus endpoint (pass --prometheus-port PORT or --no-prometheus)"),
            }
        }
        let (rpc, addr) = bitorch_rpc::start(SocketAddr::new(ip, args.rpc_port), module, args.rpc_cors.clone()).await?;
        tracing::info!(target: "node", chain = %chain_name, %genesis, best, base_path = %base.display(), "node started");
        tracing::info!(target: "node", "JSON-RPC listening on http://{addr} and ws://{addr}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!(target: "node", "interrupted; shutting down"),
            _ = term.recv() => tracing::info!(target: "node", "terminated; shutting down"),
            _ = cancel.cancelled() => tracing::error!(target: "node", "a critical task failed; shutting down"),
            r = &mut service_task => {
                tracing::error!(target: "node", result = ?r, "the chain service stopped unexpectedly; shutting down");
                cancel.cancel();
                bail!("the chain service stopped unexpectedly");
            }
        }
        if let Some((stop, task)) = claimer {
            // Claims of the sessions closed last are submitted before the node goes.
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some((net, model, stop, task)) = served {
            stop.cancel();
            let _ = task.await;
            // Gateways stop routing here once the withdrawal reaches the DHT.
            bitorch_serve::withdraw(&net, model, Duration::from_secs(2)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        cancel.cancel();
        let _ = rpc.stop();
        if let Some(a) = authoring {
            let _ = a.await;
        }
        let _ = service_task.await;
        Ok::<_, anyhow::Error>(())
    })
}

/// Where `--serve-model` takes its model from.
enum ModelSource {
    /// A file, imported into the store.
    Imported(bitorch_runtime::models::Manifest),
    /// A model registered on chain.
    Id(bitorch_primitives::H256),
}

/// The default base path: `~/.local/share/bitorch`.
pub(crate) fn default_base_path() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; pass --base-path")?;
    Ok(PathBuf::from(home).join(".local/share/bitorch"))
}

/// Writes a chain spec.
pub fn chain_spec(args: ChainSpecArgs) -> Result<()> {
    let spec = match args.chain.as_str() {
        "dev" => ChainSpec::dev()?,
        "local" => ChainSpec::local(args.validators)?,
        other => bail!("unknown chain '{other}': use dev or local"),
    };
    let json = spec.to_json()?;
    match args.output {
        Some(path) => std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}

/// Deletes a chain's database.
pub fn purge(args: PurgeArgs) -> Result<()> {
    let spec = ChainSpec::load(&args.chain)?;
    let db = db_path(&args.base_path, &spec);
    if !db.exists() {
        println!("{} does not exist; nothing to purge", db.display());
        return Ok(());
    }
    if !args.yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            bail!("refusing to delete {} without confirmation; pass -y", db.display());
        }
        print!("Delete {}? [y/N]: ", db.display());
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            println!("Aborted");
            return Ok(());
        }
    }
    std::fs::remove_dir_all(&db).with_context(|| format!("deleting {}", db.display()))?;
    println!("{} removed", db.display());
    Ok(())
}
