//! The JSON-RPC generation methods with the real model through a `LocalBackend`.

mod common;

use bitorch_inference::GenerateRequest;
use common::*;
use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::WsClientBuilder;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

fn params(max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

#[tokio::test]
async fn generate_and_subscription_give_the_engine_answer() {
    let s = served();
    let engine = s.backend.engine().clone();
    let expected = tokio::task::spawn_blocking(move || {
        let mut req = GenerateRequest::new(QUESTION, 32);
        req.chat = true;
        engine.generate(&req, |_| true).unwrap().text
    });
    let client = WsClientBuilder::default().build(format!("ws://{}", s.rpc)).await.unwrap();

    let out: Value = client.request("bitorch_generate", rpc_params![params(32)]).await.unwrap();
    let text = out["text"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "{out}");
    assert!(matches!(out["finish_reason"].as_str(), Some("stop" | "length")), "{out}");
    assert!(out["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{out}");

    let mut sub: Subscription<Value> = client
        .subscribe(
            "bitorch_subscribeGeneration",
            rpc_params![params(32)],
            "bitorch_unsubscribeGeneration",
        )
        .await
        .unwrap();
    let mut pieces = Vec::new();
    let finished = loop {
        let note = sub.next().await.expect("a notification").unwrap();
        if let Some(piece) = note.get("text") {
            pieces.push(piece.as_str().unwrap().to_string());
        } else {
            break note["finished"].clone();
        }
    };
    assert_eq!(finished["finish_reason"], out["finish_reason"], "{finished}");
    assert_eq!(finished["usage"], out["usage"]);
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    assert_eq!(text, expected.await.unwrap());
}

#[tokio::test]
async fn rpc_errors_are_typed() {
    let s = served();
    let client = WsClientBuilder::default().build(format!("ws://{}", s.rpc)).await.unwrap();
    let err = |e: jsonrpsee::core::ClientError| match e {
        jsonrpsee::core::ClientError::Call(e) => e,
        other => panic!("expected a call error, got {other}"),
    };
    let mut unknown = params(4);
    unknown["model"] = json!("nope");
    let e = err(client
        .request::<Value, _>("bitorch_generate", rpc_params![unknown.clone()])
        .await
        .unwrap_err());
    assert_eq!(e.code(), bitorch_api::rpc::codes::NOT_FOUND);
    assert!(e.message().contains("nope"));

    let mut bad = params(4);
    bad["temperature"] = json!(-1);
    let e =
        err(client.request::<Value, _>("bitorch_generate", rpc_params![bad]).await.unwrap_err());
    assert_eq!(e.code(), bitorch_api::rpc::codes::INVALID_PARAMS);
    assert!(e.message().contains("temperature"), "{}", e.message());

    let e = client
        .subscribe::<Value, _>(
            "bitorch_subscribeGeneration",
            rpc_params![unknown],
            "bitorch_unsubscribeGeneration",
        )
        .await
        .unwrap_err();
    assert_eq!(err(e).code(), bitorch_api::rpc::codes::NOT_FOUND);

    // A prompt instead of messages, and params by name.
    let mut named = jsonrpsee::core::params::ObjectParams::new();
    named.insert("model", MODEL).unwrap();
    named.insert("prompt", "Say hi.").unwrap();
    named.insert("max_tokens", 3).unwrap();
    named.insert("temperature", 0).unwrap();
    let out: Value = client.request("bitorch_generate", named).await.unwrap();
    assert_eq!(out["finish_reason"], "length", "{out}");
}
