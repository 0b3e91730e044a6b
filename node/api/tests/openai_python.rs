//! The official `openai` Python package against the endpoint, through `scripts/openai-client.py`
//! (list models, a chat completion, a streamed one, an unknown model refused), with the real
//! model served by a `LocalBackend`.
//!
//! `BITORCH_OPENAI_PYTHON` names a Python that has `openai` installed; `scripts/test.sh` and
//! CI set it (`scripts/openai-venv.sh` makes a cached virtualenv and prints its Python). Run
//! alone:
//!
//! ```text
//! BITORCH_OPENAI_PYTHON=$(scripts/openai-venv.sh) cargo test -p bitorch-api --test openai_python
//! ```
//!
//! Without the variable the test fails and says so: it is never skipped in silence.

mod common;

use common::served;
use std::process::Command;

#[test]
fn openai_python_client_streams_and_not() {
    let python = match std::env::var("BITORCH_OPENAI_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "BITORCH_OPENAI_PYTHON is not set: it must name a Python with the `openai` package; \
             run `export BITORCH_OPENAI_PYTHON=$(scripts/openai-venv.sh)` (scripts/test.sh does)"
        ),
    };
    let s = served();
    // The checkout the test runs in (not the one its binary was first built in: a shared
    // target directory reuses binaries across checkouts).
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let script = format!("{dir}/../../scripts/openai-client.py");
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
