//! The networked node: Tendermint consensus, block sync and transaction relay over libp2p,
//! one concern a file:
//!
//! - `consensus`: the engine (when this node validates), its timers and write-ahead log,
//!   and the actions it asks for (gossip, build or check a block, import a decision, report
//!   equivocation);
//! - `sync`: catching up from peers ([`SYNC_INTERVAL`]) and answering their sync requests;
//! - `relay`: transactions out to peers in gossip batches, and in from them to the pool.
//!
//! One task ([`spawn`]) runs the three: it waits on network events, chain events and timers
//! and hands each to the part it concerns. Each part talks to the chain service through its
//! typed queries ([`Handle`]) and to the network through [`bitorch_network::Handle`]. Decided
//! blocks, and blocks fetched from peers with their commit certificates, all enter the chain
//! through [`crate::Chain::import_block`], which accepts only final blocks. Stage requests
//! never come here: the network hands them to the serving service.

mod consensus;
mod relay;
mod sync;

pub use sync::SYNC_INTERVAL;

use crate::error::Error;
use crate::service::{Event as ChainEvent, Handle, TxStatus};
use crate::status::StatusSender;
use bitorch_network::{Event as NetEvent, GossipId, Handle as NetHandle, Topic, Verdict};
use bitorch_primitives::{Hash, Pair};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Gives the network the verdict on a gossip message (when it asks for one).
async fn give_verdict(net: &NetHandle, id: Option<GossipId>, verdict: Verdict) {
    if let Some(id) = id {
        let _ = net.gossip_verdict(id, verdict).await;
    }
}

/// How the networked node runs.
pub struct Options {
    /// The validator key, if this node validates.
    pub key: Option<Pair>,
    /// The chain's genesis hash.
    pub genesis: Hash,
    /// Target time between blocks.
    pub block_time: Duration,
    /// The consensus write-ahead log (`None`: in memory, lost on restart).
    pub wal: Option<PathBuf>,
    /// Where the node publishes its consensus and sync status (for the RPC).
    pub status: StatusSender,
    /// Test-only misbehaviour: sign and send a second, conflicting vote for every vote
    /// (`bitorch node --unsafe-equivocate`), so that tests can watch the network slash it.
    pub equivocate: bool,
}

/// Starts the networked node task; it ends when `cancel` fires (and cancels it if it fails).
pub fn spawn(
    chain: Handle,
    net: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    options: Options,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(chain, net, events, options, cancel.clone()).await {
            tracing::error!(target: "p2p", error = %e, "networked node failed; stopping");
            cancel.cancel();
        }
    })
}

/// Far enough in the future to stand for "never" in a `select!` arm that is disabled anyway.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

async fn run(
    chain: Handle,
    net: NetHandle,
    mut events: mpsc::Receiver<NetEvent>,
    options: Options,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut consensus = consensus::Driver::new(chain.clone(), net.clone(), options);
    let (mut sync, mut synced) = sync::BlockSync::new(chain.clone(), net.clone());
    let mut relay = relay::TxRelay::new(chain.clone(), net.clone());
    let mut chain_events = chain.subscribe();
    consensus.restart().await?;
    let mut relay_tick = tokio::time::interval(relay::RELAY_INTERVAL);
    relay_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync_tick = tokio::time::interval(SYNC_INTERVAL);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_timer = consensus.next_timer();
        let next_height = consensus.next_height_at();
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = events.recv() => match ev {
                Some(NetEvent::Gossip { id, topic: Topic::Consensus, from, author, data }) => {
                    consensus.on_gossip(id, author.unwrap_or(from), data).await?
                }
                Some(NetEvent::Gossip { id, topic: Topic::Transactions, from, author, data }) => {
                    relay.on_gossip(id, author.unwrap_or(from), data).await?
                }
                Some(NetEvent::SyncRequest { request, reply, .. }) => {
                    sync::answer(&chain, request, reply).await?
                }
                Some(NetEvent::PeerConnected(_) | NetEvent::PeerDisconnected(_)) => {}
                None => return Ok(()),
            },
            ev = chain_events.recv() => match ev {
                Ok(ChainEvent::Tx(hash, TxStatus::Ready | TxStatus::Future)) => relay.on_pooled(hash),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(target: "p2p", missed = n, "chain events lagged; relaying the pool");
                    relay.on_missed().await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            _ = tokio::time::sleep_until(next_timer.unwrap_or_else(never)), if next_timer.is_some() => {
                consensus.on_timers().await?
            }
            _ = relay_tick.tick(), if relay.has_pending() => relay.relay().await?,
            _ = sync_tick.tick() => {
                relay.retry();
                sync.start().await?;
            }
            Some((peer, blocks)) = synced.recv() => {
                let done = sync.import(peer, blocks).await?;
                consensus.set_syncing(done.behind);
                if done.imported > 0 {
                    consensus.restart().await?;
                }
            }
            _ = tokio::time::sleep_until(next_height.unwrap_or_else(never)), if next_height.is_some() => {
                consensus.restart().await?
            }
        }
    }
}
