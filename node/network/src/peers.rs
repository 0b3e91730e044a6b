//! Peer scores and the ban list.
//!
//! Each [`Misbehaviour`] costs a penalty; a peer whose penalties reach [`BAN_THRESHOLD`] is
//! banned for the configured time: disconnected, its connections refused, its gossip ignored.
//! Scores are forgotten when a peer disconnects or its ban expires; the ban list is bounded.

use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Score at which a peer is banned.
pub const BAN_THRESHOLD: u32 = 100;
/// Most peers banned at once; past this the ban closest to expiry is lifted early.
pub const MAX_BANNED: usize = 4096;

/// Something a peer did wrong. The node reports what it finds (invalid blocks, bad
/// signatures, undecodable gossip); the network reports what it finds itself (undecodable
/// or oversized sync messages, invalid responses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// Sent bytes that do not decode, or that exceed a size limit.
    UndecodableMessage,
    /// Sent a block that failed verification.
    InvalidBlock,
    /// Sent a message with a bad signature.
    BadSignature,
    /// Answered a request with something that does not match it.
    InvalidResponse,
    /// Sent something useless but not clearly malicious (a stale or duplicate message).
    Unwanted,
}

impl Misbehaviour {
    /// The penalty this misbehaviour costs; [`BAN_THRESHOLD`] bans at once.
    pub fn penalty(self) -> u32 {
        match self {
            Misbehaviour::UndecodableMessage
            | Misbehaviour::InvalidBlock
            | Misbehaviour::BadSignature => BAN_THRESHOLD,
            Misbehaviour::InvalidResponse => BAN_THRESHOLD / 2,
            Misbehaviour::Unwanted => BAN_THRESHOLD / 20,
        }
    }
}

/// Scores of connected peers and the bans in force.
#[derive(Debug)]
pub(crate) struct PeerBook {
    scores: HashMap<PeerId, u32>,
    bans: HashMap<PeerId, Instant>,
    ban_duration: Duration,
}

impl PeerBook {
    pub(crate) fn new(ban_duration: Duration) -> Self {
        Self { scores: HashMap::new(), bans: HashMap::new(), ban_duration }
    }

    /// Adds the penalty; returns `true` when this bans the peer (it was not banned before).
    pub(crate) fn penalise(&mut self, peer: PeerId, m: Misbehaviour, now: Instant) -> bool {
        if self.is_banned(&peer) {
            return false;
        }
        let score = self.scores.entry(peer).or_default();
        *score = score.saturating_add(m.penalty());
        if *score < BAN_THRESHOLD {
            return false;
        }
        self.scores.remove(&peer);
        if self.bans.len() >= MAX_BANNED {
            if let Some(first) = self.bans.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
                self.bans.remove(&first);
            }
        }
        self.bans.insert(peer, now + self.ban_duration);
        true
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.contains_key(peer)
    }

    pub(crate) fn banned(&self) -> impl Iterator<Item = &PeerId> {
        self.bans.keys()
    }

    /// Lifts and returns the bans that expired by `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let expired: Vec<PeerId> =
            self.bans.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for p in &expired {
            self.bans.remove(p);
        }
        expired
    }

    /// Forgets the score of a peer that disconnected (its ban, if any, stays).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.scores.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severe_misbehaviour_bans_at_once_until_expiry() {
        let mut book = PeerBook::new(Duration::from_secs(10));
        let (p, now) = (PeerId::random(), Instant::now());
        assert!(book.penalise(p, Misbehaviour::UndecodableMessage, now));
        assert!(book.is_banned(&p));
        assert!(!book.penalise(p, Misbehaviour::InvalidBlock, now), "already banned");
        assert!(book.expire(now + Duration::from_secs(9)).is_empty());
        assert_eq!(book.expire(now + Duration::from_secs(10)), vec![p]);
        assert!(!book.is_banned(&p));
    }

    #[test]
    fn minor_misbehaviour_accumulates_and_disconnect_forgets() {
        let mut book = PeerBook::new(Duration::from_secs(10));
        let (p, now) = (PeerId::random(), Instant::now());
        assert!(!book.penalise(p, Misbehaviour::InvalidResponse, now));
        book.forget(&p);
        assert!(!book.penalise(p, Misbehaviour::InvalidResponse, now));
        assert!(book.penalise(p, Misbehaviour::InvalidResponse, now));
        for _ in 0..19 {
            assert!(!book.penalise(PeerId::random(), Misbehaviour::Unwanted, now));
        }
    }

    #[test]
    fn ban_list_is_bounded() {
        let mut book = PeerBook::new(Duration::from_secs(10));
        let now = Instant::now();
        for i in 0..MAX_BANNED + 10 {
            book.penalise(
                PeerId::random(),
                Misbehaviour::BadSignature,
                now + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(book.banned().count(), MAX_BANNED);
    }
}
