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
    let mut events = chain.subscribe();
    let mut pending: Vec<H256> =
        chain.sign_and_submit(key.clone(), calls, MORTALITY).await.map_err(|e| e.to_string())?;
    let wait = async {
        while !pending.is_empty() {
            match events.recv().await {
                Ok(bitorch_service::Event::Tx(h, status)) if pending.contains(&h) => match status {
                    TxStatus::InBlock(_) | TxStatus::Finalized(_) => pending.retain(|x| *x != h),
                    TxStatus::Invalid(e) => return Err(format!("transaction {h} invalid: {e}")),
                    TxStatus::Dropped => return Err(format!("transaction {h} was dropped")),
                    TxStatus::Ready | TxStatus::Future => {}
                },
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err("the chain service stopped".into())
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(INCLUSION_TIMEOUT, wait)
        .await
        .map_err(|_| "timed out waiting for inclusion".to_string())?
}

/// The id of the active model with this manifest on chain, registering it from `key` first if
/// there is none.
///
/// Workers started together may each find none and each register (ids differ by owner); the
/// registry keeps ids in registration order and each looks again after its own registration is
/// included, so all of them serve the first one registered, and find each other by its id.
pub async fn register(chain: &Handle, key: &Pair, manifest: &Manifest) -> Result<H256> {
    let hash = manifest.hash();
    if let Some(id) = chain.active_model_with_manifest(hash).await? {
        tracing::info!(target: TARGET, model = %id, "model already registered");
        return Ok(id);
    }
    let call = Call::Models(models::Call::Register { manifest: manifest.clone() });
    submit_and_wait(chain, key, vec![call])
        .await
        .map_err(|reason| Error::Submit { what: "registering the model", reason })?;
    let id = chain.active_model_with_manifest(hash).await?.ok_or(Error::NotRegistered)?;
    tracing::info!(target: TARGET, model = %id, owner = %account_of(key), "registered the model");
    Ok(id)
}
