//! Configuration of the network service.

use crate::key::NodeKey;
use libp2p::Multiaddr;
use std::time::Duration;

/// Default port (TCP; QUIC may use the same number over UDP).
pub const DEFAULT_PORT: u16 = 30333;

/// How the network service runs. [`Config::new`] gives production defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node's identity.
    pub node_key: NodeKey,
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/30333` by default): TCP (`/ip4/…/tcp/N`),
    /// QUIC (`/ip4/…/udp/N/quic-v1`), or both. Port 0 picks a free port;
    /// [`Handle::listen_addresses`](crate::Handle::listen_addresses) tells which.
    pub listen: Vec<Multiaddr>,
    /// Boot nodes, each `…/p2p/<peer id>`. Discovery through the DHT starts from these.
    pub boot_nodes: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS (off by default; sends multicast).
    pub mdns: bool,
    /// Below this many connected peers, the service dials peers it knows from the DHT and
    /// looks for more.
    pub target_peers: usize,
    /// Most established connections in all.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Most pending (handshaking) incoming connections.
    pub max_pending_incoming: u32,
    /// Largest gossip message sent or accepted, in bytes.
    pub max_gossip_bytes: usize,
    /// Forward a gossip message only once the node has checked it (each
    /// [`Event::Gossip`](crate::Event::Gossip) then needs a
    /// [`Handle::gossip_verdict`](crate::Handle::gossip_verdict)), so that garbage is not
    /// relayed. On by default.
    pub validate_gossip: bool,
    /// Timeout of a sync request, and the time the node has to answer one.
    pub sync_timeout: Duration,
    /// Most inbound sync requests waiting for the node's answer; more are refused as busy.
    pub max_pending_sync_requests: usize,
    /// Most outbound sync requests in flight.
    pub max_outbound_sync_requests: usize,
    /// Timeout of a stage request (`/bitorch/stage/1`), and the time the node has to answer
    /// one. A prefill of a long prompt takes seconds on a CPU.
    pub stage_timeout: Duration,
    /// Largest stage request payload sent or accepted, in bytes. A peer that sends a larger
    /// one is refused and banned, so nodes of one network must agree on it.
    pub max_stage_request_bytes: usize,
    /// Largest stage answer payload sent or accepted, in bytes (a last stage answers 192 KiB
    /// of logits per token of a 49,152-token vocabulary).
    pub max_stage_response_bytes: usize,
    /// Most inbound stage requests waiting for the node's answer; more are refused as busy.
    pub max_pending_stage_requests: usize,
    /// Most outbound stage requests in flight.
    pub max_outbound_stage_requests: usize,
    /// Most stage requests in flight on one connection, both ways together.
    pub max_stage_streams_per_connection: usize,
    /// Most bytes of inbound stage requests held in memory (being read, or waiting for the
    /// node's answer), over all connections; past it requests are refused as busy.
    pub max_stage_inbound_bytes: usize,
    /// Timeout of a piece request (`/bitorch/pieces/1`), and the time the node has to
    /// answer one (its upload rate limit may hold an answer back).
    pub piece_timeout: Duration,
    /// Most inbound piece requests waiting for the node's answer; more are refused as busy.
    pub max_pending_piece_requests: usize,
    /// Most outbound piece requests in flight.
    pub max_outbound_piece_requests: usize,
    /// Most piece requests in flight on one connection, both ways together: how many pieces
    /// one peer may fetch from this node at once.
    pub max_piece_streams_per_connection: usize,
    /// How long a worker announcement, and the provider records of every node, stay valid in
    /// the DHT unless refreshed.
    pub worker_record_ttl: Duration,
    /// How often the node publishes its worker announcements again; well under
    /// `worker_record_ttl`.
    pub worker_refresh_interval: Duration,
    /// The longest a worker lookup ([`Handle::find_workers`](crate::Handle::find_workers))
    /// takes; it answers with what it found by then.
    pub find_workers_timeout: Duration,
    /// Most workers one lookup returns, and most providers of one model a node stores.
    pub max_workers_per_model: usize,
    /// How long a misbehaving peer stays banned.
    pub ban_duration: Duration,
    /// A connection no protocol uses is closed after this long.
    pub idle_connection_timeout: Duration,
    /// A connection that has answered no ping for this long is dead and closed (see
    /// [`liveness`](crate::liveness)): a link that silently stopped carrying packets fails its
    /// requests within seconds instead of at their own timeouts.
    pub liveness_timeout: Duration,
    /// How often the service checks its connections, lifts expired bans and dials more peers.
    pub maintenance_interval: Duration,
    /// How often, while under `target_peers`, it walks the DHT for new peers.
    pub discovery_interval: Duration,
    /// Capacity of the command channel of the [`Handle`](crate::Handle).
    pub command_capacity: usize,
    /// Capacity of the [`Event`](crate::Event) channel. When the node falls this far behind,
    /// further events are dropped with a warning (and sync requests answered as busy), so
    /// that the swarm never stalls.
    pub event_capacity: usize,
    /// Addresses others reach this node at, announced as its own (`--public-addr`): confirmed
    /// at once, so that the node can serve as a relay without waiting for AutoNAT.
    pub public_addresses: Vec<Multiaddr>,
    /// Circuits (relay v2) this node relays for peers behind NAT once it is reachable (a
    /// confirmed external address); `None`: it relays nothing.
    pub relay_server: Option<RelayLimits>,
    /// Found unreachable by AutoNAT, the node reserves a slot on relays it is connected to and
    /// listens through them (at most `max_relays` at once).
    pub use_relays: bool,
    /// Most relays the node listens through at once.
    pub max_relays: usize,
    /// Whether AutoNAT counts private IP addresses (10/8, 192.168/16, …) as reachable: on for
    /// a LAN or a test bed of network namespaces, off on the internet.
    pub private_ips_reachable: bool,
    /// AutoNAT: the first probe of this node's reachability, this long after start.
    pub autonat_boot_delay: Duration,
    /// AutoNAT: between probes while the node's reachability is unknown or unsure.
    pub autonat_retry_interval: Duration,
}

/// Limits of the circuits a relay serves for peers behind NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most peers holding a reservation (a slot to be reached through) at once.
    pub max_reservations: usize,
    /// Most circuits relayed at once.
    pub max_circuits: usize,
    /// Most circuits to or from one peer at once.
    pub max_circuits_per_peer: usize,
    /// A circuit is closed after this long.
    pub max_circuit_duration: Duration,
    /// A circuit is closed after relaying this many bytes (each way).
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// Room for a few stage sessions each: a circuit carries a generation's activations
    /// (about 2.3 KB per token and stage for a 576-wide model) until hole punching replaces it.
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(10 * 60),
            max_circuit_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Production defaults with the given identity.
    pub fn new(node_key: NodeKey) -> Self {
        let listen = format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
            .parse()
            .map_or_else(|_| Vec::new(), |a| vec![a]);
        Self {
            node_key,
            listen,
            boot_nodes: Vec::new(),
            mdns: false,
            target_peers: 16,
            max_connections: 64,
            max_connections_per_peer: 2,
            max_pending_incoming: 32,
            max_gossip_bytes: 16 * 1024 * 1024,
            validate_gossip: true,
            sync_timeout: Duration::from_secs(20),
            max_pending_sync_requests: 64,
            max_outbound_sync_requests: 256,
            stage_timeout: Duration::from_secs(30),
            max_stage_request_bytes: crate::stage::DEFAULT_MAX_REQUEST_BYTES,
            max_stage_response_bytes: crate::stage::DEFAULT_MAX_RESPONSE_BYTES,
            max_pending_stage_requests: 256,
            max_outbound_stage_requests: 1024,
            max_stage_streams_per_connection: 256,
            max_stage_inbound_bytes: 256 * 1024 * 1024,
            piece_timeout: Duration::from_secs(30),
            max_pending_piece_requests: 128,
            max_outbound_piece_requests: 512,
            max_piece_streams_per_connection: 16,
            worker_record_ttl: Duration::from_secs(90),
            worker_refresh_interval: Duration::from_secs(30),
            find_workers_timeout: Duration::from_secs(5),
            max_workers_per_model: 256,
            ban_duration: Duration::from_secs(600),
            idle_connection_timeout: Duration::from_secs(60),
            liveness_timeout: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(30),
            command_capacity: 1024,
            event_capacity: 4096,
            public_addresses: Vec::new(),
            relay_server: Some(RelayLimits::default()),
            use_relays: true,
            max_relays: 2,
            private_ips_reachable: false,
            autonat_boot_delay: Duration::from_secs(5),
            autonat_retry_interval: Duration::from_secs(30),
        }
    }
}
