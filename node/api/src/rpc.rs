//! JSON-RPC generation methods, for the node to merge into its server:
//!
//! - `bitorch_generate(params) -> { text, finish_reason, usage }`: waits for the whole answer.
//! - `bitorch_subscribeGeneration(params)`: notifications (`bitorch_generation`) of
//!   `{ "text": piece }` as the answer grows, then one `{ "finished": { finish_reason, usage } }`
//!   or `{ "error": { message, code, status } }`; `bitorch_unsubscribeGeneration` (or closing
//!   the connection) cancels the generation.
//! - `bitorch_gatewayStats() -> { generations, jobsOpened, jobsAheadOpened, jobsAheadUsed,
//!   jobsAheadReplaced, channelRequests, channelsClosed, channelJob, aheadJob, lastReplacedJob,
//!   refusedNoRoute, failovers, sessionsOpened }`:
//!   what the backend has done since the node started ([`crate::BackendStats`]).
//!
//! `params` is one object, by name or as the single positional parameter, with the fields of
//! an OpenAI chat completion request (`model`, `messages`, `max_tokens`, `temperature`,
//! `top_p`, `seed`, `stop`), or `prompt` (and optionally `system`) instead of `messages`, and
//! optionally `account`, the SS58 address of the paying account (the node's API account when
//! absent). Errors are JSON-RPC error objects with a code from [`codes`] and data
//! `{ "status": <HTTP status>, "code": <kind> }`.

use crate::backend::{Backend, Event, Finished};
use crate::{wire, BackendError, Error};
use jsonrpsee::server::{PendingSubscriptionSink, RpcModule, SubscriptionMessage};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::{json, Value};
use std::sync::Arc;

/// JSON-RPC error codes of the generation methods.
pub mod codes {
    /// Invalid parameters (a bad request).
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal error of the node.
    pub const INTERNAL: i32 = 1000;
    /// The model is not served.
    pub const NOT_FOUND: i32 = 4004;
    /// No route or workers for the model now.
    pub const UNAVAILABLE: i32 = 4503;
    /// At capacity; retry later.
    pub const BUSY: i32 = 4429;
    /// The paying account cannot pay.
    pub const PAYMENT: i32 = 4402;
    /// The API token is refused.
    pub const UNAUTHORIZED: i32 = 4401;
}

/// The context of the generation methods.
pub struct RpcContext {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for RpcContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcContext").finish_non_exhaustive()
    }
}

fn rpc_error(e: &BackendError) -> ErrorObjectOwned {
    let code = match e {
        BackendError::UnknownModel { .. } => codes::NOT_FOUND,
        BackendError::BadRequest { .. } => codes::INVALID_PARAMS,
        BackendError::Unavailable(_) => codes::UNAVAILABLE,
        BackendError::Busy(_) | BackendError::RateLimited { .. } => codes::BUSY,
        BackendError::Payment(_) => codes::PAYMENT,
        BackendError::Unauthorized(_) => codes::UNAUTHORIZED,
        BackendError::Internal(_) => codes::INTERNAL,
    };
    ErrorObjectOwned::owned(code, e.to_string(), Some(error_data(e)))
}

fn error_data(e: &BackendError) -> Value {
    json!({"status": e.status(), "code": e.code(), "param": e.param()})
}

fn finished_json(f: &Finished) -> Value {
    json!({
        "finish_reason": f.finish_reason.as_str(),
        "usage": {
            "prompt_tokens": f.usage.prompt_tokens,
            "completion_tokens": f.usage.completion_tokens,
            "total_tokens": f.usage.total_tokens(),
        },
    })
}

fn parse(p: &Params<'_>) -> Result<crate::ChatRequest, BackendError> {
    let value: Value = if p.is_object() { p.parse() } else { p.one() }.map_err(|e| {
        BackendError::bad_request(format!(
            "expected one object with model and messages (or prompt): {}",
            e.message()
        ))
    })?;
    let (request, _) = wire::from_value(value)?.into_request()?;
    Ok(request)
}

async fn generate(p: Params<'static>, ctx: Arc<RpcContext>) -> Result<Value, ErrorObjectOwned> {
    let request = parse(&p).map_err(|e| rpc_error(&e))?;
    let mut events = ctx.backend.generate(request).await.map_err(|e| rpc_error(&e))?;
    let mut text = String::new();
    loop {
        match events.recv().await {
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Finished(f)) => {
                let mut out = finished_json(&f);
                out["text"] = Value::String(text);
                return Ok(out);
            }
            Some(Event::Error(e)) => return Err(rpc_error(&e)),
            None => {
                return Err(rpc_error(&BackendError::Internal(
                    "the backend stopped without finishing the answer".into(),
                )))
            }
        }
    }
}

fn message(v: &Value) -> Result<SubscriptionMessage, serde_json::Error> {
    Ok(serde_json::value::to_raw_value(v)?.into())
}

async fn subscribe(
    p: Params<'static>,
    pending: PendingSubscriptionSink,
    ctx: Arc<RpcContext>,
) -> jsonrpsee::core::SubscriptionResult {
    let started = match parse(&p) {
        Ok(request) => ctx.backend.generate(request).await,
        Err(e) => Err(e),
    };
    let mut events = match started {
        Ok(events) => events,
        Err(e) => {
            pending.reject(rpc_error(&e)).await;
            return Ok(());
        }
    };
    let sink = pending.accept().await?;
    loop {
        // Leaving this loop drops `events`, which cancels the generation.
        let event = tokio::select! {
            _ = sink.closed() => return Ok(()),
            ev = events.recv() => ev,
        };
        let (note, last) = match event {
            Some(Event::Text(piece)) => (json!({ "text": piece }), false),
            Some(Event::Finished(f)) => (json!({ "finished": finished_json(&f) }), true),
            Some(Event::Error(e)) => {
                (json!({ "error": { "message": e.to_string(), "data": error_data(&e) } }), true)
            }
            None => {
                let e = BackendError::Internal("the backend stopped without finishing".into());
                (json!({ "error": { "message": e.to_string(), "data": error_data(&e) } }), true)
            }
        };
        if sink.send(message(&note)?).await.is_err() || last {
            return Ok(());
        }
    }
}

/// The generation methods over `backend`, to merge into the node's JSON-RPC server.
pub fn rpc_module(backend: Arc<dyn Backend>) -> Result<RpcModule<RpcContext>, Error> {
    let mut m = RpcModule::new(RpcContext { backend });
    m.register_async_method("bitorch_generate", |p, ctx, _| generate(p, ctx))?;
    m.register_async_method("bitorch_gatewayStats", |_p, ctx, _| async move {
        serde_json::to_value(ctx.backend.stats().await)
            .map_err(|e| ErrorObjectOwned::owned(codes::INTERNAL, e.to_string(), None::<()>))
    })?;
    m.register_subscription(
        "bitorch_subscribeGeneration",
        "bitorch_generation",
        "bitorch_unsubscribeGeneration",
        |p, pending, ctx, _| subscribe(p, pending, ctx),
    )?;
    Ok(m)
}
