//! End-to-end, on loopback: validators killed with SIGKILL (`kill -9`) twenty times in a row,
//! at random moments, while transfers keep coming. Each time the killed node's store (RocksDB)
//! opens again with every block it had shown, it catches up, and it votes again: the kills go
//! round the four validators, and the three left after each kill (the one killed just before
//! among them) must finalize two blocks, which takes three votes of four. The chain never
//! forks, and every transfer that was reported included is in the final balances.

mod common;

use common::net::{agree, quiet_logs, testnet, Node, BIN};
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FERDIE: &str = "5CiPPseXPECbkjWCa6MnjNokrgYjMqmKndv2rSnekmSK2DjL";
const KILLS: usize = 20;

/// A small deterministic generator for the kill moments (the seed is printed;
/// `BITORCH_CRASH_SEED` picks another).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn free(node: &Node, who: &str) -> u128 {
    node.rpc("bitorch_account", json!([who])).unwrap()["free"].as_str().unwrap().parse().unwrap()
}

/// Waits up to `secs` for `ok`, else panics with the nodes' logs.
fn wait_for(what: &str, nodes: &[Node], secs: u64, ok: impl Fn() -> bool) -> f64 {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out: {what}\n{}",
            quiet_logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed().as_secs_f64()
}

#[test]
fn validators_killed_twenty_times_under_load_come_back_catch_up_and_vote() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut nodes, boot) = testnet(dir.path(), 4);
    nodes[0].start(&spec, "");
    for n in &mut nodes[1..] {
        n.start(&spec, &boot);
    }
    wait_for("4 nodes at #3", &nodes, 120, || {
        nodes.iter().all(|n| n.try_height().is_ok_and(|h| h >= 3))
    });
    let seed = std::env::var("BITORCH_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    eprintln!("kill moments from seed {seed}");
    let mut rng = Lcg(seed);
    let ferdie_before = free(&nodes[0], FERDIE);

    // Steady transfers from Eve to Ferdie, each through a node that is up at the time.
    let stop = AtomicBool::new(false);
    let (sent, included) = (AtomicU64::new(0), AtomicU64::new(0));
    let ports: Vec<u16> = nodes.iter().map(|n| n.rpc).collect();
    let down = AtomicU64::new(u64::MAX);
    let (recovery, catch_up) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let port = ports[(0..4)
                    .map(|k| (i + k) % 4)
                    .find(|&k| k as u64 != down.load(Ordering::Relaxed))
                    .unwrap()];
                sent.fetch_add(1, Ordering::Relaxed);
                let ok = Command::new(BIN)
                    .args([
                        "wallet", "transfer", "--suri", "//Eve", "--to", FERDIE, "--amount",
                        "0.001",
                    ])
                    .args(["--rpc", &format!("ws://127.0.0.1:{port}")])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    included.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (mut recovery, mut catch_up) = (Vec::new(), Vec::new());
        for round in 0..KILLS {
            let k = round % 4;
            std::thread::sleep(Duration::from_millis(rng.below(2000)));
            let shown = nodes[k].try_height().unwrap_or(0);
            down.store(k as u64, Ordering::Relaxed);
            nodes[k].stop(); // SIGKILL
                             // The other three finalize: three votes of four, one of them from the validator
                             // killed in the round before, which must have come back and voted.
            let others: Vec<usize> = (0..4).filter(|&i| i != k).collect();
            let from = others.iter().map(|&i| nodes[i].height()).max().unwrap();
            wait_for(
                &format!("round {round}: 2 blocks without {}", nodes[k].name),
                &nodes,
                60,
                || others.iter().all(|&i| nodes[i].try_height().is_ok_and(|h| h >= from + 2)),
            );
            // It starts again on the same store.
            let restarted = Instant::now();
            nodes[k].start(&spec, if k == 0 { "" } else { &boot });
            let opened = wait_for(
                &format!("round {round}: {} answers again", nodes[k].name),
                &nodes,
                30,
                || nodes[k].try_height().is_ok(),
            );
            let back = nodes[k].try_height().unwrap();
            assert!(
                back >= shown,
                "round {round}: {} came back at #{back}, it had shown #{shown}",
                nodes[k].name
            );
            down.store(u64::MAX, Ordering::Relaxed);
            let head = others.iter().map(|&i| nodes[i].height()).max().unwrap();
            wait_for(
                &format!("round {round}: {} catches up to #{head}", nodes[k].name),
                &nodes,
                60,
                || nodes[k].try_height().is_ok_and(|h| h >= head),
            );
            recovery.push(opened);
            catch_up.push(restarted.elapsed().as_secs_f64());
        }
        // The last one killed votes too: without the next validator, the chain goes on.
        let k = KILLS % 4;
        nodes[k].stop();
        let others: Vec<usize> = (0..4).filter(|&i| i != k).collect();
        let from = others.iter().map(|&i| nodes[i].height()).max().unwrap();
        wait_for("2 blocks after the last kill", &nodes, 60, || {
            others.iter().all(|&i| nodes[i].try_height().is_ok_and(|h| h >= from + 2))
        });
        nodes[k].start(&spec, if k == 0 { "" } else { &boot });
        stop.store(true, Ordering::Relaxed);
        (recovery, catch_up)
    });
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{KILLS} kills: the store opened and the node answered within {:.1} s (worst), caught up within {:.1} s of its restart (worst)",
        max(&recovery),
        max(&catch_up)
    );
    let head = nodes.iter().filter_map(|n| n.try_height().ok()).max().unwrap();
    wait_for("every node at the head", &nodes, 60, || {
        nodes.iter().all(|n| n.try_height().is_ok_and(|h| h >= head))
    });
    agree(&nodes.iter().collect::<Vec<_>>(), head);
    // Nothing reported included is lost (a transfer cut by a kill may still have landed).
    let (sent, included) = (sent.into_inner(), included.into_inner());
    let got = (free(&nodes[0], FERDIE) - ferdie_before) / 1_000_000_000;
    eprintln!("transfers: {sent} sent, {included} reported included, {got} in Ferdie's balance; {head} blocks agree");
    assert!(included >= 10, "too few transfers went through: {included} of {sent}");
    assert!(
        (included..=sent).contains(&(got as u64)),
        "{got} transfers landed; {included} reported, {sent} sent"
    );
}
