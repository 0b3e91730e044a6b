//! A blocking HTTP/1.1 and JSON-RPC client for tests that talk to a node on loopback.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// A free TCP port on loopback for a node to listen on, from 20000..32768: below Linux's
/// ephemeral range (32768..61000), so that no outgoing connection (a libp2p dial, an HTTP
/// client) can take it between this call and the node's bind, which the OS's own pick
/// (binding port 0) allowed. Ports are handed out once per process, starting at an offset
/// drawn from the process id and the clock (test binaries run side by side), and each is
/// checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = || {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (std::process::id().wrapping_mul(7_919) ^ nanos) % SPAN
    };
    let _ = NEXT.compare_exchange(u32::MAX, start(), Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(port).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32768")
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

/// One HTTP/1.1 POST of `body` to `127.0.0.1:port` with `Connection: close`; returns the
/// status and the (de-chunked) body.
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

/// A JSON-RPC call over HTTP to `127.0.0.1:port` (what `curl` does): the result, or the
/// error object (or why there was no answer) as text.
pub fn rpc(port: u16, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (_, body) = post(port, "/", &body, Duration::from_secs(10))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    match v.get("error") {
        Some(e) => Err(e.to_string()),
        None => Ok(v["result"].clone()),
    }
}
