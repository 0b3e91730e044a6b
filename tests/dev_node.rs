//! End-to-end: the `bitorch` binary as a user runs it. A dev node on loopback, the wallet
//! commands against it, and restarts (graceful and `kill -9`) on the same base path.

mod common;

use common::dev::DevNode;
use common::free_port;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bitorch");
const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const UNIT: u128 = 1_000_000_000_000;

fn start_node(base: &Path, port: u16, tag: &str) -> DevNode {
    let args = ["--block-time".to_string(), "200".to_string()];
    let log = base.with_extension(format!("{tag}.log"));
    DevNode::start(base, port, &args, log, Duration::from_secs(60))
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run bitorch")
}

#[test]
fn dev_node_transfers_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("node");
    let port = free_port();
    let node = start_node(&base, port, "first");
    let h0 = node.best();
    node.wait_for_height(h0 + 3);

    let (alice0, bob0) = (node.free(ALICE), node.free(BOB));
    let out = cli(&[
        "wallet",
        "transfer",
        "--suri",
        "//Alice",
        "--to",
        BOB,
        "--amount",
        "10",
        "--rpc",
        &node.url(),
        "--output-type",
        "json",
    ]);
    assert!(out.status.success(), "transfer failed: {}", String::from_utf8_lossy(&out.stderr));
    let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["status"], "inBlock");
    let fee: u128 = receipt["fee"].as_str().unwrap().parse().unwrap();
    // The README: "a transfer costs about 0.00124 BTR".
    assert!((UNIT * 120 / 100_000..UNIT * 130 / 100_000).contains(&fee), "fee {fee}");
    assert_eq!(node.free(BOB), bob0 + 10 * UNIT);
    assert_eq!(node.free(ALICE), alice0 - 10 * UNIT - fee);

    // Text output, waiting for finality, with a decimal amount.
    let out = cli(&[
        "wallet",
        "transfer",
        "--suri",
        "//Alice",
        "--to",
        BOB,
        "--amount",
        "1.5",
        "--wait",
        "finalized",
        "--rpc",
        &node.url(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Finalized transfer of 1.5 BTR"), "{text}");

    let out = cli(&["wallet", "balance", BOB, "--rpc", &node.url(), "--output-type", "json"]);
    let bal: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bob_free: u128 = bal["free"].as_str().unwrap().parse().unwrap();
    assert_eq!(bob_free, bob0 + 10 * UNIT + 15 * UNIT / 10);
    assert_eq!(bal["reserved"], "100000000000000", "Bob's genesis worker bond");

    // Bad input through the CLI: a clear error, exit code non-zero, nothing changes.
    let before = (node.free(ALICE), node.free(BOB));
    for (args, expected) in [
        (vec!["--to", "not-an-address", "--amount", "1"], "invalid account"),
        (vec!["--to", BOB, "--amount=-1"], "invalid amount"),
        (vec!["--to", BOB, "--amount", "1.2.3"], "invalid amount"),
        (vec!["--to", BOB, "--amount", "99999999"], "insufficient free balance"),
    ] {
        let mut full = vec!["wallet", "transfer", "--suri", "//Alice", "--rpc"];
        let url = node.url();
        full.push(&url);
        full.extend(args);
        let out = cli(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "expected '{expected}': {err}");
    }
    assert_eq!((node.free(ALICE), node.free(BOB)), before);

    // kill -9, then restart on the same base path: same balances, same or greater height, and
    // the chain goes on.
    let height = node.best();
    let balances = (node.free(ALICE), node.free(BOB));
    drop(node);
    let node = start_node(&base, port, "after-kill");
    assert!(node.best() >= height, "height went back after kill -9");
    assert_eq!((node.free(ALICE), node.free(BOB)), balances);
    node.wait_for_height(node.best() + 2);

    // Graceful stop (SIGTERM) and restart.
    let height = node.best();
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut node = node;
    loop {
        if node.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(node);
    let node = start_node(&base, port, "after-term");
    assert!(node.best() >= height);
    assert_eq!((node.free(ALICE), node.free(BOB)), balances);
    node.wait_for_height(node.best() + 2);
    drop(node);

    // purge-chain removes the data; the next start begins again at genesis.
    let out = cli(&["purge-chain", "--base-path", base.to_str().unwrap(), "--chain", "dev", "-y"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = start_node(&base, port, "after-purge");
    assert!(node.best() < height);
}

#[test]
fn key_commands_match_substrate() {
    let out = cli(&["key", "inspect", "//Alice"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(ALICE), "{text}");
    assert!(
        text.contains("0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"),
        "{text}"
    );

    let out = cli(&["key", "generate", "--output-type", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["secretPhrase", "secretSeed", "publicKey", "accountId", "ss58Address"] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    let phrase = v["secretPhrase"].as_str().unwrap();
    let again = cli(&["key", "inspect", phrase, "--output-type", "json"]);
    let w: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(w["ss58Address"], v["ss58Address"]);

    let sig = cli(&["key", "sign", "--suri", "//Bob", "--message", "hello"]);
    let sig = String::from_utf8_lossy(&sig.stdout).trim().to_string();
    assert!(cli(&["key", "verify", &sig, BOB, "--message", "hello"]).status.success());
    assert!(!cli(&["key", "verify", &sig, BOB, "--message", "hellO"]).status.success());
    assert!(!cli(&["key", "verify", &sig, ALICE, "--message", "hello"]).status.success());

    let out = cli(&["key", "generate-node-key"]);
    assert!(String::from_utf8_lossy(&out.stderr).trim().starts_with("12D3KooW"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 64);
}

#[test]
fn chain_spec_command_writes_a_loadable_spec() {
    let out = cli(&["chain-spec", "--chain", "local", "--validators", "4"]);
    assert!(out.status.success());
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spec["genesis"]["validators"].as_array().unwrap().len(), 4);
    assert_eq!(spec["properties"]["ss58Format"], 42);
    for key in ["name", "id", "chainType", "bootNodes"] {
        assert!(spec.get(key).is_some(), "{key}");
    }
}
