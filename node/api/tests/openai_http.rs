//! The OpenAI-compatible endpoint with the real model (SmolLM2-135M-Instruct) through a
//! `LocalBackend` on loopback.

mod common;

use bitorch_inference::GenerateRequest;
use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";
const MAX_TOKENS: usize = 40;

/// What `Engine::generate` answers for the same greedy one-turn chat.
async fn engine_answer(question: &str, max_tokens: usize) -> String {
    let engine = served().backend.engine().clone();
    let question = question.to_string();
    tokio::task::spawn_blocking(move || {
        let mut req = GenerateRequest::new(question, max_tokens);
        req.chat = true;
        engine.generate(&req, |_| true).unwrap().text
    })
    .await
    .unwrap()
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn models_lists_the_model() {
    let s = served();
    let r = request(s.http, "GET", "/v1/models", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["context_length"], 8192);
    let one = request(s.http, "GET", &format!("/v1/models/{MODEL}"), None).await;
    assert_eq!(one.json()["id"], MODEL);
    let e = openai_error(&request(s.http, "GET", "/v1/models/nope", None).await, 404);
    assert_eq!(e["code"], "model_not_found");
}

#[tokio::test]
async fn the_web_app_is_served_with_a_policy_that_runs_no_inline_script() {
    let s = served();
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
        ("/crypto.js", "text/javascript"),
    ] {
        let r = request(s.http, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.content_type.starts_with(kind), "{path}: {}", r.content_type);
        let csp = r.csp.unwrap_or_default();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    }
    let page = request(s.http, "GET", "/", None).await.body;
    assert!(page.contains(r#"<script type="module" src="/app.js">"#), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "no external resource");
    // This server was started without a JSON-RPC port to point the page at.
    let config = request(s.http, "GET", "/app/config.json", None).await.json();
    assert_eq!(config, json!({"rpcPort": null, "gateway": null}));
    // Other paths are the API's 404, not the page.
    let e = openai_error(&request(s.http, "GET", "/nope", None).await, 404);
    assert_eq!(e["code"], "unknown_url");
}

#[tokio::test]
async fn chat_completion_answers_paris_like_the_engine() {
    let s = served();
    let body = chat(json!({}));
    let (reply, expected) = tokio::join!(
        post_json(s.http, "/v1/chat/completions", &body),
        engine_answer(QUESTION, MAX_TOKENS)
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(text, expected);
    assert!(matches!(choice["finish_reason"].as_str(), Some("stop" | "length")), "{v}");
    let usage = &v["usage"];
    let (p, c) =
        (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert!(p > 10 && c > 0 && c <= MAX_TOKENS as u64, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
}

#[tokio::test]
async fn streaming_chunks_concatenate_to_the_answer() {
    let s = served();
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (reply, expected) = tokio::join!(
        post_json(s.http, "/v1/chat/completions", &body),
        engine_answer(QUESTION, MAX_TOKENS)
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.content_type.starts_with("text/event-stream"), "{}", reply.content_type);
    let data = sse_data(&reply.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{}", reply.body);
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], MODEL);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // Content chunks, then one with the finish reason, then the usage.
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let fin = &chunks[chunks.len() - 2]["choices"][0];
    assert!(matches!(fin["finish_reason"].as_str(), Some("stop" | "length")), "{fin}");
    let pieces: Vec<&str> = chunks[1..chunks.len() - 2]
        .iter()
        .map(|c| {
            assert!(c["choices"][0]["finish_reason"].is_null());
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert!(pieces.len() > 3, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), expected);
    assert!(expected.contains("Paris"), "{expected:?}");
}

#[tokio::test]
async fn multi_turn_conversation_and_stop_strings() {
    let s = served();
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You answer with one word."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        "max_tokens": 24,
        "temperature": 0,
        "stop": ["\n"],
    });
    let r = post_json(s.http, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.contains('\n'), "{text:?}");
    assert!(text.contains("Rome"), "{text:?}");
    // The prompt holds all four turns (and no default system message).
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 30, "{v}");
}

#[tokio::test]
async fn errors_have_openai_shape_and_status() {
    let s = served();
    let url = "/v1/chat/completions";
    let e = openai_error(&post_json(s.http, url, &chat(json!({"model": "gpt-4o"}))).await, 404);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("invalid_request_error"), Some("model_not_found"))
    );
    assert!(e["message"].as_str().unwrap().contains("gpt-4o"));

    let malformed = request(s.http, "POST", url, Some(b"{\"model\": ".to_vec())).await;
    let e = openai_error(&malformed, 400);
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"), "{e}");

    let e = openai_error(&post_json(s.http, url, &chat(json!({"temperature": -0.5}))).await, 400);
    assert_eq!(e["param"], "temperature");
    assert!(e["message"].as_str().unwrap().contains("between 0 and 2"), "{e}");

    let e = openai_error(&post_json(s.http, url, &chat(json!({"max_tokens": 0}))).await, 400);
    assert_eq!(e["param"], "max_tokens");
    let e = openai_error(&post_json(s.http, url, &chat(json!({"messages": []}))).await, 400);
    assert_eq!(e["param"], "messages");

    let huge = chat(json!({"messages": [{"role": "user", "content": "a".repeat(MAX_BODY + 1)}]}));
    let e = openai_error(&post_json(s.http, url, &huge).await, 413);
    assert_eq!(e["code"], "request_too_large");

    // A conversation longer than the model's context is refused before any generation.
    let long = chat(json!({"messages": [{"role": "user", "content": "word ".repeat(9000)}]}));
    let e = openai_error(&post_json(s.http, url, &long).await, 400);
    assert!(e["message"].as_str().unwrap().contains("context"), "{e}");

    let e = openai_error(&request(s.http, "GET", "/v1/completions", None).await, 404);
    assert_eq!(e["code"], "unknown_url");
    let e = openai_error(&request(s.http, "GET", url, None).await, 405);
    assert_eq!(e["code"], "method_not_allowed");
    // Unknown fields are ignored.
    let r = post_json(s.http, url, &chat(json!({"max_tokens": 2, "logit_bias": {}, "user": "x"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn local_backend_is_bounded_and_stops_when_the_consumer_leaves() {
    use bitorch_api::{Backend, BackendError, ChatRequest, Event, LocalBackend, LocalOptions};
    use std::time::{Duration, Instant};
    // No queue: one generation at a time, the next is "busy".
    let engine = served().backend.engine().clone();
    let local = LocalBackend::new(engine, LocalOptions { queue: 0, ..LocalOptions::new(MODEL) });
    let mut long = ChatRequest::new(MODEL, "Count from 1 to 1000, one number per line.");
    long.max_tokens = Some(4000);
    let mut events = local.generate(long.clone()).await.unwrap();
    assert!(matches!(events.recv().await, Some(Event::Text(_))));
    match local.generate(long.clone()).await {
        Err(e @ BackendError::Busy(_)) => assert_eq!(e.status(), 429),
        other => panic!("expected busy, got {other:?}"),
    }
    // Dropping the receiver stops the generation at its next piece, which frees the slot long
    // before 4000 tokens could have been generated.
    drop(events);
    let left = Instant::now();
    let mut next = loop {
        match local.generate(long.clone()).await {
            Ok(events) => break events,
            Err(BackendError::Busy(_)) if left.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("the slot was not freed: {other:?}"),
        }
    };
    assert!(matches!(next.recv().await, Some(Event::Text(_))));
}
