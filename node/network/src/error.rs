//! Errors of the network crate.

use crate::gossip::Topic;
use crate::request::Refusal;
use libp2p::{Multiaddr, PeerId};
use std::path::PathBuf;

/// What can go wrong in the network service: a bad node key or configuration, a listen
/// address that cannot be bound, or a request that failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node key file could not be read or written.
    #[error("node key file {path}: {source}; check the base path's permissions")]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node key file does not hold an ed25519 secret.
    #[error(
        "node key file {path} is malformed: expected a 32-byte ed25519 secret as 64 hex \
         characters (as `bitorch key generate-node-key` writes)"
    )]
    MalformedKey {
        /// The key file.
        path: PathBuf,
    },
    /// A boot node address must name its peer.
    #[error("boot node address {0} has no /p2p/<peer id> suffix; add the boot node's peer id")]
    BootNodeWithoutPeerId(Multiaddr),
    /// The transport or a behaviour could not be built.
    #[error("building the network stack: {0}")]
    Build(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}; pass another address or port")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// An address could not be dialed.
    #[error("cannot dial {addr}: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The node was asked to ban itself.
    #[error("peer {0} is this node; pass another peer id to ban")]
    BanLocalPeer(PeerId),
    /// The network service task has stopped.
    #[error("the network service has stopped")]
    Stopped,
    /// A gossip message larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Gossipsub refused to publish (for example: no peer subscribed to the topic yet).
    #[error("publishing on {topic}: {source}")]
    Publish {
        /// The topic.
        topic: Topic,
        /// The cause.
        #[source]
        source: libp2p::gossipsub::PublishError,
    },
    /// Too many requests (sync, stage) or worker lookups in flight.
    #[error("too many requests in flight; try again later")]
    Busy,
    /// A sync or stage request failed on the way (timeout, connection closed, peer
    /// unreachable…).
    #[error("request to {peer} failed: {reason}")]
    RequestFailed {
        /// The peer asked.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer answered a sync request with a refusal.
    #[error("peer {peer} refused the sync request: {error}")]
    SyncRefused {
        /// The peer asked.
        peer: PeerId,
        /// Its answer.
        error: Refusal,
    },
    /// The peer answered a sync or stage request with something invalid; it has been
    /// penalised.
    #[error("peer {peer} sent an invalid response: {reason}")]
    InvalidResponse {
        /// The peer asked.
        peer: PeerId,
        /// What was wrong.
        reason: &'static str,
    },
    /// The peer answered a stage request with a refusal.
    #[error("peer {peer} refused the stage request: {error}")]
    StageRefused {
        /// The peer asked.
        peer: PeerId,
        /// Its answer.
        error: Refusal,
    },
    /// A worker announcement that cannot be published.
    #[error("invalid worker announcement: {0}")]
    InvalidAnnouncement(&'static str),
    /// The node already announces as many models as it may.
    #[error("this node already announces {limit} models; withdraw one first")]
    TooManyAnnouncements {
        /// The limit.
        limit: usize,
    },
    /// The node key could not sign a record.
    #[error("signing with the node key: {0}")]
    Sign(String),
}
