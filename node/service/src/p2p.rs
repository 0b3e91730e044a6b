//! The networked node: block sync, transaction relay and Tendermint consensus over libp2p.
//!
//! One task owns the consensus engine (when this node is a validator) and its timers; it
//! talks to the chain service through its [`Handle`] and to the network through
//! [`bitorch_network::Handle`]. Decided blocks, and blocks fetched from peers with their
//! commit certificates, all enter the chain through [`crate::Chain::import_block`], which
//! accepts only final blocks. A node that is behind (started late, restarted, or partitioned)
//! asks its peers for the blocks it lacks every [`SYNC_INTERVAL`] and then follows consensus.
//!
//! A validator's engine records into the write-ahead log at the path given to [`spawn`]
//! ([`crate::wal::FileWal`]), opened when the engine is created; starting the engine at the
//! height the log records replays it, so a restarted validator repeats its votes instead of
//! casting new ones.
//!
//! A node that serves layers of a model answers its peers' `/bitorch/stage/1` requests
//! through the [`StageHandler`] in its [`Options`], one task per request so that a long
//! forward pass never holds up consensus; a node without one refuses them.

use crate::service::{Event as ChainEvent, Handle, TxStatus};
use crate::status::{NodeStatus, StatusSender};
use bitorch_consensus::{
    Action, Config, Consensus, MalachiteConsensus, MemoryWal, Timeout, ValidatorSet, Value, Wal,
};
use bitorch_network::sync::{Response, SyncBlock};
use bitorch_network::{
    Event as NetEvent, GossipId, Handle as NetHandle, Misbehaviour, PeerId, Topic, Verdict,
};
use bitorch_primitives::{keys, Commit, Hash, Pair};
use bitorch_runtime::{extrinsic::Block, staking, Balances, Call, UncheckedExtrinsic};
use parity_scale_codec::{DecodeLimit, Encode};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a node asks a peer for blocks it lacks.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Most blocks asked for at once.
const SYNC_BATCH: u32 = 64;
const DEPTH: u32 = bitorch_runtime::DECODE_DEPTH_LIMIT;
/// How long new transactions wait to be relayed together in one gossip message.
const RELAY_INTERVAL: Duration = Duration::from_millis(25);
/// Most bytes of transactions in one gossip message.
const MAX_TX_BATCH_BYTES: usize = 1024 * 1024;
/// Hashes of transactions that came in by gossip, remembered so that they are not relayed
/// again (gossipsub already floods them); forgotten past this many.
const MAX_GOSSIPED: usize = 100_000;

/// Answers the bytes of a peer's stage request (`/bitorch/stage/1`) with the bytes of the
/// reply, or `None` to refuse it (the peer sees a refusal). The node's worker sits behind it;
/// the network already bounds how many requests wait for an answer, and for how long.
pub type StageHandler = Arc<
    dyn Fn(PeerId, Vec<u8>) -> Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>> + Send + Sync,
>;

/// Gives the network the verdict on a gossip message (when it asks for one).
async fn give_verdict(net: &NetHandle, id: Option<GossipId>, verdict: Verdict) {
    if let Some(id) = id {
        let _ = net.gossip_verdict(id, verdict).await;
    }
}

struct Node {
    chain: Handle,
    net: NetHandle,
    key: Option<Pair>,
    genesis: Hash,
    engine: Option<MalachiteConsensus>,
    timers: Vec<(Instant, Timeout)>,
    best: u64,
    next_peer: usize,
    block_time: Duration,
    /// When the next height may start (block-time pacing after a decision).
    start_next_at: Option<Instant>,
    last_start: Instant,
    /// The consensus write-ahead log; `None` keeps it in memory (lost when the node stops).
    wal_path: Option<PathBuf>,
    status: StatusSender,
    equivocate: bool,
    /// The last sync request came back with a full batch: peers hold more than we have.
    syncing: bool,
    /// Transactions submitted here, waiting to be relayed in the next batch.
    to_relay: Vec<Hash>,
    /// Transactions whose relay failed (no peer to gossip to yet), tried again every
    /// [`SYNC_INTERVAL`] while they are in the pool.
    relay_again: Vec<Hash>,
    /// Transactions that came in by gossip (not to be relayed again).
    gossiped: HashSet<Hash>,
    /// Answers peers' stage requests; `None`: this node serves no layers.
    stage: Option<StageHandler>,
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
    /// Answers peers' stage requests when this node serves layers of a model (`None`:
    /// refuse them).
    pub stage: Option<StageHandler>,
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
        if options.equivocate {
            tracing::warn!(target: "p2p", "--unsafe-equivocate: this validator double-votes on purpose and will be slashed");
        }
        let node = Node {
            chain,
            net,
            key: options.key,
            genesis: options.genesis,
            engine: None,
            timers: Vec::new(),
            best: 0,
            next_peer: 0,
            block_time: options.block_time,
            start_next_at: None,
            last_start: Instant::now(),
            wal_path: options.wal,
            status: options.status,
            equivocate: options.equivocate,
            syncing: false,
            to_relay: Vec::new(),
            relay_again: Vec::new(),
            gossiped: HashSet::new(),
            stage: options.stage,
        };
        if let Err(e) = node.run(events, cancel.clone()).await {
            tracing::error!(target: "p2p", error = %e, "networked node failed; stopping");
            cancel.cancel();
        }
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Node {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        cancel: CancellationToken,
    ) -> Result<(), crate::Error> {
        let mut chain_events = self.chain.subscribe();
        self.best = self.chain.with(|s| s.chain.best().number).await?;
        let first = self.restart_engine().await?;
        self.perform(first).await?;
        let mut relay = tokio::time::interval(RELAY_INTERVAL);
        relay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(SYNC_INTERVAL);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Sync requests run beside the loop so a slow or dead peer never delays consensus.
        let (synced_tx, mut synced) = mpsc::channel::<(PeerId, Vec<SyncBlock>)>(1);
        let mut sync_in_flight = false;
        loop {
            let next = self.timers.iter().map(|t| t.0).min();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                ev = events.recv() => match ev {
                    Some(ev) => self.on_net_event(ev).await?,
                    None => return Ok(()),
                },
                ev = chain_events.recv() => match ev {
                    Ok(ChainEvent::Tx(hash, TxStatus::Ready | TxStatus::Future)) => {
                        if !self.gossiped.remove(&hash) {
                            self.to_relay.push(hash);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed some submissions: relay what the pool holds instead (minus
                        // what came in by gossip), so that none stays on this node only.
                        tracing::debug!(target: "p2p", missed = n, "chain events lagged; relaying the pool");
                        let pooled: Vec<Hash> =
                            self.chain.with(|s| s.pool.all().iter().map(|x| x.hash()).collect()).await?;
                        let relayed: HashSet<Hash> = self.to_relay.iter().copied().collect();
                        self.to_relay.extend(
                            pooled.into_iter().filter(|h| !self.gossiped.contains(h) && !relayed.contains(h)),
                        );
                    }
                    Err(_) => return Ok(()),
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next.is_some() => {
                    let now = Instant::now();
                    let (due, rest): (Vec<_>, Vec<_>) = self.timers.drain(..).partition(|t| t.0 <= now);
                    self.timers = rest;
                    for (_, t) in due {
                        if let Some(engine) = self.engine.as_mut() {
                            let actions = engine.on_timeout(t).unwrap_or_else(|e| {
                                tracing::warn!(target: "p2p", error = %e, "consensus timeout failed");
                                Vec::new()
                            });
                            self.perform(actions).await?;
                        }
                    }
                }
                _ = relay.tick(), if !self.to_relay.is_empty() => self.relay().await?,
                _ = sync.tick() => {
                    self.to_relay.append(&mut self.relay_again);
                    if !sync_in_flight {
                        sync_in_flight = self.start_sync(synced_tx.clone()).await?;
                    }
                }
                Some((peer, blocks)) = synced.recv() => {
                    sync_in_flight = false;
                    self.import_synced(peer, blocks).await?;
                }
                _ = tokio::time::sleep_until(self.start_next_at.unwrap_or_else(Instant::now)), if self.start_next_at.is_some() => {
                    self.start_next_at = None;
                    let actions = self.restart_engine().await?;
                    self.perform(actions).await?;
                }
            }
        }
    }

    /// (Re)starts consensus at the height after the best block, if we are a validator of it;
    /// returns the engine's first actions for that height.
    async fn restart_engine(&mut self) -> Result<Vec<Action>, crate::Error> {
        let (best, powers) =
            self.chain.with(|s| s.chain.validators().map(|v| (s.chain.best().number, v))).await??;
        self.best = best;
        let Some(key) = self.key.clone() else { return Ok(Vec::new()) };
        let me = keys::account_of(&key);
        if !powers.iter().any(|(a, _)| a == &me) {
            self.engine = None;
            return Ok(Vec::new());
        }
        let set = ValidatorSet::new(powers).map_err(|e| crate::Error::Key(e.to_string()))?;
        let height = best + 1;
        let actions = match self.engine.as_mut() {
            Some(engine) => engine.start_height(height, set),
            None => {
                // Starting the height the log records replays it.
                let wal: Box<dyn Wal> = match &self.wal_path {
                    Some(path) => Box::new(crate::wal::FileWal::open(path)?),
                    None => Box::new(MemoryWal::new()),
                };
                let engine = self.engine.insert(MalachiteConsensus::new(
                    Config::new(self.genesis),
                    key,
                    height,
                    set.clone(),
                    wal,
                ));
                engine.start_height(height, set)
            }
        };
        self.timers.clear();
        self.last_start = Instant::now();
        Ok(actions.unwrap_or_else(|e| {
            tracing::warn!(target: "p2p", error = %e, height, "could not start consensus height");
            Vec::new()
        }))
    }

    async fn perform(&mut self, actions: Vec<Action>) -> Result<(), crate::Error> {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let more = match action {
                Action::Broadcast(bytes) => {
                    let twin = match (&self.key, self.equivocate) {
                        (Some(key), true) => {
                            use bitorch_consensus::byzantine::{
                                conflicting_proposal, conflicting_vote,
                            };
                            conflicting_vote(&bytes, key, &self.genesis)
                                .or_else(|| conflicting_proposal(&bytes, key, &self.genesis))
                        }
                        _ => None,
                    };
                    for msg in std::iter::once(bytes).chain(twin) {
                        if let Err(e) = self.net.publish(Topic::Consensus, msg).await {
                            tracing::debug!(target: "p2p", error = %e, "consensus message not published");
                        }
                    }
                    Vec::new()
                }
                Action::ScheduleTimeout { timeout, after } => {
                    self.timers.push((Instant::now() + after, timeout));
                    Vec::new()
                }
                Action::CancelTimeout(t) => {
                    self.timers.retain(|x| x.1 != t);
                    Vec::new()
                }
                Action::CancelAllTimeouts => {
                    self.timers.clear();
                    Vec::new()
                }
                Action::GetValue { height, round, .. } => self.propose(height, round).await?,
                Action::CheckValue { height, value } => self.check(height, value).await?,
                Action::Decided(d) => {
                    let imported =
                        match Block::decode_all_with_depth_limit(DEPTH, &mut &d.value.bytes[..]) {
                            Ok(block) => {
                                let commit = d.commit.clone();
                                self.chain.with(move |s| s.import(block, commit)).await?
                            }
                            Err(e) => Err(crate::Error::Corrupt(format!(
                                "decided block does not decode: {e}"
                            ))),
                        };
                    match imported {
                        Ok(b) => {
                            tracing::info!(target: "p2p", number = b.header.number, hash = %b.hash, round = d.round, txs = b.extrinsics.len(), "finalized block")
                        }
                        Err(e) => {
                            tracing::debug!(target: "p2p", error = %e, height = d.height, "decided block not imported (sync will fetch it)")
                        }
                    }
                    // Pace blocks: the next height starts one block time after this one did.
                    self.start_next_at = Some(self.last_start + self.block_time);
                    Vec::new()
                }
                Action::Evidence(e) => {
                    self.report(staking::Call::ReportEquivocation { evidence: e }).await?;
                    Vec::new()
                }
                Action::DoubleProposal(e) => {
                    self.report(staking::Call::ReportDoubleProposal { evidence: e }).await?;
                    Vec::new()
                }
            };
            queue.extend(more);
        }
        self.publish_status();
        Ok(())
    }

    /// Publishes height, round, whether we validate it, and sync state for the RPC.
    fn publish_status(&self) {
        let (height, round, validating) = match &self.engine {
            Some(e) => (e.height(), e.round(), true),
            None => (self.best + 1, None, false),
        };
        let status = NodeStatus { height, round, validating, syncing: self.syncing };
        self.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }

    async fn propose(&mut self, height: u64, round: u32) -> Result<Vec<Action>, crate::Error> {
        let Some(key) = self.key.clone() else { return Ok(Vec::new()) };
        let built = self
            .chain
            .with(move |s| {
                if s.chain.best().number + 1 != height {
                    return None;
                }
                let candidates =
                    s.pool.ready(s.chain.state()).into_iter().map(|x| (*x).clone()).collect();
                s.chain.author_block(&key, candidates, now_ms()).ok().map(|(block, _, _)| block)
            })
            .await?;
        let Some(block) = built else { return Ok(Vec::new()) };
        let value = Value { hash: block.header.hash(), bytes: block.encode() };
        let Some(engine) = self.engine.as_mut() else { return Ok(Vec::new()) };
        Ok(engine.propose(height, round, value).unwrap_or_default())
    }

    async fn check(&mut self, height: u64, value: Value) -> Result<Vec<Action>, crate::Error> {
        let valid = match Block::decode_all_with_depth_limit(DEPTH, &mut &value.bytes[..]) {
            Ok(block) if block.header.hash() == value.hash && block.header.number == height => {
                self.chain.with(move |s| s.chain.check_block(&block).is_ok()).await?
            }
            _ => false,
        };
        let Some(engine) = self.engine.as_mut() else { return Ok(Vec::new()) };
        Ok(engine.value_checked(height, value, valid).unwrap_or_default())
    }

    /// Submits evidence of equivocation (`ReportEquivocation` or `ReportDoubleProposal`)
    /// signed with our key.
    async fn report(&mut self, call: staking::Call) -> Result<(), crate::Error> {
        let Some(key) = self.key.clone() else { return Ok(()) };
        let genesis = self.genesis;
        let result = self
            .chain
            .with(move |s| {
                let me = keys::account_of(&key);
                let nonce = Balances::nonce(s.chain.state(), &me).unwrap_or(0);
                let nonce = s.pool.next_nonce(&me, nonce);
                let valid_until = s.chain.best().number + 64;
                let call = Call::Staking(call);
                let xt = UncheckedExtrinsic::sign(&key, &genesis, nonce, 0, valid_until, call);
                s.submit(&xt.encode())
            })
            .await?;
        match result {
            Ok(hash) => tracing::warn!(target: "p2p", %hash, "reported an equivocating validator"),
            Err(e) => {
                tracing::debug!(target: "p2p", error = %e, "equivocation report not submitted")
            }
        }
        Ok(())
    }

    /// Relays the transactions submitted here since the last batch, in as few gossip
    /// messages as the size limits allow.
    async fn relay(&mut self) -> Result<(), crate::Error> {
        let hashes = std::mem::take(&mut self.to_relay);
        // Those no longer in the pool (included, dropped) are not relayed.
        let txs: Vec<(Hash, Vec<u8>)> = self
            .chain
            .with(move |s| {
                hashes.iter().filter_map(|h| s.pool.get(h).map(|x| (*h, x.encode()))).collect()
            })
            .await?;
        let mut batch: Vec<(Hash, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for tx in txs {
            if !batch.is_empty()
                && (batch.len() >= bitorch_network::tx_batch::MAX_TXS
                    || bytes + tx.1.len() > MAX_TX_BATCH_BYTES)
            {
                self.publish_txs(std::mem::take(&mut batch)).await;
                bytes = 0;
            }
            bytes += tx.1.len();
            batch.push(tx);
        }
        if !batch.is_empty() {
            self.publish_txs(batch).await;
        }
        Ok(())
    }

    /// Publishes a batch; when it cannot go out (no peer subscribed yet), its transactions are
    /// tried again later.
    async fn publish_txs(&mut self, batch: Vec<(Hash, Vec<u8>)>) {
        let (hashes, txs): (Vec<Hash>, Vec<Vec<u8>>) = batch.into_iter().unzip();
        if let Err(e) =
            self.net.publish(Topic::Transactions, bitorch_network::tx_batch::encode(&txs)).await
        {
            tracing::debug!(target: "p2p", error = %e, txs = txs.len(), "transactions not relayed yet");
            if self.relay_again.len() < MAX_GOSSIPED {
                self.relay_again.extend(hashes);
            }
        }
    }

    async fn on_net_event(&mut self, ev: NetEvent) -> Result<(), crate::Error> {
        match ev {
            // Gossip is penalised on its signed author, not on the peer that relayed it: an
            // honest relay may have forwarded another peer's garbage before validation was on
            // (or from an older node). Each message gets a verdict: only accepted ones are
            // forwarded to our other peers.
            NetEvent::Gossip { id, topic: Topic::Consensus, from, author, data } => {
                let from = author.unwrap_or(from);
                let result = match self.engine.as_mut() {
                    Some(engine) => engine.on_message(&data).map(Some),
                    // Not validating: check that it decodes before passing it on.
                    None => bitorch_consensus::wire::Message::from_bytes(&data).map(|_| None),
                };
                // The engine's error is not kept across an await (it need not be `Send`).
                let (actions, verdict) = match result {
                    Ok(actions) => (actions, Verdict::Accept),
                    Err(
                        bitorch_consensus::Error::Malformed(_)
                        | bitorch_consensus::Error::Decode(_)
                        | bitorch_consensus::Error::MessageTooLarge { .. }
                        | bitorch_consensus::Error::UnsupportedVersion(_),
                    ) => (None, Verdict::Reject),
                    Err(e) => {
                        tracing::debug!(target: "p2p", error = %e, "consensus message ignored");
                        (None, Verdict::Ignore)
                    }
                };
                give_verdict(&self.net, id, verdict).await;
                if verdict == Verdict::Reject {
                    let _ = self.net.report_peer(from, Misbehaviour::UndecodableMessage).await;
                }
                if let Some(actions) = actions {
                    self.perform(actions).await?;
                }
            }
            NetEvent::Gossip { id, topic: Topic::Transactions, from, author, data } => {
                let from = author.unwrap_or(from);
                let txs = match bitorch_network::tx_batch::decode(&data) {
                    Ok(txs) => txs,
                    Err(e) => {
                        tracing::debug!(target: "p2p", %from, error = %e, "undecodable transaction gossip");
                        give_verdict(&self.net, id, Verdict::Reject).await;
                        let _ = self.net.report_peer(from, Misbehaviour::UndecodableMessage).await;
                        return Ok(());
                    }
                };
                if self.gossiped.len() + txs.len() > MAX_GOSSIPED {
                    self.gossiped.clear();
                }
                for tx in &txs {
                    self.gossiped.insert(bitorch_primitives::blake2_256(tx));
                }
                let forged = self
                    .chain
                    .with(move |s| {
                        txs.iter().any(|tx| {
                            matches!(
                                s.submit(tx),
                                Err(crate::Error::Pool(crate::pool::PoolError::Invalid(
                                    bitorch_runtime::TransactionError::Malformed(_)
                                        | bitorch_runtime::TransactionError::BadSignature,
                                )))
                            )
                        })
                    })
                    .await?;
                if forged {
                    give_verdict(&self.net, id, Verdict::Reject).await;
                    let _ = self.net.report_peer(from, Misbehaviour::BadSignature).await;
                } else {
                    give_verdict(&self.net, id, Verdict::Accept).await;
                }
            }
            NetEvent::SyncRequest { request, reply, .. } => {
                let blocks = self
                    .chain
                    .with(move |s| -> Result<Vec<SyncBlock>, crate::Error> {
                        let mut out = Vec::new();
                        let last = request.from.saturating_add(u64::from(request.max));
                        for n in request.from..last {
                            let Some(hash) = s.chain.db().hash_at(n)? else { break };
                            let Some(block) = s.chain.block(&hash)? else { break };
                            let Some(commit) = s.chain.db().justification(&hash)? else { break };
                            out.push(SyncBlock { block: block.encode(), commit: commit.encode() });
                        }
                        Ok(out)
                    })
                    .await?;
                let _ = reply.send(match blocks {
                    Ok(b) => Response::Blocks(b),
                    Err(_) => Response::Refused(bitorch_network::sync::SyncError::Unavailable),
                });
            }
            NetEvent::StageRequest { peer, data, reply } => match &self.stage {
                Some(handler) => {
                    let answer = handler(peer, data);
                    tokio::spawn(async move {
                        // `None` drops the reply, which refuses the request.
                        if let Some(bytes) = answer.await {
                            let _ = reply.send(bytes);
                        }
                    });
                }
                // This node serves no layers: dropping the reply answers the peer with an error.
                None => drop(reply),
            },
            NetEvent::PeerConnected(_) | NetEvent::PeerDisconnected(_) => {}
        }
        Ok(())
    }

    /// Asks one connected peer (round robin) for the blocks after our best, in a task of its
    /// own; the answer comes back on `done`. Returns whether a request was started.
    async fn start_sync(
        &mut self,
        done: mpsc::Sender<(PeerId, Vec<SyncBlock>)>,
    ) -> Result<bool, crate::Error> {
        let peers = match self.net.connected_peers().await {
            Ok(p) if !p.is_empty() => p,
            _ => return Ok(false),
        };
        self.next_peer = (self.next_peer + 1) % peers.len();
        let peer: PeerId = peers[self.next_peer];
        let from = self.chain.with(|s| s.chain.best().number + 1).await?;
        let net = self.net.clone();
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
        Ok(true)
    }

    /// Imports blocks a peer sent, in order, through the chain's import path.
    async fn import_synced(
        &mut self,
        peer: PeerId,
        blocks: Vec<SyncBlock>,
    ) -> Result<(), crate::Error> {
        let mut imported = 0;
        self.syncing = blocks.len() >= SYNC_BATCH as usize;
        for sb in blocks {
            let decoded = Block::decode_all_with_depth_limit(DEPTH, &mut &sb.block[..]).ok().zip(
                <Commit as DecodeLimit>::decode_all_with_depth_limit(DEPTH, &mut &sb.commit[..])
                    .ok(),
            );
            let Some((block, commit)) = decoded else {
                let _ = self.net.report_peer(peer, Misbehaviour::InvalidResponse).await;
                break;
            };
            match self.chain.with(move |s| s.import(block, commit)).await? {
                Ok(b) => {
                    imported += 1;
                    tracing::info!(target: "p2p", number = b.header.number, hash = %b.hash, %peer, "imported block from peer");
                }
                Err(crate::Error::NotNextBlock { .. }) => break,
                Err(e) => {
                    tracing::warn!(target: "p2p", %peer, error = %e, "peer sent an invalid block");
                    let _ = self.net.report_peer(peer, Misbehaviour::InvalidBlock).await;
                    break;
                }
            }
        }
        if imported > 0 {
            self.start_next_at = None;
            let actions = self.restart_engine().await?;
            self.perform(actions).await?;
        }
        self.publish_status();
        Ok(())
    }
}
