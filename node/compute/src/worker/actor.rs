//! The worker as an actor: a thread of its own owns the [`Worker`]; async code talks to it
//! through a [`WorkerHandle`] over a bounded channel, each request with a `oneshot` for its
//! answer.

use super::ClaimedSession;
use super::{Worker, WorkerStats, TARGET};
use crate::{
    error::WorkerStopped,
    protocol::{StageRequest, StageResponse},
};
use bitorch_primitives::{receipt::JobId, AccountId};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

enum Message {
    Call(StageRequest, Option<AccountId>, oneshot::Sender<StageResponse>),
    CallBytes(Vec<u8>, oneshot::Sender<Vec<u8>>),
    TakeClaims(oneshot::Sender<Vec<ClaimedSession>>),
    PaidJobs(oneshot::Sender<Vec<JobId>>),
    CloseJob(JobId, oneshot::Sender<usize>),
    Stats(oneshot::Sender<WorkerStats>),
}

/// A cloneable handle to a worker running on its own thread. The worker stops when every
/// handle is dropped.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    tx: mpsc::Sender<Message>,
}

/// The most sessions' steps run together.
const MAX_BATCH: usize = 16;

/// Runs `worker` on a new thread with a queue of `queue` requests (at least 1); senders wait
/// when it is full. Idle sessions are evicted even when no request comes. Steps of several
/// sessions waiting in the queue together run as one batch ([`Worker::handle_forwards`]).
pub fn spawn(
    mut worker: Worker,
    queue: usize,
) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel(queue.max(1));
    let tick =
        (worker.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let layers = worker.info.layers;
    let mut held: Option<Message> = None;
    let name = format!("bitorch-worker-{}-{}", layers.0, layers.1);
    let own_kernels = worker.stage.batches_exactly();
    let serve = move || loop {
        let next = match held.take() {
            Some(msg) => Ok(Some(msg)),
            None => rt.block_on(async { tokio::time::timeout(tick, rx.recv()).await }),
        };
        match next {
            Ok(Some(msg)) => match msg {
                Message::Call(StageRequest::Forward { session, pos, input, voucher }, _, reply) => {
                    if own_kernels {
                        bitorch_inference::prewake();
                    }
                    // Other sessions' steps waiting behind this one run with it: one pass
                    // over the weights for all of them.
                    let mut batch = vec![(session, pos, input, voucher)];
                    let mut replies = vec![reply];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Message::Call(
                                StageRequest::Forward { session, pos, input, voucher },
                                _,
                                reply,
                            )) if batch.iter().all(|b| b.0 != session) => {
                                batch.push((session, pos, input, voucher));
                                replies.push(reply);
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let answers = worker.handle_forwards(batch, Instant::now());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        // A dropped receiver only means the caller gave up waiting.
                        let _ = reply.send(answer);
                    }
                }
                Message::Call(req, client, reply) => {
                    let _ = reply.send(worker.handle_for(req, client.as_ref(), Instant::now()));
                }
                Message::CallBytes(bytes, reply) => {
                    let _ = reply.send(worker.handle_bytes(&bytes));
                }
                Message::TakeClaims(reply) => {
                    let _ = reply.send(worker.take_claims());
                }
                Message::PaidJobs(reply) => {
                    let _ = reply.send(worker.paid_jobs());
                }
                Message::CloseJob(job, reply) => {
                    let _ = reply.send(worker.close_job(job));
                }
                Message::Stats(reply) => {
                    let _ = reply.send(worker.stats());
                }
            },
            Ok(None) => {
                tracing::debug!(target: TARGET, ?layers, "all handles dropped; worker stops");
                break;
            }
            Err(_) => {
                worker.evict_idle(Instant::now());
            }
        }
    };
    // A stage on our integer kernels steps on the actor's thread itself (no hand-over to
    // another thread per step); one on candle's kernels hands its steps to rayon's pool.
    let thread = if own_kernels {
        bitorch_inference::spawn_engine_thread(name, serve)?
    } else {
        std::thread::Builder::new().name(name).spawn(serve)?
    };
    Ok((WorkerHandle { tx }, thread))
}

impl WorkerHandle {
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> Message,
    ) -> Result<T, WorkerStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(msg(tx)).await.map_err(|_| WorkerStopped)?;
        rx.await.map_err(|_| WorkerStopped)
    }

    /// Handles a request, not knowing any job's client ([`Worker::handle`]).
    pub async fn call(&self, req: StageRequest) -> Result<StageResponse, WorkerStopped> {
        self.ask(|tx| Message::Call(req, None, tx)).await
    }

    /// Handles a request for a job whose client is `client` ([`Worker::handle_for`]).
    pub async fn call_for(
        &self,
        req: StageRequest,
        client: Option<AccountId>,
    ) -> Result<StageResponse, WorkerStopped> {
        self.ask(|tx| Message::Call(req, client, tx)).await
    }

    /// Handles a request's bytes and returns the answer's bytes ([`Worker::handle_bytes`]).
    pub async fn call_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>, WorkerStopped> {
        self.ask(|tx| Message::CallBytes(bytes, tx)).await
    }

    /// Takes the claims of paid sessions closed or evicted ([`Worker::take_claims`]).
    pub async fn take_claims(&self) -> Result<Vec<ClaimedSession>, WorkerStopped> {
        self.ask(Message::TakeClaims).await
    }

    /// The jobs of its open paid sessions ([`Worker::paid_jobs`]).
    pub async fn paid_jobs(&self) -> Result<Vec<JobId>, WorkerStopped> {
        self.ask(Message::PaidJobs).await
    }

    /// Closes the open sessions of `job` ([`Worker::close_job`]).
    pub async fn close_job(&self, job: JobId) -> Result<usize, WorkerStopped> {
        self.ask(|tx| Message::CloseJob(job, tx)).await
    }

    /// Requests waiting in its queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Its load and measured speed ([`Worker::stats`]).
    pub async fn stats(&self) -> Result<WorkerStats, WorkerStopped> {
        self.ask(Message::Stats).await
    }
}
