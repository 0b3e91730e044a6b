//! The front-ends over a scripted backend (no model): every error kind's status and shape, an
//! error in the middle of a stream, cancellation when the client leaves, and the bound on
//! requests in flight.

mod common;

use bitorch_api::{
    rpc_module, serve_with, Backend, BackendError, BoxFuture, ChatRequest, Event, Events,
    FinishReason, Finished, HttpConfig, ModelInfo, Usage,
};
use common::*;
use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Answers by the model named: `fail-<kind>` fails with that kind, `midstream` fails after one
/// piece, `hold` streams one piece and then waits until the consumer leaves (and notifies
/// `left`), anything else says "Hello world".
struct Scripted {
    left: Arc<Notify>,
}

impl Backend for Scripted {
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, BackendError>> {
        Box::pin(async {
            Ok(vec![ModelInfo {
                id: "scripted".into(),
                owned_by: "tests".into(),
                context_length: 64,
                created: 1,
            }])
        })
    }

    fn generate(&self, request: ChatRequest) -> BoxFuture<'_, Result<Events, BackendError>> {
        Box::pin(async move {
            let fail = match request.model.as_str() {
                "fail-unknown" => Some(BackendError::UnknownModel { model: request.model.clone() }),
                "fail-bad" => Some(BackendError::bad_param("messages", "too long")),
                "fail-unavailable" => {
                    Some(BackendError::Unavailable("no worker for layers 10..20".into()))
                }
                "fail-busy" => Some(BackendError::Busy("all workers are busy".into())),
                "fail-payment" => Some(BackendError::Payment("insufficient balance".into())),
                "fail-internal" => Some(BackendError::Internal("oops".into())),
                _ => None,
            };
            if let Some(e) = fail {
                return Err(e);
            }
            let (tx, rx) = mpsc::channel(4);
            let left = self.left.clone();
            let model = request.model.clone();
            tokio::spawn(async move {
                let _ = tx.send(Event::Text("Hello".into())).await;
                match model.as_str() {
                    "midstream" => {
                        let _ = tx
                            .send(Event::Error(BackendError::Unavailable("worker lost".into())))
                            .await;
                    }
                    "hold" => {
                        tx.closed().await;
                        left.notify_one();
                    }
                    _ => {
                        let _ = tx.send(Event::Text(" world".into())).await;
                        let usage = Usage { prompt_tokens: 3, completion_tokens: 2 };
                        let _ = tx
                            .send(Event::Finished(Finished {
                                finish_reason: FinishReason::Stop,
                                usage,
                                served: None,
                            }))
                            .await;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn stats(&self) -> BoxFuture<'_, bitorch_api::BackendStats> {
        Box::pin(async { bitorch_api::BackendStats::default() })
    }
}

async fn start(max_requests: usize) -> (SocketAddr, SocketAddr, Arc<Notify>) {
    let left = Arc::new(Notify::new());
    let backend: Arc<dyn Backend> = Arc::new(Scripted { left: left.clone() });
    let config =
        HttpConfig { addr: "127.0.0.1:0".parse().unwrap(), max_requests, ..HttpConfig::default() };
    let http = serve_with(config, backend.clone(), CancellationToken::new()).await.unwrap();
    let server = jsonrpsee::server::Server::builder().build("127.0.0.1:0").await.unwrap();
    let rpc = server.local_addr().unwrap();
    let handle = server.start(rpc_module(backend).unwrap());
    tokio::spawn(handle.stopped());
    (http, rpc, left)
}

fn body(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

#[tokio::test]
async fn each_error_kind_has_its_status() {
    let (http, rpc, _) = start(8).await;
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(format!("ws://{rpc}"))
        .await
        .unwrap();
    for (model, status, kind, code) in [
        ("fail-unknown", 404, "invalid_request_error", bitorch_api::rpc::codes::NOT_FOUND),
        ("fail-bad", 400, "invalid_request_error", bitorch_api::rpc::codes::INVALID_PARAMS),
        ("fail-unavailable", 503, "server_error", bitorch_api::rpc::codes::UNAVAILABLE),
        ("fail-busy", 429, "rate_limit_error", bitorch_api::rpc::codes::BUSY),
        ("fail-payment", 402, "insufficient_quota", bitorch_api::rpc::codes::PAYMENT),
        ("fail-internal", 500, "server_error", bitorch_api::rpc::codes::INTERNAL),
    ] {
        for stream in [false, true] {
            let r = post_json(http, "/v1/chat/completions", &body(model, stream)).await;
            let e = openai_error(&r, status);
            assert_eq!(e["type"], kind, "{model}: {e}");
        }
        match client.request::<Value, _>("bitorch_generate", rpc_params![body(model, false)]).await
        {
            Err(jsonrpsee::core::ClientError::Call(e)) => {
                assert_eq!(e.code(), code, "{model}");
                let data: Value = serde_json::from_str(e.data().unwrap().get()).unwrap();
                assert_eq!(data["status"], status);
            }
            other => panic!("{model}: expected an error, got {other:?}"),
        }
    }
    let ok = post_json(http, "/v1/chat/completions", &body("scripted", false)).await;
    assert_eq!(ok.json()["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(ok.json()["usage"]["total_tokens"], 5);
}

#[tokio::test]
async fn web_pages_of_other_origins_and_non_json_bodies_are_refused() {
    let (http, _, _) = start(8).await;
    let chat = body("scripted", false).to_string().into_bytes();
    // A `text/plain` POST (what a web page may send anywhere without a preflight): 415.
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r =
            request_with(http, "POST", "/v1/chat/completions", &headers, Some(chat.clone())).await;
        let e = openai_error(&r, 415);
        assert_eq!(e["code"], "unsupported_media_type", "{ct:?}");
    }
    let json = ("content-type", "application/json; charset=utf-8");
    let ok = request_with(http, "POST", "/v1/chat/completions", &[json], Some(chat.clone())).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A page of another origin: 403 everywhere, its preflight included.
    let evil = ("origin", "http://evil.example");
    for (method, path, body) in [
        ("POST", "/v1/chat/completions", Some(chat.clone())),
        ("GET", "/v1/models", None),
        ("OPTIONS", "/v1/chat/completions", None),
    ] {
        let r = request_with(http, method, path, &[json, evil], body).await;
        let e = openai_error(&r, 403);
        assert_eq!(e["code"], "origin_not_allowed", "{method} {path}");
        assert_eq!(r.allow_origin, None);
    }
    // A local page (the default list): served, and told it may read the answer.
    let local = ("origin", "http://localhost:3000");
    let r = request_with(http, "POST", "/v1/chat/completions", &[json, local], Some(chat)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.allow_origin.as_deref(), Some("http://localhost:3000"));
    let pre = request_with(http, "OPTIONS", "/v1/chat/completions", &[local], None).await;
    assert_eq!((pre.status, pre.allow_origin.as_deref()), (204, Some("http://localhost:3000")));
}

#[tokio::test]
async fn an_endpoint_open_beyond_loopback_serves_token_paid_requests_only() {
    let inner: Arc<dyn Backend> = Arc::new(Scripted { left: Arc::new(Notify::new()) });
    let backend: Arc<dyn Backend> = Arc::new(bitorch_api::TokensOnly(inner));
    let config = HttpConfig { addr: "127.0.0.1:0".parse().unwrap(), ..HttpConfig::default() };
    let http = serve_with(config, backend, CancellationToken::new()).await.unwrap();
    let chat = body("scripted", false).to_string().into_bytes();
    let json = ("content-type", "application/json");
    // The operator's account would pay: refused, whatever other key the client sends.
    for headers in [vec![json], vec![json, ("authorization", "Bearer sk-anything")]] {
        let r =
            request_with(http, "POST", "/v1/chat/completions", &headers, Some(chat.clone())).await;
        assert_eq!(openai_error(&r, 401)["code"], "invalid_api_key");
    }
    // A token's request goes to the backend (which checks the token itself).
    let token = format!("Bearer btr_{}", "0".repeat(272));
    let r = request_with(
        http,
        "POST",
        "/v1/chat/completions",
        &[json, ("authorization", &token)],
        Some(chat),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn an_error_mid_stream_is_an_error_event() {
    let (http, rpc, _) = start(8).await;
    let r = post_json(http, "/v1/chat/completions", &body("midstream", true)).await;
    assert_eq!(r.status, 200);
    let data = sse_data(&r.body);
    assert_eq!(data.len(), 3, "{data:?}");
    let last: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("worker lost"));
    // Without streaming the same failure is a 503.
    openai_error(&post_json(http, "/v1/chat/completions", &body("midstream", false)).await, 503);

    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(format!("ws://{rpc}"))
        .await
        .unwrap();
    let mut sub: Subscription<Value> = client
        .subscribe(
            "bitorch_subscribeGeneration",
            rpc_params![body("midstream", false)],
            "bitorch_unsubscribeGeneration",
        )
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap(), json!({"text": "Hello"}));
    let e = sub.next().await.unwrap().unwrap();
    assert_eq!(e["error"]["data"]["status"], 503, "{e}");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_generation() {
    let (http, rpc, left) = start(1).await;
    // HTTP: read the first piece of a stream, then hang up.
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{http}/v1/chat/completions"))
        .header("host", http.to_string())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body("hold", true).to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The one request in flight is the most this server takes.
    let busy = post_json(http, "/v1/chat/completions", &body("scripted", false)).await;
    assert_eq!(openai_error(&busy, 429)["code"], "too_many_requests");
    drop(resp);
    drop(sender);
    conn.abort();
    tokio::time::timeout(Duration::from_secs(10), left.notified()).await.expect("HTTP cancel");
    // The slot is free again.
    let mut ok = post_json(http, "/v1/chat/completions", &body("scripted", false)).await;
    for _ in 0..50 {
        if ok.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ok = post_json(http, "/v1/chat/completions", &body("scripted", false)).await;
    }
    assert_eq!(ok.status, 200, "{}", ok.body);

    // JSON-RPC: unsubscribing cancels too.
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(format!("ws://{rpc}"))
        .await
        .unwrap();
    let mut sub: Subscription<Value> = client
        .subscribe(
            "bitorch_subscribeGeneration",
            rpc_params![body("hold", false)],
            "bitorch_unsubscribeGeneration",
        )
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap(), json!({"text": "Hello"}));
    sub.unsubscribe().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), left.notified()).await.expect("RPC cancel");
}
