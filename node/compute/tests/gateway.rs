//! The gateway over in-memory workers of a tiny random model: exactness against the
//! in-process pipeline, failover, busy workers, missing layers, chunked prefill, receipts.

#![allow(clippy::single_range_in_vec_init)]

mod common;

use bitorch_compute::{
    Activation, Cheat, Error, Gateway, GatewayConfig, GatewayRequest, Logits, PlanError,
    StageRequest, StageResponse, StageTransport, Worker, WorkerInfo,
};
use bitorch_inference::{Checkpoint, Kernel, LoadOptions, Pipeline, SamplingParams};
use common::*;
use std::{ops::ControlFlow, sync::OnceLock, time::Duration};

/// The tiny model as a 3-stage in-process pipeline (layers 0..2, 2..4, 4..6), loaded once; the
/// workers serve clones of its stages.
fn tiny() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), &TINY, 23);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        Pipeline::load(&ckpt, &[0..2, 2..4, 4..6], &LoadOptions::new(F32)).unwrap()
    })
}

/// A worker of the tiny model: (id, stage index, tokens/s, max sessions, kernel).
type Spec = (u32, usize, f64, usize, Kernel);

fn setup(specs: &[Spec]) -> (Gateway<MemTransport>, Vec<WorkerInfo<u32>>) {
    setup_with(specs, |_| None)
}

/// [`setup`], with worker `id` cheating as `cheat(id)` says.
fn setup_with(
    specs: &[Spec],
    cheat: impl Fn(u32) -> Option<Cheat>,
) -> (Gateway<MemTransport>, Vec<WorkerInfo<u32>>) {
    let names = ["Alice", "Bob", "Charlie", "Dave", "Eve", "Ferdie"];
    let mut infos = Vec::new();
    let mut workers = Vec::new();
    for &(id, stage, tps, max_sessions, kernel) in specs {
        let mut cfg = worker_config(max_sessions);
        cfg.kernel = kernel;
        cfg.cheat = cheat(id);
        let w = Worker::new(tiny().stages()[stage].clone(), key(names[id as usize]), cfg);
        infos.push(info(id, &w, tps));
        workers.push((id, w));
    }
    let mut cfg = GatewayConfig::new(GENESIS);
    cfg.call_timeout = Duration::from_secs(30);
    cfg.client = Some(key(CLIENT));
    (Gateway::new(MemTransport::new(workers), cfg), infos)
}

const BI: Kernel = Kernel::BatchInvariant;

fn three() -> Vec<Spec> {
    vec![(0, 0, 100.0, 4, BI), (1, 1, 200.0, 4, BI), (2, 2, 100.0, 4, BI), (3, 1, 100.0, 4, BI)]
}

fn request(prompt: &[u32], n: usize, sampling: SamplingParams) -> GatewayRequest {
    GatewayRequest {
        model: MODEL,
        num_layers: 6,
        prompt: prompt.to_vec(),
        max_tokens: n,
        sampling,
        eos: vec![],
        job: None,
        max_price: None,
    }
}

fn forwards(log: &[(u32, &str)], id: u32) -> usize {
    log.iter().filter(|(w, k)| *w == id && *k == "forward").count()
}

#[tokio::test]
async fn tiny_tokens_match_the_in_process_pipeline() {
    let (gw, infos) = setup(&three());
    let sampled =
        SamplingParams { temperature: 0.9, top_k: Some(20), seed: 5, ..Default::default() };
    for (prompt, sampling) in [
        (vec![1u32, 5, 9, 13, 40], SamplingParams::greedy()),
        (vec![2, 96, 3], SamplingParams { repeat_penalty: 1.3, ..Default::default() }),
        (vec![7; 12], sampled),
    ] {
        let (want, _) = reference(tiny(), &prompt, 20, &sampling);
        let mut streamed = Vec::new();
        let gen = gw
            .generate(&infos, &request(&prompt, 20, sampling), |t| {
                streamed.push(t);
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        assert_eq!(gen.tokens, want);
        assert_eq!(streamed, want);
        assert_eq!(gen.failovers, 0);
        assert_eq!(gen.route.iter().map(|w| w.id).collect::<Vec<_>>(), vec![0, 1, 2]);
    }
    // Stopping from the callback keeps the token it was given.
    let gen = gw
        .generate(&infos, &request(&[1, 2, 3], 20, SamplingParams::greedy()), |_| {
            ControlFlow::Break(())
        })
        .await
        .unwrap();
    assert_eq!((gen.tokens.len(), gen.finish), (1, bitorch_inference::FinishReason::Cancelled));
}

#[tokio::test]
async fn tiny_prefill_in_chunks_is_exact() {
    // Workers that take at most 3 positions per message: a 10-token prompt goes in 4 batches.
    let names = ["Alice", "Bob", "Charlie"];
    let mut workers = Vec::new();
    let mut infos = Vec::new();
    for (i, (stage, name)) in tiny().stages().iter().zip(names).enumerate() {
        let mut cfg = worker_config(2);
        cfg.limits.max_positions = 3;
        let w = Worker::new(stage.clone(), key(name), cfg);
        infos.push(info(i as u32, &w, 100.0));
        workers.push((i as u32, w));
    }
    let gw = Gateway::new(MemTransport::new(workers), GatewayConfig::new(GENESIS));
    let prompt: Vec<u32> = (10..20).collect();
    let (want, _) = reference(tiny(), &prompt, 8, &SamplingParams::greedy());
    let gen = gw
        .generate(&infos, &request(&prompt, 8, SamplingParams::greedy()), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.tokens, want);
    assert_eq!(forwards(&gw.transport().log(), 0), 4 + 7);
}

#[tokio::test]
async fn tiny_failover_mid_generation_is_exact() {
    let (gw, infos) = setup(&three());
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let (want, _) = reference(tiny(), &prompt, 16, &SamplingParams::greedy());
    let mut n = 0;
    let gen = gw
        .generate(&infos, &request(&prompt, 16, SamplingParams::greedy()), |_| {
            n += 1;
            if n == 5 {
                gw.transport().kill(1);
            }
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.tokens, want);
    assert_eq!(gen.failovers, 1);
    assert_eq!(gen.route.iter().map(|w| w.id).collect::<Vec<_>>(), vec![0, 3, 2]);
    assert!(gw.is_banned(&1));
    // Stages 0 and 2 kept their sessions: one open each.
    let log = gw.transport().log();
    let opens = |id| log.iter().filter(|(w, k)| *w == id && *k == "open").count();
    assert_eq!((opens(0), opens(2)), (1, 1));
    // The replacement got the prompt and the first 5 tokens in one batch (the step that failed
    // feeds the 5th); f32 matmuls are not batch-invariant, so if that did not reproduce worker
    // 1's outputs it was reopened and fed the prompt, then the 5 tokens one by one. Then one
    // position for each of the 10 steps left.
    match opens(3) {
        1 => assert_eq!(forwards(&log, 3), 1 + 10),
        2 => assert_eq!(forwards(&log, 3), 1 + (1 + 5) + 10),
        n => panic!("replacement opened {n} times"),
    }
    // Revived, the banned worker is still not used.
    gw.transport().revive(1);
    let before = gw.transport().calls(1);
    let gen = gw
        .generate(&infos, &request(&prompt, 4, SamplingParams::greedy()), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.tokens, want[..4]);
    assert_eq!(gw.transport().calls(1), before);
    // Once the ban is lifted, the faster worker is preferred again.
    gw.lift_ban(&1);
    let gen = gw
        .generate(&infos, &request(&prompt, 4, SamplingParams::greedy()), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.route[1].id, 1);
}

#[tokio::test]
async fn tiny_a_stage_committing_to_other_outputs_than_it_returned_is_dropped_at_once() {
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let (want, _) = reference(tiny(), &prompt, 8, &SamplingParams::greedy());
    // The first stage (worker 0) and then an inner one (worker 1), each preferred for its
    // speed, answer honestly but commit to zeros as outputs; workers 4 and 3 serve the same
    // layers honestly.
    for cheater in [0u32, 1] {
        let specs = vec![
            (0, 0, 300.0, 4, BI),
            (4, 0, 100.0, 4, BI),
            (1, 1, 300.0, 4, BI),
            (3, 1, 100.0, 4, BI),
            (2, 2, 100.0, 4, BI),
        ];
        let (gw, infos) = setup_with(&specs, |id| (id == cheater).then_some(Cheat::OtherTrace));
        let gen = gw
            .generate(&infos, &request(&prompt, 8, SamplingParams::greedy()), |_| {
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        // The gateway checks each trace hash against the leaves of what it sent and got back
        // (token rows for the first stage): the cheater's first answer is its last.
        assert_eq!(gen.tokens, want, "cheater {cheater}");
        assert!(gw.is_banned(&cheater), "cheater {cheater}");
        assert_eq!(forwards(&gw.transport().log(), cheater), 1, "cheater {cheater}");
        let honest = if cheater == 0 { 4 } else { 3 };
        assert_eq!(gen.route[cheater as usize].id, honest);
        // Honest stages are never dropped.
        assert_eq!(gen.failovers, 1);
    }
}

/// The last stage's answer with the sixth best token raised above the best.
fn promote_sixth(r: StageResponse) -> StageResponse {
    match r {
        StageResponse::Output { output: Activation::Last { hidden, logits }, trace } => {
            let mut top = logits.to_vec();
            top[5].1 = top[0].1 + 1.0;
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            let logits = Logits::new(&top);
            StageResponse::Output { output: Activation::Last { hidden, logits }, trace }
        }
        other => other,
    }
}

/// The last stage's answer with only its 8 best logits.
fn fewer_logits(r: StageResponse) -> StageResponse {
    match r {
        StageResponse::Output { output: Activation::Last { hidden, logits }, trace } => {
            let logits = Logits::new(&logits.to_vec()[..8]);
            StageResponse::Output { output: Activation::Last { hidden, logits }, trace }
        }
        other => other,
    }
}

#[tokio::test]
async fn tiny_a_last_stage_answering_other_logits_than_it_committed_to_is_dropped_at_once() {
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let (want, _) = reference(tiny(), &prompt, 8, &SamplingParams::greedy());
    // The preferred last stage (worker 2) computes and commits honestly, but the logits that
    // reach the gateway are others (a token promoted, or fewer of them); worker 5 serves the
    // same layers honestly.
    for tamper in [promote_sixth as Tamper, fewer_logits] {
        let specs = vec![
            (0, 0, 100.0, 4, BI),
            (1, 1, 100.0, 4, BI),
            (2, 2, 300.0, 4, BI),
            (5, 2, 100.0, 4, BI),
        ];
        let (gw, infos) = setup(&specs);
        gw.transport().tamper(2, tamper);
        let gen = gw
            .generate(&infos, &request(&prompt, 8, SamplingParams::greedy()), |_| {
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        // The logits are in the leaf the trace hash commits to (and must be the top 64): the
        // tampered answer is its last, and the tokens are the honest ones.
        assert_eq!(gen.tokens, want);
        assert!(gw.is_banned(&2));
        assert_eq!(forwards(&gw.transport().log(), 2), 1);
        assert_eq!(gen.route[2].id, 5);
        assert_eq!(gen.failovers, 1);
    }
}

/// A generation whose worker for layers 2..4 (1) dies after `kill_after` tokens, when the
/// other one (3) is banned for `ban`; the gateway's busy backoff is 1 s.
async fn kill_while_the_other_is_banned(
    ban: Duration,
    kill_after: usize,
) -> (Gateway<MemTransport>, Result<Vec<u32>, Error>) {
    let (gw, infos) = setup(&three());
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let mut n = 0;
    let gen = gw
        .generate(&infos, &request(&prompt, 12, SamplingParams::greedy()), |_| {
            n += 1;
            if n == kill_after {
                gw.ban(3, ban);
                gw.transport().kill(1);
            }
            ControlFlow::Continue(())
        })
        .await;
    (gw, gen.map(|g| g.tokens).map_err(|f| f.error))
}

#[tokio::test]
async fn tiny_a_failover_waits_for_a_briefly_banned_worker_and_not_for_a_banned_one() {
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let (want, _) = reference(tiny(), &prompt, 12, &SamplingParams::greedy());
    // Worker 3 busy a moment ago (banned for the busy backoff): the failover waits for it.
    let backoff = GatewayConfig::new(GENESIS).busy_backoff;
    let t = std::time::Instant::now();
    let (gw, got) = kill_while_the_other_is_banned(backoff, 4).await;
    assert_eq!(got.unwrap(), want);
    assert!(t.elapsed() < backoff * 2, "waited {:?}", t.elapsed());
    assert!(gw.transport().calls(3) > 0);
    // Banned for a fault (longer than the backoff): no waiting, no route.
    let t = std::time::Instant::now();
    let (gw, got) = kill_while_the_other_is_banned(Duration::from_secs(600), 4).await;
    match got {
        Err(Error::Plan(PlanError::MissingLayers { missing })) => assert_eq!(missing, vec![2..4]),
        other => panic!("expected no route, got {other:?}"),
    }
    assert!(t.elapsed() < backoff, "waited {:?}", t.elapsed());
    assert_eq!(gw.transport().calls(3), 0);
}

#[tokio::test]
async fn tiny_a_failover_with_no_known_replacement_looks_the_workers_up_again() {
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let (want, _) = reference(tiny(), &prompt, 12, &SamplingParams::greedy());
    let (gw, mut infos) = setup(&three());
    // The generation starts knowing workers 0, 1 and 2 only; a lookup finds 3 as well.
    let all = infos.clone();
    infos.retain(|w| w.id != 3);
    gw.transport().announce(all);
    let mut n = 0;
    let gen = gw
        .generate(&infos, &request(&prompt, 12, SamplingParams::greedy()), |_| {
            n += 1;
            if n == 4 {
                gw.transport().kill(1);
            }
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.tokens, want);
    assert_eq!(gen.route.iter().map(|w| w.id).collect::<Vec<_>>(), vec![0, 3, 2]);
    assert_eq!((gen.failovers, gw.transport().lookups()), (1, 1));
}

#[tokio::test]
async fn tiny_busy_worker_is_routed_around() {
    let mut specs = three();
    specs[1].3 = 1; // worker 1 (the preferred one for 2..4) holds one session
    let (gw, infos) = setup(&specs);
    let t = gw.transport();
    let open = StageRequest::Open {
        session: [9; 16],
        model: MODEL,
        layers: (2, 4),
        job: None,
        auth: None,
    };
    assert!(matches!(t.call(&1, open.clone()).await.unwrap(), StageResponse::Opened(_)));
    let again = StageRequest::Open {
        session: [8; 16],
        model: MODEL,
        layers: (2, 4),
        job: None,
        auth: None,
    };
    assert_eq!(t.call(&1, again).await.unwrap(), StageResponse::Busy);
    let prompt = [3u32, 1, 4, 1, 5];
    let (want, _) = reference(tiny(), &prompt, 10, &SamplingParams::greedy());
    let gen = gw
        .generate(&infos, &request(&prompt, 10, SamplingParams::greedy()), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.tokens, want);
    assert_eq!(gen.route.iter().map(|w| w.id).collect::<Vec<_>>(), vec![0, 3, 2]);
    assert_eq!(forwards(&t.log(), 1), 0);
}

#[tokio::test]
async fn tiny_missing_layers_are_named() {
    let (gw, infos) = setup(&three());
    let no_middle: Vec<_> = infos.iter().filter(|w| w.layers != (2..4)).cloned().collect();
    let err = gw
        .generate(&no_middle, &request(&[1, 2], 4, SamplingParams::greedy()), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err.error, Error::Plan(PlanError::MissingLayers { missing }) if *missing == vec![2..4]),
        "{err}"
    );
    assert!(err.to_string().contains("layers 2..4"), "{err}");
    assert!(err.receipts.is_empty(), "no stage worked: nothing to pay");
    assert!(gw.transport().log().is_empty(), "nothing is opened without a full route");
    // Losing the only worker for some layers mid-generation names them too, and closes the
    // sessions it had opened.
    let only: Vec<_> = infos.iter().filter(|w| w.id != 3).cloned().collect();
    let mut n = 0;
    let err = gw
        .generate(&only, &request(&[1, 2], 8, SamplingParams::greedy()), |_| {
            n += 1;
            if n == 2 {
                gw.transport().kill(1);
            }
            ControlFlow::Continue(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err.error, Error::Plan(PlanError::MissingLayers { missing }) if *missing == vec![2..4])
    );
    let log = gw.transport().log();
    for id in [0, 2] {
        assert_eq!(log.iter().filter(|(w, k)| *w == id && *k == "close").count(), 1);
    }
    // The two stages still on the route worked until the failure: their commitments are
    // checked and returned with the error, to be paid for the positions they ran.
    let paid: Vec<(u32, u32)> = err.receipts.iter().map(|r| (r.worker, r.positions)).collect();
    assert_eq!(paid.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 2], "{paid:?}");
    assert!(paid.iter().all(|p| p.1 >= 3), "{paid:?}");
}

#[tokio::test]
async fn tiny_claims_are_the_clients_vouchers_for_the_traces() {
    let (gw, infos) = setup(&three());
    let prompt = [11u32, 22, 33, 44];
    let mut req = request(&prompt, 12, SamplingParams::greedy());
    req.job = Some(77);
    let gen = gw.generate(&infos, &req, |_| ControlFlow::Continue(())).await.unwrap();
    let (want, commitments) = reference(tiny(), &prompt, 12, &SamplingParams::greedy());
    assert_eq!(gen.tokens, want);
    assert!(gen.rejected.is_empty(), "{:?}", gen.rejected);
    assert_eq!(gen.receipts.len(), 3);
    // Positions fed: the prompt and every generated token but the last.
    let fed = (prompt.len() + want.len() - 1) as u32;
    let client = bitorch_primitives::keys::account_of(&key(CLIENT));
    let mut claimed = Vec::new();
    for (r, c) in gen.receipts.iter().zip(&commitments) {
        let claim = r.claim.as_ref().unwrap();
        assert!(claim.verify(&client, &GENESIS));
        let v = &claim.voucher;
        assert_eq!((v.job, v.positions, r.positions), (77, fed, fed));
        assert_eq!(v.layers, (r.layers.start, r.layers.end));
        assert_eq!(r.root.0, c.root);
        assert_eq!(c.len, fed);
        claimed.push(claim.clone());
    }
    // Each worker holds exactly the claim the gateway saw, once.
    for (id, claim) in [0u32, 1, 2].into_iter().zip(&claimed) {
        let held = gw.transport().handle(id).take_claims().await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].claim, claim.clone());
        // With the leaves it covers, whose running hash is the voucher's.
        let hashes: Vec<_> = held[0].leaves.iter().map(|l| l.hash()).collect();
        assert_eq!(bitorch_commitment::chain_of(&hashes), claim.voucher.trace.0);
    }
    // What the gateway counts as acknowledged is what the claims are worth: 6 layers × fed.
    assert_eq!(gen.acknowledged, 6 * u64::from(fed));
    let recomputed: Vec<bool> = gen.receipts.iter().map(|r| r.root_recomputed).collect();
    assert_eq!(recomputed, vec![false, true, false]);
}

#[tokio::test]
async fn tiny_replacement_with_other_numerics_restarts_the_next_stage() {
    // Worker 3 runs candle's reference attention (as a worker on other hardware might compute
    // other bits): its replayed outputs differ from what worker 1 had sent on, however they are
    // batched, so stage 4..6 must start over on the new values for the commitments to chain.
    let mut specs = three();
    specs[3].4 = Kernel::Reference;
    let (gw, infos) = setup(&specs);
    let mut n = 0;
    let mut req = request(&[5, 6, 7, 8, 9, 10, 11, 12], 10, SamplingParams::greedy());
    req.job = Some(1);
    let gen = gw
        .generate(&infos, &req, |_| {
            n += 1;
            if n == 4 {
                gw.transport().kill(1);
            }
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(gen.tokens.len(), 10);
    assert_eq!(gen.failovers, 1);
    assert!(gen.rejected.is_empty(), "{:?}", gen.rejected);
    assert_eq!(gen.receipts.len(), 3);
    let log = gw.transport().log();
    let opens = |id| log.iter().filter(|(w, k)| *w == id && *k == "open").count();
    // Worker 3: a batched replay, then one as fed; both differ from worker 1's outputs, so stage
    // 4..6 starts over on worker 3's.
    assert_eq!((opens(0), opens(2), opens(3)), (1, 2, 2));
}

/// The generation future can be spawned on a multi-threaded runtime.
#[allow(dead_code)]
fn generate_is_send(gw: &'static Gateway<MemTransport>, infos: &'static [WorkerInfo<u32>]) {
    fn assert_send<T: Send>(_: T) {}
    let req = request(&[1], 1, SamplingParams::greedy());
    assert_send(async move { gw.generate(infos, &req, |_| ControlFlow::Continue(())).await });
}
