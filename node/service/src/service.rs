//! The chain service: one task that owns the [`Chain`] and the [`TxPool`], driven through a
//! cloneable [`Handle`] over a bounded channel. Block and transaction events go out on a
//! broadcast channel that RPC subscriptions listen to.

use crate::chain::{Chain, Imported};
use crate::error::Error;
use crate::pool::{PoolLimits, TxPool};
use bitorch_primitives::{Commit, Hash, Header, Pair};
use bitorch_runtime::{extrinsic::Block, TransactionError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Capacity of the service's request channel.
pub const MAILBOX: usize = 1024;
/// Capacity of the event broadcast channel.
pub const EVENTS: usize = 16_384;

/// What happened to a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// In the pool, ready for the next block.
    Ready,
    /// In the pool, waiting for an earlier nonce.
    Future,
    /// Included in a block.
    InBlock(Hash),
    /// Its block is final.
    Finalized(Hash),
    /// Left the pool because it became invalid.
    Invalid(String),
    /// Evicted or replaced.
    Dropped,
}

/// Something the chain service announces.
#[derive(Clone, Debug)]
pub enum Event {
    /// A block became best and final.
    NewBlock(Header),
    /// A transaction's status changed.
    Tx(Hash, TxStatus),
}

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// What the service task owns.
pub(crate) struct State {
    /// The chain.
    pub(crate) chain: Chain,
    /// The transaction pool.
    pub(crate) pool: TxPool,
    events: broadcast::Sender<Event>,
    /// Blocks imported, and the time spent importing them.
    pub(crate) imports: ImportStats,
}

/// Blocks imported since the node started and the seconds their import took in all (checks,
/// execution, state root, the database write): what an operator's dashboard divides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImportStats {
    /// Blocks imported.
    pub count: u64,
    /// Seconds spent importing them.
    pub seconds: f64,
}

impl State {
    fn emit(&self, e: Event) {
        // No subscribers is fine.
        let _ = self.events.send(e);
    }

    /// Submits raw transaction bytes to the pool.
    pub(crate) fn submit(&mut self, bytes: &[u8]) -> Result<Hash, Error> {
        let ctx = self.chain.next_context(self.chain.best().author.clone());
        let admitted = self.pool.submit(self.chain.state(), bytes, &ctx)?;
        for h in admitted.evicted.iter().chain(admitted.replaced.iter()) {
            self.emit(Event::Tx(*h, TxStatus::Dropped));
        }
        let status = if admitted.ready { TxStatus::Ready } else { TxStatus::Future };
        self.emit(Event::Tx(admitted.hash, status));
        Ok(admitted.hash)
    }

    /// Authors, imports and finalizes the next block as the single validator `key`.
    pub(crate) fn author_and_import(&mut self, key: &Pair) -> Result<Imported, Error> {
        let candidates: Vec<_> =
            self.pool.ready(self.chain.state()).into_iter().map(|x| (*x).clone()).collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64);
        let (block, commit, built) = self.chain.author_block(key, candidates, now.unwrap_or(0))?;
        self.drop_rejected(built.rejected);
        self.import(block, commit)
    }

    /// Removes the transactions a block being built refused (they fail on the best state, e.g.
    /// registering content already registered) from the pool, and tells their submitters. Left
    /// in the pool they would wait until they expire, and every later transaction of their
    /// sender with them.
    pub(crate) fn drop_rejected(&mut self, rejected: Vec<(Hash, TransactionError)>) {
        for (hash, err) in rejected {
            if self.pool.remove(&hash).is_some() {
                self.emit(Event::Tx(hash, TxStatus::Invalid(err.to_string())));
            }
        }
    }

    /// Imports a final block and updates the pool and subscribers.
    pub(crate) fn import(&mut self, block: Block, commit: Commit) -> Result<Imported, Error> {
        let started = std::time::Instant::now();
        let imported = self.chain.import_block(block, commit)?;
        self.imports.count += 1;
        self.imports.seconds += started.elapsed().as_secs_f64();
        for h in &imported.extrinsics {
            self.pool.remove(h);
        }
        let next = imported.header.number + 1;
        let dropped: Vec<(Hash, TransactionError)> = self.pool.revalidate(self.chain.state(), next);
        self.emit(Event::NewBlock(imported.header.clone()));
        for h in &imported.extrinsics {
            self.emit(Event::Tx(*h, TxStatus::InBlock(imported.hash)));
            self.emit(Event::Tx(*h, TxStatus::Finalized(imported.hash)));
        }
        for (h, e) in dropped {
            self.emit(Event::Tx(h, TxStatus::Invalid(e.to_string())));
        }
        Ok(imported)
    }
}

/// A cloneable handle to the chain service.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Job>,
    events: broadcast::Sender<Event>,
}

impl Handle {
    /// Runs `f` on the service's state and returns its result. Private to this crate: other
    /// services use the typed queries of [`crate::query`].
    pub(crate) async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = reply.send(f(s));
        });
        self.tx.send(job).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Submits raw transaction bytes.
    pub async fn submit(&self, bytes: Vec<u8>) -> Result<Hash, Error> {
        self.with(move |s| s.submit(&bytes)).await?
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Starts the service task. It stops when `cancel` fires.
pub fn spawn(
    chain: Chain,
    limits: PoolLimits,
    cancel: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(MAILBOX);
    let (events, _) = broadcast::channel(EVENTS);
    let mut state = State {
        chain,
        pool: TxPool::new(limits),
        events: events.clone(),
        imports: ImportStats::default(),
    };
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                job = rx.recv() => match job {
                    Some(job) => job(&mut state),
                    None => break,
                },
            }
        }
        tracing::info!(target: "chain", "chain service stopped");
    });
    (Handle { tx, events }, task)
}

/// Dev block production: as the single validator `key`, author, import and finalize a block
/// every `block_time`. A failure to produce a block stops the node (`cancel`), loudly.
pub fn spawn_dev_authoring(
    handle: Handle,
    key: Pair,
    block_time: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(block_time);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let key = key.clone();
            match handle.author_and_import(key).await {
                Ok(imp) => tracing::info!(
                    target: "authoring",
                    number = imp.header.number,
                    hash = %imp.hash,
                    txs = imp.extrinsics.len(),
                    "finalized block"
                ),
                Err(Error::Stopped) => {
                    tracing::error!(target: "authoring", "the chain service is gone; stopping the node");
                    cancel.cancel();
                    break;
                }
                Err(e) => {
                    tracing::error!(target: "authoring", error = %e, "block production failed; stopping the node");
                    cancel.cancel();
                    break;
                }
            }
        }
    })
}
