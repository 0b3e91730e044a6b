//! End-to-end: a 4-validator network on loopback, each node a `bitorch` process. Finality,
//! agreement, a transfer through one node seen at another, a validator killed and restarted
//! (it catches up from peers), and two of four down (finality stops, then resumes).

mod common;

use common::{free_port, rpc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bitorch");
const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
const NAMES: [&str; 4] = ["Alice", "Bob", "Charlie", "Dave"];

struct Node {
    base: PathBuf,
    rpc: u16,
    p2p: u16,
    name: &'static str,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Node {
    fn start(&mut self, spec: &Path, boot: &str) {
        self.start_as(spec, boot, true);
    }

    fn start_as(&mut self, spec: &Path, boot: &str, validator: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--block-time", "500"]);
        if validator {
            cmd.args(["--validator", &format!("//{}", self.name)]);
        }
        cmd.arg("--chain")
            .arg(spec)
            .arg("--base-path")
            .arg(&self.base)
            .args(["--rpc-port", &self.rpc.to_string()])
            .args(["--listen-addr", &format!("/ip4/127.0.0.1/tcp/{}", self.p2p)])
            .stdout(Stdio::null())
            .stderr(log);
        if !boot.is_empty() {
            cmd.args(["--boot-nodes", boot]);
        }
        self.child = Some(cmd.spawn().expect("start node"));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn height(&self) -> u64 {
        rpc(self.rpc, "chain_getHeader", json!([]))
            .ok()
            .and_then(|h| h["number"].as_str().map(|s| s.to_string()))
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0)
    }

    fn hash_at(&self, n: u64) -> Value {
        rpc(self.rpc, "chain_getBlockHash", json!([n])).unwrap_or(Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.base.with_extension("log")).unwrap_or_default()
    }
}

fn wait(what: &str, nodes: &[Node], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        if Instant::now() > deadline {
            let logs: String = nodes.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n----\n");
            let tail: String =
                logs.chars().rev().take(6000).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("timed out waiting for {what}; logs:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn agree(nodes: &[&Node], upto: u64) {
    for n in 1..=upto {
        let first = nodes[0].hash_at(n);
        assert!(!first.is_null(), "no block #{n}");
        for node in &nodes[1..] {
            assert_eq!(node.hash_at(n), first, "nodes disagree at #{n}");
        }
    }
}

#[test]
fn four_validators_finalize_agree_and_survive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    let out = Command::new(BIN)
        .args(["chain-spec", "--chain", "local", "--validators", "4", "-o"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut nodes: Vec<Node> = NAMES
        .iter()
        .map(|name| Node {
            base: dir.path().join(name),
            rpc: free_port(),
            p2p: free_port(),
            name,
            child: None,
        })
        .collect();
    // Node keys, so that everyone can name Alice's node as the boot node.
    let key_dir = nodes[0].base.join("chains/local/network");
    std::fs::create_dir_all(&key_dir).unwrap();
    let out = Command::new(BIN)
        .args(["key", "generate-node-key", "--file"])
        .arg(key_dir.join("secret_ed25519"))
        .output()
        .unwrap();
    let boot_peer = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let boot = format!("/ip4/127.0.0.1/tcp/{}/p2p/{boot_peer}", nodes[0].p2p);
    nodes[0].start(&spec, "");
    for n in &mut nodes[1..] {
        n.start(&spec, &boot);
    }
    wait("4 nodes at #3", &nodes, || nodes.iter().all(|n| n.height() >= 3));
    agree(&nodes.iter().collect::<Vec<_>>(), 3);
    assert_eq!(rpc(nodes[0].rpc, "system_localPeerId", json!([])).unwrap(), boot_peer.as_str());
    wait("every node to see peers", &nodes, || {
        nodes
            .iter()
            .all(|n| rpc(n.rpc, "system_health", json!([])).unwrap()["peers"].as_u64() >= Some(1))
    });
    let listen = rpc(nodes[1].rpc, "system_localListenAddresses", json!([])).unwrap();
    assert!(
        listen[0].as_str().unwrap().contains(&format!("/tcp/{}/p2p/", nodes[1].p2p)),
        "{listen}"
    );

    // A transfer submitted to node 4 is finalized and visible from node 1.
    let before: u128 = rpc(nodes[0].rpc, "bitorch_account", json!([BOB])).unwrap()["free"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let out = Command::new(BIN)
        .args([
            "wallet",
            "transfer",
            "--suri",
            "//Eve",
            "--to",
            BOB,
            "--amount",
            "7",
            "--wait",
            "finalized",
        ])
        .args(["--rpc", &format!("ws://127.0.0.1:{}", nodes[3].rpc)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait("the transfer on node 1", &nodes, || {
        rpc(nodes[0].rpc, "bitorch_account", json!([BOB])).unwrap()["free"].as_str().unwrap()
            == (before + 7_000_000_000_000).to_string()
    });

    // One validator down: the other three go on.
    nodes[3].stop();
    let h = nodes[0].height();
    wait("finality with 3 of 4", &nodes, || nodes[0].height() >= h + 3);
    // Restarted, it catches up from its peers.
    nodes[3].start(&spec, &boot);
    wait("node 4 to catch up", &nodes, || {
        nodes[3].height() >= nodes[0].height().saturating_sub(1) && nodes[3].height() > h + 3
    });

    // Two of four down: no block is finalized by fewer than three.
    nodes[2].stop();
    nodes[3].stop();
    std::thread::sleep(Duration::from_secs(2));
    let stalled = nodes[0].height();
    std::thread::sleep(Duration::from_secs(3));
    assert!(nodes[0].height() <= stalled + 1, "finality went on with 2 of 4 validators");
    nodes[2].start(&spec, &boot);
    nodes[3].start(&spec, &boot);
    wait("finality to resume", &nodes, || nodes.iter().all(|n| n.height() >= stalled + 3));
    let top = nodes.iter().map(|n| n.height()).min().unwrap();
    agree(&nodes.iter().collect::<Vec<_>>(), top);

    // A fifth, non-validator node started after 50 finalized blocks, given one boot node,
    // syncs to the head and follows.
    wait("50 finalized blocks", &nodes, || nodes[0].height() >= 50);
    let mut follower = Node {
        base: dir.path().join("Follower"),
        rpc: free_port(),
        p2p: free_port(),
        name: "Follower",
        child: None,
    };
    follower.start_as(&spec, &boot, false);
    wait("the follower to reach the head", &nodes, || follower.height() + 1 >= nodes[0].height());
    let caught_up = follower.height();
    wait("the follower to follow", &nodes, || follower.height() >= caught_up + 3);
    let top = follower.height().min(nodes[0].height());
    agree(&[&nodes[0], &follower], top);
}
