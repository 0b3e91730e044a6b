//! Block sync: a node that is behind (started late, restarted, or partitioned) asks one peer
//! at a time (round robin) for the final blocks after its best one every [`SYNC_INTERVAL`],
//! and imports them with their commit certificates through the chain's import path; it
//! answers the same requests from its peers.

use crate::error::Error;
use crate::service::Handle;
use bitorch_network::sync::{Request, Response, SyncBlock};
use bitorch_network::{Handle as NetHandle, Misbehaviour, PeerId, Refusal};
use bitorch_primitives::Commit;
use bitorch_runtime::extrinsic::Block;
use parity_scale_codec::{DecodeLimit, Encode};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often a node asks a peer for blocks it lacks.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Most blocks asked for at once.
const SYNC_BATCH: u32 = 64;
const DEPTH: u32 = bitorch_runtime::DECODE_DEPTH_LIMIT;

/// Decodes a block and its certificate as a peer sent them; `None` if either does not decode.
pub(super) fn decode(sb: &SyncBlock) -> Option<(Block, Commit)> {
    let block = Block::decode_all_with_depth_limit(DEPTH, &mut &sb.block[..]).ok()?;
    let commit =
        <Commit as DecodeLimit>::decode_all_with_depth_limit(DEPTH, &mut &sb.commit[..]).ok()?;
    Some((block, commit))
}

/// What one round of sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Synced {
    /// Blocks imported.
    pub imported: usize,
    /// The peer sent a full batch: it holds more than we have.
    pub behind: bool,
}

/// The sync state: whom to ask next, and whether a request is out.
pub(super) struct BlockSync {
    chain: Handle,
    net: NetHandle,
    next_peer: usize,
    in_flight: bool,
    done: mpsc::Sender<(PeerId, Vec<SyncBlock>)>,
}

impl BlockSync {
    /// A sync whose answers come back on the receiver returned with it.
    pub(super) fn new(
        chain: Handle,
        net: NetHandle,
    ) -> (Self, mpsc::Receiver<(PeerId, Vec<SyncBlock>)>) {
        let (done, rx) = mpsc::channel(1);
        (Self { chain, net, next_peer: 0, in_flight: false, done }, rx)
    }

    /// Asks the next connected peer for the blocks after our best, in a task of its own so
    /// that a slow or dead peer never delays consensus; its answer comes back on the receiver.
    /// Does nothing while a request is out or without peers.
    pub(super) async fn start(&mut self) -> Result<(), Error> {
        if self.in_flight {
            return Ok(());
        }
        let peers = match self.net.connected_peers().await {
            Ok(p) if !p.is_empty() => p,
            _ => return Ok(()),
        };
        self.next_peer = (self.next_peer + 1) % peers.len();
        let peer: PeerId = peers[self.next_peer];
        let from = self.chain.best().await?.number + 1;
        let (net, done) = (self.net.clone(), self.done.clone());
        self.in_flight = true;
        tokio::spawn(async move {
            let blocks = match net.request_blocks(peer, from, SYNC_BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(target: "p2p", %peer, error = %e, "sync request failed");
                    Vec::new()
                }
            };
            let _ = done.send((peer, blocks)).await;
        });
        Ok(())
    }

    /// Imports the blocks `peer` sent, in order, through the chain's import path; a block that
    /// does not decode or does not import penalises the peer and ends the batch.
    pub(super) async fn import(
        &mut self,
        peer: PeerId,
        blocks: Vec<SyncBlock>,
    ) -> Result<Synced, Error> {
        self.in_flight = false;
        let mut out = Synced { imported: 0, behind: blocks.len() >= SYNC_BATCH as usize };
        for sb in blocks {
            let Some((block, commit)) = decode(&sb) else {
                let _ = self.net.report_peer(peer, Misbehaviour::InvalidResponse).await;
                break;
            };
            match self.chain.import(block, commit).await {
                Err(Error::Stopped) => return Err(Error::Stopped),
                Ok(b) => {
                    out.imported += 1;
                    tracing::info!(target: "p2p", number = b.header.number, hash = %b.hash, %peer, "imported block from peer");
                }
                Err(Error::NotNextBlock { .. }) => break,
                Err(e) => {
                    tracing::warn!(target: "p2p", %peer, error = %e, "peer sent an invalid block");
                    let _ = self.net.report_peer(peer, Misbehaviour::InvalidBlock).await;
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Answers a peer's sync request with the final blocks it asks for (the network has checked
/// its shape and bounded `max`).
pub(super) async fn answer(
    chain: &Handle,
    request: Request,
    reply: oneshot::Sender<Response>,
) -> Result<(), Error> {
    let response = match chain.blocks_from(request.from, request.max).await {
        Ok(b) => Response::Blocks(
            b.into_iter()
                .map(|b| SyncBlock { block: b.block.encode(), commit: b.commit.encode() })
                .collect(),
        ),
        Err(Error::Stopped) => return Err(Error::Stopped),
        Err(_) => Response::Refused(Refusal::Unavailable),
    };
    let _ = reply.send(response);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_that_do_not_decode_are_refused() {
        let bad = SyncBlock { block: vec![1, 2, 3], commit: vec![] };
        assert!(decode(&bad).is_none());
        assert!(decode(&SyncBlock { block: vec![], commit: vec![] }).is_none());
    }
}
