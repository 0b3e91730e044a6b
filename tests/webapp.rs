//! The web app the node serves at `/`, in a real browser: Debian's Chromium driven by
//! `playwright-core` (`tests/web/app.mjs`) against a dev node serving the real model. Chat
//! (Paris streams in, stop, reload, untrusted output shown as text, keyboard use and labels),
//! network, jobs and wallet pages; screenshots under the target folder
//! (`$CARGO_TARGET_DIR/tmp/web-screenshots`). CI installs the browser and `playwright-core`
//! (`scripts/web-test-deps.sh`); elsewhere the test says what is missing and skips.

mod common;

use common::dev::DevNode;
use common::free_port;
use common::model::model;
use common::net::{quiet_logs, testnet, Node};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Dev accounts, funded at genesis: Eve's balance is looked up, Dave signs in the browser and
/// sends to Ferdie.
const EVE: &str = "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw";
const DAVE: &str = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy";
const FERDIE: &str = "5CiPPseXPECbkjWCa6MnjNokrgYjMqmKndv2rSnekmSK2DjL";
const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const UNIT: u128 = 1_000_000_000_000;

/// A chat completion through the API at `port` with these extra headers: (status, body).
fn post_chat(port: u16, headers: &str) -> (u16, String) {
    use std::io::Read;
    let body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1", "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
}

fn free(node: &DevNode, who: &str) -> u128 {
    node.rpc("bitorch_account", json!([who]))["free"].as_str().unwrap().parse().unwrap()
}

/// The browser and playwright-core's entry point, or why they cannot be had.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(
        std::env::var("BITORCH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let dir = std::env::var("BITORCH_PLAYWRIGHT_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/bitorch/web-test")
    });
    let playwright = dir.join("node_modules/playwright-core/index.mjs");
    if !chromium.exists() {
        return Err(format!("no browser at {} (BITORCH_CHROMIUM)", chromium.display()));
    }
    if !playwright.exists() {
        return Err(format!(
            "no playwright-core at {} (BITORCH_PLAYWRIGHT_DIR)",
            playwright.display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("no node (Node.js) on the PATH".into());
    }
    Ok((chromium, playwright))
}

/// The browser, or `None` (the test skips, saying why) where it is missing outside CI.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    match browser() {
        Ok(b) => Some(b),
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {why}; run scripts/web-test-deps.sh to install them");
            None
        }
        Err(why) => panic!("{why}: CI must run the browser test (scripts/web-test-deps.sh)"),
    }
}

/// Where the screenshots go (kept after the run, under the target folder).
fn screenshots() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    out
}

/// `node tests/web/<script>` against the API at `api`, stdin and stdout piped.
fn script(name: &str, api: u16, chromium: &Path, playwright: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    // The checkout the test runs in (a shared target directory reuses binaries across them).
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    cmd.args(["600", "node", &format!("{dir}/../../tests/web/{name}")])
        .env("BASE", format!("http://127.0.0.1:{api}"))
        .env("CHROMIUM", chromium)
        .env("PLAYWRIGHT", playwright)
        .env("OUT", screenshots())
        .env("ADDRESS", EVE)
        .env("SECRET", "//Dave")
        .env("SIGNER", DAVE)
        .env("RECIPIENT", FERDIE);
    cmd
}

#[test]
fn the_web_app_chats_shows_the_network_jobs_and_balances_in_a_browser() {
    let Some((chromium, playwright)) = browser_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let args: Vec<String> =
        ["--block-time", "500", "--api-port", &api.to_string(), "--serve-model"]
            .iter()
            .map(|s| s.to_string())
            .chain([model().display().to_string()])
            .collect();
    let node = DevNode::start_in(dir.path(), &args, Duration::from_secs(300));
    let (dave, ferdie) = (free(&node, DAVE), free(&node, FERDIE));
    let run = script("app.mjs", api, &chromium, &playwright).output().expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser script failed:\n{stderr}\n{stdout}\nnode log:\n{}",
        node.log_text()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!("{}", serde_json::to_string_pretty(&seen).unwrap());
    assert!(seen["answer"].as_str().unwrap().contains("Paris"), "{seen}");
    assert_eq!(seen["validators"], 1, "{seen}");
    assert!(seen["jobs"].as_u64().unwrap() >= 1, "{seen}");
    assert!(seen["pageBytes"].as_u64().unwrap() < 300_000, "{seen}");
    // The stop button closed the stream, and the node cancelled that generation.
    let stats = node.rpc("bitorch_gatewayStats", json!([]));
    assert!(stats["cancelled"].as_u64().unwrap() >= 1, "no cancelled generation: {stats}");
    // The transfer signed in the browser moved exactly 1.5 BTR, and Dave paid its fee (and the
    // allowance's).
    assert_eq!(free(&node, FERDIE), ferdie + 3 * UNIT / 2);
    assert!(free(&node, DAVE) < dave - 3 * UNIT / 2, "Dave paid no fee");
    // The gateway the key names: the dev node's API account, //Alice.
    let allowance = node.rpc("bitorch_allowance", json!([DAVE, ALICE]));
    assert_eq!(allowance["remaining"], (50 * UNIT).to_string(), "{allowance}");
    // The API key made in the browser pays a request from Dave's allowance; the same key with
    // one byte of its signature changed pays nothing.
    let token = seen["token"].as_str().unwrap();
    let jobs_before = node.rpc("bitorch_jobsOf", json!([DAVE])).as_array().unwrap().len();
    let (status, body) = post_chat(api, &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Paris"), "{body}");
    let jobs = node.rpc("bitorch_jobsOf", json!([DAVE]));
    assert_eq!(jobs.as_array().unwrap().len(), jobs_before + 1, "{jobs}");
    let mut forged = token.to_string();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    let (status, body) = post_chat(api, &format!("Authorization: Bearer {forged}\r\n"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(node.rpc("bitorch_jobsOf", json!([DAVE])), jobs, "a forged key opened a job");
    for page in ["chat", "chat-untrusted-output", "network", "jobs", "wallet"] {
        let shot = screenshots().join(format!("{page}.png"));
        assert!(std::fs::metadata(&shot).map(|m| m.len() > 1000).unwrap_or(false), "{shot:?}");
    }
}

#[test]
fn the_network_page_shows_a_testnets_workers_and_the_gap_a_killed_one_leaves() {
    let Some((chromium, playwright)) = browser_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Three workers over 0..30 and a fourth validator serving nothing, so that finality goes
    // on without the worker that is killed.
    let ranges = ["0..10", "10..20", "20..30", ""];
    let (spec, mut nodes, boot) = testnet(dir.path(), ranges.len());
    let api = free_port();
    for (i, n) in nodes.iter_mut().enumerate().filter(|(i, _)| !ranges[*i].is_empty()) {
        let port = if i == 0 { api } else { free_port() };
        n.extra = ["--serve-model", &model().display().to_string(), "--layers", ranges[i]]
            .into_iter()
            .chain(["--api-account", "//Eve", "--api-port", &port.to_string(), "--no-prometheus"])
            .map(String::from)
            .collect();
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        n.start(&spec, if i == 0 { "" } else { &boot });
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let announced = |n: &Node| {
        n.log().contains("announced the worker in the DHT")
            && n.rpc("system_health", json!([])).is_ok()
    };
    while !(0..3).all(|i| announced(&nodes[i])) {
        assert!(Instant::now() < deadline, "workers not announced:\n{}", quiet_logs(&nodes));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut child = script("network.mjs", api, &chromium, &playwright)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "covered" {
            // kill -9: no withdrawal; the page learns from the announcement's expiry.
            nodes[2].stop();
            writeln!(stdin, "killed").unwrap();
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "the browser script failed:\n{stderr}\n{seen:?}\nlogs:\n{}",
        quiet_logs(&nodes)
    );
    let result: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&result).unwrap());
    assert_eq!(result["validators"], 4, "{result}");
    assert_eq!(result["workers"], json!(["0..10", "10..20", "20..30"]), "{result}");
    assert_eq!(result["gaps"], json!((20..30).collect::<Vec<_>>()), "{result}");
}
