//! End-to-end, on hosts made of network namespaces (root only; skipped with a message
//! elsewhere): peers behind NAT. One public validator relays (circuit relay v2); a worker and a
//! gateway each sit behind their own NAT router (masquerading, dropping connections from
//! outside), so neither can dial the other. AutoNAT finds both unreachable, both reserve a slot
//! on the relay, the gateway reaches the worker through it (and hole punching may make the
//! connection direct), and a chat completion through the gateway's API, half of whose layers
//! the NATed worker computes, names Paris. Then it measures generation speed through that
//! connection (tokens/s, best of 3).
//!
//! For `scripts/bench-relay.sh`: `BITORCH_NAT=symmetric` puts both behind symmetric NATs (hole
//! punching cannot work: the connection stays relayed, which the test then checks), and
//! `BITORCH_DELAY_MS=D` holds every host's packets D ms (round trips of 2D between hosts).
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::model::model;
use common::net::BIN;
use common::netns::{host_dir, host_log, host_logs, testnet_files, Bed, Procs};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const RPC: u16 = 9944;
const API: u16 = 8080;

#[test]
fn a_worker_and_a_gateway_behind_nat_meet_through_a_relay_and_answer() {
    let mut bed = match Bed::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: this test needs root and `ip netns` (network namespaces): {e}");
            return;
        }
    };
    let symmetric = std::env::var("BITORCH_NAT").is_ok_and(|v| v == "symmetric");
    let nat = |bed: &mut Bed| if symmetric { bed.add_natted_symmetric() } else { bed.add_natted() };
    let (a, b, c) = match (bed.add_public(), nat(&mut bed), nat(&mut bed)) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (x, y, z) => {
            eprintln!(
                "SKIPPED: NAT hosts need iptables: {:?}",
                [x, y, z].into_iter().find_map(Result::err)
            );
            return;
        }
    };
    let delay: u64 =
        std::env::var("BITORCH_DELAY_MS").ok().and_then(|d| d.parse().ok()).unwrap_or(0);
    if delay > 0 {
        for i in [a, b, c] {
            bed.delay(i, delay).unwrap();
        }
    }
    let t0 = Instant::now();
    let dir = common::netns::test_dir();
    let (spec, relay_peer) = testnet_files(dir.path(), 1, a);
    let base = |i: usize| host_dir(dir.path(), i);
    let relay_addr = format!("/ip4/{}/tcp/30333", bed.ip(a));
    let boot = format!("{relay_addr}/p2p/{relay_peer}");
    let node = |i: usize, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["node".into(), "--chain".into(), spec.display().to_string()];
        v.extend(["--base-path".into(), base(i).display().to_string()]);
        v.extend(["--listen-addr".into(), "/ip4/0.0.0.0/tcp/30333".into()]);
        v.extend(["--block-time".into(), "500".into(), "--allow-private-ip".into()]);
        if i != a {
            v.extend(["--boot-nodes".into(), boot.clone()]);
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let model = model().display().to_string();
    let log = |i: usize| host_log(dir.path(), i);
    let logs = || host_logs(dir.path(), [a, b, c], 40);
    let mut procs = Procs(Vec::new());
    procs.0.push(bed.spawn(
        a,
        BIN,
        &node(a, &["--validator", "//Alice", "--public-addr", &relay_addr]),
        &log(a),
    ));
    let worker = |layers: &str, key: &str, payer: &str| {
        let mut v = vec!["--serve-model", model.as_str(), "--layers", layers, "--worker-key", key];
        v.extend(["--api-account", payer, "--api-port", "8080"]);
        v.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let (wb, wc) = (worker("15..30", "//Bob", "//Bob"), worker("0..15", "//Charlie", "//Eve"));
    let wb: Vec<&str> = wb.iter().map(String::as_str).collect();
    let wc: Vec<&str> = wc.iter().map(String::as_str).collect();
    procs.0.push(bed.spawn(b, BIN, &node(b, &wb), &log(b)));
    procs.0.push(bed.spawn(c, BIN, &node(c, &wc), &log(c)));

    let health = |i: usize| bed.rpc(i, RPC, "system_health", json!([]));
    let wait = |what: &str, secs: u64, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs());
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("{what}: {:.1} s after start", t0.elapsed().as_secs_f64());
    };
    // Neither NATed host can be dialed from outside: the routers drop it.
    wait("the nodes up", 120, &|| [a, b, c].iter().all(|&i| health(i).is_ok()));
    for (from, to) in [(a, b), (a, c), (b, c), (c, b)] {
        let h = &bed.hosts[to];
        assert!(
            !bed.can_connect(from, &h.public_ip, 30333),
            "host {from} reached {to} at {}",
            h.public_ip
        );
        assert!(!bed.can_connect(from, &h.ip, 30333), "host {from} reached {to} at {}", h.ip);
    }
    // AutoNAT: the relay dialed them back and could not; each reserves a slot on the relay.
    let reserved = |i: usize| {
        health(i).is_ok_and(|h| {
            h["reachability"]["status"] == "private"
                && h["reachability"]["relays"] == json!([relay_peer])
        })
    };
    wait("both NATed nodes reserved on the relay", 120, &|| reserved(b) && reserved(c));
    assert_eq!(health(a).unwrap()["reachability"]["status"], "public");
    // The gateway finds the NATed worker (its record names its address through the relay).
    let models = bed.rpc(c, RPC, "bitorch_models", json!([])).unwrap();
    let (id, name) = (models[0]["id"].clone(), models[0]["name"].as_str().unwrap().to_string());
    let b_peer = bed.rpc(b, RPC, "system_localPeerId", json!([])).unwrap();
    wait("the gateway to find the NATed worker", 120, &|| {
        let ws = bed.rpc(c, RPC, "bitorch_workers", json!([id])).unwrap_or(json!([]));
        ws.as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["peerId"] == b_peer && w["layerStart"] == 15))
    });
    // Hole punching (DCUtR) upgrades the relayed connection between the two NATed hosts, as a
    // rule at once; the figure is printed, the answer below is checked either way.
    let direct = || {
        let peers = bed.rpc(c, RPC, "system_peers", json!([])).unwrap_or(json!([]));
        peers.as_array().is_some_and(|ps| {
            ps.iter().any(|p| p["peerId"] == b_peer && p["connection"] == "direct")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !direct() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "gateway -> NATed worker direct: {} at {:.1} s after start",
        direct(),
        t0.elapsed().as_secs_f64()
    );
    let req = json!({
        "model": name,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let t = Instant::now();
    let (status, body) = bed.post(c, API, "/v1/chat/completions", &req, 120);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}\n{}", logs());
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "answer: {text}");
    let route = &v["bitorch"]["route"];
    eprintln!("answer in {secs:.1} s: {text:?}, route {route}");
    // The worker the gateway used for 15..30 is the NATed one, which it reached through the
    // relay (still relayed, or made direct by hole punching: nothing else reaches it).
    let peers = bed.rpc(c, RPC, "system_peers", json!([])).unwrap();
    let link = peers.as_array().unwrap().iter().find(|p| p["peerId"] == b_peer).cloned();
    let link = link.unwrap_or_else(|| {
        panic!("the gateway is not connected to the worker: {peers}\n{}", logs())
    });
    let punches = |i: usize| health(i).unwrap()["reachability"]["holePunches"].as_u64().unwrap();
    let (pb, pc) = (punches(b), punches(c));
    eprintln!("gateway -> worker: {link}; hole punches: worker {pb}, gateway {pc}");
    assert!(
        link["connection"] == "relayed" || pb + pc >= 1,
        "a direct connection through two NATs without hole punching? {link}"
    );
    if symmetric {
        assert_eq!(link["connection"], "relayed", "symmetric NATs, yet direct: {link}");
    }
    // Generation speed through that connection: tokens/s of a longer answer, best of 3.
    let story = json!({
        "model": name,
        "messages": [{"role": "user", "content": "Write a short story about a cat."}],
        "max_tokens": 48,
        "temperature": 0,
    });
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        let (status, body) = bed.post(c, API, "/v1/chat/completions", &story, 120);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let tokens = v["usage"]["completion_tokens"].as_f64().unwrap();
        best = best.max(tokens / t.elapsed().as_secs_f64());
    }
    let now = bed.rpc(c, RPC, "system_peers", json!([])).unwrap();
    let now = now.as_array().unwrap().iter().find(|p| p["peerId"] == b_peer).cloned();
    let kind = now.and_then(|p| p["connection"].as_str().map(str::to_string));
    let kind = kind.unwrap_or_else(|| "not connected".into());
    eprintln!("generation through the NATed worker ({kind}): {best:.1} tok/s");
    // The operator sees it in the metrics too.
    let m = |name: &str| bed.metric(c, name);
    assert_eq!(m("bitorch_reachability{status=\"private\"}"), Some(1.0));
    assert_eq!(m("bitorch_relays"), Some(1.0));
    assert!(m("bitorch_peer_connections{connection=\"relayed\"}").is_some());
    drop(procs);
}
