//! Errors: [`BackendError`] for what a generation can fail with (each maps to an HTTP status, an
//! OpenAI error type and a JSON-RPC code), [`Error`] for setting the APIs up.

use std::net::SocketAddr;

/// Why a backend refused or failed a request. Front-ends map each kind to an HTTP status
/// ([`status`](Self::status)), an OpenAI error type and a JSON-RPC error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No model of this id is served (HTTP 404).
    #[error("the model '{model}' is not served here; GET /v1/models lists the models that are")]
    UnknownModel {
        /// The id the request named.
        model: String,
    },
    /// The request is malformed or out of range (HTTP 400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong and how to fix it.
        message: String,
        /// The request field at fault, when one is.
        param: Option<String>,
    },
    /// No route or no workers can serve the request now (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// The backend is at capacity; retry later (HTTP 429).
    #[error("{0}")]
    Busy(String),
    /// The paying account cannot pay: unknown key, insufficient balance, an allowance spent
    /// (HTTP 402).
    #[error("{0}")]
    Payment(String),
    /// The API token is refused: forged, expired, revoked or for another gateway (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The API token's user is past its rate or concurrency limit (HTTP 429, `Retry-After`).
    #[error("{message}; retry after {retry_after_secs} s")]
    RateLimited {
        /// Which limit.
        message: String,
        /// When a retry may pass.
        retry_after_secs: u64,
    },
    /// A fault of the node (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

impl BackendError {
    /// A [`BadRequest`](Self::BadRequest) about the field `param`.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), param: Some(param.to_string()) }
    }

    /// A [`BadRequest`](Self::BadRequest) about no field in particular.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), param: None }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownModel { .. } => 404,
            Self::BadRequest { .. } => 400,
            Self::Unavailable(_) => 503,
            Self::Busy(_) | Self::RateLimited { .. } => 429,
            Self::Payment(_) => 402,
            Self::Unauthorized(_) => 401,
            Self::Internal(_) => 500,
        }
    }

    /// OpenAI's `error.type` for this error.
    pub fn openai_type(&self) -> &'static str {
        match self {
            Self::UnknownModel { .. } | Self::BadRequest { .. } | Self::Unauthorized(_) => {
                "invalid_request_error"
            }
            Self::Unavailable(_) | Self::Internal(_) => "server_error",
            Self::Busy(_) | Self::RateLimited { .. } => "rate_limit_error",
            Self::Payment(_) => "insufficient_quota",
        }
    }

    /// A short machine-readable code (OpenAI's `error.code`; also the JSON-RPC error's data).
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownModel { .. } => "model_not_found",
            Self::BadRequest { .. } => "invalid_value",
            Self::Unavailable(_) => "unavailable",
            Self::Busy(_) => "busy",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::Payment(_) => "payment_required",
            Self::Unauthorized(_) => "invalid_api_key",
            Self::Internal(_) => "internal_error",
        }
    }

    /// Seconds after which a retry may pass (the `Retry-After` header), for a rate limit.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The request field at fault (OpenAI's `error.param`).
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::UnknownModel { .. } => Some("model"),
            Self::BadRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }
}

/// Errors setting up the APIs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP listener could not be opened.
    #[error("cannot listen for the OpenAI-compatible API on {addr}: {source}; pass --api-port to pick another port")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// A JSON-RPC method name clashed with one already registered.
    #[error("registering the generation JSON-RPC methods: {0}")]
    Rpc(#[from] jsonrpsee::core::RegisterMethodError),
    /// The local engine failed to load.
    #[error(transparent)]
    Engine(#[from] bitorch_inference::Error),
}
