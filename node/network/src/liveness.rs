//! Dead connections are closed within seconds. A link that silently stops carrying packets (a
//! cable pulled, a NAT mapping gone, a laptop's Wi-Fi dropping) keeps its TCP connection open
//! for minutes: requests on it wait for their own timeouts (a stage's 30 s) before anybody
//! notices. Every connection is pinged (libp2p's ping, every [`PING_INTERVAL`]); one that has
//! answered no ping for [`Liveness::deadline`] is closed, which fails its requests at once (a
//! gateway then fails over to another worker) and lets the peer be dialed afresh.

use libp2p::swarm::ConnectionId;
use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often each connection is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// When each open connection last showed it works (opened, or answered a ping).
#[derive(Debug)]
pub struct Liveness {
    deadline: Duration,
    last: HashMap<ConnectionId, (PeerId, Instant)>,
}

impl Liveness {
    /// Connections silent for `deadline` are dead.
    pub fn new(deadline: Duration) -> Self {
        Self { deadline, last: HashMap::new() }
    }

    /// How long a connection may answer no ping.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A connection opened at `now`.
    pub fn opened(&mut self, id: ConnectionId, peer: PeerId, now: Instant) {
        self.last.insert(id, (peer, now));
    }

    /// A ping answered on `id` at `now`.
    pub fn answered(&mut self, id: ConnectionId, now: Instant) {
        if let Some((_, last)) = self.last.get_mut(&id) {
            *last = (*last).max(now);
        }
    }

    /// Every connection counts as having answered at `now` (after this node itself was held
    /// up, when their answers may still be unread).
    pub fn restart(&mut self, now: Instant) {
        for (_, last) in self.last.values_mut() {
            *last = (*last).max(now);
        }
    }

    /// A connection closed.
    pub fn closed(&mut self, id: ConnectionId) {
        self.last.remove(&id);
    }

    /// The connections silent for longer than the deadline at `now`, forgotten here (the
    /// caller closes them).
    pub fn dead(&mut self, now: Instant) -> Vec<(ConnectionId, PeerId)> {
        let deadline = self.deadline;
        let dead: Vec<(ConnectionId, PeerId)> = self
            .last
            .iter()
            .filter(|(_, (_, last))| now.saturating_duration_since(*last) > deadline)
            .map(|(id, (peer, _))| (*id, *peer))
            .collect();
        for (id, _) in &dead {
            self.last.remove(id);
        }
        dead
    }

    /// Connections tracked.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_dead_only_after_the_deadline_without_an_answer() {
        let mut l = Liveness::new(Duration::from_secs(8));
        let t0 = Instant::now();
        let (a, b) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        let (pa, pb) = (PeerId::random(), PeerId::random());
        l.opened(a, pa, t0);
        l.opened(b, pb, t0);
        assert!(l.dead(t0 + Duration::from_secs(8)).is_empty(), "at the deadline: still alive");
        // b answers; a stays silent.
        l.answered(b, t0 + Duration::from_secs(5));
        assert_eq!(l.dead(t0 + Duration::from_millis(8_001)), vec![(a, pa)]);
        // a is forgotten once reported; b lives until 8 s after its answer.
        assert_eq!(l.len(), 1);
        assert!(l.dead(t0 + Duration::from_secs(13)).is_empty());
        assert_eq!(l.dead(t0 + Duration::from_millis(13_001)), vec![(b, pb)]);
        assert!(l.is_empty());
    }

    #[test]
    fn answers_on_closed_or_unknown_connections_are_ignored_and_late_answers_do_not_go_back() {
        let mut l = Liveness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let a = ConnectionId::new_unchecked(1);
        l.answered(a, t0);
        assert!(l.is_empty());
        l.opened(a, PeerId::random(), t0 + Duration::from_secs(1));
        // An answer stamped before the last one does not move it back.
        l.answered(a, t0);
        assert!(l.dead(t0 + Duration::from_secs(3)).is_empty());
        l.restart(t0 + Duration::from_secs(10));
        assert!(l.dead(t0 + Duration::from_secs(12)).is_empty(), "restarted at 10 s");
        l.closed(a);
        assert!(l.dead(t0 + Duration::from_secs(60)).is_empty());
    }
}
