//! What the APIs need from the node: the [`Backend`] trait and the types that cross it.

use crate::BackendError;
use bitorch_inference::{ChatMessage, SamplingParams, Tokenizer};
use bitorch_primitives::AccountId;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use tokio::sync::mpsc;

/// A fresh random seed (the standard library's per-process random keys, mixed with the time).
fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// A boxed, sendable future (keeps [`Backend`] usable as `Arc<dyn Backend>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The events of one generation, in order: any number of [`Event::Text`], then exactly one
/// [`Event::Finished`] or [`Event::Error`]. Dropping the receiver cancels the generation.
pub type Events = mpsc::Receiver<Event>;

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// OpenAI's default temperature, used when a request gives none.
pub const DEFAULT_TEMPERATURE: f64 = 1.0;

/// What serves generations: a local engine ([`crate::LocalBackend`]) or, in the node, the
/// network gateway.
pub trait Backend: Send + Sync + 'static {
    /// The models served.
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, BackendError>>;

    /// Starts a chat generation. Errors known before the first token (unknown model, bad
    /// request, busy, no route, payment) come back here; later ones as [`Event::Error`].
    fn generate(&self, request: ChatRequest) -> BoxFuture<'_, Result<Events, BackendError>>;

    /// What the backend has done since it started (`bitorch_gatewayStats`).
    fn stats(&self) -> BoxFuture<'_, BackendStats>;
}

/// What a backend has done since it started: counters an operator (or a test) reads instead
/// of its logs. A local engine fills in `generations` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStats {
    /// Generations started.
    pub generations: u64,
    /// Jobs opened on chain for a request (not ahead of one).
    pub jobs_opened: u64,
    /// Jobs opened ahead of the request that will use them.
    pub jobs_ahead_opened: u64,
    /// Requests that used the job opened ahead.
    pub jobs_ahead_used: u64,
    /// Jobs opened ahead that were closed unused at half their life (and replaced).
    pub jobs_ahead_replaced: u64,
    /// Requests paid from a channel (a job that pays for many requests).
    pub channel_requests: u64,
    /// Channels closed (idle, full, or at half their life); their workers claim in the window.
    pub channels_closed: u64,
    /// The channel new requests are paid from now, if any.
    pub channel_job: Option<u64>,
    /// The job opened ahead now, if any.
    pub ahead_job: Option<u64>,
    /// The last job opened ahead that was replaced, if any.
    pub last_replaced_job: Option<u64>,
    /// Requests refused because no route of available workers covers the model.
    pub refused_no_route: u64,
    /// Stage failures survived by re-routing.
    pub failovers: u64,
    /// Generations stopped because their client went away (closed the stream, stopped).
    pub cancelled: u64,
    /// Stage sessions asked of each worker (`local`, or its peer id).
    pub sessions_opened: std::collections::BTreeMap<String, u64>,
}

/// A served model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The id requests name it by.
    pub id: String,
    /// Who serves it (OpenAI's `owned_by`).
    pub owned_by: String,
    /// Its context window, in tokens.
    pub context_length: u32,
    /// When it became available, in Unix seconds (OpenAI's `created`).
    pub created: u64,
}

/// Who a message is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant (OpenAI's `system` and `developer`).
    System,
    /// The user.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// The role's name in chat templates and in OpenAI's API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who it is from.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Who pays for a generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Payer {
    /// The node's API account (`--api-account SURI`; `//Alice` on a dev chain).
    #[default]
    Node,
    /// This account; the node must hold its key.
    Account(AccountId),
    /// The user of this API token (`btr_…`), from the allowance they gave this gateway on
    /// chain; the backend checks it.
    Token(String),
}

/// A chat generation request, already checked for shape by the front-end that parsed it
/// ([`validate`](Self::validate) checks the ranges).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model's id.
    pub model: String,
    /// The conversation so far; the answer continues it as the assistant.
    pub messages: Vec<Message>,
    /// Most tokens to generate; `None`: until the end of the answer or of the context.
    pub max_tokens: Option<u32>,
    /// Sampling temperature in `[0, 2]`; 0 is greedy.
    pub temperature: f64,
    /// Nucleus sampling in `(0, 1]`; 1 is off.
    pub top_p: f64,
    /// Seed of the sampler; `None`: a fresh random one.
    pub seed: Option<u64>,
    /// Stop before any of these strings (at most [`MAX_STOP_STRINGS`]).
    pub stop: Vec<String>,
    /// Who pays.
    pub payer: Payer,
    /// The most the client pays per layer per token, in base units (Bitorch's `max_price`);
    /// `None`: the gateway's default (`--max-price`).
    pub max_price: Option<bitorch_primitives::Balance>,
}

impl ChatRequest {
    /// The conversation rendered with `tokenizer`'s chat template (for the model `model`),
    /// the prompt the model continues as the assistant.
    pub fn render(&self, tokenizer: &Tokenizer, model: &str) -> Result<String, BackendError> {
        let template = tokenizer.chat_template().ok_or_else(|| {
            BackendError::Internal(format!(
                "the model '{model}' has no chat template we support (ChatML)"
            ))
        })?;
        let messages: Vec<ChatMessage<'_>> =
            self.messages.iter().map(|m| ChatMessage::new(m.role.as_str(), &m.content)).collect();
        Ok(template.render(&messages))
    }

    /// The sampler's parameters this request asks for (a fresh random seed when it gives
    /// none).
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: (self.top_p < 1.0).then_some(self.top_p),
            seed: self.seed.unwrap_or_else(random_seed),
            ..SamplingParams::greedy()
        }
    }

    /// How many tokens may follow a prompt of `prompt_len` tokens in a context of `context`
    /// (at most [`max_tokens`](Self::max_tokens)); a prompt that fills the context is refused
    /// as a bad request naming `messages`.
    pub fn room_after(&self, prompt_len: usize, context: usize) -> Result<usize, BackendError> {
        if prompt_len >= context {
            return Err(BackendError::bad_param(
                "messages",
                format!(
                    "the conversation is {prompt_len} tokens, but the model's context is \
                     {context}; shorten it"
                ),
            ));
        }
        Ok(self.max_tokens.map_or(usize::MAX, |m| m as usize).min(context - prompt_len))
    }

    /// A greedy request with one user message.
    pub fn new(model: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            messages: vec![Message::new(Role::User, user)],
            max_tokens: None,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            payer: Payer::Node,
            max_price: None,
        }
    }

    /// Checks the ranges, with a message naming the field and what it accepts.
    pub fn validate(&self) -> Result<(), BackendError> {
        if self.model.is_empty() {
            return Err(BackendError::bad_param("model", "model must name a served model"));
        }
        if self.messages.is_empty() {
            return Err(BackendError::bad_param(
                "messages",
                "messages must contain at least one message",
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(BackendError::bad_param("max_tokens", "max_tokens must be at least 1"));
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return Err(BackendError::bad_param(
                "temperature",
                format!("temperature must be between 0 and 2, got {}", self.temperature),
            ));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(BackendError::bad_param(
                "top_p",
                format!("top_p must be greater than 0 and at most 1, got {}", self.top_p),
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(BackendError::bad_param(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop strings, got {}", self.stop.len()),
            ));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(BackendError::bad_param(
                "stop",
                format!("stop strings are at most {MAX_STOP_BYTES} bytes, got {}", s.len()),
            ));
        }
        Ok(())
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The answer ended (end-of-sequence token) or a stop string appeared.
    Stop,
    /// `max_tokens` were generated or the context window is full.
    Length,
    /// The consumer went away.
    Cancelled,
}

impl FinishReason {
    /// The name used on the wire (OpenAI's `finish_reason`, except `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Tokens a generation used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, after the chat template.
    pub prompt_tokens: u32,
    /// Generated tokens (an end-of-sequence token included).
    pub completion_tokens: u32,
}

impl Usage {
    /// Prompt plus generated tokens.
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The tokens it used.
    pub usage: Usage,
    /// Who served it and what it cost, when the network did (`None` for a local engine).
    pub served: Option<Served>,
}

/// Who served a generation through the network, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Served {
    /// The job on chain that pays for it.
    pub job: Option<u64>,
    /// The job's price per layer per token, in plancks.
    #[serde(serialize_with = "as_string")]
    pub price_per_layer_token: u128,
    /// What the stages were acknowledged (layer-positions times the price), in plancks: at
    /// most what the workers can claim for it.
    #[serde(serialize_with = "as_string")]
    pub cost: u128,
    /// The stages of the final route, in layer order.
    pub route: Vec<RouteStage>,
    /// Workers that failed during the generation and were replaced.
    pub failovers: u32,
}

/// One stage of a route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteStage {
    /// The worker's account (SS58).
    pub worker: String,
    /// Its peer id; `None` for this node's own worker.
    pub peer: Option<String>,
    /// Its layers, `[start, end)`.
    pub layers: [u32; 2],
}

fn as_string<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// One event of a generation's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next piece of the answer.
    Text(String),
    /// The generation ended; no more events follow.
    Finished(Finished),
    /// The generation failed; no more events follow.
    Error(BackendError),
}

/// A backend reached from outside the node (`--rpc-external`, `--api-external`): every request
/// must be paid by an API token's user; one that would be paid by the node's own account is
/// refused (401), so that nobody who can reach the port spends the operator's credits.
pub struct TokensOnly(pub std::sync::Arc<dyn Backend>);

impl Backend for TokensOnly {
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, BackendError>> {
        self.0.models()
    }

    fn generate(&self, request: ChatRequest) -> BoxFuture<'_, Result<Events, BackendError>> {
        if !matches!(request.payer, Payer::Token(_)) {
            return Box::pin(async {
                Err(BackendError::Unauthorized(
                    "this endpoint is open beyond loopback: a request needs an API token \
                     (`bitorch key api-token`, sent as the OpenAI api_key or the JSON-RPC \
                     api_key)"
                        .into(),
                ))
            });
        }
        self.0.generate(request)
    }

    fn stats(&self) -> BoxFuture<'_, BackendStats> {
        self.0.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let ok = ChatRequest::new("m", "hi");
        assert_eq!(ok.validate(), Ok(()));
        let param = |r: ChatRequest| match r.validate() {
            Err(BackendError::BadRequest { param, .. }) => param,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert_eq!(param(ChatRequest { temperature: -0.5, ..ok.clone() }).unwrap(), "temperature");
        assert_eq!(
            param(ChatRequest { temperature: f64::NAN, ..ok.clone() }).unwrap(),
            "temperature"
        );
        assert_eq!(param(ChatRequest { top_p: 0.0, ..ok.clone() }).unwrap(), "top_p");
        assert_eq!(param(ChatRequest { max_tokens: Some(0), ..ok.clone() }).unwrap(), "max_tokens");
        assert_eq!(param(ChatRequest { messages: vec![], ..ok.clone() }).unwrap(), "messages");
        assert_eq!(param(ChatRequest { stop: vec!["x".into(); 5], ..ok.clone() }).unwrap(), "stop");
        assert_eq!(param(ChatRequest { model: String::new(), ..ok }).unwrap(), "model");
    }
}
