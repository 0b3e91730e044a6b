//! The driver: owns the Malachite [`State`], feeds it inputs and turns its effects into
//! [`Action`]s for the node (broadcast, timers, build or check a block, import a decided
//! block with its [`Commit`], report equivocation).
//!
//! Signing and signature checks happen inline; everything that needs the network, a clock or
//! the chain comes out as an action. The driver never blocks and does no I/O of its own: it
//! records what the engine asks to remember in the [`Wal`] it is given, and makes the log
//! durable ([`Wal::flush`]) before it hands out a message it signed and before a decision.
//!
//! Restart: [`Consensus::start_height`] for a height the log holds (after a crash, or when the
//! node starts the same height again) replays the log as Malachite's engine does:
//! `StartHeight(h, same set, is_restart = false)`, [`State::index_wal_entries`], every entry in
//! order, [`State::reset_entries_index`]. The engine re-derives the votes and proposals it made
//! before and, finding them in the index, reuses them with their recorded signatures (and stops
//! with an error if it derives something else). Entries being replayed are not appended again;
//! a message the replay signs afresh (the crash came before it was recorded) is appended and
//! flushed like any other before it goes out.

use crate::context::{self, Address, BitorchContext, Height, ValidatorSet, Value};
use crate::error::{Error, WalError};
use crate::wal::{Wal, WalEntry};
use crate::wire::{EngineMsg, Message};
use crate::Consensus;
use bitorch_primitives::{blake2_256, AccountId, Commit, CommitSignature, Hash, Pair};
use malachitebft_core_consensus::{
    process, ConsensusMsg, Effect, Input, LocallyProposedValue, MisbehaviorEvidence, Params,
    ProposedValue, Resumable, Resume, State, ThresholdParams,
};
use malachitebft_core_types as mc;
use mc::{
    CertificateError, NilOrVal, Round, SignedMessage, ThresholdParam, Validator as _,
    ValidatorSet as _, Validity, ValueOrigin, VoteType,
};
use sp_core::crypto::Pair as _;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Most inputs buffered for future heights (the engine drops the excess).
const QUEUE_CAPACITY: usize = 10_000;
/// Most inputs buffered for one future height.
const QUEUE_PER_HEIGHT: usize = 2_000;

/// Which timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeoutKind {
    /// Waiting for the proposal.
    Propose,
    /// Waiting for prevotes after seeing a quorum of mixed prevotes.
    Prevote,
    /// Waiting for precommits after seeing a quorum of mixed precommits.
    Precommit,
    /// Time to re-broadcast our last votes (liveness after message loss).
    Rebroadcast,
    /// End of the finalization window (unused: the driver finalizes at once).
    FinalizeHeight,
}

/// A timer the node must arm, identified by height, round and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timeout {
    /// Height it belongs to; a timeout of an older height is ignored.
    pub height: u64,
    /// Round it belongs to.
    pub round: u32,
    /// Which timer.
    pub kind: TimeoutKind,
    finalize_after: Duration,
}

impl Timeout {
    fn from_engine(height: u64, t: &mc::Timeout) -> Self {
        let (kind, finalize_after) = match t.kind {
            mc::TimeoutKind::Propose => (TimeoutKind::Propose, Duration::ZERO),
            mc::TimeoutKind::Prevote => (TimeoutKind::Prevote, Duration::ZERO),
            mc::TimeoutKind::Precommit => (TimeoutKind::Precommit, Duration::ZERO),
            mc::TimeoutKind::Rebroadcast => (TimeoutKind::Rebroadcast, Duration::ZERO),
            mc::TimeoutKind::FinalizeHeight(d) => (TimeoutKind::FinalizeHeight, d),
        };
        Self { height, round: t.round.as_u32().unwrap_or(0), kind, finalize_after }
    }

    fn to_engine(self) -> mc::Timeout {
        let round = Round::new(self.round);
        match self.kind {
            TimeoutKind::Propose => mc::Timeout::propose(round),
            TimeoutKind::Prevote => mc::Timeout::prevote(round),
            TimeoutKind::Precommit => mc::Timeout::precommit(round),
            TimeoutKind::Rebroadcast => mc::Timeout::rebroadcast(round),
            TimeoutKind::FinalizeHeight => mc::Timeout::finalize_height(round, self.finalize_after),
        }
    }
}

/// A decided block with the certificate that makes it final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Height.
    pub height: u64,
    /// Round in which it was decided.
    pub round: u32,
    /// The block (hash and SCALE bytes).
    pub value: Value,
    /// More than two thirds of the voting power's precommits; passes [`Commit::verify`]
    /// when voting power is one per validator (see the crate docs).
    pub commit: Commit,
}

pub use bitorch_primitives::vote::{DoubleProposal, Equivocation, SignedProposal};

/// What the driver asks the node to do. The node performs actions in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Gossip these bytes (a versioned SCALE [`Message`]) to all validators.
    Broadcast(Vec<u8>),
    /// Arm a timer; when it fires, call [`Consensus::on_timeout`].
    ScheduleTimeout {
        /// Which timer.
        timeout: Timeout,
        /// After how long.
        after: Duration,
    },
    /// Disarm a timer.
    CancelTimeout(Timeout),
    /// Disarm every timer.
    CancelAllTimeouts,
    /// We propose at this height and round: build a block and pass it to
    /// [`Consensus::propose`] within `timeout`.
    GetValue {
        /// Height.
        height: u64,
        /// Round.
        round: u32,
        /// How long consensus waits for it.
        timeout: Duration,
    },
    /// A peer proposed this block: check it (decode, parent, execution, state root) and pass
    /// the verdict to [`Consensus::value_checked`].
    CheckValue {
        /// Height.
        height: u64,
        /// The proposed block.
        value: Value,
    },
    /// The block is decided: import it with its commit, then call
    /// [`Consensus::start_height`] for the next height.
    Decided(Box<Decision>),
    /// A validator double-voted; put the evidence in a block to slash it.
    Evidence(Box<Equivocation>),
    /// A validator proposed twice at one height and round; put the evidence in a block to
    /// slash it.
    DoubleProposal(Box<DoubleProposal>),
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Genesis hash of the chain; bound into every signature.
    pub genesis: Hash,
    /// Wait for a proposal in round 0.
    pub propose_timeout: Duration,
    /// Wait for more prevotes or precommits in round 0.
    pub vote_timeout: Duration,
    /// Added to every wait per round.
    pub round_delta: Duration,
}

impl Config {
    /// Timeouts for a 1 s block time on a LAN.
    pub fn new(genesis: Hash) -> Self {
        Self {
            genesis,
            propose_timeout: Duration::from_millis(1000),
            vote_timeout: Duration::from_millis(500),
            round_delta: Duration::from_millis(250),
        }
    }

    fn timeouts(&self) -> mc::LinearTimeouts {
        mc::LinearTimeouts {
            propose: self.propose_timeout,
            propose_delta: self.round_delta,
            prevote: self.vote_timeout,
            prevote_delta: self.round_delta,
            precommit: self.vote_timeout,
            precommit_delta: self.round_delta,
            rebroadcast: self.propose_timeout + self.vote_timeout * 2,
            max_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything the effect handler may touch while the engine borrows the state.
struct Env {
    ctx: BitorchContext,
    key: Pair,
    timeouts: mc::LinearTimeouts,
    height: u64,
    actions: Vec<Action>,
    /// Proposals from others whose signature checked out during this step.
    proposals: Vec<context::Proposal>,
    /// A finalized certificate and its evidence, from this step.
    finalized: Option<(mc::CommitCertificate<BitorchContext>, MisbehaviorEvidence<BitorchContext>)>,
    /// The write-ahead log of the current height.
    wal: Box<dyn Wal>,
    /// Entries appended since the last flush.
    dirty: bool,
    /// The first failure of the log in this step: nothing signed goes out after it.
    wal_failed: Option<WalError>,
    /// While replaying, hashes of the entries being replayed: they are in the log already.
    replayed: BTreeSet<Hash>,
}

impl Env {
    /// Records an input the engine is about to apply (unless it is being replayed).
    fn append(&mut self, height: u64, input: &Input<BitorchContext>) {
        if self.wal_failed.is_some() {
            return;
        }
        let bytes = match WalEntry::from_input(input) {
            Ok(entry) => entry.to_bytes(),
            Err(e) => {
                self.wal_failed = Some(e);
                return;
            }
        };
        if !self.replayed.is_empty() && self.replayed.contains(&blake2_256(&bytes)) {
            return;
        }
        match self.wal.append(height, &bytes) {
            Ok(()) => self.dirty = true,
            Err(e) => self.wal_failed = Some(e),
        }
    }

    /// Makes the log durable; whether it is sound, i.e. whether a signed message may go out.
    fn sync(&mut self) -> bool {
        if self.wal_failed.is_some() {
            return false;
        }
        if self.dirty {
            if let Err(e) = self.wal.flush() {
                self.wal_failed = Some(e);
                return false;
            }
            self.dirty = false;
        }
        true
    }

    /// Queues a broadcast once everything recorded so far is durable.
    fn publish(&mut self, bytes: Vec<u8>) {
        if self.sync() {
            self.actions.push(Action::Broadcast(bytes));
        }
    }
}

/// What a replay saw, to settle the driver's own bookkeeping once it ends.
#[derive(Default)]
struct Replay {
    /// Peers' proposals whose signature checked out.
    seen: Vec<context::Proposal>,
    /// Verdicts on peers' values that were replayed, by round and [`value_key`].
    answered: BTreeSet<(Round, (Hash, Hash))>,
    /// Our own values (from [`Consensus::propose`]), by round.
    own_values: BTreeMap<Round, Value>,
    /// Rounds in which we had signed a proposal.
    own_proposals: BTreeSet<Round>,
    /// Timeouts that had already elapsed.
    elapsed: BTreeSet<(u32, TimeoutKind)>,
}

/// Tendermint through the Malachite core, as a [`Consensus`] engine.
pub struct MalachiteConsensus {
    state: State<BitorchContext>,
    env: Env,
    me: Address,
    /// Verdicts on values at the current height, by [`value_key`]; `None` while the node
    /// checks. Keyed by the bytes too: a faulty proposer may sign other bytes under one hash.
    checked: BTreeMap<(Hash, Hash), Option<bool>>,
    /// The proposal each pending check came with.
    pending: BTreeMap<(Hash, Hash), context::Proposal>,
    /// Values of the current height that are ours or passed the node's check, by block hash:
    /// what a decision hands to import.
    valid: BTreeMap<Hash, Value>,
    /// Whether the engine runs a height; false before the first start and after a failure of
    /// the log, until the next start.
    started: bool,
    /// Set while the log is being replayed.
    replay: Option<Replay>,
}

impl MalachiteConsensus {
    /// A driver for the validator (or observer) holding `key`, recording into `wal`, not yet
    /// started: call [`Consensus::start_height`] with the next height and its validator set
    /// (which replays the log if it holds that height).
    pub fn new(
        config: Config,
        key: Pair,
        height: u64,
        validators: ValidatorSet,
        wal: Box<dyn Wal>,
    ) -> Self {
        let ctx = BitorchContext::new(config.genesis);
        let me = Address(bitorch_primitives::keys::account_of(&key));
        let state = new_state(&ctx, &me, height, validators);
        Self {
            state,
            env: Env {
                ctx,
                key,
                timeouts: config.timeouts(),
                height,
                actions: Vec::new(),
                proposals: Vec::new(),
                finalized: None,
                wal,
                dirty: false,
                wal_failed: None,
                replayed: BTreeSet::new(),
            },
            me,
            checked: BTreeMap::new(),
            pending: BTreeMap::new(),
            valid: BTreeMap::new(),
            started: false,
            replay: None,
        }
    }

    /// Starts `height` with the log entries recorded for it (encoded [`WalEntry`]s, oldest
    /// first, as [`Wal::entries`] returns them), replaying them; with none, starts the height
    /// afresh and resets the log to it. [`Consensus::start_height`] does this with what the
    /// log holds.
    ///
    /// The entries must be what the driver's [`Wal`] holds for `height`: they are not written
    /// again. Our own votes and proposals among them come out again as broadcasts, with their
    /// recorded signatures. If an entry does not decode or the engine re-derives a message
    /// other than the one recorded, the driver starts nothing (it signs nothing at this
    /// height) and returns the error.
    pub fn start_height_with_wal(
        &mut self,
        height: u64,
        validators: ValidatorSet,
        entries: Vec<Vec<u8>>,
    ) -> Result<Vec<Action>, Error> {
        let r = if entries.is_empty() {
            self.start_fresh(height, validators)
        } else {
            self.restart(height, validators, &entries)
        };
        let actions = self.take_actions();
        r.map(|()| actions)
    }

    /// Forgets the bookkeeping of the height being left.
    fn clear_height(&mut self) {
        self.checked.clear();
        self.pending.clear();
        self.valid.clear();
        self.replay = None;
        self.started = false;
        self.env.dirty = false;
        self.env.wal_failed = None;
        self.env.replayed.clear();
        self.env.proposals.clear();
        self.env.finalized = None;
    }

    fn start_fresh(&mut self, height: u64, validators: ValidatorSet) -> Result<(), Error> {
        self.clear_height();
        // Before the engine starts: inputs buffered for this height are recorded right away.
        self.env.wal.reset(height)?;
        self.started = true;
        self.run(Input::StartHeight(
            Height(height),
            validators,
            false,
            None,
            mc::VoteExtensionPolicy::Disabled,
        ))
    }

    fn restart(
        &mut self,
        height: u64,
        validators: ValidatorSet,
        entries: &[Vec<u8>],
    ) -> Result<(), Error> {
        self.clear_height();
        // A log we cannot read in full is a log we cannot honour: start nothing.
        let inputs = entries
            .iter()
            .map(|bytes| WalEntry::from_bytes(bytes)?.into_input(height))
            .collect::<Result<Vec<_>, WalError>>()?;
        tracing::info!(target: "consensus", height, entries = inputs.len(), "replaying the write-ahead log");
        self.state = new_state(&self.env.ctx, &self.me, height, validators.clone());
        self.env.replayed = entries.iter().map(|bytes| blake2_256(bytes)).collect();
        self.replay = Some(Replay::default());
        self.started = true;
        let result = self.replay_inputs(height, validators, &inputs);
        self.state.reset_entries_index();
        self.env.replayed.clear();
        let replay = self.replay.take().unwrap_or_default();
        if let Err(e) = result {
            self.started = false;
            tracing::error!(target: "consensus", height, error = %e, "write-ahead log replay failed; not signing at this height");
            return Err(e);
        }
        self.after_replay(replay, &inputs)
    }

    fn replay_inputs(
        &mut self,
        height: u64,
        validators: ValidatorSet,
        inputs: &[Input<BitorchContext>],
    ) -> Result<(), Error> {
        self.run(Input::StartHeight(
            Height(height),
            validators,
            false,
            None,
            mc::VoteExtensionPolicy::Disabled,
        ))?;
        self.state.index_wal_entries(inputs);
        for input in inputs {
            self.note_replayed(input);
            self.run(input.clone())?;
        }
        Ok(())
    }

    /// Rebuilds the driver's own bookkeeping from a replayed entry: the verdicts on values
    /// and the blocks a decision may need (ours and peers' checked ones).
    fn note_replayed(&mut self, input: &Input<BitorchContext>) {
        let Some(replay) = self.replay.as_mut() else { return };
        match input {
            Input::ProposedValue(v, _) => {
                let key = value_key(&v.value);
                let valid = v.validity.is_valid();
                if v.proposer == self.me {
                    replay.own_values.entry(v.round).or_insert_with(|| v.value.clone());
                } else {
                    replay.answered.insert((v.round, key));
                    self.pending.remove(&key);
                }
                self.checked.insert(key, Some(valid));
                if valid {
                    self.valid.insert(v.value.hash, v.value.clone());
                }
            }
            Input::Proposal(p) if p.message.proposer == self.me => {
                replay.own_proposals.insert(p.message.round);
            }
            Input::TimeoutElapsed(t) => {
                let t = Timeout::from_engine(self.state.height().0, t);
                replay.elapsed.insert((t.round, t.kind));
            }
            _ => {}
        }
    }

    /// Settles what a replay leaves open: asks for checks of peers' blocks that had no verdict
    /// yet, drops requests and timers that the log shows were already served, and sends our
    /// own proposal of the current round again (or makes it, from the value the node gave us,
    /// if the crash came before it was signed).
    fn after_replay(
        &mut self,
        replay: Replay,
        inputs: &[Input<BitorchContext>],
    ) -> Result<(), Error> {
        let round = self.state.round();
        let own_value = replay.own_values.get(&round).cloned();
        self.env.actions.retain(|a| match a {
            Action::GetValue { round: r, .. } => Round::new(*r) == round && own_value.is_none(),
            Action::ScheduleTimeout { timeout, .. } => {
                !replay.elapsed.contains(&(timeout.round, timeout.kind))
            }
            _ => true,
        });
        // (Once the height is decided, there is nothing to propose: the node moves on.)
        let decided = self.state.decided_value().is_some();
        for input in inputs.iter().filter(|_| !decided) {
            if let Input::Proposal(p) = input {
                if p.message.proposer == self.me && p.message.round == round {
                    if let Ok(p) = crate::wire::ProposalMessage::from_engine(p) {
                        let bytes = Message::Proposal(p).to_bytes();
                        if !self.env.actions.contains(&Action::Broadcast(bytes.clone())) {
                            self.env.publish(bytes);
                        }
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        let open: Vec<_> = replay
            .seen
            .into_iter()
            .filter(|p| p.height == self.state.height())
            .filter(|p| !replay.answered.contains(&(p.round, value_key(&p.value))))
            .filter(|p| seen.insert((p.round, value_key(&p.value))))
            .collect();
        let mut queue = VecDeque::new();
        if let (Some(value), false) = (own_value, decided || replay.own_proposals.contains(&round))
        {
            queue.push_back(Input::Propose(LocallyProposedValue::new(
                self.state.height(),
                round,
                value,
            )));
        }
        self.on_proposals(open, &mut queue);
        self.check_wal()?;
        self.run_all(queue)
    }

    /// This node's account.
    pub fn account(&self) -> &AccountId {
        &self.me.0
    }

    /// The validator set of the current height.
    pub fn validators(&self) -> &ValidatorSet {
        self.state.validator_set()
    }

    /// Feeds one input and everything it leads to (value verdicts already known).
    fn run(&mut self, input: Input<BitorchContext>) -> Result<(), Error> {
        self.run_all(VecDeque::from([input]))
    }

    fn run_all(&mut self, mut queue: VecDeque<Input<BitorchContext>>) -> Result<(), Error> {
        while let Some(input) = queue.pop_front() {
            self.env.height = match &input {
                Input::StartHeight(h, ..) => h.0,
                _ => self.state.height().0,
            };
            let env = &mut self.env;
            let result: Result<(), malachitebft_core_consensus::Error<BitorchContext>> = process!(
                input: input,
                state: &mut self.state,
                metrics: &(),
                with: effect => handle(env, effect)
            );
            self.check_wal()?;
            if let Err(e) = result {
                tracing::warn!(target: "consensus", error = %e, "engine error");
                return Err(Error::Engine(e.to_string()));
            }
            let proposals = std::mem::take(&mut self.env.proposals);
            match self.replay.as_mut() {
                // Verdicts come from the log; what it lacks is settled once the replay ends.
                Some(replay) => replay.seen.extend(proposals),
                None => self.on_proposals(proposals, &mut queue),
            }
            if let Some((cert, evidence)) = self.env.finalized.take() {
                self.on_finalized(cert, evidence)?;
                self.check_wal()?;
            }
        }
        Ok(())
    }

    /// Fails, and stops the height, if the log failed. The engine may believe it voted, but
    /// nothing of it went out: going silent until the next height is safe, carrying on without
    /// a record is not.
    fn check_wal(&mut self) -> Result<(), Error> {
        let Some(e) = self.env.wal_failed.take() else { return Ok(()) };
        self.started = false;
        self.env.finalized = None;
        self.env.proposals.clear();
        tracing::error!(target: "consensus", height = self.env.height, error = %e, "write-ahead log failed; not signing at this height");
        Err(Error::Wal(e))
    }

    /// Peers' proposals whose signature checked out: feeds known verdicts, asks the node to
    /// check new blocks.
    fn on_proposals(
        &mut self,
        proposals: Vec<context::Proposal>,
        queue: &mut VecDeque<Input<BitorchContext>>,
    ) {
        for proposal in proposals {
            if proposal.height != self.state.height() {
                continue;
            }
            let key = value_key(&proposal.value);
            match self.checked.get(&key) {
                Some(Some(valid)) => {
                    let valid = *valid;
                    queue.extend(self.verdict(proposal, valid));
                }
                Some(None) => {}
                None => {
                    self.checked.insert(key, None);
                    self.env.actions.push(Action::CheckValue {
                        height: proposal.height.0,
                        value: proposal.value.clone(),
                    });
                    self.pending.insert(key, proposal);
                }
            }
        }
    }

    fn on_finalized(
        &mut self,
        cert: mc::CommitCertificate<BitorchContext>,
        evidence: MisbehaviorEvidence<BitorchContext>,
    ) -> Result<(), Error> {
        let commit = to_commit(&cert)?;
        let value = match (self.valid.get(&cert.value_id), self.state.decided_value()) {
            (Some(v), _) => v.clone(),
            (None, Some((_, v))) if v.hash == cert.value_id => v,
            _ => {
                return Err(Error::Engine(format!("decided value {:?} is unknown", cert.value_id)))
            }
        };
        for (_, pairs) in evidence.votes.iter() {
            for (a, b) in pairs {
                if let (Ok(first), Ok(second)) =
                    (crate::wire::vote_from_engine(a), crate::wire::vote_from_engine(b))
                {
                    self.env
                        .actions
                        .push(Action::Evidence(Box::new(Equivocation { first, second })));
                }
            }
        }
        for (_, pairs) in evidence.proposals.iter() {
            for (a, b) in pairs {
                if let (Some(first), Some(second)) = (proposal_evidence(a), proposal_evidence(b)) {
                    let double = DoubleProposal { first, second };
                    self.env.actions.push(Action::DoubleProposal(Box::new(double)));
                }
            }
        }
        if !self.env.sync() {
            return Ok(());
        }
        self.env.actions.push(Action::Decided(Box::new(Decision {
            height: commit.height,
            round: commit.round,
            value,
            commit,
        })));
        Ok(())
    }

    /// The engine input for a verdict on a proposal's value, if it should get one: a failed
    /// check of some bytes does not count against a hash whose valid block we already hold.
    fn verdict(
        &mut self,
        proposal: context::Proposal,
        valid: bool,
    ) -> Option<Input<BitorchContext>> {
        if valid {
            self.valid.insert(proposal.value.hash, proposal.value.clone());
        } else if self.valid.contains_key(&proposal.value.hash) {
            return None;
        }
        Some(proposed_value(proposal, valid))
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.env.actions)
    }
}

/// A fresh engine state at `height`.
fn new_state(
    ctx: &BitorchContext,
    me: &Address,
    height: u64,
    validators: ValidatorSet,
) -> State<BitorchContext> {
    let params = Params {
        address: me.clone(),
        threshold_params: ThresholdParams::default(),
        value_payload: mc::ValuePayload::ProposalAndParts,
        enabled: true,
    };
    State::new(ctx.clone(), Height(height), validators, params, QUEUE_CAPACITY, QUEUE_PER_HEIGHT)
}

/// Identifies a value by its block hash and the hash of its bytes.
fn value_key(value: &Value) -> (Hash, Hash) {
    (value.hash, bitorch_primitives::blake2_256(&value.bytes))
}

/// The node's verdict on the value of a (signature-checked) proposal, as an engine input.
fn proposed_value(proposal: context::Proposal, valid: bool) -> Input<BitorchContext> {
    Input::ProposedValue(
        ProposedValue {
            height: proposal.height,
            round: proposal.round,
            valid_round: proposal.pol_round,
            proposer: proposal.proposer,
            value: proposal.value,
            validity: Validity::from_bool(valid),
        },
        ValueOrigin::Consensus,
    )
}

impl Consensus for MalachiteConsensus {
    fn start_height(
        &mut self,
        height: u64,
        validators: ValidatorSet,
    ) -> Result<Vec<Action>, Error> {
        let entries = match self.env.wal.entries(height) {
            Ok(entries) => entries,
            Err(e) => {
                self.clear_height();
                tracing::error!(target: "consensus", height, error = %e, "cannot read the write-ahead log; not signing at this height");
                return Err(e.into());
            }
        };
        self.start_height_with_wal(height, validators, entries)
    }

    fn on_message(&mut self, bytes: &[u8]) -> Result<Vec<Action>, Error> {
        let input = match Message::from_bytes(bytes)?.into_engine()? {
            EngineMsg::Proposal(p) => Input::Proposal(p),
            EngineMsg::Vote(v) => Input::Vote(v),
            EngineMsg::Polka(c) => Input::PolkaCertificate(c),
            EngineMsg::Round(c) => Input::RoundCertificate(c),
        };
        if !self.started {
            return Ok(Vec::new());
        }
        let r = self.run(input);
        let actions = self.take_actions();
        r.map(|()| actions)
    }

    fn on_timeout(&mut self, timeout: Timeout) -> Result<Vec<Action>, Error> {
        if !self.started || timeout.height != self.state.height().0 {
            return Ok(Vec::new());
        }
        let r = self.run(Input::TimeoutElapsed(timeout.to_engine()));
        let actions = self.take_actions();
        r.map(|()| actions)
    }

    fn propose(&mut self, height: u64, round: u32, value: Value) -> Result<Vec<Action>, Error> {
        if !self.started || height != self.state.height().0 {
            return Ok(Vec::new());
        }
        self.checked.insert(value_key(&value), Some(true));
        self.valid.insert(value.hash, value.clone());
        let r = self.run(Input::Propose(LocallyProposedValue::new(
            Height(height),
            Round::new(round),
            value,
        )));
        let actions = self.take_actions();
        r.map(|()| actions)
    }

    fn value_checked(
        &mut self,
        height: u64,
        value: Value,
        valid: bool,
    ) -> Result<Vec<Action>, Error> {
        if !self.started || height != self.state.height().0 {
            return Ok(Vec::new());
        }
        // Only answers to a pending check count, and only for the very bytes asked about.
        let key = value_key(&value);
        let Some(proposal) = self.pending.remove(&key) else { return Ok(Vec::new()) };
        self.checked.insert(key, Some(valid));
        let Some(input) = self.verdict(proposal, valid) else { return Ok(Vec::new()) };
        let r = self.run(input);
        let actions = self.take_actions();
        r.map(|()| actions)
    }

    fn height(&self) -> u64 {
        self.state.height().0
    }

    fn round(&self) -> Option<u32> {
        self.state.round().as_u32()
    }
}

/// Converts a Malachite commit certificate into our [`Commit`]. The signatures carry over
/// unchanged because a block precommit is signed over [`Commit::signing_payload`].
pub fn to_commit(cert: &mc::CommitCertificate<BitorchContext>) -> Result<Commit, Error> {
    let round =
        cert.round.as_u32().ok_or(Error::CertificateWithoutRound { height: cert.height.0 })?;
    let mut signatures: Vec<CommitSignature> = cert
        .commit_signatures
        .iter()
        .map(|s| CommitSignature { validator: s.address.0.clone(), signature: s.signature })
        .collect();
    signatures.sort_by(|a, b| a.validator.cmp(&b.validator));
    Ok(Commit { height: cert.height.0, round, block_hash: cert.value_id, signatures })
}

fn handle(env: &mut Env, effect: Effect<BitorchContext>) -> Result<Resume<BitorchContext>, Error> {
    let height = env.height;
    Ok(match effect {
        Effect::CancelAllTimeouts(r) => {
            env.actions.push(Action::CancelAllTimeouts);
            r.resume_with(())
        }
        Effect::CancelTimeout(t, r) => {
            env.actions.push(Action::CancelTimeout(Timeout::from_engine(height, &t)));
            r.resume_with(())
        }
        Effect::ScheduleTimeout(t, r) => {
            let after = env.timeouts.duration_for(t);
            env.actions
                .push(Action::ScheduleTimeout { timeout: Timeout::from_engine(height, &t), after });
            r.resume_with(())
        }
        Effect::StartRound(h, round, proposer, role, r) => {
            tracing::debug!(target: "consensus", height = h.0, %round, %proposer, ?role, "round");
            // As Malachite's engine does: what led to the new round is durable before it.
            env.sync();
            r.resume_with(())
        }
        // Every publication waits for the log: a message we signed must be on disk before it
        // can reach a peer, or a restart could sign a conflicting one.
        Effect::PublishConsensusMsg(msg, r) => {
            match Message::from_consensus(&msg) {
                Ok(m) => env.publish(m.to_bytes()),
                Err(e) => tracing::warn!(target: "consensus", error = %e, "not publishing"),
            }
            r.resume_with(())
        }
        Effect::PublishLivenessMsg(msg, r) => {
            match Message::from_liveness(&msg) {
                Ok(m) => env.publish(m.to_bytes()),
                Err(e) => tracing::warn!(target: "consensus", error = %e, "not publishing"),
            }
            r.resume_with(())
        }
        Effect::RepublishVote(vote, r) => {
            match crate::wire::vote_from_engine(&vote) {
                Ok(v) => env.publish(Message::Vote(v).to_bytes()),
                Err(e) => tracing::warn!(target: "consensus", error = %e, "not republishing"),
            }
            r.resume_with(())
        }
        Effect::RepublishRoundCertificate(cert, r) => {
            match crate::wire::Certificate::from_round(&cert) {
                Ok(c) => env.publish(Message::Certificate(c).to_bytes()),
                Err(e) => tracing::warn!(target: "consensus", error = %e, "not republishing"),
            }
            r.resume_with(())
        }
        Effect::GetValue(h, round, timeout, r) => {
            env.actions.push(Action::GetValue {
                height: h.0,
                round: round.as_u32().unwrap_or(0),
                timeout: env.timeouts.duration_for(timeout),
            });
            r.resume_with(())
        }
        // Our proposals carry the whole block, and the engine re-publishes the proposal itself
        // right after asking for a restream.
        Effect::RestreamProposal(.., r) => r.resume_with(()),
        // The driver does not feed sync responses; a node that falls behind imports blocks
        // with their commits and calls `start_height`.
        Effect::CertVerifiedSyncValue(_, _, r) => r.resume_with(()),
        Effect::CertRejectedSyncValue(_, _, _, r) => r.resume_with(()),
        Effect::Decide(_, _, r) => {
            env.sync();
            r.resume_with(())
        }
        Effect::Finalize(cert, _, evidence, r) => {
            env.finalized = Some((cert, evidence));
            r.resume_with(())
        }
        Effect::SignVote(vote, r) => {
            let signature = env.key.sign(&env.ctx.vote_sign_bytes(&vote));
            r.resume_with(SignedMessage::new(vote, signature))
        }
        Effect::SignProposal(proposal, r) => {
            let signature = env.key.sign(&env.ctx.proposal_sign_bytes(&proposal));
            r.resume_with(SignedMessage::new(proposal, signature))
        }
        Effect::VerifySignature(msg, public, r) => {
            let payload = match &msg.message {
                ConsensusMsg::Vote(v) => env.ctx.vote_sign_bytes(v),
                ConsensusMsg::Proposal(p) => env.ctx.proposal_sign_bytes(p),
            };
            let valid = context::verify(&msg.signature, &payload, &public);
            if let (true, ConsensusMsg::Proposal(p)) = (valid, &msg.message) {
                if p.proposer.0 != bitorch_primitives::keys::account_of(&env.key) {
                    env.proposals.push(p.clone());
                }
            }
            r.resume_with(valid)
        }
        Effect::VerifyCommitCertificate(cert, vs, tp, r) => {
            let sigs = cert
                .commit_signatures
                .iter()
                .map(|s| (&s.address, &s.signature))
                .map(|(a, s)| (a, s, VoteType::Precommit, NilOrVal::Val(cert.value_id)));
            let result = verify_votes(&env.ctx, &vs, cert.height, cert.round, sigs, tp.quorum)
                .map_err(|e| {
                    e.into_error(|a, s| {
                        CertificateError::InvalidCommitSignature(mc::CommitSignature::new(a, s))
                    })
                });
            r.resume_with(result)
        }
        Effect::VerifyExtendedCommitCertificate(cert, vs, tp, _, r) => {
            let result = if let Some(s) =
                cert.commit_signatures.iter().find(|s| s.extension.is_some())
            {
                Err(CertificateError::UnexpectedVoteExtension(s.address.clone()))
            } else {
                let sigs = cert.commit_signatures.iter().map(|s| {
                    (&s.address, &s.signature, VoteType::Precommit, NilOrVal::Val(cert.value_id))
                });
                verify_votes(&env.ctx, &vs, cert.height, cert.round, sigs, tp.quorum).map_err(|e| {
                    e.into_error(|a, s| {
                        CertificateError::InvalidCommitSignature(mc::CommitSignature::new(a, s))
                    })
                })
            };
            r.resume_with(result)
        }
        Effect::VerifyPolkaCertificate(cert, vs, tp, r) => {
            let sigs = cert.polka_signatures.iter().map(|s| {
                (&s.address, &s.signature, VoteType::Prevote, NilOrVal::Val(cert.value_id))
            });
            let result = verify_votes(&env.ctx, &vs, cert.height, cert.round, sigs, tp.quorum)
                .map_err(|e| {
                    e.into_error(|address, signature| {
                        CertificateError::InvalidPolkaSignature(mc::PolkaSignature {
                            address,
                            signature,
                        })
                    })
                });
            r.resume_with(result)
        }
        Effect::VerifyRoundCertificate(cert, vs, tp, r) => {
            // A skip certificate needs f+1 of any votes at the round; a precommit one a
            // quorum of precommits.
            let threshold = match cert.cert_type {
                mc::RoundCertificateType::Precommit => tp.quorum,
                mc::RoundCertificateType::Skip => tp.honest,
            };
            let wrong_type = cert
                .round_signatures
                .iter()
                .find(|s| {
                    cert.cert_type == mc::RoundCertificateType::Precommit
                        && s.vote_type != VoteType::Precommit
                })
                .map(|s| s.address.clone());
            let sigs = cert
                .round_signatures
                .iter()
                .map(|s| (&s.address, &s.signature, s.vote_type, s.value_id));
            let checked = verify_votes(&env.ctx, &vs, cert.height, cert.round, sigs, threshold);
            let result = match (wrong_type, checked) {
                (Some(address), _) => Err(CertificateError::InvalidVoteType(address)),
                (None, Ok(())) => Ok(()),
                (None, Err(e)) => Err(e.into_error(|address, signature| {
                    let s = cert
                        .round_signatures
                        .iter()
                        .find(|s| s.address == address && s.signature == signature);
                    match s {
                        Some(s) => CertificateError::InvalidRoundSignature(s.clone()),
                        None => CertificateError::UnknownValidator(address),
                    }
                })),
            };
            r.resume_with(result)
        }
        Effect::WalAppend(h, input, r) => {
            env.append(h.0, &input);
            r.resume_with(())
        }
        // Vote extensions are disabled.
        Effect::ExtendVote(.., r) => r.resume_with(None),
        Effect::VerifyVoteExtension(.., r) => r.resume_with(Ok(())),
    })
}

/// Why a set of votes failed to certify something.
enum VotesError {
    Unknown(Address),
    Duplicate(Address),
    BadSignature(Address, bitorch_primitives::Signature),
    NotEnough { signed: u64, total: u64, expected: u64 },
}

impl VotesError {
    fn into_error(
        self,
        bad: impl FnOnce(Address, bitorch_primitives::Signature) -> CertificateError<BitorchContext>,
    ) -> CertificateError<BitorchContext> {
        match self {
            VotesError::Unknown(a) => CertificateError::UnknownValidator(a),
            VotesError::Duplicate(a) => CertificateError::DuplicateVote(a),
            VotesError::BadSignature(a, s) => bad(a, s),
            VotesError::NotEnough { signed, total, expected } => {
                CertificateError::NotEnoughVotingPower { signed, total, expected }
            }
        }
    }
}

/// Checks signed votes against `vs`: known signers, each once, valid signatures, and together
/// enough voting power for `threshold`.
fn verify_votes<'a>(
    ctx: &BitorchContext,
    vs: &ValidatorSet,
    height: Height,
    round: Round,
    sigs: impl Iterator<
        Item = (&'a Address, &'a bitorch_primitives::Signature, VoteType, NilOrVal<Hash>),
    >,
    threshold: ThresholdParam,
) -> Result<(), VotesError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut signed: u64 = 0;
    for (address, signature, vote_type, value) in sigs {
        let Some(validator) = vs.get_by_address(address) else {
            return Err(VotesError::Unknown(address.clone()));
        };
        if !seen.insert(address.clone()) {
            return Err(VotesError::Duplicate(address.clone()));
        }
        let vote = context::Vote { height, round, vote_type, value, validator: address.clone() };
        if !context::verify(signature, &ctx.vote_sign_bytes(&vote), validator.public_key()) {
            return Err(VotesError::BadSignature(address.clone(), *signature));
        }
        // Total power is bounded by MAX_TOTAL_VOTING_POWER, so this cannot overflow.
        signed = signed.saturating_add(validator.voting_power());
    }
    let total = vs.total_voting_power();
    if threshold.is_met(signed, total) {
        Ok(())
    } else {
        let expected = (total.saturating_mul(threshold.numerator) / threshold.denominator.max(1))
            .saturating_add(1);
        Err(VotesError::NotEnough { signed, total, expected })
    }
}

/// A signed proposal as the chain checks it in evidence (`None` for a nil round, which a
/// signed proposal never has).
fn proposal_evidence(p: &mc::SignedProposal<BitorchContext>) -> Option<SignedProposal> {
    Some(SignedProposal {
        height: p.message.height.0,
        round: p.message.round.as_u32()?,
        pol_round: p.message.pol_round.as_u32(),
        block: p.message.value.hash,
        bytes_hash: blake2_256(&p.message.value.bytes),
        proposer: p.message.proposer.0.clone(),
        signature: p.signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_primitives::keys::pair_from_suri;
    use mc::Context as _;

    fn keys(n: usize) -> Vec<Pair> {
        ["//Alice", "//Bob", "//Charlie", "//Dave"][..n]
            .iter()
            .map(|s| pair_from_suri(s).unwrap())
            .collect()
    }

    /// A certificate built the way the engine builds it at Decide, from signed precommits.
    fn certificate(
        ctx: &BitorchContext,
        signers: &[Pair],
        block: Hash,
    ) -> mc::CommitCertificate<BitorchContext> {
        let votes = signers
            .iter()
            .map(|k| {
                let vote = ctx.new_precommit(
                    Height(9),
                    Round::new(2),
                    NilOrVal::Val(block),
                    Address(bitorch_primitives::keys::account_of(k)),
                );
                let signature = k.sign(&ctx.vote_sign_bytes(&vote));
                SignedMessage::new(vote, signature)
            })
            .collect();
        mc::CommitCertificate::new(Height(9), Round::new(2), block, votes)
    }

    #[test]
    fn engine_certificate_is_a_valid_commit() {
        let genesis = Hash::repeat_byte(3);
        let ctx = BitorchContext::new(genesis);
        let keys = keys(4);
        let set =
            ValidatorSet::equal(keys.iter().map(bitorch_primitives::keys::account_of)).unwrap();
        let block = Hash::repeat_byte(8);

        let cert = certificate(&ctx, &keys[..3], block);
        let sigs = cert
            .commit_signatures
            .iter()
            .map(|s| (&s.address, &s.signature, VoteType::Precommit, NilOrVal::Val(block)));
        assert!(verify_votes(
            &ctx,
            &set,
            Height(9),
            Round::new(2),
            sigs,
            ThresholdParam::TWO_F_PLUS_ONE
        )
        .is_ok());
        let commit = to_commit(&cert).unwrap();
        assert_eq!((commit.height, commit.round, commit.block_hash), (9, 2, block));
        commit.verify(&genesis, &set.powers()).unwrap();
        // Another chain, or too few signers, is rejected by import.
        assert!(commit.verify(&Hash::repeat_byte(4), &set.powers()).is_err());
        let short = to_commit(&certificate(&ctx, &keys[..2], block)).unwrap();
        assert!(matches!(
            short.verify(&genesis, &set.powers()),
            Err(bitorch_primitives::header::CommitError::NoSupermajority { .. })
        ));
    }

    #[test]
    fn vote_checks_reject_strangers_duplicates_and_weak_sets() {
        let genesis = Hash::repeat_byte(3);
        let ctx = BitorchContext::new(genesis);
        let keys = keys(4);
        let set = ValidatorSet::equal(keys[..3].iter().map(bitorch_primitives::keys::account_of))
            .unwrap();
        let block = Hash::repeat_byte(8);
        let check = |cert: &mc::CommitCertificate<BitorchContext>| {
            let sigs = cert
                .commit_signatures
                .iter()
                .map(|s| (&s.address, &s.signature, VoteType::Precommit, NilOrVal::Val(block)));
            verify_votes(&ctx, &set, Height(9), Round::new(2), sigs, ThresholdParam::TWO_F_PLUS_ONE)
        };
        // Dave is not in the set.
        assert!(matches!(check(&certificate(&ctx, &keys, block)), Err(VotesError::Unknown(_))));
        let mut dup = certificate(&ctx, &keys[..2], block);
        dup.commit_signatures.push(dup.commit_signatures[0].clone());
        assert!(matches!(check(&dup), Err(VotesError::Duplicate(_))));
        let mut bad = certificate(&ctx, &keys[..3], block);
        bad.commit_signatures[1].signature = bad.commit_signatures[0].signature;
        assert!(matches!(check(&bad), Err(VotesError::BadSignature(..))));
        assert!(matches!(
            check(&certificate(&ctx, &keys[..2], block)),
            Err(VotesError::NotEnough { signed: 2, total: 3, .. })
        ));
    }
}
