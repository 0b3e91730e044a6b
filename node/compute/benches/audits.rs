//! Audits of honest work, across thread counts: does re-execution ever accuse an honest worker,
//! and what does it cost against the work it audits?
//!
//! `audits generate DIR N [STEPS]`: a worker serving layers 0..10 of the real test model
//! (or `BITORCH_AUDIT_LAYERS`; with the model's last layer, its logits are checked too) (weights
//! as the node loads them) runs N sessions (a 6-token prompt, then STEPS one-token steps, 6 by
//! default, tokens drawn from a seeded generator) and keeps each session's leaves in DIR, with the generation time.
//! `audits verify DIR PROBES`: an auditor re-executes, for each session, the prefix `0..=last`
//! (`last` and the probe's seed drawn from a seeded generator as the chain draws them: the whole
//! claim half the time, a uniform prefix else) in one
//! batched pass with the audit's probe appended (`bitorch_commitment::probe::reexecute`, as the
//! node's auditor does) and compares it with the committed outputs within the commitment
//! tolerance. Prints the audits, the false accusations, how many were bit-exact, the auditor's
//! time against the generation time (and that share at the chain's 10% base audit rate), and
//! the trace bytes kept per position; writes the probes' sketches to PROBES.
//! `audits agree A B`: how many of two auditors' probes agree by the chain's rule
//! (`jobs::probes_agree`), of how many.
//!
//! Run: `scripts/bench-audits.sh [N]`, which generates with 1 thread and verifies with 2, and
//! the other way round (`RAYON_NUM_THREADS`), and compares each audit's probes from a 1-thread
//! and a 2-thread auditor.

use bitorch_commitment::{file, probe, verify_logits, Leaf, Tolerance};
use bitorch_compute::{Activation, StageRequest, StageResponse, Worker, WorkerConfig};
use bitorch_inference::{Checkpoint, GgufWeights, LoadOptions, Stage};
use bitorch_pallet_jobs::{probes_agree, Probe};
use bitorch_primitives::{keys::pair_from_suri, H256};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

/// The layers audited: `BITORCH_AUDIT_LAYERS` (`A..B`), 0..10 by default; a range ending at
/// the model's last layer is a last stage, whose committed logits are checked too.
fn layers() -> std::ops::Range<usize> {
    let spec = std::env::var("BITORCH_AUDIT_LAYERS").unwrap_or_else(|_| "0..10".into());
    let (a, b) = spec.split_once("..").expect("BITORCH_AUDIT_LAYERS is A..B");
    a.parse().expect("a layer")..b.parse().expect("a layer")
}
const PROMPT: u32 = 6;
/// One-token steps after the prompt, unless `generate` is given another number.
const STEPS: u32 = 6;

fn stage() -> Stage {
    let ckpt = Checkpoint::open(bitorch_test_support::real_model()).expect("the test model");
    let options = LoadOptions { gguf: GgufWeights::Int16, ..Default::default() };
    Stage::load(&ckpt, layers(), &options).expect("loading the layers")
}

/// Keeps leaves in the worker's trace file format.
fn write(path: &Path, leaves: &[Leaf]) {
    std::fs::write(path, file::encode_leaves(leaves).unwrap()).unwrap();
}

fn read(path: &Path) -> Vec<Leaf> {
    file::decode_leaves(&std::fs::read(path).unwrap()).unwrap()
}

fn generate(dir: &Path, n: usize, steps: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut w = Worker::new(
        stage(),
        pair_from_suri("//Bob").unwrap(),
        WorkerConfig::new(H256::zero(), H256::zero()),
    );
    let layers = (layers().start as u32, layers().end as u32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut secs, mut positions, mut bytes) = (0.0, 0usize, 0u64);
    for i in 0..n {
        let session = [(i % 251) as u8; 16];
        let open =
            StageRequest::Open { session, model: H256::zero(), layers, job: None, auth: None };
        assert!(matches!(w.handle(open), StageResponse::Opened(_)));
        let t = Instant::now();
        let prompt: Vec<u32> = (0..PROMPT).map(|_| rng.gen_range(1..40_000)).collect();
        let mut req = StageRequest::Forward {
            session,
            pos: 0,
            input: Activation::Tokens(prompt),
            voucher: None,
        };
        for step in 0..=steps {
            assert!(matches!(w.handle(req), StageResponse::Output { .. }), "step {step}");
            let tok = rng.gen_range(1..40_000);
            req = StageRequest::Forward {
                session,
                pos: PROMPT + step,
                input: Activation::Tokens(vec![tok]),
                voucher: None,
            };
        }
        secs += t.elapsed().as_secs_f64();
        let leaves = w.trace(&session).unwrap().leaves().to_vec();
        positions += leaves.len();
        let path = dir.join(format!("{i}.trace"));
        write(&path, &leaves);
        bytes += std::fs::metadata(&path).unwrap().len();
        w.handle(StageRequest::Close { session, voucher: None });
    }
    std::fs::write(dir.join("summary"), format!("{secs} {positions} {bytes}")).unwrap();
}

fn verify(dir: &Path, probes_out: &Path) {
    let stage = stage();
    let summary = std::fs::read_to_string(dir.join("summary")).unwrap();
    let mut it = summary.split_whitespace();
    let gen_secs: f64 = it.next().unwrap().parse().unwrap();
    let positions: f64 = it.next().unwrap().parse().unwrap();
    let bytes: f64 = it.next().unwrap().parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let tolerance = Tolerance::default();
    let (mut audits, mut accused, mut exact, mut secs) = (0, 0, 0, 0.0);
    let mut probes = String::new();
    let mut i = 0;
    while dir.join(format!("{i}.trace")).exists() {
        let leaves = read(&dir.join(format!("{i}.trace")));
        // As the chain draws it: the whole claim for half the audits, a uniform prefix else; a
        // last stage's, always the whole claim.
        let whole = rng.gen::<bool>() || stage.is_last();
        let last = if whole { leaves.len() - 1 } else { rng.gen_range(0..leaves.len()) };
        let inputs: Vec<Vec<f32>> = leaves[..=last].iter().map(|l| l.input.clone()).collect();
        let seed: [u8; 32] = rng.gen();
        let t = Instant::now();
        let (outputs, sketch) = probe::reexecute(&stage, &inputs, &seed, true).unwrap();
        // A last stage's logits: the head over the committed outputs that returned them.
        let logits_ok = verify_logits(&leaves[..=last], &stage, tolerance).is_ok();
        secs += t.elapsed().as_secs_f64();
        let line: Vec<String> = sketch.iter().map(i32::to_string).collect();
        probes.push_str(&line.join(" "));
        probes.push('\n');
        let committed = &leaves[..=last];
        if !logits_ok
            || committed.iter().zip(&outputs).any(|(l, r)| !tolerance.accepts(&l.output, r))
        {
            accused += 1;
        }
        let same = |l: &Leaf, r: &Vec<f32>| {
            l.output.iter().zip(r).all(|(a, b)| a.to_bits() == b.to_bits())
        };
        if committed.iter().zip(&outputs).all(|(l, r)| same(l, r)) {
            exact += 1;
        }
        audits += 1;
        i += 1;
    }
    std::fs::write(probes_out, probes).unwrap();
    println!(
        "{audits} {accused} {exact} {secs:.2} {gen_secs:.2} {:.3} {:.0}",
        secs / gen_secs * 100.0 * 0.10,
        bytes / positions
    );
}

fn read_probes(path: &Path) -> Vec<Probe> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            let v: Vec<i32> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            Probe(v.try_into().unwrap())
        })
        .collect()
}

fn agree(a: &Path, b: &Path) {
    let (a, b) = (read_probes(a), read_probes(b));
    assert_eq!(a.len(), b.len(), "the same audits");
    let agreeing = a.iter().zip(&b).filter(|(x, y)| probes_agree(x, y)).count();
    let identical = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    println!("{} {agreeing} {identical}", a.len());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; the mode and its arguments follow.
    let args: Vec<&str> =
        args.iter().skip(1).map(String::as_str).filter(|a| *a != "--bench").collect();
    match args.as_slice() {
        ["generate", dir, n] => generate(Path::new(dir), n.parse().unwrap(), STEPS),
        ["generate", dir, n, steps] => {
            generate(Path::new(dir), n.parse().unwrap(), steps.parse().unwrap())
        }
        ["verify", dir, probes] => verify(Path::new(dir), Path::new(probes)),
        ["agree", a, b] => agree(Path::new(a), Path::new(b)),
        _ => eprintln!(
            "usage: audits generate DIR N [STEPS] | audits verify DIR PROBES | audits agree A B \
             (see scripts/bench-audits.sh)"
        ),
    }
}
