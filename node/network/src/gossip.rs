//! Gossip topics. Names carry a version so that a change of payload format is a new topic.

use libp2p::gossipsub::{IdentTopic, TopicHash};
use std::fmt;

/// A gossipsub topic of the Bitorch network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Signed transactions, as SCALE bytes.
    Transactions,
    /// Consensus messages (proposals, votes), in the consensus crate's wire format.
    Consensus,
}

impl Topic {
    /// Every topic; a node subscribes to all of them.
    pub const ALL: [Topic; 2] = [Topic::Transactions, Topic::Consensus];

    /// The topic's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Transactions => "/bitorch/tx/1",
            Topic::Consensus => "/bitorch/consensus/1",
        }
    }

    pub(crate) fn ident(self) -> IdentTopic {
        IdentTopic::new(self.name())
    }

    pub(crate) fn from_hash(hash: &TopicHash) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.ident().hash() == *hash)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_their_hash() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_hash(&t.ident().hash()), Some(t));
        }
        assert_eq!(Topic::from_hash(&IdentTopic::new("/other/1").hash()), None);
    }
}

/// Which gossip message a verdict is about: its id and the peer that forwarded it. Given with
/// every [`Event::Gossip`](crate::Event::Gossip) when [`Config::validate_gossip`](crate::Config)
/// is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipId {
    pub(crate) id: libp2p::gossipsub::MessageId,
    pub(crate) from: libp2p::PeerId,
}

/// What the node found a gossip message to be ([`Handle::gossip_verdict`](crate::Handle)).
/// Gossipsub forwards a message to the node's other peers only once it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Invalid (does not decode, forged): drop it, never forward it.
    Reject,
    /// Not invalid, but not worth forwarding (stale, not checkable here): drop it.
    Ignore,
}
