//! Load generator for a running network: funds many accounts, then submits pre-signed
//! transfers as fast as the node takes them and measures finalized transfers per second and
//! the time from submission to finality (p50, p99). Used by `scripts/bench-testnet.sh`.
//!
//! `cargo run -p bitorch --example load -- WS_URL [ACCOUNTS] [TXS_PER_ACCOUNT] [RATE]`
//!
//! RATE is transactions per second sent in an open loop (evenly spaced); 0 (the default)
//! sends them as fast as the node takes them. Latency is measured from the moment a
//! transaction is sent to the moment the node announces the finalized block holding it.

use anyhow::{anyhow, Context, Result};
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::{Hash, Pair, UNIT};
use bitorch_runtime::{balances, Call, UncheckedExtrinsic};
use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::WsClientBuilder;
use parity_scale_codec::Encode;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const FUNDERS: [&str; 6] = ["//Alice", "//Bob", "//Charlie", "//Dave", "//Eve", "//Ferdie"];

fn hash_of(v: &Value) -> Result<Hash> {
    let raw = bitorch_primitives::keys::decode_hex(
        v.as_str().ok_or_else(|| anyhow!("not a hash: {v}"))?,
    )?;
    Ok(Hash::from_slice(&raw))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "ws://127.0.0.1:9944".into());
    let accounts: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(300);
    let per_account: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let rate: f64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(0.0);
    let client = WsClientBuilder::default()
        .max_concurrent_requests(4096)
        .request_timeout(Duration::from_secs(60))
        .build(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let genesis =
        hash_of(&client.request::<Value, _>("chain_getBlockHash", rpc_params![0]).await?)?;
    let valid_until = 1_000_000;
    let senders: Vec<Pair> =
        (0..accounts).map(|i| pair_from_suri(&format!("//load/{i}")).unwrap()).collect();

    // Fund the senders, at most 60 transfers per funder per round (the pool's nonce window).
    let mut heads = client
        .subscribe::<Value, _>(
            "chain_subscribeFinalizedHeads",
            rpc_params![],
            "chain_unsubscribeFinalizedHeads",
        )
        .await?;
    for chunk in senders.chunks(60 * FUNDERS.len()) {
        for (j, group) in chunk.chunks(60).enumerate() {
            let funder = pair_from_suri(FUNDERS[j])?;
            let mut nonce: u64 = client
                .request(
                    "system_accountNextIndex",
                    rpc_params![bitorch_primitives::keys::to_ss58(&account_of(&funder))],
                )
                .await?;
            for p in group {
                let call = Call::Balances(balances::Call::Transfer {
                    dest: account_of(p),
                    amount: 10 * UNIT,
                });
                let xt = UncheckedExtrinsic::sign(&funder, &genesis, nonce, 0, valid_until, call);
                nonce += 1;
                let _: Value = client
                    .request(
                        "author_submitExtrinsic",
                        rpc_params![format!("0x{}", hex::encode(xt.encode()))],
                    )
                    .await?;
            }
        }
        // Wait until the funding is final.
        let last = account_of(chunk.last().expect("non-empty"));
        loop {
            heads.next().await.ok_or_else(|| anyhow!("head subscription closed"))??;
            let v: Value = client
                .request("bitorch_account", rpc_params![bitorch_primitives::keys::to_ss58(&last)])
                .await?;
            if v["free"].as_str() != Some("0") {
                break;
            }
        }
    }

    // Pre-sign everything, then submit as fast as the node takes it.
    let dest = account_of(&pair_from_suri("//Ferdie")?);
    let mut txs = Vec::new();
    for n in 0..per_account {
        for p in &senders {
            let call = Call::Balances(balances::Call::Transfer {
                dest: dest.clone(),
                amount: UNIT / 1000,
            });
            let xt = UncheckedExtrinsic::sign(p, &genesis, n, 0, valid_until, call);
            txs.push((xt.hash(), format!("0x{}", hex::encode(xt.encode()))));
        }
    }
    let total = txs.len();
    // Finalized heads are timestamped as they arrive, by a task of their own, so that a head
    // that lands while we are still submitting is not measured late.
    let (head_tx, mut head_rx) = tokio::sync::mpsc::unbounded_channel::<(Value, Instant)>();
    tokio::spawn(async move {
        while let Some(Ok(head)) = heads.next().await {
            if head_tx.send((head["number"].clone(), Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut submitted: HashMap<Hash, Instant> = HashMap::with_capacity(total);
    let start = Instant::now();
    // Open loop: transaction i is sent at start + i / rate (rate 0: as fast as the node takes
    // them), with up to 256 requests in flight over the one WebSocket connection.
    let client = std::sync::Arc::new(client);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(total);
    for (i, (hash, hex_xt)) in txs.into_iter().enumerate() {
        if rate > 0.0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into())
                .await;
        }
        let permit = in_flight.clone().acquire_owned().await?;
        submitted.insert(hash, Instant::now());
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.request::<Value, _>("author_submitExtrinsic", rpc_params![hex_xt]).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submit_secs = start.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(total);
    let mut last_final = start;
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < total && Instant::now() < deadline {
        let Ok(Some((number, arrived))) =
            tokio::time::timeout(Duration::from_secs(10), head_rx.recv()).await
        else {
            break;
        };
        let hash: Value = client.request("chain_getBlockHash", rpc_params![number]).await?;
        let block: Value = client.request("chain_getBlock", rpc_params![hash]).await?;
        for x in block["block"]["extrinsics"].as_array().into_iter().flatten() {
            let bytes = bitorch_primitives::keys::decode_hex(x.as_str().unwrap_or_default())?;
            let h = bitorch_primitives::blake2_256(&bytes);
            if let Some(t) = submitted.get(&h) {
                latencies.push(arrived.saturating_duration_since(*t));
                last_final = arrived;
            }
        }
    }
    // From the first submission to the finalized head holding the last transaction.
    let elapsed = last_final.duration_since(start).as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    };
    println!(
        "{:>10} {:>10} {:>10} {:>12} {:>14} {:>10} {:>10}",
        "rate/s", "submitted", "finalized", "seconds", "finalized/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:>10} {:>10} {:>10} {:>12.2} {:>14.0} {:>10} {:>10}",
        if rate > 0.0 { format!("{rate:.0}") } else { "max".into() },
        total,
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    eprintln!("(submission took {submit_secs:.2} s)");
    Ok(())
}
