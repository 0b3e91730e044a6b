//! What the networked node reports about itself: consensus progress and sync state, published
//! on a `tokio::sync::watch` channel that the RPC reads (`system_health`,
//! `bitorch_consensusState`).

/// A snapshot of the networked node's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The height consensus is deciding (best block + 1).
    pub height: u64,
    /// The round of that height, while this node is a validator running it.
    pub round: Option<u32>,
    /// Whether this node is in the validator set of `height`.
    pub validating: bool,
    /// Whether the node is catching up: its last sync request came back with a full batch of
    /// blocks, so its peers hold more than it has imported.
    pub syncing: bool,
}

/// The sending side, owned by the networked node.
pub type StatusSender = tokio::sync::watch::Sender<NodeStatus>;
/// The receiving side, for the RPC.
pub type StatusReceiver = tokio::sync::watch::Receiver<NodeStatus>;

/// A new status channel.
pub fn channel() -> (StatusSender, StatusReceiver) {
    tokio::sync::watch::channel(NodeStatus::default())
}
