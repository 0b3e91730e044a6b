//! Helpers shared by the end-to-end tests (each test binary uses a part of them).
#![allow(dead_code)]

pub mod model;
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
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (_, body) = model::post(port, "/", &body, Duration::from_secs(10))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    match v.get("error") {
        Some(e) => Err(e.to_string()),
        None => Ok(v["result"].clone()),
    }
}
