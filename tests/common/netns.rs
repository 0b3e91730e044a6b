//! A test bed of hosts made of network namespaces (root only): public hosts on one bridge (the
//! "internet", `10.<s>.0.0/24`), and hosts behind NAT, each in a private network
//! (`192.168.<k>.0/24`) behind a router namespace that masquerades its traffic and drops
//! connections from outside (Debian's `iptables`). Limits with `tc` (token bucket), loss with
//! `iptables -m statistic`, latency with a delaying thread on netfilter's queue (the kernel has
//! no `netem`: `bitorch_test_support::netdelay`). Everything is removed when the bed is dropped.
#![allow(dead_code)]

use bitorch_test_support::netdelay::Delayer;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One host: its namespace, the interface it talks through, its own address and the address
/// the others see it at (its router's, behind NAT).
pub struct Host {
    pub ns: String,
    pub dev: String,
    pub ip: String,
    pub public_ip: String,
    pub natted: bool,
}

/// The bed.
pub struct Bed {
    tag: String,
    subnet: String,
    bridge: String,
    pub hosts: Vec<Host>,
    routers: Vec<String>,
    links: Vec<String>,
    delayers: Vec<Delayer>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

impl Bed {
    /// An empty bed (a bridge, `10.<s>.0.1` in the test's own namespace); `Err` (and why)
    /// where namespaces cannot be made (not root, no `ip`).
    pub fn new() -> Result<Self, String> {
        let id = std::process::id();
        let tag = format!("{:x}", id & 0xfffff);
        let subnet = format!("{}", id % 200 + 20);
        let bridge = format!("bt{tag}br");
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        let bed = Self {
            tag,
            subnet,
            bridge,
            hosts: Vec::new(),
            routers: Vec::new(),
            links: Vec::new(),
            delayers: Vec::new(),
        };
        run(&["ip", "addr", "add", &format!("10.{}.0.1/24", bed.subnet), "dev", &bed.bridge])?;
        run(&["ip", "link", "set", &bed.bridge, "up"])?;
        Ok(bed)
    }

    /// `n` public hosts (`10.<s>.0.10+i`): the first test beds' shape.
    pub fn public(n: usize) -> Result<Self, String> {
        let mut bed = Self::new()?;
        for _ in 0..n {
            bed.add_public()?;
        }
        Ok(bed)
    }

    /// A namespace with a veth whose outer end is on the bridge; returns (namespace, inner
    /// interface).
    fn on_bridge(&mut self, name: &str, addr: &str) -> Result<(String, String), String> {
        let ns = format!("bt{}{name}", self.tag);
        run(&["ip", "netns", "add", &ns])?;
        let (outer, inner) = (format!("bt{}{name}o", self.tag), format!("bt{}{name}i", self.tag));
        run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
        self.links.push(outer.clone());
        run(&["ip", "link", "set", &inner, "netns", &ns])?;
        run(&["ip", "link", "set", &outer, "master", &self.bridge])?;
        run(&["ip", "link", "set", &outer, "up"])?;
        run(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
        run(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok((ns, inner))
    }

    /// A public host; returns its index.
    pub fn add_public(&mut self) -> Result<usize, String> {
        let i = self.hosts.len();
        let ip = format!("10.{}.0.{}", self.subnet, 10 + i);
        let (ns, dev) = self.on_bridge(&format!("h{i}"), &ip)?;
        self.hosts.push(Host { ns, dev, ip: ip.clone(), public_ip: ip, natted: false });
        Ok(i)
    }

    /// A host behind NAT: a router namespace on the bridge (`10.<s>.0.100+k`) masquerading for
    /// a private network `192.168.<k+1>.0/24` that holds the host (`.2`, the router `.1`).
    /// Connections from outside to the private network are dropped. Returns its index.
    pub fn add_natted(&mut self) -> Result<usize, String> {
        self.add_behind_nat(false)
    }

    /// [`Bed::add_natted`] behind a symmetric NAT: each connection out gets a random port
    /// (`--random-fully`), so the address a peer observes is not the one the next connection
    /// uses, and hole punching fails; peers reach the host through relays only.
    pub fn add_natted_symmetric(&mut self) -> Result<usize, String> {
        self.add_behind_nat(true)
    }

    fn add_behind_nat(&mut self, symmetric: bool) -> Result<usize, String> {
        let i = self.hosts.len();
        let k = self.routers.len();
        let wan_ip = format!("10.{}.0.{}", self.subnet, 100 + k);
        let (router, wan) = self.on_bridge(&format!("r{k}"), &wan_ip)?;
        self.routers.push(router.clone());
        let ns = format!("bt{}h{i}", self.tag);
        run(&["ip", "netns", "add", &ns])?;
        let (lan, dev) = (format!("bt{}r{k}l", self.tag), format!("bt{}h{i}i", self.tag));
        run(&["ip", "link", "add", &lan, "type", "veth", "peer", "name", &dev])?;
        run(&["ip", "link", "set", &lan, "netns", &router])?;
        run(&["ip", "link", "set", &dev, "netns", &ns])?;
        let net = format!("192.168.{}", k + 1);
        run(&["ip", "-n", &router, "addr", "add", &format!("{net}.1/24"), "dev", &lan])?;
        run(&["ip", "-n", &router, "link", "set", &lan, "up"])?;
        run(&["ip", "-n", &ns, "addr", "add", &format!("{net}.2/24"), "dev", &dev])?;
        run(&["ip", "-n", &ns, "link", "set", &dev, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("{net}.1")])?;
        in_ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let masquerade =
            ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", &wan, "-j", "MASQUERADE"];
        let random = if symmetric { &["--random-fully"][..] } else { &[][..] };
        in_ns(&router, &[&masquerade[..], random].concat())?;
        in_ns(
            &router,
            &[
                "iptables",
                "-A",
                "FORWARD",
                "-i",
                &wan,
                "-o",
                &lan,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        )?;
        in_ns(&router, &["iptables", "-A", "FORWARD", "-i", &wan, "-o", &lan, "-j", "DROP"])?;
        // Like a home router: what comes from outside unasked is dropped, not refused (a
        // refusal would reset the mapping a hole punch opens).
        in_ns(
            &router,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                &wan,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        )?;
        in_ns(&router, &["iptables", "-A", "INPUT", "-i", &wan, "-j", "DROP"])?;
        self.hosts.push(Host { ns, dev, ip: format!("{net}.2"), public_ip: wan_ip, natted: true });
        Ok(i)
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }

    /// Host `i`'s own address.
    pub fn ip(&self, i: usize) -> String {
        self.hosts[i].ip.clone()
    }

    /// Limits what host `i` sends to `mbit` megabits per second (`tc` token bucket).
    pub fn limit(&self, i: usize, mbit: u32) {
        let h = &self.hosts[i];
        let rate = format!("{mbit}mbit");
        in_ns(
            &h.ns,
            &[
                "tc", "qdisc", "add", "dev", &h.dev, "root", "tbf", "rate", &rate, "burst",
                "256kb", "latency", "200ms",
            ],
        )
        .unwrap();
    }

    /// Host `i` drops `percent` % of the packets it receives (`iptables -m statistic`).
    pub fn loss(&self, i: usize, percent: f64) {
        let p = format!("{:.4}", percent / 100.0);
        in_ns(
            &self.hosts[i].ns,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                &self.hosts[i].dev,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )
        .unwrap();
    }

    /// Holds every packet host `i` receives for `ms` milliseconds (two such hosts are `2 ms`
    /// apart in round trip): its incoming packets go to netfilter's queue (`--queue-bypass`:
    /// they pass should the delayer stop), where a thread of this test holds them. Incoming,
    /// not outgoing: a sender's packet held in its own stack counts against its socket's TCP
    /// Small Queues limit (about two packets not yet sent), so its later small writes waited
    /// for the hold to end, an extra delay no wire adds (a generated token seemed to cost 2.2
    /// round trips to a remote stage).
    pub fn delay(&mut self, i: usize, ms: u64) -> Result<(), String> {
        let ns = self.hosts[i].ns.clone();
        let delayer =
            Delayer::start(&Path::new("/run/netns").join(&ns), 0, Duration::from_millis(ms))
                .map_err(|e| format!("netfilter queue in {ns}: {e}"))?;
        self.delayers.push(delayer);
        let dev = self.hosts[i].dev.clone();
        // Before the filter table's INPUT chain, whose rules (cut cables, partitions, loss) an
        // accepted packet still meets.
        let rule = ["-i", &dev, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"];
        in_ns(&ns, &[&["iptables", "-t", "mangle", "-A", "PREROUTING"][..], &rule[..]].concat())
    }

    /// The round trip from host `i` to host `j` in milliseconds (the median of 5 pings).
    pub fn rtt_ms(&self, i: usize, j: usize) -> Option<f64> {
        let out = Command::new("ip")
            // -U: from the sending program to the receiving one. The kernel's receive time
            // stamp is taken before the delayer holds an incoming packet.
            .args(["netns", "exec", self.ns(i), "ping", "-U", "-q", "-c", "5", "-i", "0.2"])
            .arg(&self.hosts[j].public_ip)
            .output()
            .ok()?;
        // "rtt min/avg/max/mdev = 50.1/50.4/51.0/0.3 ms"
        let text = String::from_utf8_lossy(&out.stdout);
        let stats = text.lines().find(|l| l.contains("min/avg/max"))?;
        stats.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok()
    }

    /// Pulls host `i`'s cable: it sends and receives nothing until [`Bed::reconnect`].
    pub fn disconnect(&self, i: usize) {
        self.cable_rule(i, "-I");
    }

    /// Undoes [`Bed::disconnect`].
    pub fn reconnect(&self, i: usize) {
        self.cable_rule(i, "-D");
    }

    fn cable_rule(&self, i: usize, op: &str) {
        let h = &self.hosts[i];
        in_ns(&h.ns, &["iptables", op, "INPUT", "-i", &h.dev, "-j", "DROP"]).unwrap();
        in_ns(&h.ns, &["iptables", op, "OUTPUT", "-o", &h.dev, "-j", "DROP"]).unwrap();
    }

    /// Cuts every host of `a` from every host of `b`.
    pub fn split(&self, a: &[usize], b: &[usize]) {
        for &i in a {
            for &j in b {
                self.cut(i, j);
            }
        }
    }

    /// Undoes [`Bed::split`].
    pub fn join(&self, a: &[usize], b: &[usize]) {
        for &i in a {
            for &j in b {
                self.heal(i, j);
            }
        }
    }

    /// Cuts hosts `i` and `j` apart: each drops what comes from the other.
    pub fn cut(&self, i: usize, j: usize) {
        self.partition_rule(i, j, "-A");
    }

    /// Undoes [`Bed::cut`].
    pub fn heal(&self, i: usize, j: usize) {
        self.partition_rule(i, j, "-D");
    }

    fn partition_rule(&self, i: usize, j: usize, op: &str) {
        for (a, b) in [(i, j), (j, i)] {
            let from = &self.hosts[b].public_ip;
            in_ns(&self.hosts[a].ns, &["iptables", op, "INPUT", "-s", from, "-j", "DROP"]).unwrap();
        }
    }

    /// Runs `program ARGS` in host `i`, its stderr into `log`.
    pub fn spawn(&self, i: usize, program: &str, args: &[String], log: &Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        Command::new("ip")
            .args(["netns", "exec", self.ns(i), program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// A JSON-RPC call to the node of host `i` on its loopback port `port`.
    pub fn rpc(&self, i: usize, port: u16, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns(i), "curl", "-s", "-m", "10"])
            .args(["-H", "Content-Type: application/json", "-d", &body.to_string()])
            .arg(format!("http://127.0.0.1:{port}"))
            .output()
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        match v.get("error") {
            Some(e) => Err(e.to_string()),
            None => Ok(v["result"].clone()),
        }
    }

    /// The best block's number at the node of host `i` (RPC on its loopback port `port`);
    /// `None` while it does not answer.
    pub fn height(&self, i: usize, port: u16) -> Option<u64> {
        let h = self.rpc(i, port, "chain_getHeader", json!([])).ok()?;
        u64::from_str_radix(h["number"].as_str()?.trim_start_matches("0x"), 16).ok()
    }

    /// A POST of `body` to `path` on host `i`'s loopback port `port`: (status, body).
    pub fn post(&self, i: usize, port: u16, path: &str, body: &Value, secs: u32) -> (u16, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns(i), "curl", "-s", "-m", &secs.to_string()])
            .args(["-w", "\n%{http_code}", "-H", "Content-Type: application/json"])
            .args(["-d", &body.to_string()])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A figure from the Prometheus endpoint of host `i`'s node (the default port, 9615):
    /// `None` if it does not answer or lacks it.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns(i), "curl", "-s", "-m", "5"])
            .arg("http://127.0.0.1:9615/metrics")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Whether host `i` can open a TCP connection to `ip:port` within 2 s.
    pub fn can_connect(&self, i: usize, ip: &str, port: u16) -> bool {
        Command::new("ip")
            .args(["netns", "exec", self.ns(i), "timeout", "2", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The delayers release what they hold and leave the namespaces first.
        self.delayers.clear();
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        for r in &self.routers {
            let _ = Command::new("ip").args(["netns", "del", r]).status();
        }
        // (Deleting a namespace deletes its veth pairs; what is left goes here.)
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// A testnet's files in `dir`: the chain spec of a local chain with `validators` validators
/// (`dir/spec.json`), and host `boot`'s node key in its base path (`dir/host<boot>`), so that
/// its peer id is known before it starts. Returns the spec's path and that peer id.
pub fn testnet_files(dir: &Path, validators: usize, boot: usize) -> (std::path::PathBuf, String) {
    let bin = super::net::BIN;
    let spec = dir.join("spec.json");
    let out = Command::new(bin)
        .args(["chain-spec", "--chain", "local", "--validators", &validators.to_string(), "-o"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(out.status.success(), "chain-spec: {}", String::from_utf8_lossy(&out.stderr));
    let key_dir = host_dir(dir, boot).join("chains/local/network");
    std::fs::create_dir_all(&key_dir).unwrap();
    let out = Command::new(bin)
        .args(["key", "generate-node-key", "--file"])
        .arg(key_dir.join("secret_ed25519"))
        .output()
        .unwrap();
    assert!(out.status.success(), "generate-node-key: {}", String::from_utf8_lossy(&out.stderr));
    (spec, String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// A folder for the hosts' stores and logs, removed after the test unless `BITORCH_KEEP_LOGS`
/// is set (then it is kept and printed).
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("BITORCH_KEEP_LOGS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("logs kept in {}", dir.path().display());
    }
    dir
}

/// Host `i`'s base path in a testnet's folder.
pub fn host_dir(dir: &Path, i: usize) -> std::path::PathBuf {
    dir.join(format!("host{i}"))
}

/// Host `i`'s log in a testnet's folder.
pub fn host_log(dir: &Path, i: usize) -> std::path::PathBuf {
    dir.join(format!("host{i}.log"))
}

/// The last `n` lines of each of `hosts`' logs, without the consensus engine's chatter and the
/// block-by-block lines.
pub fn host_logs(dir: &Path, hosts: impl IntoIterator<Item = usize>, n: usize) -> String {
    hosts
        .into_iter()
        .map(|i| {
            let log = std::fs::read_to_string(host_log(dir, i)).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    !l.contains("malachite")
                        && !l.contains("imported block")
                        && !l.contains("finalized block")
                })
                .collect();
            format!("== host {i} ==\n{}", lines[lines.len().saturating_sub(n)..].join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the processes when dropped.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
