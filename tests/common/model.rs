//! The real test model and its HTTP API, for the end-to-end tests that serve it.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The test model's path, from `BITORCH_TEST_MODEL`.
pub fn model() -> PathBuf {
    match std::env::var_os("BITORCH_TEST_MODEL") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "BITORCH_TEST_MODEL must name the test model (now {other:?}): run scripts/fetch-model.sh \
             and set BITORCH_TEST_MODEL to the path it prints"
        ),
    }
}

/// A greedy chat completion request for `/v1/chat/completions`.
pub fn chat(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

/// One HTTP/1.1 POST with `Connection: close`; returns the status and the (de-chunked) body.
pub fn post(
    port: u16,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, rest) = raw.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok((status, rest.to_string()));
    }
    let mut out = String::new();
    let mut rest = rest;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok((status, out));
        }
        out.push_str(after.get(..n).ok_or("truncated chunk")?);
        rest = after.get(n + 2..).ok_or("truncated chunk")?;
    }
}

/// `bitorch infer --chat --record-commitments` (greedy): what the workers must reproduce.
pub fn infer(prompt: &str, max_tokens: u32) -> String {
    let out = Command::new(super::net::BIN)
        .args(["infer", "--chat", "--record-commitments", "--temperature", "0"])
        .args(["--max-tokens", &max_tokens.to_string(), "--model"])
        .arg(model())
        .arg(prompt)
        .output()
        .unwrap();
    assert!(out.status.success(), "bitorch infer: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}
