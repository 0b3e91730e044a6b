//! What the serving service asks of the chain: its transactions signed, submitted and
//! waited for, and the model registered. Reads go through the chain service's typed queries
//! ([`bitorch_service::query`]).

use crate::error::{Error, Result};
use crate::TARGET;
use bitorch_primitives::{keys::account_of, Pair, H256};
use bitorch_runtime::{
    models::{self, Manifest},
    Call,
};
use bitorch_service::{Handle, TxStatus};
use std::time::Duration;

/// Longest wait for a transaction to be included.
const INCLUSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Blocks a transaction of ours stays valid.
const MORTALITY: u64 = 64;

/// Signs `calls` from `key` with consecutive nonces, submits them, and waits until all are in
/// a block.
pub async fn submit_and_wait(chain: &Handle, key: &Pair, calls: Vec<Call>) -> Result<(), String> {
    let events = chain.subscribe();
    let hashes =
        chain.sign_and_submit(key.clone(), calls, MORTALITY).await.map_err(|e| e.to_string())?;
    let n = hashes.len();
    let outcomes = wait_for_inclusion(events, hashes.into_iter().enumerate().collect(), n).await;
    outcomes.into_iter().collect()
}

/// Like [`submit_and_wait`] for calls that stand alone: each is signed and submitted on its
/// own, so that one the pool refuses (its window closed) does not keep the others out, and all
/// are waited for together. Returns each call's outcome, in order.
pub async fn submit_each_and_wait(
    chain: &Handle,
    key: &Pair,
    calls: Vec<Call>,
) -> Vec<Result<(), String>> {
    let events = chain.subscribe();
    let n = calls.len();
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        match chain.sign_and_submit(key.clone(), vec![call], MORTALITY).await {
            Ok(hashes) => pending.extend(hashes.into_iter().map(|h| (i, h))),
            Err(e) => refused.push((i, e.to_string())),
        }
    }
    let mut outcomes = wait_for_inclusion(events, pending, n).await;
    for (i, e) in refused {
        outcomes[i] = Err(e);
    }
    outcomes
}

/// Waits until each of the `pending` transactions (call index, hash) is in a block, invalid or
/// dropped, or [`INCLUSION_TIMEOUT`] passes; the outcome of each of `n` calls, in order (a call
/// not pending is `Ok`).
async fn wait_for_inclusion(
    mut events: tokio::sync::broadcast::Receiver<bitorch_service::Event>,
    mut pending: Vec<(usize, H256)>,
    n: usize,
) -> Vec<Result<(), String>> {
    let mut outcomes: Vec<Result<(), String>> = vec![Ok(()); n];
    let wait = async {
        while !pending.is_empty() {
            match events.recv().await {
                Ok(bitorch_service::Event::Tx(h, status)) => {
                    let Some(at) = pending.iter().position(|(_, x)| *x == h) else { continue };
                    let failed = match status {
                        TxStatus::InBlock(_) | TxStatus::Finalized(_) => None,
                        TxStatus::Invalid(e) => Some(format!("transaction {h} invalid: {e}")),
                        TxStatus::Dropped => Some(format!("transaction {h} was dropped")),
                        TxStatus::Ready | TxStatus::Future => continue,
                    };
                    let (i, _) = pending.swap_remove(at);
                    if let Some(e) = failed {
                        outcomes[i] = Err(e);
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    for (i, _) in pending.drain(..) {
                        outcomes[i] = Err("the chain service stopped".into());
                    }
                }
            }
        }
    };
    if tokio::time::timeout(INCLUSION_TIMEOUT, wait).await.is_err() {
        for (i, _) in pending {
            outcomes[i] = Err("timed out waiting for inclusion".into());
        }
    }
    outcomes
}

/// Registers the model of `manifest` from `key` unless the chain already has it (its id is its
/// content, so whoever registered it first, under whatever name, it is the same model).
/// Returns its id. Fails for a model that is on chain but retired.
pub async fn register(chain: &Handle, key: &Pair, manifest: &Manifest) -> Result<H256> {
    let id = manifest.id();
    let known = |r: Option<models::ModelRecord>| match r {
        Some(r) if r.status == models::ModelStatus::Active => Ok(true),
        Some(_) => Err(Error::Submit {
            what: "registering the model",
            reason: "it is retired on chain".into(),
        }),
        None => Ok(false),
    };
    if known(chain.model(id).await?)? {
        tracing::info!(target: TARGET, model = %id, "model already registered");
        return Ok(id);
    }
    let call = Call::Models(models::Call::Register { manifest: manifest.clone() });
    let submitted = submit_and_wait(chain, key, vec![call]).await;
    // Another node may have registered the same content meanwhile: then it is there.
    if !known(chain.model(id).await?)? {
        submitted.map_err(|reason| Error::Submit { what: "registering the model", reason })?;
        return Err(Error::NotRegistered);
    }
    tracing::info!(target: TARGET, model = %id, owner = %account_of(key), "registered the model");
    Ok(id)
}
