//! `bitorch wallet`: sign locally, submit over JSON-RPC, wait for inclusion or finality.

use crate::key::OutputType;
use anyhow::{anyhow, bail, Context, Result};
use bitorch_primitives::keys::{account_of, parse_account, to_ss58};
use bitorch_primitives::{format_balance, parse_amount, Balance, Hash, H256};
use bitorch_runtime::{balances, compute_fee, jobs, staking, Call, UncheckedExtrinsic};
use clap::{Args, Subcommand, ValueEnum};
use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use parity_scale_codec::Encode;
use serde_json::{json, Value};
use std::time::Duration;

/// When a transaction command returns.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Wait {
    /// Once included in a block.
    #[default]
    InBlock,
    /// Once its block is final.
    Finalized,
}

/// Options shared by all wallet commands.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The node's RPC URL (ws:// or http://).
    #[arg(long, default_value = "ws://127.0.0.1:9944", global = true)]
    rpc: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t, global = true)]
    output_type: OutputType,
}

/// Options of commands that sign.
#[derive(Args, Debug, Clone)]
pub struct Signing {
    #[command(flatten)]
    signer: crate::keystore::SignerArgs,
    /// Extra fee for the block author, in tokens.
    #[arg(long, default_value = "0")]
    tip: String,
    /// Blocks from now after which the transaction expires.
    #[arg(long, default_value_t = 64)]
    mortality: u64,
    /// Return after inclusion (`in-block`) or finality (`finalized`).
    #[arg(long, value_enum, default_value_t)]
    wait: Wait,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// `bitorch wallet` subcommands.
#[derive(Subcommand, Debug)]
pub enum WalletCmd {
    /// Show an account's balances, nonce and stake.
    Balance {
        /// SS58 address or 0x public key.
        address: String,
        #[command(flatten)]
        common: Common,
    },
    /// Let a gateway open jobs that the signer pays for, up to an allowance, until an expiry
    /// (replaces an earlier allowance for that gateway).
    Approve {
        /// The gateway's address (its API account).
        #[arg(long)]
        gateway: String,
        /// Most it may escrow in all, in tokens.
        #[arg(long)]
        allowance: String,
        /// How long it lasts: blocks (`5000`) or a duration at one block per second (`7d`,
        /// `12h`, `30m`).
        #[arg(long, default_value = "7d")]
        expires: String,
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Withdraw the signer's allowance for a gateway (jobs it already opened go on).
    Revoke {
        /// The gateway's address.
        #[arg(long)]
        gateway: String,
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Show what a client still allows a gateway, and until when.
    Allowance {
        /// The client's address.
        address: String,
        /// The gateway's address.
        #[arg(long)]
        gateway: String,
        #[command(flatten)]
        common: Common,
    },
    /// The jobs an account is the client of (the newest 1,000): status, escrow, what was paid
    /// and refunded, claims and audits.
    Jobs {
        /// The client's address.
        address: String,
        #[command(flatten)]
        common: Common,
    },
    /// A worker's claims (in the newest 1,000 jobs): earned, pending, failed audits.
    Claims {
        /// The worker's address.
        address: String,
        #[command(flatten)]
        common: Common,
    },
    /// Show a job: its client, model, escrow, status, and each claim with what it was paid.
    Job {
        /// The job's id.
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Transfer tokens.
    Transfer {
        /// Recipient address.
        #[arg(long)]
        to: String,
        /// Amount in tokens (e.g. 10 or 1.5).
        #[arg(long)]
        amount: String,
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Bond tokens as stake.
    Bond {
        /// Amount in tokens.
        #[arg(long)]
        amount: String,
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Start unbonding stake (withdrawable after the unbonding delay).
    Unbond {
        /// Amount in tokens.
        #[arg(long)]
        amount: String,
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Withdraw stake whose unbonding delay has passed.
    WithdrawUnbonded {
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Register the signer as a worker (needs the minimum worker bond).
    RegisterWorker {
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Register the signer as a validator candidate (needs the minimum validator bond).
    RegisterValidator {
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
    /// Open an inference job, escrowing max-tokens × layers × price.
    OpenJob {
        /// Model id (0x hash).
        #[arg(long)]
        model: String,
        /// Most tokens the job may generate.
        #[arg(long)]
        max_tokens: u32,
        /// Price per layer per token, in tokens.
        #[arg(long)]
        price: String,
        #[command(flatten)]
        signing: Signing,
        #[command(flatten)]
        common: Common,
    },
}

fn ws_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    }
}

async fn connect(url: &str) -> Result<WsClient> {
    WsClientBuilder::default()
        .request_timeout(Duration::from_secs(30))
        .build(ws_url(url))
        .await
        .with_context(|| {
            format!("cannot reach the node's RPC at {url} (is the node running? pass --rpc)")
        })
}

/// Runs a wallet subcommand.
pub fn run(cmd: WalletCmd) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd))
}

async fn run_async(cmd: WalletCmd) -> Result<()> {
    let amount = |s: &str| -> Result<Balance> { Ok(parse_amount(s)?) };
    let (call, signing, common, what) = match cmd {
        WalletCmd::Balance { address, common } => return balance(&address, &common).await,
        WalletCmd::Job { id, common } => return job(id, &common).await,
        WalletCmd::Jobs { address, common } => return jobs_of(&address, &common).await,
        WalletCmd::Claims { address, common } => return claims_of(&address, &common).await,
        WalletCmd::Allowance { address, gateway, common } => {
            let client = connect(&common.rpc).await?;
            let (who, gw) =
                (parse_account(&address)?, parse_account(&gateway).context("--gateway")?);
            let a: Value = client
                .request("bitorch_allowance", rpc_params![to_ss58(&who), to_ss58(&gw)])
                .await?;
            match common.output_type {
                OutputType::Json => println!("{}", serde_json::to_string_pretty(&a)?),
                OutputType::Text if a.is_null() => println!("no allowance"),
                OutputType::Text => println!(
                    "{} left, until block {}",
                    a["remainingFormatted"].as_str().unwrap_or("?"),
                    a["expiresAt"]
                ),
            }
            return Ok(());
        }
        WalletCmd::Approve { gateway, allowance, expires, signing, common } => {
            let gateway = parse_account(&gateway).context("--gateway")?;
            let amount = amount(&allowance)?;
            let blocks = parse_blocks(&expires)?;
            let client = connect(&common.rpc).await?;
            let header: Value = client.request("chain_getHeader", rpc_params![]).await?;
            let best = header["number"]
                .as_str()
                .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .ok_or_else(|| anyhow!("node returned a header without a number"))?;
            let expires_at = best.saturating_add(blocks);
            let what = format!(
                "allowance of {} for {} until block {expires_at}",
                format_balance(amount),
                to_ss58(&gateway)
            );
            (Call::Jobs(jobs::Call::Approve { gateway, amount, expires_at }), signing, common, what)
        }
        WalletCmd::Revoke { gateway, signing, common } => {
            let gateway = parse_account(&gateway).context("--gateway")?;
            let what = format!("revocation of {}'s allowance", to_ss58(&gateway));
            (Call::Jobs(jobs::Call::Revoke { gateway }), signing, common, what)
        }
        WalletCmd::Transfer { to, amount: a, signing, common } => {
            let dest = parse_account(&to).context("--to")?;
            let amount = amount(&a)?;
            let what = format!("transfer of {} to {}", format_balance(amount), to_ss58(&dest));
            (Call::Balances(balances::Call::Transfer { dest, amount }), signing, common, what)
        }
        WalletCmd::Bond { amount: a, signing, common } => {
            let amount = amount(&a)?;
            (
                Call::Staking(staking::Call::Bond { amount }),
                signing,
                common,
                format!("bond of {}", format_balance(amount)),
            )
        }
        WalletCmd::Unbond { amount: a, signing, common } => {
            let amount = amount(&a)?;
            (
                Call::Staking(staking::Call::Unbond { amount }),
                signing,
                common,
                format!("unbond of {}", format_balance(amount)),
            )
        }
        WalletCmd::WithdrawUnbonded { signing, common } => (
            Call::Staking(staking::Call::WithdrawUnbonded),
            signing,
            common,
            "withdrawal of unbonded stake".into(),
        ),
        WalletCmd::RegisterWorker { signing, common } => (
            Call::Staking(staking::Call::RegisterWorker),
            signing,
            common,
            "worker registration".into(),
        ),
        WalletCmd::RegisterValidator { signing, common } => (
            Call::Staking(staking::Call::RegisterValidator),
            signing,
            common,
            "validator registration".into(),
        ),
        WalletCmd::OpenJob { model, max_tokens, price, signing, common } => {
            let raw = bitorch_primitives::keys::decode_hex(&model)?;
            if raw.len() != 32 {
                bail!("--model must be a 32-byte hex model id");
            }
            let model = H256::from_slice(&raw);
            let price_per_layer_token = amount(&price)?;
            (
                Call::Jobs(jobs::Call::OpenJob { model, max_tokens, price_per_layer_token }),
                signing,
                common,
                format!("job for model {model:?}"),
            )
        }
    };
    submit(call, &signing, &common, &what).await
}

async fn balance(address: &str, common: &Common) -> Result<()> {
    let who = parse_account(address)?;
    let client = connect(&common.rpc).await?;
    let info: Value = client.request("bitorch_account", rpc_params![to_ss58(&who)]).await?;
    match common.output_type {
        OutputType::Json => println!("{}", serde_json::to_string_pretty(&info)?),
        OutputType::Text => {
            println!("Account:  {}", to_ss58(&who));
            println!("Free:     {}", info["freeFormatted"].as_str().unwrap_or("?"));
            println!("Reserved: {}", info["reservedFormatted"].as_str().unwrap_or("?"));
            println!("Nonce:    {}", info["nonce"]);
        }
    }
    Ok(())
}

/// A base-unit amount the RPC gives as a string, formatted in tokens.
fn tokens(v: &Value) -> String {
    v.as_str().and_then(|s| s.parse::<Balance>().ok()).map(format_balance).unwrap_or("?".into())
}

async fn job(id: u64, common: &Common) -> Result<()> {
    let client = connect(&common.rpc).await?;
    let job: Value = client.request("bitorch_job", rpc_params![id]).await?;
    if job.is_null() {
        bail!("there is no job {id} on this chain");
    }
    match common.output_type {
        OutputType::Json => println!("{}", serde_json::to_string_pretty(&job)?),
        OutputType::Text => {
            let status = match &job["status"] {
                Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                other => other.to_string(),
            };
            println!("Job:      {id}");
            println!("Client:   {}", job["client"].as_str().unwrap_or("?"));
            println!("Model:    {}", job["model"].as_str().unwrap_or("?"));
            println!("Escrow:   {} ({} claimed)", tokens(&job["escrow"]), tokens(&job["claimed"]));
            println!("Status:   {status}");
            for r in job["claims"].as_array().into_iter().flatten() {
                println!(
                    "Claim:    {} layers {}..{} × {} positions, paid {} (session {})",
                    r["worker"].as_str().unwrap_or("?"),
                    r["layerStart"],
                    r["layerEnd"],
                    r["positions"],
                    tokens(&r["paid"]),
                    r["session"].as_str().unwrap_or("?"),
                );
                println!("          audit: {}", audit_line(&r["audit"]));
            }
        }
    }
    Ok(())
}

async fn jobs_of(address: &str, common: &Common) -> Result<()> {
    let who = parse_account(address)?;
    let client = connect(&common.rpc).await?;
    let jobs: Value = client.request("bitorch_jobsOf", rpc_params![to_ss58(&who)]).await?;
    if let OutputType::Json = common.output_type {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    let jobs = jobs.as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs");
    }
    for j in jobs {
        let (status, detail) = match &j["status"] {
            Value::Object(o) => {
                let (k, v) =
                    o.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default();
                let detail = if k == "settled" {
                    format!(" (paid {}, refunded {})", tokens(&v["paid"]), tokens(&v["refunded"]))
                } else {
                    String::new()
                };
                (k, detail)
            }
            other => (other.to_string(), String::new()),
        };
        let claims = j["claims"].as_array().map_or(0, Vec::len);
        let audited = j["claims"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|r| !r["audit"].is_null()).count());
        let via = j["agent"].as_str().map(|a| format!(", opened by {a}")).unwrap_or_default();
        println!(
            "job {}: {status}{detail}, escrow {}, {claims} claims ({audited} audited){via}",
            j["id"],
            tokens(&j["escrow"])
        );
    }
    Ok(())
}

async fn claims_of(address: &str, common: &Common) -> Result<()> {
    let who = parse_account(address)?;
    let client = connect(&common.rpc).await?;
    let c: Value = client.request("bitorch_claimsOf", rpc_params![to_ss58(&who)]).await?;
    match common.output_type {
        OutputType::Json => println!("{}", serde_json::to_string_pretty(&c)?),
        OutputType::Text => {
            println!(
                "earned {}, pending {}, {} failed audits, slashed {}",
                c["earnedFormatted"].as_str().unwrap_or("?"),
                c["pendingFormatted"].as_str().unwrap_or("?"),
                c["failedAudits"],
                c["slashedFormatted"].as_str().unwrap_or("?"),
            );
            for r in c["claims"].as_array().into_iter().flatten() {
                println!(
                    "job {}: layers {}..{} × {} positions, {} ({})",
                    r["job"],
                    r["layerStart"],
                    r["layerEnd"],
                    r["positions"],
                    tokens(&r["amount"]),
                    r["state"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

/// One line about a claim's audit, from `bitorch_job`'s JSON.
fn audit_line(a: &Value) -> String {
    if a.is_null() {
        return "not chosen".into();
    }
    let auditors = a["auditors"].as_array().map_or(0, Vec::len);
    let findings = a["findings"].as_array().map_or(0, Vec::len);
    match &a["outcome"] {
        Value::Null => format!(
            "open: {auditors} auditors, positions 0..={}, {findings} findings, resolved at block {}",
            a["lastPosition"], a["revealBy"]
        ),
        Value::String(s) => format!("{s} ({findings} of {auditors} auditors revealed)"),
        other => match other["failed"]["slashed"].as_str() {
            Some(_) => format!(
                "failed, worker slashed {} ({findings} of {auditors} auditors revealed)",
                tokens(&other["failed"]["slashed"])
            ),
            None => other.to_string(),
        },
    }
}

fn parse_hash_value(v: &Value) -> Result<Hash> {
    let s = v.as_str().ok_or_else(|| anyhow!("expected a hash, got {v}"))?;
    let raw = bitorch_primitives::keys::decode_hex(s)?;
    if raw.len() != 32 {
        bail!("expected a 32-byte hash, got {s}");
    }
    Ok(H256::from_slice(&raw))
}

/// The genesis hash of the chain of the node at `url`.
pub fn genesis_of(url: &str) -> Result<H256> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = connect(url).await?;
        parse_hash_value(&client.request::<Value, _>("chain_getBlockHash", rpc_params![0]).await?)
    })
}

/// Blocks in `s`: a number of blocks, or a duration (`7d`, `12h`, `30m`, `90s`) at one block
/// per second (the default block time).
pub fn parse_blocks(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 =
        num.parse().with_context(|| format!("'{s}': expected blocks or a duration like 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => bail!("'{s}': unknown unit '{other}' (use s, m, h or d)"),
    };
    n.checked_mul(secs).context("too long")
}

async fn submit(call: Call, signing: &Signing, common: &Common, what: &str) -> Result<()> {
    let pair = signing.signer.pair()?;
    let signer = account_of(&pair);
    let tip = parse_amount(&signing.tip).context("--tip")?;
    let client = connect(&common.rpc).await?;
    let genesis =
        parse_hash_value(&client.request::<Value, _>("chain_getBlockHash", rpc_params![0]).await?)?;
    let header: Value = client.request("chain_getHeader", rpc_params![]).await?;
    let best = header["number"]
        .as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| anyhow!("node returned a header without a number"))?;
    let nonce: u64 =
        client.request("system_accountNextIndex", rpc_params![to_ss58(&signer)]).await?;
    let xt = UncheckedExtrinsic::sign(&pair, &genesis, nonce, tip, best + signing.mortality, call);
    let encoded = xt.encode();
    let fee = compute_fee(&xt.call, encoded.len(), tip);
    let hex_xt = format!("0x{}", hex::encode(&encoded));
    let mut sub = client
        .subscribe::<Value, _>(
            "author_submitAndWatchExtrinsic",
            rpc_params![hex_xt],
            "author_unwatchExtrinsic",
        )
        .await
        .map_err(|e| anyhow!("{what} rejected: {}", rpc_message(&e)))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(signing.timeout);
    loop {
        let next = tokio::time::timeout_at(deadline, sub.next())
            .await
            .map_err(|_| anyhow!("timed out after {} s waiting for {what}", signing.timeout))?;
        let status = match next {
            Some(s) => s?,
            None => bail!("the node closed the subscription before {what} was included"),
        };
        let (state, block) = match &status {
            Value::Object(o) if o.contains_key("inBlock") => {
                ("inBlock", Some(parse_hash_value(&o["inBlock"])?))
            }
            Value::Object(o) if o.contains_key("finalized") => {
                ("finalized", Some(parse_hash_value(&o["finalized"])?))
            }
            Value::Object(o) if o.contains_key("invalid") => {
                bail!("{what} became invalid: {}", o["invalid"])
            }
            Value::String(s) if s == "dropped" => bail!("{what} was dropped from the pool"),
            _ => continue,
        };
        let done = state == "finalized" || (state == "inBlock" && signing.wait == Wait::InBlock);
        if !done {
            continue;
        }
        let block = block.unwrap_or_default();
        let number = client
            .request::<Value, _>("chain_getHeader", rpc_params![format!("{block:?}")])
            .await?
            .get("number")
            .and_then(|n| n.as_str())
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
        match common.output_type {
            OutputType::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "extrinsicHash": xt.hash(),
                    "status": state,
                    "blockHash": block,
                    "blockNumber": number,
                    "signer": to_ss58(&signer),
                    "nonce": nonce,
                    "fee": fee.to_string(),
                }))?
            ),
            OutputType::Text => println!(
                "{} {what} from {} in block #{} ({block:?}); fee {}",
                if state == "finalized" { "Finalized" } else { "Included" },
                to_ss58(&signer),
                number.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                format_balance(fee)
            ),
        }
        return Ok(());
    }
}

fn rpc_message(e: &jsonrpsee::core::ClientError) -> String {
    match e {
        jsonrpsee::core::ClientError::Call(obj) => obj.message().to_string(),
        other => other.to_string(),
    }
}
