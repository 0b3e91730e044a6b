//! Helpers shared by the end-to-end tests (each test binary uses a part of them).
#![allow(dead_code)]

pub mod net;

use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::Duration;

/// A free TCP port on loopback (the OS picks it; the test binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal JSON-RPC over HTTP client (what `curl` does).
pub fn rpc(port: u16, method: &str, params: Value) -> Result<Value, String> {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let json_start = resp.find("\r\n\r\n").ok_or("no body")? + 4;
    let v: Value = serde_json::from_str(&resp[json_start..]).map_err(|e| e.to_string())?;
    match v.get("error") {
        Some(e) => Err(e.to_string()),
        None => Ok(v["result"].clone()),
    }
}
