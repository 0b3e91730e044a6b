//! The consensus wire format: SCALE, versioned, with a size limit checked before decoding.
//!
//! A message is one version byte ([`WIRE_VERSION`]) followed by a SCALE [`Message`]. Rounds
//! and signatures travel as plain integers and bytes; conversion to the engine's types
//! rejects malformed fields instead of panicking.

use crate::context::{Address, BitorchContext, Height, Proposal, Value, Vote};
use crate::error::Error;
use bitorch_primitives::{AccountId, Hash, Signature};
use malachitebft_core_consensus::{LivenessMsg, SignedConsensusMsg};
use malachitebft_core_types as mc;
use mc::{NilOrVal, Round, RoundCertificateType, VoteType};
use parity_scale_codec::{Decode, DecodeLimit, Encode};

/// Version byte that starts every consensus message.
pub const WIRE_VERSION: u8 = 1;
/// Largest consensus message accepted from a peer (a proposal carries a whole block).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Nesting depth limit for decoding.
const DECODE_DEPTH_LIMIT: u32 = 16;

pub use bitorch_primitives::vote::{SignedVote, VoteKind};

/// The engine's view of a signed vote.
pub(crate) fn vote_to_engine(v: &SignedVote) -> Vote {
    Vote {
        height: Height(v.height),
        round: Round::new(v.round),
        vote_type: type_of(v.kind),
        value: match v.value {
            Some(h) => NilOrVal::Val(h),
            None => NilOrVal::Nil,
        },
        validator: Address(v.validator.clone()),
    }
}

/// A signed vote from the engine's, rejecting a vote without a round.
pub(crate) fn vote_from_engine(v: &mc::SignedVote<BitorchContext>) -> Result<SignedVote, Error> {
    Ok(SignedVote {
        height: v.message.height.0,
        round: v.message.round.as_u32().ok_or(Error::Malformed("vote without a round"))?,
        kind: kind_of(v.message.vote_type),
        value: match v.message.value {
            NilOrVal::Val(h) => Some(h),
            NilOrVal::Nil => None,
        },
        validator: v.message.validator.0.clone(),
        signature: v.signature,
    })
}

/// The engine's signed vote.
pub(crate) fn vote_into_engine(v: SignedVote) -> mc::SignedVote<BitorchContext> {
    let signature = v.signature;
    mc::SignedMessage::new(vote_to_engine(&v), signature)
}

/// A signed proposal as validators gossip it, with its whole value (the block's bytes).
/// Evidence keeps only what was signed: [`bitorch_primitives::vote::SignedProposal`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ProposalMessage {
    /// Height.
    pub height: u64,
    /// Round.
    pub round: u32,
    /// The round of the polka that justifies re-proposing a locked value, if any.
    pub pol_round: Option<u32>,
    /// The proposed value.
    pub value: Value,
    /// The proposer.
    pub proposer: AccountId,
    /// sr25519 signature over the proposal's sign bytes.
    pub signature: Signature,
}

/// Signatures of a certificate: `(validator, signature)`, or for a round certificate also the
/// vote kind and value of each signed vote.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct CertSignature {
    /// The signer.
    pub validator: AccountId,
    /// What it signed: prevote or precommit.
    pub kind: VoteKind,
    /// For which block (`None` for nil).
    pub value: Option<Hash>,
    /// The signature.
    pub signature: Signature,
}

/// A certificate carried for liveness (a polka, or a round certificate).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Certificate {
    /// Height.
    pub height: u64,
    /// Round.
    pub round: u32,
    /// What it certifies.
    pub kind: CertificateKind,
    /// The signed votes, in compact form.
    pub signatures: Vec<CertSignature>,
}

/// Kind of liveness certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum CertificateKind {
    /// More than two thirds prevoted for one block.
    Polka,
    /// Enough votes at a higher round to skip to it.
    RoundSkip,
    /// More than two thirds precommitted at a round (nothing decided).
    RoundPrecommit,
}

/// A consensus message between validators.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// A proposal.
    #[codec(index = 0)]
    Proposal(ProposalMessage),
    /// A vote.
    #[codec(index = 1)]
    Vote(SignedVote),
    /// A liveness certificate.
    #[codec(index = 2)]
    Certificate(Certificate),
}

impl Message {
    /// Encodes the message with its version byte.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.size_hint());
        out.push(WIRE_VERSION);
        self.encode_to(&mut out);
        out
    }

    /// Decodes bytes from a peer: size limit, version, depth-limited SCALE, no trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge { size: bytes.len(), limit: MAX_MESSAGE_BYTES });
        }
        let (&version, mut rest) = bytes.split_first().ok_or(Error::Malformed("empty message"))?;
        if version != WIRE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let msg = Message::decode_with_depth_limit(DECODE_DEPTH_LIMIT, &mut rest)?;
        if !rest.is_empty() {
            return Err(Error::Malformed("trailing bytes"));
        }
        Ok(msg)
    }
}

fn round_of(r: Round) -> Result<u32, Error> {
    r.as_u32().ok_or(Error::Malformed("nil round"))
}

impl ProposalMessage {
    pub(crate) fn from_engine(p: &mc::SignedProposal<BitorchContext>) -> Result<Self, Error> {
        Ok(Self {
            height: p.message.height.0,
            round: round_of(p.message.round)?,
            pol_round: p.message.pol_round.as_u32(),
            value: p.message.value.clone(),
            proposer: p.message.proposer.0.clone(),
            signature: p.signature,
        })
    }

    pub(crate) fn into_engine(self) -> mc::SignedProposal<BitorchContext> {
        mc::SignedMessage::new(
            Proposal {
                height: Height(self.height),
                round: Round::new(self.round),
                value: self.value,
                pol_round: Round::from(self.pol_round),
                proposer: Address(self.proposer),
            },
            self.signature,
        )
    }
}

fn kind_of(t: VoteType) -> VoteKind {
    match t {
        VoteType::Prevote => VoteKind::Prevote,
        VoteType::Precommit => VoteKind::Precommit,
    }
}

fn type_of(k: VoteKind) -> VoteType {
    match k {
        VoteKind::Prevote => VoteType::Prevote,
        VoteKind::Precommit => VoteType::Precommit,
    }
}

impl Certificate {
    pub(crate) fn from_polka(c: &mc::PolkaCertificate<BitorchContext>) -> Result<Self, Error> {
        Ok(Self {
            height: c.height.0,
            round: round_of(c.round)?,
            kind: CertificateKind::Polka,
            signatures: c
                .polka_signatures
                .iter()
                .map(|s| CertSignature {
                    validator: s.address.0.clone(),
                    kind: VoteKind::Prevote,
                    value: Some(c.value_id),
                    signature: s.signature,
                })
                .collect(),
        })
    }

    pub(crate) fn from_round(c: &mc::RoundCertificate<BitorchContext>) -> Result<Self, Error> {
        Ok(Self {
            height: c.height.0,
            round: round_of(c.round)?,
            kind: match c.cert_type {
                RoundCertificateType::Skip => CertificateKind::RoundSkip,
                RoundCertificateType::Precommit => CertificateKind::RoundPrecommit,
            },
            signatures: c
                .round_signatures
                .iter()
                .map(|s| CertSignature {
                    validator: s.address.0.clone(),
                    kind: kind_of(s.vote_type),
                    value: match s.value_id {
                        NilOrVal::Val(h) => Some(h),
                        NilOrVal::Nil => None,
                    },
                    signature: s.signature,
                })
                .collect(),
        })
    }
}

/// A message decoded into the engine's terms.
pub(crate) enum EngineMsg {
    Proposal(mc::SignedProposal<BitorchContext>),
    Vote(mc::SignedVote<BitorchContext>),
    Polka(mc::PolkaCertificate<BitorchContext>),
    Round(mc::RoundCertificate<BitorchContext>),
}

impl Message {
    pub(crate) fn into_engine(self) -> Result<EngineMsg, Error> {
        Ok(match self {
            Message::Proposal(p) => EngineMsg::Proposal(p.into_engine()),
            Message::Vote(v) => EngineMsg::Vote(vote_into_engine(v)),
            Message::Certificate(c) => match c.kind {
                CertificateKind::Polka => {
                    let value_id = c
                        .signatures
                        .first()
                        .and_then(|s| s.value)
                        .ok_or(Error::Malformed("empty polka certificate"))?;
                    if c.signatures
                        .iter()
                        .any(|s| s.value != Some(value_id) || s.kind != VoteKind::Prevote)
                    {
                        return Err(Error::Malformed("polka certificate mixes votes"));
                    }
                    EngineMsg::Polka(mc::PolkaCertificate {
                        height: Height(c.height),
                        round: Round::new(c.round),
                        value_id,
                        polka_signatures: c
                            .signatures
                            .into_iter()
                            .map(|s| mc::PolkaSignature {
                                address: Address(s.validator),
                                signature: s.signature,
                            })
                            .collect(),
                    })
                }
                CertificateKind::RoundSkip | CertificateKind::RoundPrecommit => {
                    EngineMsg::Round(mc::RoundCertificate {
                        height: Height(c.height),
                        round: Round::new(c.round),
                        cert_type: if c.kind == CertificateKind::RoundSkip {
                            RoundCertificateType::Skip
                        } else {
                            RoundCertificateType::Precommit
                        },
                        round_signatures: c
                            .signatures
                            .into_iter()
                            .map(|s| mc::RoundSignature {
                                vote_type: type_of(s.kind),
                                value_id: match s.value {
                                    Some(h) => NilOrVal::Val(h),
                                    None => NilOrVal::Nil,
                                },
                                address: Address(s.validator),
                                signature: s.signature,
                            })
                            .collect(),
                    })
                }
            },
        })
    }

    pub(crate) fn from_consensus(m: &SignedConsensusMsg<BitorchContext>) -> Result<Self, Error> {
        Ok(match m {
            SignedConsensusMsg::Vote(v) => Message::Vote(vote_from_engine(v)?),
            SignedConsensusMsg::Proposal(p) => Message::Proposal(ProposalMessage::from_engine(p)?),
        })
    }

    pub(crate) fn from_liveness(m: &LivenessMsg<BitorchContext>) -> Result<Self, Error> {
        Ok(match m {
            LivenessMsg::Vote(v) => Message::Vote(vote_from_engine(v)?),
            LivenessMsg::PolkaCertificate(c) => Message::Certificate(Certificate::from_polka(c)?),
            LivenessMsg::SkipRoundCertificate(c) => {
                Message::Certificate(Certificate::from_round(c)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_envelopes() {
        assert!(matches!(Message::from_bytes(&[]), Err(Error::Malformed(_))));
        assert!(matches!(Message::from_bytes(&[9, 0]), Err(Error::UnsupportedVersion(9))));
        assert!(matches!(Message::from_bytes(&[1, 77]), Err(Error::Decode(_))));
        let big = vec![1u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(Message::from_bytes(&big), Err(Error::MessageTooLarge { .. })));
    }

    #[test]
    fn round_trip() {
        let msg = Message::Vote(SignedVote {
            height: 3,
            round: 1,
            kind: VoteKind::Precommit,
            value: Some(Hash::repeat_byte(4)),
            validator: AccountId::new([5; 32]),
            signature: Signature::from_raw([6; 64]),
        });
        let mut bytes = msg.to_bytes();
        assert_eq!(Message::from_bytes(&bytes).unwrap(), msg);
        bytes.push(0);
        assert!(matches!(Message::from_bytes(&bytes), Err(Error::Malformed(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut versioned = bytes.clone();
            versioned.insert(0, WIRE_VERSION);
            for b in [bytes, versioned] {
                if let Ok(msg) = Message::from_bytes(&b) {
                    // Whatever decodes re-encodes to the same bytes (one encoding per message).
                    proptest::prop_assert_eq!(msg.to_bytes(), b.clone());
                    let _ = msg.into_engine();
                }
            }
        }

        #[test]
        fn proposals_round_trip(
            height: u64,
            round: u32,
            pol_round: Option<u32>,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            seed: [u8; 32],
        ) {
            let msg = Message::Proposal(ProposalMessage {
                height,
                round,
                pol_round,
                value: Value { hash: Hash::from(seed), bytes },
                proposer: AccountId::new(seed),
                signature: Signature::from_raw([seed[0]; 64]),
            });
            proptest::prop_assert_eq!(Message::from_bytes(&msg.to_bytes()).unwrap(), msg);
        }
    }
}
