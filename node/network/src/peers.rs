//! Peer scores and the ban list.
//!
//! Each [`Misbehaviour`] costs a penalty; a peer whose penalties reach [`BAN_THRESHOLD`] is
//! banned for the configured time: disconnected, its connections refused, its gossip ignored.
//! The operator can also ban a peer for a time of its choosing and lift any ban early
//! ([`Handle::ban_peer`](crate::Handle::ban_peer), [`Handle::unban_peer`](crate::Handle::unban_peer)).
//! A ban remembers where the peer could be reached, so that the node can dial it again once
//! the ban ends. Scores are forgotten when a peer disconnects or its ban expires; the ban list
//! is bounded.

use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Score at which a peer is banned.
pub const BAN_THRESHOLD: u32 = 100;
/// Most peers banned at once; past this the ban closest to expiry is lifted early.
pub const MAX_BANNED: usize = 4096;
/// Longest ban; longer ones are cut to this.
pub const MAX_BAN_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Most addresses remembered for one banned peer.
pub const MAX_ADDRESSES_PER_BAN: usize = 8;

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

/// A ban in force.
#[derive(Debug)]
struct Ban {
    until: Instant,
    /// Where the peer was reachable when it was banned.
    addresses: Vec<Multiaddr>,
}

/// A ban that ended (expired, lifted by the operator, or pushed out of the full list): the
/// peer and where it may be dialed again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lifted {
    pub(crate) peer: PeerId,
    pub(crate) addresses: Vec<Multiaddr>,
}

/// Scores of connected peers and the bans in force.
#[derive(Debug)]
pub(crate) struct PeerBook {
    scores: HashMap<PeerId, u32>,
    bans: HashMap<PeerId, Ban>,
    ban_duration: Duration,
}

impl PeerBook {
    pub(crate) fn new(ban_duration: Duration) -> Self {
        Self { scores: HashMap::new(), bans: HashMap::new(), ban_duration }
    }

    /// Adds the penalty; returns `true` when this bans the peer (it was not banned before)
    /// for the configured time. Call [`PeerBook::ban`] then, to record the ban.
    pub(crate) fn penalise(&mut self, peer: PeerId, m: Misbehaviour) -> bool {
        if self.is_banned(&peer) {
            return false;
        }
        let score = self.scores.entry(peer).or_default();
        *score = score.saturating_add(m.penalty());
        if *score < BAN_THRESHOLD {
            return false;
        }
        self.scores.remove(&peer);
        true
    }

    /// The configured ban time, for misbehaviour.
    pub(crate) fn default_ban(&self) -> Duration {
        self.ban_duration
    }

    /// Bans `peer` for `duration` from `now` (at most [`MAX_BAN_DURATION`]), replacing any
    /// ban it had, and remembers up to [`MAX_ADDRESSES_PER_BAN`] of `addresses` (and those of
    /// the ban it replaces). When the list is full, the ban closest to expiry ends early and
    /// is returned.
    pub(crate) fn ban(
        &mut self,
        peer: PeerId,
        duration: Duration,
        mut addresses: Vec<Multiaddr>,
        now: Instant,
    ) -> Option<Lifted> {
        self.scores.remove(&peer);
        let mut evicted = None;
        if let Some(old) = self.bans.remove(&peer) {
            addresses.extend(old.addresses);
        } else if self.bans.len() >= MAX_BANNED {
            if let Some(first) = self.bans.iter().min_by_key(|(_, b)| b.until).map(|(p, _)| *p) {
                evicted = self.unban(&first);
            }
        }
        let mut unique = Vec::with_capacity(addresses.len().min(MAX_ADDRESSES_PER_BAN));
        for a in addresses {
            if unique.len() < MAX_ADDRESSES_PER_BAN && !unique.contains(&a) {
                unique.push(a);
            }
        }
        self.bans.insert(peer, Ban { until: deadline(now, duration), addresses: unique });
        evicted
    }

    /// Lifts the ban of `peer`, if it has one.
    pub(crate) fn unban(&mut self, peer: &PeerId) -> Option<Lifted> {
        self.bans.remove(peer).map(|b| Lifted { peer: *peer, addresses: b.addresses })
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.contains_key(peer)
    }

    pub(crate) fn banned(&self) -> impl Iterator<Item = &PeerId> {
        self.bans.keys()
    }

    /// Lifts and returns the bans that expired by `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Lifted> {
        let expired: Vec<PeerId> =
            self.bans.iter().filter(|(_, b)| b.until <= now).map(|(p, _)| *p).collect();
        expired.iter().filter_map(|p| self.unban(p)).collect()
    }

    /// Forgets the score of a peer that disconnected (its ban, if any, stays).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.scores.remove(peer);
    }
}

/// `now + duration`, cut to [`MAX_BAN_DURATION`] and to what the clock can represent.
fn deadline(now: Instant, duration: Duration) -> Instant {
    let mut d = duration.min(MAX_BAN_DURATION);
    // Halving reaches zero, which always fits, in at most 64 steps.
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("address")
    }

    /// What `penalise` and then, if it says so, `ban` do, as the service calls them.
    fn penalise(book: &mut PeerBook, p: PeerId, m: Misbehaviour, now: Instant) -> bool {
        let banned = book.penalise(p, m);
        if banned {
            book.ban(p, book.default_ban(), Vec::new(), now);
        }
        banned
    }

    #[test]
    fn severe_misbehaviour_bans_at_once_until_expiry() {
        let mut book = PeerBook::new(TEN);
        let (p, now) = (PeerId::random(), Instant::now());
        assert!(penalise(&mut book, p, Misbehaviour::UndecodableMessage, now));
        assert!(book.is_banned(&p));
        assert!(!penalise(&mut book, p, Misbehaviour::InvalidBlock, now), "already banned");
        assert!(book.expire(now + Duration::from_secs(9)).is_empty());
        let lifted = book.expire(now + TEN);
        assert_eq!(lifted, vec![Lifted { peer: p, addresses: Vec::new() }]);
        assert!(!book.is_banned(&p));
    }

    #[test]
    fn minor_misbehaviour_accumulates_and_disconnect_forgets() {
        let mut book = PeerBook::new(TEN);
        let (p, now) = (PeerId::random(), Instant::now());
        assert!(!penalise(&mut book, p, Misbehaviour::InvalidResponse, now));
        book.forget(&p);
        assert!(!penalise(&mut book, p, Misbehaviour::InvalidResponse, now));
        assert!(penalise(&mut book, p, Misbehaviour::InvalidResponse, now));
        for _ in 0..19 {
            assert!(!penalise(&mut book, PeerId::random(), Misbehaviour::Unwanted, now));
        }
    }

    #[test]
    fn ban_list_is_bounded_and_reports_the_ban_it_lifts() {
        let mut book = PeerBook::new(TEN);
        let now = Instant::now();
        let first = PeerId::random();
        assert_eq!(book.ban(first, TEN, vec![addr(1)], now), None);
        for i in 1..MAX_BANNED {
            let at = now + Duration::from_millis(i as u64);
            assert_eq!(book.ban(PeerId::random(), TEN, Vec::new(), at), None);
        }
        let evicted = book.ban(PeerId::random(), TEN, Vec::new(), now + TEN);
        assert_eq!(evicted, Some(Lifted { peer: first, addresses: vec![addr(1)] }));
        assert_eq!(book.banned().count(), MAX_BANNED);
    }

    #[test]
    fn operator_ban_replaces_the_expiry_and_unban_returns_the_addresses() {
        let mut book = PeerBook::new(TEN);
        let (p, now) = (PeerId::random(), Instant::now());
        book.ban(p, Duration::from_secs(3600), vec![addr(1), addr(1)], now);
        // A shorter ban replaces the longer one; addresses are merged without duplicates.
        book.ban(p, Duration::from_secs(5), vec![addr(2), addr(1)], now);
        assert!(book.expire(now + Duration::from_secs(4)).is_empty());
        assert_eq!(book.unban(&p), Some(Lifted { peer: p, addresses: vec![addr(2), addr(1)] }));
        assert_eq!(book.unban(&p), None, "nothing left to lift");
        assert!(!book.is_banned(&p));
        // The address list is bounded.
        let many = (0..100).map(addr).collect();
        book.ban(p, TEN, many, now);
        let lifted = book.unban(&p).expect("banned");
        assert_eq!(lifted.addresses.len(), MAX_ADDRESSES_PER_BAN);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let mut book = PeerBook::new(TEN);
        let (p, now) = (PeerId::random(), Instant::now());
        book.ban(p, Duration::MAX, Vec::new(), now);
        assert!(book.expire(now + MAX_BAN_DURATION - Duration::from_secs(1)).is_empty());
        assert!(book.is_banned(&p));
        assert_eq!(deadline(now, Duration::ZERO), now);
    }
}
