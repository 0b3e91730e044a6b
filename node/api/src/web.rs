//! The web app the node serves at `/` on the API port: a chat over this API, the network and
//! its jobs over the node's JSON-RPC WebSocket, and an address's balances. Plain HTML, CSS and a
//! JavaScript module (no framework, no build step), embedded in the binary so that the node
//! needs nothing else to serve it, and working offline (no external resources).
//!
//! Model output and chain data are untrusted: the page puts them in the document as text only,
//! and every asset is served with a Content-Security-Policy that allows no inline script, no
//! other origin's script and no framing, so a mistake there still runs nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");
/// polkadot.js' sr25519 for the wallet page, built by `scripts/build-web.sh` from `web-src/`.
const CRYPTO_JS: &str = include_str!("../web/crypto.js");

/// What the page may load and connect to: its own origin, and the node's JSON-RPC WebSocket.
/// `wasm-unsafe-eval` lets the wallet page compile polkadot.js' sr25519 WebAssembly (it allows
/// no JavaScript `eval`).
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

fn asset(body: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body.into()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The binary is the version: a new node's page is loaded again, not taken from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The app's routes; `rpc_port` is where the page finds the node's JSON-RPC server, `gateway`
/// the account API keys for this node name.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    rpc_port: Option<u16>,
    gateway: Option<&str>,
) -> Router<S> {
    let config = serde_json::json!({ "rpcPort": rpc_port, "gateway": gateway }).to_string();
    Router::new()
        .route("/", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/index.html", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/crypto.js", get(|| async { asset(CRYPTO_JS, "text/javascript; charset=utf-8") }))
        .route(
            "/app/config.json",
            get(move || {
                let config = config.clone();
                async move { asset(config, "application/json") }
            }),
        )
}
