//! The worker side of `/bitorch/stage/1` as the network hands it requests ([`serve_stages`]),
//! against a real chain service (dev spec, blocks authored by the test) and a worker running a
//! tiny random model: who may open a session, for which job, how far it runs without the
//! client's vouchers, and the worker's claim on chain with them.

use bitorch_chain_spec::ChainSpec;
use bitorch_compute::{
    protocol, Activation, OpeningRequest, SessionAuth, StageError, StageRequest, StageResponse,
    Worker, WorkerConfig, WorkerHandle,
};
use bitorch_inference::{Checkpoint, LoadOptions, Stage};
use bitorch_network::{PeerId, StageInbound};
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::receipt::Voucher;
use bitorch_primitives::{Pair, H256, UNIT};
use bitorch_runtime::{jobs, models, Call};
use bitorch_serve::{serve_stages, submit_claims, StageWorker, TraceStore, UnpaidPolicy};
use bitorch_service::{service, Chain, Handle, PoolLimits};
use bitorch_test_support::tiny::{write_safetensors, Tiny};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

struct Setup {
    chain: Handle,
    genesis: H256,
    model: H256,
    job: u64,
    bob: Pair,
    worker: WorkerHandle,
    traces: Arc<TraceStore>,
    requests: mpsc::Sender<StageInbound>,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A dev chain where Alice registered a 4-layer model and opened job 0 for it, and Bob's worker
/// serving layers 0..4 of a tiny model behind the stage server, which allows `allowed` to open
/// sessions without a job. Bob asks the job's price (1 BTR per layer-token).
async fn setup(allowed: PeerId) -> Setup {
    setup_priced(allowed, UNIT).await
}

/// [`setup`] with Bob's worker asking `price` per layer-token.
async fn setup_priced(allowed: PeerId, price: u128) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::open(&dir.path().join("db"), ChainSpec::dev().unwrap()).unwrap();
    let genesis = chain.genesis();
    let cancel = CancellationToken::new();
    let (chain, _task) = service::spawn(chain, PoolLimits::default(), cancel.clone());
    let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());

    let manifest = models::example_manifest(4);
    let model = manifest.id();
    let register = Call::Models(models::Call::Register { manifest });
    chain.sign_and_submit(alice.clone(), vec![register], 64).await.unwrap();
    chain.author_and_import(alice.clone()).await.unwrap();
    let open =
        Call::Jobs(jobs::Call::OpenJob { model, max_tokens: 16, price_per_layer_token: UNIT });
    chain.sign_and_submit(alice.clone(), vec![open], 64).await.unwrap();
    chain.author_and_import(alice.clone()).await.unwrap();
    assert_eq!(chain.job(0).await.unwrap().map(|j| j.client), Some(account_of(&alice)));

    let tiny = Tiny::default();
    write_safetensors(&dir.path().join("tiny"), &tiny, 7, candle_core::DType::F32, None);
    let ckpt = Checkpoint::open(dir.path().join("tiny")).unwrap();
    let stage = Stage::load(&ckpt, 0..tiny.layers, &LoadOptions::default()).unwrap();
    let worker = Worker::new(stage, bob.clone(), WorkerConfig::new(model, genesis));
    let (handle, _thread) = bitorch_compute::worker::spawn(worker, 8).unwrap();
    let traces = Arc::new(TraceStore::open(dir.path().join("traces")).unwrap());
    let worker = StageWorker {
        handle: handle.clone(),
        account: account_of(&bob),
        traces: traces.clone(),
        genesis,
        refuse_openings: false,
        price,
    };
    let (_keep, worker_rx) = watch::channel(Some(worker));
    let (requests, rx) = mpsc::channel(8);
    let unpaid = UnpaidPolicy::allow([allowed]);
    tokio::spawn(serve_stages(rx, worker_rx, chain.clone(), unpaid));
    // The stage server ends when `requests` is dropped; the watch sender may go now.
    drop(_keep);
    Setup {
        chain,
        genesis,
        model,
        job: 0,
        bob,
        worker: handle,
        traces,
        requests,
        cancel,
        _dir: dir,
    }
}

impl Setup {
    /// Sends `req` as `peer` and decodes the answer.
    async fn ask(&self, peer: PeerId, bytes: Vec<u8>) -> StageResponse {
        let (reply, answer) = oneshot::channel();
        self.requests.send(StageInbound { peer, request: bytes, reply }).await.unwrap();
        let bytes = answer.await.expect("an answer");
        protocol::decode_response(&bytes, &protocol::Limits::default()).unwrap()
    }

    /// An opening of a fresh session on Bob for `job`, signed by `signer` (none when `None`).
    fn open(&self, session: u8, job: Option<u64>, signer: Option<&str>) -> Vec<u8> {
        let (session, layers) = ([session; 16], (0, 4));
        let auth = job.zip(signer).map(|(job, s)| {
            let auth = SessionAuth {
                session,
                model: self.model,
                layers,
                job,
                worker: account_of(&self.bob),
            };
            auth.sign(&pair_from_suri(s).unwrap(), &self.genesis)
        });
        protocol::encode(&StageRequest::Open { session, model: self.model, layers, job, auth })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_jobs_that_pay_below_its_price() {
    let s = setup_priced(PeerId::random(), 2 * UNIT).await;
    let refused = s.ask(PeerId::random(), s.open(1, Some(s.job), Some("//Alice"))).await;
    assert_eq!(
        refused,
        StageResponse::Error(StageError::PriceTooLow {
            job: s.job,
            offered: UNIT,
            asked: 2 * UNIT
        })
    );
    // Nothing was opened: the worker has every session free.
    assert_eq!(s.worker.stats().await.unwrap().sessions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_paid_sessions_authorized_by_the_client_are_served() {
    let operator = PeerId::random();
    let s = setup(operator).await;
    let stranger = PeerId::random();
    let error = |r: StageResponse| match r {
        StageResponse::Error(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Bytes that do not decode: a typed refusal, not silence.
    let garbage = s.ask(stranger, vec![protocol::VERSION, 0xff, 0xff]).await;
    assert!(matches!(error(garbage), StageError::Malformed(_)));

    // No job: refused for a stranger, served for the peer the operator allows.
    assert_eq!(error(s.ask(stranger, s.open(1, None, None)).await), StageError::JobRequired);
    assert!(matches!(s.ask(operator, s.open(2, None, None)).await, StageResponse::Opened(_)));

    // Alice's job without her signature, or with Bob's or Ferdie's, is refused; with hers it
    // is served, for a stranger too (it is Alice who pays).
    let job = Some(s.job);
    for signer in [None, Some("//Bob"), Some("//Ferdie")] {
        let refused = error(s.ask(stranger, s.open(3, job, signer)).await);
        assert_eq!(refused, StageError::Unauthorized { job: s.job }, "{signer:?}");
    }
    assert!(matches!(
        s.ask(stranger, s.open(4, job, Some("//Alice"))).await,
        StageResponse::Opened(_)
    ));
    // Her signature for another session does not open this one.
    let mut replayed = s.open(5, job, Some("//Alice"));
    let other = s.open(6, job, Some("//Alice"));
    let at = replayed.len() - 64;
    replayed[at..].copy_from_slice(&other[other.len() - 64..]);
    assert_eq!(error(s.ask(stranger, replayed).await), StageError::Unauthorized { job: s.job });

    // Session 4 is paid by vouchers: its first forward needs none; the next is refused until
    // Alice acknowledges what it computed, and then runs.
    let forward = |pos: u32, voucher| {
        let input = Activation::Tokens(vec![3; if pos == 0 { 5 } else { 1 }]);
        protocol::encode(&StageRequest::Forward { session: [4; 16], pos, input, voucher })
    };
    let trace = |r: StageResponse| match r {
        StageResponse::Output { trace, .. } => trace,
        other => panic!("expected an output, got {other:?}"),
    };
    let t5 = trace(s.ask(stranger, forward(0, None)).await);
    let voucher = |positions, trace, signer: &str| {
        let v = Voucher {
            job: s.job,
            session: [4; 16],
            worker: account_of(&s.bob),
            layers: (0, 4),
            positions,
            trace,
        };
        v.sign(&pair_from_suri(signer).unwrap(), &s.genesis).signature
    };
    for v in [None, Some(voucher(5, t5, "//Bob")), Some(voucher(5, H256::zero(), "//Alice"))] {
        let refused = error(s.ask(stranger, forward(5, v)).await);
        assert_eq!(refused, StageError::VoucherRequired { positions: 5 });
    }
    let t6 = trace(s.ask(stranger, forward(5, Some(voucher(5, t5, "//Alice")))).await);
    let close = StageRequest::Close { session: [4; 16], voucher: Some(voucher(6, t6, "//Alice")) };
    let StageResponse::Closed(closed) = s.ask(stranger, protocol::encode(&close)).await else {
        panic!("not closed")
    };
    assert_eq!(closed.claim.as_ref().map(|c| c.voucher.positions), Some(6));
    // Bob's node claims it on chain, signed by Bob: 4 layers × 6 positions × 1 BTR.
    let stop = CancellationToken::new();
    let claimer = tokio::spawn(submit_claims(
        s.chain.clone(),
        s.bob.clone(),
        s.worker.clone(),
        s.traces.clone(),
        stop.clone(),
    ));
    let alice = pair_from_suri("//Alice").unwrap();
    let mut claims = Vec::new();
    for _ in 0..100 {
        s.chain.author_and_import(alice.clone()).await.unwrap();
        claims = s.chain.job(s.job).await.unwrap().unwrap().claims;
        if !claims.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.cancel();
    claimer.await.unwrap();
    assert_eq!(claims.len(), 1, "Bob's claim is on chain");
    assert_eq!(claims[0].voucher, closed.claim.unwrap().voucher);
    // Worth 24 BTR, with the dev chain's 5% audit fee reserved beside it.
    assert_eq!(s.chain.job(s.job).await.unwrap().unwrap().claimed, 24 * UNIT * 105 / 100);
    // Its six leaves are kept on disk for an audit, and hash to the voucher's trace.
    let kept = s.traces.load(s.job, &[4; 16]).unwrap();
    let hashes: Vec<_> = kept.iter().map(|l| l.hash()).collect();
    assert_eq!(bitorch_commitment::chain_of(&hashes), claims[0].voucher.trace.0);
    // Nobody opens it but an auditor the chain assigned (this chain's one validator is the
    // client: nobody is eligible), even with a valid signature.
    for who in ["//Alice", "//Ferdie"] {
        let pair = pair_from_suri(who).unwrap();
        let req = OpeningRequest::sign(&pair, &s.genesis, s.job, 0, 0);
        let refused = error(s.ask(stranger, protocol::encode(&StageRequest::Opening(req))).await);
        assert!(matches!(refused, StageError::NoOpening { .. }), "{refused:?}");
    }

    // A job that is not on chain, or no longer open, is refused as not open.
    assert_eq!(
        error(s.ask(stranger, s.open(7, Some(99), Some("//Alice"))).await),
        StageError::JobNotOpen { job: 99 }
    );
    let close = Call::Jobs(jobs::Call::CloseJob { job: s.job });
    s.chain.sign_and_submit(alice.clone(), vec![close], 64).await.unwrap();
    s.chain.author_and_import(alice).await.unwrap();
    assert_eq!(
        error(s.ask(stranger, s.open(8, job, Some("//Alice"))).await),
        StageError::JobNotOpen { job: s.job }
    );
}
