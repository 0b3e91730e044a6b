//! End-to-end, on hosts made of network namespaces (root only; skipped with a message
//! elsewhere): a network as users have them. Four validators (the fourth, Dave, behind NAT)
//! and three workers (the gateway with layers 0..15 on a public host, two workers with layers
//! 15..30 each behind its own NAT), every host 25 ms away from the wire (50 ms round trips
//! between hosts, held by netfilter's queue: the kernel has no `netem`) and dropping 1% of
//! the packets it receives.
//!
//! - Finality keeps going (the intervals between finalized blocks are reported, p50 and p99).
//! - The NATed validator votes: with Charlie's cable pulled, blocks are finalized only if
//!   Dave's votes count (three of four are needed).
//! - A 2+2 partition (every host on one side or the other) stops finality; healing resumes it;
//!   no two hosts ever hold different blocks at one height, and nobody bans anybody for it.
//! - A chat completion through the gateway is computed in part by a NATed worker; pulling
//!   that worker's cable mid-generation fails over to the other one, with the same greedy
//!   answer as `bitorch infer`.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::model::{infer, model};
use common::net::BIN;
use common::netns::{host_dir, host_log, host_logs, test_dir, testnet_files, Bed, Procs};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const RPC: u16 = 9944;
const API: u16 = 8080;
const VALIDATORS: [&str; 4] = ["Alice", "Bob", "Charlie", "Dave"];
/// Hosts: 0..3 validators (3 behind NAT), 4 the gateway (layers 0..15), 5 and 6 workers of
/// layers 15..30 behind NAT.
const GATEWAY: usize = 4;
const NAT_WORKERS: [usize; 2] = [5, 6];
/// The third worker's key (six dev accounts are funded at genesis; it gets its funds from Alice).
const SIXTH_WORKER_KEY: &str = "//Worker6";

fn hash_at(bed: &Bed, i: usize, n: u64) -> Value {
    bed.rpc(i, RPC, "chain_getBlockHash", json!([n])).unwrap_or(Value::Null)
}

/// Every height up to the lowest best block among `hosts`: the same block at every one.
fn agree(bed: &Bed, hosts: &[usize]) -> u64 {
    let top = hosts.iter().map(|&i| bed.height(i, RPC).unwrap()).min().unwrap();
    for n in 1..=top {
        let first = hash_at(bed, hosts[0], n);
        assert!(!first.is_null(), "no block #{n}");
        for &i in &hosts[1..] {
            assert_eq!(hash_at(bed, i, n), first, "hosts {} and {i} disagree at #{n}", hosts[0]);
        }
    }
    top
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_slow_lossy_network_with_nat_keeps_finality_and_fails_over_a_cut_worker() {
    let mut bed = match Bed::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: this test needs root and `ip netns` (network namespaces): {e}");
            return;
        }
    };
    let natted = [false, false, false, true, false, true, true];
    for nat in natted {
        let added = if nat { bed.add_natted() } else { bed.add_public() };
        if let Err(e) = added {
            eprintln!("SKIPPED: hosts behind NAT need iptables: {e}");
            return;
        }
    }
    for i in 0..natted.len() {
        if let Err(e) = bed.delay(i, 25) {
            eprintln!("SKIPPED: latency needs netfilter's queue (NFQUEUE): {e}");
            return;
        }
        bed.loss(i, 1.0);
    }
    let t0 = Instant::now();
    // BITORCH_KEEP_LOGS=1 keeps the hosts' logs and stores (the folder is printed).
    let dir = test_dir();
    let all: Vec<usize> = (0..natted.len()).collect();
    let validators = [0, 1, 2, 3];
    let rtt = bed.rtt_ms(0, 1).unwrap();
    // (A NATed host answers no ping from outside; it pings out.)
    let rtt_nat = bed.rtt_ms(3, 0).unwrap();
    eprintln!("round trips: public-public {rtt:.1} ms, public-NATed {rtt_nat:.1} ms");
    assert!((48.0..70.0).contains(&rtt), "a round trip between hosts takes {rtt} ms, not ~50");

    let (spec, boot_peer) = testnet_files(dir.path(), 4, 0);
    let base = |i: usize| host_dir(dir.path(), i);
    let boot = format!("/ip4/{}/tcp/30333/p2p/{boot_peer}", bed.ip(0));
    let log = |i: usize| host_log(dir.path(), i);
    let logs = || host_logs(dir.path(), all.iter().copied(), 25);
    let node = |i: usize, extra: &[String]| -> Vec<String> {
        let mut v: Vec<String> = vec!["node".into(), "--chain".into(), spec.display().to_string()];
        v.extend(["--base-path".into(), base(i).display().to_string()]);
        v.extend(["--listen-addr".into(), "/ip4/0.0.0.0/tcp/30333".into()]);
        // The default block time: a job lives 60 blocks, and a generation slowed by a
        // failover must end within its job's life.
        v.extend(["--block-time".into(), "1000".into(), "--allow-private-ip".into()]);
        if !bed.hosts[i].natted {
            v.extend(["--public-addr".into(), format!("/ip4/{}/tcp/30333", bed.ip(i))]);
        }
        if i > 0 {
            v.extend(["--boot-nodes".into(), boot.clone()]);
        }
        v.extend(extra.iter().cloned());
        v
    };
    let mut procs = Procs(Vec::new());
    for (i, name) in VALIDATORS.iter().enumerate() {
        procs.0.push(bed.spawn(i, BIN, &node(i, &[format!("--validator=//{name}")]), &log(i)));
    }
    let wait = |what: &str, secs: u64, ok: &dyn Fn() -> bool| -> f64 {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{what}: {secs:.1} s (at {:.1} s)", t0.elapsed().as_secs_f64());
        secs
    };
    wait("4 validators at #3", 120, &|| {
        validators.iter().all(|&i| bed.height(i, RPC).is_some_and(|h| h >= 3))
    });

    // The workers. The sixth key gets its funds from Alice first.
    let out = Command::new(BIN)
        .args(["key", "inspect", SIXTH_WORKER_KEY, "--output-type", "json"])
        .output()
        .unwrap();
    let sixth: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sixth = sixth["ss58Address"].as_str().unwrap().to_string();
    let wallet = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", bed.ns(0), BIN, "wallet"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "wallet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    wallet(&["transfer", "--suri", "//Alice", "--to", &sixth, "--amount", "10000"]);
    // Workers are bonded and registered (only the validators are at genesis), so that they
    // are paid.
    for key in ["//Eve", "//Ferdie", SIXTH_WORKER_KEY] {
        wallet(&["bond", "--suri", key, "--amount", "200"]);
        wallet(&["register-worker", "--suri", key]);
    }
    let model = model().display().to_string();
    // The gateway opens jobs and serves the API; the other workers only compute.
    let worker = |layers: &str, key: &str, gateway: bool| -> Vec<String> {
        let mut v = vec!["--serve-model", model.as_str(), "--layers", layers, "--worker-key", key];
        v.extend(["--api-account", key]);
        v.extend(if gateway { ["--api-port", "8080"] } else { ["--no-job-ahead", ""] });
        v.into_iter().filter(|s| !s.is_empty()).map(str::to_string).collect()
    };
    let keys =
        [(GATEWAY, "0..15", "//Eve"), (5, "15..30", "//Ferdie"), (6, "15..30", SIXTH_WORKER_KEY)];
    for (i, layers, key) in keys {
        procs.0.push(bed.spawn(i, BIN, &node(i, &worker(layers, key, i == GATEWAY)), &log(i)));
    }

    // Finality at 50 ms round trips and 1% loss: the time between finalized blocks, over 20.
    let mut last = (bed.height(0, RPC).unwrap(), Instant::now());
    let mut gaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while gaps.len() < 20 {
        assert!(Instant::now() < deadline, "finality too slow: {gaps:?}\n{}", logs());
        let h = bed.height(0, RPC).unwrap();
        if h > last.0 {
            let secs = last.1.elapsed().as_secs_f64() / (h - last.0) as f64;
            gaps.extend(std::iter::repeat_n(secs, (h - last.0) as usize));
            last = (h, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "50 ms round trips, 1% loss, 1 s block time: a block finalized every {:.2} s (p50), {:.2} s (p99) over {} blocks",
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps.len()
    );
    agree(&bed, &validators);

    // The validator behind NAT votes: without Charlie, three of four votes need Dave's.
    let health = |i: usize| bed.rpc(i, RPC, "system_health", json!([]));
    wait("AutoNAT to find Dave unreachable", 120, &|| {
        health(3).is_ok_and(|h| h["reachability"]["status"] == "private")
    });
    bed.disconnect(2);
    std::thread::sleep(Duration::from_secs(1));
    let from = bed.height(0, RPC).unwrap();
    wait("3 blocks finalized with Charlie's cable pulled (Dave votes)", 60, &|| {
        [0, 1, 3].iter().all(|&i| bed.height(i, RPC).is_some_and(|h| h >= from + 3))
    });
    bed.reconnect(2);
    let top = bed.height(0, RPC).unwrap();
    wait("Charlie back and caught up", 120, &|| bed.height(2, RPC).is_some_and(|h| h >= top));

    // A 2+2 partition: no side has two thirds of the voting power.
    let (a, b) = ([0, 1, GATEWAY], [2, 3, 5, 6]);
    bed.split(&a, &b);
    std::thread::sleep(Duration::from_secs(2));
    let cut_at: Vec<u64> = validators.iter().map(|&i| bed.height(i, RPC).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(8));
    let after: Vec<u64> = validators.iter().map(|&i| bed.height(i, RPC).unwrap()).collect();
    eprintln!("partitioned: heights {cut_at:?} -> {after:?} in 8 s");
    assert_eq!(after, cut_at, "a side finalized without two thirds of the votes");
    bed.join(&a, &b);
    let target = after.iter().max().unwrap() + 3;
    wait("finality to resume after healing (every validator 3 blocks further)", 120, &|| {
        validators.iter().all(|&i| bed.height(i, RPC).is_some_and(|h| h >= target))
    });

    // The pipeline through a NATed worker.
    let models = || bed.rpc(GATEWAY, RPC, "bitorch_models", json!([]));
    wait("the gateway up with the model", 180, &|| {
        models().is_ok_and(|m| m[0]["name"].is_string())
    });
    let models = models().unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    // A worker's RPC opens once its stage is registered on chain and loaded: after a
    // partition that can be later than the gateway's.
    let peer = |i: usize| bed.rpc(i, RPC, "system_localPeerId", json!([])).ok();
    wait("both NATed workers' RPC up", 180, &|| NAT_WORKERS.iter().all(|&i| peer(i).is_some()));
    let nat_peers: Vec<Value> = NAT_WORKERS.iter().map(|&i| peer(i).unwrap()).collect();
    wait("the gateway to find both NATed workers", 180, &|| {
        let ws = bed.rpc(GATEWAY, RPC, "bitorch_workers", json!([models[0]["id"]]));
        let ws = ws.unwrap_or(json!([]));
        nat_peers
            .iter()
            .all(|p| ws.as_array().is_some_and(|ws| ws.iter().any(|w| w["peerId"] == *p)))
    });
    // The NATed workers dial the public gateway directly (hole punching, or their direct dial
    // once a relayed connection stayed relayed): tokens do not take the relay's detour.
    wait("the gateway's connections to both NATed workers direct", 120, &|| {
        let peers = bed.rpc(GATEWAY, RPC, "system_peers", json!([])).unwrap_or(json!([]));
        nat_peers.iter().all(|p| {
            peers.as_array().is_some_and(|ps| {
                ps.iter().any(|x| x["peerId"] == *p && x["connection"] == "direct")
            })
        })
    });
    let ask = |prompt: &str, max_tokens: u32| {
        let req = json!({
            "model": name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        });
        let (status, body) = bed.post(GATEWAY, API, "/v1/chat/completions", &req, 240);
        assert_eq!(status, 200, "{body}\n{}", logs());
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let v = ask("What is the capital of France?", 12);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "answer: {text}");
    let second = v["bitorch"]["route"][1]["peer"].clone();
    assert!(nat_peers.contains(&second), "layers 15..30 by a NATed worker: {}", v["bitorch"]);
    eprintln!("through a NATed worker: {text:?}");

    // Pull the serving NATed worker's cable mid-generation: the answer is the same.
    let (prompt, tokens) = ("Write a short story about a lighthouse keeper.", 96);
    let reference = infer(prompt, tokens);
    let forwards = |i: usize| bed.metric(i, "bitorch_stage_forwards_total").unwrap_or(0.0);
    let before: Vec<f64> = NAT_WORKERS.iter().map(|&i| forwards(i)).collect();
    let (answer, cut, cut_at) = std::thread::scope(|s| {
        let request = s.spawn(|| ask(prompt, tokens));
        // The one computing: 20 steps in, its cable goes.
        let deadline = Instant::now() + Duration::from_secs(120);
        let serving = loop {
            assert!(Instant::now() < deadline, "no NATed worker computes:\n{}", logs());
            if let Some(k) = (0..2).find(|&k| forwards(NAT_WORKERS[k]) >= before[k] + 20.0) {
                break NAT_WORKERS[k];
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        bed.disconnect(serving);
        let cut_at = Instant::now();
        (request.join().unwrap(), serving, cut_at)
    });
    let recovered = cut_at.elapsed().as_secs_f64();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    let other = NAT_WORKERS.iter().copied().find(|&i| i != cut).unwrap();
    eprintln!(
        "cable of host {cut} pulled mid-generation: answered {recovered:.1} s later through host \
         {other}, failovers {}",
        answer["bitorch"]["failovers"]
    );
    assert_eq!(text, reference, "the failed-over answer differs from bitorch infer's");
    assert!(answer["bitorch"]["failovers"].as_u64().unwrap() >= 1, "{}", answer["bitorch"]);
    assert_eq!(
        answer["bitorch"]["route"][1]["peer"],
        peer(other).unwrap(),
        "{}",
        answer["bitorch"]
    );
    bed.reconnect(cut);

    let top = agree(&bed, &validators);
    eprintln!("all 4 validators hold the same {top} blocks");
    // Nobody took the partition or the cut cables for misbehaviour (a request cut by a
    // partition once got its sender banned for 10 minutes).
    for &i in &all {
        let banned = bed.rpc(i, RPC, "system_bannedPeers", json!([])).unwrap();
        assert_eq!(banned, json!([]), "host {i} banned peers");
        // No task died halfway (a relayed connection's once did, and its peer looked
        // connected ever after).
        let panics = bed.metric(i, "bitorch_panics_total");
        assert_eq!(panics, Some(0.0), "host {i}'s panics:\n{}", logs());
    }
    drop(procs);
}
