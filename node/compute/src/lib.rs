//! The transport-independent core of Bitorch's distributed inference.
//!
//! A model no single peer holds whole is run as a chain of **stages**, each a contiguous range
//! of its layers served by a worker; a gateway drives a generation along that chain.
//!
//! - [`protocol`]: the `/bitorch/stage/1` messages ([`StageRequest`], [`StageResponse`]),
//!   SCALE-encoded behind a version byte and decoded from untrusted bytes with size, depth and
//!   position limits into typed errors.
//! - [`worker`]: [`Worker`] owns one loaded [`bitorch_inference::Stage`] and serves sessions,
//!   each with its KV cache and activation-commitment trace, under a session cap, a cached
//!   positions budget and an idle timeout; a session of a paid job goes on only as its
//!   client acknowledges the work with vouchers ([`bitorch_primitives::receipt::Voucher`]),
//!   the latest of which is the worker's claim on the jobs pallet ([`Worker::take_claims`]).
//!   [`worker::spawn`] runs it as an actor on its own thread behind a [`WorkerHandle`].
//! - [`route`]: what workers announce ([`WorkerInfo`]) and [`plan_route`], the route of least
//!   estimated latency covering all layers exactly.
//! - [`gateway`]: [`Gateway::generate`] runs a generation over any [`StageTransport`]: opens a
//!   session per stage, prefills, streams sampled tokens, fails over to other workers (replaying
//!   the session's inputs, so the output is unchanged), signs the stages' vouchers, and
//!   checks that their commitments chain.
//!
//! No I/O of its own: the node's libp2p request-response behaviour implements
//! [`StageTransport`] and calls [`Worker::handle_bytes`] (through a [`WorkerHandle`]); tests use
//! an in-memory transport. Threads: one per spawned worker. Channels: each worker's bounded
//! request queue.
//!
//! Feature `engine` (default): the worker and the gateway, which need candle. Without it the
//! crate is the protocol and route planning alone (what the fuzz target builds).

pub mod error;
#[cfg(feature = "engine")]
pub mod gateway;
pub mod protocol;
pub mod route;
#[cfg(feature = "engine")]
pub mod worker;

pub use error::{DecodeError, Error, PlanError, StageFailure, TransportError, WorkerStopped};
#[cfg(feature = "engine")]
pub use gateway::{
    Failed, Gateway, GatewayConfig, GatewayGeneration, GatewayRequest, GatewayStats,
    RejectedReceipt, StageReceipt, StageTransport,
};
pub use protocol::{
    Activation, Closure, Floats, Limits, Logits, ModelId, OpeningRequest, SessionAuth, SessionId,
    StageError, StageInfo, StageRequest, StageResponse, TraceOpening, OPENING_PAGE_BYTES,
    PROTOCOL_NAME,
};
pub use route::{plan_priced, plan_route, plan_route_with, Bans, CostModel, Route, WorkerInfo};
#[cfg(feature = "engine")]
pub use worker::{
    Cheat, ClaimedSession, WorkCounters, Worker, WorkerConfig, WorkerHandle, WorkerStats,
};
