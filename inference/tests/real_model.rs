//! The real test model end to end: tokenizer from GGUF metadata, chat, streaming, sampling.

mod common;

use bitorch_inference::{
    Engine, EngineOptions, FinishReason, GenerateRequest, GgufWeights, SamplingParams, TextStream,
};
use common::real_model;

fn engine(stages: usize) -> Engine {
    let opts = EngineOptions { stages, gguf: GgufWeights::Candle, ..Default::default() };
    Engine::load(real_model(), &opts).unwrap()
}

/// With f32 activations (our Q4_1 kernel): candle's quantized kernels derail this small model.
fn precise_engine(stages: usize) -> Engine {
    let opts = EngineOptions { stages, gguf: GgufWeights::Compact, ..Default::default() };
    Engine::load(real_model(), &opts).unwrap()
}

#[test]
fn real_model_tokenizer_from_gguf() {
    let e = engine(1);
    let t = e.tokenizer();
    assert_eq!(t.vocab_size(), 49152);
    for text in [
        "Hello world! The year 2024 had 366 days.",
        "  leading spaces,\ttabs\nand newlines\n\n",
        "café, naïve, Größe, 日本語のテキスト, emoji 🙂🚀, Ελληνικά",
        "fn main() { println!(\"{}\", 1 + 2); }",
    ] {
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
        // Streaming one token at a time never splits a character and adds up to the text.
        let mut s = TextStream::new();
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = s.push(t, id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                out.push_str(&piece);
            }
        }
        out.push_str(&s.finish(t).unwrap());
        assert_eq!(out, text);
    }
    // Digits are split one by one (SmolLM2's pre-tokenizer), and special tokens are single ids.
    assert_eq!(t.encode("2024").unwrap().len(), 4);
    let chat = t.chat_template().unwrap().apply(None, "Hi");
    let ids = t.encode(&chat).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|>");
    assert!(ids.contains(&2), "<|im_end|>");
    assert!(t.eos().contains(&2));
    assert!(chat.contains("You are a helpful AI assistant named SmolLM"));
}

#[test]
fn real_model_answers_paris_streaming() {
    let e = precise_engine(3);
    let mut req = GenerateRequest::new("What is the capital of France?", 48);
    req.chat = true;
    let mut pieces = Vec::new();
    let out = e
        .generate(&req, |p| {
            pieces.push(p.to_string());
            true
        })
        .unwrap();
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert!(pieces.len() > 3, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), out.text);
    assert!(matches!(out.finish, FinishReason::Eos | FinishReason::Length));
}

#[test]
fn real_model_seeded_sampling_and_stop_strings() {
    let e = precise_engine(1);
    let mut req = GenerateRequest::new("Once upon a time", 24);
    req.sampling = SamplingParams {
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.95),
        repeat_penalty: 1.1,
        seed: 42,
        ..Default::default()
    };
    let a = e.generate(&req, |_| true).unwrap();
    let b = e.generate(&req, |_| true).unwrap();
    assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
    req.sampling.seed = 43;
    let c = e.generate(&req, |_| true).unwrap();
    assert_ne!(a.tokens, c.tokens, "another seed, other tokens");
    // A stop string cuts the text where it starts.
    let greedy = GenerateRequest::new("The capital of France is", 24);
    let full = e.generate(&greedy, |_| true).unwrap();
    let word = full.text.split_whitespace().nth(2).unwrap().to_string();
    let stop = GenerateRequest { stop: vec![word.clone()], ..greedy };
    let cut = e.generate(&stop, |_| true).unwrap();
    assert_eq!(cut.finish, FinishReason::Stop);
    assert_eq!(cut.text, full.text[..full.text.find(&word).unwrap()]);
    // The callback can cancel.
    let mut n = 0;
    let cancelled = e
        .generate(&GenerateRequest::new("Count: 1, 2, 3,", 24), |_| {
            n += 1;
            n < 2
        })
        .unwrap();
    assert_eq!(cancelled.finish, FinishReason::Cancelled);
}
