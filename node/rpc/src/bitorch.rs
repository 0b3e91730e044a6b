//! Bitorch's own typed methods: accounts, staking, validators, jobs and models.

use crate::methods::{internal, required, RpcResult};
use crate::{parse_address, Ctx, Error};
use bitorch_primitives::{format_balance, keys::to_ss58};
use bitorch_runtime::{Balances, Staking};
use jsonrpsee::server::RpcModule;
use serde_json::json;

pub(crate) fn register(m: &mut RpcModule<Ctx>) -> Result<(), Error> {
    method!(m, "bitorch_account", |p, ctx| {
        let who = parse_address(&required::<String>(&p, 0, "account address")?)?;
        ctx.chain
            .with(move |s| -> RpcResult {
                let st = s.chain.state();
                let a = Balances::account(st, &who).map_err(internal)?;
                let ledger = Staking::ledger(st, &who).map_err(internal)?;
                let is_candidate = Staking::is_candidate(st, &who).map_err(internal)?;
                let worker = Staking::worker_info(st, &who).map_err(internal)?;
                let active = Staking::validator_set(st).map_err(internal)?.contains(&who);
                Ok(json!({
                    "address": to_ss58(&who),
                    "nonce": a.nonce,
                    "free": a.free.to_string(),
                    "reserved": a.reserved.to_string(),
                    "freeFormatted": format_balance(a.free),
                    "reservedFormatted": format_balance(a.reserved),
                    "staking": {
                        "bonded": ledger.bonded.to_string(),
                        "unlocking": ledger.unlocking.iter().map(|c| json!({
                            "amount": c.amount.to_string(),
                            "unlockAt": c.unlock_at,
                        })).collect::<Vec<_>>(),
                        "validatorCandidate": is_candidate,
                        "activeValidator": active,
                        "worker": worker.is_some(),
                    },
                }))
            })
            .await
            .map_err(internal)?
    });
    method!(m, "bitorch_validators", |_p, ctx| {
        ctx.chain
            .with(|s| -> RpcResult {
                let set = Staking::validator_set(s.chain.state()).map_err(internal)?;
                Ok(json!(set.iter().map(to_ss58).collect::<Vec<_>>()))
            })
            .await
            .map_err(internal)?
    });
    Ok(())
}
