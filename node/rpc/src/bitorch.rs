//! Bitorch's own typed methods: accounts, staking, validators, jobs and models.

use crate::methods::{internal, opt, required};
use crate::{parse_address, Ctx, Error};
use bitorch_primitives::{format_balance, keys::to_ss58};
use bitorch_runtime::{jobs, models};
use jsonrpsee::server::RpcModule;
use serde_json::{json, Value};

pub(crate) fn register(m: &mut RpcModule<Ctx>) -> Result<(), Error> {
    method!(m, "bitorch_account", |p, ctx| {
        let who = parse_address(&required::<String>(&p, 0, "account address")?)?;
        let a = ctx.chain.account(who.clone()).await.map_err(internal)?;
        Ok(json!({
            "address": to_ss58(&who),
            "nonce": a.data.nonce,
            "free": a.data.free.to_string(),
            "reserved": a.data.reserved.to_string(),
            "freeFormatted": format_balance(a.data.free),
            "reservedFormatted": format_balance(a.data.reserved),
            "staking": {
                "bonded": a.ledger.bonded.to_string(),
                "unlocking": a.ledger.unlocking.iter().map(|c| json!({
                    "amount": c.amount.to_string(),
                    "unlockAt": c.unlock_at,
                })).collect::<Vec<_>>(),
                "validatorCandidate": a.candidate,
                "activeValidator": a.active_validator,
                "worker": a.worker,
            },
        }))
    });
    method!(m, "bitorch_validators", |_p, ctx| {
        let set = ctx.chain.validators().await.map_err(internal)?;
        Ok(json!(set.powers.iter().map(|(v, _)| to_ss58(v)).collect::<Vec<_>>()))
    });
    method!(m, "bitorch_consensusState", |_p, ctx| {
        let status = ctx.status.as_ref().map(|s| s.borrow().clone());
        let validators = ctx.chain.validators().await.map_err(internal)?;
        let finalized = ctx.chain.finalized().await.map_err(internal)?;
        let height = validators.best + 1;
        // The round is the engine's while it runs this very height; `null` between a
        // decision and the start of the next height (block-time pacing).
        let round = status.as_ref().filter(|st| st.height == height).and_then(|st| st.round);
        Ok(json!({
            "height": height,
            "round": round,
            "validating": status.as_ref().is_some_and(|st| st.validating),
            "syncing": status.as_ref().is_some_and(|st| st.syncing),
            "finalizedNumber": finalized.number,
            "finalizedHash": finalized.hash(),
            "validators": validators.powers.iter().map(|(v, power)| json!({
                "address": to_ss58(v),
                "votingPower": power,
            })).collect::<Vec<_>>(),
        }))
    });
    method!(m, "bitorch_totalIssuance", |_p, ctx| {
        let issuance = ctx.chain.total_issuance().await.map_err(internal)?;
        Ok(json!(issuance.to_string()))
    });
    method!(m, "bitorch_allowance", |p, ctx| {
        let client = parse_address(&required::<String>(&p, 0, "client address")?)?;
        let gateway = parse_address(&required::<String>(&p, 1, "gateway address")?)?;
        let a = ctx.chain.allowance(client, gateway).await.map_err(internal)?;
        Ok(a.map_or(Value::Null, |a| {
            json!({
                "remaining": a.remaining.to_string(),
                "remainingFormatted": format_balance(a.remaining),
                "expiresAt": a.expires_at,
            })
        }))
    });
    method!(m, "bitorch_jobsOf", |p, ctx| {
        let who = parse_address(&required::<String>(&p, 0, "client address")?)?;
        let jobs = ctx
            .chain
            .jobs_where(0, MAX_LISTED_JOBS, move |j| j.client == who)
            .await
            .map_err(internal)?;
        Ok(Value::Array(jobs.iter().map(|(id, j)| job_json(*id, j)).collect()))
    });
    method!(m, "bitorch_blockTransactions", |p, ctx| {
        let hash = crate::parse_hash(&required::<String>(&p, 0, "block hash")?)?;
        let Some((block, _)) = ctx.chain.block(Some(hash)).await.map_err(internal)? else {
            return Ok(Value::Null);
        };
        Ok(Value::Array(
            block
                .extrinsics
                .iter()
                .map(|x| {
                    json!({
                        "hash": x.hash(),
                        "signer": to_ss58(&x.signer),
                        "nonce": x.nonce,
                        "call": call_name(&x.call),
                    })
                })
                .collect(),
        ))
    });
    method!(m, "bitorch_recentJobs", |p, ctx| {
        let limit = opt::<u64>(&p, 0)?.unwrap_or(MAX_LISTED_JOBS as u64);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_LISTED_JOBS);
        let jobs = ctx.chain.jobs_where(0, limit, |_| true).await.map_err(internal)?;
        Ok(Value::Array(jobs.iter().map(|(id, j)| job_json(*id, j)).collect()))
    });
    method!(m, "bitorch_claimsOf", |p, ctx| {
        let who = parse_address(&required::<String>(&p, 0, "worker address")?)?;
        let me = who.clone();
        let jobs = ctx
            .chain
            .jobs_where(0, MAX_LISTED_JOBS, move |j| {
                j.claims.iter().any(|c| c.voucher.worker == me)
            })
            .await
            .map_err(internal)?;
        let (mut earned, mut pending, mut failed, mut slashed) = (0u128, 0u128, 0u64, 0u128);
        let mut claims = Vec::new();
        for (id, j) in &jobs {
            for c in j.claims.iter().filter(|c| c.voucher.worker == who) {
                let amount = c.voucher.amount(j.price_per_layer_token).unwrap_or(0);
                let slash = c.audit.as_ref().and_then(|a| match &a.outcome {
                    Some(jobs::Outcome::Failed { slashed }) => Some(*slashed),
                    _ => None,
                });
                let audit_failed = slash.is_some();
                slashed = slashed.saturating_add(slash.unwrap_or(0));
                let state = match &j.status {
                    jobs::JobStatus::Settled { .. } if audit_failed => "failed",
                    jobs::JobStatus::Settled { .. } => "paid",
                    jobs::JobStatus::Open | jobs::JobStatus::Challenge { .. } => "pending",
                    _ => "unpaid",
                };
                match state {
                    "paid" => earned += c.paid,
                    "pending" => pending += amount,
                    _ => {}
                }
                failed += u64::from(audit_failed);
                claims.push(json!({
                    "job": id,
                    "layerStart": c.voucher.layers.0,
                    "layerEnd": c.voucher.layers.1,
                    "positions": c.voucher.positions,
                    "amount": amount.to_string(),
                    "paid": c.paid.to_string(),
                    "state": state,
                }));
            }
        }
        Ok(json!({
            "worker": to_ss58(&who),
            "earned": earned.to_string(),
            "earnedFormatted": format_balance(earned),
            "pending": pending.to_string(),
            "pendingFormatted": format_balance(pending),
            "failedAudits": failed,
            "slashed": slashed.to_string(),
            "slashedFormatted": format_balance(slashed),
            "claims": claims,
        }))
    });
    method!(m, "bitorch_job", |p, ctx| {
        let id: u64 = required(&p, 0, "job id")?;
        let Some(job) = ctx.chain.job(id).await.map_err(internal)? else {
            return Ok(Value::Null);
        };
        Ok(job_json(id, &job))
    });
    method!(m, "bitorch_models", |_p, ctx| {
        let models = ctx.chain.models().await.map_err(internal)?;
        Ok(Value::Array(models.iter().map(|(id, r)| model_json(id, r)).collect()))
    });
    method!(m, "bitorch_workers", |p, ctx| {
        let id = crate::parse_hash(&required::<String>(&p, 0, "model id")?)?;
        let Some(net) = &ctx.network else {
            return Err(crate::err(
                crate::codes::NOT_FOUND,
                "this node runs without networking (--dev): no workers to find",
            ));
        };
        let found = net.find_workers(id).await.map_err(internal)?;
        Ok(Value::Array(
            found
                .into_iter()
                .map(|(peer, a)| {
                    json!({
                        "peerId": peer.to_string(),
                        "account": to_ss58(&bitorch_primitives::AccountId::new(a.account)),
                        "layerStart": a.layer_start,
                        "layerEnd": a.layer_end,
                        "capacity": a.capacity,
                        "free": a.free,
                        "tokensPerSec": a.tokens_per_sec,
                        "price": a.price.to_string(),
                        "expiresAtMs": a.expires_at_ms,
                    })
                })
                .collect(),
        ))
    });
    method!(m, "bitorch_model", |p, ctx| {
        let id = crate::parse_hash(&required::<String>(&p, 0, "model id")?)?;
        let model = ctx.chain.model(id).await.map_err(internal)?;
        Ok(model.map(|r| model_json(&id, &r)).unwrap_or(Value::Null))
    });
    Ok(())
}

fn job_status_json(s: &jobs::JobStatus) -> Value {
    use jobs::JobStatus::*;
    match s {
        Open => json!({ "open": null }),
        Challenge { settle_at } => json!({ "challenge": { "settleAt": settle_at } }),
        Settled { paid, refunded } => {
            json!({ "settled": { "paid": paid.to_string(), "refunded": refunded.to_string() } })
        }
        Refunded => json!({ "refunded": null }),
        Stuck { reason } => json!({ "stuck": String::from_utf8_lossy(reason) }),
    }
}

fn finding_json(f: &jobs::Finding) -> Value {
    match f {
        jobs::Finding::Passed { outputs, probe } => {
            json!({ "passed": { "outputs": outputs, "probe": probe.0 } })
        }
        jobs::Finding::Failed { outputs, probe } => {
            json!({ "failed": { "outputs": outputs, "probe": probe.as_ref().map(|p| p.0) } })
        }
        jobs::Finding::NoOpening => json!({ "noOpening": null }),
    }
}

fn audit_json(a: &jobs::Audit) -> Value {
    let outcome = match &a.outcome {
        None => Value::Null,
        Some(jobs::Outcome::Passed) => json!("passed"),
        Some(jobs::Outcome::Failed { slashed }) => {
            json!({ "failed": { "slashed": slashed.to_string() } })
        }
        Some(jobs::Outcome::Inconclusive) => json!("inconclusive"),
    };
    json!({
        "lastPosition": a.last,
        "auditors": a.auditors.iter().map(|(who, w)| json!({ "auditor": to_ss58(who), "weight": w })).collect::<Vec<_>>(),
        "commitBy": a.commit_by,
        "revealBy": a.reveal_by,
        "commits": a.commits.iter().map(|(who, c)| json!({ "auditor": to_ss58(who), "commitment": c })).collect::<Vec<_>>(),
        "findings": a.reveals.iter().map(|(who, f)| json!({ "auditor": to_ss58(who), "finding": finding_json(f) })).collect::<Vec<_>>(),
        "outcome": outcome,
        "probeSeed": a.probe,
        "unconfirmed": a.unconfirmed.iter().map(to_ss58).collect::<Vec<_>>(),
    })
}

/// Most jobs `bitorch_jobsOf` and `bitorch_claimsOf` list (the newest).
const MAX_LISTED_JOBS: usize = 1_000;

/// A call's pallet and name, as `Pallet.Call` (`Balances.Transfer`, `Jobs.SubmitClaim`): the
/// first two words of its debug form, without its arguments.
fn call_name(call: &bitorch_runtime::Call) -> String {
    let text = format!("{call:?}");
    let mut words = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty());
    match (words.next(), words.next()) {
        (Some(pallet), Some(name)) => format!("{pallet}.{name}"),
        _ => text.chars().take(40).collect(),
    }
}

fn job_json(id: u64, j: &jobs::Job) -> Value {
    json!({
        "id": id,
        "client": to_ss58(&j.client),
        "agent": j.agent.as_ref().map(to_ss58),
        "model": j.model,
        "layerCount": j.layer_count,
        "maxTokens": j.max_tokens,
        "pricePerLayerToken": j.price_per_layer_token.to_string(),
        "escrow": j.escrow.to_string(),
        "claimed": j.claimed.to_string(),
        "openedAt": j.opened_at,
        "deadline": j.deadline,
        "status": job_status_json(&j.status),
        "claims": j.claims.iter().map(|r| json!({
            "worker": to_ss58(&r.voucher.worker),
            "session": format!("0x{}", hex::encode(r.voucher.session)),
            "layerStart": r.voucher.layers.0,
            "layerEnd": r.voucher.layers.1,
            "positions": r.voucher.positions,
            "trace": r.voucher.trace,
            "clientSignature": format!("0x{}", hex::encode(r.signature.0)),
            "submittedAt": r.submitted_at,
            "auditFee": r.audit_fee.to_string(),
            "audit": r.audit.as_ref().map(audit_json),
            "paid": r.paid.to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn model_json(id: &bitorch_primitives::Hash, r: &models::ModelRecord) -> Value {
    let m = &r.manifest;
    json!({
        "id": id,
        "owner": to_ss58(&r.owner),
        "name": String::from_utf8_lossy(&m.name),
        "architecture": String::from_utf8_lossy(&m.architecture),
        "layerCount": m.layer_count,
        "manifestHash": r.manifest_hash,
        "status": format!("{:?}", r.status),
        "registeredAt": r.registered_at,
        "updatedAt": r.updated_at,
        "hyper": {
            "hiddenSize": m.hyper.hidden_size,
            "intermediateSize": m.hyper.intermediate_size,
            "numAttentionHeads": m.hyper.num_attention_heads,
            "numKvHeads": m.hyper.num_kv_heads,
            "vocabSize": m.hyper.vocab_size,
            "contextLength": m.hyper.context_length,
        },
        "tokenizerHash": m.tokenizer_hash,
        "chunks": m.chunks.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::call_name;
    use bitorch_primitives::AccountId;
    use bitorch_runtime::{balances, jobs, Call};

    #[test]
    fn calls_are_named_by_pallet_and_call_without_their_arguments() {
        let transfer =
            Call::Balances(balances::Call::Transfer { dest: AccountId::new([1; 32]), amount: 5 });
        assert_eq!(call_name(&transfer), "Balances.Transfer");
        let approve = Call::Jobs(jobs::Call::Approve {
            gateway: AccountId::new([2; 32]),
            amount: 1,
            expires_at: 9,
        });
        assert_eq!(call_name(&approve), "Jobs.Approve");
    }
}
