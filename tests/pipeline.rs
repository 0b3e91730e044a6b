//! End-to-end: a model served by a pipeline of peers. Three validators of a local chain serve
//! layers 0..10, 10..20 and 20..30 of the real test model, announce themselves in the DHT and
//! answer `/bitorch/stage/1`; node 0's OpenAI-compatible API routes a greedy chat completion
//! through all three and answers exactly what `bitorch infer --chat` produces in one process.
//! Both requests are paid from one channel (a job that pays for many requests); each worker
//! claims each of its sessions itself with the client's voucher and is paid exactly
//! layers × positions × price less its claims' fees, the client gets the rest of its escrow
//! back, with issuance equal to the sum of all balances; with the 10..20 worker gone, requests
//! fail with an error naming layers 10..20 and no escrow is kept. With a fourth
//! validator also serving 10..20, killing the 10..20 worker in use in the middle of a
//! generation still gives the same answer, and the killed worker is not tried again. A worker
//! at its session cap answers "busy" and the gateway routes around it; malformed and oversized
//! stage messages sent to a worker in use are refused and the generation is unharmed.
//!
//! Needs `BITORCH_TEST_MODEL` (the path `scripts/fetch-model.sh` prints).

mod common;

use bitorch_compute::{
    protocol, Activation, DecodeError, Floats, SessionAuth, StageError, StageRequest, StageResponse,
};
use bitorch_primitives::keys::{account_of, pair_from_suri, to_ss58};
use common::free_port;
use common::model::{chat, infer, model, post};
use common::net::{testnet, Node};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Price per layer per token the API account offers (the node's default).
const PRICE: u128 = 100_000_000;
const DEV: [&str; 6] = ["Alice", "Bob", "Charlie", "Dave", "Eve", "Ferdie"];

const MAX_TOKENS: u32 = 20;
const PROMPTS: [&str; 2] = ["What is the capital of France?", "List three prime numbers."];

/// Each test runs four nodes that load the model; on a small machine two such tests at once
/// starve each other (RPC timeouts), so they take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tail of the nodes' logs, without the consensus engine's chatter.
fn logs(nodes: &[Node]) -> String {
    common::net::quiet_logs(nodes)
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

/// Sends a greedy chat completion request through `api` on a thread of its own; the thread
/// gives the answer's text, or panics with the status and body of an error.
fn spawn_completion(
    api: u16,
    name: &str,
    prompt: &'static str,
    max_tokens: u32,
) -> std::thread::JoinHandle<String> {
    let req = chat(name, prompt, max_tokens);
    std::thread::spawn(move || {
        let (status, body) =
            post(api, "/v1/chat/completions", &req, Duration::from_secs(300)).unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    })
}

/// A greedy chat completion through `api`; retried while the route is not complete yet (503
/// while DHT records spread) or a worker is busy (429). Returns the answer's text.
fn complete(api: u16, name: &str, prompt: &str, max_tokens: u32, nodes: &[Node]) -> String {
    let v = completion(api, name, prompt, max_tokens, nodes);
    v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

/// Like [`complete`]; returns the whole response.
fn completion(api: u16, name: &str, prompt: &str, max_tokens: u32, nodes: &[Node]) -> Value {
    let req = chat(name, prompt, max_tokens);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) =
            post(api, "/v1/chat/completions", &req, Duration::from_secs(300)).unwrap();
        if status == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        // Only the documented transient answers are retried: 503 (no route yet, while the DHT
        // records spread) and 429 (busy). Anything else fails the test at once.
        assert!(
            status == 503 || status == 429,
            "the API failed: {status} {body}\nlogs:\n{}",
            logs(nodes)
        );
        assert!(
            Instant::now() < deadline,
            "the API kept failing: {status} {body}\nlogs:\n{}",
            logs(nodes)
        );
        eprintln!("not yet: {status} {body}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts the nodes of a fresh `testnet(dir, ranges.len())`, node `i` serving `ranges[i]`
/// (none when empty) with `extra[i]` more arguments, the APIs paid by `//Eve` (node 0's with
/// a job opened ahead); returns
/// them, node 0's API port and the boot address once every worker is announced.
fn start_workers(dir: &Path, ranges: &[&str], extra: &[&[&str]]) -> (Vec<Node>, u16, String) {
    // No audits: these tests count every transaction's fee (an auditor's commit and reveal would
    // move its balance), and audits have a test of their own.
    start_workers_with(dir, ranges, extra, |spec| {
        spec["genesis"]["jobs"]["auditPercent"] = json!(0)
    })
}

/// [`start_workers`] on a chain spec changed by `patch` first.
fn start_workers_with(
    dir: &Path,
    ranges: &[&str],
    extra: &[&[&str]],
    patch: impl FnOnce(&mut Value),
) -> (Vec<Node>, u16, String) {
    let (spec, mut nodes, boot) = testnet(dir, ranges.len());
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    patch(&mut json);
    std::fs::write(&spec, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let model = model();
    let api = free_port();
    for (i, n) in nodes.iter_mut().enumerate() {
        if ranges[i].is_empty() {
            continue;
        }
        let port = if i == 0 { api } else { free_port() };
        n.extra = vec![
            "--serve-model".into(),
            model.display().to_string(),
            "--layers".into(),
            ranges[i].into(),
            "--api-account".into(),
            "//Eve".into(),
            "--api-port".into(),
            port.to_string(),
        ];
        if i != 0 {
            // Only node 0's API is used; the others keep no job opened ahead from Eve.
            n.extra.push("--no-job-ahead".into());
        }
        n.extra.extend(extra.get(i).into_iter().flat_map(|e| e.iter().map(|s| s.to_string())));
    }
    // `--layers auto` workers start once the others are announced, so that they see them.
    let auto = |i: usize| ranges[i].starts_with("auto");
    // Announced, and serving requests: the JSON-RPC server opens after the API, which opens
    // once a job is opened ahead (node 0).
    let announced = |n: &Node| {
        n.log().contains("announced the worker in the DHT")
            && n.rpc("system_health", json!([])).is_ok()
    };
    for phase in [false, true] {
        for i in (0..nodes.len()).filter(|&i| auto(i) == phase) {
            nodes[i].start(&spec, if i == 0 { "" } else { &boot });
        }
        // The worker is announced once the model is registered (the chain must run).
        wait_for("the workers to be announced", 240, &nodes, || {
            (0..nodes.len())
                .all(|i| ranges[i].is_empty() || auto(i) != phase || announced(&nodes[i]))
        });
    }
    // Node 0's gateway finds every other worker in the DHT (else a test that counts on one to
    // take over could find only the one it kills).
    let model_id = nodes[0].rpc("bitorch_models", json!([])).unwrap()[0]["id"].clone();
    let serving: Vec<String> =
        (1..nodes.len()).filter(|&i| !ranges[i].is_empty()).map(|i| nodes[i].peer_id()).collect();
    wait_for("node 0 to find every worker in the DHT", 60, &nodes, || {
        let Ok(found) = nodes[0].rpc("bitorch_workers", json!([model_id])) else { return false };
        serving.iter().all(|p| found.as_array().unwrap().iter().any(|w| w["peerId"] == *p))
    });
    (nodes, api, boot)
}

fn address(name: &str) -> String {
    to_ss58(&account_of(&pair_from_suri(&format!("//{name}")).unwrap()))
}

fn amount(v: &Value) -> u128 {
    v.as_str().unwrap_or_else(|| panic!("not an amount: {v}")).parse().unwrap()
}

/// (free, reserved) of every dev account, by address, and the total issuance.
fn ledger(node: &Node) -> (BTreeMap<String, (u128, u128)>, u128) {
    let accounts = DEV
        .iter()
        .map(|name| {
            let a = node.rpc("bitorch_account", json!([address(name)])).unwrap();
            (address(name), (amount(&a["free"]), amount(&a["reserved"])))
        })
        .collect();
    (accounts, amount(&node.rpc("bitorch_totalIssuance", json!([])).unwrap()))
}

/// The chain core's invariant: the tokens in existence are exactly the dev accounts'
/// balances (no other account holds any on these chains).
fn assert_issuance_is_the_sum(accounts: &BTreeMap<String, (u128, u128)>, issuance: u128) {
    let sum: u128 = accounts.values().map(|(f, r)| f + r).sum();
    assert_eq!(sum, issuance, "issuance != the sum of all balances: {accounts:?}");
}

/// Waits until job `id` is `status` ("settled" or "refunded"); returns it.
fn ended(node: &Node, id: u64, status: &str, nodes: &[Node]) -> Value {
    let mut job = Value::Null;
    wait_for(&format!("job {id} to be {status}"), 120, nodes, || {
        job = node.rpc("bitorch_job", json!([id])).unwrap();
        job["status"].get(status).is_some()
    });
    job
}

fn next_job_id(node: &Node) -> u64 {
    (0..).find(|id| node.rpc("bitorch_job", json!([id])).unwrap().is_null()).unwrap()
}

/// Every job on chain, in id order.
fn jobs(node: &Node) -> Vec<Value> {
    (0..next_job_id(node)).map(|id| node.rpc("bitorch_job", json!([id])).unwrap()).collect()
}

type Ledger = (BTreeMap<String, (u128, u128)>, u128);

/// A consistent view of the balances while `who` has at least one open job (the gateway keeps
/// one opened ahead for the next channel, and replaces it now and then): the ledger, and the
/// escrow of `who`'s jobs that hold it (open, or in their claim window). Read until the ledger
/// is the same before and after the jobs are read.
fn snapshot(node: &Node, who: &str, nodes: &[Node]) -> (Ledger, u128) {
    let mut out = None;
    wait_for("a job opened ahead", 60, nodes, || {
        let first = ledger(node);
        let mine: Vec<Value> = jobs(node).into_iter().filter(|j| j["client"] == who).collect();
        let holding = |j: &&Value| {
            j["status"].get("open").is_some() || j["status"].get("challenge").is_some()
        };
        let open = mine.iter().filter(|j| j["status"].get("open").is_some()).count();
        if open == 0 || ledger(node) != first {
            return false;
        }
        out = Some((first, mine.iter().filter(holding).map(|j| amount(&j["escrow"])).sum()));
        true
    });
    out.unwrap()
}

/// What `gateway`'s API backend has done so far (`bitorch_gatewayStats`).
fn stats(gateway: &Node) -> Value {
    gateway.rpc("bitorch_gatewayStats", json!([])).unwrap()
}

/// A counter of [`stats`].
fn counter(gateway: &Node, name: &str) -> u64 {
    let v = stats(gateway);
    v[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

/// How many stage sessions node 0's gateway asked `peer` to open.
fn sessions_on(gateway: &Node, peer: &str) -> u64 {
    stats(gateway)["sessionsOpened"][peer].as_u64().unwrap_or(0)
}

#[test]
fn a_killed_worker_mid_generation_is_replaced_and_the_answer_is_the_same() {
    let _turn = one_at_a_time();
    const LONG: u32 = 150;
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (mut nodes, api, _) =
        start_workers(dir.path(), &["0..10", "10..20", "20..30", "10..20"], &[]);
    eprintln!("workers up in {:.1}s", t.elapsed().as_secs_f64());
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_id()).collect();
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    let prompt = "Write a short story about a robot who learns to paint.";
    let want = infer(prompt, LONG);
    // A first request so that every worker is found (the DHT records have spread).
    complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes);
    let before = [sessions_on(&nodes[0], &peers[1]), sessions_on(&nodes[0], &peers[3])];
    let gen = spawn_completion(api, &name, prompt, LONG);
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
    let got = gen.join().unwrap_or_else(|_| panic!("the generation failed:\n{}", logs(&nodes)));
    assert!(
        counter(&nodes[0], "failovers") >= 1,
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
fn a_client_that_vanishes_mid_generation_still_pays_what_it_acknowledged() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Short jobs (20 blocks) and claim windows (10 blocks): a session left open by a vanished
    // client would idle longer (60 s) than its job takes to stop accepting claims.
    let (mut nodes, api, _) =
        start_workers_with(dir.path(), &["0..10", "10..30", "0..10", ""], &[], |spec| {
            spec["genesis"]["jobs"]["jobTimeout"] = json!(20);
            spec["genesis"]["jobs"]["challengeWindow"] = json!(10);
        });
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    let bob = address("Bob");
    let bobs = |node: &Node| -> Vec<(Value, Value)> {
        jobs(node)
            .into_iter()
            .flat_map(|j| {
                let claims = j["claims"].as_array().unwrap().clone();
                claims
                    .into_iter()
                    .filter(|c| c["worker"] == bob.as_str())
                    .map(move |c| (j.clone(), c))
            })
            .collect()
    };
    // A first request so that every worker is found; Bob claims it when it closes.
    complete(api, &name, PROMPTS[0], 4, &nodes);
    wait_for("Bob's first claim", 60, &nodes, || !bobs(&nodes[0]).is_empty());
    let first = bobs(&nodes[0])[0].1["session"].clone();
    // The gateway (node 0, the client's node: Eve's key) is killed mid-generation: nothing
    // closes Bob's session or signs another voucher.
    let gen =
        spawn_completion(api, &name, "Write a short story about a robot who learns to paint.", 150);
    let peer = nodes[1].peer_id();
    let before = sessions_on(&nodes[0], &peer);
    wait_for("a session on Bob", 60, &nodes, || sessions_on(&nodes[0], &peer) > before);
    // A few steps in (the prompt alone is more than 10 positions, acknowledged with the first
    // step): the 150 tokens take 1.5 s at the pipeline's ~100 tok/s here, so the kill comes
    // well before the end (it waited 2 s when the pipeline ran at ~50 tok/s: too long now).
    std::thread::sleep(Duration::from_millis(500));
    nodes[0].stop();
    eprintln!("killed the gateway at {:.1}s", t.elapsed().as_secs_f64());
    assert!(gen.join().is_err(), "the generation finished before the gateway was killed");
    // Bob's node closes the session once the job stops taking work and claims what Eve
    // acknowledged; the job settles and pays it, exactly.
    let mut found = None;
    wait_for("Bob's claim for the cut generation, settled", 120, &nodes[1..], || {
        found = bobs(&nodes[1])
            .into_iter()
            .find(|(j, c)| c["session"] != first && j["status"].get("settled").is_some());
        found.is_some()
    });
    let (job, claim) = found.unwrap();
    eprintln!("settled at {:.1}s: {claim}", t.elapsed().as_secs_f64());
    let positions = u128::from(claim["positions"].as_u64().unwrap());
    assert!(positions > 10, "a few steps were acknowledged before the kill: {claim}");
    assert!(positions < 150, "the generation (the prompt and 150 tokens) was cut: {claim}");
    assert_eq!(amount(&claim["paid"]), 20 * positions * PRICE, "{job}");
    let (accounts, issuance) = ledger(&nodes[1]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn three_workers_answer_like_infer_are_paid_exactly_and_missing_layers_are_refused() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Bob joins with `--layers auto` after the others and takes the missing 10..20. A fourth
    // validator serves nothing, so that the chain runs on without the 10..20 worker.
    let (mut nodes, api, _) = start_workers(dir.path(), &["0..10", "auto", "20..30", ""], &[]);
    eprintln!("workers up in {:.1}s", t.elapsed().as_secs_f64());
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    // What the DHT announces for the model: the three workers, their layers and load.
    let mut announced = Vec::new();
    wait_for("three workers in bitorch_workers", 60, &nodes, || {
        let w = nodes[0].rpc("bitorch_workers", json!([models[0]["id"]])).unwrap();
        announced = w.as_array().unwrap().clone();
        announced.len() == 3
    });
    let mut layers: Vec<(u64, u64)> = announced
        .iter()
        .map(|w| (w["layerStart"].as_u64().unwrap(), w["layerEnd"].as_u64().unwrap()))
        .collect();
    layers.sort();
    assert_eq!(layers, [(0, 10), (10, 20), (20, 30)], "{announced:?}");
    // Bob's `--layers auto` took the missing 10..20.
    let bob = nodes[1].peer_id();
    let bobs: Vec<_> = announced.iter().filter(|w| w["peerId"] == bob.as_str()).collect();
    assert_eq!(bobs.len(), 1, "{announced:?}");
    assert_eq!((&bobs[0]["layerStart"], &bobs[0]["layerEnd"]), (&json!(10), &json!(20)));
    for w in &announced {
        assert_eq!(w["capacity"], 16, "{w}");
        assert!(w["tokensPerSec"].as_u64().unwrap() >= 1, "{w}");
    }
    let eve = address("Eve");
    let ((before, issued_before), held_before) = snapshot(&nodes[0], &eve, &nodes);
    assert_issuance_is_the_sum(&before, issued_before);
    let mut usages = Vec::new();
    for prompt in PROMPTS {
        let want = infer(prompt, MAX_TOKENS);
        assert!(!want.is_empty());
        let t = Instant::now();
        let v = completion(api, &name, prompt, MAX_TOKENS, &nodes);
        let got = v["choices"][0]["message"]["content"].as_str().unwrap();
        eprintln!("{prompt:?} through 3 workers in {:.1}s: {got:?}", t.elapsed().as_secs_f64());
        assert_eq!(got, want, "prompt {prompt:?}: the pipeline and `bitorch infer` differ");
        usages.push(v["usage"].clone());
    }

    let paid_requests = counter(&nodes[0], "channelRequests");
    assert_eq!(paid_requests, PROMPTS.len() as u64, "{}", logs(&nodes));
    // Both requests were paid from one channel, the job opened ahead (no block waited for).
    assert_eq!(counter(&nodes[0], "jobsAheadUsed"), 1, "{}", logs(&nodes));
    assert_eq!(counter(&nodes[0], "jobsOpened"), 0, "{}", logs(&nodes));
    // Each worker claimed each of its sessions itself; once the channel is idle it is closed
    // and settles after its claim window: each claim paid its layers × positions × price.
    let mut served = Vec::new();
    wait_for("the claims of both requests", 90, &nodes, || {
        let all = jobs(&nodes[0]);
        let claims: usize = all.iter().map(|j| j["claims"].as_array().unwrap().len()).sum();
        served = all
            .iter()
            .filter(|j| !j["claims"].as_array().unwrap().is_empty())
            .map(|j| j["id"].as_u64().unwrap())
            .collect();
        claims == 3 * usages.len()
    });
    assert_eq!(served.len(), 1, "one channel paid for both requests");
    let mut earned: BTreeMap<String, u128> = BTreeMap::new();
    let mut claims_by: BTreeMap<String, u32> = BTreeMap::new();
    let mut positions: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    let mut paid_total = 0;
    for &id in &served {
        let job = ended(&nodes[0], id, "settled", &nodes);
        assert_eq!(job["client"], address("Eve"));
        let mut paid_job = 0;
        for c in job["claims"].as_array().unwrap() {
            let (start, end) = (c["layerStart"].as_u64().unwrap(), c["layerEnd"].as_u64().unwrap());
            let n = c["positions"].as_u64().unwrap();
            positions.entry((start, end)).or_default().push(n);
            let paid = u128::from(end - start) * u128::from(n) * PRICE;
            assert_eq!(amount(&c["paid"]), paid, "job {id}: {job}");
            let worker = c["worker"].as_str().unwrap().to_string();
            *earned.entry(worker.clone()).or_default() += paid;
            *claims_by.entry(worker).or_default() += 1;
            paid_job += paid;
        }
        let s = &job["status"]["settled"];
        assert_eq!(amount(&s["paid"]), paid_job);
        assert_eq!(amount(&s["refunded"]), amount(&job["escrow"]) - paid_job, "{job}");
        paid_total += paid_job;
    }
    // Every stage was acknowledged for every position of each request: the prompt and every
    // generated token but the last.
    let mut want: Vec<u64> = usages
        .iter()
        .map(|u| {
            u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap() - 1
        })
        .collect();
    want.sort();
    for (range, mut got) in positions.clone() {
        got.sort();
        assert_eq!(got, want, "layers {range:?}: {positions:?} {usages:?}");
    }
    assert_eq!(positions.keys().copied().collect::<Vec<_>>(), [(0, 10), (10, 20), (20, 30)]);
    assert_eq!(
        earned.keys().cloned().collect::<Vec<_>>(),
        {
            let mut w = vec![address("Alice"), address("Bob"), address("Charlie")];
            w.sort();
            w
        },
        "each worker claims with its validator key"
    );
    eprintln!("the channel settled at {:.1}s", t.elapsed().as_secs_f64());
    let ((after, issued_after), held_after) = snapshot(&nodes[0], &eve, &nodes);
    assert_issuance_is_the_sum(&after, issued_after);
    // A claim's fee: its extrinsic is about 270 bytes.
    let sample = bitorch_runtime::Call::Jobs(bitorch_runtime::jobs::Call::Claim {
        voucher: bitorch_runtime::jobs::Voucher {
            job: 0,
            session: [0; 16],
            worker: account_of(&pair_from_suri("//Bob").unwrap()),
            layers: (0, 10),
            positions: 1,
            trace: Default::default(),
        }
        .sign(&pair_from_suri("//Eve").unwrap(), &Default::default()),
    });
    let fee_range = (
        bitorch_runtime::compute_fee(&sample, 240, 0),
        bitorch_runtime::compute_fee(&sample, 320, 0),
    );
    let burned = issued_before - issued_after;
    let mut worker_fees = 0;
    for (who, (free, reserved)) in &after {
        let (free0, reserved0) = before[who];
        if *who == eve {
            continue;
        }
        assert_eq!(*reserved, reserved0, "{who}: stake changed");
        // Paid exactly its layers × positions × price, less the fees of its claims.
        let gain = earned.get(who).copied().unwrap_or(0);
        let fees = free0 + gain - free;
        let n = u128::from(claims_by.get(who).copied().unwrap_or(0));
        assert!(
            (n * fee_range.0..=n * fee_range.1).contains(&fees),
            "{who}: paid {gain} for {n} claims, but its balance moved by {}",
            *free as i128 - free0 as i128
        );
        worker_fees += fees;
    }
    // The client paid the workers, the fees of its transactions (all the burned fees but the
    // workers'), and the escrow it holds now.
    let (free0, reserved0) = before[&eve];
    let (free, reserved) = after[&eve];
    assert_eq!(reserved - held_after, reserved0 - held_before, "escrow left reserved");
    assert_eq!(
        free0 - free,
        paid_total + (burned - worker_fees) + held_after - held_before,
        "Eve paid more than work and fees"
    );

    // Without the 10..20 worker, a request fails with an error that names the missing layers;
    // a job used before the gateway knew is refunded in full. Stopped as an operator does, the
    // worker withdraws its announcement on the way out.
    let stopping = Instant::now();
    nodes[1].terminate();
    eprintln!("Bob stopped in {:.1}s", stopping.elapsed().as_secs_f64());
    assert!(nodes[1].log().contains("withdrew the worker from the DHT"), "{}", nodes[1].log());
    let req = chat(&name, PROMPTS[0], MAX_TOKENS);
    for attempt in 0..2 {
        // Requests that were paid from a channel.
        let jobs_used = |n: &Node| counter(n, "channelRequests");
        let used_before = jobs_used(&nodes[0]);
        let refused_before = counter(&nodes[0], "refusedNoRoute");
        let (status, body) =
            post(api, "/v1/chat/completions", &req, Duration::from_secs(300)).unwrap();
        eprintln!("without 10..20 (attempt {attempt}): {status} {body}");
        assert_eq!(status, 503, "{body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("layers 10..20"), "{message}");
        if attempt == 1 {
            // The failed worker is banned now: the gateway refuses before reserving anything.
            assert_eq!(jobs_used(&nodes[0]), used_before, "a channel was used with no route");
            assert_eq!(counter(&nodes[0], "refusedNoRoute"), refused_before + 1);
        }
    }
    // Every job but the served one and those still open is refunded in full once it ends.
    let ((end, issued_end), held_end) = snapshot(&nodes[0], &eve, &nodes);
    for job in jobs(&nodes[0]) {
        let id = job["id"].as_u64().unwrap();
        if !served.contains(&id) && job["status"].get("open").is_none() {
            let job = ended(&nodes[0], id, "refunded", &nodes);
            assert_eq!(job["claims"], json!([]), "{job}");
        }
    }
    assert_issuance_is_the_sum(&end, issued_end);
    assert_eq!(end[&eve].1 - held_end, before[&eve].1 - held_before, "escrow kept");
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}

/// Parses a `0x…` hash from the RPC.
fn hash(v: &Value) -> bitorch_primitives::H256 {
    let hex = v.as_str().unwrap().trim_start_matches("0x");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bitorch_primitives::H256::from_slice(&bytes)
}

fn answer(bytes: Vec<u8>) -> StageResponse {
    protocol::decode_response(&bytes, &protocol::Limits::default()).unwrap()
}

#[test]
fn a_full_worker_answers_busy_and_bad_stage_messages_harm_no_session() {
    let _turn = one_at_a_time();
    use bitorch_network::{Config, NodeKey, PeerId};
    const LONG: u32 = 150;
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Bob serves 10..20 with room for one session; Dave serves 10..20 too.
    let (nodes, api, _) = start_workers(
        dir.path(),
        &["0..10", "10..20", "20..30", "10..20"],
        &[&[], &["--max-sessions", "1"]],
    );
    eprintln!("workers up in {:.1}s", t.elapsed().as_secs_f64());
    let peers: Vec<PeerId> = nodes.iter().map(|n| n.peer_id().parse().unwrap()).collect();
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    let model_id = hash(&models[0]["id"]);
    let hidden = models[0]["hyper"]["hiddenSize"].as_u64().unwrap() as u32;
    assert_eq!(complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes), infer(PROMPTS[0], MAX_TOKENS));

    // A peer of our own on loopback that speaks /bitorch/stage/1 to the workers.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let net = rt.block_on(async {
        let mut config = Config::new(NodeKey::Ephemeral);
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.boot_nodes = nodes
            .iter()
            .zip(&peers)
            .map(|(n, p)| format!("/ip4/127.0.0.1/tcp/{}/p2p/{p}", n.p2p).parse().unwrap())
            .collect();
        config.max_stage_request_bytes = 64 << 20;
        let service = bitorch_network::spawn(config, cancel.clone()).unwrap();
        let (net, mut events) = (service.handle, service.events);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        net
    });
    let ask = |peer: usize, bytes: Vec<u8>| rt.block_on(net.stage_request(peers[peer], bytes));
    // Sessions for a job open on chain: the one node 0's gateway keeps opened ahead, freshly
    // replaced (it is replaced at half its life, 15 s here, and Bob's node then closes the
    // sessions of the old one): what follows on Bob's session takes well under that.
    let replaced_before = counter(&nodes[0], "jobsAheadReplaced");
    let mut ahead = None;
    wait_for("a fresh job opened ahead", 60, &nodes, || {
        let s = stats(&nodes[0]);
        ahead = s["aheadJob"].as_u64();
        ahead.is_some() && s["jobsAheadReplaced"].as_u64() > Some(replaced_before)
    });
    let ahead = ahead.unwrap();
    // Signed by the job's client (//Eve, the API account) for Bob, or by `signer`.
    let genesis = hash(&nodes[0].rpc("chain_getBlockHash", json!([0])).unwrap());
    let bob = account_of(&pair_from_suri("//Bob").unwrap());
    let signed_open = |session: [u8; 16], signer: Option<&str>| {
        let auth = SessionAuth {
            session,
            model: model_id,
            layers: (10, 20),
            job: ahead,
            worker: bob.clone(),
        };
        let auth = signer.map(|s| auth.sign(&pair_from_suri(s).unwrap(), &genesis));
        protocol::encode(&StageRequest::Open {
            session,
            model: model_id,
            layers: (10, 20),
            job: Some(ahead),
            auth,
        })
    };
    let open = |session: [u8; 16]| signed_open(session, Some("//Eve"));

    // Fill Bob's one session; the next one is answered "busy".
    let deadline = Instant::now() + Duration::from_secs(20);
    let opened = loop {
        match ask(1, open([7; 16])) {
            Ok(bytes) => break answer(bytes),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot reach Bob: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(matches!(opened, StageResponse::Opened(_)), "{opened:?}");
    assert_eq!(answer(ask(1, open([8; 16])).unwrap()), StageResponse::Busy);
    // Naming Eve's job without her signature, or with another's, spends nothing of hers.
    for signer in [None, Some("//Ferdie")] {
        let refused = answer(ask(1, signed_open([4; 16], signer)).unwrap());
        assert_eq!(refused, StageResponse::Error(StageError::Unauthorized { job: ahead }));
    }
    // A stranger's session that no job pays for is refused (this worker has no --allow-unpaid).
    let unpaid = StageRequest::Open {
        session: [5; 16],
        model: model_id,
        layers: (20, 30),
        job: None,
        auth: None,
    };
    let refused = answer(ask(2, protocol::encode(&unpaid)).unwrap());
    assert_eq!(refused, StageResponse::Error(StageError::JobRequired));
    // A session for a job that is not on chain is refused: its claim would not be paid.
    let unpaid = StageRequest::Open {
        session: [6; 16],
        model: model_id,
        layers: (20, 30),
        job: Some(999_999),
        auth: None,
    };
    let refused = answer(ask(2, protocol::encode(&unpaid)).unwrap());
    assert_eq!(refused, StageResponse::Error(StageError::JobNotOpen { job: 999_999 }));

    // The gateway routes around the full worker: Dave runs 10..20, the answer is the same.
    let dave_before = sessions_on(&nodes[0], &peers[3].to_string());
    let got = complete(api, &name, PROMPTS[1], MAX_TOKENS, &nodes);
    assert_eq!(got, infer(PROMPTS[1], MAX_TOKENS));
    assert!(sessions_on(&nodes[0], &peers[3].to_string()) > dave_before, "Dave was not used");

    // Bob's session outlived the busy answers and still computes.
    let step = StageRequest::Forward {
        session: [7; 16],
        pos: 0,
        input: Activation::Hidden(Floats::new(1, hidden, &vec![0.1; hidden as usize]).unwrap()),
        voucher: None,
    };
    let out = answer(ask(1, protocol::encode(&step)).unwrap());
    assert!(
        matches!(&out, StageResponse::Output { output: Activation::Hidden(f), .. } if f.rows() == 1 && f.cols() == hidden),
        "{out:?}"
    );
    // The next step needs Eve's voucher for that position: none, no compute.
    let next = StageRequest::Forward {
        session: [7; 16],
        pos: 1,
        input: Activation::Hidden(Floats::new(1, hidden, &vec![0.2; hidden as usize]).unwrap()),
        voucher: None,
    };
    let refused = answer(ask(1, protocol::encode(&next)).unwrap());
    assert_eq!(refused, StageResponse::Error(StageError::VoucherRequired { positions: 1 }));
    let close = StageRequest::Close { session: [7; 16], voucher: None };
    let closed = answer(ask(1, protocol::encode(&close)).unwrap());
    assert!(matches!(closed, StageResponse::Closed(_)), "{closed:?}");

    // Bad messages to Charlie (the only 20..30 worker) in the middle of a generation.
    let prompt = "Write a short story about a robot who learns to paint.";
    let want = infer(prompt, LONG);
    let charlie_before = sessions_on(&nodes[0], &peers[2].to_string());
    let failovers = |n: &Node| counter(n, "failovers");
    let failovers_before = failovers(&nodes[0]);
    let gen = spawn_completion(api, &name, prompt, LONG);
    wait_for("the generation to reach Charlie", 60, &nodes, || {
        sessions_on(&nodes[0], &peers[2].to_string()) > charlie_before
    });
    std::thread::sleep(Duration::from_millis(300));
    // Undecodable bytes, and an activation past the positions limit: typed errors.
    let garbage = answer(ask(2, vec![protocol::VERSION, 0xff, 0xff, 0xff]).unwrap());
    assert!(matches!(garbage, StageResponse::Error(StageError::Malformed(_))), "{garbage:?}");
    let rows = 600;
    let wide = Floats::new(rows, hidden, &vec![0.5; (rows * hidden) as usize]).unwrap();
    let too_many = protocol::encode(&StageRequest::Forward {
        session: [9; 16],
        pos: 0,
        input: Activation::Hidden(wide),
        voucher: None,
    });
    let refused = answer(ask(2, too_many).unwrap());
    assert!(
        matches!(
            refused,
            StageResponse::Error(StageError::Malformed(DecodeError::TooManyPositions {
                got: 600,
                ..
            }))
        ),
        "{refused:?}"
    );
    // A message past the network's size limit is refused before it reaches the worker.
    let oversized = ask(2, vec![0; 9 << 20]);
    assert!(oversized.is_err(), "a 9 MiB stage message was accepted");
    let got = gen.join().unwrap_or_else(|_| panic!("the generation failed:\n{}", logs(&nodes)));
    assert_eq!(got, want, "the generation changed after bad messages to its worker");
    assert_eq!(failovers(&nodes[0]), failovers_before, "a stage failed");

    cancel.cancel();

    // An idle gateway replaces its job opened ahead at half its life (here 30 blocks of 0.5 s),
    // and the next request uses the new one.
    // A replacement from now on (an earlier one's successor may be near its own half life by
    // now), and the new job opened after it (job ids only grow).
    let replaced_before = counter(&nodes[0], "jobsAheadReplaced");
    wait_for("the job opened ahead to be replaced", 60, &nodes, || {
        let s = stats(&nodes[0]);
        let (replaced, now) = (s["lastReplacedJob"].as_u64(), s["aheadJob"].as_u64());
        s["jobsAheadReplaced"].as_u64() > Some(replaced_before)
            && matches!((replaced, now), (Some(r), Some(a)) if a > r)
    });
    let used = counter(&nodes[0], "jobsAheadUsed");
    assert_eq!(complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes), infer(PROMPTS[0], MAX_TOKENS));
    let after = stats(&nodes[0]);
    assert_eq!(after["jobsAheadUsed"], used + 1, "{after}\n{}", logs(&nodes));
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}

/// Every claim audited, with 20 blocks (10 s) to fetch, re-execute and commit.
fn audit_everything(spec: &mut Value) {
    spec["genesis"]["jobs"]["auditPercent"] = json!(100);
    spec["genesis"]["jobs"]["auditWindow"] = json!(20);
}

/// Four validators on loopback, every claim audited (`patch` may change the spec more): Alice,
/// Charlie and Dave serve 0..10 honestly, Bob serves 10..30 with `bob` more arguments (Dave
/// with `dave`); every validator serving the model audits. Returns the nodes, node 0's API
/// port, the model's name and the boot address.
fn audited_net(
    dir: &Path,
    bob: &[&str],
    dave: &[&str],
    patch: impl FnOnce(&mut Value),
) -> (Vec<Node>, u16, String, String) {
    let (nodes, api, boot) = start_workers_with(
        dir,
        &["0..10", "10..30", "0..10", "0..10"],
        &[&[], bob, &[], dave],
        |spec| {
            audit_everything(spec);
            patch(spec);
        },
    );
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    (nodes, api, name, boot)
}

/// Waits for a settled job with Bob's claim and another; returns it, Bob's claim, the other.
fn settled_with_bob(nodes: &[Node]) -> (Value, Value, Value) {
    let bob = address("Bob");
    let mut job = Value::Null;
    wait_for("both claims audited and the job settled", 300, nodes, || {
        job = jobs(&nodes[0])
            .into_iter()
            .find(|j| j["claims"].as_array().unwrap().iter().any(|c| c["worker"] == bob.as_str()))
            .unwrap_or(Value::Null);
        job["status"].get("settled").is_some() && job["claims"].as_array().unwrap().len() >= 2
    });
    let claims = job["claims"].as_array().unwrap();
    let bobs = claims.iter().find(|c| c["worker"] == bob.as_str()).unwrap().clone();
    let other = claims.iter().find(|c| c["worker"] != bob.as_str()).unwrap().clone();
    (job, bobs, other)
}

/// What `who` found in `audit` ("passed", "failed", "noOpening"), if it revealed.
fn finding(audit: &Value, who: &str) -> Option<String> {
    let f = audit["findings"].as_array().unwrap().iter().find(|f| f["auditor"] == who);
    f.map(|f| f["finding"].as_object().unwrap().keys().next().unwrap().clone())
}

/// Bob's claim was audited by the three others, each of `auditors` found `found`, and the
/// outcome slashed him and voided it; the honest claim passed and was paid exactly.
fn assert_caught(job: &Value, bobs: &Value, honest: &Value, auditors: &[&str], found: &str) {
    let audit = &bobs["audit"];
    let assigned = audit["auditors"].as_array().unwrap();
    assert_eq!(assigned.len(), 3, "{job}");
    assert!(assigned.iter().all(|a| a["auditor"] != address("Bob").as_str()), "{job}");
    for who in auditors {
        assert_eq!(finding(audit, &address(who)).as_deref(), Some(found), "{who}: {job}");
    }
    assert!(amount(&audit["outcome"]["failed"]["slashed"]) > 0, "{job}");
    assert_eq!(amount(&bobs["paid"]), 0, "{job}");
    assert_eq!(honest["audit"]["outcome"], "passed", "{job}");
    let positions = u128::from(honest["positions"].as_u64().unwrap());
    assert_eq!(amount(&honest["paid"]), 10 * positions * PRICE, "{job}");
}

#[test]
fn a_worker_returning_random_activations_is_caught_by_the_chains_audit_slashed_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Bob returns (and commits to) random hidden states; Dave's auditor reveals the opposite
    // of what it finds ("passed" for the cheater, "failed" for honest work).
    let (nodes, api, name, _) = audited_net(
        dir.path(),
        &["--unsafe-cheat", "random-outputs"],
        &["--unsafe-auditor", "lie"],
        |_| {},
    );
    let bob = address("Bob");
    let stake =
        |who: &str| amount(&nodes[0].rpc("bitorch_account", json!([who])).unwrap()["reserved"]);
    let bob_stake = stake(&bob);
    // The gateway cannot tell Bob's last-stage outputs from honest ones: the answer comes.
    let answer = completion(api, &name, PROMPTS[0], 8, &nodes);
    eprintln!(
        "answer with Bob's random activations: {}",
        answer["choices"][0]["message"]["content"]
    );
    let (job, bobs, honest) = settled_with_bob(&nodes);
    eprintln!("settled at {:.1}s: {job}", t.elapsed().as_secs_f64());
    // Alice and Charlie re-executed and found his outputs wrong; the liar's "passed" changed
    // nothing: Bob is slashed (his stake lost it) and unpaid.
    assert_caught(&job, &bobs, &honest, &["Alice", "Charlie"], "failed");
    let dave = address("Dave");
    assert_eq!(finding(&bobs["audit"], &dave).as_deref(), Some("passed"), "the liar: {job}");
    let slashed = amount(&bobs["audit"]["outcome"]["failed"]["slashed"]);
    assert_eq!(stake(&bob), bob_stake - slashed, "Bob's stake lost the slash");
    // When Dave audited the honest claim, he said it failed: it passed all the same.
    if honest["worker"] != dave.as_str() {
        assert_eq!(finding(&honest["audit"], &dave).as_deref(), Some("failed"), "{job}");
    }
    // Each audit fee was shared by the auditors on the outcome's side, and by nobody else (the
    // liar got nothing): the job paid the honest claim and those shares.
    let shares = |c: &Value, side: &str| {
        let findings = c["audit"]["findings"].as_array().unwrap();
        let winners = findings.iter().filter(|f| f["finding"].get(side).is_some()).count();
        amount(&c["auditFee"]) / winners as u128 * winners as u128
    };
    let paid = amount(&job["status"]["settled"]["paid"]);
    let want = amount(&honest["paid"]) + shares(&bobs, "failed") + shares(&honest, "passed");
    assert_eq!(paid, want, "{job}");
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
    eprintln!("done in {:.1}s", t.elapsed().as_secs_f64());
}

#[test]
fn a_worker_that_refuses_to_open_its_trace_is_slashed_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Bob computes 10..30 honestly but opens nothing to the auditors.
    let (nodes, api, name, _) =
        audited_net(dir.path(), &["--unsafe-cheat", "refuse-openings"], &[], |_| {});
    // Honest outputs: the answer is what `bitorch infer` gives.
    assert_eq!(complete(api, &name, PROMPTS[1], MAX_TOKENS, &nodes), infer(PROMPTS[1], MAX_TOKENS));
    let (job, bobs, honest) = settled_with_bob(&nodes);
    assert_caught(&job, &bobs, &honest, &["Alice", "Charlie", "Dave"], "noOpening");
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn a_worker_running_other_weights_is_caught_slashed_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Bob runs 10..30 with candle's quantized kernels (activations rounded to 8 bits): cheaper,
    // and not the computation the job pays for.
    let (nodes, api, name, _) =
        audited_net(dir.path(), &["--unsafe-cheat", "other-weights"], &[], |_| {});
    completion(api, &name, PROMPTS[0], MAX_TOKENS, &nodes);
    let (job, bobs, honest) = settled_with_bob(&nodes);
    assert_caught(&job, &bobs, &honest, &["Alice", "Charlie", "Dave"], "failed");
}

#[test]
fn a_worker_claiming_more_than_was_acknowledged_is_refused_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Bob computes 10..30 honestly but claims 16 positions more than Eve's voucher says.
    let (nodes, api, _) = start_workers(
        dir.path(),
        &["0..10", "10..30", "0..10", "0..10"],
        &[&[], &["--unsafe-cheat", "overclaim"]],
    );
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    let bob = address("Bob");
    let free = |who: &str| amount(&nodes[0].rpc("bitorch_account", json!([who])).unwrap()["free"]);
    let bob_before = free(&bob);
    assert_eq!(complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes), infer(PROMPTS[0], MAX_TOKENS));
    // The request's job settles with the honest 0..10 claim paid exactly and none of Bob's:
    // the chain refused his (the voucher's signature does not cover what he claimed).
    let mut job = Value::Null;
    wait_for("the job settled with the honest claim", 180, &nodes, || {
        job = jobs(&nodes[0])
            .into_iter()
            .find(|j| !j["claims"].as_array().unwrap().is_empty())
            .unwrap_or(Value::Null);
        job["status"].get("settled").is_some()
    });
    let claims = job["claims"].as_array().unwrap();
    assert!(claims.iter().all(|c| c["worker"] != bob.as_str()), "Bob's claim got in: {job}");
    let honest = &claims[0];
    let positions = u128::from(honest["positions"].as_u64().unwrap());
    assert_eq!(amount(&honest["paid"]), 10 * positions * PRICE, "{job}");
    assert_eq!(amount(&job["status"]["settled"]["paid"]), 10 * positions * PRICE, "{job}");
    // Bob neither gained nor paid anything (the pool refused the claim before any fee), and
    // he did try: his node reports the refusal.
    assert_eq!(free(&bob), bob_before);
    assert!(nodes[1].log().contains("claims failed"), "Bob never claimed:\n{}", logs(&nodes));
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn a_client_that_withholds_its_acknowledgements_gets_one_step_and_pays_nothing() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Node 0's gateway (Eve's account) opens sessions but never signs a voucher.
    let (nodes, api, _) = start_workers(
        dir.path(),
        &["0..10", "10..30", "0..10"],
        &[&["--unsafe-client", "withhold-vouchers"]],
    );
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    wait_for("the three workers announced", 60, &nodes, || {
        let w = nodes[0].rpc("bitorch_workers", json!([models[0]["id"]])).unwrap();
        w.as_array().unwrap().len() == 3
    });
    let mut ahead = None;
    wait_for("a job opened ahead", 60, &nodes, || {
        ahead = stats(&nodes[0])["aheadJob"].as_u64();
        ahead.is_some()
    });
    let job = ahead.unwrap();
    // Every worker answers the prompt (a position 0 needs no voucher), then refuses the next
    // step without one: the request fails, typed, after trying every worker.
    let req = chat(&name, PROMPTS[0], MAX_TOKENS);
    let (status, body) = post(api, "/v1/chat/completions", &req, Duration::from_secs(300)).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(counter(&nodes[0], "failovers") >= 1, "{}", stats(&nodes[0]));
    // The job that paid for it ends refunded whole: nobody holds a voucher to claim with.
    let ended = ended(&nodes[0], job, "refunded", &nodes);
    assert_eq!(ended["claims"], json!([]), "{ended}");
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn a_worker_skipping_half_its_layers_is_caught_slashed_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Bob announces and claims 10..30 but runs every other layer: half the work.
    let (nodes, api, name, _) =
        audited_net(dir.path(), &["--unsafe-cheat", "skip-layers"], &[], |_| {});
    completion(api, &name, PROMPTS[0], MAX_TOKENS, &nodes);
    let (job, bobs, honest) = settled_with_bob(&nodes);
    assert_caught(&job, &bobs, &honest, &["Alice", "Charlie", "Dave"], "failed");
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn a_worker_committing_to_other_outputs_than_it_answered_is_caught_slashed_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Bob computes 10..30 honestly (the answer is `bitorch infer`'s: his logits are those of
    // his real outputs) but the hidden states he returns and commits to, and would open, are
    // other outputs (zeros) than his layers computed.
    let (nodes, api, name, _) =
        audited_net(dir.path(), &["--unsafe-cheat", "other-trace"], &[], |_| {});
    assert_eq!(complete(api, &name, PROMPTS[1], MAX_TOKENS, &nodes), infer(PROMPTS[1], MAX_TOKENS));
    let (job, bobs, honest) = settled_with_bob(&nodes);
    assert_caught(&job, &bobs, &honest, &["Alice", "Charlie", "Dave"], "failed");
}

#[test]
fn a_last_stage_returning_other_logits_is_caught_slashed_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Bob computes 10..30 honestly but returns, and commits to, other logits than his head
    // gives (the sixth best token's raised above the best's): the gateway samples from them,
    // so the answer is not `bitorch infer`'s, and the voucher acknowledges them.
    let (nodes, api, name, _) =
        audited_net(dir.path(), &["--unsafe-cheat", "other-logits"], &[], |_| {});
    let answer = complete(api, &name, PROMPTS[1], MAX_TOKENS, &nodes);
    assert_ne!(answer, infer(PROMPTS[1], MAX_TOKENS));
    eprintln!("answer from Bob's other logits: {answer:?}");
    // The auditors re-execute his layers (his hidden states pass), apply the head to his
    // committed outputs and find the committed logits are not its top: the audit of a last
    // stage opens the whole claim, so every position that returned logits.
    let (job, bobs, honest) = settled_with_bob(&nodes);
    let positions = bobs["positions"].as_u64().unwrap();
    assert_eq!(bobs["audit"]["lastPosition"].as_u64(), Some(positions - 1), "{job}");
    assert_caught(&job, &bobs, &honest, &["Alice", "Charlie", "Dave"], "failed");
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn a_lazy_auditor_is_found_out_its_finding_void_and_unpaid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Everyone honest, except that Dave's auditor says "passed" without re-executing: it checks
    // the opening against the voucher, copies the worker's outputs and guesses the probe.
    let (nodes, api, name, _) = audited_net(dir.path(), &[], &["--unsafe-auditor", "lazy"], |_| {});
    assert_eq!(complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes), infer(PROMPTS[0], MAX_TOKENS));
    let (job, bobs, honest) = settled_with_bob(&nodes);
    let dave = address("Dave");
    for claim in [&bobs, &honest].into_iter().filter(|c| c["worker"] != dave.as_str()) {
        let audit = &claim["audit"];
        assert_eq!(audit["outcome"], "passed", "{job}");
        // Dave's verdict was right by luck, but his probe matched nobody's: it did not count.
        assert_eq!(finding(audit, &dave).as_deref(), Some("passed"), "{job}");
        assert_eq!(audit["unconfirmed"], json!([dave]), "{job}");
        // The two who re-executed reported the same probe (and so confirmed each other).
        let probes: Vec<&Value> = audit["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["auditor"] != dave.as_str())
            .map(|f| &f["finding"]["passed"]["probe"])
            .collect();
        assert_eq!(probes.len(), 2, "{job}");
        let real =
            |p: &&Value| p.as_array().is_some_and(|a| a.len() == 8 && a.iter().any(|v| v != 0));
        assert!(probes.iter().all(real), "{job}");
        eprintln!("findings: {}", audit["findings"]);
    }
    // Each claim paid exactly, and each audit fee shared by the two who re-executed only.
    let positions = |c: &Value| u128::from(c["positions"].as_u64().unwrap());
    assert_eq!(amount(&bobs["paid"]), 20 * positions(&bobs) * PRICE, "{job}");
    assert_eq!(amount(&honest["paid"]), 10 * positions(&honest) * PRICE, "{job}");
    let shares = |c: &Value| {
        let findings = c["audit"]["findings"].as_array().unwrap();
        let counted = findings.iter().filter(|f| f["auditor"] != dave.as_str()).count() as u128;
        amount(&c["auditFee"]) / counted * counted
    };
    let paid = amount(&job["status"]["settled"]["paid"]);
    let want = amount(&bobs["paid"]) + amount(&honest["paid"]) + shares(&bobs) + shares(&honest);
    assert_eq!(paid, want, "{job}");
    let (accounts, issuance) = ledger(&nodes[0]);
    assert_issuance_is_the_sum(&accounts, issuance);
}

#[test]
fn an_honest_worker_that_restarts_between_its_claim_and_the_audit_passes_and_is_paid() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Commit windows of 60 blocks (30 s): room for a restart.
    let (mut nodes, api, name, boot) = audited_net(dir.path(), &[], &[], |spec| {
        spec["genesis"]["jobs"]["auditWindow"] = json!(60);
    });
    // The reference first: `bitorch infer` takes seconds, and run after the request it let
    // Bob's claim land and be audited before Bob was stopped (the auditors had his opening).
    let want = infer(PROMPTS[0], MAX_TOKENS);
    assert_eq!(complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes), want);
    let bob = address("Bob");
    wait_for("Bob's claim on chain", 60, &nodes, || {
        jobs(&nodes[0])
            .iter()
            .any(|j| j["claims"].as_array().unwrap().iter().any(|c| c["worker"] == bob.as_str()))
    });
    // Bob's node dies the moment its claim is on chain, before any auditor could open it, and
    // comes back: its trace is on disk.
    nodes[1].stop();
    eprintln!("Bob stopped at {:.1}s", t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    nodes[1].start(&dir.path().join("spec.json"), &boot);
    let (job, bobs, _) = settled_with_bob(&nodes);
    eprintln!("settled at {:.1}s", t.elapsed().as_secs_f64());
    // The scenario happened: an auditor asked while Bob was down, and asked again.
    assert!(
        nodes.iter().any(|n| n.log().contains("no opening yet; asking again")),
        "no auditor found Bob down:\n{}",
        logs(&nodes)
    );
    assert_eq!(bobs["audit"]["outcome"], "passed", "{job}");
    let findings = bobs["audit"]["findings"].as_array().unwrap();
    assert!(findings.iter().all(|f| f["finding"].get("passed").is_some()), "{job}");
    let positions = u128::from(bobs["positions"].as_u64().unwrap());
    assert_eq!(amount(&bobs["paid"]), 20 * positions * PRICE, "{job}");
}

/// A job's price per layer-token, in base units.
fn job_price(node: &Node, id: u64) -> u128 {
    amount(&node.rpc("bitorch_job", json!([id])).unwrap()["pricePerLayerToken"])
}

#[test]
fn requests_go_to_the_cheapest_route_within_the_price_and_a_cap_below_every_price_is_refused() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Three whole-model workers at 0.0003, 0.0001 and 0.0002 BTR per layer-token; a fourth
    // validator serves nothing, so that the chain runs on without one of them.
    let (mut nodes, api, _) = start_workers(
        dir.path(),
        &["0..30", "0..30", "0..30", ""],
        &[&["--price", "0.0003"], &["--price", "0.0001"], &["--price", "0.0002"]],
    );
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_id()).collect();
    let models = nodes[0].rpc("bitorch_models", json!([])).unwrap();
    let name = models[0]["name"].as_str().unwrap().to_string();
    // bitorch_workers shows each worker's price.
    let prices = |nodes: &[Node]| -> BTreeMap<String, u128> {
        let w = nodes[0].rpc("bitorch_workers", json!([models[0]["id"]])).unwrap();
        w.as_array()
            .unwrap()
            .iter()
            .map(|w| (w["peerId"].as_str().unwrap().into(), amount(&w["price"])))
            .collect()
    };
    wait_for("the three workers in bitorch_workers", 60, &nodes, || prices(&nodes).len() == 3);
    let announced = prices(&nodes);
    assert_eq!(announced[&peers[0]], 300_000_000, "{announced:?}");
    assert_eq!(announced[&peers[1]], 100_000_000, "{announced:?}");
    assert_eq!(announced[&peers[2]], 200_000_000, "{announced:?}");

    // The gateway looks workers up again once its last lookup is 3 s old: past that, it sees
    // what bitorch_workers saw.
    std::thread::sleep(Duration::from_secs(4));
    // The cheapest worker serves, and the job pays its price.
    let want = infer(PROMPTS[0], MAX_TOKENS);
    assert_eq!(complete(api, &name, PROMPTS[0], MAX_TOKENS, &nodes), want);
    let used: Vec<u64> = (0..3).map(|i| sessions_on(&nodes[0], &peers[i])).collect();
    assert!(used[1] >= 1 && used[2] == 0, "sessions by worker: {used:?}\n{}", logs(&nodes));
    let paying = jobs(&nodes[0])
        .into_iter()
        .filter(|j| j["status"].get("open").is_some() && j["client"] == address("Eve"))
        .map(|j| job_price(&nodes[0], j["id"].as_u64().unwrap()))
        .collect::<Vec<_>>();
    assert!(paying.contains(&100_000_000), "open jobs' prices: {paying:?}");

    // A cap below every price: 402 naming the cheapest, and nothing escrowed.
    let eve = address("Eve");
    let capped = |cap: &str| {
        let mut req = chat(&name, PROMPTS[0], MAX_TOKENS);
        req["max_price"] = json!(cap);
        post(api, "/v1/chat/completions", &req, Duration::from_secs(120)).unwrap()
    };
    let (jobs_before, eve_before) =
        (next_job_id(&nodes[0]), nodes[0].rpc("bitorch_account", json!([eve])).unwrap());
    let (status, body) = capped("0.00005");
    assert_eq!(status, 402, "{body}");
    assert!(body.contains("the cheapest route costs 0.0001 BTR"), "{body}");
    assert_eq!(next_job_id(&nodes[0]), jobs_before, "a refused request opened a job");
    assert_eq!(nodes[0].rpc("bitorch_account", json!([eve])).unwrap(), eve_before);

    // The cheapest worker leaves: within a cap of 0.00025 the next cheapest (0.0002) serves;
    // a cap of 0.00015 is refused naming 0.0002.
    let opened_before = next_job_id(&nodes[0]);
    nodes[1].terminate();
    wait_for("the cheap worker's withdrawal", 60, &nodes, || {
        !prices(&nodes).contains_key(&peers[1])
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = capped("0.00015");
        if status == 402 {
            assert!(body.contains("the cheapest route costs 0.0002 BTR"), "{body}");
            break;
        }
        // Until the gateway's cached view of the workers expires, the departed worker may
        // still be tried (and fail over to nobody within the price).
        assert!(Instant::now() < deadline, "still not refused: {status} {body}\n{}", logs(&nodes));
        std::thread::sleep(Duration::from_secs(1));
    }
    let before = sessions_on(&nodes[0], &peers[2]);
    let (status, body) = capped("0.00025");
    assert_eq!(status, 200, "{body}\n{}", logs(&nodes));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert!(sessions_on(&nodes[0], &peers[2]) > before, "the 0.0002 worker did not serve");
    // The job the request ran in (the gateway's channel: the job opened ahead, which may date
    // from before the cheap worker left if it was opened while only the 0.0002 worker was
    // found, or one opened for it) is at 0.0002, and so is every job opened since.
    let channel = stats(&nodes[0])["channelJob"].as_u64().expect("a channel job");
    assert_eq!(job_price(&nodes[0], channel), 200_000_000, "the channel's job {channel}");
    let new_prices: Vec<u128> =
        (opened_before..next_job_id(&nodes[0])).map(|id| job_price(&nodes[0], id)).collect();
    assert!(new_prices.iter().all(|&p| p <= 250_000_000), "jobs opened since: {new_prices:?}");
}
