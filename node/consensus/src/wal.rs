//! The write-ahead log (WAL) of consensus: every input the engine must remember across a crash,
//! so that a validator restarted within a height replays what it saw and signed, and never
//! signs a vote that conflicts with one it sent before.
//!
//! The engine asks to record an input ([`Effect::WalAppend`](malachitebft_core_consensus::Effect))
//! before it applies it. In the pinned core (0.8.2) that is: peers' votes and our own (also the
//! votes of a round certificate, which is not recorded as such), proposals (ours and peers'),
//! proposed values with their validity (peers' values once the node checked them, and our own
//! [`Consensus::propose`](crate::Consensus::propose) values, block bytes included), the
//! propose/prevote/precommit timeouts that elapsed, and polka certificates. [`WalEntry`] covers
//! those, plus round certificates in case a later core records them whole.
//!
//! An entry is one version byte ([`WAL_VERSION`]) followed by a SCALE [`WalEntry`]; decoding
//! checks the size ([`MAX_ENTRY_BYTES`]), the version, a nesting depth limit and that no bytes
//! are left over. Storage is the node's business: the driver is given a [`Wal`] and never does
//! I/O itself. [`MemoryWal`] keeps the log in memory (simulations and tests); the node keeps it
//! in a file.

use crate::context::{Address, BitorchContext, Height, Value};
use crate::error::WalError;
use crate::wire::{self, Certificate, EngineMsg, Message, ProposalMessage, SignedVote};
use bitorch_primitives::AccountId;
use malachitebft_core_consensus::{Input, ProposedValue};
use malachitebft_core_types as mc;
use mc::{Round, Validity, ValueOrigin};
use parity_scale_codec::{Decode, DecodeLimit, Encode};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Version byte that starts every entry.
pub const WAL_VERSION: u8 = 1;
/// Largest entry: a proposal or a proposed value carries a whole block, as a consensus message
/// does, plus a little for the other fields.
pub const MAX_ENTRY_BYTES: usize = wire::MAX_MESSAGE_BYTES + 64 * 1024;
/// Nesting depth limit for decoding.
const DECODE_DEPTH_LIMIT: u32 = 16;

/// Where the engine keeps its write-ahead log: entries of one height at a time.
///
/// The driver calls [`Wal::reset`] when a new height starts, [`Wal::append`] whenever the
/// engine asks to record an input, and [`Wal::flush`] before it hands out a message it signed
/// (and before a decision), so that whatever it published is durable. On a restart
/// ([`Consensus::start_height`](crate::Consensus::start_height) for a height the log holds) it
/// reads [`Wal::entries`] and replays them.
pub trait Wal: Send {
    /// Every entry recorded for `height`, oldest first, including any not yet flushed; empty if
    /// the log holds another height. Fails if the log of `height` is damaged: replaying only
    /// part of it could lead to a conflicting vote.
    fn entries(&mut self, height: u64) -> Result<Vec<Vec<u8>>, WalError>;

    /// Discards every entry and starts the (empty, durable) log of `height`.
    fn reset(&mut self, height: u64) -> Result<(), WalError>;

    /// Records one encoded [`WalEntry`] of `height`, the height the log was reset to. It need
    /// not be durable before [`Wal::flush`].
    fn append(&mut self, height: u64, entry: &[u8]) -> Result<(), WalError>;

    /// Makes every recorded entry durable (e.g. `fsync`).
    fn flush(&mut self) -> Result<(), WalError>;
}

/// A recorded input, as the log stores it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum WalEntry {
    /// A vote, ours or a peer's (signature included).
    #[codec(index = 0)]
    Vote(SignedVote),
    /// A signed proposal, ours or a peer's, with its block.
    #[codec(index = 1)]
    Proposal(ProposalMessage),
    /// A proposed value and the verdict on it (for our own values: valid).
    #[codec(index = 2)]
    ProposedValue(RecordedValue),
    /// A timeout that elapsed.
    #[codec(index = 3)]
    TimeoutElapsed(RecordedTimeout),
    /// A polka certificate (or a round certificate).
    #[codec(index = 4)]
    Certificate(Certificate),
}

/// A proposed value with its validity.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct RecordedValue {
    /// Height.
    pub height: u64,
    /// Round it was proposed in.
    pub round: u32,
    /// The round of the polka its proposal relied on, if any.
    pub valid_round: Option<u32>,
    /// The proposer.
    pub proposer: AccountId,
    /// The block.
    pub value: Value,
    /// The node's verdict.
    pub valid: bool,
    /// Whether it came through consensus or sync.
    pub origin: RecordedOrigin,
}

/// Where a proposed value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum RecordedOrigin {
    /// Consensus gossip (or our own proposal).
    Consensus,
    /// Value sync.
    Sync,
}

/// A timeout that elapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct RecordedTimeout {
    /// Round.
    pub round: u32,
    /// Which one.
    pub kind: RecordedTimeoutKind,
}

/// Kind of a recorded timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum RecordedTimeoutKind {
    /// Waiting for the proposal.
    Propose,
    /// Waiting for prevotes.
    Prevote,
    /// Waiting for precommits.
    Precommit,
    /// Rebroadcast of our last votes.
    Rebroadcast,
    /// End of the finalization window, after this many milliseconds.
    FinalizeHeight(u64),
}

impl WalEntry {
    /// The entry for an input the engine asked to record. Fails for inputs the log does not
    /// cover (start of a height, a locally proposed value before it became a proposed value,
    /// a sync response), which the pinned core never records.
    pub fn from_input(input: &Input<BitorchContext>) -> Result<Self, WalError> {
        Ok(match input {
            Input::Vote(v) => WalEntry::Vote(
                wire::vote_from_engine(v)
                    .map_err(|_| WalError::Malformed("vote without a round"))?,
            ),
            Input::Proposal(p) => WalEntry::Proposal(
                ProposalMessage::from_engine(p)
                    .map_err(|_| WalError::Malformed("proposal without a round"))?,
            ),
            Input::ProposedValue(v, origin) => WalEntry::ProposedValue(RecordedValue {
                height: v.height.0,
                round: v.round.as_u32().ok_or(WalError::Malformed("value without a round"))?,
                valid_round: v.valid_round.as_u32(),
                proposer: v.proposer.0.clone(),
                value: v.value.clone(),
                valid: v.validity.is_valid(),
                origin: match origin {
                    ValueOrigin::Consensus => RecordedOrigin::Consensus,
                    ValueOrigin::Sync => RecordedOrigin::Sync,
                },
            }),
            Input::TimeoutElapsed(t) => WalEntry::TimeoutElapsed(RecordedTimeout {
                round: t.round.as_u32().ok_or(WalError::Malformed("timeout without a round"))?,
                kind: match t.kind {
                    mc::TimeoutKind::Propose => RecordedTimeoutKind::Propose,
                    mc::TimeoutKind::Prevote => RecordedTimeoutKind::Prevote,
                    mc::TimeoutKind::Precommit => RecordedTimeoutKind::Precommit,
                    mc::TimeoutKind::Rebroadcast => RecordedTimeoutKind::Rebroadcast,
                    mc::TimeoutKind::FinalizeHeight(d) => RecordedTimeoutKind::FinalizeHeight(
                        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    ),
                },
            }),
            Input::PolkaCertificate(c) => WalEntry::Certificate(
                Certificate::from_polka(c)
                    .map_err(|_| WalError::Malformed("certificate without a round"))?,
            ),
            Input::RoundCertificate(c) => WalEntry::Certificate(
                Certificate::from_round(c)
                    .map_err(|_| WalError::Malformed("certificate without a round"))?,
            ),
            Input::StartHeight(..) | Input::Propose(_) | Input::SyncValueResponse(_) => {
                return Err(WalError::Malformed("input the write-ahead log does not record"))
            }
        })
    }

    /// The engine input this entry recorded, checked to belong to `height`.
    pub fn into_input(self, height: u64) -> Result<Input<BitorchContext>, WalError> {
        let check = |entry: u64| {
            if entry == height {
                Ok(())
            } else {
                Err(WalError::WrongHeight { log: height, entry })
            }
        };
        Ok(match self {
            WalEntry::Vote(v) => {
                check(v.height)?;
                Input::Vote(wire::vote_into_engine(v))
            }
            WalEntry::Proposal(p) => {
                check(p.height)?;
                Input::Proposal(p.into_engine())
            }
            WalEntry::ProposedValue(v) => {
                check(v.height)?;
                Input::ProposedValue(
                    ProposedValue {
                        height: Height(v.height),
                        round: Round::new(v.round),
                        valid_round: Round::from(v.valid_round),
                        proposer: Address(v.proposer),
                        value: v.value,
                        validity: Validity::from_bool(v.valid),
                    },
                    match v.origin {
                        RecordedOrigin::Consensus => ValueOrigin::Consensus,
                        RecordedOrigin::Sync => ValueOrigin::Sync,
                    },
                )
            }
            WalEntry::TimeoutElapsed(t) => {
                let round = Round::new(t.round);
                Input::TimeoutElapsed(match t.kind {
                    RecordedTimeoutKind::Propose => mc::Timeout::propose(round),
                    RecordedTimeoutKind::Prevote => mc::Timeout::prevote(round),
                    RecordedTimeoutKind::Precommit => mc::Timeout::precommit(round),
                    RecordedTimeoutKind::Rebroadcast => mc::Timeout::rebroadcast(round),
                    RecordedTimeoutKind::FinalizeHeight(ms) => {
                        mc::Timeout::finalize_height(round, Duration::from_millis(ms))
                    }
                })
            }
            WalEntry::Certificate(c) => {
                check(c.height)?;
                match Message::Certificate(c).into_engine() {
                    Ok(EngineMsg::Polka(c)) => Input::PolkaCertificate(c),
                    Ok(EngineMsg::Round(c)) => Input::RoundCertificate(c),
                    Ok(EngineMsg::Proposal(_) | EngineMsg::Vote(_)) | Err(_) => {
                        return Err(WalError::Malformed("inconsistent certificate"))
                    }
                }
            }
        })
    }

    /// Encodes the entry with its version byte.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.size_hint());
        out.push(WAL_VERSION);
        self.encode_to(&mut out);
        out
    }

    /// Decodes a stored entry: size limit, version, depth-limited SCALE, no trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WalError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(WalError::EntryTooLarge { size: bytes.len(), limit: MAX_ENTRY_BYTES });
        }
        let (&version, mut rest) = bytes.split_first().ok_or(WalError::Malformed("empty entry"))?;
        if version != WAL_VERSION {
            return Err(WalError::UnsupportedVersion(version));
        }
        let entry = WalEntry::decode_with_depth_limit(DECODE_DEPTH_LIMIT, &mut rest)?;
        if !rest.is_empty() {
            return Err(WalError::Malformed("trailing bytes"));
        }
        Ok(entry)
    }
}

/// A [`Wal`] in memory, for simulations and tests. Clones share one log, so a test keeps a
/// clone as the "disk" while an engine writes to another. Entries become durable on
/// [`Wal::flush`]; [`MemoryWal::crash`] loses the rest, as a crash would.
#[derive(Clone, Debug, Default)]
pub struct MemoryWal {
    inner: Arc<Mutex<MemoryLog>>,
}

#[derive(Debug, Default)]
struct MemoryLog {
    height: u64,
    durable: Vec<Vec<u8>>,
    buffered: Vec<Vec<u8>>,
}

impl MemoryWal {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryLog> {
        // A panic elsewhere cannot leave the log half-written: every update is one push.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The height of the log and its durable entries: what a restart finds.
    pub fn durable(&self) -> (u64, Vec<Vec<u8>>) {
        let log = self.lock();
        (log.height, log.durable.clone())
    }

    /// Simulates a crash: entries not yet flushed are lost.
    pub fn crash(&self) {
        self.lock().buffered.clear();
    }

    /// Simulates losing the disk: the log is empty (and of height 0) afterwards.
    pub fn wipe(&self) {
        *self.lock() = MemoryLog::default();
    }
}

impl Wal for MemoryWal {
    fn entries(&mut self, height: u64) -> Result<Vec<Vec<u8>>, WalError> {
        let mut log = self.lock();
        if log.height != height {
            return Ok(Vec::new());
        }
        let buffered = std::mem::take(&mut log.buffered);
        log.durable.extend(buffered);
        Ok(log.durable.clone())
    }

    fn reset(&mut self, height: u64) -> Result<(), WalError> {
        *self.lock() = MemoryLog { height, ..MemoryLog::default() };
        Ok(())
    }

    fn append(&mut self, height: u64, entry: &[u8]) -> Result<(), WalError> {
        let mut log = self.lock();
        if log.height != height {
            return Err(WalError::WrongHeight { log: log.height, entry: height });
        }
        log.buffered.push(entry.to_vec());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WalError> {
        let mut log = self.lock();
        let buffered = std::mem::take(&mut log.buffered);
        log.durable.extend(buffered);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_primitives::vote::VoteKind;
    use bitorch_primitives::{Hash, Signature};
    use wire::{CertSignature, CertificateKind};

    fn account(b: u8) -> AccountId {
        AccountId::new([b; 32])
    }

    fn entries() -> Vec<WalEntry> {
        let value = Value { hash: Hash::repeat_byte(7), bytes: vec![1, 2, 3] };
        let sig = |validator, kind, value| CertSignature {
            validator,
            kind,
            value,
            signature: Signature::from_raw([9; 64]),
        };
        vec![
            WalEntry::Vote(SignedVote {
                height: 5,
                round: 2,
                kind: VoteKind::Prevote,
                value: None,
                validator: account(1),
                signature: Signature::from_raw([3; 64]),
            }),
            WalEntry::Proposal(ProposalMessage {
                height: 5,
                round: 1,
                pol_round: Some(0),
                value: value.clone(),
                proposer: account(2),
                signature: Signature::from_raw([4; 64]),
            }),
            WalEntry::ProposedValue(RecordedValue {
                height: 5,
                round: 1,
                valid_round: None,
                proposer: account(2),
                value: value.clone(),
                valid: false,
                origin: RecordedOrigin::Consensus,
            }),
            WalEntry::ProposedValue(RecordedValue {
                height: 5,
                round: 3,
                valid_round: Some(1),
                proposer: account(2),
                value,
                valid: true,
                origin: RecordedOrigin::Sync,
            }),
            WalEntry::TimeoutElapsed(RecordedTimeout {
                round: 4,
                kind: RecordedTimeoutKind::Propose,
            }),
            WalEntry::TimeoutElapsed(RecordedTimeout {
                round: 0,
                kind: RecordedTimeoutKind::Prevote,
            }),
            WalEntry::TimeoutElapsed(RecordedTimeout {
                round: 1,
                kind: RecordedTimeoutKind::Precommit,
            }),
            WalEntry::TimeoutElapsed(RecordedTimeout {
                round: 1,
                kind: RecordedTimeoutKind::Rebroadcast,
            }),
            WalEntry::TimeoutElapsed(RecordedTimeout {
                round: 1,
                kind: RecordedTimeoutKind::FinalizeHeight(1500),
            }),
            WalEntry::Certificate(Certificate {
                height: 5,
                round: 1,
                kind: CertificateKind::Polka,
                signatures: vec![
                    sig(account(1), VoteKind::Prevote, Some(Hash::repeat_byte(7))),
                    sig(account(2), VoteKind::Prevote, Some(Hash::repeat_byte(7))),
                ],
            }),
            WalEntry::Certificate(Certificate {
                height: 5,
                round: 2,
                kind: CertificateKind::RoundSkip,
                signatures: vec![
                    sig(account(1), VoteKind::Prevote, None),
                    sig(account(3), VoteKind::Precommit, Some(Hash::repeat_byte(1))),
                ],
            }),
        ]
    }

    #[test]
    fn every_entry_round_trips_through_bytes_and_the_engine() {
        for entry in entries() {
            let bytes = entry.to_bytes();
            assert_eq!(WalEntry::from_bytes(&bytes).unwrap(), entry);
            let input = entry.clone().into_input(5).unwrap();
            assert_eq!(WalEntry::from_input(&input).unwrap(), entry, "{input:?}");
        }
    }

    #[test]
    fn entries_of_another_height_are_refused() {
        for entry in entries() {
            let timeout = matches!(entry, WalEntry::TimeoutElapsed(_));
            match entry.into_input(6) {
                Err(WalError::WrongHeight { log: 6, entry: 5 }) => assert!(!timeout),
                Ok(_) => assert!(timeout, "timeouts carry no height"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert!(matches!(WalEntry::from_bytes(&[]), Err(WalError::Malformed(_))));
        assert!(matches!(WalEntry::from_bytes(&[9, 0]), Err(WalError::UnsupportedVersion(9))));
        assert!(matches!(WalEntry::from_bytes(&[WAL_VERSION, 77]), Err(WalError::Decode(_))));
        let big = vec![WAL_VERSION; MAX_ENTRY_BYTES + 1];
        assert!(matches!(WalEntry::from_bytes(&big), Err(WalError::EntryTooLarge { .. })));
        let mut bytes = entries()[0].to_bytes();
        bytes.push(0);
        assert!(matches!(WalEntry::from_bytes(&bytes), Err(WalError::Malformed(_))));
        // A polka certificate mixing votes is not something the engine recorded.
        let mixed = WalEntry::Certificate(Certificate {
            height: 5,
            round: 1,
            kind: CertificateKind::Polka,
            signatures: vec![CertSignature {
                validator: account(1),
                kind: VoteKind::Precommit,
                value: Some(Hash::repeat_byte(7)),
                signature: Signature::from_raw([9; 64]),
            }],
        });
        assert!(matches!(mixed.into_input(5), Err(WalError::Malformed(_))));
    }

    #[test]
    fn memory_wal_loses_unflushed_entries_in_a_crash() {
        let disk = MemoryWal::new();
        let mut wal = disk.clone();
        wal.reset(3).unwrap();
        wal.append(3, b"a").unwrap();
        wal.flush().unwrap();
        wal.append(3, b"b").unwrap();
        assert!(matches!(wal.append(4, b"c"), Err(WalError::WrongHeight { log: 3, entry: 4 })));
        disk.crash();
        assert_eq!(disk.durable(), (3, vec![b"a".to_vec()]));
        assert_eq!(wal.entries(3).unwrap(), vec![b"a".to_vec()]);
        assert!(wal.entries(4).unwrap().is_empty());
        wal.append(3, b"d").unwrap();
        // Reading the log takes what is buffered too.
        assert_eq!(wal.entries(3).unwrap(), vec![b"a".to_vec(), b"d".to_vec()]);
        wal.reset(4).unwrap();
        assert_eq!(disk.durable(), (4, Vec::new()));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut versioned = bytes.clone();
            versioned.insert(0, WAL_VERSION);
            for b in [bytes, versioned] {
                if let Ok(entry) = WalEntry::from_bytes(&b) {
                    proptest::prop_assert_eq!(entry.to_bytes(), b.clone());
                    let _ = entry.into_input(1);
                }
            }
        }
    }
}
