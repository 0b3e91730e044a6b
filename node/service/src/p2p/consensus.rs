//! Consensus driving: the Tendermint engine (when this node validates), its timers and
//! write-ahead log, and the actions it asks for — gossip a message, build or check a block,
//! import a decided block, report equivocation — carried out against the chain service and
//! the network.
//!
//! A validator's engine records into the write-ahead log at the path in [`super::Options::wal`]
//! ([`crate::wal::FileWal`]), opened when the engine is created; starting the engine at the
//! height the log records replays it, so a restarted validator repeats its votes instead of
//! casting new ones.

use crate::error::Error;
use crate::service::Handle;
use crate::status::NodeStatus;
use bitorch_consensus::{
    Action, Config, Consensus, MalachiteConsensus, MemoryWal, Timeout, ValidatorSet, Value, Wal,
};
use bitorch_network::{GossipId, Handle as NetHandle, Misbehaviour, PeerId, Topic, Verdict};
use bitorch_primitives::keys;
use bitorch_runtime::{extrinsic::Block, staking, Call};
use parity_scale_codec::{DecodeLimit, Encode};
use std::collections::VecDeque;
use tokio::time::Instant;

const DEPTH: u32 = bitorch_runtime::DECODE_DEPTH_LIMIT;

/// Pending engine timers, in no order.
#[derive(Debug)]
pub(super) struct Timers<T>(Vec<(Instant, T)>);

impl<T: PartialEq> Timers<T> {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn schedule(&mut self, at: Instant, timeout: T) {
        self.0.push((at, timeout));
    }

    fn cancel(&mut self, timeout: &T) {
        self.0.retain(|x| &x.1 != timeout);
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// When the next one is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().map(|t| t.0).min()
    }

    /// Takes those due at `now`, in the order they were scheduled.
    fn take_due(&mut self, now: Instant) -> Vec<T> {
        let (due, rest): (Vec<_>, Vec<_>) = self.0.drain(..).partition(|t| t.0 <= now);
        self.0 = rest;
        due.into_iter().map(|(_, t)| t).collect()
    }
}

/// The consensus driver's state.
pub(super) struct Driver {
    chain: Handle,
    net: NetHandle,
    config: super::Options,
    engine: Option<MalachiteConsensus>,
    timers: Timers<Timeout>,
    /// The best block's number, as last seen.
    best: u64,
    /// When the next height may start (block-time pacing after a decision).
    start_next_at: Option<Instant>,
    last_start: Instant,
    /// Whether sync found the node behind (published with the status).
    syncing: bool,
}

impl Driver {
    pub(super) fn new(chain: Handle, net: NetHandle, config: super::Options) -> Self {
        if config.equivocate {
            tracing::warn!(target: "p2p", "--unsafe-equivocate: this validator double-votes on purpose and will be slashed");
        }
        Self {
            chain,
            net,
            config,
            engine: None,
            timers: Timers::new(),
            best: 0,
            start_next_at: None,
            last_start: Instant::now(),
            syncing: false,
        }
    }

    /// When the next engine timer is due.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// When the next height may start (after a decision), if one is waiting.
    pub(super) fn next_height_at(&self) -> Option<Instant> {
        self.start_next_at
    }

    /// Records whether sync finds the node behind, and publishes the status.
    pub(super) fn set_syncing(&mut self, syncing: bool) {
        self.syncing = syncing;
        self.publish_status();
    }

    /// (Re)starts consensus at the height after the best block (if this node validates it)
    /// and carries out the engine's first actions for that height.
    pub(super) async fn restart(&mut self) -> Result<(), Error> {
        self.start_next_at = None;
        let actions = self.restart_engine().await?;
        self.perform(actions).await
    }

    /// Feeds the engine the timeouts that are due.
    pub(super) async fn on_timers(&mut self) -> Result<(), Error> {
        for t in self.timers.take_due(Instant::now()) {
            if let Some(engine) = self.engine.as_mut() {
                let actions = engine.on_timeout(t).unwrap_or_else(|e| {
                    tracing::warn!(target: "p2p", error = %e, "consensus timeout failed");
                    Vec::new()
                });
                self.perform(actions).await?;
            }
        }
        Ok(())
    }

    /// A consensus message came in by gossip from `from`. Gossip is penalised on its signed
    /// author, not on the peer that relayed it: an honest relay may have forwarded another
    /// peer's garbage before validation was on (or from an older node). Each message gets a
    /// verdict: only accepted ones are forwarded to our other peers.
    pub(super) async fn on_gossip(
        &mut self,
        id: Option<GossipId>,
        from: PeerId,
        data: Vec<u8>,
    ) -> Result<(), Error> {
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
        super::give_verdict(&self.net, id, verdict).await;
        if verdict == Verdict::Reject {
            let _ = self.net.report_peer(from, Misbehaviour::UndecodableMessage).await;
        }
        if let Some(actions) = actions {
            self.perform(actions).await?;
        }
        Ok(())
    }

    async fn restart_engine(&mut self) -> Result<Vec<Action>, Error> {
        let crate::Validators { best, powers } = self.chain.validators().await?;
        self.best = best;
        let Some(key) = self.config.key.clone() else { return Ok(Vec::new()) };
        let me = keys::account_of(&key);
        if !powers.iter().any(|(a, _)| a == &me) {
            self.engine = None;
            return Ok(Vec::new());
        }
        let set = ValidatorSet::new(powers).map_err(|e| Error::Key(e.to_string()))?;
        let height = best + 1;
        let actions = match self.engine.as_mut() {
            Some(engine) => engine.start_height(height, set),
            None => {
                // Starting the height the log records replays it.
                let wal: Box<dyn Wal> = match &self.config.wal {
                    Some(path) => Box::new(crate::wal::FileWal::open(path)?),
                    None => Box::new(MemoryWal::new()),
                };
                let engine = self.engine.insert(MalachiteConsensus::new(
                    Config::new(self.config.genesis),
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

    async fn perform(&mut self, actions: Vec<Action>) -> Result<(), Error> {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let more = match action {
                Action::Broadcast(bytes) => {
                    self.broadcast(bytes).await;
                    Vec::new()
                }
                Action::ScheduleTimeout { timeout, after } => {
                    self.timers.schedule(Instant::now() + after, timeout);
                    Vec::new()
                }
                Action::CancelTimeout(t) => {
                    self.timers.cancel(&t);
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
                            Ok(block) => self.chain.import(block, d.commit.clone()).await,
                            Err(e) => {
                                Err(Error::Corrupt(format!("decided block does not decode: {e}")))
                            }
                        };
                    match imported {
                        Err(Error::Stopped) => return Err(Error::Stopped),
                        Ok(b) => {
                            tracing::info!(target: "p2p", number = b.header.number, hash = %b.hash, round = d.round, txs = b.extrinsics.len(), "finalized block")
                        }
                        Err(e) => {
                            tracing::debug!(target: "p2p", error = %e, height = d.height, "decided block not imported (sync will fetch it)")
                        }
                    }
                    // Pace blocks: the next height starts one block time after this one did.
                    self.start_next_at = Some(self.last_start + self.config.block_time);
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

    /// Gossips an engine message (and, with `--unsafe-equivocate`, a conflicting twin).
    async fn broadcast(&mut self, bytes: Vec<u8>) {
        let twin = match (&self.config.key, self.config.equivocate) {
            (Some(key), true) => {
                use bitorch_consensus::byzantine::{conflicting_proposal, conflicting_vote};
                let genesis = &self.config.genesis;
                conflicting_vote(&bytes, key, genesis)
                    .or_else(|| conflicting_proposal(&bytes, key, genesis))
            }
            _ => None,
        };
        for msg in std::iter::once(bytes).chain(twin) {
            if let Err(e) = self.net.publish(Topic::Consensus, msg).await {
                tracing::debug!(target: "p2p", error = %e, "consensus message not published");
            }
        }
    }

    /// Publishes height, round, whether we validate it, and sync state for the RPC.
    fn publish_status(&self) {
        let (height, round, validating) = match &self.engine {
            Some(e) => (e.height(), e.round(), true),
            None => (self.best + 1, None, false),
        };
        let status = NodeStatus { height, round, validating, syncing: self.syncing };
        self.config.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }

    async fn propose(&mut self, height: u64, round: u32) -> Result<Vec<Action>, Error> {
        let Some(key) = self.config.key.clone() else { return Ok(Vec::new()) };
        let Some(block) = self.chain.build_block(key, height).await? else {
            return Ok(Vec::new());
        };
        let value = Value { hash: block.header.hash(), bytes: block.encode() };
        let Some(engine) = self.engine.as_mut() else { return Ok(Vec::new()) };
        Ok(engine.propose(height, round, value).unwrap_or_default())
    }

    async fn check(&mut self, height: u64, value: Value) -> Result<Vec<Action>, Error> {
        let valid = match Block::decode_all_with_depth_limit(DEPTH, &mut &value.bytes[..]) {
            Ok(block) if block.header.hash() == value.hash && block.header.number == height => {
                self.chain.check_block(block).await?
            }
            _ => false,
        };
        let Some(engine) = self.engine.as_mut() else { return Ok(Vec::new()) };
        Ok(engine.value_checked(height, value, valid).unwrap_or_default())
    }

    /// Submits evidence of equivocation (`ReportEquivocation` or `ReportDoubleProposal`)
    /// signed with our key.
    async fn report(&mut self, call: staking::Call) -> Result<(), Error> {
        let Some(key) = self.config.key.clone() else { return Ok(()) };
        match self.chain.sign_and_submit(key, vec![Call::Staking(call)], 64).await {
            Err(Error::Stopped) => return Err(Error::Stopped),
            Ok(hash) => tracing::warn!(target: "p2p", ?hash, "reported an equivocating validator"),
            Err(e) => {
                tracing::debug!(target: "p2p", error = %e, "equivocation report not submitted")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_when_due_and_can_be_cancelled() {
        let now = Instant::now();
        let t = |round: u32| round;
        let mut timers = Timers::new();
        assert_eq!(timers.next(), None);
        timers.schedule(now + Duration::from_secs(2), t(0));
        timers.schedule(now + Duration::from_secs(1), t(1));
        timers.schedule(now + Duration::from_secs(3), t(2));
        assert_eq!(timers.next(), Some(now + Duration::from_secs(1)));
        timers.cancel(&t(0));
        assert_eq!(timers.take_due(now + Duration::from_millis(1500)), vec![t(1)]);
        assert_eq!(timers.next(), Some(now + Duration::from_secs(3)));
        assert!(timers.take_due(now).is_empty());
        timers.clear();
        assert_eq!(timers.next(), None);
    }
}
