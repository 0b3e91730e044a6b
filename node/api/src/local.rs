//! [`LocalBackend`]: generations on an [`Engine`] in this process.
//!
//! One generation runs at a time on a blocking thread (`spawn_blocking`; the engine uses all
//! cores for one sequence), with a small bounded queue behind it: a request that finds the queue
//! full is answered [`BackendError::Busy`] at once. Text pieces go to the consumer over a bounded
//! channel as the engine produces them; when the consumer drops its receiver, the engine's
//! callback returns `false` and the generation stops at the next piece.

use crate::backend::{
    Backend, BackendStats, BoxFuture, ChatRequest, Event, Events, FinishReason, Finished,
    ModelInfo, Usage,
};
use crate::BackendError;
use bitorch_inference::{Engine, FinishReason as EngineFinish, GenerateRequest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Semaphore};

/// Pieces buffered between the engine and a slow consumer before the engine waits.
const EVENT_BUFFER: usize = 64;

/// How a [`LocalBackend`] presents and queues its model.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The id requests name the model by.
    pub id: String,
    /// OpenAI's `owned_by`.
    pub owned_by: String,
    /// Generations that may wait while one runs; more are answered "busy".
    pub queue: usize,
}

impl LocalOptions {
    /// Options for a model called `id`, with a queue of 8.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into(), owned_by: "bitorch".into(), queue: 8 }
    }
}

/// A [`Backend`] that runs one [`Engine`] in this process. Cheap to clone (a handle).
#[derive(Clone)]
pub struct LocalBackend {
    engine: Arc<Engine>,
    info: ModelInfo,
    /// Running plus waiting generations.
    admit: Arc<Semaphore>,
    /// `admit`'s permits.
    capacity: usize,
    /// The one running generation.
    run: Arc<Semaphore>,
    /// Generations started.
    generations: Arc<AtomicU64>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend").field("model", &self.info).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

use bitorch_primitives::saturating_u32 as count;

impl LocalBackend {
    /// Serves `engine` under `options.id`.
    pub fn new(engine: Arc<Engine>, options: LocalOptions) -> Self {
        let info = ModelInfo {
            id: options.id,
            owned_by: options.owned_by,
            context_length: count(engine.pipeline().context_length()),
            created: unix_now(),
        };
        let capacity = options.queue.saturating_add(1);
        Self {
            engine,
            info,
            admit: Arc::new(Semaphore::new(capacity)),
            capacity,
            run: Arc::new(Semaphore::new(1)),
            generations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The engine generations run on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The model served.
    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// The engine request a chat request runs as: the conversation rendered with the model's
    /// chat template, given to the engine as a plain prompt. A one-message conversation gives
    /// the same prompt as `GenerateRequest { chat: true, .. }`.
    pub fn engine_request(&self, req: &ChatRequest) -> Result<GenerateRequest, BackendError> {
        let mut out = GenerateRequest::new(req.render(self.engine.tokenizer(), &self.info.id)?, 0);
        // Past the context the engine stops by itself (finish reason "length").
        out.max_tokens = req.max_tokens.map_or(usize::MAX, |m| m as usize);
        out.sampling = req.sampling();
        out.stop = req.stop.clone();
        Ok(out)
    }

    async fn start(&self, req: ChatRequest) -> Result<Events, BackendError> {
        req.validate()?;
        if req.model != self.info.id {
            return Err(BackendError::UnknownModel { model: req.model });
        }
        let gen = self.engine_request(&req)?;
        // Tokenize up front (off the async threads) so an over-long prompt is a 400, not an
        // error in the middle of a stream.
        let engine = self.engine.clone();
        let prompt = gen.prompt.clone();
        let prompt_len = tokio::task::spawn_blocking(move || engine.tokenizer().encode(&prompt))
            .await
            .map_err(|e| BackendError::Internal(format!("tokenizer task failed: {e}")))?
            .map_err(|e| BackendError::Internal(e.to_string()))?
            .len();
        req.room_after(prompt_len, self.engine.pipeline().context_length())?;
        let admit = self.admit.clone().try_acquire_owned().map_err(|_| {
            BackendError::Busy(format!(
                "{} generations are running or waiting for '{}'; try again shortly",
                self.capacity, self.info.id
            ))
        })?;
        self.generations.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let engine = self.engine.clone();
        let run = self.run.clone();
        tokio::spawn(async move {
            let _admit = admit;
            let Ok(_run) = run.acquire_owned().await else { return };
            if tx.is_closed() {
                tracing::debug!(target: "api::local", "consumer left while queued");
                return;
            }
            let pieces = tx.clone();
            let result = tokio::task::spawn_blocking(move || {
                engine
                    .generate(&gen, |piece| pieces.blocking_send(Event::Text(piece.into())).is_ok())
            })
            .await;
            let event = match result {
                Ok(Ok(out)) => {
                    let finish_reason = match out.finish {
                        EngineFinish::Eos | EngineFinish::Stop => FinishReason::Stop,
                        EngineFinish::Length | EngineFinish::ContextFull => FinishReason::Length,
                        EngineFinish::Cancelled => FinishReason::Cancelled,
                    };
                    tracing::debug!(target: "api::local", tokens = out.tokens.len(),
                        tokens_per_sec = out.tokens_per_sec(), reason = finish_reason.as_str(),
                        "generation done");
                    Event::Finished(Finished {
                        finish_reason,
                        usage: Usage {
                            prompt_tokens: count(out.prompt_tokens.len()),
                            completion_tokens: count(out.tokens.len()),
                        },
                        served: None,
                    })
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "api::local", error = %e, "generation failed");
                    Event::Error(match e {
                        bitorch_inference::Error::PromptTooLong { .. }
                        | bitorch_inference::Error::Sampling(_) => {
                            BackendError::bad_request(e.to_string())
                        }
                        e => BackendError::Internal(e.to_string()),
                    })
                }
                Err(e) => {
                    tracing::error!(target: "api::local", error = %e, "generation task panicked");
                    Event::Error(BackendError::Internal("the generation task panicked".into()))
                }
            };
            // The consumer may be gone; nothing to tell then.
            let _ = tx.send(event).await;
        });
        Ok(rx)
    }
}

impl Backend for LocalBackend {
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, BackendError>> {
        Box::pin(async move { Ok(vec![self.info.clone()]) })
    }

    fn generate(&self, request: ChatRequest) -> BoxFuture<'_, Result<Events, BackendError>> {
        Box::pin(self.start(request))
    }

    fn stats(&self) -> BoxFuture<'_, BackendStats> {
        let generations = self.generations.load(Ordering::Relaxed);
        Box::pin(async move { BackendStats { generations, ..Default::default() } })
    }
}
