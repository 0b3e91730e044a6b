//! The node as an auditor: the validator's side of the chain's audits.
//!
//! Every block it looks through the audits still open on chain ([`bitorch_service::Handle::open_audits`])
//! for those the chain assigned to this validator, on the model this node has. For each, before
//! the commit window ends, it asks the claim's worker (found by its account in the DHT) for the
//! opening, page by page ([`OpeningRequest`], signed by the validator), checks that the leaf hashes it opens
//! rebuild the voucher's trace hash for exactly the claimed positions, re-executes the claim's
//! layers on the opened inputs in one batched pass ([`bitorch_commitment::Reexecute`]) and
//! compares the outputs within [`Tolerance`], and for a last stage applies the head to each
//! committed output that came with logits and checks those logits
//! ([`bitorch_commitment::verify_top`]): that is its finding (no opening in time counts
//! against the worker, once it has been asked until a few blocks before the window ends). It
//! commits to the finding with a random salt and reveals it once the
//! commit window is over. Nothing but the chain tells it what to audit.

use crate::chain::submit_each_and_wait;
use crate::model::Described;
use crate::TARGET;
use bitorch_commitment::{chain_of, leaf_hash, probe, verify_top, Logit, Reexecute, Tolerance};
use bitorch_compute::{protocol, OpeningRequest, StageRequest, StageResponse};
use bitorch_inference::Stage;
use bitorch_network::{Handle as NetHandle, PeerId};
use bitorch_primitives::{keys::account_of, AccountId, Pair, H256};
use bitorch_runtime::jobs::{self, Audit, ClaimRecord, Finding, JobId, Probe, PROBE_VALUES};
use bitorch_runtime::Call;
use bitorch_service::Handle;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How often the open audits are looked through.
const POLL: Duration = Duration::from_millis(500);
/// A worker that does not answer is asked again until this many blocks before the commit
/// window ends (it may be restarting); only then is "no opening" the finding.
const LAST_CHANCE: u64 = 3;

/// A finding committed to and not yet revealed.
struct Committed {
    finding: Finding,
    salt: [u8; 32],
}

/// What the auditor needs.
pub struct Auditor {
    /// The chain.
    pub chain: Handle,
    /// The network, where workers are found and asked for openings.
    pub net: NetHandle,
    /// The validator's key: the account the chain assigns audits to.
    pub key: Pair,
    /// The chain's genesis hash.
    pub genesis: H256,
    /// The model this node has (its id on chain), and its weights.
    pub model: H256,
    /// The model's file, to load the layers a claim ran.
    pub described: Arc<Described>,
    /// For the adversarial tests only: audit dishonestly this way.
    pub pretend: Option<Pretend>,
}

/// How an auditor built for the adversarial tests misbehaves (`--unsafe-auditor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pretend {
    /// Re-executes, then reveals the opposite of what it found.
    Lie,
    /// Checks the opening against the voucher but does not re-execute: finds "passed", with
    /// the worker's outputs as its own and the best guess of the probe it can make without
    /// running the layers (the worker's last output, permuted like the probe input).
    Lazy,
}

/// What examining a claim gave.
enum Examined {
    /// A finding to commit to.
    Found(Finding),
    /// The worker gave no opening (yet).
    NoAnswer,
    /// This node cannot judge the claim (it could not load the layers): it commits nothing.
    Abstain,
}

impl Auditor {
    fn me(&self) -> AccountId {
        account_of(&self.key)
    }
}

/// Runs the auditor until `cancel`; see the [module docs](self). Each pass examines every
/// audit due, then submits all its commitments, and all its due reveals, and waits for them
/// together (one wait for inclusion per pass, not one per audit: with many audits open at
/// once, waiting for each in turn missed commit windows).
pub async fn run_auditor(a: Auditor, cancel: tokio_util::sync::CancellationToken) {
    let me = a.me();
    tracing::info!(target: TARGET, auditor = %me, "auditing the claims the chain assigns");
    let mut stages: HashMap<(u32, u32), Arc<Stage>> = HashMap::new();
    let mut committed: HashMap<(JobId, u32), Committed> = HashMap::new();
    let mut done: HashSet<(JobId, u32)> = HashSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let (Ok(open), Ok(best)) = (a.chain.open_audits().await, a.chain.best().await) else {
            continue;
        };
        let next = best.number.saturating_add(1);
        done.retain(|x| open.contains(x));
        committed.retain(|x, _| open.contains(x));
        let mut commits: Vec<((JobId, u32), Committed, Call)> = Vec::new();
        let mut reveals: Vec<((JobId, u32), Call)> = Vec::new();
        for (job, index) in open {
            if done.contains(&(job, index)) {
                continue;
            }
            let Ok(Some(j)) = a.chain.job(job).await else { continue };
            let Some(claim) = j.claims.get(index as usize) else { continue };
            let Some(audit) = claim.audit.as_ref().filter(|x| x.outcome.is_none()) else {
                continue;
            };
            if j.model != a.model || !audit.auditors.iter().any(|(x, _)| *x == me) {
                done.insert((job, index));
                continue;
            }
            match committed.get(&(job, index)) {
                None if next < audit.commit_by => {
                    let found = examine(&a, &mut stages, job, index, claim, audit).await;
                    let mut finding = match found {
                        Examined::Found(f) => f,
                        Examined::NoAnswer
                            if next.saturating_add(LAST_CHANCE) < audit.commit_by =>
                        {
                            tracing::info!(target: TARGET, job, claim = index, "no opening yet; asking again");
                            continue;
                        }
                        Examined::NoAnswer => Finding::NoOpening,
                        Examined::Abstain => {
                            done.insert((job, index));
                            continue;
                        }
                    };
                    if a.pretend == Some(Pretend::Lie) {
                        finding = match finding {
                            Finding::Passed { outputs, probe } => {
                                Finding::Failed { outputs, probe: Some(probe) }
                            }
                            other => Finding::Passed {
                                outputs: H256::zero(),
                                probe: other.probe().cloned().unwrap_or(Probe([0; PROBE_VALUES])),
                            },
                        };
                    }
                    let salt: [u8; 32] = rand::random();
                    let commitment = jobs::verdict_commitment(job, index, &me, &finding, &salt);
                    let call = Call::Jobs(jobs::Call::CommitVerdict {
                        job,
                        claim_index: index,
                        commitment,
                    });
                    commits.push(((job, index), Committed { finding, salt }, call));
                }
                None => {
                    // Too late to commit (this node came up, or learned of it, after the window).
                    done.insert((job, index));
                }
                Some(c) if next >= audit.commit_by && next < audit.reveal_by => {
                    let call = Call::Jobs(jobs::Call::RevealVerdict {
                        job,
                        claim_index: index,
                        finding: c.finding.clone(),
                        salt: c.salt,
                    });
                    reveals.push(((job, index), call));
                }
                Some(_) => {}
            }
        }
        if !commits.is_empty() {
            let calls = commits.iter().map(|(_, _, call)| call.clone()).collect();
            let outcomes = submit_each_and_wait(&a.chain, &a.key, calls).await;
            for (((job, index), c, _), outcome) in commits.into_iter().zip(outcomes) {
                match outcome {
                    Ok(()) => {
                        tracing::info!(target: TARGET, job, claim = index, finding = ?c.finding, "committed a finding");
                        committed.insert((job, index), c);
                    }
                    // Examined again next pass while its window is open.
                    Err(e) => {
                        tracing::warn!(target: TARGET, job, claim = index, error = %e, "commit failed")
                    }
                }
            }
        }
        if !reveals.is_empty() {
            let calls = reveals.iter().map(|(_, call)| call.clone()).collect();
            let outcomes = submit_each_and_wait(&a.chain, &a.key, calls).await;
            for (((job, index), _), outcome) in reveals.into_iter().zip(outcomes) {
                match outcome {
                    Ok(()) => tracing::info!(target: TARGET, job, claim = index, "revealed"),
                    Err(e) => {
                        tracing::warn!(target: TARGET, job, claim = index, error = %e, "reveal failed")
                    }
                }
                done.insert((job, index));
            }
        }
    }
}

/// The worker announced in the DHT for `model` with this account.
async fn peer_of(net: &NetHandle, model: H256, worker: &AccountId) -> Option<PeerId> {
    let found = net.find_workers(model).await.ok()?;
    found.into_iter().find(|(_, a)| AccountId::new(a.account) == *worker).map(|(p, _)| p)
}

/// A claim's opening as the auditor assembled it from the worker's pages.
struct Opened {
    /// The committed inputs of positions `0..=last`, a row each.
    inputs: Vec<Vec<f32>>,
    /// Their committed outputs.
    outputs: Vec<Vec<f32>>,
    /// The logits committed at each (a last stage's; none at most positions).
    logits: Vec<Vec<Logit>>,
    /// The leaf hashes of the positions after `last`.
    hashes_after: Vec<H256>,
}

/// Asks the claim's worker for its opening of positions `0..=last`, page by page (each request
/// starts where the last page ended); `None` when it cannot be reached, refuses, or sends a
/// page that does not fit (no rows, more rows than asked, another width, an empty width).
async fn fetch(
    a: &Auditor,
    job: JobId,
    index: u32,
    worker: &AccountId,
    last: u32,
) -> Option<Opened> {
    let peer = peer_of(&a.net, a.model, worker).await?;
    let rows = last as usize + 1;
    let mut o = Opened {
        inputs: Vec::new(),
        outputs: Vec::new(),
        logits: Vec::new(),
        hashes_after: Vec::new(),
    };
    let mut width = None;
    while o.inputs.len() < rows {
        let from = o.inputs.len();
        let req = OpeningRequest::sign(&a.key, &a.genesis, job, index, from as u32);
        let bytes =
            a.net.stage_request(peer, protocol::encode(&StageRequest::Opening(req))).await.ok()?;
        // The decoder refuses inputs and outputs of different shapes.
        let page = match protocol::decode_response(&bytes, &protocol::Limits::default()) {
            Ok(StageResponse::Opening(o)) => o,
            other => {
                tracing::info!(target: TARGET, job, claim = index, from, answer = ?other.map(|_| ()), "no opening");
                return None;
            }
        };
        let (n, cols) = (page.inputs.rows() as usize, page.inputs.cols());
        if n == 0 || cols == 0 || from + n > rows || *width.get_or_insert(cols) != cols {
            tracing::info!(target: TARGET, job, claim = index, from, rows = n, "a page that does not fit");
            return None;
        }
        if from == 0 {
            o.hashes_after = page.hashes_after;
        }
        let split = |xs: Vec<f32>| -> Vec<Vec<f32>> {
            xs.chunks_exact(cols as usize).map(<[f32]>::to_vec).collect()
        };
        o.inputs.extend(split(page.inputs.to_vec()));
        o.outputs.extend(split(page.outputs.to_vec()));
        o.logits.extend(page.logits.iter().map(|l| l.to_vec()));
    }
    Some(o)
}

/// What this auditor finds about claim `index` of `job` (see [`Examined`]).
async fn examine(
    a: &Auditor,
    stages: &mut HashMap<(u32, u32), Arc<Stage>>,
    job: JobId,
    index: u32,
    claim: &ClaimRecord,
    audit: &Audit,
) -> Examined {
    let v = &claim.voucher;
    let Some(Opened { inputs: ins, outputs: outs, logits, hashes_after }) =
        fetch(a, job, index, &v.worker, audit.last).await
    else {
        return Examined::NoAnswer;
    };
    let wrong = Examined::Found(Finding::Failed { outputs: H256::zero(), probe: None });
    let n = ins.len();
    if hashes_after.len() + n != v.positions as usize {
        tracing::info!(target: TARGET, job, claim = index, "the opening does not cover the claim");
        return wrong;
    }
    let mut hashes: Vec<[u8; 32]> =
        (0..n).map(|p| leaf_hash(p as u32, &ins[p], &outs[p], &logits[p])).collect();
    hashes.extend(hashes_after.iter().map(|h| h.0));
    if chain_of(&hashes) != v.trace.0 {
        tracing::info!(target: TARGET, job, claim = index, "the opening is not what the voucher signed");
        return wrong;
    }
    let seed = audit.probe.0;
    if a.pretend == Some(Pretend::Lazy) {
        let probe_in = probe::input(&seed, &ins[n - 1]);
        let guess = probe::input(&seed, &outs[n - 1]);
        return Examined::Found(Finding::Passed {
            outputs: hash_rows(&outs),
            probe: Probe(probe::sketch(&seed, &probe_in, &guess)),
        });
    }
    let layers = v.layers;
    let stage = match stages.get(&layers) {
        Some(s) => s.clone(),
        None => {
            let d = a.described.clone();
            let range = layers.0 as usize..layers.1 as usize;
            match tokio::task::spawn_blocking(move || d.load_stage(range)).await {
                Ok(Ok(s)) => {
                    let s = Arc::new(s);
                    stages.insert(layers, s.clone());
                    s
                }
                other => {
                    // This node cannot judge: it abstains rather than accuse.
                    tracing::warn!(target: TARGET, ?layers, ok = other.is_ok(), "cannot load the layers to audit");
                    return Examined::Abstain;
                }
            }
        }
    };
    // The probe goes after the opened prefix when the context has room for one more position.
    let room = n < stage.config().context_length;
    // The head over the committed outputs that came with logits (a last stage's).
    let with_logits: Vec<usize> = (0..n).filter(|&p| !logits[p].is_empty()).collect();
    let heads_in: Vec<Vec<f32>> = with_logits.iter().map(|&p| outs[p].clone()).collect();
    let run = move || {
        let (r, sketch) = probe::reexecute(stage.as_ref(), &ins, &seed, room)?;
        let heads = if heads_in.is_empty() { Vec::new() } else { stage.logits(&heads_in)? };
        Ok::<_, String>((r, sketch, heads))
    };
    let (recomputed, sketch, heads) = match tokio::task::spawn_blocking(run).await {
        Ok(Ok((r, p, h))) if r.len() == n && h.len() == with_logits.len() => (r, p, h),
        other => {
            let error = other.map(|r| r.err());
            tracing::info!(target: TARGET, job, claim = index, ?error, "re-execution failed");
            return wrong;
        }
    };
    let outputs = hash_rows(&recomputed);
    let probe = Probe(sketch);
    let tolerance = Tolerance::default();
    if let Some(p) = outs.iter().zip(&recomputed).position(|(c, r)| !tolerance.accepts(c, r)) {
        tracing::info!(target: TARGET, job, claim = index, position = p,
            error = Tolerance::relative_error(&outs[p], &recomputed[p]), "outputs differ");
        return Examined::Found(Finding::Failed { outputs, probe: Some(probe) });
    }
    for (&p, head) in with_logits.iter().zip(&heads) {
        if let Err(error) = verify_top(head, &logits[p], tolerance) {
            tracing::info!(target: TARGET, job, claim = index, position = p, %error, "logits differ");
            return Examined::Found(Finding::Failed { outputs, probe: Some(probe) });
        }
    }
    Examined::Found(Finding::Passed { outputs, probe })
}

/// blake2-256 of rows of floats, little-endian.
fn hash_rows(rows: &[Vec<f32>]) -> H256 {
    let mut bytes = Vec::with_capacity(rows.iter().map(Vec::len).sum::<usize>() * 4);
    for x in rows.iter().flatten() {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bitorch_primitives::blake2_256(&bytes)
}
