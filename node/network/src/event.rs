//! What the network service tells the node.

use crate::gossip::Topic;
use crate::sync;
use libp2p::PeerId;
use tokio::sync::oneshot;

/// An inbound event, delivered on the bounded channel that [`spawn`](crate::spawn) returns.
#[derive(Debug)]
pub enum Event {
    /// A gossip message arrived. The payload is not decoded here: if it does not decode, or is
    /// invalid, report `from` with [`Handle::report_peer`](crate::Handle::report_peer).
    Gossip {
        /// The topic.
        topic: Topic,
        /// The peer that forwarded it to us (the one to penalise).
        from: PeerId,
        /// The peer that published it (signed).
        author: Option<PeerId>,
        /// The payload.
        data: Vec<u8>,
    },
    /// A peer asks for blocks. Send the answer on `reply` within the sync timeout; dropping
    /// `reply` answers [`sync::SyncError::Unavailable`]. The request is well formed and
    /// `max` is at most [`sync::MAX_BLOCKS_PER_REQUEST`].
    SyncRequest {
        /// Who asks.
        peer: PeerId,
        /// What it asks for.
        request: sync::Request,
        /// Where the answer goes.
        reply: oneshot::Sender<sync::Response>,
    },
    /// The first connection to a peer was established.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
}
