//! RPC server errors.

use std::net::SocketAddr;

/// Why the RPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("cannot listen for RPC on {addr}: {reason} (is the port in use? pass --rpc-port)")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// A method name was registered twice (a bug).
    #[error("RPC method registration failed: {0}")]
    Register(#[from] jsonrpsee::core::RegisterMethodError),
}
