//! The real test model and its HTTP API, for the end-to-end tests that serve it.

use std::process::Command;

#[allow(unused_imports)]
pub use bitorch_test_support::http::{chat, post};
pub use bitorch_test_support::real_model as model;

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
