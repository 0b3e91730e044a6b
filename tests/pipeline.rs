//! End-to-end: a model served by a pipeline of peers. Three validators of a local chain serve
//! layers 0..10, 10..20 and 20..30 of the real test model, announce themselves in the DHT and
//! answer `/bitorch/stage/1`; node 0's OpenAI-compatible API routes a greedy chat completion
//! through all three and answers exactly what `bitorch infer --chat` produces in one process.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::free_port;
use common::net::{testnet, Node};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bitorch");
const MAX_TOKENS: u32 = 20;
const PROMPTS: [&str; 2] = ["What is the capital of France?", "List three prime numbers."];
const RANGES: [&str; 3] = ["0..10", "10..20", "20..30"];

fn model() -> PathBuf {
    match std::env::var_os("BITORCH_TEST_MODEL") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "BITORCH_TEST_MODEL must name the test model (now {other:?}): run scripts/fetch-model.sh \
             and set BITORCH_TEST_MODEL to the path it prints"
        ),
    }
}

/// One HTTP/1.1 POST with `Connection: close`; returns the status and the body (the API
/// answers a non-streaming request with a plain body).
fn post(port: u16, path: &str, body: &Value) -> Result<(u16, String), String> {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(300))).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, rest) = raw.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    Ok((status, rest.to_string()))
}

fn infer(prompt: &str) -> String {
    let out = Command::new(BIN)
        .args(["infer", "--chat", "--record-commitments", "--temperature", "0"])
        .args(["--max-tokens", &MAX_TOKENS.to_string(), "--model"])
        .arg(model())
        .arg(prompt)
        .output()
        .unwrap();
    assert!(out.status.success(), "bitorch infer: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

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
fn complete(api: u16, name: &str, prompt: &str, nodes: &[Node]) -> String {
    let req = json!({
        "model": name,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = post(api, "/v1/chat/completions", &req).unwrap();
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

#[test]
fn three_workers_on_three_validators_answer_like_infer() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (spec, mut nodes, boot) = testnet(dir.path(), 3);
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
            RANGES[i].into(),
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
    // The RPC opens once the model is registered and the worker announced.
    wait_for("the workers to be announced", 240, &nodes, || {
        nodes.iter().all(|n| n.log().contains("announced the worker in the DHT"))
    });
    eprintln!("workers up in {:.1}s", t.elapsed().as_secs_f64());
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    for prompt in PROMPTS {
        let want = infer(prompt);
        assert!(!want.is_empty());
        let t = Instant::now();
        let got = complete(api, &name, prompt, &nodes);
        eprintln!("{prompt:?} through 3 workers in {:.1}s: {got:?}", t.elapsed().as_secs_f64());
        assert_eq!(got, want, "prompt {prompt:?}: the pipeline and `bitorch infer` differ");
    }
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}
