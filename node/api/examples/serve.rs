//! Serves a model file through a `LocalBackend` on the OpenAI-compatible endpoint (and the
//! JSON-RPC generation methods on the next port), without a chain: for trying API clients.
//!
//! ```text
//! cargo run -p bitorch-api --example serve -- MODEL_PATH [PORT] [MODEL_ID]
//! ```

use anyhow::Context;
use bitorch_api::{rpc_module, serve, Backend, LocalBackend, LocalOptions};
use bitorch_inference::{Engine, EngineOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: serve MODEL_PATH [PORT] [MODEL_ID]";
    let path = PathBuf::from(args.next().context(usage)?);
    let port: u16 = args.next().map(|p| p.parse()).transpose().context(usage)?.unwrap_or(8080);
    let id = args.next().unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or("model".into())
    });
    let engine = Engine::load(&path, &EngineOptions::default())
        .with_context(|| format!("loading {}", path.display()))?;
    let backend: Arc<dyn Backend> =
        Arc::new(LocalBackend::new(Arc::new(engine), LocalOptions::new(id.clone())));
    let cancel = CancellationToken::new();
    let addr =
        serve(SocketAddr::from(([127, 0, 0, 1], port)), backend.clone(), cancel.clone()).await?;
    let rpc_addr =
        SocketAddr::from(([127, 0, 0, 1], if port == 0 { 0 } else { port.wrapping_add(1) }));
    let server = jsonrpsee::server::Server::builder().build(rpc_addr).await?;
    let rpc_addr = server.local_addr()?;
    let rpc = server.start(rpc_module(backend)?);
    // One line a script can wait for.
    println!("serving model '{id}' on http://{addr}/v1 (JSON-RPC on {rpc_addr})");
    tokio::signal::ctrl_c().await?;
    cancel.cancel();
    rpc.stop()?;
    Ok(())
}
