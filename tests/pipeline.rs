//! End-to-end: a model served by a pipeline of peers. Three validators of a local chain serve
//! layers 0..10, 10..20 and 20..30 of the real test model, announce themselves in the DHT and
//! answer `/bitorch/stage/1`; node 0's OpenAI-compatible API routes a greedy chat completion
//! through all three and answers exactly what `bitorch infer --chat` produces in one process.
//! With a fourth validator also serving 10..20, killing the 10..20 worker in use in the middle
//! of a generation still gives the same answer, and the killed worker is not tried again.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::free_port;
use common::model::{infer, model, post};
use common::net::{testnet, Node};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const MAX_TOKENS: u32 = 20;
const PROMPTS: [&str; 2] = ["What is the capital of France?", "List three prime numbers."];
const RANGES: [&str; 3] = ["0..10", "10..20", "20..30"];

fn logs(nodes: &[Node]) -> String {
    let all: String = nodes.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n----\n");
    all.chars().rev().take(8000).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Waits (at most `secs`) until `ok`, else panics with the tail of the nodes' logs.
fn wait_for(what: &str, secs: u64, nodes: &[Node], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(!logs(nodes).contains("Error:"), "a node failed; logs:\n{}", logs(nodes));
        assert!(Instant::now() < deadline, "timed out waiting for {what}; logs:\n{}", logs(nodes));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A greedy chat completion through `api`; retried while the route is not complete yet (DHT
/// records still spreading).
fn complete(api: u16, name: &str, prompt: &str, max_tokens: u32, nodes: &[Node]) -> String {
    let req = json!({
        "model": name,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) =
            post(api, "/v1/chat/completions", &req, Duration::from_secs(300)).unwrap();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            return v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the API kept failing: {status} {body}\nlogs:\n{}",
            logs(nodes)
        );
        eprintln!("not yet: {status} {body}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts the nodes of a fresh `testnet(dir, ranges.len())`, node `i` serving `ranges[i]`;
/// returns them and node 0's API port once every worker is announced.
fn start_workers(dir: &Path, ranges: &[&str]) -> (Vec<Node>, u16) {
    let (spec, mut nodes, boot) = testnet(dir, ranges.len());
    let model = model();
    let mut api = 0;
    for (i, n) in nodes.iter_mut().enumerate() {
        let port = free_port();
        if i == 0 {
            api = port;
        }
        n.extra = vec![
            "--serve-model".into(),
            model.display().to_string(),
            "--layers".into(),
            ranges[i].into(),
            "--api-account".into(),
            "//Alice".into(),
            "--api-port".into(),
            port.to_string(),
        ];
    }
    nodes[0].start(&spec, "");
    for n in &mut nodes[1..] {
        n.start(&spec, &boot);
    }
    // The worker is announced once the model is registered (which needs the chain to run).
    wait_for("the workers to be announced", 240, &nodes, || {
        nodes.iter().all(|n| n.log().contains("announced the worker in the DHT"))
    });
    (nodes, api)
}

/// How many stage sessions node 0's gateway opened on `peer`.
fn sessions_on(gateway: &Node, peer: &str) -> usize {
    gateway
        .log()
        .lines()
        .filter(|l| l.contains("opening a stage session") && l.contains(peer))
        .count()
}

#[test]
fn a_killed_worker_mid_generation_is_replaced_and_the_answer_is_the_same() {
    const LONG: u32 = 150;
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (mut nodes, api) = start_workers(dir.path(), &["0..10", "10..20", "20..30", "10..20"]);
    eprintln!("workers up in {:.1}s", t.elapsed().as_secs_f64());
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_id()).collect();
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    let prompt = "Write a short story about a robot who learns to paint.";
    let want = infer(prompt, LONG);
    // A first request so that every worker is found (the DHT records have spread).
    complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes);
    let before = [sessions_on(&nodes[0], &peers[1]), sessions_on(&nodes[0], &peers[3])];
    let gen = {
        let name = name.clone();
        std::thread::spawn(move || {
            let req = json!({
                "model": name,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": LONG,
            });
            post(api, "/v1/chat/completions", &req, Duration::from_secs(300))
        })
    };
    // The 10..20 worker this generation uses: the one its gateway opens a new session on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        if let Some(i) =
            [1, 3].into_iter().find(|&i| sessions_on(&nodes[0], &peers[i]) > before[(i - 1) / 2])
        {
            break i;
        }
        assert!(Instant::now() < deadline, "no 10..20 session opened:\n{}", logs(&nodes));
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    nodes[victim].stop();
    eprintln!("killed {} (layers 10..20) mid-generation", nodes[victim].name);
    let (status, body) = gen.join().unwrap().unwrap();
    assert_eq!(status, 200, "{body}\n{}", logs(&nodes));
    let v: Value = serde_json::from_str(&body).unwrap();
    let got = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(
        nodes[0].log().contains("stage failed; failing over"),
        "the generation was over before the kill; logs:\n{}",
        logs(&nodes)
    );
    assert_eq!(got, want, "the answer changed when a worker was killed");
    // Banned: the next request does not try the killed worker again.
    let tried = sessions_on(&nodes[0], &peers[victim]);
    let again = complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes);
    assert_eq!(again, infer(PROMPTS[0], MAX_TOKENS));
    assert_eq!(sessions_on(&nodes[0], &peers[victim]), tried, "a banned worker was tried");
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}

#[test]
fn three_workers_on_three_validators_answer_like_infer() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (nodes, api) = start_workers(dir.path(), &RANGES);
    eprintln!("workers up in {:.1}s", t.elapsed().as_secs_f64());
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    for prompt in PROMPTS {
        let want = infer(prompt, MAX_TOKENS);
        assert!(!want.is_empty());
        let t = Instant::now();
        let got = complete(api, &name, prompt, MAX_TOKENS, &nodes);
        eprintln!("{prompt:?} through 3 workers in {:.1}s: {got:?}", t.elapsed().as_secs_f64());
        assert_eq!(got, want, "prompt {prompt:?}: the pipeline and `bitorch infer` differ");
    }
    // Each request was a job; the three workers' receipts settle it.
    for id in 0..PROMPTS.len() as u64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let job = loop {
            let job = nodes[0].rpc("bitorch_job", json!([id])).unwrap();
            if job["status"].get("settled").is_some() {
                break job;
            }
            assert!(Instant::now() < deadline, "job {id} did not settle: {job}\n{}", logs(&nodes));
            std::thread::sleep(Duration::from_millis(250));
        };
        let mut ranges: Vec<(u64, u64)> = job["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["layerStart"].as_u64().unwrap(), r["layerEnd"].as_u64().unwrap()))
            .collect();
        ranges.sort();
        assert_eq!(ranges, [(0, 10), (10, 20), (20, 30)], "job {id}: {job}");
    }
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}
