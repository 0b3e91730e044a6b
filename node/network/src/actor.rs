//! The service task: owns the swarm, serves [`Command`]s, turns swarm events into [`Event`]s,
//! keeps the connection set healthy and enforces bans.

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::config::Config;
use crate::directory::Directory;
use crate::error::Error;
use crate::event::{Event, StageInbound};
use crate::gossip::{GossipId, Topic, Verdict};
use crate::handle::Command;
use crate::liveness::{Liveness, PING_INTERVAL};
use crate::peers::{Lifted, Misbehaviour, PeerBook};
use crate::reach::Reach;
use crate::request::{BadRequesters, Outbound, Pending, Proto, Refusal, Replies};
use crate::sync::{self, SyncBlock};
use crate::{pieces, stage};
use libp2p::futures::future::BoxFuture;
use libp2p::futures::stream::FuturesUnordered;
use libp2p::futures::{FutureExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, dcutr, gossipsub, identify, kad, mdns, relay, Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TARGET: &str = "network";

/// The node's answer to an inbound sync request, or why there is none.
type Reply = (ResponseChannel<sync::Frame<sync::Response>>, PeerId, Option<sync::Response>);
/// The node's answer to an inbound stage request, or why there is none, and the request's
/// share of the inbound budget, returned once the answer is on its way.
/// The stage and piece protocols share this (both carry opaque bytes).
type StageReply = (
    Proto,
    ResponseChannel<stage::ResponseFrame>,
    PeerId,
    Option<Vec<u8>>,
    Option<stage::Reservation>,
);

/// Most chunk provider lookups at once.
const MAX_CHUNK_LOOKUPS: usize = 256;

/// A chunk provider lookup in progress.
struct ChunkLookup {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<Result<Vec<PeerId>, Error>>,
}

/// One request-response protocol's state: our requests waiting for answers (`X`: what the
/// answer is checked against), and peers' requests waiting for the node's answer.
struct ProtocolState<T, X, R> {
    outbound: Outbound<T, X>,
    replies: Replies<R>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    config: Config,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// Where peers' stage requests go (the serving service).
    stage_requests: mpsc::Sender<StageInbound>,
    /// Where peers' piece requests go (the model store's seeder).
    piece_requests: mpsc::Sender<StageInbound>,
    peers: PeerBook,
    /// Block sync: the most blocks asked of each request, and the answers.
    sync: ProtocolState<Vec<SyncBlock>, u32, Reply>,
    /// Stage requests.
    stage: ProtocolState<Vec<u8>, (), StageReply>,
    /// Piece requests.
    pieces: ProtocolState<Vec<u8>, (), StageReply>,
    /// The chunks this node provides in the DHT.
    provided: HashSet<pieces::ChunkRoot>,
    /// Provider lookups of chunks in progress: the providers found so far, and the caller.
    chunk_lookups: HashMap<kad::QueryId, ChunkLookup>,
    /// Worker announcements: this node's, and the lookups in progress.
    directory: Directory,
    /// Deadlines of the worker lookups in progress.
    find_deadlines: FuturesUnordered<BoxFuture<'static, u64>>,
    /// Deadlines of the chunk provider lookups in progress.
    chunk_deadlines: FuturesUnordered<BoxFuture<'static, kad::QueryId>>,
    /// Peers that sent a bad request, on any protocol.
    bad: BadRequesters,
    /// The boot nodes: dialed again whenever the node is short of peers, and when their ban
    /// ends.
    boot_nodes: Vec<(PeerId, Multiaddr)>,
    last_discovery: Option<Instant>,
    /// Reachability: AutoNAT's verdict, relays, relayed connections.
    reach: Reach,
    /// When each connection last answered a ping; silent ones are closed.
    liveness: Liveness,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        keypair: Keypair,
        config: Config,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        stage_requests: mpsc::Sender<StageInbound>,
        piece_requests: mpsc::Sender<StageInbound>,
        boot_nodes: Vec<(PeerId, Multiaddr)>,
    ) -> Self {
        Self {
            swarm,
            peers: PeerBook::new(config.ban_duration),
            directory: Directory::new(
                keypair,
                config.worker_record_ttl,
                config.max_workers_per_model,
            ),
            sync: ProtocolState {
                outbound: Outbound::new(config.max_outbound_sync_requests),
                replies: Replies::new(config.max_pending_sync_requests),
            },
            stage: ProtocolState {
                outbound: Outbound::new(config.max_outbound_stage_requests),
                replies: Replies::new(config.max_pending_stage_requests),
            },
            pieces: ProtocolState {
                outbound: Outbound::new(config.max_outbound_piece_requests),
                replies: Replies::new(config.max_pending_piece_requests),
            },
            provided: HashSet::new(),
            chunk_lookups: HashMap::new(),
            reach: Reach::new(&config),
            liveness: Liveness::new(config.liveness_timeout),
            config,
            commands,
            events,
            stage_requests,
            piece_requests,
            find_deadlines: FuturesUnordered::new(),
            chunk_deadlines: FuturesUnordered::new(),
            bad: BadRequesters::default(),
            boot_nodes,
            last_discovery: None,
        }
    }

    /// Runs until `cancel` fires or every handle is dropped.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let period = self.config.maintenance_interval.max(Duration::from_millis(10));
        let mut maintenance = tokio::time::interval(period);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let period = self.config.worker_refresh_interval.max(Duration::from_millis(100));
        let mut refresh = tokio::time::interval_at(Instant::now() + period, period);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut liveness = tokio::time::interval(PING_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                reply = self.stage.replies.next() => self.send_stage_reply(reply),
                reply = self.pieces.replies.next() => self.send_stage_reply(reply),
                reply = self.sync.replies.next() => self.send_reply(reply),
                Some(find) = self.find_deadlines.next(), if !self.find_deadlines.is_empty() => {
                    self.directory.expire(&mut self.swarm, find)
                }
                Some(query) = self.chunk_deadlines.next(), if !self.chunk_deadlines.is_empty() => {
                    self.finish_chunk_lookup(query)
                }
                _ = refresh.tick() => {
                    self.directory.refresh(&mut self.swarm);
                    self.provide_chunks();
                }
                peer = self.bad.next_due() => self.penalise(peer, Misbehaviour::UndecodableMessage),
                _ = maintenance.tick() => self.maintain(),
                _ = liveness.tick() => {
                    let now = std::time::Instant::now();
                    self.close_dead_connections(now.saturating_duration_since(last_check), now);
                    last_check = now;
                }
            }
        }
        tracing::info!(target: TARGET, peer = %self.swarm.local_peer_id(), "network service stopped");
    }

    fn emit(&self, event: Event) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(e)) => {
                let kind = match e {
                    Event::Gossip { topic, .. } => topic.name(),
                    Event::SyncRequest { .. } => "sync request",
                    Event::PeerConnected(_) => "peer connected",
                    Event::PeerDisconnected(_) => "peer disconnected",
                };
                tracing::warn!(target: TARGET, kind, "event channel full; dropping an event");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn gossip_verdict(&mut self, id: &GossipId, verdict: Verdict) {
        if !self.config.validate_gossip {
            return;
        }
        let acceptance = match verdict {
            Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            Verdict::Reject => gossipsub::MessageAcceptance::Reject,
            Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id.id, &id.from, acceptance);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.publish(topic, data));
            }
            Command::GossipVerdict { id, verdict } => self.gossip_verdict(&id, verdict),
            Command::RequestBlocks { peer, request, reply } => {
                if self.sync.outbound.is_full() {
                    let _ = reply.send(Err(Error::Busy));
                    return;
                }
                let max = request.max.min(sync::MAX_BLOCKS_PER_REQUEST);
                let request = sync::Request { from: request.from, max };
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, Ok(request));
                self.sync.outbound.insert(id, Pending { peer, extra: max, reply });
            }
            Command::StageRequest { peer, data, reply } => {
                self.send_opaque(Proto::Stage, peer, data, reply)
            }
            Command::PieceRequest { peer, data, reply } => {
                self.send_opaque(Proto::Pieces, peer, data, reply)
            }
            Command::ProvideChunks { roots, reply } => {
                let roots: HashSet<_> = roots.into_iter().collect();
                for gone in self.provided.difference(&roots) {
                    self.swarm.behaviour_mut().kad.stop_providing(&pieces::chunk_key(gone));
                }
                let added = roots.difference(&self.provided).count();
                self.provided = roots;
                if added > 0 {
                    self.provide_chunks();
                }
                let _ = reply.send(());
            }
            Command::FindChunkProviders { root, reply } => {
                if self.chunk_lookups.len() >= MAX_CHUNK_LOOKUPS {
                    let _ = reply.send(Err(Error::Busy));
                    return;
                }
                let query = self.swarm.behaviour_mut().kad.get_providers(pieces::chunk_key(&root));
                self.chunk_lookups.insert(query, ChunkLookup { found: HashSet::new(), reply });
                let deadline = tokio::time::sleep(self.config.find_workers_timeout);
                self.chunk_deadlines.push(deadline.map(move |_| query).boxed());
            }
            Command::AnnounceWorker { announcement, reply } => {
                let _ = reply.send(self.directory.announce(&mut self.swarm, announcement));
            }
            Command::WithdrawWorker { model, reply } => {
                let _ = reply.send(self.directory.withdraw(&mut self.swarm, model));
            }
            Command::FindWorkers { model, reply } => {
                if let Some(id) = self.directory.find(&mut self.swarm, model, reply) {
                    let deadline = tokio::time::sleep(self.config.find_workers_timeout);
                    self.find_deadlines.push(deadline.map(move |_| id).boxed());
                }
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::PeerLinks { reply } => {
                let _ = reply.send(self.reach.peers());
            }
            Command::Reachability { reply } => {
                let external = self.swarm.external_addresses().cloned().collect();
                let _ = reply.send(self.reach.snapshot(external));
            }
            Command::ListenAddresses { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::BannedPeers { reply } => {
                let _ = reply.send(self.peers.banned().copied().collect());
            }
            Command::ReportPeer { peer, misbehaviour, reply } => {
                self.penalise(peer, misbehaviour);
                let _ = reply.send(());
            }
            Command::BanPeer { peer, duration, reply } => {
                if peer == *self.swarm.local_peer_id() {
                    let _ = reply.send(Err(Error::BanLocalPeer(peer)));
                    return;
                }
                let duration = if duration.is_zero() { self.peers.default_ban() } else { duration };
                tracing::warn!(target: TARGET, %peer, secs = duration.as_secs(), "operator bans peer");
                self.bad.forget(&peer);
                self.ban(peer, duration);
                let _ = reply.send(Ok(()));
            }
            Command::UnbanPeer { peer, reply } => {
                let lifted = self.peers.unban(&peer);
                let was_banned = lifted.is_some();
                if let Some(lifted) = lifted {
                    tracing::info!(target: TARGET, %peer, "operator lifts ban");
                    self.lift(lifted);
                }
                let _ = reply.send(was_banned);
            }
            Command::Dial { addr, reply } => {
                let result = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| Error::Dial { addr, reason: e.to_string() });
                let _ = reply.send(result);
            }
        }
    }

    fn publish(&mut self, topic: Topic, data: Vec<u8>) -> Result<(), Error> {
        if data.len() > self.config.max_gossip_bytes {
            return Err(Error::MessageTooLarge {
                size: data.len(),
                limit: self.config.max_gossip_bytes,
            });
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.ident(), data)
            .map(|_| ())
            .map_err(|source| Error::Publish { topic, source })
    }

    fn penalise(&mut self, peer: PeerId, misbehaviour: Misbehaviour) {
        tracing::debug!(target: TARGET, %peer, ?misbehaviour, "penalising peer");
        self.bad.forget(&peer);
        if !self.peers.penalise(peer, misbehaviour) {
            return;
        }
        let duration = self.peers.default_ban();
        tracing::warn!(target: TARGET, %peer, ?misbehaviour, secs = duration.as_secs(), "banning peer");
        self.ban(peer, duration);
    }

    /// Bans `peer` for `duration` (replacing any ban it has): closes its connections, refuses
    /// new ones both ways (the block list sits in front of every dial, Kademlia's and mDNS's
    /// included, and of every inbound connection), drops its gossip and keeps gossipsub from
    /// sending through it, and takes it out of the routing table so that discovery neither
    /// dials it nor hands it to others. Where it was reachable is kept with the ban, to dial
    /// it again when the ban ends.
    fn ban(&mut self, peer: PeerId, duration: Duration) {
        let addresses = self.known_addresses(&peer);
        if let Some(evicted) = self.peers.ban(peer, duration, addresses, std::time::Instant::now())
        {
            tracing::info!(target: TARGET, peer = %evicted.peer, "ban list full; lifting the oldest ban");
            self.lift(evicted);
        }
        let behaviour = self.swarm.behaviour_mut();
        behaviour.blocked.block_peer(peer);
        behaviour.gossipsub.blacklist_peer(&peer);
        behaviour.kad.remove_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Ends a ban: lets the peer in again, puts its addresses back in the routing table and
    /// dials it, so that a lifted partition heals without waiting for discovery.
    fn lift(&mut self, lifted: Lifted) {
        let Lifted { peer, mut addresses } = lifted;
        for (boot, addr) in &self.boot_nodes {
            if *boot == peer && !addresses.contains(addr) {
                addresses.push(addr.clone());
            }
        }
        let behaviour = self.swarm.behaviour_mut();
        behaviour.blocked.unblock_peer(peer);
        behaviour.gossipsub.remove_blacklisted_peer(&peer);
        for addr in &addresses {
            behaviour.kad.add_address(&peer, addr.clone());
        }
        if !addresses.is_empty() {
            self.dial_peer(peer, addresses);
        }
    }

    /// The addresses the routing table and the boot node list have for `peer`.
    fn known_addresses(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addresses: Vec<Multiaddr> =
            self.boot_nodes.iter().filter(|(p, _)| p == peer).map(|(_, a)| a.clone()).collect();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                if entry.node.key.preimage() == peer {
                    addresses.extend(entry.node.value.iter().cloned());
                }
            }
        }
        addresses
    }

    fn dial_peer(&mut self, peer: PeerId, addresses: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addresses)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(target: TARGET, %peer, error = %e, "dial failed");
        }
    }

    /// Starts listening through relays when unreachable (stops when reachable), and closes
    /// relayed connections a direct one made redundant.
    fn use_relays(&mut self) {
        let (start, stop) = self.reach.plan(&self.config);
        for listener in stop {
            self.swarm.remove_listener(listener);
        }
        for (relay, circuit) in start {
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    tracing::info!(target: TARGET, %relay, %circuit, "unreachable: listening through a relay");
                    self.reach.listening_through(relay, listener);
                }
                Err(e) => {
                    tracing::warn!(target: TARGET, %relay, error = %e, "cannot listen through the relay")
                }
            }
        }
        self.close_redundant();
    }

    /// Closes relayed connections a direct one made redundant, to peers with no request of
    /// ours in flight. Also run after each stage answer: a generation keeps a request in flight
    /// almost all the time, and the moment between two tokens is when its relayed connection
    /// can go (until then request-response spreads the tokens over both connections, and half
    /// of them take the relay's detour).
    fn close_redundant(&mut self) {
        let busy = |peer: &PeerId| {
            self.stage.outbound.has_pending_to(peer)
                || self.pieces.outbound.has_pending_to(peer)
                || self.sync.outbound.has_pending_to(peer)
        };
        for id in self.reach.redundant(busy) {
            tracing::debug!(target: TARGET, connection = ?id, "closing a relayed connection: a direct one exists");
            self.swarm.close_connection(id);
        }
    }

    /// Closes the connections that answered no ping for the liveness timeout. When this loop
    /// itself was held up (`since_last` well past the ping interval: a starved process), the
    /// answers may be waiting unread in its queue, so every connection gets a fresh start
    /// instead.
    fn close_dead_connections(&mut self, since_last: Duration, now: std::time::Instant) {
        if since_last > PING_INTERVAL * 3 {
            tracing::debug!(target: TARGET, ?since_last, "event loop held up; connections get a fresh start");
            self.liveness.restart(now);
            return;
        }
        for (id, peer) in self.liveness.dead(now) {
            tracing::info!(target: TARGET, %peer, connection = ?id, timeout = ?self.liveness.deadline(), "closing a connection that answers no ping");
            self.swarm.close_connection(id);
        }
    }

    fn maintain(&mut self) {
        self.use_relays();
        for (peer, addresses) in self.reach.retry_direct(std::time::Instant::now()) {
            tracing::debug!(target: TARGET, %peer, ?addresses, "dialing a relayed-only peer directly");
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::NotDialing)
                .addresses(addresses)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(target: TARGET, %peer, error = %e, "direct dial not started");
            }
        }
        for lifted in self.peers.expire(std::time::Instant::now()) {
            tracing::info!(target: TARGET, peer = %lifted.peer, "ban expired");
            self.lift(lifted);
        }
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let wanted = self.config.target_peers.saturating_sub(connected.len());
        if wanted == 0 {
            return;
        }
        // Dial the boot nodes and the peers the DHT knows that we are not connected to. The
        // boot nodes come first and always: the DHT forgets an address whose dial failed, so
        // a node whose boot nodes were all down for a while would otherwise stay alone.
        let wanted_peer = |peer: &PeerId| !connected.contains(peer) && !self.peers.is_banned(peer);
        let mut candidates: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, addr) in &self.boot_nodes {
            if !wanted_peer(peer) {
                continue;
            }
            match candidates.iter_mut().find(|(p, _)| p == peer) {
                Some((_, addresses)) => addresses.push(addr.clone()),
                None => candidates.push((*peer, vec![addr.clone()])),
            }
        }
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let peer = *entry.node.key.preimage();
                if wanted_peer(&peer) && !candidates.iter().any(|(p, _)| *p == peer) {
                    candidates.push((peer, entry.node.value.iter().cloned().collect()));
                }
            }
        }
        for (peer, addresses) in candidates.into_iter().take(wanted) {
            self.dial_peer(peer, addresses);
        }
        // And look for more, now and then.
        let due = self.last_discovery.is_none_or(|t| t.elapsed() >= self.config.discovery_interval);
        if due {
            self.last_discovery = Some(Instant::now());
            self.swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
        }
    }

    fn send_reply(&mut self, (channel, peer, response): Reply) {
        let mut response = response.unwrap_or(sync::Response::Refused(Refusal::Unavailable));
        sync::truncate_to_limit(&mut response);
        if self.swarm.behaviour_mut().sync.send_response(channel, Ok(response)).is_err() {
            tracing::debug!(target: TARGET, %peer, "sync requester went away before the answer");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(target: TARGET, peer = %self.swarm.local_peer_id(), %address, "listening");
                if self.directory.is_announcing() {
                    // Announce the new address too.
                    self.directory.refresh(&mut self.swarm);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                connection_id,
                ..
            } => {
                tracing::debug!(target: TARGET, peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                self.reach.on_connection_established(peer_id, connection_id, &endpoint);
                self.liveness.opened(connection_id, peer_id, std::time::Instant::now());
                if !endpoint.is_relayed() {
                    self.use_relays();
                }
                if num_established.get() == 1 {
                    self.emit(Event::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id, num_established, cause, connection_id, ..
            } => {
                tracing::debug!(target: TARGET, peer = %peer_id, ?cause, "connection closed");
                self.reach.on_connection_closed(&peer_id, connection_id);
                self.liveness.closed(connection_id);
                if num_established == 0 {
                    self.peers.forget(&peer_id);
                    self.emit(Event::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(target: TARGET, peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(target: TARGET, addr = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.reach.on_listener_closed(listener_id);
            }
            SwarmEvent::ExternalAddrConfirmed { address } if crate::reach::is_relayed(&address) => {
                // A slot reserved on a relay: peers learn it as a listen address. Kept out of
                // the external addresses, or this node (unreachable) would offer to relay.
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(target: TARGET, %address, "external address confirmed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if !self.peers.is_banned(&peer_id) =>
            {
                let relays = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
                self.reach.on_identify(peer_id, relays, &info.listen_addrs);
                if relays {
                    self.use_relays();
                }
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                self.reach.on_nat_status(&new);
                self.use_relays();
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => self.reach.on_reserved(relay_peer_id, renewal),
            BehaviourEvent::Relay(event) => {
                tracing::debug!(target: TARGET, ?event, "relay");
            }
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => {
                self.reach
                    .on_hole_punch(remote_peer_id, result.map(|_| ()).map_err(|e| e.to_string()));
            }
            BehaviourEvent::Ping(libp2p::ping::Event { connection, result: Ok(_), .. }) => {
                self.liveness.answered(connection, std::time::Instant::now());
            }
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let id = GossipId { id: message_id, from: propagation_source };
                let Some(topic) = Topic::from_hash(&message.topic) else {
                    self.gossip_verdict(&id, Verdict::Reject);
                    return;
                };
                // Gossipsub already drops what a blacklisted peer sends or wrote; this also
                // covers messages it delivered before its ban took effect.
                let banned = |p: &PeerId| self.peers.is_banned(p);
                if banned(&propagation_source) || message.source.as_ref().is_some_and(banned) {
                    tracing::debug!(target: TARGET, from = %propagation_source, "gossip from a banned peer dropped");
                    self.gossip_verdict(&id, Verdict::Reject);
                    return;
                }
                let validated = self.config.validate_gossip;
                let delivered = self.emit(Event::Gossip {
                    id: validated.then(|| id.clone()),
                    topic,
                    from: propagation_source,
                    author: message.source,
                    data: message.data,
                });
                if !delivered {
                    // The node will never judge it: do not leave it waiting in the cache.
                    self.gossip_verdict(&id, Verdict::Ignore);
                }
            }
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Stage(event) => self.on_stage_event(Proto::Stage, event),
            BehaviourEvent::Pieces(event) => self.on_stage_event(Proto::Pieces, event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.peers.is_banned(&peer) {
                        continue;
                    }
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } => {
                tracing::debug!(target: TARGET, %peer, "new peer in the routing table");
                if self.directory.needs_republish() {
                    self.directory.refresh(&mut self.swarm);
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. }
                if self.directory.owns(&id) =>
            {
                let peers = &self.peers;
                let penalties = self.directory.on_query(
                    &mut self.swarm,
                    id,
                    result,
                    step.last,
                    &|p: &PeerId| peers.is_banned(p),
                );
                for (peer, misbehaviour) in penalties {
                    self.penalise(peer, misbehaviour);
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. }
                if self.chunk_lookups.contains_key(&id) =>
            {
                if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) = result
                {
                    if let Some(lookup) = self.chunk_lookups.get_mut(&id) {
                        lookup.found.extend(providers);
                    }
                }
                if step.last {
                    self.finish_chunk_lookup(id);
                }
            }
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            } => {
                if let Some(misbehaviour) =
                    self.directory.on_inbound_record(&mut self.swarm, source, record)
                {
                    tracing::debug!(target: TARGET, peer = %source, "forged worker record");
                    self.penalise(source, misbehaviour);
                }
            }
            kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            } => self.directory.on_inbound_provider(&mut self.swarm, record),
            kad::Event::OutboundQueryProgressed { result, .. } => match result {
                kad::QueryResult::Bootstrap(Ok(ok)) => {
                    tracing::debug!(target: TARGET, remaining = ok.num_remaining, "bootstrap step");
                }
                kad::QueryResult::GetClosestPeers(Ok(ok)) => {
                    tracing::debug!(target: TARGET, found = ok.peers.len(), "discovery walk done");
                }
                other => tracing::debug!(target: TARGET, result = ?other, "kademlia query"),
            },
            _ => {}
        }
    }

    fn on_sync_event(
        &mut self,
        event: request_response::Event<sync::Frame<sync::Request>, sync::Frame<sync::Response>>,
    ) {
        use request_response::{Event as E, Message};
        match event {
            E::Message {
                peer, message: Message::Request { request_id, request, channel }, ..
            } => self.on_sync_request(peer, request_id, request, channel),
            E::Message { peer, message: Message::Response { request_id, response }, .. } => {
                let Some(pending) = self.sync.outbound.take(&request_id) else {
                    return;
                };
                let result = match response {
                    Err(wire) => {
                        tracing::debug!(target: TARGET, %peer, %wire, "bad sync response");
                        self.penalise(peer, Misbehaviour::UndecodableMessage);
                        Err(Error::InvalidResponse { peer, reason: "undecodable or too large" })
                    }
                    Ok(sync::Response::Blocks(blocks)) if blocks.len() > pending.extra as usize => {
                        self.penalise(peer, Misbehaviour::InvalidResponse);
                        Err(Error::InvalidResponse { peer, reason: "more blocks than asked" })
                    }
                    Ok(sync::Response::Blocks(blocks)) => Ok(blocks),
                    Ok(sync::Response::Refused(error)) => Err(Error::SyncRefused { peer, error }),
                };
                debug_assert_eq!(pending.peer, peer);
                let _ = pending.reply.send(result);
            }
            E::OutboundFailure { peer, request_id, error, .. } => {
                self.sync.outbound.fail(&request_id, peer, error.to_string())
            }
            E::ResponseSent { request_id, .. } => {
                self.bad.on_response_sent(Proto::Sync, request_id)
            }
            E::InboundFailure { request_id, .. } => {
                if let Some(peer) = self.bad.on_inbound_failure(Proto::Sync, request_id) {
                    self.penalise(peer, Misbehaviour::UndecodableMessage);
                }
            }
        }
    }

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: sync::Frame<sync::Request>,
        channel: ResponseChannel<sync::Frame<sync::Response>>,
    ) {
        let refuse = |swarm: &mut Swarm<Behaviour>, channel, error| {
            let refusal = Ok(sync::Response::Refused(error));
            swarm.behaviour_mut().sync.send_response(channel, refusal).is_ok()
        };
        let request = match request {
            Ok(r) => r,
            Err(_) if self.bad.is_condemned(&peer) => {
                // Already refused and about to be banned: no more answers.
                drop(channel);
                return;
            }
            Err(wire) => {
                tracing::debug!(target: TARGET, %peer, %wire, "bad sync request");
                // Answer, then ban once the answer is out (or at once if it cannot be sent).
                let sent = refuse(&mut self.swarm, channel, Refusal::BadRequest);
                if !self.bad.condemn(Proto::Sync, request_id, peer, sent) {
                    self.penalise(peer, Misbehaviour::UndecodableMessage);
                }
                return;
            }
        };
        if self.sync.replies.is_full() {
            refuse(&mut self.swarm, channel, Refusal::Busy);
            return;
        }
        let request = sync::Request {
            from: request.from,
            max: request.max.min(sync::MAX_BLOCKS_PER_REQUEST),
        };
        let (reply, rx) = oneshot::channel();
        if !self.emit(Event::SyncRequest { peer, request, reply }) {
            refuse(&mut self.swarm, channel, Refusal::Busy);
            return;
        }
        let timeout = self.config.sync_timeout;
        self.sync.replies.push(
            async move {
                let answer = tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok);
                (channel, peer, answer)
            }
            .boxed(),
        );
    }

    /// The behaviour of an opaque-bytes protocol (stage or pieces).
    fn opaque(&mut self, proto: Proto) -> &mut request_response::Behaviour<stage::Codec> {
        match proto {
            Proto::Pieces => &mut self.swarm.behaviour_mut().pieces,
            _ => &mut self.swarm.behaviour_mut().stage,
        }
    }

    fn opaque_state(&mut self, proto: Proto) -> &mut ProtocolState<Vec<u8>, (), StageReply> {
        match proto {
            Proto::Pieces => &mut self.pieces,
            _ => &mut self.stage,
        }
    }

    /// (largest request, largest answer, time to answer) of an opaque protocol.
    fn opaque_limits(&self, proto: Proto) -> (usize, usize, Duration) {
        match proto {
            Proto::Pieces => {
                (pieces::MAX_REQUEST_BYTES, pieces::MAX_RESPONSE_BYTES, self.config.piece_timeout)
            }
            _ => (
                self.config.max_stage_request_bytes,
                self.config.max_stage_response_bytes,
                self.config.stage_timeout,
            ),
        }
    }

    fn send_opaque(
        &mut self,
        proto: Proto,
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    ) {
        let (limit, _, _) = self.opaque_limits(proto);
        if data.len() > limit {
            let _ = reply.send(Err(Error::MessageTooLarge { size: data.len(), limit }));
            return;
        }
        if self.opaque_state(proto).outbound.is_full() {
            let _ = reply.send(Err(Error::Busy));
            return;
        }
        let addresses = self.directory.addresses_of(&peer);
        let body = Ok(stage::Body { data, reservation: None });
        let id = self.opaque(proto).send_request_with_addresses(&peer, body, addresses);
        self.opaque_state(proto).outbound.insert(id, Pending { peer, extra: (), reply });
    }

    /// Announces (again) every chunk this node provides: provider records expire with the
    /// worker records' lifetime, so they are refreshed with them.
    fn provide_chunks(&mut self) {
        for root in &self.provided {
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(pieces::chunk_key(root))
            {
                tracing::warn!(target: TARGET, error = ?e, "cannot store a chunk provider record");
            }
        }
    }

    /// A chunk provider lookup is done (or out of time): the caller gets the providers found,
    /// but not this node nor banned peers.
    fn finish_chunk_lookup(&mut self, id: kad::QueryId) {
        let Some(lookup) = self.chunk_lookups.remove(&id) else { return };
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
        let me = *self.swarm.local_peer_id();
        let found =
            lookup.found.into_iter().filter(|p| *p != me && !self.peers.is_banned(p)).collect();
        let _ = lookup.reply.send(Ok(found));
    }

    fn send_stage_reply(&mut self, (proto, channel, peer, answer, reservation): StageReply) {
        let (_, limit, _) = self.opaque_limits(proto);
        let response = match answer {
            None => stage::Response::Refused(Refusal::Unavailable),
            Some(data) if data.len() > limit => {
                tracing::warn!(target: TARGET, %peer, ?proto, size = data.len(), limit, "answer over the limit; refusing instead");
                stage::Response::Refused(Refusal::ResponseTooLarge)
            }
            Some(data) => stage::Response::Data(data),
        };
        if self.opaque(proto).send_response(channel, Ok(response)).is_err() {
            tracing::debug!(target: TARGET, %peer, ?proto, "requester went away before the answer");
        }
        drop(reservation);
    }

    fn on_stage_event(
        &mut self,
        proto: Proto,
        event: request_response::Event<stage::RequestFrame, stage::ResponseFrame>,
    ) {
        use request_response::{Event as E, Message};
        match event {
            E::Message {
                peer, message: Message::Request { request_id, request, channel }, ..
            } => self.on_stage_request(proto, peer, request_id, request, channel),
            E::Message { peer, message: Message::Response { request_id, response }, .. } => {
                let Some(pending) = self.opaque_state(proto).outbound.take(&request_id) else {
                    return;
                };
                let result = match response {
                    Err(wire) => {
                        tracing::debug!(target: TARGET, %peer, ?proto, %wire, "bad answer");
                        self.penalise(peer, Misbehaviour::UndecodableMessage);
                        Err(Error::InvalidResponse { peer, reason: "undecodable or too large" })
                    }
                    Ok(stage::Response::Data(data)) => Ok(data),
                    Ok(stage::Response::Refused(error)) => Err(Error::StageRefused { peer, error }),
                };
                debug_assert_eq!(pending.peer, peer);
                let _ = pending.reply.send(result);
                self.close_redundant();
            }
            E::OutboundFailure { peer, request_id, error, .. } => {
                self.opaque_state(proto).outbound.fail(&request_id, peer, error.to_string())
            }
            E::ResponseSent { request_id, .. } => self.bad.on_response_sent(proto, request_id),
            E::InboundFailure { request_id, .. } => {
                if let Some(peer) = self.bad.on_inbound_failure(proto, request_id) {
                    self.penalise(peer, Misbehaviour::UndecodableMessage);
                }
            }
        }
    }

    fn on_stage_request(
        &mut self,
        proto: Proto,
        peer: PeerId,
        request_id: InboundRequestId,
        request: stage::RequestFrame,
        channel: ResponseChannel<stage::ResponseFrame>,
    ) {
        let refuse = |this: &mut Self, channel, error| {
            let refusal = Ok(stage::Response::Refused(error));
            this.opaque(proto).send_response(channel, refusal).is_ok()
        };
        let body = match request {
            Ok(body) => body,
            Err(stage::RequestFault::OverBudget) => {
                tracing::debug!(target: TARGET, %peer, ?proto, "request over the inbound budget");
                refuse(self, channel, Refusal::Busy);
                return;
            }
            Err(_) if self.bad.is_condemned(&peer) => {
                // Already refused and about to be banned: no more answers.
                drop(channel);
                return;
            }
            Err(fault) => {
                tracing::debug!(target: TARGET, %peer, ?proto, %fault, "bad request");
                // Answer, then ban once the answer is out (or at once if it cannot be sent).
                let sent = refuse(self, channel, Refusal::BadRequest);
                if !self.bad.condemn(proto, request_id, peer, sent) {
                    self.penalise(peer, Misbehaviour::UndecodableMessage);
                }
                return;
            }
        };
        if self.opaque_state(proto).replies.is_full() {
            refuse(self, channel, Refusal::Busy);
            return;
        }
        let stage::Body { data, reservation } = body;
        let (reply, rx) = oneshot::channel();
        let inbound = StageInbound { peer, request: data, reply };
        let sent = match proto {
            Proto::Pieces => self.piece_requests.try_send(inbound),
            _ => self.stage_requests.try_send(inbound),
        };
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                refuse(self, channel, Refusal::Busy);
                return;
            }
            // This node serves no stages or pieces (nobody holds the receiver).
            Err(mpsc::error::TrySendError::Closed(_)) => {
                refuse(self, channel, Refusal::Unavailable);
                return;
            }
        }
        let (_, _, timeout) = self.opaque_limits(proto);
        self.opaque_state(proto).replies.push(
            async move {
                let answer = tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok);
                (proto, channel, peer, answer, reservation)
            }
            .boxed(),
        );
    }
}

/// Splits `…/p2p/<peer>` into the peer and the address without the suffix.
pub(crate) fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, base)),
        _ => None,
    }
}
