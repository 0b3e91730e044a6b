//! End-to-end: a dev node serving the real test model (`--serve-model`, all layers) answers
//! `POST /v1/chat/completions`, streaming and not, with exactly the text `bitorch infer --chat`
//! produces for the same prompt (greedy), and the chain pays its worker for each request.
//!
//! Kernels: a worker records activation commitments, which selects the batch-invariant
//! attention kernel; `bitorch infer --record-commitments` selects the same one (both load the
//! GGUF weights dequantized to f32), so the comparison is exact.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use common::dev::DevNode;
use common::free_port;
use common::model::{chat, infer, model, post};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
const PRICE: u128 = 1_000_000;
const MAX_TOKENS: u32 = 40;
const PROMPTS: [&str; 2] = ["What is the capital of France?", "List three prime numbers."];

fn start(dir: &Path) -> (DevNode, u16) {
    let api = free_port();
    let args: Vec<String> = [
        // Each request opens its own job (the path without a job opened ahead; the pipeline
        // test runs with one).
        "--block-time",
        "500",
        "--worker-key",
        "//Bob",
        "--no-job-ahead",
        "--api-port",
        &api.to_string(),
        "--serve-model",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([model().display().to_string()])
    .collect();
    // The RPC opens once the model is loaded and registered.
    let node = DevNode::start(
        &dir.join("base"),
        free_port(),
        &args,
        dir.join("node.log"),
        Duration::from_secs(300),
    );
    (node, api)
}

fn request(model: &str, prompt: &str, stream: bool) -> Value {
    let mut req = chat(model, prompt, MAX_TOKENS);
    req["stream"] = json!(stream);
    req
}

/// Waits until job `id` settles; returns it.
fn settled(node: &DevNode, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = node.rpc("bitorch_job", json!([id]));
        if job["status"].get("settled").is_some() {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not settle: {job}\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn serve_model_answers_like_infer_and_the_chain_pays_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (node, api) = start(dir.path());
    eprintln!("node up in {:.1}s", t.elapsed().as_secs_f64());
    let models = node.rpc("bitorch_models", json!([]));
    let layers = models[0]["layerCount"].as_u64().unwrap() as u128;
    assert_eq!(models[0]["owner"], BOB, "the worker key registers the model");
    let (bob_before, _) = node.account(BOB);
    let (_, alice_reserved_before) = node.account(ALICE);

    // GET-less discovery: the model id is the name the API serves.
    let name = models[0]["name"].as_str().unwrap().to_string();
    let mut usages = Vec::new();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let want = infer(prompt, MAX_TOKENS);
        assert!(!want.is_empty());
        let t = Instant::now();
        let stream = i == 1;
        let (status, body) = post(
            api,
            "/v1/chat/completions",
            &request(&name, prompt, stream),
            Duration::from_secs(600),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}\n{}", node.log_text());
        let (got, usage) = if stream {
            let mut text = String::new();
            let mut done = false;
            for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if line == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(line).unwrap();
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(c);
                }
            }
            assert!(done, "stream ends with [DONE]: {body}");
            (text, None)
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
            (text, Some(v["usage"].clone()))
        };
        eprintln!("{prompt:?} (stream {stream}) in {:.1}s: {got:?}", t.elapsed().as_secs_f64());
        assert_eq!(got, want, "prompt {prompt:?}: the API and `bitorch infer` differ");
        usages.push(usage);
    }

    // Each request was job i; after its challenge window the worker is paid for its
    // receipt and the client gets the rest of the escrow back.
    let mut paid_total = 0u128;
    for (id, usage) in usages.iter().enumerate() {
        let job = settled(&node, id as u64);
        assert_eq!(job["client"], ALICE);
        let escrow: u128 = job["escrow"].as_str().unwrap().parse().unwrap();
        let max_tokens = job["maxTokens"].as_u64().unwrap() as u128;
        assert_eq!(escrow, max_tokens * layers * PRICE);
        let receipts = job["receipts"].as_array().unwrap();
        assert_eq!(receipts.len(), 1, "one worker, one receipt: {job}");
        let r = &receipts[0];
        assert_eq!(r["worker"], BOB);
        assert_eq!((r["layerStart"].as_u64(), r["layerEnd"].as_u64()), (Some(0), Some(30)));
        let tokens = r["tokens"].as_u64().unwrap() as u128;
        if let Some(u) = usage {
            // Every position but the last sampled token's was computed.
            let positions =
                u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap() - 1;
            assert_eq!(tokens, positions as u128, "{job} {u}");
        }
        let paid = (30 * tokens * PRICE).to_string();
        assert_eq!(r["paid"], paid);
        let s = &job["status"]["settled"];
        assert_eq!(s["paid"], paid);
        let refunded: u128 = s["refunded"].as_str().unwrap().parse().unwrap();
        assert_eq!(refunded, escrow - 30 * tokens * PRICE);
        paid_total += 30 * tokens * PRICE;
        // The wallet shows the same job.
        let out = std::process::Command::new(common::net::BIN)
            .args(["wallet", "job", &id.to_string(), "--rpc", &node.url()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("Job:      {id}")), "{text}");
        assert!(text.contains("Status:   settled"), "{text}");
        assert!(
            text.contains(&format!("Receipt:  {BOB} layers 0..30 × {tokens} tokens")),
            "{text}"
        );
    }
    // A job that does not exist is an error that says so.
    let out = std::process::Command::new(common::net::BIN)
        .args(["wallet", "job", "999", "--rpc", &node.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no job 999"));
    let (bob_after, _) = node.account(BOB);
    assert_eq!(bob_after, bob_before + paid_total, "the worker is paid layers × tokens × price");
    let (_, alice_reserved_after) = node.account(ALICE);
    assert_eq!(alice_reserved_after, alice_reserved_before, "no escrow left reserved");
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}
