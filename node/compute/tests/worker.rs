//! The stage worker on a tiny random model: sessions, limits, bad requests, eviction, receipts.

mod common;

use bitorch_compute::{
    protocol::{decode_response, encode, VERSION},
    worker, Activation, DecodeError, Floats, Limits, SessionId, StageError, StageRequest,
    StageResponse, Worker,
};
use bitorch_inference::{Checkpoint, Kernel, LoadOptions, Stage};
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
    StageRequest::Forward { session, pos, input }
}

fn output(r: StageResponse) -> Floats {
    match r {
        StageResponse::Output(Activation::Hidden(f) | Activation::Logits(f)) => f,
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
    let logits = output(last.handle(fwd(a, 0, hidden(3, 64, 1.0))));
    assert_eq!((logits.rows(), logits.cols()), (1, 97));
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
    assert!(matches!(last.handle(fwd(a, 0, hidden(60, 64, 1.0))), StageResponse::Output(_)));
    assert_eq!(
        last.handle(fwd(a, 60, hidden(5, 64, 1.0))),
        StageResponse::Error(StageError::ContextFull { end: 65, limit: 64 })
    );
    assert!(matches!(last.handle(fwd(a, 60, hidden(4, 64, 1.0))), StageResponse::Output(_)));
}

#[test]
fn session_cap_and_position_budget_answer_busy() {
    let mut cfg = worker_config(2);
    cfg.max_cached_positions = 10;
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Bob"), cfg);
    assert!(matches!(w.handle(open([1; 16], (2, 4), None)), StageResponse::Opened(_)));
    assert!(matches!(w.handle(open([2; 16], (2, 4), None)), StageResponse::Opened(_)));
    assert_eq!(w.handle(open([3; 16], (2, 4), None)), StageResponse::Busy);
    assert!(matches!(w.handle(fwd([1; 16], 0, hidden(6, 64, 0.0))), StageResponse::Output(_)));
    // 6 + 5 > 10 cached positions.
    assert_eq!(w.handle(fwd([2; 16], 0, hidden(5, 64, 0.0))), StageResponse::Busy);
    assert!(matches!(w.handle(fwd([2; 16], 0, hidden(4, 64, 0.0))), StageResponse::Output(_)));
    assert_eq!(w.cached_positions(), 10);
    // Closing frees both a slot and the positions.
    assert!(matches!(w.handle(StageRequest::Close { session: [1; 16] }), StageResponse::Closed(_)));
    assert!(matches!(w.handle(open([3; 16], (2, 4), None)), StageResponse::Opened(_)));
    assert!(matches!(w.handle(fwd([3; 16], 0, hidden(6, 64, 0.0))), StageResponse::Output(_)));
}

#[test]
fn idle_sessions_are_evicted_and_their_receipts_kept() {
    let mut cfg = worker_config(2);
    cfg.idle_timeout = Duration::from_secs(30);
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Bob"), cfg);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    w.handle_at(open([1; 16], (2, 4), Some(7)), at(0));
    w.handle_at(open([2; 16], (2, 4), Some(8)), at(0));
    w.handle_at(fwd([1; 16], 0, hidden(2, 64, 0.0)), at(1));
    w.handle_at(fwd([2; 16], 0, hidden(3, 64, 0.0)), at(20));
    assert_eq!(w.handle_at(open([3; 16], (2, 4), None), at(25)), StageResponse::Busy);
    // At 31 s session 1 has idled 30 s: evicted, and its slot is free.
    assert!(matches!(w.handle_at(open([3; 16], (2, 4), None), at(31)), StageResponse::Opened(_)));
    assert_eq!(
        w.handle_at(fwd([1; 16], 2, hidden(1, 64, 0.0)), at(31)),
        StageResponse::Error(StageError::UnknownSession)
    );
    let evicted = w.take_receipts();
    assert_eq!(evicted.len(), 1);
    assert_eq!((evicted[0].receipt.job, evicted[0].receipt.tokens), (7, 2));
    assert!(evicted[0].verify(&GENESIS));
    // Ending job 8 closes session 2 and returns its receipt.
    let ended = w.end_job(8);
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0].receipt.tokens, ended[0].receipt.layer_start), (3, 2));
    assert_eq!(w.sessions(), 1);
}

#[test]
fn receipts_commit_to_the_trace() {
    let mut w = Worker::new(tiny_stages()[1].clone(), key("Dave"), worker_config(2));
    let a = [4; 16];
    w.handle(open(a, (2, 4), Some(3)));
    w.handle(fwd(a, 0, hidden(4, 64, 0.0)));
    w.handle(fwd(a, 4, hidden(1, 64, 9.0)));
    let want = w.trace(&a).unwrap().commitment();
    let StageResponse::Closed(c) = w.handle(StageRequest::Close { session: a }) else {
        panic!("not closed")
    };
    assert_eq!((c.positions, c.root.0), (want.len, want.root));
    let r = c.receipt.unwrap();
    assert!(r.verify(&GENESIS));
    assert!(!r.verify(&bitorch_primitives::H256::zero()), "bound to the chain");
    assert_eq!(r.receipt.worker, bitorch_primitives::keys::account_of(&key("Dave")));
    assert_eq!(
        (r.receipt.job, r.receipt.layer_start, r.receipt.layer_end, r.receipt.tokens),
        (3, 2, 4, 5)
    );
    assert_eq!(r.receipt.activation_root, c.root);
    // No job, no receipt; an empty session's commitment is empty.
    w.handle(open(a, (2, 4), None));
    let StageResponse::Closed(c) = w.handle(StageRequest::Close { session: a }) else {
        panic!("not closed")
    };
    assert_eq!((c.positions, c.receipt), (0, None));
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
        assert!(matches!(w.handle(fwd([1; 16], 0, input)), StageResponse::Output(_)));
        let after = w.stats().tokens_per_sec.unwrap();
        assert!(after.is_finite() && after > 0.0 && after != rate, "{after} vs {rate}");
    }
}
