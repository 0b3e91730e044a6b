//! The stage worker on a tiny random model: sessions, limits, bad requests, eviction, vouchers.

mod common;

use bitorch_compute::{
    protocol::{decode_response, encode, VERSION},
    worker, Activation, DecodeError, Floats, Limits, SessionId, StageError, StageRequest,
    StageResponse, Worker,
};
use bitorch_inference::{Checkpoint, Kernel, LoadOptions, Stage};
use bitorch_primitives::keys::account_of;
use bitorch_primitives::receipt::{SessionAuth, Voucher};
use bitorch_primitives::{Signature, H256};
use common::*;
use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Stages 0..2, 2..4, 4..6 of one tiny model, loaded once.
fn tiny_stages() -> &'static [Stage] {
    static STAGES: OnceLock<Vec<Stage>> = OnceLock::new();
    STAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), &TINY, 11);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        stages(&ckpt, &[0..2, 2..4, 4..6], &LoadOptions::new(F32))
    })
}

fn open(session: SessionId, layers: (u32, u32), job: Option<u64>) -> StageRequest {
    StageRequest::Open { session, model: MODEL, layers, job, auth: None }
}

fn hidden(rows: u32, cols: u32, seed: f32) -> Activation {
    let v: Vec<f32> = (0..rows * cols).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
    Activation::Hidden(Floats::new(rows, cols, &v).unwrap())
}

fn fwd(session: SessionId, pos: u32, input: Activation) -> StageRequest {
    StageRequest::Forward { session, pos, input, voucher: None }
}

fn close(session: SessionId) -> StageRequest {
    StageRequest::Close { session, voucher: None }
}

fn output(r: StageResponse) -> Floats {
    match r {
        StageResponse::Output {
            output: Activation::Hidden(f) | Activation::Last { hidden: f, .. },
            ..
        } => f,
        other => panic!("expected output, got {other:?}"),
    }
}

#[test]
fn bad_requests_fail_alone() {
    let stage = tiny_stages()[1].clone();
    let mut cfg = worker_config(4);
    cfg.limits = Limits { max_message_bytes: 64 * 1024, max_positions: 8 };
    let mut w = Worker::new(stage.clone(), key("Bob"), cfg);
    let (a, b) = ([1; 16], [2; 16]);
    assert!(matches!(w.handle(open(a, (2, 4), None)), StageResponse::Opened(_)));
    assert!(matches!(w.handle(open(b, (2, 4), None)), StageResponse::Opened(_)));
    // Session a runs 3 positions, then one; b runs along in between the bad requests.
    let a0 = output(w.handle(fwd(a, 0, hidden(3, 64, 0.0))));
    let err = |r: StageResponse| match r {
        StageResponse::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    // Malformed, oversized and wrong-version bytes.
    let dec = |bytes: &[u8], w: &mut Worker| {
        let out = w.handle_bytes(bytes);
        err(decode_response(&out, &Limits::default()).unwrap())
    };
    assert_eq!(dec(&[VERSION, 0xff, 3], &mut w), StageError::Malformed(DecodeError::Invalid));
    let big = encode(&fwd(a, 3, hidden(8, 64 * 40, 0.0)));
    assert!(matches!(dec(&big, &mut w), StageError::Malformed(DecodeError::TooLarge { .. })));
    let many = encode(&fwd(a, 3, hidden(9, 64, 0.0)));
    assert_eq!(
        dec(&many, &mut w),
        StageError::Malformed(DecodeError::TooManyPositions { got: 9, max: 8 })
    );
    let mut v2 = encode(&fwd(a, 3, hidden(1, 64, 0.0)));
    v2[0] = VERSION + 1;
    assert!(matches!(
        dec(&v2, &mut w),
        StageError::Malformed(DecodeError::UnsupportedVersion { .. })
    ));
    // Well-formed but wrong for this stage or session.
    assert_eq!(
        err(w.handle(fwd(a, 3, hidden(1, 63, 0.0)))),
        StageError::WidthMismatch { expected: 64, got: 63 }
    );
    assert!(matches!(
        err(w.handle(fwd(a, 3, Activation::Tokens(vec![1])))),
        StageError::WrongInput { .. }
    ));
    assert_eq!(
        err(w.handle(fwd(a, 2, hidden(1, 64, 0.0)))),
        StageError::PositionMismatch { expected: 3, got: 2 }
    );
    assert_eq!(
        err(w.handle(fwd(a, 3, hidden(62, 64, 0.0)))),
        StageError::BadPositionCount { got: 62, max: 8 }
    );
    assert_eq!(err(w.handle(fwd([9; 16], 0, hidden(1, 64, 0.0)))), StageError::UnknownSession);
    assert_eq!(err(w.handle(open(a, (2, 4), None))), StageError::SessionExists);
    assert_eq!(
        err(w.handle(open([3; 16], (2, 5), None))),
        StageError::WrongLayers { served: (2, 4) }
    );
    let other_model = StageRequest::Open {
        session: [3; 16],
        model: bitorch_primitives::H256::zero(),
        layers: (2, 4),
        job: None,
        auth: None,
    };
    assert!(matches!(err(w.handle(other_model)), StageError::WrongModel { .. }));
    let b0 = output(w.handle(fwd(b, 0, hidden(2, 64, 5.0))));
    let a1 = output(w.handle(fwd(a, 3, hidden(1, 64, 3.0))));
    // Both sessions computed exactly what an untouched cache computes.
    let run = |inputs: &[(u32, Activation)]| -> Vec<Vec<f32>> {
        let mut cache = stage.new_cache_with(Kernel::BatchInvariant);
        inputs
            .iter()
            .map(|(pos, x)| {
                let Activation::Hidden(f) = x else { unreachable!() };
                let t = candle_core::Tensor::from_vec(
                    f.to_vec(),
                    (1, f.rows() as usize, 64),
                    &candle_core::Device::Cpu,
                )
                .unwrap();
                let y = stage.forward_layers(&t, *pos as usize, &mut cache).unwrap();
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    };
    let want_a = run(&[(0, hidden(3, 64, 0.0)), (3, hidden(1, 64, 3.0))]);
    assert_eq!(a0.to_vec(), want_a[0]);
    assert_eq!(a1.to_vec(), want_a[1]);
    assert_eq!(b0.to_vec(), run(&[(0, hidden(2, 64, 5.0))])[0]);
    assert_eq!(w.trace(&a).unwrap().len(), 4);
    assert_eq!(w.trace(&b).unwrap().len(), 2);
}

#[test]
fn first_and_last_stage_inputs_and_outputs() {
    let s = tiny_stages();
    let mut first = Worker::new(s[0].clone(), key("Alice"), worker_config(2));
    let mut last = Worker::new(s[2].clone(), key("Charlie"), worker_config(2));
    let a = [1; 16];
    first.handle(open(a, (0, 2), None));
    last.handle(open(a, (4, 6), None));
    let err = |r: StageResponse| match r {
        StageResponse::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        err(first.handle(fwd(a, 0, Activation::Tokens(vec![3, 97])))),
        StageError::TokenOutOfRange { token: 97, vocab: 97 }
    );
    assert!(matches!(
        err(first.handle(fwd(a, 0, hidden(1, 64, 0.0)))),
        StageError::WrongInput { .. }
    ));
    let h = output(first.handle(fwd(a, 0, Activation::Tokens(vec![3, 5, 7]))));
    assert_eq!((h.rows(), h.cols()), (3, 64));
    // The last stage returns its hidden states (what it commits to) and the top 64 of the
    // 97 logits of the last position, highest first.
    let StageResponse::Output { output: Activation::Last { hidden: h, logits }, .. } =
        last.handle(fwd(a, 0, hidden(3, 64, 1.0)))
    else {
        panic!("expected the last stage's output")
    };
    assert_eq!((h.rows(), h.cols(), logits.len()), (3, 64, 64));
    let top = logits.to_vec();
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
    // The last stage takes hidden states, not tokens.
    assert!(matches!(
        err(last.handle(fwd(a, 3, Activation::Tokens(vec![1])))),
        StageError::WrongInput { .. }
    ));
}

#[test]
fn context_length_is_enforced() {
    let s = tiny_stages();
    let mut last = Worker::new(s[2].clone(), key("Charlie"), worker_config(2));
    let a = [1; 16];
    last.handle(open(a, (4, 6), None));
    assert!(matches!(last.handle(fwd(a, 0, hidden(60, 64, 1.0))), StageResponse::Output { .. }));
    assert_eq!(
        last.handle(fwd(a, 60, hidden(5, 64, 1.0))),
        StageResponse::Error(StageError::ContextFull { end: 65, limit: 64 })
    );
    assert!(matches!(last.handle(fwd(a, 60, hidden(4, 64, 1.0))), StageResponse::Output { .. }));
}

#[test]
fn session_cap_and_position_budget_answer_busy() {
    let mut cfg = worker_config(2);
    cfg.max_cached_positions = 10;
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Bob"), cfg);
    assert!(matches!(w.handle(open([1; 16], (2, 4), None)), StageResponse::Opened(_)));
    assert!(matches!(w.handle(open([2; 16], (2, 4), None)), StageResponse::Opened(_)));
    assert_eq!(w.handle(open([3; 16], (2, 4), None)), StageResponse::Busy);
    assert!(matches!(w.handle(fwd([1; 16], 0, hidden(6, 64, 0.0))), StageResponse::Output { .. }));
    // 6 + 5 > 10 cached positions.
    assert_eq!(w.handle(fwd([2; 16], 0, hidden(5, 64, 0.0))), StageResponse::Busy);
    assert!(matches!(w.handle(fwd([2; 16], 0, hidden(4, 64, 0.0))), StageResponse::Output { .. }));
    assert_eq!(w.cached_positions(), 10);
    // Closing frees both a slot and the positions.
    assert!(matches!(w.handle(close([1; 16])), StageResponse::Closed(_)));
    assert!(matches!(w.handle(open([3; 16], (2, 4), None)), StageResponse::Opened(_)));
    assert!(matches!(w.handle(fwd([3; 16], 0, hidden(6, 64, 0.0))), StageResponse::Output { .. }));
}

/// A paid session of job 3 on Dave's worker for layers 2..4, asked by Alice (the client).
fn paid_open(session: SessionId, signer: &str) -> StageRequest {
    let auth = SessionAuth {
        session,
        model: MODEL,
        layers: (2, 4),
        job: 3,
        worker: account_of(&key("Dave")),
    }
    .sign(&key(signer), &GENESIS);
    StageRequest::Open { session, model: MODEL, layers: (2, 4), job: Some(3), auth: Some(auth) }
}

/// `signer`'s signature over the voucher of `session` for `positions` with `trace`.
fn voucher(session: SessionId, positions: u32, trace: H256, signer: &str) -> Signature {
    let v = Voucher {
        job: 3,
        session,
        worker: account_of(&key("Dave")),
        layers: (2, 4),
        positions,
        trace,
    };
    v.sign(&key(signer), &GENESIS).signature
}

/// One more position of `session` at `pos`, with Alice's voucher for the `pos` before it
/// (whose trace hash is `trace`).
fn acknowledged_step(session: SessionId, pos: u32, trace: H256) -> StageRequest {
    StageRequest::Forward {
        session,
        pos,
        input: hidden(1, 64, 1.0),
        voucher: Some(voucher(session, pos, trace, "Alice")),
    }
}

fn traced(r: StageResponse) -> H256 {
    match r {
        StageResponse::Output { trace, .. } => trace,
        other => panic!("expected output, got {other:?}"),
    }
}

#[test]
fn a_paid_session_needs_the_clients_authorization_and_goes_on_only_as_acknowledged() {
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Dave"), worker_config(4));
    let alice = account_of(&key("Alice"));
    let now = Instant::now;
    let a = [4; 16];
    // Without knowing the client, or with someone else's signature: refused.
    let unauthorized = StageResponse::Error(StageError::Unauthorized { job: 3 });
    assert_eq!(w.handle(paid_open(a, "Alice")), unauthorized);
    assert_eq!(w.handle_for(paid_open(a, "Bob"), Some(&alice), now()), unauthorized);
    assert_eq!(w.sessions(), 0);
    assert!(matches!(
        w.handle_for(paid_open(a, "Alice"), Some(&alice), now()),
        StageResponse::Opened(_)
    ));
    // Position 0 needs no voucher; it returns the trace hash the next voucher must sign.
    let t4 = traced(w.handle(fwd(a, 0, hidden(4, 64, 0.0))));
    assert_eq!(t4.0, w.trace(&a).unwrap().chain());
    // No voucher, the worker's own, Bob's, for other positions or another trace: no compute.
    let behind = StageResponse::Error(StageError::VoucherRequired { positions: 4 });
    let step =
        |v| StageRequest::Forward { session: a, pos: 4, input: hidden(1, 64, 9.0), voucher: v };
    for v in [
        None,
        Some(voucher(a, 4, t4, "Dave")),
        Some(voucher(a, 4, t4, "Bob")),
        Some(voucher(a, 3, t4, "Alice")),
        Some(voucher(a, 4, H256::repeat_byte(1), "Alice")),
        Some(voucher([5; 16], 4, t4, "Alice")),
    ] {
        assert_eq!(w.handle(step(v)), behind);
        assert_eq!(w.trace(&a).unwrap().len(), 4, "nothing computed");
    }
    let t5 = traced(w.handle(step(Some(voucher(a, 4, t4, "Alice")))));
    assert_ne!(t5, t4);
    let w_leaves = w.trace(&a).unwrap().leaves().to_vec();
    // Closed with the final voucher: that is the claim, queued for the chain.
    let done = voucher(a, 5, t5, "Alice");
    let StageResponse::Closed(c) =
        w.handle(StageRequest::Close { session: a, voucher: Some(done) })
    else {
        panic!("not closed")
    };
    let want = Voucher {
        job: 3,
        session: a,
        worker: account_of(&key("Dave")),
        layers: (2, 4),
        positions: 5,
        trace: t5,
    };
    let claim = c.claim.clone().unwrap();
    assert_eq!((claim.voucher.clone(), c.positions, c.trace), (want, 5, t5));
    assert!(claim.verify(&alice, &GENESIS));
    let taken = w.take_claims();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].claim, claim);
    assert_eq!(taken[0].leaves, w_leaves);
    assert!(w.take_claims().is_empty(), "taken once");

    // Closed without a final voucher (a client that went away): the last one is the claim,
    // one step short of the work.
    let b = [6; 16];
    w.handle_for(paid_open(b, "Alice"), Some(&alice), now());
    let t3 = traced(w.handle(fwd(b, 0, hidden(3, 64, 0.0))));
    traced(w.handle(acknowledged_step(b, 3, t3)));
    let StageResponse::Closed(c) = w.handle(close(b)) else { panic!("not closed") };
    assert_eq!((c.positions, c.claim.as_ref().map(|v| v.voucher.positions)), (4, Some(3)));
    // A paid session never acknowledged leaves no claim; nor does an unpaid one.
    w.handle_for(paid_open(b, "Alice"), Some(&alice), now());
    w.handle(fwd(b, 0, hidden(3, 64, 0.0)));
    let StageResponse::Closed(c) = w.handle(close(b)) else { panic!("not closed") };
    assert_eq!((c.positions, c.claim), (3, None));
    w.handle(open(b, (2, 4), None));
    let StageResponse::Closed(c) = w.handle(close(b)) else { panic!("not closed") };
    assert_eq!((c.positions, c.claim), (0, None));
    assert_eq!(w.take_claims().len(), 1, "only b's first session claims");
}

#[test]
fn idle_sessions_are_evicted_and_their_claims_kept() {
    let mut cfg = worker_config(2);
    cfg.idle_timeout = Duration::from_secs(30);
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Dave"), cfg);
    let alice = account_of(&key("Alice"));
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    w.handle_for(paid_open([1; 16], "Alice"), Some(&alice), at(0));
    w.handle_at(open([2; 16], (2, 4), None), at(0));
    let t2 = traced(w.handle_at(fwd([1; 16], 0, hidden(2, 64, 0.0)), at(1)));
    traced(w.handle_at(acknowledged_step([1; 16], 2, t2), at(2)));
    w.handle_at(fwd([2; 16], 0, hidden(3, 64, 0.0)), at(20));
    assert_eq!(w.handle_at(open([3; 16], (2, 4), None), at(25)), StageResponse::Busy);
    // At 32 s session 1 has idled 30 s: evicted, and its slot is free.
    assert!(matches!(w.handle_at(open([3; 16], (2, 4), None), at(32)), StageResponse::Opened(_)));
    assert_eq!(
        w.handle_at(fwd([1; 16], 3, hidden(1, 64, 0.0)), at(32)),
        StageResponse::Error(StageError::UnknownSession)
    );
    let evicted = w.take_claims();
    assert_eq!(evicted.len(), 1);
    let e0 = &evicted[0].claim;
    assert_eq!((e0.voucher.job, e0.voucher.positions), (3, 2));
    assert!(e0.verify(&alice, &GENESIS));
    // The leaves kept are those the voucher covers: the third position was not acknowledged.
    assert_eq!(evicted[0].leaves.len(), 2);
    assert_eq!(w.sessions(), 2);
}

#[tokio::test]
async fn the_sessions_of_a_job_that_stopped_taking_work_are_closed_and_claimed() {
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Dave"), worker_config(4));
    let alice = account_of(&key("Alice"));
    let a = [7; 16];
    w.handle_for(paid_open(a, "Alice"), Some(&alice), Instant::now());
    w.handle(open([8; 16], (2, 4), None));
    let t2 = traced(w.handle(fwd(a, 0, hidden(2, 64, 0.0))));
    traced(w.handle(acknowledged_step(a, 2, t2)));
    assert_eq!(w.paid_jobs(), vec![3], "the unpaid session names no job");
    // The client vanished: nothing closes session a, until the node sees job 3 stop.
    let (h, thread) = worker::spawn(w, 2).unwrap();
    assert!(h.take_claims().await.unwrap().is_empty());
    assert_eq!(h.close_job(4).await.unwrap(), 0, "another job: nothing closed");
    assert_eq!(h.close_job(3).await.unwrap(), 1);
    assert_eq!(h.paid_jobs().await.unwrap(), Vec::<u64>::new());
    let claims = h.take_claims().await.unwrap();
    assert_eq!(claims.len(), 1);
    let v = &claims[0].claim;
    assert_eq!((v.voucher.session, v.voucher.positions), (a, 2), "what was acknowledged");
    assert!(v.verify(&alice, &GENESIS));
    assert_eq!(h.stats().await.unwrap().sessions, 1, "the unpaid session stays");
    drop(h);
    thread.join().unwrap();
}

#[tokio::test]
async fn actor_serves_requests_and_bytes() {
    let w = Worker::new(tiny_stages()[0].clone(), key("Alice"), worker_config(2));
    let (h, thread) = worker::spawn(w, 2).unwrap();
    let a = [5; 16];
    assert!(matches!(h.call(open(a, (0, 2), None)).await.unwrap(), StageResponse::Opened(_)));
    let out = h.call_bytes(encode(&fwd(a, 0, Activation::Tokens(vec![1, 2])))).await.unwrap();
    let resp = decode_response(&out, &Limits::default()).unwrap();
    assert_eq!(output(resp).rows(), 2);
    let garbage = h.call_bytes(vec![]).await.unwrap();
    assert_eq!(
        decode_response(&garbage, &Limits::default()).unwrap(),
        StageResponse::Error(StageError::Malformed(DecodeError::Empty))
    );
    drop(h);
    thread.join().unwrap();
}

#[test]
fn stats_report_free_sessions_and_a_measured_speed() {
    for (i, layers) in [(0, (0, 2)), (2, (4, 6))] {
        let stage = tiny_stages()[i].clone();
        let mut w = Worker::new(stage, key("Bob"), worker_config(3));
        let s = w.stats();
        assert_eq!((s.sessions, s.max_sessions, s.free(), s.tokens_per_sec), (0, 3, 3, None));
        // First stage: token input; last stage: hidden states in, logits out.
        let rate = w.benchmark(4).unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert_eq!(w.stats().tokens_per_sec, Some(rate));
        assert_eq!(w.sessions(), 0, "the benchmark's session is gone");
        assert!(matches!(w.handle(open([1; 16], layers, None)), StageResponse::Opened(_)));
        assert_eq!(w.stats().free(), 2);
        // Real one-position steps move the measurement.
        let input = if i == 0 { Activation::Tokens(vec![5]) } else { hidden(1, 64, 1.0) };
        assert!(matches!(w.handle(fwd([1; 16], 0, input)), StageResponse::Output { .. }));
        let after = w.stats().tokens_per_sec.unwrap();
        assert!(after.is_finite() && after > 0.0 && after != rate, "{after} vs {rate}");
    }
}

/// Steps of several sessions handled together ([`Worker::handle_forwards`], what the worker's
/// actor does with the steps waiting in its queue) on a stage of integer kernels: one batch,
/// and each session gets the outputs and the trace it gets alone; a bad request in the batch
/// fails alone, and a session named twice runs its second step after the first.
#[test]
fn steps_of_several_sessions_run_together_with_the_bits_of_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    bitorch_test_support::tiny::write_gguf(
        &path,
        &TINY,
        5,
        candle_core::quantized::GgmlDType::Q4_1,
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let opts = LoadOptions { gguf: bitorch_inference::GgufWeights::Int16, ..LoadOptions::new(F32) };
    let stage = Stage::load(&ckpt, 0..6, &opts).unwrap();
    assert!(stage.batches_exactly());
    let ids: Vec<SessionId> = (1..=4u8).map(|i| [i; 16]).collect();
    let prompt = |i: usize| Activation::Tokens((0..=i as u32).map(|t| 3 + 7 * t).collect());
    let next = |i: usize, step: u32| Activation::Tokens(vec![10 + i as u32 + step]);
    let positions = |i: usize, step: u32| if step == 0 { 0 } else { i as u32 + step };
    let new_worker = || {
        let mut w = Worker::new(stage.clone(), key("Bob"), worker_config(8));
        for &id in &ids {
            assert!(matches!(w.handle(open(id, (0, 6), None)), StageResponse::Opened { .. }));
        }
        w
    };
    let input = |i: usize, step: u32| if step == 0 { prompt(i) } else { next(i, step) };
    let answer = |r: StageResponse| match r {
        StageResponse::Output { output: Activation::Last { hidden, logits }, trace } => {
            (hidden.to_vec(), logits.to_vec(), trace)
        }
        other => panic!("expected an output, got {other:?}"),
    };
    // Alone: one request at a time.
    let mut alone = new_worker();
    let mut want = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        for step in 0..3 {
            want.push(answer(alone.handle(fwd(id, positions(i, step), input(i, step)))));
        }
    }
    // Together: every session's step in one call, plus a request for a position that does not
    // follow (fails alone) and, in the last round, the first session twice.
    let mut together = new_worker();
    let mut got = vec![Vec::new(); ids.len()];
    for step in 0..3 {
        let mut reqs: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, positions(i, step), input(i, step), None))
            .collect();
        reqs.insert(1, (ids[2], 99, next(2, step), None));
        if step == 2 {
            reqs.push((ids[0], positions(0, 3), next(0, 3), None));
        }
        let mut answers = together.handle_forwards(reqs, Instant::now()).into_iter();
        let first = answers.next().unwrap();
        assert!(matches!(
            answers.next().unwrap(),
            StageResponse::Error(StageError::PositionMismatch { got: 99, .. })
        ));
        got[0].push(answer(first));
        for g in got.iter_mut().skip(1) {
            g.push(answer(answers.next().unwrap()));
        }
        if step == 2 {
            let extra = answer(answers.next().unwrap());
            assert_eq!(extra, answer(alone.handle(fwd(ids[0], positions(0, 3), next(0, 3)))));
        }
        assert!(answers.next().is_none());
    }
    let got: Vec<_> = got.into_iter().flatten().collect();
    assert!(got == want, "batched steps differ from steps alone");
}
