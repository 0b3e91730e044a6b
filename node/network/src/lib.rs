//! Bitorch peer-to-peer networking on libp2p (tokio).
//!
//! One task, started by [`spawn`], owns the libp2p swarm; the node drives it through a
//! cloneable [`Handle`] (bounded command channel, a `oneshot` answer per call) and receives
//! [`Event`]s on a bounded channel: gossip messages with the peer that sent them, inbound
//! block-sync requests with a `oneshot` for the answer, and peers connecting and leaving.
//! Inbound stage requests ([`StageInbound`]) come on a bounded channel of their own, which
//! the serving service consumes (the chain's consensus and sync never see them).
//!
//! Protocols, one behaviour each (see [`behaviour`]):
//! - transports: TCP with noise and yamux, and QUIC (`quic-v1`, TLS 1.3 with the libp2p
//!   certificate; streams multiplexed by QUIC itself). A node listens on every address of
//!   [`Config::listen`], which may mix `/ip4/…/tcp/N` and `/ip4/…/udp/N/quic-v1`, and dials
//!   either kind; TCP is the default;
//! - identify and ping;
//! - Kademlia (`/bitorch/kad/1`) for discovery: a node given one boot node learns the others,
//!   and while it has fewer than [`Config::target_peers`] it dials its boot nodes and the
//!   peers in its routing table and walks the DHT for more;
//! - gossipsub on versioned topics ([`Topic`]: `/bitorch/tx/1`, `/bitorch/consensus/1`), with
//!   signed messages and a maximum message size;
//! - request-response block sync ([`sync`], `/bitorch/sync/1`): SCALE request and response
//!   types with explicit size limits; blocks travel as opaque bytes with their commits;
//! - request-response stage requests ([`stage`], `/bitorch/stage/1`): opaque payloads for the
//!   inference service, limited in size both ways ([`Config::max_stage_request_bytes`],
//!   [`Config::max_stage_response_bytes`]) and in what waits for the node, many at once on one
//!   connection: [`Handle::stage_request`] out, [`Service::stage_requests`] in;
//! - request-response piece requests ([`pieces`], `/bitorch/pieces/1`): the pieces of model
//!   chunks and their hashes, between peers, with their own size limits and per-peer
//!   concurrency ([`Config::max_piece_streams_per_connection`]):
//!   [`Handle::piece_request`] out, [`Service::piece_requests`] in; a node provides the
//!   chunks it holds in the DHT ([`Handle::provide_chunks`]) and finds who holds one
//!   ([`Handle::find_chunk_providers`]);
//! - worker announcements in the DHT ([`workers`]): [`Handle::announce_worker`] publishes a
//!   [`WorkerAnnouncement`] signed by the node key (a provider record for the model and the
//!   signed record) and keeps it fresh until [`Handle::withdraw_worker`];
//!   [`Handle::find_workers`] returns the verified announcements of a model's workers, within
//!   [`Config::find_workers_timeout`], and remembers their addresses for stage requests.
//!   Records are verified before a node stores them for others;
//! - mDNS for LANs, behind [`Config::mdns`] (off by default);
//! - connection limits and a ban list.
//!
//! Peer score ([`peers`]): a peer that sends an undecodable or oversized sync or stage message
//! or a forged worker record, or that the node reports with [`Handle::report_peer`], is
//! penalised; at [`peers::BAN_THRESHOLD`] it is disconnected and its connections are refused
//! until the ban expires. The node keeps
//! working. The operator can ban and unban peers directly ([`Handle::ban_peer`],
//! [`Handle::unban_peer`]); when a ban ends, however it ends, the node dials the peer again.
//!
//! The node's identity is a persistent ed25519 key ([`key`]), in the format
//! `bitorch key generate-node-key` writes.

mod actor;
pub mod behaviour;
pub mod config;
mod directory;
pub mod error;
pub mod event;
pub mod gossip;
pub mod handle;
pub mod key;
pub mod liveness;
pub mod peers;
pub mod pieces;
pub mod reach;
mod relay_server;
pub mod request;
pub mod stage;
pub mod sync;
pub mod tx_batch;
pub mod workers;

pub use config::Config;
pub use error::Error;
pub use event::{Event, Inbound, StageInbound};
pub use gossip::{GossipId, Topic, Verdict};
pub use handle::Handle;
pub use key::NodeKey;
pub use libp2p::{identity::Keypair, Multiaddr, PeerId};
pub use peers::Misbehaviour;
pub use reach::{NatState, PeerLink, Reachability};
pub use request::Refusal;
pub use workers::{ModelId, WorkerAnnouncement};

use libp2p::core::Transport as _;
use libp2p::{noise, tcp, yamux};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A started network service.
pub struct Service {
    /// Drives the service.
    pub handle: Handle,
    /// Gossip, sync requests and peers coming and going.
    pub events: mpsc::Receiver<Event>,
    /// Peers' stage requests (at most [`Config::max_pending_stage_requests`] wait here; more
    /// are refused as busy, as are all of them once this receiver is dropped).
    pub stage_requests: mpsc::Receiver<StageInbound>,
    /// Peers' piece requests (at most [`Config::max_pending_piece_requests`] wait here; more
    /// are refused as busy, as are all of them once this receiver is dropped).
    pub piece_requests: mpsc::Receiver<StageInbound>,
    /// The service task; it ends when `cancel` fires or every handle is dropped.
    pub task: tokio::task::JoinHandle<()>,
}

/// The longest a TCP dial and its upgrade (noise, yamux) may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the network service: loads the node key, listens, dials the boot nodes and starts
/// discovery. Must be called inside a tokio runtime.
pub fn spawn(config: Config, cancel: CancellationToken) -> Result<Service, Error> {
    let keypair = config.node_key.keypair()?;
    let local_peer_id = keypair.public().to_peer_id();
    let boot_nodes = config
        .boot_nodes
        .iter()
        .map(|a| actor::split_peer(a).ok_or_else(|| Error::BootNodeWithoutPeerId(a.clone())))
        .collect::<Result<Vec<_>, _>>()?;

    let idle = config.idle_connection_timeout;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_quic()
        .with_other_transport(|key| {
            // TCP with a deadline on dialing and upgrading: a dial to an address behind NAT
            // that drops it (no refusal) fails in seconds rather than after the kernel's SYN
            // retries (about 2 minutes), so that AutoNAT's dial-backs come back with an answer.
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(DIAL_TIMEOUT),
            )
        })
        .map_err(|e| Error::Build(format!("TCP transport: {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Build(format!("relay transport: {e}")))?
        .with_behaviour(|key, relay_client| {
            behaviour::Behaviour::new(key, &config, relay_client)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| Error::Build(e.to_string()))?
        // Streams name their one protocol and send at once (multistream-select's "lazy"
        // dialer): a request does not wait a round trip for the protocol to be confirmed, which
        // on a 50 ms link is 50 ms of every generated token.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();

    for addr in &config.public_addresses {
        swarm.add_external_address(addr.clone());
    }
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Listen { addr: addr.clone(), reason: e.to_string() })?;
    }
    for (peer, addr) in &boot_nodes {
        swarm.behaviour_mut().kad.add_address(peer, addr.clone());
    }
    for addr in &config.boot_nodes {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(target: "network", %addr, error = %e, "cannot dial boot node");
        }
    }
    if !boot_nodes.is_empty() {
        // Fails only without known peers, which the boot nodes just provided.
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    tracing::info!(target: "network", peer = %local_peer_id, boot_nodes = boot_nodes.len(), mdns = config.mdns, "network service starting");

    let (tx, commands) = mpsc::channel(config.command_capacity.max(1));
    let (events_tx, events) = mpsc::channel(config.event_capacity.max(1));
    let (stage_tx, stage_requests) = mpsc::channel(config.max_pending_stage_requests.max(1));
    let (piece_tx, piece_requests) = mpsc::channel(config.max_pending_piece_requests.max(1));
    let task = tokio::spawn(
        actor::EventLoop::new(
            swarm, keypair, config, commands, events_tx, stage_tx, piece_tx, boot_nodes,
        )
        .run(cancel),
    );
    Ok(Service {
        handle: Handle::new(tx, local_peer_id),
        events,
        stage_requests,
        piece_requests,
        task,
    })
}
