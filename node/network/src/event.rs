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
    /// `reply` answers [`Refusal::Unavailable`](crate::Refusal). The request is well formed and
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

/// A peer's request on a request-response protocol of ours, and where its answer goes.
/// Dropping `reply` refuses the request (the protocol's "unavailable" answer).
#[derive(Debug)]
pub struct Inbound<Req, Resp> {
    /// Who asks.
    pub peer: PeerId,
    /// What it asks.
    pub request: Req,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Resp>,
}

/// A stage request (`/bitorch/stage/1`), delivered on its own bounded channel (the one
/// [`spawn`](crate::spawn) returns as [`Service::stage_requests`](crate::Service)) so that it
/// goes straight to the serving service: opaque bytes for it, at most
/// [`Config::max_stage_request_bytes`](crate::Config) long. Send the answer bytes on `reply`
/// within [`Config::stage_timeout`](crate::Config); an answer longer than
/// [`Config::max_stage_response_bytes`](crate::Config) is replaced by a refusal, and dropping
/// `reply` answers [`Refusal::Unavailable`](crate::Refusal). Bytes that do not
/// decode as a stage message are the serving service's to reject (in its own answer) and to
/// report with [`Handle::report_peer`](crate::Handle::report_peer).
pub type StageInbound = Inbound<Vec<u8>, Vec<u8>>;
