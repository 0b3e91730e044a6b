//! What the request-response protocols of ours (block sync, stage requests) share: how a
//! peer's request reaches the node ([`crate::Inbound`]), why a node refuses one ([`Refusal`],
//! one enum for every protocol, sent on the wire), and the service task's bookkeeping for
//! each protocol: our requests waiting for answers (`Outbound`), peers' requests waiting for
//! the node's answer (`Replies`), and peers that sent bad requests (`BadRequesters`). A
//! new protocol is its codec, a sub-state of these, and its two event handlers.

use crate::error::Error;
use libp2p::futures::future::BoxFuture;
use libp2p::futures::stream::FuturesUnordered;
use libp2p::futures::{FutureExt, StreamExt};
use libp2p::request_response::{InboundRequestId, OutboundRequestId};
use libp2p::PeerId;
use parity_scale_codec::{Decode, Encode};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most bad requesters waiting for their refusal to go out before their ban.
const MAX_BANS_AFTER_REPLY: usize = 1024;
/// Time a refusal gets to reach a bad requester before the ban closes the connection.
const BAN_GRACE: Duration = Duration::from_millis(250);

/// Why a node refused a request. Errors on the wire are enums, not strings; the variants keep
/// their indices forever (a refusal is decoded by peers of other versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum Refusal {
    /// The request was too large or did not decode.
    #[codec(index = 0)]
    #[error("bad request")]
    BadRequest,
    /// The node is serving too many requests, or is behind.
    #[codec(index = 1)]
    #[error("busy")]
    Busy,
    /// The node cannot answer now (it serves no such thing, or gave no answer in time).
    #[codec(index = 2)]
    #[error("unavailable")]
    Unavailable,
    /// The node's answer was larger than the limit.
    #[codec(index = 3)]
    #[error("answer too large")]
    ResponseTooLarge,
}

/// Which request-response protocol a request came in on (their ids are counted separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    Sync,
    Stage,
    Pieces,
}

/// A request of ours waiting for its answer: who was asked, what else the answer is checked
/// against (`X`), and where the result goes.
pub(crate) struct Pending<T, X> {
    pub(crate) peer: PeerId,
    pub(crate) extra: X,
    pub(crate) reply: oneshot::Sender<Result<T, Error>>,
}

/// Our requests on one protocol that wait for answers, at most `limit` at once.
pub(crate) struct Outbound<T, X = ()> {
    pending: HashMap<OutboundRequestId, Pending<T, X>>,
    limit: usize,
}

impl<T, X> Outbound<T, X> {
    pub(crate) fn new(limit: usize) -> Self {
        Self { pending: HashMap::new(), limit }
    }

    /// Whether another request would pass the limit ([`Error::Busy`]).
    pub(crate) fn is_full(&self) -> bool {
        self.pending.len() >= self.limit
    }

    pub(crate) fn insert(&mut self, id: OutboundRequestId, pending: Pending<T, X>) {
        self.pending.insert(id, pending);
    }

    /// Whether a request to `peer` waits for its answer.
    pub(crate) fn has_pending_to(&self, peer: &PeerId) -> bool {
        self.pending.values().any(|p| p.peer == *peer)
    }

    /// The request `id` is answered (or failed): it no longer waits.
    pub(crate) fn take(&mut self, id: &OutboundRequestId) -> Option<Pending<T, X>> {
        self.pending.remove(id)
    }

    /// The request `id` to `peer` failed before an answer came.
    pub(crate) fn fail(&mut self, id: &OutboundRequestId, peer: PeerId, reason: String) {
        if let Some(p) = self.take(id) {
            let _ = p.reply.send(Err(Error::RequestFailed { peer, reason }));
        }
    }
}

/// Peers that sent a bad request: refused, then banned once the refusal is out (so that they
/// learn why), or at once when it cannot be sent. Further requests from them get no answer.
#[derive(Default)]
pub(crate) struct BadRequesters {
    /// The request whose refusal is on its way, and its sender.
    after_reply: HashMap<(Proto, InboundRequestId), PeerId>,
    /// Bans due when their grace period ends.
    delayed: FuturesUnordered<BoxFuture<'static, PeerId>>,
    /// Peers in `after_reply` or `delayed`.
    condemned: HashSet<PeerId>,
}

impl BadRequesters {
    /// Whether `peer` is already refused and about to be banned.
    pub(crate) fn is_condemned(&self, peer: &PeerId) -> bool {
        self.condemned.contains(peer)
    }

    /// `peer` is being penalised (or banned) now: nothing left to wait for.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.condemned.remove(peer);
    }

    /// `peer`'s request `id` was bad and refused (`sent`: the refusal is on its way). Returns
    /// whether its ban waits for the refusal; `false`: penalise it now.
    pub(crate) fn condemn(
        &mut self,
        proto: Proto,
        id: InboundRequestId,
        peer: PeerId,
        sent: bool,
    ) -> bool {
        if !sent || self.condemned.len() >= MAX_BANS_AFTER_REPLY {
            return false;
        }
        self.condemned.insert(peer);
        self.after_reply.insert((proto, id), peer);
        true
    }

    /// The answer to `id` is written: a condemned sender's ban follows after a grace period
    /// (the refusal may not have left yet).
    pub(crate) fn on_response_sent(&mut self, proto: Proto, id: InboundRequestId) {
        if let Some(peer) = self.after_reply.remove(&(proto, id)) {
            self.delayed.push(tokio::time::sleep(BAN_GRACE).map(move |_| peer).boxed());
        }
    }

    /// The answer to `id` could not be sent: a condemned sender to penalise now.
    pub(crate) fn on_inbound_failure(
        &mut self,
        proto: Proto,
        id: InboundRequestId,
    ) -> Option<PeerId> {
        self.after_reply.remove(&(proto, id))
    }

    /// The next peer whose grace period ended (pending forever while there is none).
    pub(crate) async fn next_due(&mut self) -> PeerId {
        match self.delayed.next().await {
            Some(peer) => peer,
            None => std::future::pending().await,
        }
    }
}

/// Inbound requests of one protocol waiting for the node's answer (`R`: the answer with what
/// sending it needs), at most `limit` at once.
pub(crate) struct Replies<R> {
    waiting: FuturesUnordered<BoxFuture<'static, R>>,
    limit: usize,
}

impl<R> Replies<R> {
    pub(crate) fn new(limit: usize) -> Self {
        Self { waiting: FuturesUnordered::new(), limit }
    }

    /// Whether another request would pass the limit (it is refused as busy).
    pub(crate) fn is_full(&self) -> bool {
        self.waiting.len() >= self.limit
    }

    pub(crate) fn push(&mut self, answer: BoxFuture<'static, R>) {
        self.waiting.push(answer);
    }

    /// The next answer ready to send (pending forever while none waits).
    pub(crate) async fn next(&mut self) -> R {
        match self.waiting.next().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }
}
