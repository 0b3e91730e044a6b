//! End-to-end: model distribution between real processes on loopback. Nobody copies weights
//! by hand: node A imports the real test model (`--serve-model PATH`), B and C serve layers of
//! it by id and pull what they need from the network, a fourth node pulls everything from all
//! of them at once with `bitorch model pull`, and a chat completion through A's API goes
//! through the three workers. A seeder that corrupts pieces is caught piece by piece and
//! dropped, and a pull killed with `kill -9` halfway resumes without fetching a verified piece
//! again. On hosts made of network namespaces (root only; skipped with a message elsewhere),
//! two seeders whose links `tc` limits to R each fill a puller at close to 2R.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::free_port;
use common::model::{chat, model, post};
use common::net::{testnet, Node, BIN};
use common::netns::{host_dir, testnet_files, Bed, Procs};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The tail of the nodes' logs, without the consensus engine's chatter.
fn logs(nodes: &[&Node]) -> String {
    common::net::quiet_logs(nodes.iter().copied())
}

/// The tests start several nodes each; on a small machine they take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_for(what: &str, secs: u64, nodes: &[&Node], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; logs:\n{}", logs(nodes));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The model's id as `bitorch model import` prints it (into a scratch store).
fn model_id(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["model", "import"])
        .arg(model())
        .arg("--base-path")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().next().unwrap().trim_start_matches("model ").trim().to_string()
}

/// `bitorch model pull` against a node's RPC; returns its report.
fn pull(node: &Node, id: &str, layers: Option<&str>) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.args(["model", "pull", id, "--rpc", &format!("ws://127.0.0.1:{}", node.rpc)]);
    cmd.args(["--output-type", "json"]);
    if let Some(l) = layers {
        cmd.args(["--layers", l]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "bitorch model pull: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs(&[node])
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bytes of every complete chunk in a node's store, by root.
fn chunks(node: &Node) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = node.base.join("models/chunks");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect()
}

fn seeded_to(seeder: &Node, peer: &str) -> u64 {
    let s = seeder
        .rpc("bitorch_seedStats", json!([]))
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", seeder.name, logs(&[seeder])));
    s["byPeer"][peer].as_u64().unwrap_or(0)
}

#[test]
fn workers_pull_their_layers_from_peers_and_serve_them() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let id = model_id(&dir.path().join("scratch"));
    let (spec, mut nodes, boot) = testnet(dir.path(), 3);
    let api = free_port();
    let model_path = model().display().to_string();
    let serve = |what: &str, layers: &str, port: u16| -> Vec<String> {
        [
            "--serve-model",
            what,
            "--layers",
            layers,
            "--api-account",
            "//Eve",
            "--api-port",
            &port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    nodes[0].extra = serve(&model_path, "0..10", api);
    nodes[1].extra = serve(&id, "10..20", free_port());
    nodes[1].extra.push("--no-job-ahead".into());
    nodes[2].extra = serve(&id, "20..30", free_port());
    nodes[2].extra.push("--no-job-ahead".into());
    // All three are validators (the chain needs two thirds of them): B and C wait until the
    // chain knows the model A registers, then pull their layers.
    for (i, n) in nodes.iter_mut().enumerate() {
        n.start(&spec, if i == 0 { "" } else { &boot });
    }
    let announced = |n: &Node| n.log().contains("announced the worker in the DHT");
    wait_for("A, B and C to serve", 300, &nodes.iter().collect::<Vec<_>>(), || {
        nodes.iter().all(announced)
    });
    // B and C hold only what their layers need: the shared chunk and ten layers each.
    for (n, held) in [(&nodes[1], "10..20"), (&nodes[2], "20..30")] {
        let stored = n.rpc("bitorch_storedModels", json!([])).unwrap();
        assert_eq!(stored[0]["id"], json!(id), "{stored}");
        assert_eq!(stored[0]["layersHeld"], json!([held]), "{}: {stored}", n.name);
        assert_eq!(chunks(n).len(), 11, "{}", n.name);
        assert!(n.log().contains("pulled the model's chunks"), "{}", n.name);
    }
    // B and C provide what they pulled in the DHT.
    wait_for("B and C to provide their chunks", 60, &nodes.iter().collect::<Vec<_>>(), || {
        nodes[1..].iter().all(|n| {
            n.rpc("bitorch_seedStats", json!([])).is_ok_and(|s| s["provided"] == json!(11))
        })
    });
    // A fourth node, no worker, pulls the whole model from the three at once.
    let mut d = Node::new(dir.path(), "Dave");
    d.start_as(&spec, &boot, false);
    let d_peer = d.peer_id();
    let report = pull(&d, &id, None);
    assert_eq!(report["chunks"], json!(31), "{report}");
    assert_eq!(report["badPieces"], json!(0), "{report}");
    let a_chunks = chunks(&nodes[0]);
    assert_eq!(chunks(&d), a_chunks, "D's chunks differ from A's");
    let served: Vec<u64> = nodes.iter().map(|n| seeded_to(n, &d_peer)).collect();
    assert!(served.iter().all(|b| *b > 0), "every seeder serves D: {served:?} ({report})");
    // What the seeders sent is what D kept, plus the few pieces the endgame asked of two
    // peers at once (at most one duplicate per request slot: 3 peers x 8).
    let sent: u64 = served.iter().sum();
    let kept = report["bytes"].as_u64().unwrap();
    assert!(sent >= kept && sent <= kept + 24 * 256 * 1024, "sent {sent}, kept {kept}: {report}");
    let stored = d.rpc("bitorch_storedModels", json!([])).unwrap();
    assert_eq!(stored[0]["layersHeld"], json!(["0..30"]), "{stored}");
    // `bitorch infer` runs it from D's store by id.
    let out = Command::new(BIN)
        .args(["infer", "--model", &id, "--chat", "--temperature", "0", "--max-tokens", "12"])
        .arg("--base-path")
        .arg(&d.base)
        .arg("What is the capital of France?")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
    // Pulling again fetches nothing.
    let again = pull(&d, &id, None);
    assert_eq!((again["chunks"].clone(), again["bytes"].clone()), (json!(0), json!(0)));
    assert_eq!(again["piecesReused"], report["piecesFetched"], "{again}");

    // The chat goes A (0..10) -> B (10..20) -> C (20..30).
    let name = "SmolLM2-135M-Instruct.Q4_1";
    let req = chat(name, "What is the capital of France?", 20);
    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let (status, body) =
            post(api, "/v1/chat/completions", &req, Duration::from_secs(300)).unwrap();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            break v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        }
        assert!(status == 503 || status == 429, "{status} {body}");
        assert!(Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_secs(1));
    };
    // Only B serves 10..20 and only C 20..30: the answer went through both.
    assert!(answer.contains("Paris"), "{answer}");
    drop(d);
}

/// A one-validator testnet whose node A serves the test model and seeds it at `rate` MB/s
/// per peer; returns once A announces its worker.
fn seeding(dir: &Path, rate: &str) -> (std::path::PathBuf, Vec<Node>, String) {
    let (spec, mut nodes, boot) = testnet(dir, 1);
    let model_path = model().display().to_string();
    nodes[0].extra = ["--serve-model", &model_path, "--api-account", "//Eve", "--seed-rate", rate]
        .iter()
        .map(|s| s.to_string())
        .collect();
    nodes[0].extra.extend(["--api-port".to_string(), free_port().to_string()]);
    nodes[0].start(&spec, "");
    wait_for("A to serve", 240, &[&nodes[0]], || {
        nodes[0].log().contains("announced the worker in the DHT")
    });
    (spec, nodes, boot)
}

#[test]
fn a_corrupt_seeder_is_dropped_and_a_killed_pull_resumes() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // A: the honest seeder (the chain's validator), sending each peer at most 10 MB/s so that
    // a pull lasts long enough to be killed halfway.
    let (spec, nodes, boot) = seeding(dir.path(), "10");
    // X: holds the same model (imported into its own store) and corrupts every piece it sends.
    let mut x = Node::new(dir.path(), "Xavier");
    let id = model_id(&x.base);
    x.extra = vec!["--unsafe-corrupt-pieces".into()];
    x.start_as(&spec, &boot, false);
    let x_peer = x.peer_id();
    let mut d = Node::new(dir.path(), "Dave");
    d.start_as(&spec, &boot, false);
    let d_peer = d.peer_id();
    // Both seeders are found as providers before the pull starts.
    wait_for("X to provide its chunks", 60, &[&x], || {
        x.log().contains("providing the store's chunks")
    });
    std::thread::sleep(Duration::from_secs(2));

    // First attempt: killed (-9) halfway.
    let mut puller = Command::new(BIN)
        .args(["model", "pull", &id, "--rpc", &format!("ws://127.0.0.1:{}", d.rpc)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut done_at_kill = 0;
    let mut total = 0;
    wait_for("the pull to reach half", 120, &[&nodes[0], &x, &d], || {
        let p = d.rpc("bitorch_pullProgress", json!([])).unwrap_or(Value::Null);
        total = p["piecesTotal"].as_u64().unwrap_or(0);
        done_at_kill = p["piecesDone"].as_u64().unwrap_or(0);
        total > 0 && done_at_kill * 2 >= total
    });
    d.stop(); // SIGKILL
    let _ = puller.kill();
    let _ = puller.wait();
    assert!(done_at_kill < total, "the pull finished before the kill ({done_at_kill}/{total})");

    // Restarted: the pull resumes and completes from A alone.
    d.start_as(&spec, &boot, false);
    assert_eq!(d.peer_id(), d_peer);
    let report = pull(&d, &id, None);
    let reused = report["piecesReused"].as_u64().unwrap();
    let fetched = report["piecesFetched"].as_u64().unwrap();
    assert!(
        reused >= done_at_kill && fetched <= total - done_at_kill,
        "pieces verified before the kill were fetched again: {report} (done at kill: {done_at_kill} of {total})"
    );
    assert_eq!(reused + fetched, total, "{report}");
    assert_eq!(chunks(&d), chunks(&nodes[0]), "D's chunks differ from A's");
    // X sent bad pieces (in the first attempt, the second, or both) and was dropped for it:
    // nothing it sent was written, and it is banned or penalised on D.
    let a_bytes = seeded_to(&nodes[0], &d_peer);
    assert!(a_bytes > 0);
    let x_sent = seeded_to(&x, &d_peer);
    assert!(x_sent > 0, "X was never asked");
    let banned = d.rpc("system_bannedPeers", json!([])).unwrap_or(Value::Null);
    let penalised = report["penalised"].as_array().unwrap();
    assert!(
        penalised.iter().any(|p| p == &json!(x_peer)) || banned.to_string().contains(&x_peer),
        "X not penalised: {report}, banned {banned}"
    );
    drop((x, d));
}

#[test]
fn a_holder_that_appears_mid_pull_joins_it() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // A: the only holder at first, sending each peer at most 4 MB/s (a 98 MB pull: ~25 s).
    let (spec, nodes, boot) = seeding(dir.path(), "4");
    let mut d = Node::new(dir.path(), "Dave");
    d.start_as(&spec, &boot, false);
    std::thread::sleep(Duration::from_secs(2)); // A's provider records spread
    let mut y = Node::new(dir.path(), "Yara");
    let id = model_id(&y.base);
    let puller = Command::new(BIN)
        .args(["model", "pull", &id, "--output-type", "json"])
        .args(["--rpc", &format!("ws://127.0.0.1:{}", d.rpc)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the pull to start", 60, &[&nodes[0], &d], || {
        let p = d.rpc("bitorch_pullProgress", json!([])).unwrap_or(Value::Null);
        p["piecesDone"].as_u64().unwrap_or(0) > 0
    });
    // Y, holding the whole model and no rate limit, joins the network while D pulls from A.
    y.start_as(&spec, &boot, false);
    let y_peer = y.peer_id();
    let out = puller.wait_with_output().unwrap();
    assert!(out.status.success(), "the pull failed\n{}", logs(&[&nodes[0], &d, &y]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_y = report["byPeer"][&y_peer].as_u64().unwrap_or(0);
    let bytes = report["bytes"].as_u64().unwrap();
    assert!(
        from_y * 3 > bytes,
        "Y sent {from_y} of {bytes} bytes: the pull did not take the new holder: {report}"
    );
    assert_eq!(chunks(&d), chunks(&nodes[0]), "D's chunks differ from A's");
    eprintln!("pulled {bytes} bytes in {} s, {from_y} from the holder that joined", report["secs"]);
    drop((y, d));
}

#[test]
fn two_seeders_on_rate_limited_hosts_fill_a_puller() {
    let _turn = one_at_a_time();
    let hosts = match Bed::public(3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("SKIPPED: this test needs root and `ip netns` (network namespaces): {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (spec, boot_peer) = testnet_files(dir.path(), 1, 0);
    let base = |i: usize| host_dir(dir.path(), i);
    let boot = format!("/ip4/{}/tcp/30333/p2p/{boot_peer}", hosts.ip(0));
    // Host 1 holds the model too, imported by hand into its store.
    let id = model_id(&base(1));
    // Each seeder may send 96 Mbit/s (12 MB/s).
    const MBIT: u32 = 96;
    hosts.limit(0, MBIT);
    hosts.limit(1, MBIT);
    let node = |i: usize, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["node", "--chain"].iter().map(|s| s.to_string()).collect();
        a.push(spec.display().to_string());
        a.extend(["--base-path".into(), base(i).display().to_string()]);
        a.extend(["--listen-addr".into(), format!("/ip4/{}/tcp/30333", hosts.ip(i))]);
        a.extend(["--block-time".into(), "500".into()]);
        if i > 0 {
            a.extend(["--boot-nodes".into(), boot.clone()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let model_path = model().display().to_string();
    let mut procs = Procs(Vec::new());
    procs.0.push(hosts.spawn(
        0,
        BIN,
        &node(
            0,
            &["--validator", "//Alice", "--serve-model", &model_path, "--api-account", "//Alice"],
        ),
        &dir.path().join("host0.log"),
    ));
    procs.0.push(hosts.spawn(1, BIN, &node(1, &[]), &dir.path().join("host1.log")));
    procs.0.push(hosts.spawn(2, BIN, &node(2, &[]), &dir.path().join("host2.log")));
    let log = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("host{i}.log"))).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while !(0..2).all(|i| {
        hosts.rpc(i, 9944, "bitorch_seedStats", json!([])).is_ok_and(|s| s["provided"] == json!(31))
    }) || hosts.rpc(2, 9944, "bitorch_storedModels", json!([])).is_err()
    {
        assert!(Instant::now() < deadline, "hosts not ready:\n{}\n{}\n{}", log(0), log(1), log(2));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2)); // provider records spread
    let out = Command::new("ip")
        .args(["netns", "exec", hosts.ns(2), BIN, "model", "pull", &id])
        .args(["--rpc", "ws://127.0.0.1:9944", "--output-type", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pull: {}\n{}", String::from_utf8_lossy(&out.stderr), log(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = report["bytes"].as_f64().unwrap();
    let rate = bytes / report["secs"].as_f64().unwrap() / 1e6;
    let one = f64::from(MBIT) / 8.0;
    eprintln!(
        "pulled {:.1} MB at {rate:.1} MB/s from two seeders of {one} MB/s each: {report}",
        bytes / 1e6
    );
    let shares: Vec<f64> = report["byPeer"]
        .as_object()
        .unwrap()
        .values()
        .map(|b| b.as_f64().unwrap() / bytes)
        .collect();
    assert_eq!(shares.len(), 2, "{report}");
    assert!(shares.iter().all(|s| *s > 0.3), "both seeders carry the pull: {report}");
    assert!(rate > 1.6 * one, "{rate:.1} MB/s is not close to 2 x {one} MB/s: {report}");
    drop(procs);
}
