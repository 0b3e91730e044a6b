//! The cloneable handle through which the node drives the network service.

use crate::error::Error;
use crate::gossip::{GossipId, Topic, Verdict};
use crate::peers::Misbehaviour;
use crate::pieces::{self, ChunkRoot};
use crate::sync::{self, SyncBlock};
use crate::workers::{ModelId, WorkerAnnouncement};
use libp2p::{Multiaddr, PeerId};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A request to the service task; each carries a `oneshot` for its answer.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        topic: Topic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    RequestBlocks {
        peer: PeerId,
        request: sync::Request,
        reply: oneshot::Sender<Result<Vec<SyncBlock>, Error>>,
    },
    StageRequest {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
    PieceRequest {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
    ProvideChunks {
        roots: Vec<ChunkRoot>,
        reply: oneshot::Sender<()>,
    },
    FindChunkProviders {
        root: ChunkRoot,
        reply: oneshot::Sender<Result<Vec<PeerId>, Error>>,
    },
    AnnounceWorker {
        announcement: WorkerAnnouncement,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    WithdrawWorker {
        model: ModelId,
        reply: oneshot::Sender<bool>,
    },
    FindWorkers {
        model: ModelId,
        reply: oneshot::Sender<Result<Vec<(PeerId, WorkerAnnouncement)>, Error>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    PeerLinks {
        reply: oneshot::Sender<Vec<crate::PeerLink>>,
    },
    Reachability {
        reply: oneshot::Sender<crate::Reachability>,
    },
    ListenAddresses {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    BannedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ReportPeer {
        peer: PeerId,
        misbehaviour: Misbehaviour,
        reply: oneshot::Sender<()>,
    },
    BanPeer {
        peer: PeerId,
        duration: Duration,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    UnbanPeer {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    GossipVerdict {
        id: GossipId,
        verdict: Verdict,
    },
}

/// A cloneable handle to the network service. Every call goes over a bounded channel to the
/// task that owns the swarm; it fails with [`Error::Stopped`] once that task has ended.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    local_peer_id: PeerId,
}

impl Handle {
    pub(crate) fn new(tx: mpsc::Sender<Command>, local_peer_id: PeerId) -> Self {
        Self { tx, local_peer_id }
    }

    async fn call<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> Command) -> Result<R, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Publishes `data` on `topic`. Fails if it is too large or no peer subscribes to the
    /// topic yet.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), Error> {
        self.call(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// The node's verdict on a gossip message ([`Event::Gossip`](crate::Event::Gossip)'s `id`):
    /// an accepted one is forwarded to the other peers, a rejected or ignored one is dropped.
    pub async fn gossip_verdict(&self, id: GossipId, verdict: Verdict) -> Result<(), Error> {
        self.tx.send(Command::GossipVerdict { id, verdict }).await.map_err(|_| Error::Stopped)
    }

    /// Asks `peer` for up to `max` blocks from height `from` (dialing it if needed, when its
    /// address is known). A peer that answers with more blocks than asked, or with bytes that
    /// do not decode, is penalised.
    pub async fn request_blocks(
        &self,
        peer: PeerId,
        from: u64,
        max: u32,
    ) -> Result<Vec<SyncBlock>, Error> {
        let request = sync::Request { from, max };
        self.call(|reply| Command::RequestBlocks { peer, request, reply }).await?
    }

    /// Sends a stage request (`/bitorch/stage/1`) to `peer` and returns its answer bytes.
    /// Uses the open connection to `peer` if there is one; otherwise dials it at the addresses
    /// it announced as a worker (see [`Handle::find_workers`]) or that discovery knows.
    ///
    /// Fails with [`Error::MessageTooLarge`] (nothing sent) past
    /// [`Config::max_stage_request_bytes`](crate::Config), [`Error::Busy`] with too many
    /// requests in flight, [`Error::StageRefused`] when the peer refuses (busy, no answer in
    /// time), [`Error::RequestFailed`] on a timeout
    /// ([`Config::stage_timeout`](crate::Config)) or a lost connection, and
    /// [`Error::InvalidResponse`] when the answer is too large or malformed (the peer is then
    /// penalised).
    pub async fn stage_request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.call(|reply| Command::StageRequest { peer, data, reply }).await?
    }

    /// Asks `peer` for a piece or a chunk's piece hashes (`/bitorch/pieces/1`). Fails like
    /// [`Handle::stage_request`]; an answer that does not decode as a [`pieces::Response`]
    /// is [`Error::InvalidResponse`] and the peer is penalised. Whether the piece or hashes
    /// are the right ones is the caller's to check.
    pub async fn piece_request(
        &self,
        peer: PeerId,
        request: &pieces::Request,
    ) -> Result<pieces::Response, Error> {
        use parity_scale_codec::Encode;
        let data = request.encode();
        let bytes = self.call(|reply| Command::PieceRequest { peer, data, reply }).await??;
        match pieces::Response::decode_bounded(&bytes) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::debug!(target: "network", %peer, error = %e, "bad piece answer");
                let _ = self.report_peer(peer, Misbehaviour::UndecodableMessage).await;
                Err(Error::InvalidResponse { peer, reason: "not a piece answer" })
            }
        }
    }

    /// Makes `roots` the chunks this node provides in the DHT: provider records for the new
    /// ones are published at once, those no longer listed are withdrawn, and all of them are
    /// refreshed every [`Config::worker_refresh_interval`](crate::Config).
    pub async fn provide_chunks(&self, roots: Vec<ChunkRoot>) -> Result<(), Error> {
        self.call(|reply| Command::ProvideChunks { roots, reply }).await
    }

    /// The peers that provide the chunk `root` in the DHT (not this node), found within
    /// [`Config::find_workers_timeout`](crate::Config). Fails with [`Error::Busy`] when too
    /// many lookups run at once.
    pub async fn find_chunk_providers(&self, root: ChunkRoot) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::FindChunkProviders { root, reply }).await?
    }

    /// Announces this node in the DHT as a worker for `announcement.model`, signed with the
    /// node key, with the addresses it listens on; replaces an earlier announcement for that
    /// model (to update `free`, say). The node publishes it again every
    /// [`Config::worker_refresh_interval`](crate::Config), each time valid for
    /// [`Config::worker_record_ttl`](crate::Config) (which sets `expires_at_ms`), until
    /// [`Handle::withdraw_worker`]. Returns once it is stored locally and on its way to the
    /// DHT. Fails for an empty layer range, or past 16 models.
    pub async fn announce_worker(&self, announcement: WorkerAnnouncement) -> Result<(), Error> {
        self.call(|reply| Command::AnnounceWorker { announcement, reply }).await?
    }

    /// Stops announcing this node as a worker for `model`: a signed withdrawal replaces the
    /// announcement in the DHT, so lookups stop returning it. Returns whether it was announced.
    pub async fn withdraw_worker(&self, model: ModelId) -> Result<bool, Error> {
        self.call(|reply| Command::WithdrawWorker { model, reply }).await
    }

    /// The workers announced for `model`: the providers of the model in the DHT whose signed
    /// announcement verifies (signed by the provider's own key, not expired, not withdrawn),
    /// this node's own announcement included. Takes at most
    /// [`Config::find_workers_timeout`](crate::Config) and returns at most
    /// [`Config::max_workers_per_model`](crate::Config) others; their announced addresses are
    /// kept, so that [`Handle::stage_request`] can dial them. Fails with [`Error::Busy`] when
    /// too many lookups run at once.
    pub async fn find_workers(
        &self,
        model: ModelId,
    ) -> Result<Vec<(PeerId, WorkerAnnouncement)>, Error> {
        self.call(|reply| Command::FindWorkers { model, reply }).await?
    }

    /// The peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// The peers connected now, and whether each is reached only through a relay.
    pub async fn peer_links(&self) -> Result<Vec<crate::PeerLink>, Error> {
        self.call(|reply| Command::PeerLinks { reply }).await
    }

    /// Whether peers can dial this node, its external addresses and relays, and how hole
    /// punching went.
    pub async fn reachability(&self) -> Result<crate::Reachability, Error> {
        self.call(|reply| Command::Reachability { reply }).await
    }

    /// The addresses the node listens on now.
    pub async fn listen_addresses(&self) -> Result<Vec<Multiaddr>, Error> {
        self.call(|reply| Command::ListenAddresses { reply }).await
    }

    /// The peers banned now.
    pub async fn banned_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::BannedPeers { reply }).await
    }

    /// Penalises `peer`; enough penalties (one for a severe misbehaviour) disconnect and ban
    /// it. The penalty is applied when this returns.
    pub async fn report_peer(&self, peer: PeerId, misbehaviour: Misbehaviour) -> Result<(), Error> {
        self.call(|reply| Command::ReportPeer { peer, misbehaviour, reply }).await
    }

    /// Bans `peer` for `duration`, as an operator command (Bitcoin Core's `setban add`): its
    /// connections are closed at once and refused in both directions, whoever dials (the
    /// node's own discovery and mDNS included), its gossip is dropped and none is sent or
    /// relayed through it, until the ban expires or [`Handle::unban_peer`] lifts it. A ban
    /// already in force is replaced, so this also shortens or extends one. A zero `duration`
    /// means the configured [`ban_duration`](crate::Config::ban_duration); bans are cut to
    /// [`MAX_BAN_DURATION`](crate::peers::MAX_BAN_DURATION). The ban is in force when this
    /// returns. Fails with [`Error::BanLocalPeer`] for the node's own peer id.
    pub async fn ban_peer(&self, peer: PeerId, duration: Duration) -> Result<(), Error> {
        self.call(|reply| Command::BanPeer { peer, duration, reply }).await?
    }

    /// Lifts the ban of `peer`, whether the operator or misbehaviour put it there (Bitcoin
    /// Core's `setban remove`). The node dials the peer again at once at the addresses it knew
    /// for it (its routing table's, and the boot node address), so that a partition made with
    /// bans heals without waiting for discovery. Returns whether `peer` was banned.
    pub async fn unban_peer(&self, peer: PeerId) -> Result<bool, Error> {
        self.call(|reply| Command::UnbanPeer { peer, reply }).await
    }

    /// Dials an address (with or without a `/p2p/<peer id>` suffix). Returns once the dial
    /// has started; the connection shows up as [`Event::PeerConnected`](crate::Event).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }
}
