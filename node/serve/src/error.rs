//! Errors of the serving service.

use std::path::PathBuf;

/// What went wrong starting or running the worker or the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--layers` does not name a range of the model.
    #[error("--layers {given}: {reason}")]
    Layers {
        /// What was given.
        given: String,
        /// What is wrong with it, and what to pass instead.
        reason: String,
    },
    /// The model file is not GGUF.
    #[error("--serve-model takes a GGUF file for now; {} is not one", .0.display())]
    NotGguf(PathBuf),
    /// The model file cannot be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The model (or its tokenizer) cannot be opened or loaded.
    #[error("the model at {}: {source}", path.display())]
    Model {
        /// The file.
        path: PathBuf,
        /// Why.
        source: bitorch_inference::Error,
    },
    /// A stage cannot be loaded or run.
    #[error(transparent)]
    Inference(#[from] bitorch_inference::Error),
    /// The manifest made from the model is refused by the models pallet's rules.
    #[error("the model's manifest is invalid: {0}")]
    Manifest(String),
    /// The chain service stopped or failed a query.
    #[error("the chain service: {0}")]
    Chain(#[from] bitorch_service::Error),
    /// A transaction of ours was not included.
    #[error("{what}: {reason}")]
    Submit {
        /// What the transaction was for.
        what: &'static str,
        /// Why it failed (refused, invalid, dropped, timed out).
        reason: String,
    },
    /// The model's registration was included, but no active model has its manifest.
    #[error("the model registration was included but the model is not on chain")]
    NotRegistered,
    /// The stage's speed could not be measured (its first forward passes failed).
    #[error("measuring the stage's speed failed: {0}")]
    Benchmark(String),
    /// The worker's thread could not be started.
    #[error("starting the worker: {0}")]
    Spawn(String),
    /// The model store failed.
    #[error(transparent)]
    Store(Box<crate::store::StoreError>),
    /// A pull of a model's chunks failed.
    #[error(transparent)]
    Pull(Box<crate::pull::PullError>),
    /// The network refused the worker's announcement.
    #[error("announcing the worker in the DHT: {0}")]
    Announce(#[from] bitorch_network::Error),
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(Box::new(e))
    }
}

impl From<crate::pull::PullError> for Error {
    fn from(e: crate::pull::PullError) -> Self {
        Self::Pull(Box::new(e))
    }
}

/// The serving service's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
