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
    /// Timeout of a sync request, and the time the node has to answer one.
    pub sync_timeout: Duration,
    /// Most inbound sync requests waiting for the node's answer; more are refused as busy.
    pub max_pending_sync_requests: usize,
    /// Most outbound sync requests in flight.
    pub max_outbound_sync_requests: usize,
    /// How long a misbehaving peer stays banned.
    pub ban_duration: Duration,
    /// A connection no protocol uses is closed after this long.
    pub idle_connection_timeout: Duration,
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
            sync_timeout: Duration::from_secs(20),
            max_pending_sync_requests: 64,
            max_outbound_sync_requests: 256,
            ban_duration: Duration::from_secs(600),
            idle_connection_timeout: Duration::from_secs(60),
            maintenance_interval: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(30),
            command_capacity: 1024,
            event_capacity: 4096,
        }
    }
}
