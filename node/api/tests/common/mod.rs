//! Test helpers: the real model served by a `LocalBackend` on loopback (one per test binary),
//! and a small HTTP/1 client on hyper.
#![allow(dead_code)]

use bitorch_api::{rpc_module, serve_with, Backend, HttpConfig, LocalBackend, LocalOptions};
use bitorch_inference::{Engine, EngineOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// The id the test server serves the model under.
pub const MODEL: &str = "smollm2-135m-instruct";
/// The body limit of the test server.
pub const MAX_BODY: usize = 256 * 1024;

pub use bitorch_test_support::real_model;

/// A server on loopback: the HTTP endpoint and a JSON-RPC server with the generation methods.
pub struct Served {
    /// The HTTP endpoint.
    pub http: SocketAddr,
    /// The JSON-RPC server (HTTP and WebSocket).
    pub rpc: SocketAddr,
    /// The backend behind both.
    pub backend: LocalBackend,
}

/// Serves `backend` on loopback (port 0) on a runtime of its own that outlives each test's.
pub fn serve_on_own_runtime(backend: Arc<dyn Backend>) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        rt.block_on(async move {
            let config = HttpConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                max_body_bytes: MAX_BODY,
                ..HttpConfig::default()
            };
            let http = serve_with(config, backend.clone(), CancellationToken::new())
                .await
                .expect("HTTP server");
            let server = jsonrpsee::server::Server::builder()
                .build("127.0.0.1:0".parse::<SocketAddr>().unwrap())
                .await
                .expect("RPC server");
            let rpc = server.local_addr().unwrap();
            let handle = server.start(rpc_module(backend).expect("module"));
            tx.send((http, rpc)).unwrap();
            handle.stopped().await;
        });
    });
    rx.recv().expect("test server started")
}

/// The real model behind a `LocalBackend`, served once per test binary.
pub fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let engine = Engine::load(real_model(), &EngineOptions::default()).expect("load model");
        let options = LocalOptions { queue: 32, ..LocalOptions::new(MODEL) };
        let backend = LocalBackend::new(Arc::new(engine), options);
        let (http, rpc) = serve_on_own_runtime(Arc::new(backend.clone()));
        Served { http, rpc, backend }
    })
}

/// An HTTP response: status, content type and body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body as text.
    pub body: String,
    /// `Access-Control-Allow-Origin`, if any.
    pub allow_origin: Option<String>,
    /// `Content-Security-Policy`, if any.
    pub csp: Option<String>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request over a fresh HTTP/1 connection and reads the whole response.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<Vec<u8>>) -> Reply {
    let json: &[(&str, &str)] = &[("content-type", "application/json")];
    request_with(addr, method, path, if body.is_some() { json } else { &[] }, body).await
}

/// Sends one request with these headers over a fresh HTTP/1 connection.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let content_type =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let allow_origin = resp
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
    Reply { status, content_type, body, allow_origin, csp }
}

/// POSTs JSON.
pub async fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Reply {
    request(addr, "POST", path, Some(body.to_string().into_bytes())).await
}

/// The `data:` payloads of a server-sent event stream, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// Checks OpenAI's error shape and returns the error object.
pub fn openai_error(reply: &Reply, status: u16) -> serde_json::Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/json"), "{}", reply.content_type);
    let v = reply.json();
    let e = v["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}
