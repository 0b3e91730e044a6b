//! A soak, on hosts made of network namespaces (root only; skipped with a message elsewhere):
//! four validators (Alice's node the gateway, layers 0..15) and a worker behind NAT (layers
//! 15..30), every host 25 ms from the wire and dropping 1% of what it receives, under steady
//! transfers and chat completions for `BITORCH_SOAK_SECS` (90 s by default, the CI run;
//! `scripts/soak.sh 30` runs 30 minutes). Every request answers without error, every transfer
//! reported included is in the final balance, the hosts agree on every block, and each node's
//! resident memory after warm-up (the first third) grows at most by what the slope allows: the
//! slope of each node, from a least-squares line through samples every 5 s, is printed.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::model::model;
use common::net::BIN;
use common::netns::{host_dir, host_log, host_logs, test_dir, testnet_files, Bed, Procs};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RPC: u16 = 9944;
const API: u16 = 8080;
const FERDIE: &str = "5CiPPseXPECbkjWCa6MnjNokrgYjMqmKndv2rSnekmSK2DjL";
/// Most a node's fitted memory line may rise over the measured window in the CI run.
const MAX_RISE_MB: f64 = 48.0;

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The least-squares slope of `(t, y)` in y per unit of t.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mt, my) = points.iter().fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let cov: f64 = points.iter().map(|(t, y)| (t - mt) * (y - my)).sum();
    let var: f64 = points.iter().map(|(t, _)| (t - mt) * (t - mt)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

fn free(bed: &Bed, i: usize, who: &str) -> u128 {
    let a = bed.rpc(i, RPC, "bitorch_account", json!([who])).unwrap();
    a["free"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_soak_under_transfers_and_chats_loses_nothing_and_keeps_memory_flat() {
    let mut bed = match Bed::public(4) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: this test needs root and `ip netns` (network namespaces): {e}");
            return;
        }
    };
    let worker_host = match bed.add_natted() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("SKIPPED: a host behind NAT needs iptables: {e}");
            return;
        }
    };
    let hosts: Vec<usize> = (0..=worker_host).collect();
    for &i in &hosts {
        if let Err(e) = bed.delay(i, 25) {
            eprintln!("SKIPPED: latency needs netfilter's queue (NFQUEUE): {e}");
            return;
        }
        bed.loss(i, 1.0);
    }
    let secs: u64 =
        std::env::var("BITORCH_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(90);
    // BITORCH_KEEP_LOGS=1 keeps the hosts' logs and stores (the folder is printed).
    let dir = test_dir();
    let (spec, boot_peer) = testnet_files(dir.path(), 4, 0);
    let boot = format!("/ip4/{}/tcp/30333/p2p/{boot_peer}", bed.ip(0));
    let logs = || host_logs(dir.path(), hosts.iter().copied(), 25);
    let model = model().display().to_string();
    let mut procs = Procs(Vec::new());
    for &i in &hosts {
        let mut args: Vec<String> =
            vec!["node".into(), "--chain".into(), spec.display().to_string()];
        args.extend(["--base-path".into(), host_dir(dir.path(), i).display().to_string()]);
        args.extend(["--listen-addr".into(), "/ip4/0.0.0.0/tcp/30333".into()]);
        args.extend(["--block-time".into(), "500".into(), "--allow-private-ip".into()]);
        if i > 0 {
            args.extend(["--boot-nodes".into(), boot.clone()]);
        }
        let extra: Vec<&str> = match i {
            0 => vec![
                "--validator",
                "//Alice",
                "--serve-model",
                &model,
                "--layers",
                "0..15",
                "--api-account",
                "//Alice",
            ],
            1 => vec!["--validator", "//Bob"],
            2 => vec!["--validator", "//Charlie"],
            3 => vec!["--validator", "//Dave"],
            _ => vec![
                "--serve-model",
                &model,
                "--layers",
                "15..30",
                "--worker-key",
                "//Ferdie",
                "--api-account",
                "//Ferdie",
                "--no-job-ahead",
            ],
        };
        args.extend(extra.iter().map(|s| s.to_string()));
        if !bed.hosts[i].natted {
            args.extend(["--public-addr".into(), format!("/ip4/{}/tcp/30333", bed.ip(i))]);
        }
        procs.0.push(bed.spawn(i, BIN, &args, &host_log(dir.path(), i)));
    }
    let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
    let wait = |what: &str, secs: u64, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait("the validators at #3", 120, &|| {
        (0..4).all(|i| bed.height(i, RPC).is_some_and(|h| h >= 3))
    });
    let models = || bed.rpc(0, RPC, "bitorch_models", json!([]));
    wait("the gateway up with the model", 180, &|| {
        models().is_ok_and(|m| m[0]["name"].is_string())
    });
    let models = models().unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    let peer = || bed.rpc(worker_host, RPC, "system_localPeerId", json!([]));
    wait("the worker up", 180, &|| peer().is_ok());
    let worker_peer = peer().unwrap();
    wait("the gateway to find the NATed worker", 180, &|| {
        let ws = bed.rpc(0, RPC, "bitorch_workers", json!([models[0]["id"]])).unwrap_or(json!([]));
        ws.as_array().is_some_and(|ws| ws.iter().any(|w| w["peerId"] == worker_peer))
    });
    let ferdie_before = free(&bed, 1, FERDIE);

    let stop = AtomicBool::new(false);
    let (sent, included, chats) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); pids.len()];
    // The database's memtables (in MB) at each sample: memory RocksDB holds up to its budget.
    let mut memtables: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
    const MEMTABLES: &str = "bitorch_db_memory_bytes{part=\"memtables\"}";
    let start = Instant::now();
    std::thread::scope(|s| {
        // Transfers through Bob's node, one after another.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        bed.ns(1),
                        BIN,
                        "wallet",
                        "transfer",
                        "--suri",
                        "//Eve",
                    ])
                    .args(["--to", FERDIE, "--amount", "0.001"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "a transfer failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                included.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Chat completions through the gateway, one after another.
        s.spawn(|| {
            let req = json!({
                "model": name,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 12,
                "temperature": 0,
            });
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = bed.post(0, API, "/v1/chat/completions", &req, 120);
                assert_eq!(status, 200, "a chat failed: {body}\n{}", logs());
                let v: Value = serde_json::from_str(&body).unwrap();
                let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
                assert!(text.contains("Paris"), "answer: {text}");
                chats.fetch_add(1, Ordering::Relaxed);
            }
        });
        while start.elapsed() < Duration::from_secs(secs) {
            let t = start.elapsed().as_secs_f64() / 60.0;
            for (k, &pid) in pids.iter().enumerate() {
                let mb =
                    rss_mb(pid).unwrap_or_else(|| panic!("host {k}'s node is gone:\n{}", logs()));
                samples[k].push((t, mb));
                if let Some(b) = bed.metric(k, MEMTABLES) {
                    memtables[k].push(b / 1e6);
                }
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (sent, included, chats) = (sent.into_inner(), included.into_inner(), chats.into_inner());
    eprintln!(
        "{:.0} s: {chats} chat completions, {included} of {sent} transfers, none failed",
        start.elapsed().as_secs_f64()
    );
    // Nothing lost: every transfer is in Ferdie's balance, on every host.
    let top = (0..4).map(|i| bed.height(i, RPC).unwrap()).max().unwrap();
    wait("the validators at the head", 60, &|| {
        (0..4).all(|i| bed.height(i, RPC).is_some_and(|h| h >= top))
    });
    for i in 0..4 {
        let got = (free(&bed, i, FERDIE) - ferdie_before) / 1_000_000_000;
        assert_eq!(got as u64, included, "host {i}: Ferdie got {got} transfers of {included}");
    }
    // One chain: each header names its parent, so the same block at the top height means the
    // same blocks below it (a few heights are checked on the way too).
    for n in (1..=top).step_by(((top / 16).max(1)) as usize).chain([top]) {
        let first = bed.rpc(0, RPC, "chain_getBlockHash", json!([n])).unwrap();
        for i in 1..4 {
            assert_eq!(bed.rpc(i, RPC, "chain_getBlockHash", json!([n])).unwrap(), first, "#{n}");
        }
    }
    assert!(chats >= 3 && included >= 3, "too little load: {chats} chats, {included} transfers");
    // Memory after warm-up.
    let roles =
        ["Alice (validator, gateway, 0..15)", "Bob", "Charlie", "Dave", "NATed worker (15..30)"];
    for (k, points) in samples.iter().enumerate() {
        let warm: Vec<(f64, f64)> =
            points.iter().copied().filter(|(t, _)| *t * 60.0 >= secs as f64 / 3.0).collect();
        let window = warm.last().unwrap().0 - warm[0].0;
        let s = slope(&warm);
        let (first, last) = (warm[0].1, warm.last().unwrap().1);
        let (m0, m1) = (memtables[k].first().copied(), memtables[k].last().copied());
        eprintln!(
            "host {k} {}: {first:.0} -> {last:.0} MB resident after warm-up, slope {s:+.2} MB/min ({} samples); database memtables {:.1} -> {:.1} MB (most {:.1})",
            roles[k],
            warm.len(),
            m0.unwrap_or(0.0),
            m1.unwrap_or(0.0),
            memtables[k].iter().fold(0f64, |a, b| a.max(*b)),
        );
        assert!(m1.is_some(), "host {k}'s metrics never answered");
        // No task died halfway.
        assert_eq!(bed.metric(k, "bitorch_panics_total"), Some(0.0), "host {k} panicked");
        assert!(
            s * window < MAX_RISE_MB,
            "host {k}'s memory rises {:.0} MB in {window:.1} min",
            s * window
        );
    }
    drop(procs);
}
