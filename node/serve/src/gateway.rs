//! The node as a paying gateway: a [`Backend`] that routes generations over the workers and
//! pays for them on chain.
//!
//! Jobs are channels: one job, opened from the API account, pays for many requests (up to
//! [`CHANNEL_REQUESTS`], and what its escrow of [`CHANNEL_CONTEXTS`] whole contexts covers), so
//! a request does not wait for a block: the chain sees a transaction per channel and a claim
//! per stage session, not a transaction per request. Per request the gateway plans a route (no
//! route, nothing reserved for a request that cannot run), reserves the request's worst case
//! from the current channel (or starts a new one: the job opened ahead, or one opened then),
//! runs the generation through [`Gateway`], which signs each worker's vouchers, streams its
//! text, and returns what it did not use to the channel. The workers claim for themselves. A
//! channel that is idle, full or at half its life is closed; claims still land in its claim
//! window, and the jobs pallet refunds the rest of the escrow after it.

use crate::chain::submit_and_wait;
use crate::{u32_of, TARGET};
use bitorch_api::{
    Backend, BackendError, BackendStats, BoxFuture, ChatRequest, Event, Events, FinishReason,
    Finished, ModelInfo, RouteStage, Served, Usage,
};
use bitorch_compute::{
    plan_priced, protocol, Gateway, GatewayConfig, GatewayRequest, ModelId, PlanError,
    StageRequest, StageResponse, StageTransport, TransportError, WorkerHandle, WorkerInfo,
};
use bitorch_inference::{FinishReason as GenFinish, StopStrings, TextStream, Tokenizer};
use bitorch_network::{Handle as NetHandle, PeerId};
use bitorch_primitives::{keys::account_of, keys::to_ss58, AccountId, Balance, Pair, H256};
use bitorch_runtime::{
    jobs::{self, JobId},
    Call,
};
use bitorch_service::Handle;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Mutex};

/// How the gateway addresses a worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// This node's own worker.
    Local,
    /// Another node's worker, over `/bitorch/stage/1`.
    Remote(PeerId),
}

/// The node's [`StageTransport`]: its own worker through its handle (an opening for a job
/// checked against the chain as a peer's would be), others' over the network.
pub struct NodeTransport {
    /// This node's worker, and its announcement (its price: its sessions are checked as a
    /// peer's would be).
    local: Option<(WorkerHandle, WorkerInfo<Peer>)>,
    /// The network, where the other workers are found.
    net: Option<NetHandle>,
    chain: Handle,
    /// The model the workers are looked up for.
    model: H256,
    /// The workers last found in the DHT, and when.
    found: Mutex<Option<(std::time::Instant, Vec<WorkerInfo<Peer>>)>>,
}

impl NodeTransport {
    /// The workers to route over: this node's (with its free sessions now) and those
    /// announced in the DHT (looked up at most every [`WORKERS_TTL`], or now if `fresh`).
    async fn workers(&self, fresh: bool) -> Vec<WorkerInfo<Peer>> {
        let mut out = Vec::new();
        if let Some((handle, info)) = &self.local {
            let mut info = info.clone();
            if let Ok(stats) = handle.stats().await {
                info.capacity = u32_of(stats.free());
                info.tokens_per_sec = stats.tokens_per_sec.unwrap_or(info.tokens_per_sec);
            }
            out.push(info);
        }
        out.extend(self.remote_workers(fresh).await);
        tracing::debug!(target: TARGET, workers = out.len(), fresh, "workers for the route");
        out
    }

    async fn remote_workers(&self, fresh: bool) -> Vec<WorkerInfo<Peer>> {
        let Some(net) = &self.net else { return Vec::new() };
        let mut found = self.found.lock().await;
        if let Some((at, workers)) = &*found {
            if !fresh && at.elapsed() < WORKERS_TTL {
                return workers.clone();
            }
        }
        let announced = match net.find_workers(self.model).await {
            Ok(announced) => announced,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %e, "finding workers in the DHT failed");
                return Vec::new();
            }
        };
        let me = net.local_peer_id();
        // Peers reached only through a relay now: their stages cost a detour.
        let relayed: std::collections::HashSet<PeerId> = net
            .peer_links()
            .await
            .map(|links| links.into_iter().filter(|l| l.relayed).map(|l| l.peer).collect())
            .unwrap_or_default();
        let workers: Vec<_> = announced
            .into_iter()
            .filter(|(peer, _)| *peer != me)
            .map(|(peer, a)| WorkerInfo {
                id: Peer::Remote(peer),
                account: AccountId::new(a.account),
                model: a.model,
                layers: a.layer_start..a.layer_end,
                capacity: a.free,
                tokens_per_sec: f64::from(a.tokens_per_sec),
                // The chain takes no job that pays nothing: a worker asking 0 is paid the least
                // a job can pay.
                price: a.price.max(1),
                relayed: relayed.contains(&peer),
            })
            .collect();
        *found = Some((std::time::Instant::now(), workers.clone()));
        workers
    }
}

impl StageTransport for NodeTransport {
    type WorkerId = Peer;

    fn call(
        &self,
        worker: &Peer,
        req: StageRequest,
    ) -> impl std::future::Future<Output = Result<StageResponse, TransportError>> + Send {
        let (local, remote) = match worker {
            Peer::Local => (self.local.as_ref().map(|(h, _)| h.clone()), None),
            Peer::Remote(peer) => (None, self.net.clone().map(|net| (net, *peer))),
        };
        let chain = self.chain.clone();
        let price = self.local.as_ref().map_or(0, |(_, info)| info.price);
        async move {
            if let Some((net, peer)) = remote {
                if matches!(req, StageRequest::Open { .. }) {
                    tracing::info!(target: TARGET, worker = %peer, "opening a stage session");
                }
                let bytes = net
                    .stage_request(peer, protocol::encode(&req))
                    .await
                    .map_err(|e| TransportError::Unreachable(e.to_string()))?;
                return Ok(protocol::decode_response(&bytes, &protocol::Limits::default())?);
            }
            let h = local.ok_or_else(|| TransportError::Unreachable("no local worker".into()))?;
            let client = match crate::worker::job_client(&chain, &req, price).await {
                Ok(client) => client,
                Err(e) => return Ok(StageResponse::Error(e)),
            };
            h.call_for(req, client).await.map_err(|e| TransportError::Unreachable(e.to_string()))
        }
    }

    async fn find_workers(&self, model: &ModelId) -> Option<Vec<WorkerInfo<Peer>>> {
        (*model == self.model).then_some(())?;
        Some(self.workers(true).await)
    }
}

/// Who pays: the API account's key, and the most it pays.
pub struct Payer {
    /// The chain.
    pub chain: Handle,
    /// The paying account's key.
    pub key: Pair,
    /// The chain's genesis hash.
    pub genesis: H256,
    /// The most a request pays per layer per token unless it names its own `max_price`: the
    /// gateway opens each job at the cheapest price at which workers cover the model
    /// ([`plan_priced`]), never above this.
    pub max_price: Balance,
    /// Keep one job opened ahead (escrow for a whole context) for the next request, so that
    /// a request does not wait for its job to be included before its first token.
    pub job_ahead: bool,
}

/// How often the job opened ahead and the channels are checked for age.
const AHEAD_CHECK: Duration = Duration::from_secs(2);
/// A channel's escrow covers this many whole contexts over every layer.
pub const CHANNEL_CONTEXTS: u32 = 16;
/// Most requests one channel pays for (each stage session of a request is a claim on its job,
/// and a job takes a bounded number).
pub const CHANNEL_REQUESTS: u32 = 64;
/// A channel no request has used for this long is closed.
const CHANNEL_IDLE: Duration = Duration::from_secs(10);
/// An API token user's channel no request has used for this long is closed: longer than the
/// API account's, since a user's next request would otherwise wait for a new job's block (and
/// the channel escrows at most half of what the user's allowance has left).
const USER_CHANNEL_IDLE: Duration = Duration::from_secs(60);
/// A request reserves its worst case times this from its channel: a failover replays the
/// session's positions on a new worker, which is paid for them too.
const FAILOVER_MARGIN: u64 = 2;

/// A job paying for requests.
#[derive(Debug, Clone)]
struct Channel {
    id: JobId,
    /// Layer-positions of its escrow no request has reserved.
    left: u64,
    /// Requests it may still take.
    requests_left: u32,
    /// Block after which workers take no new sessions for it.
    deadline: u64,
    /// Blocks from opening to the deadline.
    lifetime: u64,
    /// Requests running on it.
    in_flight: u32,
    /// When a request last ended on it (or it started).
    last_used: std::time::Instant,
    /// Takes no new requests; closed once the last running one ends.
    retired: bool,
    /// Its job's price per layer per token.
    price: Balance,
    /// Whose job it is: the API account's (`None`) or an API token user's, paid from their
    /// allowance.
    user: Option<AccountId>,
}

impl Channel {
    /// Whether it can take `user`'s request reserving `need` layer-positions at block `best`
    /// at `price`: the same payer and price, enough escrow, a request slot, and at least half
    /// its life ahead.
    fn takes(&self, need: u64, best: u64, price: Balance, user: Option<&AccountId>) -> bool {
        !self.retired
            && self.user.as_ref() == user
            && self.price == price
            && self.left >= need
            && self.requests_left > 0
            && best.saturating_add(self.lifetime / 2) < self.deadline
    }
}

/// A job opened ahead of the request that will use it.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    id: JobId,
    /// Positions its escrow covers.
    positions: u32,
    /// Block after which it takes no receipts.
    deadline: u64,
    /// Blocks from opening to the deadline.
    lifetime: u64,
    /// Its price per layer per token.
    price: Balance,
}

/// How often the gateway checks whether the job opened ahead is still at the price a request
/// would pay (workers came, went, or changed their prices).
const REPRICE_EVERY: Duration = Duration::from_secs(10);

/// How long the workers found in the DHT are reused before a new lookup.
const WORKERS_TTL: Duration = Duration::from_secs(3);

struct Inner {
    gateway: Gateway<NodeTransport>,
    model: H256,
    num_layers: u32,
    context_length: u32,
    tokenizer: Tokenizer,
    info: ModelInfo,
    payer: Payer,
    /// One job opening at a time for the API account, so the new job is known to be ours.
    opening: Mutex<()>,
    /// One job opening at a time per API token user (different users' jobs open in the same
    /// block), so the new job is known to be theirs.
    user_opening: std::sync::Mutex<std::collections::HashMap<AccountId, Arc<Mutex<()>>>>,
    /// The job opened ahead for the next request ([`Payer::job_ahead`]).
    ahead: Mutex<Option<Ahead>>,
    /// Told when a request takes the job opened ahead.
    taken: tokio::sync::Notify,
    /// The job ahead cannot be priced yet: no route covers the model (its workers are not
    /// found yet).
    no_route_yet: std::sync::atomic::AtomicBool,
    /// The channels: the newest takes new requests, retired ones close when their requests
    /// end (locked briefly, never across an await).
    channels: std::sync::Mutex<Vec<Channel>>,
    /// The job counters of [`BackendStats`] (locked briefly, never across an await).
    counts: std::sync::Mutex<BackendStats>,
    /// Limits on each API token user's requests.
    key_limits: KeyLimits,
    /// Each API token user's use of them.
    buckets: std::sync::Mutex<std::collections::HashMap<AccountId, Bucket>>,
}

/// A [`Backend`] running generations through the [`Gateway`] and paying for them on chain.
#[derive(Clone)]
pub struct GatewayBackend(Arc<Inner>);

/// What [`GatewayBackend::new`] needs.
pub struct GatewayOptions {
    /// The model id on chain.
    pub model: H256,
    /// The name requests use.
    pub name: String,
    /// Its layers.
    pub num_layers: u32,
    /// Its context window.
    pub context_length: u32,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// This node's worker, if it serves one.
    pub local: Option<(WorkerHandle, WorkerInfo<Peer>)>,
    /// The network, if the node has one: the workers announced there serve too.
    pub net: Option<NetHandle>,
    /// Who pays.
    pub payer: Payer,
    /// For the adversarial tests only: never acknowledge a worker's work (no vouchers).
    pub unsafe_withhold_vouchers: bool,
    /// Limits on each API token user's requests.
    pub key_limits: KeyLimits,
}

/// Limits on each API token user's requests: a token bucket (`per_minute`, up to `burst` at
/// once) and a cap on requests in flight. Past either, 429 with `Retry-After`.
#[derive(Clone, Copy, Debug)]
pub struct KeyLimits {
    /// Requests per minute, on average.
    pub per_minute: u32,
    /// Requests at once after an idle while.
    pub burst: u32,
    /// Requests in flight at once.
    pub concurrent: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self { per_minute: 60, burst: 10, concurrent: 4 }
    }
}

/// One user's use of its limits.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
    in_flight: u32,
}

/// A request counted against its user's concurrency; released when dropped.
struct InFlight {
    inner: Arc<Inner>,
    user: AccountId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut b = self.inner.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = b.get_mut(&self.user) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

impl GatewayBackend {
    /// A backend for one model.
    pub fn new(o: GatewayOptions) -> Self {
        let created =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let transport = NodeTransport {
            local: o.local,
            net: o.net,
            chain: o.payer.chain.clone(),
            model: o.model,
            found: Mutex::new(None),
        };
        // The API account is the jobs' client: it signs each paid session's authorization.
        let config = GatewayConfig {
            client: Some(o.payer.key.clone()),
            unsafe_withhold_vouchers: o.unsafe_withhold_vouchers,
            ..GatewayConfig::new(o.payer.genesis)
        };
        let gateway = Gateway::new(transport, config);
        Self(Arc::new(Inner {
            gateway,
            model: o.model,
            num_layers: o.num_layers,
            context_length: o.context_length,
            tokenizer: o.tokenizer,
            info: ModelInfo {
                id: o.name,
                owned_by: "bitorch".into(),
                context_length: o.context_length,
                created,
            },
            payer: o.payer,
            opening: Mutex::new(()),
            user_opening: std::sync::Mutex::new(std::collections::HashMap::new()),
            ahead: Mutex::new(None),
            taken: tokio::sync::Notify::new(),
            no_route_yet: std::sync::atomic::AtomicBool::new(false),
            channels: std::sync::Mutex::new(Vec::new()),
            counts: std::sync::Mutex::new(BackendStats::default()),
            key_limits: o.key_limits,
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }))
    }
}

impl GatewayBackend {
    /// Opens the first job ahead (with [`Payer::job_ahead`]), so that even the first request
    /// does not wait for a block.
    /// Also starts closing the channels that are idle, full or at half their life.
    pub fn prepare(&self) {
        if self.0.payer.job_ahead {
            tokio::spawn(self.0.clone().keep_ahead());
        }
        let inner = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            // Ends with the backend.
            while let Some(inner) = inner.upgrade() {
                inner.age_channels().await;
                drop(inner);
                tokio::time::sleep(AHEAD_CHECK).await;
            }
        });
    }

    /// Waits, at most `within`, until the first job opened ahead is on chain (at once without
    /// [`Payer::job_ahead`]); returns whether it is. A node opens its API after this, so that
    /// its first request does not wait for blocks: measured on the dev node, the first
    /// request's time to first token was 1.7 s when it came before the job ahead (it waited for
    /// that job's block, then for its own), 0.14 s after. Returns `false` at once while no
    /// route covers the model (the job ahead is opened at a route's price, once one does).
    pub async fn ready(&self, within: Duration) -> bool {
        if !self.0.payer.job_ahead {
            return true;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.0.ahead.lock().await.is_some() {
                return true;
            }
            if self.0.no_route_yet.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut BackendStats)) {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The counters, with the gateway's own (generations, failovers, sessions per worker).
    async fn stats(&self) -> BackendStats {
        let mut out = self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.ahead_job = self.ahead.lock().await.map(|a| a.id);
        out.channel_job = self.channels().iter().rev().find(|c| !c.retired).map(|c| c.id);
        let g = self.gateway.stats();
        out.generations = g.generations;
        out.failovers = g.failovers;
        out.sessions_opened = g
            .sessions_opened
            .into_iter()
            .map(|(peer, n)| {
                let name = match peer {
                    Peer::Local => "local".to_string(),
                    Peer::Remote(p) => p.to_string(),
                };
                (name, n)
            })
            .collect();
        out
    }

    fn me(&self) -> AccountId {
        account_of(&self.payer.key)
    }

    /// The workers to route over ([`NodeTransport::workers`]).
    async fn workers(&self) -> Vec<WorkerInfo<Peer>> {
        self.gateway.transport().workers(false).await
    }

    async fn submit(&self, calls: Vec<Call>) -> Result<(), String> {
        submit_and_wait(&self.payer.chain, &self.payer.key, calls).await
    }

    /// Opens a job for `positions` token positions at `price` and returns it, with its id, once
    /// it is on chain.
    async fn open_job(
        &self,
        positions: u32,
        price: Balance,
    ) -> Result<(JobId, jobs::Job), BackendError> {
        let _one = self.opening.lock().await;
        let me = self.me();
        let pay = |e: String| BackendError::Payment(format!("opening the job on chain: {e}"));
        let before = self.payer.chain.next_job_id().await.map_err(|e| pay(e.to_string()))?;
        let call = Call::Jobs(jobs::Call::OpenJob {
            model: self.model,
            max_tokens: positions,
            price_per_layer_token: price,
        });
        self.submit(vec![call]).await.map_err(pay)?;
        let found =
            self.payer.chain.newest_open_job(me, before).await.map_err(|e| pay(e.to_string()))?;
        found.ok_or_else(|| {
            pay("the job was not opened (is the account's free balance enough for the escrow?)"
                .into())
        })
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, Vec<Channel>> {
        // Plain data: a panic elsewhere cannot leave it half written.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job opened ahead, if it is at `price`, covers `need` layer-positions and has at
    /// least half its life left (a generation must start before the deadline).
    async fn take_ahead(&self, need: u64, price: Balance) -> Option<Ahead> {
        let mut ahead = self.ahead.lock().await;
        let a = (*ahead)?;
        let best = self.payer.chain.best().await.ok()?.number;
        let covers = u64::from(a.positions) * u64::from(self.num_layers) >= need;
        if a.price == price && covers && best.saturating_add(a.lifetime / 2) < a.deadline {
            *ahead = None;
            self.count(|c| c.jobs_ahead_used += 1);
            self.taken.notify_one();
            return Some(a);
        }
        None
    }

    /// Opens a job for a whole channel ([`CHANNEL_CONTEXTS`] contexts) at `price`.
    async fn open_channel_job(&self, price: Balance) -> Result<Ahead, BackendError> {
        let positions = self.context_length.saturating_mul(CHANNEL_CONTEXTS);
        let (id, job) = self.open_job(positions, price).await?;
        let lifetime = job.deadline.saturating_sub(job.opened_at);
        Ok(Ahead { id, positions: job.max_tokens, deadline: job.deadline, lifetime, price })
    }

    /// The price the job opened ahead is opened at: what a request with the default cap would
    /// pay, counting busy workers as usable (so that a price does not move, and the job ahead
    /// get replaced, each time a cheap worker is busy for a moment).
    async fn ahead_price(&self) -> Result<Balance, BackendError> {
        let workers: Vec<_> = self
            .workers()
            .await
            .into_iter()
            .map(|w| WorkerInfo { capacity: w.capacity.max(1), ..w })
            .collect();
        self.price_for(&workers, self.payer.max_price)
    }

    /// The price a request paying at most `cap` per layer-token is opened at, over `workers`
    /// ([`plan_priced`]: the cheapest price at which usable workers cover the model). Refused
    /// before anything is escrowed: 402 naming the cheapest price when every route costs more
    /// than `cap`, 503 when no route exists at all.
    fn price_for(
        &self,
        workers: &[WorkerInfo<Peer>],
        cap: Balance,
    ) -> Result<Balance, BackendError> {
        let cost = self.gateway.config().cost;
        let usable = |w: &WorkerInfo<Peer>| w.capacity > 0 && !self.gateway.is_banned(&w.id);
        match plan_priced(self.num_layers, workers, cap, cost, usable) {
            Ok((price, _)) => Ok(price),
            Err(e @ PlanError::TooExpensive { .. }) => Err(BackendError::Payment(e.to_string())),
            Err(e) => Err(BackendError::Unavailable(e.to_string())),
        }
    }

    /// Reserves `need` layer-positions for a request from a channel: the current one if it
    /// takes it, else a new one (the job opened ahead, or one opened now; only then does the
    /// request wait for a block), at `price`. Returns the job.
    async fn reserve(&self, need: u64, price: Balance) -> Result<JobId, BackendError> {
        let best = self.best_number().await;
        if let Some(id) = self.take_or_retire(None, need, best, price) {
            return Ok(id);
        }
        let a = match self.take_ahead(need, price).await {
            Some(a) => a,
            None => {
                let a = self.open_channel_job(price).await?;
                self.count(|c| c.jobs_opened += 1);
                a
            }
        };
        let capacity = u64::from(a.positions) * u64::from(self.num_layers);
        if capacity < need {
            self.close_channels(vec![a.id]);
            return Err(BackendError::bad_request(format!(
                "the request needs {need} layer-positions; a channel holds {capacity}"
            )));
        }
        tracing::info!(target: TARGET, job = a.id, deadline = a.deadline, "new channel");
        self.add_channel(a.id, capacity, need, a.deadline, a.lifetime, price, None);
        Ok(a.id)
    }

    /// The best block's number (0 if the chain does not answer).
    async fn best_number(&self) -> u64 {
        self.payer.chain.best().await.map(|h| h.number).unwrap_or(0)
    }

    /// Takes `need` layer-positions for a request paid by `user` (`None`: the API account)
    /// from the newest of that payer's channels that takes it at `price`; if none does,
    /// retires that payer's channels (closing those no request runs on) and returns `None`.
    fn take_or_retire(
        &self,
        user: Option<&AccountId>,
        need: u64,
        best: u64,
        price: Balance,
    ) -> Option<JobId> {
        let to_close = {
            let mut channels = self.channels();
            if let Some(c) = channels.iter_mut().rev().find(|c| c.takes(need, best, price, user)) {
                c.left -= need;
                c.requests_left -= 1;
                c.in_flight += 1;
                let id = c.id;
                drop(channels);
                self.count(|c| c.channel_requests += 1);
                return Some(id);
            }
            // None takes it: the payer's current ones are done with.
            for c in channels.iter_mut().filter(|c| c.user.as_ref() == user) {
                c.retired = true;
            }
            Self::drain_idle(&mut channels)
        };
        self.close_channels(to_close);
        None
    }

    /// A new channel for `user` (`None`: the API account) on job `id`, holding `capacity`
    /// layer-positions of which the request that opened it takes `need`.
    #[allow(clippy::too_many_arguments)]
    fn add_channel(
        &self,
        id: JobId,
        capacity: u64,
        need: u64,
        deadline: u64,
        lifetime: u64,
        price: Balance,
        user: Option<AccountId>,
    ) {
        self.channels().push(Channel {
            id,
            left: capacity.saturating_sub(need),
            requests_left: CHANNEL_REQUESTS - 1,
            deadline,
            lifetime,
            in_flight: 1,
            last_used: std::time::Instant::now(),
            retired: false,
            price,
            user,
        });
        self.count(|c| c.channel_requests += 1);
    }

    /// Reserves `need` layer-positions for an API token user's request from a channel of
    /// theirs: a job the gateway opened from their allowance, which pays for their next
    /// requests too until it is idle, full or at half its life, like the API account's. A
    /// new one escrows half of what the allowance has left (at most [`CHANNEL_CONTEXTS`]
    /// contexts, at least this request's need), so that another can open while the first
    /// one's unspent escrow waits for its settlement. One opening at a time per user; the
    /// first request of each user waits for its job's block, the next ones do not.
    async fn reserve_for(
        &self,
        user: &AccountId,
        need: u64,
        price: Balance,
    ) -> Result<JobId, BackendError> {
        if let Some(id) = self.take_or_retire(Some(user), need, self.best_number().await, price) {
            return Ok(id);
        }
        let lock = {
            let mut locks = self.user_opening.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(user.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        // Another request of this user may have opened one meanwhile.
        if let Some(id) = self.take_or_retire(Some(user), need, self.best_number().await, price) {
            return Ok(id);
        }
        let per_position = u128::from(self.num_layers).saturating_mul(price).max(1);
        let chain = |e: bitorch_service::Error| BackendError::Internal(e.to_string());
        let left = self.payer.chain.allowance(user.clone(), self.me()).await.map_err(chain)?;
        let affordable = left.map_or(0, |a| a.remaining) / per_position;
        let needed = need.div_ceil(u64::from(self.num_layers.max(1)));
        let most = u64::from(self.context_length.saturating_mul(CHANNEL_CONTEXTS));
        let positions = (affordable / 2).min(u128::from(most)) as u64;
        let positions = u32::try_from(positions.max(needed)).unwrap_or(u32::MAX);
        let (id, job) = self.open_job_for(user, positions, price).await?;
        self.count(|c| c.jobs_opened += 1);
        let capacity = u64::from(job.max_tokens) * u64::from(self.num_layers);
        tracing::info!(target: TARGET, job = id, user = %to_ss58(user), positions, "new channel for a user");
        let lifetime = job.deadline.saturating_sub(job.opened_at);
        self.add_channel(id, capacity, need, job.deadline, lifetime, price, Some(user.clone()));
        Ok(id)
    }

    /// A request on channel `id` ended having reserved `need` layer-positions and had `used`
    /// acknowledged: the rest goes back to the channel, and a retired channel whose last
    /// request this was is closed.
    fn release(&self, id: JobId, need: u64, used: u64) {
        let to_close = {
            let mut channels = self.channels();
            if let Some(c) = channels.iter_mut().find(|c| c.id == id) {
                if used > need {
                    // More failovers than the margin covers: some claim may find the escrow
                    // short; take no more requests on it.
                    tracing::warn!(target: TARGET, job = id, need, used,
                        "a request used more than it reserved");
                    c.retired = true;
                }
                c.left += need.saturating_sub(used);
                c.in_flight = c.in_flight.saturating_sub(1);
                c.last_used = std::time::Instant::now();
            }
            Self::drain_idle(&mut channels)
        };
        self.close_channels(to_close);
    }

    /// Removes the retired channels no request runs on; returns their jobs, to close.
    fn drain_idle(channels: &mut Vec<Channel>) -> Vec<JobId> {
        let (done, keep): (Vec<Channel>, Vec<Channel>) =
            channels.drain(..).partition(|c| c.retired && c.in_flight == 0);
        *channels = keep;
        done.into_iter().map(|c| c.id).collect()
    }

    /// Retires the channels idle for [`CHANNEL_IDLE`] or at half their life, and closes those
    /// no request runs on.
    async fn age_channels(&self) {
        let best = self.best_number().await;
        let to_close = {
            let mut channels = self.channels();
            for c in channels.iter_mut() {
                let limit = if c.user.is_some() { USER_CHANNEL_IDLE } else { CHANNEL_IDLE };
                let idle = c.in_flight == 0 && c.last_used.elapsed() >= limit;
                if idle || best.saturating_add(c.lifetime / 2) >= c.deadline {
                    c.retired = true;
                }
            }
            Self::drain_idle(&mut channels)
        };
        self.close_channels(to_close);
    }

    /// Closes these jobs on chain, in the background.
    fn close_channels(&self, ids: Vec<JobId>) {
        if ids.is_empty() {
            return;
        }
        self.count(|c| c.channels_closed += ids.len() as u64);
        let (chain, key) = (self.payer.chain.clone(), self.payer.key.clone());
        tokio::spawn(async move {
            for job in ids {
                let call = Call::Jobs(jobs::Call::CloseJob { job });
                match submit_and_wait(&chain, &key, vec![call]).await {
                    Ok(()) => tracing::info!(target: TARGET, job, "channel closed"),
                    Err(e) => {
                        tracing::warn!(target: TARGET, job, error = %e, "closing the channel failed")
                    }
                }
            }
        });
    }

    /// Keeps a job opened ahead ([`Payer::job_ahead`]) for as long as the node runs: opens
    /// one when there is none (retried with back-off: early on the transaction may not reach a
    /// proposer yet), and replaces one at half its life, closing it for a refund, so that an
    /// idle gateway still has a usable one. It is opened at the price a request with the
    /// default cap would pay now, and replaced when that price changes (workers came, went or
    /// changed their prices).
    async fn keep_ahead(self: Arc<Self>) {
        let mut wait = Duration::from_secs(1);
        let mut priced_at = tokio::time::Instant::now();
        loop {
            let current = *self.ahead.lock().await;
            let Some(a) = current else {
                // No route yet (workers not found, or none within the price): look again
                // soon, without backing off; the back-off is for the chain.
                let price = match self.ahead_price().await {
                    Ok(price) => {
                        self.no_route_yet.store(false, std::sync::atomic::Ordering::Relaxed);
                        price
                    }
                    Err(e) => {
                        self.no_route_yet.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(target: TARGET, error = %e, "no price for a job ahead yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                priced_at = tokio::time::Instant::now();
                match self.open_channel_job(price).await {
                    Ok(a) => {
                        self.count(|c| c.jobs_ahead_opened += 1);
                        tracing::info!(target: TARGET, job = a.id, deadline = a.deadline,
                            "opened a job ahead for the next channel");
                        *self.ahead.lock().await = Some(a);
                        wait = Duration::from_secs(1);
                    }
                    Err(e) => {
                        tracing::warn!(target: TARGET, error = %e, retry_in_secs = wait.as_secs(),
                            "cannot open a job ahead");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
                continue;
            };
            tokio::select! {
                _ = self.taken.notified() => continue,
                _ = tokio::time::sleep(AHEAD_CHECK) => {}
            }
            let best = self.best_number().await;
            let mut repriced = false;
            if priced_at.elapsed() >= REPRICE_EVERY {
                priced_at = tokio::time::Instant::now();
                repriced = self.ahead_price().await.is_ok_and(|p| p != a.price);
                if repriced {
                    tracing::info!(target: TARGET, job = a.id, "the workers' prices changed");
                }
            }
            if repriced || best.saturating_add(a.lifetime / 2) >= a.deadline {
                let mut ahead = self.ahead.lock().await;
                if ahead.map(|x| x.id) == Some(a.id) {
                    *ahead = None;
                    drop(ahead);
                    tracing::info!(target: TARGET, job = a.id, "replacing the job opened ahead");
                    self.count(|c| {
                        c.jobs_ahead_replaced += 1;
                        c.last_replaced_job = Some(a.id);
                    });
                    self.close_channels(vec![a.id]);
                }
            }
        }
    }

    async fn start(self: Arc<Self>, req: ChatRequest) -> Result<Events, BackendError> {
        req.validate()?;
        if req.model != self.info.id {
            return Err(BackendError::UnknownModel { model: req.model });
        }
        let mut token_cap = None;
        let user =
            match &req.payer {
                bitorch_api::Payer::Node => None,
                bitorch_api::Payer::Token(token) => {
                    let (user, cap) = self.token_user(token).await?;
                    token_cap = cap;
                    let held = self.admit(&user)?;
                    Some((user, held))
                }
                bitorch_api::Payer::Account(_) => return Err(BackendError::Payment(
                    "this node pays only from its API account (--api-account) or an API token's \
                     allowance"
                        .into(),
                )),
            };
        let prompt = self
            .tokenizer
            .encode(&req.render(&self.tokenizer, &self.info.id)?)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let max_new = req.room_after(prompt.len(), self.context_length as usize)?;
        let positions = u32_of(prompt.len() + max_new);
        // No route within the price, no job: nothing is escrowed for a request that cannot
        // run.
        let mut workers = self.workers().await;
        // The request's cap, else its token's, else this gateway's.
        let cap = req.max_price.or(token_cap).unwrap_or(self.payer.max_price);
        let mut price = self.price_for(&workers, cap);
        if price.is_err() {
            // The workers found a moment ago may predate one that just announced itself (or
            // the lookup answered before its record came): no route, look once more.
            workers = self.gateway.transport().workers(true).await;
            price = self.price_for(&workers, cap);
        }
        let price = match price {
            Ok(price) => price,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %e, "no route for the request");
                self.count(|c| c.refused_no_route += 1);
                return Err(e);
            }
        };
        // The request's worst case: every position on every layer, with room for failovers.
        let need = u64::from(positions) * u64::from(self.num_layers) * FAILOVER_MARGIN;
        let job = match user.as_ref().map(|(u, _)| u) {
            None => {
                let job = self.reserve(need, price).await?;
                tracing::info!(target: TARGET, job, prompt = prompt.len(), max_new, "paid from channel");
                job
            }
            Some(user) => {
                let job = self.reserve_for(user, need, price).await?;
                tracing::info!(target: TARGET, job, user = %to_ss58(user), prompt = prompt.len(), max_new, "paid from the user's allowance");
                job
            }
        };

        let greq = GatewayRequest {
            model: self.model,
            num_layers: self.num_layers,
            prompt,
            max_tokens: max_new,
            sampling: req.sampling(),
            eos: self.tokenizer.eos().to_vec(),
            job: Some(job),
            max_price: Some(price),
        };
        // At most one text event per token plus the tail and the end: never full.
        let (tx, rx) = mpsc::channel(max_new.saturating_add(2));
        let this = self.clone();
        tokio::spawn(async move {
            let used = this.run(greq, req.stop, tx, workers).await;
            // The user's place in their concurrency limit is held until here.
            drop(user);
            this.release(job, need, used);
        });
        Ok(rx)
    }

    /// Counts a request of `user` against its limits ([`KeyLimits`]): refused with 429 and
    /// when to retry when past them; otherwise held until the returned guard drops.
    fn admit(self: &Arc<Self>, user: &AccountId) -> Result<InFlight, BackendError> {
        let l = self.key_limits;
        let rate = f64::from(l.per_minute.max(1)) / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if buckets.len() > 100_000 {
            // Forget idle users with full buckets (they start full again anyway).
            buckets.retain(|_, b| b.in_flight > 0 || now.duration_since(b.last).as_secs() < 600);
        }
        let b = buckets.entry(user.clone()).or_insert(Bucket {
            tokens: f64::from(l.burst.max(1)),
            last: now,
            in_flight: 0,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate)
            .min(f64::from(l.burst.max(1)));
        b.last = now;
        if b.in_flight >= l.concurrent.max(1) {
            return Err(BackendError::RateLimited {
                message: format!(
                    "{} requests of this API token are in flight, the most it may have",
                    b.in_flight
                ),
                retry_after_secs: 1,
            });
        }
        if b.tokens < 1.0 {
            let wait = ((1.0 - b.tokens) / rate).ceil() as u64;
            return Err(BackendError::RateLimited {
                message: format!(
                    "this API token may make {} requests a minute ({} at once)",
                    l.per_minute, l.burst
                ),
                retry_after_secs: wait.max(1),
            });
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        Ok(InFlight { inner: Arc::clone(self), user: user.clone() })
    }

    /// The user an API token names, and the price cap it carries, once it verifies for this
    /// gateway and chain and the user's allowance for this gateway is on chain and unexpired
    /// (401 otherwise, saying which).
    async fn token_user(&self, token: &str) -> Result<(AccountId, Option<Balance>), BackendError> {
        let unauthorized =
            |why: String| BackendError::Unauthorized(format!("API token refused: {why}"));
        let t = bitorch_primitives::api_token::ApiToken::parse(token)
            .map_err(|e| unauthorized(e.to_string()))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        t.verify(&self.me(), &self.payer.genesis, now_ms)
            .map_err(|e| unauthorized(e.to_string()))?;
        let chain = |e: bitorch_service::Error| BackendError::Internal(e.to_string());
        let allowance =
            self.payer.chain.allowance(t.user.clone(), self.me()).await.map_err(chain)?;
        let Some(a) = allowance else {
            return Err(unauthorized(format!(
                "{} has no allowance for this gateway (never approved, or revoked)",
                to_ss58(&t.user)
            )));
        };
        let best = self.payer.chain.best().await.map_err(chain)?.number;
        if best >= a.expires_at {
            return Err(unauthorized(format!("the allowance expired at block {}", a.expires_at)));
        }
        Ok((t.user, t.max_price))
    }

    /// Opens a job of `max_tokens` positions paid from `user`'s allowance for this gateway,
    /// once it is on chain (402 when the allowance or the user's balance is short).
    async fn open_job_for(
        &self,
        user: &AccountId,
        max_tokens: u32,
        price: Balance,
    ) -> Result<(JobId, jobs::Job), BackendError> {
        let pay = |e: String| BackendError::Payment(e);
        let escrow = u128::from(max_tokens)
            .saturating_mul(u128::from(self.num_layers))
            .saturating_mul(price);
        let chain = |e: bitorch_service::Error| BackendError::Internal(e.to_string());
        let left = self.payer.chain.allowance(user.clone(), self.me()).await.map_err(chain)?;
        let remaining = left.map_or(0, |a| a.remaining);
        if remaining < escrow {
            return Err(pay(format!(
                "the request needs an escrow of {} but the allowance for this gateway has {} left; \
                 approve more with `bitorch wallet approve`",
                bitorch_primitives::format_balance(escrow),
                bitorch_primitives::format_balance(remaining)
            )));
        }
        let before = self.payer.chain.next_job_id().await.map_err(chain)?;
        let call = Call::Jobs(jobs::Call::OpenJobFor {
            client: user.clone(),
            model: self.model,
            max_tokens,
            price_per_layer_token: price,
        });
        self.submit(vec![call]).await.map_err(|e| pay(format!("opening the job on chain: {e}")))?;
        let found = self
            .payer
            .chain
            .newest_open_job_for(user.clone(), self.me(), before)
            .await
            .map_err(chain)?;
        found.ok_or_else(|| {
            pay("the job was not opened (is the user's free balance enough for the escrow?)".into())
        })
    }

    /// Runs the generation and streams it; returns the layer-positions its vouchers
    /// acknowledged.
    async fn run(
        &self,
        greq: GatewayRequest,
        stop: Vec<String>,
        tx: mpsc::Sender<Event>,
        workers: Vec<WorkerInfo<Peer>>,
    ) -> u64 {
        let job = greq.job.unwrap_or_default();
        let mut stream = TextStream::new();
        let mut stops = StopStrings::new(&stop);
        let mut stopped = false;
        let mut failed = None;
        let eos = greq.eos.clone();
        let result = self
            .gateway
            .generate(&workers, &greq, |tok| {
                if eos.contains(&tok) {
                    return ControlFlow::Continue(());
                }
                match stream.push(&self.tokenizer, tok) {
                    Ok(Some(piece)) => {
                        let (show, hit) = stops.push(&piece);
                        if !show.is_empty() {
                            let _ = tx.try_send(Event::Text(show));
                        }
                        stopped = hit;
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e.to_string()),
                }
                if stopped || failed.is_some() || tx.is_closed() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        let gen = match (result, failed) {
            (Ok(gen), None) => gen,
            (Ok(gen), Some(e)) => {
                let _ = tx.try_send(Event::Error(BackendError::Internal(e)));
                return gen.acknowledged;
            }
            (Err(failed), _) => {
                let e = failed.error;
                tracing::warn!(target: TARGET, job, error = %e, paid_stages = failed.receipts.len(),
                    "generation failed");
                let err = match &e {
                    bitorch_compute::Error::Plan(_)
                    | bitorch_compute::Error::TooManyFailures { .. } => {
                        BackendError::Unavailable(e.to_string())
                    }
                    bitorch_compute::Error::PromptTooLong { .. }
                    | bitorch_compute::Error::EmptyPrompt => {
                        BackendError::bad_request(e.to_string())
                    }
                    _ => BackendError::Internal(e.to_string()),
                };
                let _ = tx.try_send(Event::Error(err));
                // The stages that worked until the failure claim what they were acknowledged;
                // the rest of the reservation goes back to the channel.
                return failed.acknowledged;
            }
        };
        let cancelled = gen.finish == GenFinish::Cancelled && !stopped;
        if cancelled {
            self.count(|c| c.cancelled += 1);
            tracing::info!(target: TARGET, job, tokens = gen.tokens.len(),
                "the client went away: generation cancelled");
        }
        if !stopped && !cancelled {
            let tail = stream.finish(&self.tokenizer).unwrap_or_default();
            let (mut show, hit) = stops.push(&tail);
            if !hit {
                show.push_str(&stops.finish());
            }
            if !show.is_empty() {
                let _ = tx.try_send(Event::Text(show));
            }
            stopped = hit;
        }
        let finish_reason = match gen.finish {
            _ if stopped => FinishReason::Stop,
            GenFinish::Eos | GenFinish::Stop => FinishReason::Stop,
            GenFinish::Length | GenFinish::ContextFull => FinishReason::Length,
            GenFinish::Cancelled => FinishReason::Cancelled,
        };
        let price = greq.max_price.unwrap_or(0);
        let served = Served {
            job: greq.job,
            price_per_layer_token: price,
            cost: u128::from(gen.acknowledged).saturating_mul(price),
            route: gen
                .route
                .iter()
                .map(|w| RouteStage {
                    worker: to_ss58(&w.account),
                    peer: match &w.id {
                        Peer::Local => None,
                        Peer::Remote(p) => Some(p.to_string()),
                    },
                    layers: [w.layers.start, w.layers.end],
                })
                .collect(),
            failovers: gen.failovers,
        };
        let _ = tx.try_send(Event::Finished(Finished {
            finish_reason,
            usage: Usage {
                prompt_tokens: u32_of(gen.prompt_tokens.len()),
                completion_tokens: u32_of(gen.tokens.len()),
            },
            served: Some(served),
        }));
        for r in &gen.rejected {
            tracing::warn!(target: TARGET, job, worker = ?r.worker, reason = %r.reason,
                "stage's commitment rejected");
        }
        tracing::info!(target: TARGET, job, tokens = gen.tokens.len(),
            acknowledged = gen.acknowledged, secs = gen.prompt_secs + gen.generate_secs,
            "generation done");
        gen.acknowledged
    }
}

impl Backend for GatewayBackend {
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, BackendError>> {
        Box::pin(async move { Ok(vec![self.0.info.clone()]) })
    }

    fn generate(&self, request: ChatRequest) -> BoxFuture<'_, Result<Events, BackendError>> {
        Box::pin(self.0.clone().start(request))
    }

    fn stats(&self) -> BoxFuture<'_, BackendStats> {
        Box::pin(self.0.stats())
    }
}
