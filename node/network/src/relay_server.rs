//! The circuit relay v2 server, kept from notifying connections it gave no handler.
//!
//! libp2p-relay 0.22 gives a relayed connection a `dummy` handler but still counts it among
//! the connections it tells of a status change: when this node's confirmed external
//! addresses come or go (its relay service switches on or off), it sends every connection a
//! `SetStatus`, and the relayed ones' task panics on it (`handler/either.rs`: "entered
//! unreachable code"). The swarm is never told that such a connection ended: its peer looks
//! connected, and every request to it (blocks, stages) is lost. In the chaos test two NATed
//! workers stopped importing blocks this way after a partition had healed. This wrapper
//! remembers which connections are relayed and drops what the server addresses to them.

use libp2p::core::transport::PortUse;
use libp2p::core::{multiaddr::Protocol, Endpoint, Multiaddr};
use libp2p::relay;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;
use std::collections::HashSet;
use std::task::{Context, Poll};

/// [`relay::Behaviour`] that never notifies a relayed connection's handler.
pub(crate) struct RelayServer {
    inner: relay::Behaviour,
    /// Connections over a relay: the server gave them a handler that takes no event.
    relayed: HashSet<ConnectionId>,
}

impl RelayServer {
    pub(crate) fn new(inner: relay::Behaviour) -> Self {
        Self { inner, relayed: HashSet::new() }
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

impl NetworkBehaviour for RelayServer {
    type ConnectionHandler = <relay::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = relay::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(local_addr) {
            self.relayed.insert(id);
        }
        self.inner.handle_established_inbound_connection(id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(addr) {
            self.relayed.insert(id);
        }
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionClosed(c) => {
                self.relayed.remove(&c.connection_id);
            }
            // A connection another behaviour denied after this one made its handler.
            FromSwarm::DialFailure(f) => {
                self.relayed.remove(&f.connection_id);
            }
            FromSwarm::ListenFailure(f) => {
                self.relayed.remove(&f.connection_id);
            }
            _ => {}
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::NotifyHandler { handler: NotifyHandler::One(id), .. })
                    if self.relayed.contains(&id) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::ConnectedPoint;
    use libp2p::swarm::behaviour::{
        ConnectionClosed, ConnectionEstablished, ExternalAddrConfirmed,
    };

    fn established<B: NetworkBehaviour>(b: &mut B, id: ConnectionId, local: &Multiaddr) {
        let peer = PeerId::random();
        let remote: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().unwrap();
        b.handle_established_inbound_connection(id, peer, local, &remote).unwrap();
        let endpoint =
            ConnectedPoint::Listener { local_addr: local.clone(), send_back_addr: remote };
        b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    /// The connections whose handlers `b` addresses, in order.
    fn notified<B: NetworkBehaviour>(b: &mut B) -> Vec<ConnectionId> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut ids = Vec::new();
        while let Poll::Ready(action) = b.poll(&mut cx) {
            if let ToSwarm::NotifyHandler { handler: NotifyHandler::One(id), .. } = action {
                ids.push(id);
            }
        }
        ids.sort();
        ids
    }

    /// A direct and a relayed connection, then this node becomes reachable: its relay
    /// service switches on and tells the connections' handlers.
    fn switched_on<B: NetworkBehaviour>(b: &mut B, circuit: &Multiaddr) -> Vec<ConnectionId> {
        let (direct, relayed) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        established(b, direct, &"/ip4/10.0.0.1/tcp/30333".parse().unwrap());
        established(b, relayed, circuit);
        assert!(notified(b).is_empty());
        let external: Multiaddr = "/ip4/10.0.0.1/tcp/30333".parse().unwrap();
        b.on_swarm_event(FromSwarm::ExternalAddrConfirmed(ExternalAddrConfirmed {
            addr: &external,
        }));
        notified(b)
    }

    #[test]
    fn a_status_change_reaches_direct_connections_only() {
        let me = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.9/tcp/30333/p2p/{}/p2p-circuit", PeerId::random())
                .parse()
                .unwrap();
        let (direct, relayed) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        // The bug this wrapper is for: the bare server addresses the relayed connection too
        // (its handler would panic). When libp2p fixes it, this fails: drop the wrapper.
        let mut bare = relay::Behaviour::new(me, Default::default());
        assert_eq!(switched_on(&mut bare, &circuit), vec![direct, relayed]);

        let mut server = RelayServer::new(relay::Behaviour::new(me, Default::default()));
        assert_eq!(switched_on(&mut server, &circuit), vec![direct]);

        // A closed connection is forgotten.
        let endpoint =
            ConnectedPoint::Listener { local_addr: circuit.clone(), send_back_addr: circuit };
        server.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: me,
            connection_id: relayed,
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
        assert!(server.relayed.is_empty());
    }
}
