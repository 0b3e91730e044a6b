//! The official `openai` Python package against the endpoint, through `scripts/openai-client.py`
//! (list models, a chat completion, a streamed one, an unknown model refused), with the real
//! model served by a `LocalBackend`.
//!
//! Only compiled and run when `BITORCH_OPENAI_PYTHON` is set when building the tests: the path
//! of a Python that has `openai` installed, e.g.
//!
//! ```text
//! python3 -m venv ~/.cache/bitorch/venv && ~/.cache/bitorch/venv/bin/pip install openai
//! BITORCH_OPENAI_PYTHON=~/.cache/bitorch/venv/bin/python cargo test -p bitorch-api --test openai_python
//! ```
//!
//! (`build.rs` turns the variable into `cfg(openai_python)`; without it this file is empty.)
#![cfg(openai_python)]

mod common;

use common::served;
use std::process::Command;

#[test]
fn openai_python_client_streams_and_not() {
    let s = served();
    let python = std::env::var("BITORCH_OPENAI_PYTHON")
        .unwrap_or_else(|_| env!("BITORCH_OPENAI_PYTHON").to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/openai-client.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--base-url", &format!("http://{}/v1", s.http), "--expect", "Paris"])
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai-client.py failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(&format!("model: {}", common::MODEL)), "{stdout}");
    assert!(stdout.contains("unknown model refused: 404"), "{stdout}");
    println!("{stdout}");
}
