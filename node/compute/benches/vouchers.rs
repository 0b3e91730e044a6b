//! What paying by vouchers costs a generation step, measured against the same step unpaid in
//! the same run: a worker serving all layers of the real test model (weights as the node loads
//! them) runs a session of one-position forwards without a job, and one for a job where every
//! forward carries the client's voucher for the positions before it (the gateway's signature,
//! timed here too, and the worker's check and running trace hash). Prints a table: ms per step
//! unpaid and paid (best of ROUNDS runs of STEPS steps each), the gateway's signing time per
//! step, and the overhead of the two together in percent of the unpaid step.
//!
//! Run: `scripts/bench-vouchers.sh` (or `BITORCH_TEST_MODEL=… cargo bench -p bitorch-compute
//! --bench vouchers`).

use bitorch_compute::{Activation, StageRequest, StageResponse, Worker, WorkerConfig};
use bitorch_inference::{Checkpoint, GgufWeights, LoadOptions, Stage};
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::receipt::{SessionAuth, Voucher};
use bitorch_primitives::H256;
use std::time::{Duration, Instant};

const STEPS: u32 = 48;
const ROUNDS: usize = 3;
const PROMPT: u32 = 16;

fn main() {
    let path = bitorch_test_support::real_model();
    let ckpt = Checkpoint::open(&path).expect("the test model");
    let layers = ckpt.config().num_layers;
    let options = LoadOptions { gguf: GgufWeights::Int16, ..Default::default() };
    let stage = Stage::load(&ckpt, 0..layers, &options).expect("loading the model");
    let (model, genesis) = (H256::repeat_byte(1), H256::repeat_byte(2));
    let (client, worker_key) =
        (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Dave").unwrap());
    let (alice, dave) = (account_of(&client), account_of(&worker_key));
    let mut w = Worker::new(stage, worker_key, WorkerConfig::new(model, genesis));
    let span = (0, layers as u32);

    let mut run = |paid: bool, round: usize| -> (Duration, Duration) {
        let session = [round as u8 + if paid { 100 } else { 0 }; 16];
        let job = paid.then_some(7);
        let auth = job.map(|job| {
            SessionAuth { session, model, layers: span, job, worker: dave.clone() }
                .sign(&client, &genesis)
        });
        let open = StageRequest::Open { session, model, layers: span, job, auth };
        let now = Instant::now();
        assert!(matches!(w.handle_for(open, Some(&alice), now), StageResponse::Opened(_)));
        let prompt = Activation::Tokens((1..=PROMPT).collect());
        let first = StageRequest::Forward { session, pos: 0, input: prompt, voucher: None };
        let StageResponse::Output { mut trace, .. } = w.handle_for(first, None, Instant::now())
        else {
            panic!("prefill failed")
        };
        let (mut steps, mut signing) = (Duration::ZERO, Duration::ZERO);
        for i in 0..STEPS {
            let pos = PROMPT + i;
            let t = Instant::now();
            let voucher = job.map(|job| {
                let v = Voucher {
                    job,
                    session,
                    worker: dave.clone(),
                    layers: span,
                    positions: pos,
                    trace,
                };
                v.sign(&client, &genesis).signature
            });
            signing += t.elapsed();
            let input = Activation::Tokens(vec![(pos % 90) + 5]);
            let req = StageRequest::Forward { session, pos, input, voucher };
            let t = Instant::now();
            match w.handle_for(req, None, Instant::now()) {
                StageResponse::Output { trace: next, .. } => trace = next,
                other => panic!("step {pos} failed: {other:?}"),
            }
            steps += t.elapsed();
        }
        let close = StageRequest::Close { session, voucher: None };
        w.handle_for(close, None, Instant::now());
        w.take_claims();
        (steps / STEPS, signing / STEPS)
    };
    let (mut unpaid, mut paid, mut sign) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..ROUNDS {
        // Alternated, so that both see the same machine.
        unpaid = unpaid.min(run(false, round).0);
        let (p, s) = run(true, round);
        paid = paid.min(p);
        sign = sign.min(s);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let overhead = (ms(paid) + ms(sign) - ms(unpaid)) / ms(unpaid) * 100.0;
    println!(
        "\n{:<44} {:>10}",
        format!("{layers} layers, {STEPS} steps after a {PROMPT}-token prompt"),
        "ms/step"
    );
    println!("{:<44} {:>10.3}", "unpaid session (worker)", ms(unpaid));
    println!("{:<44} {:>10.3}", "paid session (worker: voucher check, trace)", ms(paid));
    println!("{:<44} {:>10.3}", "gateway: signing the voucher", ms(sign));
    println!("overhead of paying by vouchers: {overhead:.2}% of an unpaid step (best of {ROUNDS})");
}
