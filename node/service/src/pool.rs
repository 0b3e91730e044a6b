//! The transaction pool.
//!
//! Admission validates size, decoding, signature, expiry, nonce and fee (and dry-runs the call
//! when the transaction is next in line). Transactions are kept per sender in nonce order;
//! those whose nonce is the account's next (or follows a pooled one without a gap) are ready,
//! the others wait in the future queue, at most [`PoolLimits::max_nonce_gap`] ahead. The pool is
//! bounded in count and bytes: when full, future transactions are evicted (newest first) to
//! make room, and a ready one that still does not fit is refused. After every block the pool is
//! revalidated: included, stale and expired transactions leave it.

use bitorch_pallet_support::{Context, Storage};
use bitorch_primitives::{AccountId, Hash, Nonce};
use bitorch_runtime::{executive, Balances, TransactionError, UncheckedExtrinsic};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Pool bounds.
#[derive(Clone, Debug)]
pub struct PoolLimits {
    /// Most transactions held.
    pub max_count: usize,
    /// Most encoded bytes held.
    pub max_bytes: usize,
    /// How far past the account's next nonce a transaction may be queued.
    pub max_nonce_gap: Nonce,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self { max_count: 50_000, max_bytes: 32 * 1024 * 1024, max_nonce_gap: 64 }
    }
}

/// Why the pool refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Invalid by the runtime's rules.
    #[error("invalid transaction: {0}")]
    Invalid(#[from] TransactionError),
    /// Already in the pool.
    #[error("transaction {0:?} is already in the pool")]
    AlreadyInPool(Hash),
    /// Another transaction with this sender and nonce is pooled, with at least the same tip.
    #[error("a transaction with nonce {0} from this account is already pooled; raise the tip to replace it")]
    PriorityTooLow(Nonce),
    /// The pool is full.
    #[error("the transaction pool is full; try again later")]
    PoolFull,
}

/// A pooled transaction.
#[derive(Clone, Debug)]
pub struct PoolTx {
    /// The transaction.
    pub xt: Arc<UncheckedExtrinsic>,
    /// Its hash.
    pub hash: Hash,
    /// Encoded length.
    pub len: usize,
    arrival: u64,
}

/// Outcome of a successful submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The transaction hash.
    pub hash: Hash,
    /// Whether it is ready for the next block (else queued as future).
    pub ready: bool,
    /// Transactions evicted to make room.
    pub evicted: Vec<Hash>,
    /// A transaction it replaced (same sender and nonce, lower tip).
    pub replaced: Option<Hash>,
}

/// The transaction pool.
#[derive(Default)]
pub struct TxPool {
    limits: PoolLimits,
    by_sender: HashMap<AccountId, BTreeMap<Nonce, PoolTx>>,
    by_hash: HashMap<Hash, (AccountId, Nonce)>,
    bytes: usize,
    arrivals: u64,
}

impl TxPool {
    /// An empty pool with these bounds.
    pub fn new(limits: PoolLimits) -> Self {
        Self { limits, ..Default::default() }
    }

    /// Number of pooled transactions.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Validates and admits raw transaction bytes against `state` (the best block's state);
    /// `ctx` describes the next block.
    pub fn submit<S: Storage + ?Sized>(
        &mut self,
        state: &S,
        bytes: &[u8],
        ctx: &Context,
    ) -> Result<Admitted, PoolError> {
        let xt = UncheckedExtrinsic::decode_untrusted(bytes)?;
        let hash = xt.hash();
        if self.by_hash.contains_key(&hash) {
            return Err(PoolError::AlreadyInPool(hash));
        }
        let account_nonce = Balances::nonce(state, &xt.signer).map_err(TransactionError::from)?;
        if xt.nonce > account_nonce.saturating_add(self.limits.max_nonce_gap) {
            return Err(TransactionError::NonceTooFarAhead {
                nonce: xt.nonce,
                expected: account_nonce,
                max_gap: self.limits.max_nonce_gap,
            }
            .into());
        }
        executive::validate_transaction(state, &xt, bytes.len(), ctx)?;
        let mut replaced = None;
        if let Some(existing) = self.by_sender.get(&xt.signer).and_then(|m| m.get(&xt.nonce)) {
            if existing.xt.tip >= xt.tip {
                return Err(PoolError::PriorityTooLow(xt.nonce));
            }
            replaced = Some(existing.hash);
        }
        if let Some(old) = replaced {
            self.remove(&old);
        }
        let mut evicted = Vec::new();
        while self.by_hash.len() + 1 > self.limits.max_count
            || self.bytes + bytes.len() > self.limits.max_bytes
        {
            match self.newest_future(state) {
                Some(h) => {
                    self.remove(&h);
                    evicted.push(h);
                }
                None => return Err(PoolError::PoolFull),
            }
        }
        self.arrivals += 1;
        let signer = xt.signer.clone();
        let nonce = xt.nonce;
        let tx = PoolTx { xt: Arc::new(xt), hash, len: bytes.len(), arrival: self.arrivals };
        self.bytes += tx.len;
        self.by_hash.insert(hash, (signer.clone(), nonce));
        self.by_sender.entry(signer.clone()).or_default().insert(nonce, tx);
        let ready = self.ready_chain_len(&signer, account_nonce) > (nonce - account_nonce) as usize;
        Ok(Admitted { hash, ready, evicted, replaced })
    }

    fn ready_chain_len(&self, sender: &AccountId, account_nonce: Nonce) -> usize {
        let Some(txs) = self.by_sender.get(sender) else { return 0 };
        let mut n = account_nonce;
        let mut len = 0;
        while txs.contains_key(&n) {
            len += 1;
            n += 1;
        }
        len
    }

    fn newest_future<S: Storage + ?Sized>(&self, state: &S) -> Option<Hash> {
        let mut newest: Option<&PoolTx> = None;
        for (sender, txs) in &self.by_sender {
            let account_nonce = Balances::nonce(state, sender).unwrap_or(0);
            let chain = self.ready_chain_len(sender, account_nonce) as Nonce;
            for tx in txs.range(account_nonce.saturating_add(chain)..).map(|(_, tx)| tx) {
                if newest.is_none_or(|n| tx.arrival > n.arrival) {
                    newest = Some(tx);
                }
            }
        }
        newest.map(|t| t.hash)
    }

    /// A pooled transaction by hash.
    pub fn get(&self, hash: &Hash) -> Option<Arc<UncheckedExtrinsic>> {
        let (sender, nonce) = self.by_hash.get(hash)?;
        self.by_sender.get(sender)?.get(nonce).map(|t| t.xt.clone())
    }

    /// Removes a transaction.
    pub fn remove(&mut self, hash: &Hash) -> Option<PoolTx> {
        let (sender, nonce) = self.by_hash.remove(hash)?;
        let txs = self.by_sender.get_mut(&sender)?;
        let tx = txs.remove(&nonce);
        if txs.is_empty() {
            self.by_sender.remove(&sender);
        }
        if let Some(t) = &tx {
            self.bytes -= t.len;
        }
        tx
    }

    /// The ready transactions in the order a block should take them: senders by their
    /// first ready transaction's tip (highest first), then arrival; each sender's in nonce
    /// order.
    pub fn ready<S: Storage + ?Sized>(&self, state: &S) -> Vec<Arc<UncheckedExtrinsic>> {
        let mut chains: Vec<(u128, u64, Vec<Arc<UncheckedExtrinsic>>)> = Vec::new();
        for (sender, txs) in &self.by_sender {
            let mut n = Balances::nonce(state, sender).unwrap_or(0);
            let mut chain = Vec::new();
            while let Some(tx) = txs.get(&n) {
                chain.push(tx.xt.clone());
                n += 1;
            }
            if let Some(first) = chain.first() {
                let arrival = txs.get(&first.nonce).map(|t| t.arrival).unwrap_or(0);
                chains.push((first.tip, arrival, chain));
            }
        }
        chains.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        chains.into_iter().flat_map(|c| c.2).collect()
    }

    /// The next nonce for `who`, counting pooled transactions that follow the account's.
    pub fn next_nonce(&self, who: &AccountId, account_nonce: Nonce) -> Nonce {
        account_nonce + self.ready_chain_len(who, account_nonce) as Nonce
    }

    /// All pooled transactions.
    pub fn all(&self) -> Vec<Arc<UncheckedExtrinsic>> {
        let mut v: Vec<&PoolTx> = self.by_sender.values().flat_map(|m| m.values()).collect();
        v.sort_by_key(|t| t.arrival);
        v.into_iter().map(|t| t.xt.clone()).collect()
    }

    /// After a block: drops transactions that are stale (nonce used) or can no longer be
    /// included (expired), given the new best state and the next block number. Returns the
    /// hashes dropped with why.
    pub fn revalidate<S: Storage + ?Sized>(
        &mut self,
        state: &S,
        next_block: u64,
    ) -> Vec<(Hash, TransactionError)> {
        let mut dropped = Vec::new();
        for (sender, txs) in &self.by_sender {
            let account_nonce = Balances::nonce(state, sender).unwrap_or(0);
            for (nonce, tx) in txs {
                if *nonce < account_nonce {
                    dropped.push((
                        tx.hash,
                        TransactionError::StaleNonce { nonce: *nonce, expected: account_nonce },
                    ));
                } else if tx.xt.valid_until < next_block {
                    dropped.push((
                        tx.hash,
                        TransactionError::Expired {
                            valid_until: tx.xt.valid_until,
                            next: next_block,
                        },
                    ));
                }
            }
        }
        for (h, _) in &dropped {
            self.remove(h);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_chain_spec::ChainSpec;
    use bitorch_primitives::keys::{account_of, pair_from_suri};
    use bitorch_primitives::{Pair, UNIT};
    use bitorch_runtime::{balances, state::StateTree, Call};
    use parity_scale_codec::Encode;

    fn setup() -> (StateTree, Context) {
        let (state, header) = ChainSpec::dev().unwrap().build_genesis().unwrap();
        let ctx = Context {
            block_number: 1,
            genesis_hash: header.hash(),
            author: account_of(&pair_from_suri("//Alice").unwrap()),
            parent_hash: Default::default(),
        };
        (state, ctx)
    }

    fn xt(from: &Pair, ctx: &Context, nonce: u64, tip: u128) -> Vec<u8> {
        let dest = account_of(&pair_from_suri("//Ferdie").unwrap());
        let call = Call::Balances(balances::Call::Transfer { dest, amount: UNIT });
        UncheckedExtrinsic::sign(from, &ctx.genesis_hash, nonce, tip, 100, call).encode()
    }

    #[test]
    fn orders_by_nonce_and_queues_gaps() {
        let (state, ctx) = setup();
        let bob = pair_from_suri("//Bob").unwrap();
        let mut pool = TxPool::new(PoolLimits::default());
        assert!(!pool.submit(&state, &xt(&bob, &ctx, 2, 0), &ctx).unwrap().ready);
        let first = xt(&bob, &ctx, 0, 0);
        assert!(pool.submit(&state, &first, &ctx).unwrap().ready);
        assert_eq!(pool.ready(&state).len(), 1, "nonce 2 waits for nonce 1");
        assert!(pool.submit(&state, &xt(&bob, &ctx, 1, 0), &ctx).unwrap().ready);
        let ready: Vec<u64> = pool.ready(&state).iter().map(|x| x.nonce).collect();
        assert_eq!(ready, vec![0, 1, 2]);
        assert_eq!(pool.next_nonce(&account_of(&bob), 0), 3);
        assert!(matches!(pool.submit(&state, &first, &ctx), Err(PoolError::AlreadyInPool(_))));
        // sr25519 signatures are randomized: a re-signed copy is another transaction with the
        // same nonce and tip, which does not replace the first.
        assert_eq!(
            pool.submit(&state, &xt(&bob, &ctx, 0, 0), &ctx),
            Err(PoolError::PriorityTooLow(0))
        );
    }

    #[test]
    fn bounded_with_eviction_of_future_transactions() {
        let (state, ctx) = setup();
        let [bob, charlie, dave] =
            ["//Bob", "//Charlie", "//Dave"].map(|s| pair_from_suri(s).unwrap());
        let mut pool = TxPool::new(PoolLimits { max_count: 2, ..Default::default() });
        let future = pool.submit(&state, &xt(&bob, &ctx, 5, 0), &ctx).unwrap();
        pool.submit(&state, &xt(&charlie, &ctx, 0, 0), &ctx).unwrap();
        let admitted = pool.submit(&state, &xt(&dave, &ctx, 0, 0), &ctx).unwrap();
        assert_eq!(admitted.evicted, vec![future.hash], "the future transaction makes room");
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.submit(&state, &xt(&bob, &ctx, 0, 0), &ctx), Err(PoolError::PoolFull));
        assert_eq!(pool.len(), 2, "a refused transaction changes nothing");

        // Byte bound.
        let one = xt(&bob, &ctx, 0, 0).len();
        let mut pool = TxPool::new(PoolLimits { max_bytes: one, ..Default::default() });
        pool.submit(&state, &xt(&bob, &ctx, 0, 0), &ctx).unwrap();
        assert_eq!(pool.submit(&state, &xt(&charlie, &ctx, 0, 0), &ctx), Err(PoolError::PoolFull));
    }

    #[test]
    fn higher_tip_replaces_and_revalidation_drops_stale() {
        let (mut state, ctx) = setup();
        let bob = pair_from_suri("//Bob").unwrap();
        let mut pool = TxPool::new(PoolLimits::default());
        let low_bytes = xt(&bob, &ctx, 0, 0);
        let low = pool.submit(&state, &low_bytes, &ctx).unwrap();
        assert_eq!(pool.submit(&state, &low_bytes, &ctx), Err(PoolError::AlreadyInPool(low.hash)));
        let high = pool.submit(&state, &xt(&bob, &ctx, 0, 5), &ctx).unwrap();
        assert_eq!(high.replaced, Some(low.hash));
        assert_eq!(
            pool.submit(&state, &xt(&bob, &ctx, 0, 1), &ctx),
            Err(PoolError::PriorityTooLow(0))
        );
        // Bob's nonce moves on (as if another transaction of his was included): stale.
        let mut acc = bitorch_runtime::Balances::account(&state, &account_of(&bob)).unwrap();
        acc.nonce = 1;
        bitorch_runtime::Balances::set_account(&mut state, &account_of(&bob), &acc);
        let dropped = pool.revalidate(&state, 2);
        assert_eq!(dropped.len(), 1);
        assert!(pool.is_empty());
        // Expiry: valid until 100, so gone once the next block is 101.
        pool.submit(&state, &xt(&bob, &ctx, 1, 0), &ctx).unwrap();
        assert!(pool.revalidate(&state, 100).is_empty());
        assert!(matches!(pool.revalidate(&state, 101)[0].1, TransactionError::Expired { .. }));
    }
}
