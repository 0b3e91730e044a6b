//! Request-response methods.

use crate::{codes, err, header_json, parse_address, parse_hash, Ctx, Error};
use bitorch_primitives::{keys, Hash, SS58_PREFIX, TOKEN_DECIMALS, TOKEN_SYMBOL};
use bitorch_runtime::MAX_EXTRINSIC_BYTES;
use bitorch_service::{pool::PoolError, Error as ServiceError};
use jsonrpsee::server::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use parity_scale_codec::Encode;
use serde_json::{json, Value};

pub(crate) type RpcResult = Result<Value, ErrorObjectOwned>;

/// The network service, for an operator method: refused unless the server serves unsafe
/// methods, and on a node without networking.
fn operator_network(ctx: &Ctx) -> Result<&bitorch_network::Handle, ErrorObjectOwned> {
    if ctx.methods != crate::RpcMethods::Unsafe {
        return Err(err(
            codes::UNSAFE,
            "operator method refused: this RPC serves safe methods only (start the node with --rpc-methods unsafe, or keep the RPC on loopback)",
        ));
    }
    ctx.network
        .as_ref()
        .ok_or_else(|| err(codes::NOT_FOUND, "this node runs without networking (--dev)"))
}

fn parse_peer(s: &str) -> Result<bitorch_network::PeerId, ErrorObjectOwned> {
    s.parse().map_err(|e| err(codes::INVALID_PARAMS, format!("invalid peer id {s:?}: {e}")))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    err(codes::INTERNAL, e.to_string())
}

pub(crate) fn service_err(e: ServiceError) -> ErrorObjectOwned {
    match e {
        ServiceError::Pool(PoolError::Invalid(t)) => {
            err(codes::INVALID_TRANSACTION, format!("invalid transaction: {t}"))
        }
        ServiceError::Pool(p) => err(codes::POOL, p.to_string()),
        other => internal(other),
    }
}

/// Decodes the hex of an extrinsic, refusing oversized input before decoding it.
pub(crate) fn decode_extrinsic_hex(s: &str) -> Result<Vec<u8>, ErrorObjectOwned> {
    let max_hex = 2 + 2 * MAX_EXTRINSIC_BYTES;
    if s.len() > max_hex {
        return Err(err(
            codes::INVALID_TRANSACTION,
            format!("invalid transaction: {} hex characters; a transaction is at most {MAX_EXTRINSIC_BYTES} bytes", s.len()),
        ));
    }
    keys::decode_hex(s)
        .map_err(|e| err(codes::INVALID_PARAMS, format!("extrinsic must be 0x-prefixed hex: {e}")))
}

pub(crate) async fn submit(ctx: &Ctx, bytes: Vec<u8>) -> Result<Hash, ErrorObjectOwned> {
    ctx.chain.submit(bytes).await.map_err(service_err)
}

/// Optional positional parameter (absent, or null).
pub(crate) fn opt<T: serde::de::DeserializeOwned>(
    p: &Params<'_>,
    index: usize,
) -> Result<Option<T>, ErrorObjectOwned> {
    let all: Vec<Value> = if p.is_object() || p.as_str().is_none() {
        Vec::new()
    } else {
        p.parse()
            .map_err(|e: ErrorObjectOwned| err(codes::INVALID_PARAMS, e.message().to_string()))?
    };
    match all.get(index) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| err(codes::INVALID_PARAMS, format!("parameter {index}: {e}"))),
    }
}

pub(crate) fn required<T: serde::de::DeserializeOwned>(
    p: &Params<'_>,
    index: usize,
    what: &str,
) -> Result<T, ErrorObjectOwned> {
    opt(p, index)?
        .ok_or_else(|| err(codes::INVALID_PARAMS, format!("missing parameter {index}: {what}")))
}

fn parse_number(v: &Value) -> Result<u64, ErrorObjectOwned> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            err(codes::INVALID_PARAMS, "block number must be a non-negative integer")
        }),
        Value::String(s) => {
            let r = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            r.map_err(|_| err(codes::INVALID_PARAMS, format!("'{s}' is not a block number")))
        }
        _ => Err(err(codes::INVALID_PARAMS, "block number must be a number or hex string")),
    }
}

pub(crate) fn register(m: &mut RpcModule<Ctx>) -> Result<(), Error> {
    method!(m, "system_name", |_p, ctx| Ok(json!(ctx.info.name)));
    method!(m, "system_version", |_p, ctx| Ok(json!(ctx.info.version)));
    method!(m, "system_chain", |_p, ctx| {
        Ok(json!(ctx.chain.spec().await.map_err(internal)?.name))
    });
    method!(m, "system_chainType", |_p, ctx| {
        Ok(json!(ctx.chain.spec().await.map_err(internal)?.chain_type))
    });
    method!(m, "system_properties", |_p, _ctx| Ok(json!({
        "tokenSymbol": TOKEN_SYMBOL,
        "tokenDecimals": TOKEN_DECIMALS,
        "ss58Format": SS58_PREFIX,
    })));
    method!(m, "system_health", |_p, ctx| {
        let (peers, reachability) = match &ctx.network {
            Some(net) => {
                let links = net.peer_links().await.map_err(internal)?;
                let r = net.reachability().await.map_err(internal)?;
                let relayed = links.iter().filter(|l| l.relayed).count();
                let reachability = json!({
                    "status": r.nat.as_str(),
                    "externalAddresses": r.external_addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "relays": r.relays.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "directPeers": links.len() - relayed,
                    "relayedPeers": relayed,
                    "holePunches": r.hole_punches,
                    "holePunchFailures": r.hole_punch_failures,
                });
                (links.len(), reachability)
            }
            None => (0, Value::Null),
        };
        let syncing = ctx.status.as_ref().is_some_and(|s| s.borrow().syncing);
        Ok(json!({
            "peers": peers,
            "isSyncing": syncing,
            "shouldHavePeers": ctx.network.is_some(),
            "reachability": reachability,
        }))
    });
    method!(m, "system_banPeer", |p, ctx| {
        let net = operator_network(&ctx)?;
        let peer = parse_peer(&required::<String>(&p, 0, "peer id")?)?;
        let secs: u64 = required(&p, 1, "ban duration in seconds")?;
        if secs == 0 {
            return Err(err(codes::INVALID_PARAMS, "ban duration must be at least 1 second"));
        }
        net.ban_peer(peer, std::time::Duration::from_secs(secs))
            .await
            .map_err(|e| err(codes::INVALID_PARAMS, e.to_string()))?;
        Ok(Value::Null)
    });
    method!(m, "system_unbanPeer", |p, ctx| {
        let net = operator_network(&ctx)?;
        let peer = parse_peer(&required::<String>(&p, 0, "peer id")?)?;
        Ok(json!(net.unban_peer(peer).await.map_err(internal)?))
    });
    method!(m, "system_bannedPeers", |_p, ctx| {
        let peers = match &ctx.network {
            Some(net) => net.banned_peers().await.map_err(internal)?,
            None => Vec::new(),
        };
        Ok(json!(peers.iter().map(|p| p.to_string()).collect::<Vec<_>>()))
    });
    method!(m, "system_peers", |_p, ctx| {
        let mut links = match &ctx.network {
            Some(net) => net.peer_links().await.map_err(internal)?,
            None => Vec::new(),
        };
        links.sort_by_key(|l| l.peer.to_string());
        Ok(json!(links
            .iter()
            .map(|l| json!({
                "peerId": l.peer.to_string(),
                "roles": "FULL",
                "connection": if l.relayed { "relayed" } else { "direct" },
                "address": l.address.to_string(),
            }))
            .collect::<Vec<_>>()))
    });
    method!(m, "system_localPeerId", |_p, ctx| {
        match &ctx.network {
            Some(net) => Ok(json!(net.local_peer_id().to_string())),
            None => Err(err(codes::NOT_FOUND, "this node runs without networking (--dev)")),
        }
    });
    method!(m, "system_localListenAddresses", |_p, ctx| {
        match &ctx.network {
            Some(net) => {
                let id = net.local_peer_id();
                let addrs = net.listen_addresses().await.map_err(internal)?;
                Ok(json!(addrs.iter().map(|a| format!("{a}/p2p/{id}")).collect::<Vec<_>>()))
            }
            None => Ok(json!([])),
        }
    });
    method!(m, "system_accountNextIndex", |p, ctx| {
        let who = parse_address(&required::<String>(&p, 0, "account address")?)?;
        Ok(json!(ctx.chain.next_nonce(who).await.map_err(internal)?))
    });
    method!(m, "chain_getHeader", |p, ctx| {
        let hash = opt::<String>(&p, 0)?.map(|s| parse_hash(&s)).transpose()?;
        let h = match hash {
            None => Some(ctx.chain.best().await.map_err(internal)?),
            Some(h) => ctx.chain.header(h).await.map_err(internal)?,
        };
        Ok(h.map(|h| header_json(&h)).unwrap_or(Value::Null))
    });
    method!(m, "chain_getBlock", |p, ctx| {
        let hash = opt::<String>(&p, 0)?.map(|s| parse_hash(&s)).transpose()?;
        let Some((block, justification)) = ctx.chain.block(hash).await.map_err(internal)? else {
            return Ok(Value::Null);
        };
        let xts: Vec<String> =
            block.extrinsics.iter().map(|x| format!("0x{}", hex::encode(x.encode()))).collect();
        Ok(json!({
            "block": { "header": header_json(&block.header), "extrinsics": xts },
            "justifications": justification
                .map(|j| json!([["BTCM", format!("0x{}", hex::encode(j.encode()))]])),
        }))
    });
    method!(m, "chain_getBlockHash", |p, ctx| {
        let n = opt::<Value>(&p, 0)?.map(|v| parse_number(&v)).transpose()?;
        Ok(ctx.chain.hash_at(n).await.map_err(internal)?.map(|h| json!(h)).unwrap_or(Value::Null))
    });
    method!(m, "chain_getFinalizedHead", |_p, ctx| {
        Ok(json!(ctx.chain.finalized().await.map_err(internal)?.hash()))
    });
    method!(m, "author_submitExtrinsic", |p, ctx| {
        let bytes = decode_extrinsic_hex(&required::<String>(&p, 0, "extrinsic hex")?)?;
        submit(&ctx, bytes).await.map(|h| json!(h))
    });
    method!(m, "author_pendingExtrinsics", |_p, ctx| {
        let pending = ctx.chain.pending().await.map_err(internal)?;
        let v: Vec<String> =
            pending.iter().map(|x| format!("0x{}", hex::encode(x.encode()))).collect();
        Ok(json!(v))
    });
    crate::bitorch::register(m)?;
    Ok(())
}
