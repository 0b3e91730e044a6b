//! Transaction relay: transactions submitted to this node go out to its peers in gossip
//! batches; transactions that come in by gossip go into the pool (a forged one condemns its
//! message and its author) and are not relayed again (gossipsub floods them already).

use crate::error::Error;
use crate::service::Handle;
use bitorch_network::{GossipId, Handle as NetHandle, Misbehaviour, PeerId, Topic, Verdict};
use bitorch_primitives::Hash;
use std::collections::HashSet;
use std::time::Duration;

/// How long new transactions wait to be relayed together in one gossip message.
pub(super) const RELAY_INTERVAL: Duration = Duration::from_millis(25);
/// Most bytes of transactions in one gossip message.
const MAX_TX_BATCH_BYTES: usize = 1024 * 1024;
/// Hashes of transactions that came in by gossip, remembered so that they are not relayed
/// again; forgotten past this many.
const MAX_GOSSIPED: usize = 100_000;

/// Splits encoded transactions into gossip batches of at most `max_txs` transactions and
/// `max_bytes` bytes each (a transaction larger than `max_bytes` goes alone), in order.
pub(super) fn batches(
    txs: Vec<(Hash, Vec<u8>)>,
    max_txs: usize,
    max_bytes: usize,
) -> Vec<Vec<(Hash, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut batch: Vec<(Hash, Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    for tx in txs {
        if !batch.is_empty() && (batch.len() >= max_txs || bytes + tx.1.len() > max_bytes) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += tx.1.len();
        batch.push(tx);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// The transactions that came in by gossip, bounded: past `max` it starts over (a forgotten
/// one may be relayed once more, which gossipsub's own duplicate filter absorbs).
#[derive(Debug)]
pub(super) struct Gossiped {
    seen: HashSet<Hash>,
    max: usize,
}

impl Gossiped {
    pub(super) fn new(max: usize) -> Self {
        Self { seen: HashSet::new(), max }
    }

    /// Remembers `hashes`.
    pub(super) fn remember(&mut self, hashes: impl ExactSizeIterator<Item = Hash>) {
        if self.seen.len() + hashes.len() > self.max {
            self.seen.clear();
        }
        self.seen.extend(hashes);
    }

    /// Whether `hash` came in by gossip; forgets it (it is seen once, when the pool admits it).
    pub(super) fn take(&mut self, hash: &Hash) -> bool {
        self.seen.remove(hash)
    }

    pub(super) fn contains(&self, hash: &Hash) -> bool {
        self.seen.contains(hash)
    }
}

/// The relay's state.
pub(super) struct TxRelay {
    chain: Handle,
    net: NetHandle,
    /// Transactions submitted here, waiting to be relayed in the next batch.
    to_relay: Vec<Hash>,
    /// Transactions whose relay failed (no peer to gossip to yet), tried again on
    /// [`TxRelay::retry`] while they are in the pool.
    relay_again: Vec<Hash>,
    /// Transactions that came in by gossip (not to be relayed again).
    gossiped: Gossiped,
}

impl TxRelay {
    pub(super) fn new(chain: Handle, net: NetHandle) -> Self {
        Self {
            chain,
            net,
            to_relay: Vec::new(),
            relay_again: Vec::new(),
            gossiped: Gossiped::new(MAX_GOSSIPED),
        }
    }

    /// Whether a batch is waiting to go out.
    pub(super) fn has_pending(&self) -> bool {
        !self.to_relay.is_empty()
    }

    /// The pool admitted `hash`: relay it unless it came in by gossip.
    pub(super) fn on_pooled(&mut self, hash: Hash) {
        if !self.gossiped.take(&hash) {
            self.to_relay.push(hash);
        }
    }

    /// Some pool events were missed: relay what the pool holds instead (minus what came in by
    /// gossip), so that none stays on this node only.
    pub(super) async fn on_missed(&mut self) -> Result<(), Error> {
        let pooled: Vec<Hash> = self.chain.pending().await?.iter().map(|x| x.hash()).collect();
        let queued: HashSet<Hash> = self.to_relay.iter().copied().collect();
        let gossiped = &self.gossiped;
        self.to_relay
            .extend(pooled.into_iter().filter(|h| !gossiped.contains(h) && !queued.contains(h)));
        Ok(())
    }

    /// Queues again the transactions whose relay failed.
    pub(super) fn retry(&mut self) {
        self.to_relay.append(&mut self.relay_again);
    }

    /// Relays the transactions submitted here since the last batch, in as few gossip
    /// messages as the size limits allow.
    pub(super) async fn relay(&mut self) -> Result<(), Error> {
        let hashes = std::mem::take(&mut self.to_relay);
        // Those no longer in the pool (included, dropped) are not relayed.
        let txs = self.chain.pooled(hashes).await?;
        let max_txs = bitorch_network::tx_batch::MAX_TXS;
        for batch in batches(txs, max_txs, MAX_TX_BATCH_BYTES) {
            self.publish(batch).await;
        }
        Ok(())
    }

    /// Publishes a batch; when it cannot go out (no peer subscribed yet), its transactions are
    /// tried again later.
    async fn publish(&mut self, batch: Vec<(Hash, Vec<u8>)>) {
        let (hashes, txs): (Vec<Hash>, Vec<Vec<u8>>) = batch.into_iter().unzip();
        let data = bitorch_network::tx_batch::encode(&txs);
        if let Err(e) = self.net.publish(Topic::Transactions, data).await {
            tracing::debug!(target: "p2p", error = %e, txs = txs.len(), "transactions not relayed yet");
            if self.relay_again.len() < MAX_GOSSIPED {
                self.relay_again.extend(hashes);
            }
        }
    }

    /// A batch of transactions came in by gossip from `from`: into the pool, with the verdict
    /// for the network (undecodable or forged: rejected, and its author penalised).
    pub(super) async fn on_gossip(
        &mut self,
        id: Option<GossipId>,
        from: PeerId,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        let txs = match bitorch_network::tx_batch::decode(&data) {
            Ok(txs) => txs,
            Err(e) => {
                tracing::debug!(target: "p2p", %from, error = %e, "undecodable transaction gossip");
                super::give_verdict(&self.net, id, Verdict::Reject).await;
                let _ = self.net.report_peer(from, Misbehaviour::UndecodableMessage).await;
                return Ok(());
            }
        };
        self.gossiped.remember(txs.iter().map(|tx| bitorch_primitives::blake2_256(tx)));
        if self.chain.submit_gossiped(txs).await? {
            super::give_verdict(&self.net, id, Verdict::Reject).await;
            let _ = self.net.report_peer(from, Misbehaviour::BadSignature).await;
        } else {
            super::give_verdict(&self.net, id, Verdict::Accept).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(i: u8, len: usize) -> (Hash, Vec<u8>) {
        (Hash::repeat_byte(i), vec![i; len])
    }

    #[test]
    fn batches_respect_the_count_and_byte_limits_in_order() {
        assert!(batches(Vec::new(), 3, 100).is_empty());
        let sizes = |b: &Vec<Vec<(Hash, Vec<u8>)>>| -> Vec<Vec<u8>> {
            b.iter().map(|b| b.iter().map(|t| t.1[0]).collect()).collect()
        };
        // By count.
        let b = batches((1..=7).map(|i| tx(i, 10)).collect(), 3, 1_000);
        assert_eq!(sizes(&b), vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
        // By bytes: 40 + 40 fit in 100, a third does not.
        let b = batches((1..=5).map(|i| tx(i, 40)).collect(), 10, 100);
        assert_eq!(sizes(&b), vec![vec![1, 2], vec![3, 4], vec![5]]);
        // One larger than the byte limit goes alone, not dropped.
        let b = batches(vec![tx(1, 10), tx(2, 500), tx(3, 10)], 10, 100);
        assert_eq!(sizes(&b), vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn gossiped_transactions_are_not_relayed_and_the_memory_is_bounded() {
        let mut g = Gossiped::new(4);
        g.remember([Hash::repeat_byte(1), Hash::repeat_byte(2)].into_iter());
        assert!(g.contains(&Hash::repeat_byte(1)));
        // Seen once: taken when the pool admits it, not twice.
        assert!(g.take(&Hash::repeat_byte(1)));
        assert!(!g.take(&Hash::repeat_byte(1)));
        // Past the bound it starts over rather than grow.
        g.remember((10..14).map(Hash::repeat_byte));
        assert!(!g.contains(&Hash::repeat_byte(2)));
        assert!(g.contains(&Hash::repeat_byte(13)));
        assert!(g.seen.len() <= 4);
    }
}
