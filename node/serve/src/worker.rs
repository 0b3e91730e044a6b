//! The node as a worker: its stage as an actor, peers' stage requests, its DHT announcement.

use crate::chain::submit_and_wait;
use crate::error::{Error, Result};
use crate::gateway::Peer;
use crate::model::least_served;
use crate::traces::{Page, TraceStore};
use crate::{u32_of, TARGET};
use bitorch_compute::{
    protocol, ClaimedSession, OpeningRequest, StageError, StageRequest, StageResponse, Worker,
    WorkerConfig, WorkerHandle, WorkerInfo, WorkerStats, OPENING_PAGE_BYTES,
};
use bitorch_inference::Stage;
use bitorch_network::{Handle as NetHandle, PeerId, StageInbound, WorkerAnnouncement};
use bitorch_primitives::{AccountId, Balance, Pair, H256};
use bitorch_runtime::jobs::{self, Job, JobId, JobStatus};
use bitorch_runtime::Call;
use bitorch_service::Handle;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One-position forwards [`spawn_worker`] times to measure the stage's speed.
const BENCHMARK_STEPS: u32 = 16;
/// How often the announcement is checked against the worker's load.
const ANNOUNCE_CHECK: Duration = Duration::from_secs(2);

/// Runs `stage` as a worker for model `model` with at most `max_sessions` sessions, as the
/// account of `key` (the one vouchers name); measures its speed first ([`Worker::benchmark`]).
pub fn spawn_worker(
    stage: Stage,
    key: Pair,
    model: H256,
    genesis: H256,
    max_sessions: usize,
    cheat: Option<bitorch_compute::Cheat>,
    price: Balance,
) -> Result<(WorkerHandle, WorkerInfo<Peer>)> {
    let mut config = WorkerConfig::new(model, genesis);
    config.max_sessions = max_sessions.max(1);
    config.cheat = cheat;
    let mut w = Worker::new(stage, key, config);
    let rate = w.benchmark(BENCHMARK_STEPS).map_err(|e| Error::Benchmark(e.to_string()))?;
    let (layers, account) = (w.info().layers, w.account());
    tracing::info!(target: TARGET, layers = ?layers, tokens_per_sec = rate, "measured the stage");
    let capacity = u32_of(w.config().max_sessions);
    // The thread stops when every handle is dropped.
    let (handle, _thread) =
        bitorch_compute::worker::spawn(w, 64).map_err(|e| Error::Spawn(e.to_string()))?;
    let info = WorkerInfo {
        id: Peer::Local,
        account,
        model,
        layers: layers.0..layers.1,
        capacity,
        tokens_per_sec: rate,
        price,
        relayed: false,
    };
    Ok((handle, info))
}

/// How long a stage request naming a job waits for this node to see the job on chain (its
/// block may reach the gateway's node a little earlier).
const JOB_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// The job `job` if it is open on chain for `model` now (before its deadline).
async fn open_job(chain: &Handle, job: JobId, model: H256) -> Option<Job> {
    let (Ok(Some(j)), Ok(best)) = (chain.job(job).await, chain.best().await) else {
        return None;
    };
    (j.status == JobStatus::Open && j.model == model && best.number < j.deadline).then_some(j)
}

/// The worker behind the stage server: its handle, the account it works as (the one a
/// session's authorization and vouchers must name), and where the leaves of its claimed
/// sessions are kept for audits.
#[derive(Clone)]
pub struct StageWorker {
    /// The worker actor.
    pub handle: WorkerHandle,
    /// Its account.
    pub account: AccountId,
    /// Its claimed sessions' leaves.
    pub traces: Arc<TraceStore>,
    /// The chain's genesis hash (what auditors' opening requests are signed for).
    pub genesis: H256,
    /// For the adversarial tests only: refuse every opening.
    pub refuse_openings: bool,
    /// Its price per layer per token: sessions for jobs paying less are refused.
    pub price: Balance,
}

/// Who may open sessions that no job pays for: nobody on a public worker, or the peers its
/// operator names (`--allow-unpaid`, e.g. their own gateway nodes).
#[derive(Debug, Clone, Default)]
pub struct UnpaidPolicy {
    allowed: HashSet<PeerId>,
}

impl UnpaidPolicy {
    /// Unpaid sessions for these peers only.
    pub fn allow(peers: impl IntoIterator<Item = PeerId>) -> Self {
        Self { allowed: peers.into_iter().collect() }
    }

    /// Whether `peer` may open a session without a job.
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.allowed.contains(peer)
    }
}

/// The client of the job a paid opening names, once this node sees the job open on chain for
/// the model (waiting up to [`JOB_VISIBLE_WAIT`]: its block may reach the gateway's node a
/// little earlier); [`StageError::JobNotOpen`] otherwise, since the worker would not be paid.
/// `None` for any other request (a session knows its client from its opening). A job that
/// pays less per layer-token than `price` is refused ([`StageError::PriceTooLow`]).
pub(crate) async fn job_client(
    chain: &Handle,
    req: &StageRequest,
    price: Balance,
) -> Result<Option<AccountId>, StageError> {
    let StageRequest::Open { job: Some(job), model, .. } = req else { return Ok(None) };
    let (job, model) = (*job, *model);
    let deadline = tokio::time::Instant::now() + JOB_VISIBLE_WAIT;
    loop {
        if let Some(j) = open_job(chain, job, model).await {
            if j.price_per_layer_token < price {
                return Err(StageError::PriceTooLow {
                    job,
                    offered: j.price_per_layer_token,
                    asked: price,
                });
            }
            // Who signs the session: the client, or the gateway that opened the job for it.
            return Ok(Some(j.signer().clone()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StageError::JobNotOpen { job });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Answers one peer's stage request with `worker`: decodes it (bytes that do not decode are
/// answered [`StageError::Malformed`]), refuses a session without a job unless `unpaid`
/// allows the peer ([`StageError::JobRequired`]), and one opened for a job that is not open on
/// `chain` for the model ([`StageError::JobNotOpen`]); the worker itself refuses an opening the
/// job's client did not sign for it ([`StageError::Unauthorized`]) and a step the client did
/// not acknowledge the work before ([`StageError::VoucherRequired`]). `None`: the worker has
/// stopped (the request is refused).
async fn answer(
    worker: &StageWorker,
    chain: &Handle,
    unpaid: &UnpaidPolicy,
    peer: PeerId,
    bytes: &[u8],
) -> Option<StageResponse> {
    let req = match protocol::decode_request(bytes, &protocol::Limits::default()) {
        Ok(req) => req,
        Err(e) => {
            tracing::debug!(target: TARGET, %peer, error = %e, "malformed stage request");
            return Some(StageResponse::Error(StageError::Malformed(e)));
        }
    };
    if matches!(req, StageRequest::Open { job: None, .. }) && !unpaid.allows(&peer) {
        tracing::info!(target: TARGET, %peer, "refused a session: no job pays for it");
        return Some(StageResponse::Error(StageError::JobRequired));
    }
    if let StageRequest::Opening(o) = &req {
        return Some(serve_opening(worker, chain, o).await);
    }
    let client = match job_client(chain, &req, worker.price).await {
        Ok(client) => client,
        Err(e) => {
            tracing::info!(target: TARGET, %peer, error = %e, "refused a session");
            return Some(StageResponse::Error(e));
        }
    };
    match worker.handle.call_for(req, client).await {
        Ok(answer) => Some(answer),
        Err(e) => {
            tracing::warn!(target: TARGET, %peer, error = %e, "the worker stopped");
            None
        }
    }
}

/// The opening an assigned auditor asked for: only for a claim of this worker's, under an
/// open audit the requester is assigned to and signed for; from the leaves kept on disk.
async fn serve_opening(worker: &StageWorker, chain: &Handle, o: &OpeningRequest) -> StageResponse {
    let refuse = |reason: &str| {
        tracing::info!(target: TARGET, job = o.job, claim = o.claim_index, reason, "refused an opening");
        StageResponse::Error(StageError::NoOpening {
            job: o.job,
            claim_index: o.claim_index,
            reason: reason.into(),
        })
    };
    if worker.refuse_openings {
        return refuse("this worker refuses openings (--unsafe-cheat refuse-openings)");
    }
    if !o.verify(&worker.genesis) {
        return refuse("not signed by the auditor it names");
    }
    let Ok(Some(job)) = chain.job(o.job).await else { return refuse("no such job") };
    let Some(claim) = job.claims.get(o.claim_index as usize) else {
        return refuse("no such claim");
    };
    if claim.voucher.worker != worker.account {
        return refuse("not this worker's claim");
    }
    let Some(audit) = claim.audit.as_ref().filter(|a| a.outcome.is_none()) else {
        return refuse("the claim is not under an open audit");
    };
    if !audit.auditors.iter().any(|(a, _)| *a == o.auditor) {
        return refuse("the requester is not one of the claim's auditors");
    }
    let (store, v, last) = (worker.traces.clone(), claim.voucher.clone(), audit.last);
    let page = Page { from: o.from, last, positions: v.positions, max_bytes: OPENING_PAGE_BYTES };
    let opened = tokio::task::spawn_blocking(move || store.opening(v.job, &v.session, page)).await;
    match opened {
        Ok(Ok(opening)) => {
            tracing::info!(target: TARGET, job = o.job, claim = o.claim_index, from = o.from,
                rows = opening.inputs.rows(), last, "opened a claim");
            StageResponse::Opening(opening)
        }
        Ok(Err(reason)) => refuse(&reason),
        Err(_) => refuse("reading the trace failed"),
    }
}

/// Serves peers' stage requests (`/bitorch/stage/1`, as the network delivers them) until
/// `requests` closes: one task per request, so that one long forward pass holds up no other.
/// Until `worker` holds a worker (while the model is registered and loaded) requests are
/// refused. Sessions without a job are served only for the peers `unpaid` allows. The network
/// already bounds how many requests wait, and for how long.
pub async fn serve_stages(
    mut requests: mpsc::Receiver<StageInbound>,
    worker: watch::Receiver<Option<StageWorker>>,
    chain: Handle,
    unpaid: UnpaidPolicy,
) {
    let unpaid = std::sync::Arc::new(unpaid);
    while let Some(StageInbound { peer, request, reply }) = requests.recv().await {
        // Dropping `reply` refuses the request.
        let Some(worker) = worker.borrow().clone() else { continue };
        let (chain, unpaid) = (chain.clone(), unpaid.clone());
        tokio::spawn(async move {
            let answer = answer(&worker, &chain, &unpaid, peer, &request).await;
            if let Some(resp) = answer {
                let _ = reply.send(protocol::encode(&resp));
            }
        });
    }
}

/// How often the worker's claims are collected and submitted.
const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// Submits the worker's claims on chain until `cancel` (and once more then): every
/// [`CLAIM_EVERY`] it closes the sessions of jobs that stopped taking work, takes the latest
/// vouchers of the paid sessions closed or evicted since
/// ([`WorkerHandle::take_claims`]) and submits them as `Claim` calls signed by the worker's
/// `key`, waiting for their inclusion. A claim the chain refuses is logged and dropped (it
/// would be refused again).
pub async fn submit_claims(
    chain: Handle,
    key: Pair,
    worker: WorkerHandle,
    traces: Arc<TraceStore>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut pruned_at = std::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(CLAIM_EVERY) => false,
        };
        close_stopped_jobs(&chain, &worker).await;
        let Ok(claims) = worker.take_claims().await else { break };
        let mut calls = Vec::with_capacity(claims.len());
        for ClaimedSession { claim: voucher, leaves } in claims {
            let job = voucher.voucher.job;
            // Kept for the audits the chain may choose, before the claim exists on chain.
            let (store, session) = (traces.clone(), voucher.voucher.session);
            match tokio::task::spawn_blocking(move || store.save(job, &session, &leaves)).await {
                Ok(Ok(())) => {}
                other => tracing::warn!(target: TARGET, job, ok = other.is_ok(),
                    "cannot keep a claimed session's trace; an audit of it will fail"),
            }
            let call = Call::Jobs(jobs::Call::Claim { voucher });
            if worth_claiming(&chain, &call).await {
                calls.push(call);
            } else {
                tracing::info!(target: TARGET, job, "a claim worth less than its fee is dropped");
            }
        }
        if !calls.is_empty() {
            let n = calls.len();
            match submit_and_wait(&chain, &key, calls).await {
                Ok(()) => tracing::info!(target: TARGET, claims = n, "claims included"),
                Err(e) => tracing::warn!(target: TARGET, claims = n, error = %e, "claims failed"),
            }
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = std::time::Instant::now();
            prune(&chain, &traces).await;
        }
        if stopping {
            break;
        }
    }
}

/// Closes the open sessions of jobs that stopped taking work (closed by their client, past
/// their deadline, or gone), so that what was acknowledged is claimed now, inside the job's
/// claim window, rather than when the session would be evicted as idle: a client that vanished
/// mid-generation never closes its sessions, and the idle timeout may outlast the window.
async fn close_stopped_jobs(chain: &Handle, worker: &WorkerHandle) {
    let Ok(paid) = worker.paid_jobs().await else { return };
    for job in paid {
        // A query that fails closes nothing.
        let status = chain.job(job).await.map(|j| j.map(|j| j.status));
        if matches!(status, Ok(s) if s != Some(jobs::JobStatus::Open)) {
            let _ = worker.close_job(job).await;
        }
    }
}

/// How often the traces of finished jobs are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Removes the traces of jobs that no longer hold escrow (settled or refunded: no audit can
/// open them any more).
async fn prune(chain: &Handle, traces: &Arc<TraceStore>) {
    let store = traces.clone();
    let Ok(Ok(jobs)) = tokio::task::spawn_blocking(move || store.jobs()).await else { return };
    let mut finished = Vec::new();
    for job in jobs {
        // Settled, refunded or gone: finished. A query that fails keeps it.
        if matches!(chain.job(job).await, Ok(j) if !j.as_ref().is_some_and(|j| j.status.holds_escrow()))
        {
            finished.push(job);
        }
    }
    if finished.is_empty() {
        return;
    }
    let (store, n) = (traces.clone(), finished.len());
    match tokio::task::spawn_blocking(move || store.remove(&finished)).await {
        Ok(Ok(())) => tracing::debug!(target: TARGET, jobs = n, "removed finished jobs' traces"),
        Ok(Err(e)) => tracing::warn!(target: TARGET, error = %e, "pruning traces failed"),
        Err(_) => {}
    }
}

/// Bytes of a claim's extrinsic, a little over (signer, signature, nonce, mortality, call).
const CLAIM_BYTES: usize = 320;

/// Whether `call` (a claim) pays more than its transaction fee at its job's price.
async fn worth_claiming(chain: &Handle, call: &Call) -> bool {
    let Call::Jobs(jobs::Call::Claim { voucher }) = call else { return true };
    let Ok(Some(job)) = chain.job(voucher.voucher.job).await else {
        // Unknown here: let the chain say why.
        return true;
    };
    let fee = bitorch_runtime::compute_fee(call, CLAIM_BYTES, 0);
    voucher.voucher.amount(job.price_per_layer_token).is_some_and(|a| a > fee)
}

/// Tokens per second as announced (whole, at least 1).
fn announced_rate(rate: f64) -> u32 {
    if rate.is_finite() {
        (rate.round() as u32).max(1)
    } else {
        u32::MAX
    }
}

fn announcement(info: &WorkerInfo<Peer>, stats: Option<WorkerStats>) -> WorkerAnnouncement {
    let account: &[u8; 32] = info.account.as_ref();
    let (free, rate) = match stats {
        Some(s) => (u32_of(s.free()), s.tokens_per_sec.unwrap_or(info.tokens_per_sec)),
        None => (info.capacity, info.tokens_per_sec),
    };
    WorkerAnnouncement {
        model: info.model,
        layer_start: info.layers.start,
        layer_end: info.layers.end,
        capacity: info.capacity,
        free,
        tokens_per_sec: announced_rate(rate),
        account: *account,
        expires_at_ms: 0,
        price: info.price,
    }
}

/// Announces this node's worker `info` in the DHT (the network keeps it fresh).
pub async fn announce(net: &NetHandle, info: &WorkerInfo<Peer>) -> Result<()> {
    Ok(net.announce_worker(announcement(info, None)).await?)
}

/// Keeps the worker's announcement current until `cancel`: every couple of seconds its free
/// sessions and measured speed are read, and announced again when the free sessions changed
/// or the speed moved by a fifth. At shutdown [`withdraw`] takes the announcement back, so
/// that gateways stop routing to a node that is going away.
pub async fn keep_announced(
    net: NetHandle,
    worker: WorkerHandle,
    info: WorkerInfo<Peer>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last = announcement(&info, None);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(ANNOUNCE_CHECK) => {}
        }
        let Ok(stats) = worker.stats().await else { break };
        let now = announcement(&info, Some(stats));
        let (old, new) = (f64::from(last.tokens_per_sec), f64::from(now.tokens_per_sec));
        if now.free != last.free || (new - old).abs() > old / 5.0 {
            match net.announce_worker(now).await {
                Ok(()) => {
                    tracing::debug!(target: TARGET, free = now.free,
                        tokens_per_sec = now.tokens_per_sec, "announcement updated");
                    last = now;
                }
                Err(e) => {
                    tracing::warn!(target: TARGET, error = %e, "cannot update the announcement")
                }
            }
        }
    }
}

/// Withdraws the worker's announcement (on shutdown), waiting at most `within`.
pub async fn withdraw(net: &NetHandle, model: H256, within: Duration) {
    match tokio::time::timeout(within, net.withdraw_worker(model)).await {
        Ok(Ok(_)) => tracing::info!(target: TARGET, %model, "withdrew the worker from the DHT"),
        Ok(Err(e)) => tracing::warn!(target: TARGET, error = %e, "withdrawing the worker failed"),
        Err(_) => tracing::warn!(target: TARGET, "withdrawing the worker timed out"),
    }
}

/// The layers `--layers auto[:N]` serves: the range the workers the DHT announces for
/// `model` serve least ([`least_served`]). Waits (at most ~10 s) for a first peer when the node
/// has boot nodes, so that the lookup sees the network.
pub async fn choose_layers(
    net: &NetHandle,
    model: H256,
    num_layers: u32,
    span: Option<u32>,
    has_boot_nodes: bool,
) -> Range<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while has_boot_nodes && tokio::time::Instant::now() < deadline {
        if net.connected_peers().await.map(|p| !p.is_empty()).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let me = net.local_peer_id();
    let served: Vec<Range<u32>> = match net.find_workers(model).await {
        Ok(found) => found
            .into_iter()
            .filter(|(peer, _)| *peer != me)
            .map(|(_, a)| a.layer_start..a.layer_end)
            .collect(),
        Err(e) => {
            tracing::warn!(target: TARGET, error = %e, "finding workers failed; choosing alone");
            Vec::new()
        }
    };
    let layers = least_served(num_layers, span, &served);
    tracing::info!(target: TARGET, ?served, "--layers auto chose layers {}..{}", layers.start,
        layers.end);
    layers
}
