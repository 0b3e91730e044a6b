//! End-to-end: a dev node serving the real test model (`--serve-model`, all layers) answers
//! `POST /v1/chat/completions`, streaming and not, with exactly the text `bitorch infer --chat`
//! produces for the same prompt (greedy), and the chain pays its worker for each request, on
//! the worker's own claims with the client's vouchers.
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
const PRICE: u128 = 100_000_000;
const MAX_TOKENS: u32 = 40;
const PROMPTS: [&str; 2] = ["What is the capital of France?", "List three prime numbers."];

fn start(dir: &Path) -> (DevNode, u16) {
    start_with(dir, &[])
}

fn start_with(dir: &Path, extra: &[&str]) -> (DevNode, u16) {
    let api = free_port();
    let args: Vec<String> = [
        // The first request opens the channel job itself (the path without a job opened ahead;
        // the pipeline test runs with one).
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
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    // The RPC opens once the model is loaded and registered.
    let node = DevNode::start_in(dir, &args, Duration::from_secs(300));
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
    let mut served = Vec::new();
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
            served.push(v["bitorch"].clone());
            (text, Some(v["usage"].clone()))
        };
        eprintln!("{prompt:?} (stream {stream}) in {:.1}s: {got:?}", t.elapsed().as_secs_f64());
        assert_eq!(got, want, "prompt {prompt:?}: the API and `bitorch infer` differ");
        usages.push(usage);
    }

    // Both requests were paid from one channel, job 0 (opened for the first request: this
    // node keeps no job ahead). The worker claimed each session itself with Alice's voucher;
    // once the channel idles it is closed, and after its claim window each claim is paid its
    // layers × positions × price and the client gets the rest of the escrow back.
    let stats = node.rpc("bitorch_gatewayStats", json!([]));
    assert_eq!(
        (stats["channelRequests"].as_u64(), stats["jobsOpened"].as_u64()),
        (Some(2), Some(1))
    );
    let job = settled(&node, 0);
    assert_eq!(job["client"], ALICE);
    let escrow: u128 = job["escrow"].as_str().unwrap().parse().unwrap();
    let max_tokens = job["maxTokens"].as_u64().unwrap() as u128;
    assert_eq!(escrow, max_tokens * layers * PRICE);
    let claims = job["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 2, "one worker, one claim per request: {job}");
    let mut paid_total = 0u128;
    for (c, usage) in claims.iter().zip(&usages) {
        assert_eq!(c["worker"], BOB);
        assert_eq!((c["layerStart"].as_u64(), c["layerEnd"].as_u64()), (Some(0), Some(30)));
        let positions = c["positions"].as_u64().unwrap() as u128;
        if let Some(u) = usage {
            // Every position but the last sampled token's was computed and acknowledged.
            let want =
                u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap() - 1;
            assert_eq!(positions, want as u128, "{job} {u}");
            // The answer said who served it, in which job, and what it cost: this claim.
            let b = &served[0];
            assert_eq!(b["job"], 0, "{b}");
            assert_eq!(b["route"], json!([{"worker": BOB, "peer": null, "layers": [0, 30]}]));
            assert_eq!(b["price_per_layer_token"], PRICE.to_string());
            assert_eq!(b["cost"], (30 * positions * PRICE).to_string(), "{b}");
        }
        assert_eq!(c["paid"], (30 * positions * PRICE).to_string());
        paid_total += 30 * positions * PRICE;
    }
    let s = &job["status"]["settled"];
    assert_eq!(s["paid"], paid_total.to_string());
    let refunded: u128 = s["refunded"].as_str().unwrap().parse().unwrap();
    assert_eq!(refunded, escrow - paid_total);
    // The wallet shows the same job.
    let out = std::process::Command::new(common::net::BIN)
        .args(["wallet", "job", "0", "--rpc", &node.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Job:      0"), "{text}");
    assert!(text.contains("Status:   settled"), "{text}");
    for c in claims {
        let line = format!("Claim:    {BOB} layers 0..30 × {} positions", c["positions"]);
        assert!(text.contains(&line), "{text}");
    }
    // A job that does not exist is an error that says so.
    let out = std::process::Command::new(common::net::BIN)
        .args(["wallet", "job", "999", "--rpc", &node.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no job 999"));
    // Bob is paid exactly that, less the fees of his two claims (burned: issuance fell by
    // them and Alice's fees).
    let (bob_after, _) = node.account(BOB);
    let fees = bob_before + paid_total - bob_after;
    assert!(
        fees > 0 && fees < PRICE * 1_000,
        "Bob's balance moved by {} for {paid_total}",
        bob_after as i128 - bob_before as i128
    );
    let (_, alice_reserved_after) = node.account(ALICE);
    assert_eq!(alice_reserved_after, alice_reserved_before, "no escrow left reserved");
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}

/// A raw HTTP request to the API: its status and body.
fn raw(port: u16, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[test]
fn web_pages_and_an_external_rpc_cannot_spend_the_operators_credits() {
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let args: Vec<String> = ["--no-job-ahead", "--rpc-external", "--api-port", &api.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--serve-model".to_string(), model().display().to_string()])
        .collect();
    let node = DevNode::start_in(dir.path(), &args, Duration::from_secs(300));
    let name = node.rpc("bitorch_models", json!([]))[0]["name"].as_str().unwrap().to_string();
    let req = request(&name, "What is the capital of France?", false).to_string();
    // On an external RPC, a generation must be paid by an API token, never by the operator.
    let asked = request(&name, "What is the capital of France?", false);
    let e = common::rpc(node.port, "bitorch_generate", json!([asked])).unwrap_err();
    assert!(e.contains("needs an API token"), "{e}");
    // What a web page can send to any site without asking first: a text/plain POST.
    let (status, body) =
        raw(api, "Content-Type: text/plain\r\nOrigin: http://evil.example\r\n", &req);
    assert_eq!(status, 403, "{body}");
    let (status, body) = raw(api, "Content-Type: text/plain\r\n", &req);
    assert_eq!(status, 415, "{body}");
    let (status, body) =
        raw(api, "Content-Type: application/json\r\nOrigin: http://evil.example\r\n", &req);
    assert_eq!(status, 403, "{body}");
    // Nothing was paid for: no job was ever opened (no job ahead on this node).
    assert!(node.rpc("bitorch_job", json!([0])).is_null(), "a job was opened");
    // The operator's own tools still work.
    let (status, body) = raw(api, "Content-Type: application/json\r\n", &req);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Paris"), "{body}");
}

fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new(common::net::BIN).args(args).output().unwrap();
    assert!(out.status.success(), "bitorch {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An API token `//Eve` makes for `gateway` on the chain behind `rpc`, with `extra` options.
fn eve_token(rpc: &str, gateway: &str, extra: &[&str]) -> String {
    let mut args = vec!["key", "api-token", "--suri", "//Eve", "--gateway", gateway, "--rpc", rpc];
    args.extend(extra);
    cli(&args)
}

/// `//Eve` allows the dev node's API account (//Alice) `allowance` BTR, for `expires` (or the
/// default).
fn approve(rpc: &str, allowance: &str, expires: Option<&str>) {
    let mut args = vec!["wallet", "approve", "--suri", "//Eve", "--gateway", ALICE];
    args.extend(["--allowance", allowance, "--rpc", rpc]);
    if let Some(e) = expires {
        args.extend(["--expires", e]);
    }
    cli(&args);
}

fn free(node: &DevNode, who: &str) -> u128 {
    node.rpc("bitorch_account", json!([who]))["free"].as_str().unwrap().parse().unwrap()
}

fn next_job(node: &DevNode) -> u64 {
    (0..).find(|id| node.rpc("bitorch_job", json!([id])).is_null()).unwrap()
}

#[test]
fn a_user_pays_from_their_allowance_with_a_token_they_signed_and_bad_tokens_pay_nothing() {
    const EVE: &str = "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw";
    let python = std::env::var("BITORCH_OPENAI_PYTHON")
        .expect("BITORCH_OPENAI_PYTHON must name a Python with the openai package (scripts/test.sh sets it)");
    let dir = tempfile::tempdir().unwrap();
    let (node, api) = start(dir.path());
    let rpc = format!("ws://127.0.0.1:{}", node.port);
    let name = node.rpc("bitorch_models", json!([]))[0]["name"].as_str().unwrap().to_string();
    // Eve, a user, lets the node's API account (//Alice, the gateway) spend up to 5 BTR.
    approve(&rpc, "5", Some("1h"));
    let token = eve_token(&rpc, ALICE, &["--expires", "1h"]);
    assert!(token.starts_with("btr_"), "{token}");
    let (eve_before, alice_before, first) = (free(&node, EVE), free(&node, ALICE), next_job(&node));

    // The official client with the token as its key: a plain and a streamed answer.
    // The checkout the test runs in (a shared target directory reuses binaries across them).
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let script = format!("{dir}/../../scripts/openai-client.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(["--base-url", &format!("http://127.0.0.1:{api}/v1"), "--expect", "Paris"])
        .args(["--api-key", &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // One job, Eve's, opened by the gateway: a channel that paid for both requests (the
    // second did not wait for a block); settled once idle, Eve pays exactly what it paid.
    let jobs: Vec<u64> = (first..next_job(&node)).collect();
    assert_eq!(jobs.len(), 1, "one channel for the user's requests");
    let mut paid = 0u128;
    for id in jobs {
        let job = settled(&node, id);
        assert_eq!(
            (job["client"].as_str(), job["agent"].as_str()),
            (Some(EVE), Some(ALICE)),
            "{job}"
        );
        paid += job["status"]["settled"]["paid"].as_str().unwrap().parse::<u128>().unwrap();
        assert_eq!(job["claims"].as_array().unwrap().len(), 2, "both requests on it: {job}");
    }
    assert!(paid > 0);
    assert_eq!(eve_before - free(&node, EVE), paid, "Eve pays exactly the settled cost");
    // The wallet shows them: Eve's jobs, settled, and what the worker (//Bob) earned.
    let listed: Value = serde_json::from_str(&cli(&[
        "wallet",
        "jobs",
        EVE,
        "--output-type",
        "json",
        "--rpc",
        &rpc,
    ]))
    .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed.as_array().unwrap().iter().all(|j| j["status"].get("settled").is_some()));
    let claims: Value = serde_json::from_str(&cli(&[
        "wallet",
        "claims",
        BOB,
        "--output-type",
        "json",
        "--rpc",
        &rpc,
    ]))
    .unwrap();
    assert_eq!(claims["earned"].as_str().unwrap().parse::<u128>().unwrap(), paid, "{claims}");
    assert_eq!((claims["pending"].as_str(), claims["failedAudits"].as_u64()), (Some("0"), Some(0)));
    // The allowance went down by what was spent (what the jobs escrowed and did not spend
    // came back to it).
    let left = node.rpc("bitorch_allowance", json!([EVE, ALICE]));
    assert_eq!(
        left["remaining"].as_str().unwrap().parse::<u128>().unwrap(),
        5_000_000_000_000 - paid
    );
    let escrows = 2 * 114 * 30 * PRICE; // what Alice would have escrowed for two requests
    let alice_moved = free(&node, ALICE).abs_diff(alice_before);
    assert!(alice_moved < escrows / 10, "Alice moved by {alice_moved}: she paid for Eve's jobs?");

    // Refused tokens: 401 (saying why), nothing opened, nothing paid.
    let ask = |key: &str| {
        let auth = format!("Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n");
        raw(api, &auth, &request(&name, "Hi", false).to_string())
    };
    // Each refused request leaves Eve's balance and the job count as they were.
    let refused = |key: &str, status: u16, why: &str| {
        let (eve, jobs) = (free(&node, EVE), next_job(&node));
        let (got, body) = ask(key);
        assert_eq!(got, status, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
        assert_eq!((free(&node, EVE), next_job(&node)), (eve, jobs), "{why}: it cost something");
    };
    let mut forged = token.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    const CHARLIE: &str = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y";
    let other_gateway = eve_token(&rpc, CHARLIE, &[]);
    let expired = eve_token(&rpc, ALICE, &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    refused(&forged, 401, "signature");
    refused(&other_gateway, 401, "another gateway");
    refused(&expired, 401, "expired");
    // A token whose price cap is below the worker's price (0.0001): 402 naming it.
    let capped = eve_token(&rpc, ALICE, &["--max-price", "0.00005"]);
    refused(&capped, 402, "the cheapest route costs 0.0001 BTR");
    // Over the allowance: 402.
    approve(&rpc, "0.0001", None);
    refused(&token, 402, "allowance");
    // Revoked: 401.
    cli(&["wallet", "revoke", "--suri", "//Eve", "--gateway", ALICE, "--rpc", &rpc]);
    refused(&token, 401, "no allowance");
}

#[test]
fn a_token_past_its_rate_limit_gets_429_with_retry_after_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (node, api) = start_with(dir.path(), &["--key-rate", "6", "--key-burst", "2"]);
    let rpc = format!("ws://127.0.0.1:{}", node.port);
    let name = node.rpc("bitorch_models", json!([]))[0]["name"].as_str().unwrap().to_string();
    approve(&rpc, "5", None);
    let token = eve_token(&rpc, ALICE, &[]);
    let ask = |key: Option<&str>| {
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        raw(
            api,
            &format!("Content-Type: application/json\r\n{auth}"),
            &chat(&name, "Hi", 4).to_string(),
        )
    };
    // A burst of 2, then one request every 10 s: the third in a row is refused.
    for _ in 0..2 {
        let (status, body) = ask(Some(&token));
        assert_eq!(status, 200, "{body}");
    }
    let jobs = next_job(&node);
    let (status, body) = ask(Some(&token));
    assert_eq!(status, 429, "{body}");
    let retry = body
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(str::to_string))
        .unwrap_or_else(|| panic!("no Retry-After: {body}"));
    let secs: u64 = retry.trim().parse().unwrap();
    assert!((1..=10).contains(&secs), "{secs}");
    assert_eq!(next_job(&node), jobs, "a refused request opened a job");
    // The operator (no token) is served meanwhile; so is the token once the wait is over.
    let (status, body) = ask(None);
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(secs));
    let (status, body) = ask(Some(&token));
    assert_eq!(status, 200, "{body}");
}

/// `GET /metrics` of a node's Prometheus endpoint: the value of each sample by its name (with
/// labels), and the content type.
fn scrape(port: u16) -> (std::collections::BTreeMap<String, f64>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, v)| (name.to_string(), v.parse::<f64>().unwrap()))
        .collect();
    (samples, head.to_lowercase())
}

#[test]
fn the_prometheus_endpoint_shows_the_node_at_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (node, api) = start_with(dir.path(), &["--prometheus-port", &port.to_string()]);
    let (before, head) = scrape(port);
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    let best =
        |m: &std::collections::BTreeMap<String, f64>| m["bitorch_block_height{status=\"best\"}"];
    assert!(before.contains_key("bitorch_block_height{status=\"finalized\"}"), "{before:?}");
    assert_eq!(before["bitorch_gateway_generations_total"], 0.0, "{before:?}");
    assert_eq!(before["bitorch_stage_sessions_max"], 16.0, "{before:?}");
    assert!(before["bitorch_stage_tokens_per_second"] > 0.0, "{before:?}");
    // The benchmark at start is not work done for anyone.
    assert_eq!(before["bitorch_stage_positions_total"], 0.0, "{before:?}");
    assert_eq!(before["bitorch_stage_activation_bytes_total{direction=\"out\"}"], 0.0);
    assert_eq!(before["bitorch_stage_queue"], 0.0, "{before:?}");
    let name = node.rpc("bitorch_models", json!([]))[0]["name"].as_str().unwrap().to_string();
    let (status, body) =
        post(api, "/v1/chat/completions", &chat(&name, PROMPTS[0], 8), Duration::from_secs(120))
            .unwrap();
    assert_eq!(status, 200, "{body}");
    node.wait_for_height(best(&before) as u64 + 2);
    let (after, _) = scrape(port);
    assert!(best(&after) >= best(&before) + 2.0, "{before:?}\n{after:?}");
    // Import time moves with the blocks imported.
    let imports = |m: &std::collections::BTreeMap<String, f64>| m["bitorch_block_imports_total"];
    assert!(imports(&after) >= imports(&before) + 2.0, "{before:?}\n{after:?}");
    assert!(
        after["bitorch_block_import_seconds_total"] > before["bitorch_block_import_seconds_total"],
        "{before:?}\n{after:?}"
    );
    assert_eq!(after["bitorch_gateway_generations_total"], 1.0, "{after:?}");
    assert!(after["bitorch_gateway_sessions_opened_total"] >= 1.0, "{after:?}");
    assert!(after["bitorch_gateway_channel_requests_total"] >= 1.0, "{after:?}");
    // The worker computed the prompt and the generated tokens, and sent their activations (the
    // last stage: 576 floats and 64 logits per forward at least).
    let forwards = after["bitorch_stage_forwards_total"];
    assert!(forwards >= 2.0, "{after:?}");
    assert!(after["bitorch_stage_positions_total"] > forwards, "{after:?}");
    assert!(after["bitorch_stage_batches_total"] >= 1.0, "{after:?}");
    let out = after["bitorch_stage_activation_bytes_total{direction=\"out\"}"];
    assert!(out >= forwards * (576.0 + 2.0 * 64.0) * 4.0, "{after:?}");
    assert!(after["bitorch_jobs_total"] >= 1.0, "{after:?}");
    assert!(after.contains_key("bitorch_open_audits"), "{after:?}");
    // No audit failed on this honest node (the pallet's tests count failed ones).
    assert_eq!(after["bitorch_slashes_total"], 0.0, "{after:?}");
    assert_eq!(after["bitorch_panics_total"], 0.0, "{after:?}");
    // The database's memory, within its budget, and the state's size.
    let memtables = after["bitorch_db_memory_bytes{part=\"memtables\"}"];
    assert!(memtables > 0.0 && memtables <= 24.0 * 1024.0 * 1024.0, "{after:?}");
    assert!(after.contains_key("bitorch_db_memory_bytes{part=\"block_cache\"}"), "{after:?}");
    assert!(after["bitorch_state_keys"] > 10.0, "{after:?}");
}
