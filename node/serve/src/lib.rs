//! The node's serving service: the worker and the paying gateway, with their I/O.
//!
//! The pure parts (the `/bitorch/stage/1` messages, route planning, failover, vouchers)
//! live in `bitorch-compute` and are tested without a network; this crate runs them as the
//! node's actors and connects them to the network ([`bitorch_network::Handle`]) and to the
//! chain (the chain service's typed queries, [`bitorch_service::query`]). The binary only
//! wires it up.
//!
//! A chat request's path: the API (`bitorch-api`) calls [`GatewayBackend`] (the gateway),
//! which plans a route over the workers, pays from a channel (a job on chain that pays for
//! many requests), and drives the stages through [`NodeTransport`]: its own worker by its
//! handle, other nodes' over `/bitorch/stage/1`, signing each stage's vouchers as it goes. On
//! those nodes the network hands the request to [`serve_stages`] (the worker side), which
//! decodes it, looks up the session's job and client on chain, and passes it to the
//! [`bitorch_compute::Worker`] actor that runs the stage (`bitorch-inference`) and checks the
//! client's authorization and vouchers. [`submit_claims`] then claims the pay of each closed
//! session on chain with its latest voucher, signed by the worker.
//!
//! - [`store`]: the content store: a GGUF model split into verified, content-addressed
//!   chunks ([`Store::import_gguf`]), downloads that resume, stages loaded from the chunks;
//! - [`pull`]: [`pull`] a model's chunks from many peers at once, [`serve_pieces`] to
//!   others, [`keep_provided`] in the DHT;
//! - [`model`]: a stored model ([`Described`]), load a stage of it, and pick the
//!   layers (`--layers START..END | auto | auto:N`, [`least_served`]);
//! - [`chain`]: [`register`] the model, [`submit_and_wait`] for our transactions;
//! - [`worker`]: [`spawn_worker`] (measures the stage, then runs it as an actor),
//!   [`serve_stages`] (peers' stage requests), [`submit_claims`] (the worker's pay),
//!   [`announce`] / [`keep_announced`] / [`withdraw`] (the DHT record with free sessions and
//!   measured speed);
//! - [`gateway`]: [`GatewayBackend`], the API's backend: routing, channels and the job opened
//!   ahead;
//! - [`traces`]: the leaves of the worker's claimed sessions, kept on disk for audits, and the
//!   openings made from them ([`serve_stages`] answers assigned auditors' opening requests);
//! - [`auditor`]: [`run_auditor`], the validator's side of the chain's audits: it fetches the
//!   openings assigned to it, re-executes, and commits and reveals its finding.

pub mod auditor;
pub mod chain;
pub mod error;
pub mod gateway;
pub mod model;
pub mod pull;
pub mod store;
pub mod traces;
pub mod worker;

pub use auditor::{run_auditor, Auditor, Pretend};
pub use chain::{register, submit_and_wait};
pub use error::{Error, Result};
pub use gateway::{GatewayBackend, GatewayOptions, KeyLimits, NodeTransport, Payer, Peer};
pub use model::{least_served, parse_layers, Described, LayerChoice};
pub use pull::{
    keep_provided, needed_chunks, pull, serve_pieces, Progress, PullError, PullOptions, PullReport,
    SeedOptions, SeedStats,
};
pub use store::{Imported, Store, StoreError, StoredModel};
pub use traces::{Page, TraceStore};
pub use worker::{
    announce, choose_layers, keep_announced, serve_stages, spawn_worker, submit_claims, withdraw,
    StageWorker, UnpaidPolicy,
};

/// The log target of this crate.
const TARGET: &str = "serve";
use bitorch_primitives::saturating_u32 as u32_of;
