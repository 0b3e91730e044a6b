//! The services of a Bitorch node: the chain (RocksDB-backed state and the block import path),
//! the transaction pool, dev block production, and the networked node (consensus, block sync
//! and transaction relay, [`p2p`]).
//!
//! One task, [`service::spawn`], owns the chain and the pool; others talk to it through a
//! cloneable [`service::Handle`] whose typed queries and commands ([`query`]) go over a
//! bounded channel and get answers on oneshots. Events (new blocks, transaction status) go out
//! on a bounded broadcast channel. In `--dev`, [`service::spawn_dev_authoring`] authors,
//! imports and finalizes a block every block time as the single validator; on a network,
//! [`p2p`] feeds decided blocks (and blocks synced from peers) into the same
//! [`chain::Chain::import_block`].
//!
//! A validator keeps the consensus write-ahead log in a file ([`wal::FileWal`]), so that after
//! a crash it replays the height it was deciding instead of voting again.

pub mod chain;
pub mod error;
pub mod p2p;
pub mod pool;
pub mod query;
pub mod service;
pub mod status;
pub mod wal;

pub use chain::Chain;
pub use error::Error;
pub use pool::{PoolLimits, TxPool};
pub use query::{Account, FinalBlock, SpecInfo, Validators};
pub use service::{Event, Handle, TxStatus};
pub use status::NodeStatus;
