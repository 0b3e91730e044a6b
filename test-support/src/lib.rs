//! What the test suites share, so that each helper exists once:
//!
//! - [`real_model`]: the real test model (SmolLM2-135M-Instruct Q4_1) from
//!   `BITORCH_TEST_MODEL`, or a panic that says how to get it;
//! - [`tiny`]: tiny random Llama models, reproducible from a seed ([`tiny::seeded`] is the
//!   seeded stand-in for candle's unseeded `Tensor::randn`), written as safetensors or GGUF;
//! - [`http`]: a free loopback port, one blocking HTTP/1.1 POST, a JSON-RPC call over it, and
//!   the chat completion request the end-to-end tests send;
//! - [`netdelay`] (Linux): latency for network-namespace test beds (netfilter's queue; the
//!   kernel here has no `netem`).
//!
//! It depends on candle only (not on our crates), so that every crate of the workspace,
//! `bitorch-inference` included, can use it in its tests.

pub mod http;
#[cfg(target_os = "linux")]
pub mod netdelay;
pub mod tiny;

use std::path::{Path, PathBuf};

/// The real test model (SmolLM2-135M-Instruct Q4_1), from `BITORCH_TEST_MODEL`; panics with
/// what to do when it is not set or names no file.
pub fn real_model() -> PathBuf {
    match std::env::var_os("BITORCH_TEST_MODEL") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        other => panic!(
            "BITORCH_TEST_MODEL must name the test model (now {other:?}): run scripts/fetch-model.sh \
             and set BITORCH_TEST_MODEL to the path it prints"
        ),
    }
}
