//! A one-node dev chain (`bitorch node --dev`) as a process: started, queried, killed on drop.

use super::net::BIN;
use super::{free_port, rpc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A dev node process with its RPC port and log; killed when dropped.
pub struct DevNode {
    pub child: Child,
    /// Its JSON-RPC port.
    pub port: u16,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevNode {
    /// Starts `bitorch node --dev --base-path base --rpc-port port` with `args` more, its log in
    /// `log`, and waits (at most `startup`) until its RPC answers.
    pub fn start(base: &Path, port: u16, args: &[String], log: PathBuf, startup: Duration) -> Self {
        let child = Command::new(BIN)
            .args(["node", "--dev", "--rpc-port", &port.to_string()])
            .arg("--base-path")
            .arg(base)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start bitorch node");
        let node = DevNode { child, port, log };
        let deadline = Instant::now() + startup;
        while rpc(port, "system_health", json!([])).is_err() {
            assert!(Instant::now() < deadline, "node did not start; log:\n{}", node.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    /// [`DevNode::start`] in a test's folder `dir`: its base path `dir/base`, its log
    /// `dir/node.log`, a free RPC port.
    pub fn start_in(dir: &Path, args: &[String], startup: Duration) -> Self {
        Self::start(&dir.join("base"), free_port(), args, dir.join("node.log"), startup)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A JSON-RPC call that must succeed.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        rpc(self.port, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Its best block's number.
    pub fn best(&self) -> u64 {
        let h = self.rpc("chain_getHeader", json!([]));
        u64::from_str_radix(h["number"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// Waits (at most 30 s) until its best block is at least `n`.
    pub fn wait_for_height(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.best() < n {
            assert!(Instant::now() < deadline, "stuck below #{n}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `who`'s free and reserved balance.
    pub fn account(&self, who: &str) -> (u128, u128) {
        let a = self.rpc("bitorch_account", json!([who]));
        let n = |k: &str| a[k].as_str().unwrap().parse::<u128>().unwrap();
        (n("free"), n("reserved"))
    }

    /// `who`'s free balance.
    pub fn free(&self, who: &str) -> u128 {
        self.account(who).0
    }

    /// Its WebSocket RPC URL.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}
