//! What the network service tells the node.

use crate::gossip::{GossipId, Topic};
use crate::sync;
use libp2p::PeerId;
use tokio::sync::oneshot;

/// An inbound event, delivered on the bounded channel that [`spawn`](crate::spawn) returns.
#[derive(Debug)]
pub enum Event {
    /// A gossip message arrived. The payload is not decoded here: if it does not decode, or is
    /// invalid, report `from` with [`Handle::report_peer`](crate::Handle::report_peer). With
    /// [`Config::validate_gossip`](crate::Config) the message is forwarded to other peers
    /// only once the node gives its verdict on `id`
    /// ([`Handle::gossip_verdict`](crate::Handle::gossip_verdict)).
    Gossip {
        /// The message, for the verdict (`None` when gossip is not validated).
        id: Option<GossipId>,
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
    /// A peer sends a stage request (`/bitorch/stage/1`): opaque bytes for the inference
    /// service, at most [`Config::max_stage_request_bytes`](crate::Config) long. Send the
    /// answer bytes on `reply` within [`Config::stage_timeout`](crate::Config); an answer
    /// longer than [`Config::max_stage_response_bytes`](crate::Config) is replaced by a
    /// refusal, and dropping `reply` answers [`StageError::Unavailable`](crate::stage::StageError).
    /// Bytes that do not decode as a stage message are the inference service's to reject (in
    /// its own answer) and to report with [`Handle::report_peer`](crate::Handle::report_peer).
    StageRequest {
        /// Who asks.
        peer: PeerId,
        /// The request.
        data: Vec<u8>,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<u8>>,
    },
    /// The first connection to a peer was established.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
}
