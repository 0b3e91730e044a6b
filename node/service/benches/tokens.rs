//! What checking an API token costs a gateway per request, through the node's real parts: the
//! token parsed and its sr25519 signature verified (`primitives::api_token`), then the user's
//! allowance and the best block read through the chain service's typed queries (what
//! `GatewayBackend::token_user` does). Prints the mean per request of each part and in all, and
//! the same for an invalid token (refused at the signature). #13's goal: under 1 ms.
//!
//! Run: `cargo bench --profile dev -p bitorch-service --bench tokens` (the dev build, as the
//! README's node runs).

use bitorch_chain_spec::ChainSpec;
use bitorch_primitives::api_token::ApiToken;
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_service::{service, Chain, PoolLimits};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const N: u32 = 2_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::open(&dir.path().join("db"), ChainSpec::dev().unwrap()).unwrap();
    let genesis = chain.genesis();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let eve = pair_from_suri("//Eve").unwrap();
    let gateway = account_of(&pair_from_suri("//Alice").unwrap());
    let far = u64::MAX / 2;
    let text = ApiToken::make(&eve, gateway.clone(), far, None, &genesis).to_text();
    let mut forged = text.clone();
    forged.replace_range(10..11, if &text[10..11] == "0" { "1" } else { "0" });
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let (handle, _task) = service::spawn(chain, PoolLimits::default(), cancel.clone());
        let (mut verify, mut query) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..N {
            let t = Instant::now();
            let token = ApiToken::parse(&text).unwrap();
            token.verify(&gateway, &genesis, 1).unwrap();
            let t1 = Instant::now();
            let a = handle.allowance(token.user.clone(), gateway.clone()).await.unwrap();
            let best = handle.best().await.unwrap().number;
            std::hint::black_box((a, best));
            verify += t1 - t;
            query += t1.elapsed();
        }
        let t = Instant::now();
        for _ in 0..N {
            let token = ApiToken::parse(&forged).unwrap();
            assert!(token.verify(&gateway, &genesis, 1).is_err());
        }
        let refused = t.elapsed();
        let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(N);
        println!("\nAPI token check per request ({N} requests, this machine)\n");
        println!("| part | µs per request |");
        println!("|---|---:|");
        println!("| parse + sr25519 signature | {:.1} |", us(verify));
        println!("| allowance + best block (chain service queries) | {:.1} |", us(query));
        println!(
            "| **in all** | **{:.1}** ({:.3} ms; goal < 1 ms) |",
            us(verify + query),
            us(verify + query) / 1e3
        );
        println!("| a forged token, refused at the signature | {:.1} |", us(refused));
        cancel.cancel();
    });
}
