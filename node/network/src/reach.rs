//! Reachability: whether peers can dial this node (AutoNAT), the relays it listens through
//! when they cannot (circuit relay v2), and which connections are relayed.
//!
//! A node behind NAT reaches out to its boot nodes itself; what it cannot do is accept a
//! connection. Once AutoNAT finds it unreachable (peers it asked could not dial it back), it
//! reserves a slot on up to [`Config::max_relays`] connected peers that relay (identify named
//! the hop protocol) and listens through them: its `/p2p-circuit` addresses reach its peers by
//! identify push, the DHT and its worker records. A peer that dials such an address gets a
//! relayed connection, which DCUtR then tries to replace by a direct one (hole punching, or the
//! NATed side dialing out when the other is public). The side that dialed the relayed
//! connection closes it once a direct one exists and none of its requests to that peer is
//! in flight (request-response spreads requests over every connection to a peer, and a request
//! on a closed connection fails): from then on the traffic is direct.
//!
//! DCUtR tries once per relayed connection. When that try fails (the relay's link was busy,
//! or lost packets), a peer reached only through a relay is dialed directly at the addresses it
//! listens on, at most every [`DIRECT_RETRY`] ([`Reach::retry_direct`]): a node behind NAT
//! reaches a public peer that way (it dials out), and two NATed peers simply fail the dial.

use crate::config::Config;
use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, Multiaddr, PeerId};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const TARGET: &str = "network";

/// How long a peer reached only through a relay is left to DCUtR before it is dialed directly,
/// and how often the direct dial is tried again.
pub const DIRECT_RETRY: Duration = Duration::from_secs(30);

/// Whether peers can dial this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatState {
    /// Peers dialed it back (AutoNAT), or it was given a public address.
    Public,
    /// Peers could not dial it back: it is behind NAT or a firewall.
    Private,
    /// Not known yet.
    Unknown,
}

impl NatState {
    /// `"public"`, `"private"` or `"unknown"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Unknown => "unknown",
        }
    }
}

/// What the node knows of its own reachability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// Whether peers can dial it.
    pub nat: NatState,
    /// Its confirmed external addresses (given, found by AutoNAT, or reserved on relays).
    pub external_addresses: Vec<Multiaddr>,
    /// The relays holding a reservation for it.
    pub relays: Vec<PeerId>,
    /// Relayed connections upgraded to direct ones by hole punching.
    pub hole_punches: u64,
    /// Hole punching attempts that failed.
    pub hole_punch_failures: u64,
}

/// A connected peer, and whether every connection to it goes through a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    /// The peer.
    pub peer: PeerId,
    /// Only relayed connections to it (none direct).
    pub relayed: bool,
    /// The address of its oldest direct connection, else of a relayed one.
    pub address: Multiaddr,
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether `addr` is an IP address the internet can route (not loopback, private, link-local
/// or unspecified); names (DNS) count as global.
fn is_global(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => {
            !(ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_unspecified())
        }
        Protocol::Ip6(ip) => {
            let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
        }
        _ => true,
    })
}

struct Conn {
    id: ConnectionId,
    relayed: bool,
    since: Instant,
    /// We dialed it.
    dialer: bool,
    address: Multiaddr,
}

/// The reachability state of the network service.
pub(crate) struct Reach {
    nat: NatState,
    /// Peers that relay, and the address to reach them at.
    relays: BTreeMap<PeerId, Multiaddr>,
    /// Relays this node listens through.
    listening: HashMap<PeerId, ListenerId>,
    /// Relays holding a reservation for this node.
    reserved: Vec<PeerId>,
    connections: HashMap<PeerId, Vec<Conn>>,
    hole_punches: u64,
    hole_punch_failures: u64,
    started: Instant,
    /// The node was given a public address (`--public-addr`).
    given_public: bool,
    /// Each peer's listen addresses that are not relayed (and, unless private addresses
    /// count as reachable, not private): where a relayed-only peer is dialed directly.
    direct_addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// When each relayed-only peer was last dialed directly.
    direct_tried: HashMap<PeerId, Instant>,
    private_ips_reachable: bool,
}

impl Reach {
    pub(crate) fn new(config: &Config) -> Self {
        let given_public = !config.public_addresses.is_empty();
        Self {
            nat: if given_public { NatState::Public } else { NatState::Unknown },
            given_public,
            relays: BTreeMap::new(),
            listening: HashMap::new(),
            reserved: Vec::new(),
            connections: HashMap::new(),
            hole_punches: 0,
            hole_punch_failures: 0,
            started: Instant::now(),
            direct_addresses: HashMap::new(),
            direct_tried: HashMap::new(),
            private_ips_reachable: config.private_ips_reachable,
        }
    }

    pub(crate) fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let (address, dialer) = match endpoint {
            ConnectedPoint::Dialer { address, .. } => (address.clone(), true),
            ConnectedPoint::Listener { send_back_addr, .. } => (send_back_addr.clone(), false),
        };
        let relayed = endpoint.is_relayed();
        if !relayed && self.connections.get(&peer).is_some_and(|c| c.iter().any(|c| c.relayed)) {
            tracing::info!(target: TARGET, %peer, %address, secs = self.started.elapsed().as_secs_f64(),
                "direct connection to a peer reached through a relay");
        }
        let since = Instant::now();
        self.connections.entry(peer).or_default().push(Conn {
            id,
            relayed,
            since,
            dialer,
            address,
        });
    }

    pub(crate) fn on_connection_closed(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(conns) = self.connections.get_mut(peer) {
            conns.retain(|c| c.id != id);
            if conns.is_empty() {
                self.connections.remove(peer);
                self.direct_addresses.remove(peer);
                self.direct_tried.remove(peer);
            }
        }
    }

    /// Identify told us `peer`'s protocols and listen addresses: remember it as a relay if it
    /// is one, reached at the address we dialed it at (else the first it listens on that is
    /// not itself relayed). A peer that listens through a relay itself is behind NAT: no use
    /// as a relay, whatever it advertises.
    pub(crate) fn on_identify(&mut self, peer: PeerId, relays: bool, listen: &[Multiaddr]) {
        let private_ok = self.private_ips_reachable;
        let direct: Vec<Multiaddr> = listen
            .iter()
            .filter(|a| !is_relayed(a) && (private_ok || is_global(a)))
            .cloned()
            .collect();
        if direct.is_empty() {
            self.direct_addresses.remove(&peer);
        } else {
            self.direct_addresses.insert(peer, direct);
        }
        if !relays || listen.iter().any(is_relayed) {
            self.relays.remove(&peer);
            return;
        }
        let dialed = self
            .connections
            .get(&peer)
            .and_then(|c| c.iter().find(|c| c.dialer && !c.relayed))
            .map(|c| c.address.clone());
        let addr = dialed.or_else(|| listen.iter().find(|a| !is_relayed(a)).cloned());
        if let Some(addr) = addr {
            let addr: Multiaddr =
                addr.into_iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
            self.relays.insert(peer, addr);
        }
    }

    /// AutoNAT's verdict changed. A node given a public address (`--public-addr`) stays
    /// public whatever AutoNAT says: one failed dial-back (a peer that tried an address it
    /// cannot reach) would otherwise make a public node reserve relays it does not need.
    pub(crate) fn on_nat_status(&mut self, status: &autonat::NatStatus) {
        let nat = match status {
            _ if self.given_public => NatState::Public,
            autonat::NatStatus::Public(_) => NatState::Public,
            autonat::NatStatus::Private => NatState::Private,
            autonat::NatStatus::Unknown => NatState::Unknown,
        };
        if nat != self.nat {
            tracing::info!(target: TARGET, from = self.nat.as_str(), to = nat.as_str(),
                "reachability changed (AutoNAT)");
        }
        self.nat = nat;
    }

    /// Relays to start listening through (unreachable, fewer than `max` in use), with the
    /// circuit address to listen on, and listeners to close (reachable again).
    pub(crate) fn plan(&self, config: &Config) -> (Vec<(PeerId, Multiaddr)>, Vec<ListenerId>) {
        if self.nat != NatState::Private || !config.use_relays {
            return (Vec::new(), self.listening.values().copied().collect());
        }
        let room = config.max_relays.saturating_sub(self.listening.len());
        let start = self
            .relays
            .iter()
            .filter(|(peer, _)| !self.listening.contains_key(peer))
            .filter(|(peer, _)| self.connections.contains_key(peer))
            .take(room)
            .map(|(peer, addr)| {
                let circuit = addr.clone().with(Protocol::P2p(*peer)).with(Protocol::P2pCircuit);
                (*peer, circuit)
            })
            .collect();
        (start, Vec::new())
    }

    pub(crate) fn listening_through(&mut self, relay: PeerId, listener: ListenerId) {
        self.listening.insert(relay, listener);
    }

    /// A listener closed: if it was a relay's, that relay is free to be tried again.
    pub(crate) fn on_listener_closed(&mut self, listener: ListenerId) {
        let gone: Vec<PeerId> =
            self.listening.iter().filter(|(_, l)| **l == listener).map(|(p, _)| *p).collect();
        for relay in gone {
            tracing::info!(target: TARGET, %relay, "no longer listening through the relay");
            self.listening.remove(&relay);
            self.reserved.retain(|p| *p != relay);
        }
    }

    pub(crate) fn on_reserved(&mut self, relay: PeerId, renewal: bool) {
        if !renewal {
            tracing::info!(target: TARGET, %relay, "reserved a slot on a relay: reachable through it");
        }
        if !self.reserved.contains(&relay) {
            self.reserved.push(relay);
        }
    }

    pub(crate) fn on_hole_punch(&mut self, peer: PeerId, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.hole_punches += 1;
                tracing::info!(target: TARGET, %peer, "hole punching gave a direct connection");
            }
            Err(error) => {
                self.hole_punch_failures += 1;
                tracing::info!(target: TARGET, %peer, %error, "hole punching failed; staying relayed");
            }
        }
    }

    /// Peers reached only through relays for at least [`DIRECT_RETRY`] (DCUtR had its try),
    /// not dialed directly in the last [`DIRECT_RETRY`], with the direct addresses they listen
    /// on: to dial now (marked tried).
    pub(crate) fn retry_direct(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .connections
            .iter()
            .filter(|(_, conns)| {
                conns.iter().all(|c| c.relayed)
                    && conns.iter().any(|c| now.saturating_duration_since(c.since) >= DIRECT_RETRY)
            })
            .filter(|(peer, _)| {
                self.direct_tried
                    .get(peer)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= DIRECT_RETRY)
            })
            .filter_map(|(peer, _)| Some((*peer, self.direct_addresses.get(peer)?.clone())))
            .collect();
        for (peer, _) in &due {
            self.direct_tried.insert(*peer, now);
        }
        due
    }

    /// Relayed connections this node dialed to peers it now also has a direct connection to,
    /// for peers with no request of ours in flight (`busy`): they can be closed.
    pub(crate) fn redundant(&self, busy: impl Fn(&PeerId) -> bool) -> Vec<ConnectionId> {
        self.connections
            .iter()
            .filter(|(peer, conns)| conns.iter().any(|c| !c.relayed) && !busy(peer))
            .flat_map(|(_, conns)| conns.iter().filter(|c| c.relayed && c.dialer).map(|c| c.id))
            .collect()
    }

    pub(crate) fn peers(&self) -> Vec<PeerLink> {
        self.connections
            .iter()
            .filter_map(|(peer, conns)| {
                let direct = conns.iter().find(|c| !c.relayed);
                let any = direct.or(conns.first())?;
                Some(PeerLink {
                    peer: *peer,
                    relayed: direct.is_none(),
                    address: any.address.clone(),
                })
            })
            .collect()
    }

    pub(crate) fn snapshot(&self, external: Vec<Multiaddr>) -> Reachability {
        Reachability {
            nat: self.nat,
            external_addresses: external,
            relays: self.reserved.clone(),
            hole_punches: self.hole_punches,
            hole_punch_failures: self.hole_punch_failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::transport::PortUse;
    use libp2p::core::Endpoint;

    fn dialed(addr: &str) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: addr.parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    #[test]
    fn a_private_node_listens_through_connected_relays_and_stops_when_public() {
        let mut config = Config::new(crate::NodeKey::Ephemeral);
        config.max_relays = 1;
        let mut reach = Reach::new(&config);
        let (relay, other) = (PeerId::random(), PeerId::random());
        reach.on_connection_established(
            relay,
            ConnectionId::new_unchecked(1),
            &dialed("/ip4/10.0.0.1/tcp/4001"),
        );
        reach.on_connection_established(
            other,
            ConnectionId::new_unchecked(2),
            &dialed("/ip4/10.0.0.2/tcp/4001"),
        );
        reach.on_identify(relay, true, &[]);
        reach.on_identify(other, false, &[]);
        // A relay that is itself behind a relay is not one.
        let natted = PeerId::random();
        reach.on_connection_established(
            natted,
            ConnectionId::new_unchecked(3),
            &dialed("/ip4/10.0.0.3/tcp/4001"),
        );
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit").parse().unwrap();
        reach.on_identify(natted, true, &[circuit]);
        // Unknown reachability: no relay used.
        assert_eq!(reach.plan(&config), (vec![], vec![]));
        reach.on_nat_status(&autonat::NatStatus::Private);
        let (start, stop) = reach.plan(&config);
        let want: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit").parse().unwrap();
        assert_eq!((start, stop), (vec![(relay, want)], vec![]));
        let listener = ListenerId::next();
        reach.listening_through(relay, listener);
        assert_eq!(reach.plan(&config), (vec![], vec![]));
        reach.on_nat_status(&autonat::NatStatus::Public("/ip4/1.2.3.4/tcp/1".parse().unwrap()));
        assert_eq!(reach.plan(&config), (vec![], vec![listener]));
        reach.on_listener_closed(listener);
        assert_eq!(reach.plan(&config), (vec![], vec![]));
    }

    #[test]
    fn a_node_given_a_public_address_stays_public() {
        let mut config = Config::new(crate::NodeKey::Ephemeral);
        config.public_addresses = vec!["/ip4/10.0.0.1/tcp/30333".parse().unwrap()];
        let mut reach = Reach::new(&config);
        assert_eq!(reach.snapshot(vec![]).nat, NatState::Public);
        reach.on_nat_status(&autonat::NatStatus::Private);
        assert_eq!(reach.snapshot(vec![]).nat, NatState::Public);
    }

    #[test]
    fn a_relayed_connection_we_dialed_is_redundant_once_a_direct_one_exists_and_idle() {
        let config = Config::new(crate::NodeKey::Ephemeral);
        let mut reach = Reach::new(&config);
        let peer = PeerId::random();
        let relay = PeerId::random();
        let circuit = format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}");
        reach.on_connection_established(peer, ConnectionId::new_unchecked(1), &dialed(&circuit));
        assert!(reach.redundant(|_| false).is_empty());
        assert!(reach.peers()[0].relayed);
        reach.on_connection_established(
            peer,
            ConnectionId::new_unchecked(2),
            &dialed("/ip4/10.0.0.9/tcp/4001"),
        );
        assert!(!reach.peers()[0].relayed);
        assert!(reach.redundant(|_| true).is_empty(), "a request in flight keeps it");
        assert_eq!(reach.redundant(|_| false), vec![ConnectionId::new_unchecked(1)]);
        reach.on_connection_closed(&peer, ConnectionId::new_unchecked(1));
        assert!(reach.redundant(|_| false).is_empty());
    }

    #[test]
    fn a_peer_reached_only_through_a_relay_is_dialed_directly_after_dcutr_had_its_try() {
        let config = Config::new(crate::NodeKey::Ephemeral);
        let mut reach = Reach::new(&config);
        let (peer, natted, relay) = (PeerId::random(), PeerId::random(), PeerId::random());
        for (i, p) in [(1, peer), (2, natted)] {
            let circuit = format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{p}");
            reach.on_connection_established(p, ConnectionId::new_unchecked(i), &dialed(&circuit));
        }
        let public: Multiaddr = "/ip4/203.0.113.7/tcp/30333".parse().unwrap();
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit").parse().unwrap();
        reach.on_identify(
            peer,
            false,
            &[public.clone(), circuit.clone(), "/ip4/192.168.1.2/tcp/30333".parse().unwrap()],
        );
        // A peer behind NAT listens on a private address and through the relay: nothing to dial.
        reach.on_identify(natted, false, &["/ip4/192.168.1.2/tcp/30333".parse().unwrap(), circuit]);
        let t0 = Instant::now();
        assert!(reach.retry_direct(t0).is_empty(), "DCUtR's turn first");
        let later = t0 + DIRECT_RETRY + Duration::from_secs(1);
        assert_eq!(reach.retry_direct(later), vec![(peer, vec![public])]);
        assert!(reach.retry_direct(later + Duration::from_secs(1)).is_empty(), "tried just now");
        assert_eq!(reach.retry_direct(later + DIRECT_RETRY).len(), 1, "tried again later");
        // Once a direct connection exists, nothing more to try.
        reach.on_connection_established(
            peer,
            ConnectionId::new_unchecked(3),
            &dialed("/ip4/203.0.113.7/tcp/30333"),
        );
        assert!(reach.retry_direct(later + DIRECT_RETRY * 3).is_empty());
    }
}
