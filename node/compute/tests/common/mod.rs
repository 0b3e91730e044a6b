//! Helpers shared by the integration tests: tiny random models, the real test model, and an
//! in-memory transport that calls workers directly (through their wire encoding) and can make
//! one unreachable.
#![allow(dead_code)]

use bitorch_compute::{
    protocol::{decode_request, decode_response, encode},
    worker, Limits, ModelId, StageRequest, StageResponse, StageTransport, TransportError, Worker,
    WorkerConfig, WorkerHandle, WorkerInfo,
};
use bitorch_inference::{Pipeline, Sampler, SamplingParams, Stage};
use bitorch_primitives::{keys, AccountId, Pair, H256};
use candle_core::DType;
use std::{
    collections::HashMap,
    ops::Range,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
};

pub const GENESIS: H256 = H256::repeat_byte(0x6e);
pub const MODEL: ModelId = H256::repeat_byte(0x42);

#[allow(unused_imports)]
pub use bitorch_test_support::real_model;
pub use bitorch_test_support::tiny::Tiny;

/// The tiny model these tests use: six layers, so that a route has room for three stages.
pub const TINY: Tiny = Tiny {
    hidden: 64,
    inter: 160,
    layers: 6,
    heads: 4,
    kv_heads: 2,
    vocab: 97,
    context: 64,
    tie: false,
};

/// Writes a tiny random safetensors model (f32) into `dir`.
pub fn write_tiny(dir: &Path, t: &Tiny, seed: u64) {
    bitorch_test_support::tiny::write_safetensors(dir, t, seed, DType::F32, None);
}

/// The jobs' client in these tests: the gateway signs with its key, the transport tells
/// workers it is the client of every job.
pub const CLIENT: &str = "Client";

/// The dev key `//<name>`.
pub fn key(name: &str) -> Pair {
    keys::pair_from_suri(&format!("//{name}")).unwrap()
}

/// A worker config for the test model ids, with `max_sessions` sessions.
pub fn worker_config(max_sessions: usize) -> WorkerConfig {
    WorkerConfig { max_sessions, ..WorkerConfig::new(MODEL, GENESIS) }
}

/// Greedy (or seeded) tokens from a recording in-process pipeline session, the way
/// `Engine::generate_tokens` runs them (prefill, then one token per step), and its traces'
/// commitments. Recording sessions use the batch-invariant attention kernel, like workers.
pub fn reference(
    p: &Pipeline,
    prompt: &[u32],
    n: usize,
    sampling: &SamplingParams,
) -> (Vec<u32>, Vec<bitorch_commitment::Commitment>) {
    let mut s = p.new_session(true);
    let mut sampler = Sampler::new(sampling.clone()).unwrap();
    let mut history = prompt.to_vec();
    let mut logits = p.step(&mut s, prompt).unwrap();
    let mut out = Vec::new();
    loop {
        let t = sampler.sample(&logits, &history).unwrap();
        out.push(t);
        history.push(t);
        if out.len() == n {
            break;
        }
        logits = p.step(&mut s, &[t]).unwrap();
    }
    let commitments = s.traces().unwrap().iter().map(|t| t.commitment()).collect();
    (out, commitments)
}

struct Entry {
    handle: WorkerHandle,
    dead: AtomicBool,
    calls: AtomicUsize,
}

/// An in-memory transport: requests and answers go through their wire encoding to workers
/// running on their own threads, which are told that [`CLIENT`] is the client of every job
/// (what a node looks up on chain). A worker can be made unreachable ("killed") and back.
pub struct MemTransport {
    workers: HashMap<u32, Entry>,
    limits: Limits,
    log: Mutex<Vec<(u32, &'static str)>>,
    client: AccountId,
    /// Answers of a worker changed on their way back (a man in the middle, or a worker that
    /// answers otherwise than it computed).
    tamper: Mutex<HashMap<u32, Tamper>>,
    /// What a fresh lookup of the workers finds ([`StageTransport::find_workers`]); `None`:
    /// this transport cannot look them up.
    announced: Mutex<Option<Vec<WorkerInfo<u32>>>>,
    /// How many fresh lookups were made.
    lookups: AtomicUsize,
}

/// A change made to a worker's answers ([`MemTransport::tamper`]).
pub type Tamper = fn(StageResponse) -> StageResponse;

impl MemTransport {
    /// Spawns the workers, keyed by id.
    pub fn new(workers: Vec<(u32, Worker)>) -> Self {
        let workers = workers
            .into_iter()
            .map(|(id, w)| {
                let (handle, _thread) = worker::spawn(w, 8).unwrap();
                (id, Entry { handle, dead: AtomicBool::new(false), calls: AtomicUsize::new(0) })
            })
            .collect();
        let client = keys::account_of(&key(CLIENT));
        Self {
            workers,
            limits: Limits::default(),
            log: Mutex::new(Vec::new()),
            client,
            tamper: Mutex::new(HashMap::new()),
            announced: Mutex::new(None),
            lookups: AtomicUsize::new(0),
        }
    }

    /// A fresh lookup of the workers finds `workers` from now on.
    pub fn announce(&self, workers: Vec<WorkerInfo<u32>>) {
        *self.announced.lock().unwrap() = Some(workers);
    }

    /// How many fresh lookups of the workers the gateway made.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Changes every answer of worker `id` with `f` from now on.
    pub fn tamper(&self, id: u32, f: Tamper) {
        self.tamper.lock().unwrap().insert(id, f);
    }

    pub fn kill(&self, id: u32) {
        self.workers[&id].dead.store(true, Ordering::SeqCst);
    }

    pub fn revive(&self, id: u32) {
        self.workers[&id].dead.store(false, Ordering::SeqCst);
    }

    /// Requests that reached worker `id`.
    pub fn calls(&self, id: u32) -> usize {
        self.workers[&id].calls.load(Ordering::SeqCst)
    }

    pub fn handle(&self, id: u32) -> &WorkerHandle {
        &self.workers[&id].handle
    }

    /// (worker, request kind) of every request that reached a worker, in order.
    pub fn log(&self) -> Vec<(u32, &'static str)> {
        self.log.lock().unwrap().clone()
    }

    /// Sends raw bytes to a worker (bypassing the request encoder) and decodes the answer.
    pub async fn raw(&self, id: u32, bytes: Vec<u8>) -> StageResponse {
        let out = self.workers[&id].handle.call_bytes(bytes).await.unwrap();
        decode_response(&out, &self.limits).unwrap()
    }
}

impl StageTransport for MemTransport {
    type WorkerId = u32;

    async fn call(&self, worker: &u32, req: StageRequest) -> Result<StageResponse, TransportError> {
        let e = self
            .workers
            .get(worker)
            .ok_or_else(|| TransportError::Unreachable(format!("no worker {worker}")))?;
        if e.dead.load(Ordering::SeqCst) {
            return Err(TransportError::Unreachable(format!("worker {worker} is dead")));
        }
        let kind = match &req {
            StageRequest::Open { .. } => "open",
            StageRequest::Forward { .. } => "forward",
            StageRequest::Close { .. } => "close",
            StageRequest::Opening(_) => "opening",
        };
        e.calls.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push((*worker, kind));
        let bytes = encode(&req);
        assert_eq!(decode_request(&bytes, &self.limits).as_ref(), Ok(&req));
        let resp = e
            .handle
            .call_for(req, Some(self.client.clone()))
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let resp = match self.tamper.lock().unwrap().get(worker) {
            Some(f) => f(resp),
            None => resp,
        };
        Ok(decode_response(&encode(&resp), &self.limits)?)
    }

    async fn find_workers(&self, model: &ModelId) -> Option<Vec<WorkerInfo<u32>>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let announced = self.announced.lock().unwrap().clone()?;
        Some(announced.into_iter().filter(|w| w.model == *model).collect())
    }
}

/// The announcement of a worker.
pub fn info(id: u32, w: &Worker, tokens_per_sec: f64) -> WorkerInfo<u32> {
    let (s, e) = w.info().layers;
    WorkerInfo {
        id,
        account: w.account(),
        model: MODEL,
        layers: s..e,
        capacity: 4,
        tokens_per_sec,
        price: 0,
        relayed: false,
    }
}

/// Loads stages of a checkpoint.
pub fn stages(
    ckpt: &bitorch_inference::Checkpoint,
    ranges: &[Range<usize>],
    opts: &bitorch_inference::LoadOptions,
) -> Vec<Stage> {
    ranges.iter().map(|r| Stage::load(ckpt, r.clone(), opts).unwrap()).collect()
}

/// f32 dtype of tiny models.
pub const F32: DType = DType::F32;
