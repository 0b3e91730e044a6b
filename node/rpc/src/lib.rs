//! JSON-RPC for a Bitorch node (`jsonrpsee`, HTTP and WebSocket on one port).
//!
//! Method names follow the Substrate ecosystem where one exists (`system_*`, `chain_*`,
//! `author_*`); our own typed methods live under `bitorch_*`. SCALE bytes travel as `0x` hex.
//! Every error is a JSON-RPC error object whose message says what was wrong; a rejected
//! transaction changes nothing.

use bitorch_primitives::{keys, AccountId, Hash, Header};
use bitorch_service::{Event, Handle, TxStatus};
use jsonrpsee::server::{
    PendingSubscriptionSink, RpcModule, Server, ServerHandle, SubscriptionMessage,
};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// Registers an async method whose body evaluates to an `RpcResult`.
macro_rules! method {
    ($m:expr, $name:literal, |$p:ident, $ctx:ident| $body:expr) => {
        $m.register_async_method($name, |$p: jsonrpsee::types::Params<'static>, $ctx: std::sync::Arc<crate::Ctx>, _| async move {
            let r: crate::methods::RpcResult = $body;
            r
        })?;
    };
}

mod bitorch;
mod error;
mod methods;
pub mod origin;
pub use error::Error;

/// Largest request body accepted, in bytes.
pub const MAX_REQUEST_BYTES: u32 = 4 * 1024 * 1024;
/// Most simultaneous connections.
pub const MAX_CONNECTIONS: u32 = 256;

/// JSON-RPC error codes.
pub mod codes {
    /// Invalid parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The transaction is invalid (as in Substrate).
    pub const INVALID_TRANSACTION: i32 = 1010;
    /// The pool refused the transaction for a reason other than validity.
    pub const POOL: i32 = 1012;
    /// Not found.
    pub const NOT_FOUND: i32 = 4004;
    /// Internal error of the node.
    pub const INTERNAL: i32 = 1000;
    /// The method is an operator method and this server serves safe methods only.
    pub const UNSAFE: i32 = -32601;
}

pub(crate) fn err(code: i32, msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, msg.into(), None::<()>)
}

/// Static facts the RPC reports.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// `system_name`.
    pub name: String,
    /// `system_version`.
    pub version: String,
}

/// Which methods the RPC serves, as Substrate's `--rpc-methods`: `Unsafe` adds the operator
/// methods that change what the node does (`system_banPeer`, `system_unbanPeer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcMethods {
    /// Only methods that read state or submit transactions.
    Safe,
    /// Operator methods too.
    Unsafe,
}

/// The networked node, for the RPC: its network service and its published status.
#[derive(Clone)]
pub struct Network {
    /// The libp2p service.
    pub handle: bitorch_network::Handle,
    /// Consensus height, round and sync state.
    pub status: bitorch_service::status::StatusReceiver,
}

/// The RPC's context.
pub struct Ctx {
    pub(crate) chain: Handle,
    pub(crate) info: NodeInfo,
    pub(crate) network: Option<bitorch_network::Handle>,
    pub(crate) status: Option<bitorch_service::status::StatusReceiver>,
    pub(crate) methods: RpcMethods,
}

/// Serializes a header the way Substrate does (numbers as hex), plus author and timestamp.
pub fn header_json(h: &Header) -> Value {
    json!({
        "parentHash": h.parent_hash,
        "number": format!("0x{:x}", h.number),
        "stateRoot": h.state_root,
        "extrinsicsRoot": h.extrinsics_root,
        "digest": { "logs": [] },
        "author": keys::to_ss58(&h.author),
        "timestamp": h.timestamp_ms,
    })
}

pub(crate) fn parse_hash(s: &str) -> Result<Hash, ErrorObjectOwned> {
    let bytes = keys::decode_hex(s).map_err(|e| err(codes::INVALID_PARAMS, e.to_string()))?;
    if bytes.len() != 32 {
        return Err(err(
            codes::INVALID_PARAMS,
            format!("expected a 32-byte hash, got {} bytes", bytes.len()),
        ));
    }
    Ok(Hash::from_slice(&bytes))
}

pub(crate) fn parse_address(s: &str) -> Result<AccountId, ErrorObjectOwned> {
    keys::parse_account(s).map_err(|e| err(codes::INVALID_PARAMS, e.to_string()))
}

/// Builds the RPC module; `network` is `None` for a node without networking (`--dev`).
pub fn module(
    chain: Handle,
    info: NodeInfo,
    network: Option<Network>,
    methods: RpcMethods,
) -> Result<RpcModule<Ctx>, Error> {
    let (network, status) = match network {
        Some(n) => (Some(n.handle), Some(n.status)),
        None => (None, None),
    };
    let mut m = RpcModule::new(Ctx { chain, info, network, status, methods });
    methods::register(&mut m)?;
    m.register_subscription(
        "chain_subscribeNewHeads",
        "chain_newHead",
        "chain_unsubscribeNewHeads",
        |_p: Params<'static>, sink, ctx, _| async move { heads(sink, ctx).await },
    )?;
    m.register_subscription(
        "chain_subscribeFinalizedHeads",
        "chain_finalizedHead",
        "chain_unsubscribeFinalizedHeads",
        |_p: Params<'static>, sink, ctx, _| async move { heads(sink, ctx).await },
    )?;
    m.register_subscription(
        "author_submitAndWatchExtrinsic",
        "author_extrinsicUpdate",
        "author_unwatchExtrinsic",
        |p: Params<'static>, sink, ctx, _| async move { watch(p, sink, ctx).await },
    )?;
    Ok(m)
}

type SubResult = jsonrpsee::core::SubscriptionResult;

fn message(v: &Value) -> Result<SubscriptionMessage, serde_json::Error> {
    Ok(serde_json::value::to_raw_value(v)?.into())
}

async fn heads(sink: PendingSubscriptionSink, ctx: std::sync::Arc<Ctx>) -> SubResult {
    // Every imported block is final (instant finality), so new and finalized heads coincide.
    let mut events = ctx.chain.subscribe();
    let sink = sink.accept().await?;
    loop {
        tokio::select! {
            _ = sink.closed() => return Ok(()),
            ev = events.recv() => match ev {
                Ok(Event::NewBlock(h)) => {
                    let msg = message(&header_json(&h))?;
                    if sink.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    return Err("subscriber too slow; resubscribe".into());
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

fn status_json(s: &TxStatus) -> Value {
    match s {
        TxStatus::Ready => json!("ready"),
        TxStatus::Future => json!("future"),
        TxStatus::InBlock(h) => json!({ "inBlock": h }),
        TxStatus::Finalized(h) => json!({ "finalized": h }),
        TxStatus::Invalid(why) => json!({ "invalid": why }),
        TxStatus::Dropped => json!("dropped"),
    }
}

async fn watch(
    p: Params<'static>,
    pending: PendingSubscriptionSink,
    ctx: std::sync::Arc<Ctx>,
) -> SubResult {
    let bytes = match p
        .one::<String>()
        .map_err(|e| err(codes::INVALID_PARAMS, e.message().to_string()))
        .and_then(|s| methods::decode_extrinsic_hex(&s))
    {
        Ok(b) => b,
        Err(e) => {
            pending.reject(e).await;
            return Ok(());
        }
    };
    // Subscribe before submitting so no status is missed.
    let mut events = ctx.chain.subscribe();
    let hash = match methods::submit(&ctx, bytes).await {
        Ok(h) => h,
        Err(e) => {
            pending.reject(e).await;
            return Ok(());
        }
    };
    let sink = pending.accept().await?;
    loop {
        tokio::select! {
            _ = sink.closed() => return Ok(()),
            ev = events.recv() => match ev {
                Ok(Event::Tx(h, status)) if h == hash => {
                    let done = matches!(status, TxStatus::Finalized(_) | TxStatus::Invalid(_) | TxStatus::Dropped);
                    let msg = message(&status_json(&status))?;
                    if sink.send(msg).await.is_err() || done {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    return Err("watcher fell behind; check the transaction with chain_getBlock".into());
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

/// Starts the server on `addr`, serving browser pages only from `origins`.
pub async fn start(
    addr: SocketAddr,
    module: RpcModule<Ctx>,
    origins: bitorch_primitives::origins::Origins,
) -> Result<(ServerHandle, SocketAddr), Error> {
    let config = jsonrpsee::server::ServerConfig::builder()
        .max_request_body_size(MAX_REQUEST_BYTES)
        .max_response_body_size(64 * 1024 * 1024)
        .max_connections(MAX_CONNECTIONS)
        .build();
    let server = Server::builder()
        .set_config(config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(origin::OriginLayer::new(origins)))
        .build(addr)
        .await
        .map_err(|e| Error::Bind { addr, reason: e.to_string() })?;
    let local = server.local_addr().map_err(|e| Error::Bind { addr, reason: e.to_string() })?;
    Ok((server.start(module), local))
}
