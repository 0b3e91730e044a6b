//! Deterministic, seeded simulation of a validator network (commonware style).
//!
//! N in-process validators run [`MalachiteConsensus`] over a simulated network driven by one
//! seeded RNG and a virtual clock: random delays (so reordering), drops, crashes and restarts,
//! no sleeping and no sockets. A node that falls behind syncs decided blocks with their
//! commits from a random peer, as the node will. Over many seeds we assert:
//! - agreement: no two nodes decide different blocks at one height;
//! - validity: every decided block was proposed, and its commit passes `Commit::verify`
//!   against the validator set;
//! - liveness: with at most f faulty nodes, once the network heals every node keeps deciding;
//! - with 2 of 4 crashed, nothing new is decided; restarted, deciding resumes;
//! - crash safety: every node keeps a write-ahead log on a simulated disk (a [`MemoryWal`]
//!   that loses unflushed entries in a crash). Nodes crash between events and in the middle
//!   of performing a step's actions, and restart from their log. Every vote or proposal a node
//!   publishes is durable in its log when it goes out, no honest node ever signs two
//!   different votes of one kind at one height and round, and no evidence is ever raised
//!   against one. A node restarted right after a vote sends that very vote (same signature)
//!   again. Nodes that lose their log in a crash do sign conflicting votes, which shows the
//!   checks can fail.
//!
//! `BITORCH_SIM_SEEDS=<n>` runs n seeds per test instead of the default.

use bitorch_consensus::wire::{Message, SignedVote, VoteKind};
use bitorch_consensus::{
    Action, Config, Consensus, Decision, DoubleProposal, Equivocation, MalachiteConsensus,
    MemoryWal, Timeout, ValidatorSet, Value, WalEntry,
};
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::AccountId;
use bitorch_primitives::{blake2_256, Hash, Pair};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sp_core::crypto::Pair as _;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Virtual milliseconds.
type Ms = u64;

const SYNC_EVERY: Ms = 1_000;
/// How long a proposer takes to build a block.
const BUILD_MS: Ms = 5;

#[derive(Clone, Copy, Debug)]
struct Net {
    drop: f64,
    min_delay: Ms,
    max_delay: Ms,
}

const HEALED: Net = Net { drop: 0.0, min_delay: 1, max_delay: 50 };

enum Event {
    Deliver {
        to: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        timeout: Timeout,
        generation: u64,
    },
    SyncTick {
        node: usize,
    },
    SyncReply {
        to: usize,
        decision: Box<Decision>,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Propose {
        node: usize,
        height: u64,
        round: u32,
    },
    /// Splits the network: messages between different sides are lost.
    Partition {
        side: Vec<u8>,
    },
    /// Ends a partition.
    Unpartition,
}

struct Node {
    key: Pair,
    account: AccountId,
    engine: Option<MalachiteConsensus>,
    /// The node's write-ahead log as its disk holds it; survives crashes (minus what was not
    /// flushed).
    disk: MemoryWal,
    /// Loses its write-ahead log in every crash, as a node without one would.
    amnesiac: bool,
    timers: BTreeMap<Timeout, u64>,
    /// Blocks this node imported, by height: what survives a crash.
    chain: BTreeMap<u64, Decision>,
    /// Signs a second, conflicting precommit for every block precommit it sends.
    equivocates: bool,
    /// Proposes blocks that fail the node's check.
    proposes_invalid: bool,
    /// Signs a second proposal, for another value, for every proposal it sends.
    double_proposes: bool,
}

impl Node {
    fn next_height(&self) -> u64 {
        self.chain.keys().next_back().map_or(1, |h| h + 1)
    }

    fn new_engine(
        &self,
        config: &Config,
        height: u64,
        validators: &ValidatorSet,
    ) -> MalachiteConsensus {
        MalachiteConsensus::new(
            config.clone(),
            self.key.clone(),
            height,
            validators.clone(),
            Box::new(self.disk.clone()),
        )
    }
}

/// Crash a node right after it broadcasts its first vote of a kind, then restart it.
struct CrashOnVote {
    node: usize,
    kind: VoteKind,
    down_ms: Ms,
    /// The vote it sent before the crash (wire bytes).
    sent: Option<Vec<u8>>,
    /// Whether the restarted node sent exactly those bytes again.
    resent: bool,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now: Ms,
    seq: u64,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    validators: ValidatorSet,
    config: Config,
    net: Net,
    /// Side of each node while the network is partitioned.
    side: Option<Vec<u8>>,
    generation: u64,
    proposed: BTreeSet<Hash>,
    decided: BTreeMap<u64, Hash>,
    evidence: Vec<Equivocation>,
    double_proposals: Vec<DoubleProposal>,
    last_new_height_at: Ms,
    stats: Stats,
    /// The latest messages that were broadcast, for tests that replay or corrupt them.
    recent: VecDeque<Vec<u8>>,
    /// Every vote each node published, by (voter, height, round, is a precommit): the value
    /// voted for.
    votes: BTreeMap<(AccountId, u64, u32, bool), Option<Hash>>,
    /// Chance that a node crashes while it performs a step's actions (after the engine
    /// returned them, before all of them were performed).
    mid_step_crash: f64,
    crash_on_vote: Option<CrashOnVote>,
}

/// What a run went through, to show that the seeds exercise the protocol.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    heights: u64,
    max_round: u32,
    dropped: u64,
    delivered: u64,
    crashes: u64,
    synced: u64,
    evidence: u64,
    partitions: u64,
    /// Votes that conflict with one the same node published before (amnesiac nodes only).
    conflicts: u64,
    /// Restarts that replayed a non-empty write-ahead log.
    replays: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Self) {
        self.heights += o.heights;
        self.max_round = self.max_round.max(o.max_round);
        self.dropped += o.dropped;
        self.delivered += o.delivered;
        self.crashes += o.crashes;
        self.synced += o.synced;
        self.evidence += o.evidence;
        self.partitions += o.partitions;
        self.conflicts += o.conflicts;
        self.replays += o.replays;
    }
}

impl Sim {
    fn new(seed: u64, n: usize, net: Net) -> Self {
        let names = ["Alice", "Bob", "Charlie", "Dave", "Eve", "Ferdie", "George", "Harry"];
        let keys: Vec<Pair> =
            names[..n].iter().map(|s| pair_from_suri(&format!("//{s}")).unwrap()).collect();
        let validators = ValidatorSet::equal(keys.iter().map(account_of)).unwrap();
        let genesis = blake2_256(b"simulated genesis");
        let mut config = Config::new(genesis);
        config.propose_timeout = Duration::from_millis(1_000);
        config.vote_timeout = Duration::from_millis(500);
        config.round_delta = Duration::from_millis(250);
        let nodes = keys
            .into_iter()
            .map(|key| {
                let mut node = Node {
                    account: account_of(&key),
                    key,
                    engine: None,
                    disk: MemoryWal::new(),
                    amnesiac: false,
                    timers: BTreeMap::new(),
                    chain: BTreeMap::new(),
                    equivocates: false,
                    proposes_invalid: false,
                    double_proposes: false,
                };
                node.engine = Some(node.new_engine(&config, 1, &validators));
                node
            })
            .collect();
        let mut sim = Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            validators,
            config,
            net,
            side: None,
            generation: 0,
            proposed: BTreeSet::new(),
            decided: BTreeMap::new(),
            evidence: Vec::new(),
            double_proposals: Vec::new(),
            last_new_height_at: 0,
            stats: Stats::default(),
            recent: VecDeque::new(),
            votes: BTreeMap::new(),
            mid_step_crash: 0.0,
            crash_on_vote: None,
        };
        for i in 0..n {
            let offset = sim.rng.gen_range(0..SYNC_EVERY);
            sim.schedule(offset, Event::SyncTick { node: i });
        }
        sim
    }

    fn start(&mut self) {
        for i in 0..self.nodes.len() {
            let vs = self.validators.clone();
            let r = self.nodes[i].engine.as_mut().map(|e| e.start_height(1, vs));
            if let Some(r) = r {
                self.apply(i, r);
            }
        }
    }

    fn schedule(&mut self, after: Ms, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn delay(&mut self) -> Option<Ms> {
        if self.rng.gen_bool(self.net.drop) {
            self.stats.dropped += 1;
            return None;
        }
        Some(self.rng.gen_range(self.net.min_delay..=self.net.max_delay))
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if self.side.as_ref().is_some_and(|side| side[from] != side[to]) {
            self.stats.dropped += 1;
            return;
        }
        if let Some(d) = self.delay() {
            self.schedule(d, Event::Deliver { to, bytes });
        }
    }

    /// Checks what a node publishes: its own votes and proposals are durable in its log, and it
    /// never votes two ways at one height, round and kind.
    fn check_published(&mut self, from: usize, bytes: &[u8]) {
        let seed = self.seed;
        let node = &self.nodes[from];
        let entry = match Message::from_bytes(bytes) {
            Ok(Message::Vote(v)) if v.validator == node.account => WalEntry::Vote(v),
            Ok(Message::Proposal(p)) if p.proposer == node.account => WalEntry::Proposal(p),
            _ => return,
        };
        let height = match &entry {
            WalEntry::Vote(v) => v.height,
            WalEntry::Proposal(p) => p.height,
            _ => unreachable!(),
        };
        let (logged, durable) = node.disk.durable();
        assert!(
            logged == height && durable.contains(&entry.to_bytes()),
            "seed {seed}: node {from} published {entry:?} before it was durable in its log (of height {logged})"
        );
        let WalEntry::Vote(v) = entry else { return };
        let key = (v.validator.clone(), v.height, v.round, v.kind == VoteKind::Precommit);
        match self.votes.get(&key) {
            Some(value) if *value != v.value => {
                assert!(
                    node.amnesiac,
                    "seed {seed}: node {from} signed conflicting votes: {value:?} then {v:?}"
                );
                self.stats.conflicts += 1;
            }
            Some(_) => {}
            None => {
                self.votes.insert(key, v.value);
            }
        }
    }

    fn broadcast(&mut self, from: usize, bytes: Vec<u8>) {
        self.check_published(from, &bytes);
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(bytes.clone());
        let mut messages = vec![bytes];
        if self.nodes[from].equivocates {
            if let Ok(Message::Vote(v)) = Message::from_bytes(&messages[0]) {
                if v.kind == VoteKind::Precommit && v.value.is_some() {
                    let mut other =
                        SignedVote { value: Some(Hash::from(self.rng.gen::<[u8; 32]>())), ..v };
                    other.signature =
                        self.nodes[from].key.sign(&other.sign_bytes(&self.config.genesis));
                    // The conflicting vote goes first, so peers see both before deciding.
                    messages.insert(0, Message::Vote(other).to_bytes());
                }
            }
        }
        if self.nodes[from].double_proposes {
            let twin = bitorch_consensus::byzantine::conflicting_proposal(
                &messages[0],
                &self.nodes[from].key,
                &self.config.genesis,
            );
            // The conflicting proposal goes second: peers take the real one and then see that
            // its proposer signed another.
            messages.extend(twin);
        }
        for bytes in messages {
            for to in 0..self.nodes.len() {
                if to != from {
                    self.send(from, to, bytes.clone());
                }
            }
        }
    }

    fn make_value(&mut self, node: usize, height: u64, round: u32) -> Value {
        let nonce: u64 = self.rng.gen();
        let bytes = format!("block h={height} r={round} by={node} nonce={nonce}").into_bytes();
        if self.nodes[node].proposes_invalid {
            // A block whose hash does not match its contents: the check rejects it.
            return Value { hash: blake2_256(b"not these bytes"), bytes };
        }
        let value = Value { hash: blake2_256(&bytes), bytes };
        self.proposed.insert(value.hash);
        value
    }

    /// The node crashes: its engine and timers are gone, and so is whatever its log had not
    /// flushed (all of it, for an amnesiac node). It restarts after `down` ms.
    fn crash(&mut self, node: usize, down: Option<Ms>) {
        let n = &mut self.nodes[node];
        self.stats.crashes += u64::from(n.engine.is_some());
        n.engine = None;
        n.timers.clear();
        n.disk.crash();
        if n.amnesiac {
            n.disk.wipe();
        }
        if let Some(down) = down {
            self.schedule(down, Event::Restart { node });
        }
    }

    /// Whether this broadcast is the vote after which the test crashes the node.
    fn crash_now(&mut self, i: usize, bytes: &[u8]) -> bool {
        let Some(hook) = self.crash_on_vote.as_mut() else { return false };
        if hook.node != i || hook.sent.is_some() {
            return false;
        }
        match Message::from_bytes(bytes) {
            Ok(Message::Vote(v)) if v.kind == hook.kind && v.validator == self.nodes[i].account => {
                hook.sent = Some(bytes.to_vec());
                true
            }
            _ => false,
        }
    }

    fn apply(&mut self, i: usize, result: Result<Vec<Action>, bitorch_consensus::Error>) {
        let seed = self.seed;
        let mut work: VecDeque<Action> =
            result.unwrap_or_else(|e| panic!("seed {seed}: node {i}: {e}")).into();
        // Sometimes the node dies after performing only some of the step's actions.
        let mut crash_after = (self.mid_step_crash > 0.0 && self.rng.gen_bool(self.mid_step_crash))
            .then(|| self.rng.gen_range(0..=work.len()));
        loop {
            if crash_after == Some(0) {
                let down = self.rng.gen_range(50..3_000);
                self.crash(i, Some(down));
                return;
            }
            crash_after = crash_after.map(|n| n - 1);
            let Some(action) = work.pop_front() else { return };
            let more = match action {
                Action::Broadcast(bytes) => {
                    let crash = self.crash_now(i, &bytes);
                    self.broadcast(i, bytes);
                    if crash {
                        let down = self.crash_on_vote.as_ref().map_or(0, |h| h.down_ms);
                        self.crash(i, Some(down));
                        return;
                    }
                    None
                }
                Action::ScheduleTimeout { timeout, after } => {
                    self.generation += 1;
                    let generation = self.generation;
                    self.nodes[i].timers.insert(timeout, generation);
                    self.schedule(
                        after.as_millis() as Ms,
                        Event::Timer { node: i, timeout, generation },
                    );
                    None
                }
                Action::CancelTimeout(t) => {
                    self.nodes[i].timers.remove(&t);
                    None
                }
                Action::CancelAllTimeouts => {
                    self.nodes[i].timers.clear();
                    None
                }
                Action::GetValue { height, round, .. } => {
                    // Building a block takes a little time.
                    self.schedule(BUILD_MS, Event::Propose { node: i, height, round });
                    None
                }
                Action::CheckValue { height, value } => {
                    let valid = blake2_256(&value.bytes) == value.hash;
                    self.nodes[i].engine.as_mut().map(|e| e.value_checked(height, value, valid))
                }
                Action::Decided(d) => self.import(i, *d),
                Action::Evidence(e) => {
                    assert!(e.verify(&self.config.genesis), "seed {seed}: bad evidence {e:?}");
                    self.evidence.push(*e);
                    self.stats.evidence += 1;
                    None
                }
                Action::DoubleProposal(e) => {
                    assert!(e.verify(&self.config.genesis), "seed {seed}: bad evidence {e:?}");
                    self.double_proposals.push(*e);
                    None
                }
            };
            if let Some(r) = more {
                work.extend(r.unwrap_or_else(|e| panic!("seed {seed}: node {i}: {e}")));
            }
        }
    }

    /// Checks and imports a decided block (from consensus or sync), then starts the next
    /// height. Agreement and validity are asserted here.
    fn import(
        &mut self,
        i: usize,
        d: Decision,
    ) -> Option<Result<Vec<Action>, bitorch_consensus::Error>> {
        let seed = self.seed;
        let h = d.height;
        assert_eq!(h, self.nodes[i].next_height(), "seed {seed}: node {i} skipped a height");
        assert_eq!(d.commit.height, h);
        assert_eq!(d.commit.block_hash, d.value.hash, "seed {seed}: commit for another block");
        assert_eq!(blake2_256(&d.value.bytes), d.value.hash, "seed {seed}: value bytes mismatch");
        d.commit
            .verify(&self.config.genesis, &self.validators.powers())
            .unwrap_or_else(|e| panic!("seed {seed}: node {i}: commit at {h} rejected: {e}"));
        assert!(self.proposed.contains(&d.value.hash), "seed {seed}: decided an unproposed value");
        match self.decided.get(&h) {
            Some(other) => assert_eq!(
                *other, d.value.hash,
                "seed {seed}: AGREEMENT VIOLATED at height {h} (node {i})"
            ),
            None => {
                self.stats.heights += 1;
                self.stats.max_round = self.stats.max_round.max(d.round);
                self.decided.insert(h, d.value.hash);
                self.last_new_height_at = self.now;
            }
        }
        self.nodes[i].chain.insert(h, d);
        let vs = self.validators.clone();
        self.nodes[i].engine.as_mut().map(|e| e.start_height(h + 1, vs))
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, seq))) = self.queue.pop() else { return false };
        self.now = at;
        let Some(event) = self.events.remove(&seq) else { return true };
        match event {
            Event::Deliver { to, bytes } => {
                self.stats.delivered += 1;
                let r = self.nodes[to].engine.as_mut().map(|e| e.on_message(&bytes));
                if let Some(r) = r {
                    self.apply(to, r);
                }
            }
            Event::Timer { node, timeout, generation } => {
                if self.nodes[node].timers.get(&timeout) == Some(&generation) {
                    self.nodes[node].timers.remove(&timeout);
                    let r = self.nodes[node].engine.as_mut().map(|e| e.on_timeout(timeout));
                    if let Some(r) = r {
                        self.apply(node, r);
                    }
                }
            }
            Event::SyncTick { node } => {
                self.schedule(SYNC_EVERY, Event::SyncTick { node });
                if self.nodes[node].engine.is_some() {
                    let peer = self.rng.gen_range(0..self.nodes.len());
                    let want = self.nodes[node].next_height();
                    let cut = self.side.as_ref().is_some_and(|side| side[peer] != side[node]);
                    let found = (self.nodes[peer].engine.is_some() && peer != node && !cut)
                        .then(|| self.nodes[peer].chain.get(&want).cloned())
                        .flatten();
                    // Request and response both cross the network.
                    if let (Some(decision), Some(a), Some(b)) = (found, self.delay(), self.delay())
                    {
                        self.schedule(
                            a + b,
                            Event::SyncReply { to: node, decision: Box::new(decision) },
                        );
                    }
                }
            }
            Event::SyncReply { to, decision } => {
                let fresh = self.nodes[to].engine.is_some()
                    && decision.height == self.nodes[to].next_height();
                if fresh {
                    self.stats.synced += 1;
                    if let Some(r) = self.import(to, *decision) {
                        self.apply(to, r);
                    }
                }
            }
            Event::Propose { node, height, round } => {
                if self.nodes[node].engine.is_some() {
                    let value = self.make_value(node, height, round);
                    let r =
                        self.nodes[node].engine.as_mut().map(|e| e.propose(height, round, value));
                    if let Some(r) = r {
                        self.apply(node, r);
                    }
                }
            }
            Event::Partition { side } => {
                self.stats.partitions += 1;
                self.side = Some(side);
            }
            Event::Unpartition => self.side = None,
            Event::Crash { node } => self.crash(node, None),
            Event::Restart { node } => {
                if self.nodes[node].engine.is_none() {
                    let n = &self.nodes[node];
                    let h = n.next_height();
                    let (logged, entries) = n.disk.durable();
                    self.stats.replays += u64::from(logged == h && !entries.is_empty());
                    // Starting a height its log holds replays the log.
                    let mut e = n.new_engine(&self.config, h, &self.validators);
                    let r = e.start_height(h, self.validators.clone());
                    self.nodes[node].engine = Some(e);
                    if let (Some(hook), Ok(actions)) = (self.crash_on_vote.as_mut(), &r) {
                        if hook.node == node && !hook.resent {
                            hook.resent = hook.sent.as_ref().is_some_and(|sent| {
                                actions.contains(&Action::Broadcast(sent.clone()))
                            });
                        }
                    }
                    self.apply(node, r);
                }
            }
        }
        true
    }

    /// Runs until virtual time `until`, or earlier once `done` holds.
    fn run_until(&mut self, until: Ms, done: impl Fn(&Sim) -> bool) -> bool {
        while self.queue.peek().is_some_and(|Reverse((at, _))| *at <= until) {
            self.step();
            if done(self) {
                return true;
            }
        }
        self.now = until;
        done(self)
    }

    fn min_height(&self) -> u64 {
        self.nodes.iter().map(|n| n.next_height() - 1).min().unwrap_or(0)
    }

    fn max_height(&self) -> u64 {
        self.decided.keys().next_back().copied().unwrap_or(0)
    }
}

fn seeds(default: u64) -> u64 {
    std::env::var("BITORCH_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Which crashes a chaos run has, besides drops, delays and partitions.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    /// Any number of nodes may crash and restart (from their logs), not only up to f.
    crash_any: bool,
    /// Chance that a node crashes in the middle of performing a step's actions.
    mid_step: f64,
    /// The crashing nodes (then at most f) lose their logs.
    amnesia: bool,
}

/// Chaos (drops, long delays, crashes of up to f nodes) for a while, then a healed network
/// with everyone back: every node must decide `extra` more heights.
fn chaos_then_heal(seed: u64, n: usize, chaos_ms: Ms, extra: u64) -> Stats {
    chaos_with(seed, n, chaos_ms, extra, Faults::default())
}

fn chaos_with(seed: u64, n: usize, chaos_ms: Ms, extra: u64, faults: Faults) -> Stats {
    let f = (n - 1) / 3;
    let mut sim = Sim::new(seed, n, HEALED);
    // Each seed draws its own weather: loss rate, delay spread (hence reordering).
    sim.net = Net {
        drop: sim.rng.gen_range(0.0..0.35),
        min_delay: 1,
        max_delay: sim.rng.gen_range(20..800),
    };
    // Sometimes a partition, any split, for part of the chaos.
    if sim.rng.gen_bool(0.5) {
        let side: Vec<u8> = (0..n).map(|_| sim.rng.gen_range(0..2)).collect();
        let at = sim.rng.gen_range(0..chaos_ms);
        let until = sim.rng.gen_range(at..=chaos_ms);
        sim.schedule(at, Event::Partition { side });
        sim.schedule(until, Event::Unpartition);
    }
    // Nodes crash and restart from their write-ahead logs: honest, so any number of them may
    // (up to f unless told otherwise). Nodes that lose their logs may sign conflicting votes:
    // those count as the faulty ones.
    let crashing = sim.rng.gen_range(0..=if faults.crash_any && !faults.amnesia { n } else { f });
    for node in 0..crashing {
        sim.nodes[node].amnesiac = faults.amnesia;
        let mut t = sim.rng.gen_range(0..chaos_ms / 2);
        while t < chaos_ms {
            sim.schedule(t, Event::Crash { node });
            t += sim.rng.gen_range(300..3_000);
            sim.schedule(t.min(chaos_ms), Event::Restart { node });
            t += sim.rng.gen_range(500..5_000);
        }
    }
    sim.mid_step_crash = faults.mid_step;
    sim.start();
    sim.run_until(chaos_ms, |_| false);
    sim.net = HEALED;
    sim.side = None;
    sim.mid_step_crash = 0.0;
    for node in 0..n {
        sim.schedule(0, Event::Restart { node });
    }
    let target = sim.max_height() + extra;
    let deadline = chaos_ms + 60_000;
    let live = sim.run_until(deadline, |s| s.min_height() >= target);
    assert!(
        live,
        "seed {seed}: no liveness after healing: heights {:?}, target {target}",
        sim.nodes.iter().map(|n| n.next_height() - 1).collect::<Vec<_>>()
    );
    if !faults.amnesia {
        assert!(sim.evidence.is_empty(), "seed {seed}: honest nodes accused: {:?}", sim.evidence);
    }
    sim.stats
}

#[test]
fn sim_four_validators_agree_and_stay_live() {
    let mut total = Stats::default();
    for seed in 0..seeds(200) {
        total += chaos_then_heal(seed, 4, 10_000, 3);
    }
    eprintln!("4 validators: {total:?}");
    assert!(total.crashes > 0 && total.synced > 0 && total.max_round > 0 && total.partitions > 0);
}

#[test]
fn sim_seven_validators_agree_and_stay_live() {
    let mut total = Stats::default();
    for seed in 0..seeds(50) {
        total += chaos_then_heal(1_000 + seed, 7, 8_000, 3);
    }
    eprintln!("7 validators: {total:?}");
    assert!(total.crashes > 0 && total.synced > 0 && total.max_round > 0 && total.partitions > 0);
}

#[test]
fn sim_two_of_four_crashed_makes_no_progress_then_resumes() {
    for seed in 0..seeds(20) {
        let mut sim = Sim::new(2_000 + seed, 4, HEALED);
        sim.start();
        let crash_at = sim.rng.gen_range(1_000..4_000);
        let (a, b) = (sim.rng.gen_range(0..4), sim.rng.gen_range(0..4));
        let b = if a == b { (a + 1) % 4 } else { b };
        sim.schedule(crash_at, Event::Crash { node: a });
        sim.schedule(crash_at, Event::Crash { node: b });
        // Votes already in flight may still complete the height being decided.
        sim.run_until(crash_at + 2 * HEALED.max_delay + 10, |_| false);
        let stalled = sim.max_height();
        sim.run_until(crash_at + 30_000, |_| false);
        assert_eq!(sim.max_height(), stalled, "seed {seed}: progress with 2 of 4 crashed");
        assert!(
            sim.now - sim.last_new_height_at >= 29_000,
            "seed {seed}: a new height was decided while 2 of 4 were down"
        );
        sim.schedule(0, Event::Restart { node: a });
        sim.schedule(0, Event::Restart { node: b });
        let now = sim.now;
        let live = sim.run_until(now + 60_000, |s| s.min_height() >= stalled + 3);
        assert!(live, "seed {seed}: no progress after restarting the crashed validators");
    }
}

#[test]
fn sim_equivocation_becomes_evidence() {
    for seed in 0..seeds(5) {
        let mut sim = Sim::new(3_000 + seed, 4, HEALED);
        sim.nodes[0].equivocates = true;
        let offender = account_of(&sim.nodes[0].key);
        sim.start();
        let found = sim.run_until(30_000, |s| !s.evidence.is_empty() && s.min_height() >= 3);
        assert!(found, "seed {seed}: no evidence, or no progress with one equivocator");
        let genesis = sim.config.genesis;
        for e in &sim.evidence {
            assert_eq!(e.offender(), &offender);
            assert!(e.verify(&genesis));
            assert_eq!(e.first.kind, VoteKind::Precommit);
            // Evidence is only worth its signatures: altering it breaks it.
            let mut forged = e.clone();
            forged.second.round += 1;
            assert!(!forged.verify(&genesis));
        }
    }
}

#[test]
fn sim_double_proposal_becomes_evidence() {
    for seed in 0..seeds(5) {
        let mut sim = Sim::new(3_500 + seed, 4, HEALED);
        sim.nodes[0].double_proposes = true;
        let offender = account_of(&sim.nodes[0].key);
        sim.start();
        let found =
            sim.run_until(30_000, |s| !s.double_proposals.is_empty() && s.min_height() >= 3);
        assert!(found, "seed {seed}: no evidence, or no progress with one double proposer");
        let genesis = sim.config.genesis;
        for e in &sim.double_proposals {
            assert_eq!(e.offender(), &offender);
            assert!(e.verify(&genesis));
            assert_eq!((e.first.height, e.first.round), (e.second.height, e.second.round));
            let mut forged = e.clone();
            forged.second.block = forged.first.block;
            forged.second.bytes_hash = Hash::repeat_byte(1);
            assert!(!forged.verify(&genesis), "altered evidence still verifies");
        }
        assert!(sim.evidence.is_empty(), "seed {seed}: a double proposer is not a double voter");
    }
}

#[test]
fn single_validator_decides_alone() {
    let mut sim = Sim::new(4_000, 1, HEALED);
    sim.start();
    assert!(sim.run_until(10_000, |s| s.min_height() >= 5));
    let commit = &sim.nodes[0].chain[&5].commit;
    assert_eq!(commit.signatures.len(), 1);
}

#[test]
fn sim_garbage_from_peers_is_rejected_and_harmless() {
    let mut sim = Sim::new(5_000, 4, HEALED);
    sim.start();
    assert!(sim.run_until(10_000, |s| s.min_height() >= 2));
    let genesis = sim.config.genesis;
    let eve = pair_from_suri("//Eve").unwrap();
    let (mut rejected, mut accepted) = (0u32, 0u32);
    for round in 0..50 {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        // Random bytes, with and without a valid version byte.
        let len = sim.rng.gen_range(0..300);
        let mut junk: Vec<u8> = (0..len).map(|_| sim.rng.gen()).collect();
        inputs.push(junk.clone());
        if let Some(b) = junk.first_mut() {
            *b = bitorch_consensus::wire::WIRE_VERSION;
        }
        inputs.push(junk);
        // Real messages, truncated or with one bit flipped (signatures no longer verify).
        let real: Vec<Vec<u8>> = sim.recent.iter().cloned().collect();
        for bytes in real.iter().take(8) {
            let cut = sim.rng.gen_range(0..bytes.len());
            inputs.push(bytes[..cut].to_vec());
            let mut flipped = bytes.clone();
            let i = sim.rng.gen_range(1..flipped.len());
            flipped[i] ^= 1 << sim.rng.gen_range(0..8);
            inputs.push(flipped);
        }
        // A well-signed vote from someone who is not a validator, and one far in the future.
        for (height, r) in [(sim.nodes[0].next_height(), round), (u64::MAX, u32::MAX)] {
            let mut vote = SignedVote {
                height,
                round: r,
                kind: VoteKind::Precommit,
                value: Some(Hash::from(sim.rng.gen::<[u8; 32]>())),
                validator: account_of(&eve),
                signature: eve.sign(b"placeholder"),
            };
            vote.signature = eve.sign(&vote.sign_bytes(&genesis));
            inputs.push(Message::Vote(vote).to_bytes());
        }
        for bytes in inputs {
            let node = sim.rng.gen_range(0..4);
            let r = sim.nodes[node].engine.as_mut().map(|e| e.on_message(&bytes));
            match r {
                Some(Ok(actions)) => {
                    accepted += 1;
                    sim.apply(node, Ok(actions));
                }
                Some(Err(_)) => rejected += 1,
                None => {}
            }
        }
        let now = sim.now;
        sim.run_until(now + 200, |_| false);
    }
    assert!(rejected > 0 && accepted > 0);
    // A relay that swaps the block bytes under a valid proposal signature is ignored: the
    // signature binds the bytes, so no node is even asked to check the forged block.
    let proposal = sim.recent.iter().find_map(|b| match Message::from_bytes(b) {
        Ok(Message::Proposal(p)) => Some(p),
        _ => None,
    });
    let mut p = proposal.expect("a proposal among the recent broadcasts");
    p.value.bytes.push(0);
    let forged = Message::Proposal(p).to_bytes();
    for node in 0..4 {
        if let Some(Ok(actions)) = sim.nodes[node].engine.as_mut().map(|e| e.on_message(&forged)) {
            assert!(!actions.iter().any(|a| matches!(a, Action::CheckValue { .. })));
            sim.apply(node, Ok(actions));
        }
    }
    // Nobody was misled, and the network goes on.
    let target = sim.max_height() + 3;
    let now = sim.now;
    assert!(sim.run_until(now + 30_000, |s| s.min_height() >= target));
    assert!(sim.evidence.is_empty(), "honest validators were accused: {:?}", sim.evidence);
}

#[test]
fn sim_invalid_proposals_are_never_decided() {
    for seed in 0..seeds(5) {
        let mut sim = Sim::new(6_000 + seed, 4, HEALED);
        sim.nodes[0].proposes_invalid = true;
        sim.start();
        // Import asserts that every decided block was validly proposed.
        assert!(sim.run_until(60_000, |s| s.min_height() >= 8), "seed {seed}: stalled");
        let bad = account_of(&sim.nodes[0].key);
        assert!(sim.nodes[1].chain.values().all(|d| d.round > 0 || {
            // Round 0 of a height is proposed by (height mod 4); node 0's turns need round 1.
            sim.validators.proposer(d.height, 0).account() != &bad
        }));
    }
}

#[test]
fn sim_crashes_anywhere_with_a_wal_never_equivocate() {
    let mut total = Stats::default();
    for seed in 0..seeds(100) {
        let n = if seed % 3 == 2 { 7 } else { 4 };
        let faults = Faults { crash_any: true, mid_step: 0.01, amnesia: false };
        total += chaos_with(9_000 + seed, n, 8_000, 3, faults);
    }
    eprintln!("crashes with a WAL: {total:?}");
    // Equivocation by a node (panics in `check_published`) and evidence (in `chaos_with`)
    // never happened; make sure restarts did replay logs.
    assert!(total.crashes > 0 && total.replays > 0 && total.evidence == 0);
}

#[test]
fn sim_restart_without_a_wal_can_equivocate() {
    // The same crashes, with the crashing nodes losing their logs: what the WAL prevents does
    // happen without it, so the checks above are not vacuous.
    let mut total = Stats::default();
    for seed in 0..seeds(60) {
        let faults = Faults { crash_any: false, mid_step: 0.02, amnesia: true };
        total += chaos_with(10_000 + seed, 4, 8_000, 2, faults);
    }
    eprintln!("crashes without a WAL: {total:?}");
    assert!(total.conflicts > 0, "no conflicting vote from nodes without a log: {total:?}");
}

#[test]
fn sim_validator_restarted_after_its_vote_sends_the_same_vote() {
    for seed in 0..seeds(10) {
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            let mut sim = Sim::new(11_000 + seed, 4, HEALED);
            let node = (seed % 4) as usize;
            let down_ms = sim.rng.gen_range(0..1_500);
            sim.crash_on_vote =
                Some(CrashOnVote { node, kind, down_ms, sent: None, resent: false });
            sim.start();
            let live = sim.run_until(60_000, |s| s.min_height() >= 4);
            assert!(live, "seed {seed}: stalled after restarting node {node}");
            let hook = sim.crash_on_vote.take().unwrap();
            let sent = hook.sent.expect("the node voted");
            assert!(hook.resent, "seed {seed}: node {node} did not send its {kind:?} again");
            // The resent vote is the one recorded, signature and all: nothing was signed anew.
            let Ok(Message::Vote(v)) = Message::from_bytes(&sent) else { panic!("not a vote") };
            assert_eq!(v.kind, kind);
            assert_eq!(sim.stats.crashes, 1);
            assert!(sim.evidence.is_empty(), "seed {seed}: {:?}", sim.evidence);
        }
    }
}

#[test]
fn sim_restart_with_an_empty_wal_starts_afresh() {
    let mut sim = Sim::new(12_000, 4, HEALED);
    for i in 0..4 {
        let vs = sim.validators.clone();
        let r = sim.nodes[i].engine.as_mut().map(|e| e.start_height_with_wal(1, vs, Vec::new()));
        if let Some(r) = r {
            sim.apply(i, r);
        }
    }
    assert!(sim.run_until(30_000, |s| s.min_height() >= 3));
    // The logs were reset to each new height and record it.
    for node in &sim.nodes {
        let (height, entries) = node.disk.durable();
        assert_eq!(height, node.next_height());
        for bytes in &entries {
            WalEntry::from_bytes(bytes).unwrap();
        }
    }
    // A node whose log holds another height starts afresh too, and catches up.
    sim.schedule(0, Event::Crash { node: 1 });
    sim.nodes[1].disk.wipe();
    sim.schedule(10, Event::Restart { node: 1 });
    let target = sim.max_height() + 3;
    let now = sim.now;
    assert!(sim.run_until(now + 30_000, |s| s.min_height() >= target));
    assert!(sim.evidence.is_empty());
}

/// A log that fails on every append after a point.
struct FailingWal {
    inner: MemoryWal,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl bitorch_consensus::Wal for FailingWal {
    fn entries(&mut self, height: u64) -> Result<Vec<Vec<u8>>, bitorch_consensus::WalError> {
        self.inner.entries(height)
    }

    fn reset(&mut self, height: u64) -> Result<(), bitorch_consensus::WalError> {
        self.inner.reset(height)
    }

    fn append(&mut self, height: u64, entry: &[u8]) -> Result<(), bitorch_consensus::WalError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("disk on fire").into());
        }
        self.inner.append(height, entry)
    }

    fn flush(&mut self) -> Result<(), bitorch_consensus::WalError> {
        self.inner.flush()
    }
}

#[test]
fn a_failing_wal_silences_the_validator_until_the_next_height() {
    use bitorch_consensus::Wal as _;
    let key = pair_from_suri("//Alice").unwrap();
    let vs = ValidatorSet::equal([account_of(&key)]).unwrap();
    let config = Config::new(blake2_256(b"simulated genesis"));
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let disk = MemoryWal::new();
    let wal = FailingWal { inner: disk.clone(), fail: fail.clone() };
    let mut engine = MalachiteConsensus::new(config, key, 1, vs.clone(), Box::new(wal));
    let actions = engine.start_height(1, vs.clone()).unwrap();
    assert!(actions.iter().any(|a| matches!(a, Action::GetValue { height: 1, round: 0, .. })));
    let bytes = b"a block".to_vec();
    let value = Value { hash: blake2_256(&bytes), bytes };
    // Recording our own value fails: nothing is published, nothing decided.
    let err = engine.propose(1, 0, value.clone()).unwrap_err();
    assert!(matches!(err, bitorch_consensus::Error::Wal(_)), "{err}");
    // The engine sits the height out.
    let timeout = actions
        .iter()
        .find_map(|a| match a {
            Action::ScheduleTimeout { timeout, .. } => Some(*timeout),
            _ => None,
        })
        .unwrap();
    assert!(engine.on_timeout(timeout).unwrap().is_empty());
    assert!(engine.propose(1, 0, value.clone()).unwrap().is_empty());
    // Starting the height again with a working log replays what it holds (nothing) and works.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    disk.clone().reset(7).unwrap();
    engine.start_height(1, vs).unwrap();
    let actions = engine.propose(1, 0, value).unwrap();
    assert!(actions.iter().any(|a| matches!(a, Action::Decided(_))), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Broadcast(_))));
    let (height, entries) = disk.durable();
    assert_eq!(height, 1);
    assert!(!entries.is_empty());
}

#[test]
fn a_proposer_restarted_before_signing_proposes_the_block_it_recorded() {
    use bitorch_consensus::wal::{RecordedOrigin, RecordedValue};
    use bitorch_consensus::Wal as _;
    // The log ends with our own value: the crash (a torn write) came before the proposal was
    // recorded, so it was never signed or sent. The restarted proposer proposes that very
    // block instead of asking the node for a new one.
    let key = pair_from_suri("//Alice").unwrap();
    let vs = ValidatorSet::equal([account_of(&key)]).unwrap();
    let bytes = b"the recorded block".to_vec();
    let value = Value { hash: blake2_256(&bytes), bytes };
    let entry = WalEntry::ProposedValue(RecordedValue {
        height: 1,
        round: 0,
        valid_round: None,
        proposer: account_of(&key),
        value: value.clone(),
        valid: true,
        origin: RecordedOrigin::Consensus,
    });
    let mut disk = MemoryWal::new();
    disk.reset(1).unwrap();
    disk.append(1, &entry.to_bytes()).unwrap();
    disk.flush().unwrap();
    let config = Config::new(blake2_256(b"simulated genesis"));
    let mut engine =
        MalachiteConsensus::new(config, key.clone(), 1, vs.clone(), Box::new(disk.clone()));
    let actions = engine.start_height(1, vs).unwrap();
    assert!(!actions.iter().any(|a| matches!(a, Action::GetValue { .. })), "{actions:?}");
    let proposed = actions.iter().find_map(|a| match a {
        Action::Broadcast(b) => match Message::from_bytes(b) {
            Ok(Message::Proposal(p)) => Some(p.value),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(proposed, Some(value.clone()));
    let decided = actions.iter().find_map(|a| match a {
        Action::Decided(d) => Some(d.value.clone()),
        _ => None,
    });
    assert_eq!(decided, Some(value));
    // The proposal is in the log now.
    let (_, entries) = disk.durable();
    assert!(entries
        .iter()
        .any(|e| matches!(WalEntry::from_bytes(e), Ok(WalEntry::Proposal(p)) if p.proposer == account_of(&key))));
}
