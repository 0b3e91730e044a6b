//! The composed libp2p behaviour: one field per protocol.

use crate::config::Config;
use crate::error::Error;
use crate::gossip::Topic;
use crate::relay_server::RelayServer;
use crate::{pieces, stage, sync};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair,
    kad, mdns, ping, relay, request_response, StreamProtocol,
};

/// The Kademlia protocol name: our own DHT, not the IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bitorch/kad/1");
/// What identify announces as the protocol version.
pub const IDENTIFY_VERSION: &str = "/bitorch/1";

/// Every protocol the node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Banned peers: their connections are refused and closed.
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Caps on connections.
    pub(crate) limits: connection_limits::Behaviour,
    /// Exchanges listen addresses and protocols.
    pub(crate) identify: identify::Behaviour,
    /// Liveness.
    pub(crate) ping: ping::Behaviour,
    /// Peer discovery.
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Transactions and consensus messages.
    pub(crate) gossipsub: gossipsub::Behaviour,
    /// Block sync.
    pub(crate) sync: request_response::Behaviour<sync::Codec>,
    /// Stage requests between gateways and workers.
    pub(crate) stage: request_response::Behaviour<stage::Codec>,
    /// Pieces of model chunks between peers.
    pub(crate) pieces: request_response::Behaviour<stage::Codec>,
    /// LAN discovery, when enabled.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Whether this node is reachable from outside (AutoNAT v1: peers dial it back).
    pub(crate) autonat: autonat::Behaviour,
    /// Relays circuits for peers behind NAT (circuit relay v2), once reachable, when enabled.
    pub(crate) relay: Toggle<RelayServer>,
    /// Reserves slots on relays and dials peers through them.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Upgrades a relayed connection to a direct one (hole punching).
    pub(crate) dcutr: dcutr::Behaviour,
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        config: &Config,
        relay_client: relay::client::Behaviour,
    ) -> Result<Self, Error> {
        let peer_id = key.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                .with_agent_version(format!("bitorch/{}", env!("CARGO_PKG_VERSION")))
                // A node that starts listening through a relay tells its peers at once.
                .with_push_listen_addr_updates(true),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(std::time::Duration::from_secs(30));
        // Records and provider records live as long as a worker announcement and are
        // refreshed by their publisher (`workers`), not by Kademlia. The DHT holds worker
        // records only: each is verified before it is stored for another peer, and a writer
        // of anything else is penalised (`directory`).
        kad_config
            .set_record_ttl(Some(config.worker_record_ttl))
            .set_provider_record_ttl(Some(config.worker_record_ttl))
            .set_publication_interval(None)
            .set_provider_publication_interval(None)
            .set_record_filtering(kad::StoreInserts::FilterBoth);
        // libp2p's defaults (1,024 keys provided, counting other peers' records too; 20
        // providers per key) are too few for a node that holds every chunk of a few models.
        let store_config = kad::store::MemoryStoreConfig {
            max_providers_per_key: config.max_workers_per_model.max(1),
            max_provided_keys: 65_536,
            max_records: 65_536,
            ..Default::default()
        };
        let store = kad::store::MemoryStore::with_config(peer_id, store_config);
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Answer DHT queries even before an external address is confirmed (on a LAN or
        // loopback one never is), so that peers learn of each other through us.
        kad.set_mode(Some(kad::Mode::Server));

        let mut gossip_config = gossipsub::ConfigBuilder::default();
        gossip_config
            .max_transmit_size(config.max_gossip_bytes)
            .validation_mode(gossipsub::ValidationMode::Strict);
        if config.validate_gossip {
            gossip_config.validate_messages();
        }
        let gossip_config =
            gossip_config.build().map_err(|e| Error::Build(format!("gossipsub config: {e}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| Error::Build(format!("gossipsub: {e}")))?;
        for topic in Topic::ALL {
            gossipsub
                .subscribe(&topic.ident())
                .map_err(|e| Error::Build(format!("subscribing to {topic}: {e}")))?;
        }

        let sync = request_response::Behaviour::new(
            [(sync::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.sync_timeout)
                .with_max_concurrent_streams(config.max_pending_sync_requests.max(1)),
        );

        let stage = request_response::Behaviour::with_codec(
            stage::Codec {
                max_request_bytes: config.max_stage_request_bytes,
                max_response_bytes: config.max_stage_response_bytes,
                budget: stage::Budget::new(config.max_stage_inbound_bytes),
            },
            [(stage::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.stage_timeout)
                .with_max_concurrent_streams(config.max_stage_streams_per_connection.max(1)),
        );

        // Per-peer concurrency of piece transfers: streams on one connection.
        let pieces = request_response::Behaviour::with_codec(
            stage::Codec {
                max_request_bytes: pieces::MAX_REQUEST_BYTES,
                max_response_bytes: pieces::MAX_RESPONSE_BYTES,
                budget: stage::Budget::new(
                    pieces::MAX_REQUEST_BYTES * config.max_pending_piece_requests.max(1) * 2,
                ),
            },
            [(pieces::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.piece_timeout)
                .with_max_concurrent_streams(config.max_piece_streams_per_connection.max(1)),
        );

        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| Error::Build(format!("mDNS: {e}")))?,
            )
        } else {
            None
        };

        Ok(Self {
            blocked: Default::default(),
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(crate::liveness::PING_INTERVAL)
                    .with_timeout(config.liveness_timeout),
            ),
            kad,
            gossipsub,
            sync,
            stage,
            pieces,
            mdns: mdns.into(),
            autonat: autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    boot_delay: config.autonat_boot_delay,
                    retry_interval: config.autonat_retry_interval,
                    only_global_ips: !config.private_ips_reachable,
                    // Longer than a dial-back may take (the TCP dial timeout).
                    timeout: std::time::Duration::from_secs(30),
                    ..Default::default()
                },
            ),
            relay: config
                .relay_server
                .map(|l| {
                    RelayServer::new(relay::Behaviour::new(
                        peer_id,
                        relay::Config {
                            max_reservations: l.max_reservations,
                            max_circuits: l.max_circuits,
                            max_circuits_per_peer: l.max_circuits_per_peer,
                            max_circuit_duration: l.max_circuit_duration,
                            max_circuit_bytes: l.max_circuit_bytes,
                            ..Default::default()
                        },
                    ))
                })
                .into(),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
        })
    }
}
