//! The OpenAI-compatible HTTP endpoint (`axum`): `GET /v1/models`, `GET /v1/models/{id}` and
//! `POST /v1/chat/completions`, with and without `stream: true`; and the node's web app at `/`
//! ([`crate::web`]).
//!
//! A streamed answer is a series of server-sent `chat.completion.chunk` events: the first
//! carries `role: assistant`, then one per text piece, then one with the `finish_reason`, then
//! (with `stream_options.include_usage`) one with the usage, then `data: [DONE]`. An error after
//! the stream began is sent as a `data: {"error": ..}` event and ends the stream.
//!
//! The request body is OpenAI's (fields we do not use, such as `tools` or `logit_bias`, are
//! ignored; `presence_penalty`/`frequency_penalty` are range-checked but not applied), plus one
//! Bitorch field: `account`, the SS58 address of the paying account, which must be one whose key
//! the node holds (the node's API account when absent). Defaults are OpenAI's: temperature 1,
//! top_p 1, no seed (a random one), as many tokens as the context allows.
//!
//! Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
//! status of its kind (see [`BackendError::status`]). Bodies are limited in size
//! ([`HttpConfig::max_body_bytes`]) and requests in flight are bounded
//! ([`HttpConfig::max_requests`]; more are answered 429).

use crate::backend::{Backend, Event, Events, FinishReason, Finished, ModelInfo, Payer};
use crate::wire::{self, StreamOptions};
use crate::{BackendError, Error};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bitorch_primitives::origins::Origins;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The default address of the endpoint (`--api-port` changes the port).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// The default limit on a request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The default limit on requests in flight (streams included).
pub const DEFAULT_MAX_REQUESTS: usize = 64;

/// How the HTTP endpoint is served.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen (port 0 picks a free one).
    pub addr: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most requests in flight; more get 429.
    pub max_requests: usize,
    /// Browser origins that may call the API (`--api-cors`); a request from another gets 403.
    pub origins: Origins,
    /// The port of the node's JSON-RPC server, which the web app at `/` talks to.
    pub rpc_port: Option<u16>,
    /// The gateway's account (SS58): what API keys made in the web app name.
    pub gateway: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_requests: DEFAULT_MAX_REQUESTS,
            origins: Origins::default(),
            rpc_port: None,
            gateway: None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    backend: Arc<dyn Backend>,
    in_flight: Arc<Semaphore>,
    max_requests: usize,
    max_body_bytes: usize,
}

/// An error answered in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: e.to_string(),
            kind: e.openai_type(),
            param: e.param().map(str::to_string),
            code: Some(e.code()),
            retry_after: e.retry_after(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(target: "api::http", status = %self.status, message = %self.message, "request failed");
        } else {
            tracing::debug!(target: "api::http", status = %self.status, message = %self.message, "request refused");
        }
        let mut r = json_response(self.status, &self.body());
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("chatcmpl-{:x}{:04x}", nanos as u64, NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

fn usage_json(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.usage.prompt_tokens,
        "completion_tokens": f.usage.completion_tokens,
        "total_tokens": f.usage.total_tokens(),
    })
}

fn openai_finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        // Nobody reads a cancelled stream; "stop" keeps the value within OpenAI's set.
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn model_json(m: &ModelInfo) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "context_length": m.context_length,
    })
}

/// The endpoint's routes, for a node that serves them on a listener of its own.
pub fn router(backend: Arc<dyn Backend>, config: &HttpConfig) -> Router {
    let state = AppState {
        backend,
        in_flight: Arc::new(Semaphore::new(config.max_requests)),
        max_requests: config.max_requests,
        max_body_bytes: config.max_body_bytes,
    };
    Router::new()
        .merge(crate::web::routes(config.rpc_port, config.gateway.as_deref()))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(unknown_url)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(Arc::new(config.origins.clone()), origin_guard))
        .with_state(state)
}

/// Refuses requests from browser origins that are not allowed (403), answers the CORS
/// preflight of allowed ones, and marks their answers readable by the page.
async fn origin_guard(
    State(origins): State<Arc<Origins>>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let text = origin.as_ref().map(|o| o.to_str().unwrap_or("(not text)"));
    if !origins.allows(text) {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "requests from the web page at {} may not use this API; the node's operator \
                 allows origins with --api-cors",
                text.unwrap_or_default()
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("origin_not_allowed"),
            retry_after: None,
        }
        .into_response();
    }
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        r
    } else {
        next.run(request).await
    };
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// Serves the endpoint on `addr` until `cancel` fires; returns the address it listens on.
pub async fn serve(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
) -> Result<SocketAddr, Error> {
    serve_with(HttpConfig { addr, ..HttpConfig::default() }, backend, cancel).await
}

/// Serves the endpoint as `config` says until `cancel` fires; returns the address it listens
/// on. If the server fails, it logs why and cancels `cancel`, taking the node down with it.
pub async fn serve_with(
    config: HttpConfig,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
) -> Result<SocketAddr, Error> {
    let bind = |source| Error::Bind { addr: config.addr, source };
    let listener = tokio::net::TcpListener::bind(config.addr).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let app = router(backend, &config);
    tracing::info!(target: "api::http", %addr, "OpenAI-compatible API listening");
    tokio::spawn(async move {
        let shutdown = cancel.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(target: "api::http", %addr, error = %e, "the API server failed");
            cancel.cancel();
        }
    });
    Ok(addr)
}

async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "Unknown request URL: {method} {}. This server serves GET /v1/models, \
             POST /v1/chat/completions and its web app at /.",
            uri.path()
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
        retry_after: None,
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{method} is not allowed on {}", uri.path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
        retry_after: None,
    }
}

async fn list_models(State(s): State<AppState>) -> Result<Response, ApiError> {
    let models = s.backend.models().await?;
    let data: Vec<Value> = models.iter().map(model_json).collect();
    Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": data})))
}

async fn get_model(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let models = s.backend.models().await?;
    match models.iter().find(|m| m.id == id) {
        Some(m) => Ok(json_response(StatusCode::OK, &model_json(m))),
        None => Err(BackendError::UnknownModel { model: id }.into()),
    }
}

async fn chat_completions(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A JSON body must say so: a browser sends a `text/plain` POST to any site without asking
    // first (no CORS preflight), so accepting one would let a web page spend the node's credits.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "the request body must be JSON, sent with Content-Type: application/json"
                .into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("unsupported_media_type"),
            retry_after: None,
        });
    }
    let permit = s.in_flight.clone().try_acquire_owned().map_err(|_| ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: format!(
            "{} requests are in flight, the most this server takes; try again shortly",
            s.max_requests
        ),
        kind: "rate_limit_error",
        param: None,
        code: Some("too_many_requests"),
        retry_after: None,
    })?;
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "the request body is larger than this server's limit of {} bytes",
                    s.max_body_bytes
                ),
                kind: "invalid_request_error",
                param: None,
                code: Some("request_too_large"),
                retry_after: None,
            }
        } else {
            BackendError::bad_request(format!("could not read the request body: {}", r.body_text()))
                .into()
        }
    })?;
    let (mut request, options) = wire::parse_body(&bytes)?.into_request()?;
    // An API token (`btr_…`) as OpenAI clients send their key: its user pays. Other keys (an
    // OpenAI client needs one, any text) are not ours: the node's API account pays.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| t.starts_with(bitorch_primitives::api_token::PREFIX));
    if let Some(token) = bearer {
        if request.payer != Payer::Node {
            return Err(BackendError::bad_param(
                "account",
                "give an account or an API token, not both",
            )
            .into());
        }
        request.payer = Payer::Token(token.to_string());
    }
    let model = request.model.clone();
    let events = s.backend.generate(request).await?;
    if options.stream {
        stream(events, model, options, permit).await
    } else {
        complete(events, model).await
    }
}

fn no_end() -> BackendError {
    BackendError::Internal("the backend stopped without finishing the answer".into())
}

async fn complete(mut events: Events, model: String) -> Result<Response, ApiError> {
    let mut text = String::new();
    let finished = loop {
        match events.recv().await {
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Finished(f)) => break f,
            Some(Event::Error(e)) => return Err(e.into()),
            None => return Err(no_end().into()),
        }
    };
    let body = json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": openai_finish(finished.finish_reason),
        }],
        "usage": usage_json(&finished),
        "bitorch": finished.served,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// What the SSE stream sends next.
enum Phase {
    /// The role chunk; the first event waits.
    Role(Event),
    /// The first event.
    First(Event),
    /// Events from the backend.
    Events,
    /// The usage chunk (when asked for), then `[DONE]`.
    Usage(Finished),
    /// `[DONE]`.
    Done,
    /// Nothing more.
    End,
}

struct Chunks {
    events: Events,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    phase: Phase,
    _permit: OwnedSemaphorePermit,
}

impl Chunks {
    fn body(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> sse::Event {
        sse::Event::default().data(self.body(delta, finish).to_string())
    }

    /// The chunk for one backend event, and the phase after it.
    fn on_event(&self, event: Option<Event>) -> (sse::Event, Phase) {
        match event {
            Some(Event::Text(piece)) => {
                (self.chunk(json!({"content": piece}), None), Phase::Events)
            }
            Some(Event::Finished(f)) => {
                let mut chunk = self.body(json!({}), Some(openai_finish(f.finish_reason)));
                // Bitorch's extension (OpenAI clients ignore unknown fields): who served the
                // answer and what it cost.
                if let Some(served) = &f.served {
                    chunk["bitorch"] = json!(served);
                }
                let next = if self.include_usage { Phase::Usage(f) } else { Phase::Done };
                (sse::Event::default().data(chunk.to_string()), next)
            }
            Some(Event::Error(e)) => (error_event(e), Phase::End),
            None => (error_event(no_end()), Phase::End),
        }
    }

    async fn next(mut self) -> Option<(Result<sse::Event, Infallible>, Self)> {
        let (event, phase) = match std::mem::replace(&mut self.phase, Phase::End) {
            Phase::Role(first) => {
                (self.chunk(json!({"role": "assistant", "content": ""}), None), Phase::First(first))
            }
            Phase::First(first) => self.on_event(Some(first)),
            Phase::Events => {
                let ev = self.events.recv().await;
                self.on_event(ev)
            }
            Phase::Usage(f) => {
                let body = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json(&f),
                });
                (sse::Event::default().data(body.to_string()), Phase::Done)
            }
            Phase::Done => (sse::Event::default().data("[DONE]"), Phase::End),
            Phase::End => return None,
        };
        self.phase = phase;
        Some((Ok(event), self))
    }
}

fn error_event(e: BackendError) -> sse::Event {
    tracing::warn!(target: "api::http", error = %e, "stream failed");
    sse::Event::default().data(ApiError::from(e).body().to_string())
}

async fn stream(
    mut events: Events,
    model: String,
    options: StreamOptions,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    // Wait for the first event so that a failure before any text still gets its status.
    let first = match events.recv().await {
        Some(Event::Error(e)) => return Err(e.into()),
        Some(first) => first,
        None => return Err(no_end().into()),
    };
    let chunks = Chunks {
        events,
        id: completion_id(),
        created: unix_now(),
        model,
        include_usage: options.include_usage,
        phase: Phase::Role(first),
        _permit: permit,
    };
    Ok(Sse::new(futures_util::stream::unfold(chunks, Chunks::next)).into_response())
}
