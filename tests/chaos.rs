//! End-to-end, on hosts made of network namespaces (root only; skipped with a message
//! elsewhere): four validators, each on its own host, every host dropping 1% of the packets
//! it receives. Finality keeps going (the intervals between finalized blocks are reported);
//! a 2+2 partition stops it (neither side has two thirds of the votes), healing resumes it, and
//! no two nodes ever hold different blocks at one height.

mod common;

use common::net::BIN;
use common::netns::{host_dir, host_log, host_logs, testnet_files, Bed, Procs};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const RPC: u16 = 9944;
const NAMES: [&str; 4] = ["Alice", "Bob", "Charlie", "Dave"];

/// The best block's number at host `i` (`None` while it does not answer).
fn height(bed: &Bed, i: usize) -> Option<u64> {
    let h = bed.rpc(i, RPC, "chain_getHeader", json!([])).ok()?;
    u64::from_str_radix(h["number"].as_str()?.trim_start_matches("0x"), 16).ok()
}

fn hash_at(bed: &Bed, i: usize, n: u64) -> Value {
    bed.rpc(i, RPC, "chain_getBlockHash", json!([n])).unwrap_or(Value::Null)
}

/// Every height up to the lowest best block: the same block at every host.
fn agree(bed: &Bed, hosts: usize) -> u64 {
    let top = (0..hosts).map(|i| height(bed, i).unwrap()).min().unwrap();
    for n in 1..=top {
        let first = hash_at(bed, 0, n);
        assert!(!first.is_null(), "no block #{n}");
        for i in 1..hosts {
            assert_eq!(hash_at(bed, i, n), first, "hosts 0 and {i} disagree at #{n}");
        }
    }
    top
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn finality_survives_loss_stops_in_a_partition_and_resumes_when_it_heals() {
    let bed = match Bed::public(4) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: this test needs root and `ip netns` (network namespaces): {e}");
            return;
        }
    };
    let mut dir = tempfile::tempdir().unwrap();
    // BITORCH_KEEP_LOGS=1 keeps the hosts' logs and stores (the folder is printed).
    if std::env::var_os("BITORCH_KEEP_LOGS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("logs kept in {}", dir.path().display());
    }
    let (spec, boot_peer) = testnet_files(dir.path(), 4, 0);
    let base = |i: usize| host_dir(dir.path(), i);
    let boot = format!("/ip4/{}/tcp/30333/p2p/{boot_peer}", bed.ip(0));
    for i in 0..4 {
        bed.loss(i, 1.0);
    }
    let log = |i: usize| host_log(dir.path(), i);
    let logs = || host_logs(dir.path(), 0..4, 25);
    let mut procs = Procs(Vec::new());
    for (i, name) in NAMES.iter().enumerate() {
        let mut args: Vec<String> =
            vec!["node".into(), "--chain".into(), spec.display().to_string()];
        args.extend(["--base-path".into(), base(i).display().to_string()]);
        args.extend(["--validator".into(), format!("//{name}")]);
        args.extend(["--listen-addr".into(), "/ip4/0.0.0.0/tcp/30333".into()]);
        args.extend(["--public-addr".into(), format!("/ip4/{}/tcp/30333", bed.ip(i))]);
        args.extend(["--block-time".into(), "500".into(), "--allow-private-ip".into()]);
        if i > 0 {
            args.extend(["--boot-nodes".into(), boot.clone()]);
        }
        procs.0.push(bed.spawn(i, BIN, &args, &log(i)));
    }
    let wait = |what: &str, secs: u64, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("4 validators at #3", 120, &|| (0..4).all(|i| height(&bed, i).is_some_and(|h| h >= 3)));

    // With 1% loss: the time between finalized blocks, over 20 blocks.
    let mut last = (height(&bed, 0).unwrap(), Instant::now());
    let mut gaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while gaps.len() < 20 {
        assert!(Instant::now() < deadline, "finality too slow: {gaps:?}\n{}", logs());
        let h = height(&bed, 0).unwrap();
        if h > last.0 {
            let secs = last.1.elapsed().as_secs_f64() / (h - last.0) as f64;
            gaps.extend(std::iter::repeat_n(secs, (h - last.0) as usize));
            last = (h, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "1% loss: a block finalized every {:.2} s (p50), {:.2} s (p99) over {} blocks",
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps.len()
    );
    agree(&bed, 4);

    // A 2+2 partition: no side has two thirds of the voting power.
    for (i, j) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        bed.cut(i, j);
    }
    std::thread::sleep(Duration::from_secs(2));
    let cut_at: Vec<u64> = (0..4).map(|i| height(&bed, i).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(8));
    let after: Vec<u64> = (0..4).map(|i| height(&bed, i).unwrap()).collect();
    eprintln!("partitioned: heights {cut_at:?} -> {after:?} in 8 s");
    assert_eq!(after, cut_at, "a side finalized without two thirds of the votes");
    assert!(agree(&bed, 4) >= *cut_at.iter().min().unwrap());

    // Healed: finality resumes everywhere, on one chain.
    let healed = Instant::now();
    for (i, j) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        bed.heal(i, j);
    }
    let target = after.iter().max().unwrap() + 3;
    wait("finality to resume after healing", 120, &|| {
        (0..4).all(|i| height(&bed, i).is_some_and(|h| h >= target))
    });
    eprintln!("healed: every node 3 blocks further in {:.1} s", healed.elapsed().as_secs_f64());
    let top = agree(&bed, 4);
    eprintln!("all 4 hosts hold the same {top} blocks");
    // Nobody took the partition for misbehaviour (a request cut by it once got its sender
    // banned for 10 minutes, and finality crawled for a minute and a half).
    for i in 0..4 {
        let banned = bed.rpc(i, RPC, "system_bannedPeers", json!([])).unwrap();
        assert_eq!(banned, json!([]), "host {i} banned peers after the partition");
    }
    drop(procs);
}
