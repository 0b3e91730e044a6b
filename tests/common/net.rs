//! A testnet of `bitorch` processes on loopback: start, stop, query, wait, compare.

use super::{free_port, rpc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_bitorch");
/// Dev validators, in chain-spec order.
pub const NAMES: [&str; 4] = ["Alice", "Bob", "Charlie", "Dave"];

/// One node process; stopped (killed) when dropped.
pub struct Node {
    pub base: PathBuf,
    pub rpc: u16,
    pub p2p: u16,
    pub name: &'static str,
    /// Extra arguments given to `bitorch node` at every start.
    pub extra: Vec<String>,
    pub child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Node {
    pub fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            base: dir.join(name),
            rpc: free_port(),
            p2p: free_port(),
            name,
            extra: Vec::new(),
            child: None,
        }
    }

    pub fn start(&mut self, spec: &Path, boot: &str) {
        self.start_as(spec, boot, true);
    }

    pub fn start_as(&mut self, spec: &Path, boot: &str, validator: bool) {
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
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log);
        if !boot.is_empty() {
            cmd.args(["--boot-nodes", boot]);
        }
        self.child = Some(cmd.spawn().expect("start node"));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node as an operator does (SIGTERM), so that it shuts down in order; killed
    /// if it is not gone within 20 s.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        rpc(self.rpc, method, params)
    }

    /// Its best block's number, or why it cannot be had (the node is not answering).
    pub fn try_height(&self) -> Result<u64, String> {
        let h = self.rpc("chain_getHeader", json!([]))?;
        let n = h["number"].as_str().ok_or_else(|| format!("no number in {h}"))?;
        u64::from_str_radix(n.trim_start_matches("0x"), 16).map_err(|e| format!("{n}: {e}"))
    }

    /// Its best block's number; retried for up to 30 s while the node does not answer (it
    /// may be starting, or slow on a loaded machine), then a panic naming the node: a dead
    /// node never passes for one that makes no progress.
    pub fn height(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_height() {
                Ok(h) => return h,
                Err(e) if Instant::now() > deadline => {
                    let log = self.log();
                    let tail = &log[log.len().saturating_sub(4000)..];
                    panic!("{} does not answer chain_getHeader: {e}\n{tail}", self.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn hash_at(&self, n: u64) -> Value {
        self.rpc("chain_getBlockHash", json!([n])).unwrap_or(Value::Null)
    }

    /// Its peer id (retried for up to 30 s: a loaded machine may answer slowly).
    pub fn peer_id(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.rpc("system_localPeerId", json!([])) {
                Ok(id) => return id.as_str().unwrap().to_string(),
                Err(e) if Instant::now() > deadline => {
                    panic!("{}: system_localPeerId: {e}", self.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.with_extension("log")).unwrap_or_default()
    }
}

/// A local chain spec with `n` validators in `dir`, and `n` nodes (not started) whose first
/// has a node key, so that the others can boot from it; returns (spec, nodes, boot address).
pub fn testnet(dir: &Path, n: usize) -> (PathBuf, Vec<Node>, String) {
    let spec = dir.join("spec.json");
    let out = Command::new(BIN)
        .args(["chain-spec", "--chain", "local", "--validators", &n.to_string(), "-o"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nodes: Vec<Node> = NAMES[..n].iter().map(|name| Node::new(dir, name)).collect();
    let key_dir = nodes[0].base.join("chains/local/network");
    std::fs::create_dir_all(&key_dir).unwrap();
    let out = Command::new(BIN)
        .args(["key", "generate-node-key", "--file"])
        .arg(key_dir.join("secret_ed25519"))
        .output()
        .unwrap();
    let boot_peer = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let boot = format!("/ip4/127.0.0.1/tcp/{}/p2p/{boot_peer}", nodes[0].p2p);
    (spec, nodes, boot)
}

/// Each node's last warnings and last lines (12 of each), without the consensus engine's chatter.
pub fn quiet_logs<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> String {
    // Each node's warnings, then its last lines: a failure's cause is often a warning on the
    // first node, which a tail of all the logs together would cut.
    let tail = |lines: Vec<&str>, n: usize| lines[lines.len().saturating_sub(n)..].join("\n");
    nodes
        .into_iter()
        .map(|n| {
            let log = n.log();
            let kept: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("malachite") && !l.contains("finalized block"))
                .collect();
            let warnings: Vec<&str> = kept
                .iter()
                .copied()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            format!(
                "== {} ==\n-- warnings --\n{}\n-- last lines --\n{}",
                n.name,
                tail(warnings, 12),
                tail(kept, 12)
            )
        })
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// Waits (at most 60 s) until `ok`, else panics with the tail of the nodes' logs.
pub fn wait(what: &str, nodes: &[Node], mut ok: impl FnMut() -> bool) {
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

/// Asserts that the nodes hold the same block at every height 1..=upto.
pub fn agree(nodes: &[&Node], upto: u64) {
    for n in 1..=upto {
        let first = nodes[0].hash_at(n);
        assert!(!first.is_null(), "no block #{n}");
        for node in &nodes[1..] {
            assert_eq!(node.hash_at(n), first, "nodes disagree at #{n}");
        }
    }
}
