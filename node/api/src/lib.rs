//! The node's user-facing inference APIs, over a pluggable [`Backend`].
//!
//! - [`openai`]: an OpenAI-compatible HTTP endpoint (`axum`, default `127.0.0.1:8080`):
//!   `GET /v1/models`, `POST /v1/chat/completions` with and without `stream: true` (SSE chunks
//!   ending in `data: [DONE]`), errors in OpenAI's shape. [`serve`] binds it and runs it as one
//!   task until the node's cancellation token fires.
//! - [`rpc`]: JSON-RPC methods `bitorch_generate` and the subscription
//!   `bitorch_subscribeGeneration`, as an [`RpcModule`](jsonrpsee::RpcModule) the node merges
//!   into its server ([`rpc_module`]).
//! - [`Backend`]: what both need from the node: the models served, and a generation started
//!   from a [`ChatRequest`] that answers with a bounded channel of [`Event`]s (text pieces, then
//!   finished or a typed [`BackendError`], which maps to an HTTP status). Dropping the receiver
//!   cancels the generation. The network gateway implements it in the node; [`LocalBackend`]
//!   runs an [`Engine`](bitorch_inference::Engine) in this process (one generation at a time on
//!   a blocking thread, a small bounded queue, "busy" beyond it).
//!
//! ```no_run
//! use bitorch_api::{serve, LocalBackend, LocalOptions};
//! use bitorch_inference::{Engine, EngineOptions};
//! use std::sync::Arc;
//! # async fn run() -> anyhow::Result<()> {
//! let engine = Arc::new(Engine::load("model.gguf", &EngineOptions::default())?);
//! let backend = Arc::new(LocalBackend::new(engine, LocalOptions::new("smollm2-135m")));
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let addr = serve("127.0.0.1:8080".parse()?, backend.clone(), cancel.clone()).await?;
//! let rpc = bitorch_api::rpc_module(backend)?; // merge into the node's JSON-RPC module
//! # drop((addr, rpc)); Ok(()) }
//! ```

pub mod backend;
pub mod error;
pub mod local;
pub mod openai;
pub mod rpc;
mod web;
mod wire;

pub use backend::{
    Backend, BackendStats, BoxFuture, ChatRequest, Event, Events, FinishReason, Finished, Message,
    ModelInfo, Payer, Role, RouteStage, Served, TokensOnly, Usage,
};
pub use error::{BackendError, Error};
pub use local::{LocalBackend, LocalOptions};
pub use openai::{router, serve, serve_with, HttpConfig};
pub use rpc::{rpc_module, RpcContext};
