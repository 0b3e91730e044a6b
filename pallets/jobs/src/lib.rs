//! The jobs pallet: the inference market.
//!
//! A client opens a job for an active model and escrows `max_tokens × layers × price` credits
//! (reserved in its own account): a channel that pays for any number of stage sessions, on any
//! workers, until its escrow or its time runs out. The client acknowledges each session's work
//! as it goes with signed cumulative [`Voucher`]s (job, session, worker, layers, positions,
//! running trace hash); a worker claims its pay itself ([`Call::Claim`], signed by the worker)
//! with the latest voucher of a session. A claim is valid only with the job's client's
//! signature ([`Error::BadVoucherSignature`]), only from the worker it names
//! ([`Error::NotVoucherWorker`]), once per worker and session ([`Error::DuplicateClaim`]), and
//! within the escrow (with room for its audit fee). At settlement the escrow pays each claim
//! `layers × positions × price` and refunds the rest.
//!
//! Audits are chosen by the chain ([`Audit`]): in the block after a claim, the parent block's
//! hash (which the worker could not know when it signed) decides whether the claim is audited,
//! which prefix of positions is re-executed (the whole claim for half the audits, a uniform
//! prefix for the others), and which validators audit it (drawn by voting
//! weight, never the worker or the client). The probability is at least `audit_percent`, and
//! more for a claim that is large against the worker's stake ([`audit_ppm`]): audited with
//! probability `p` and slashed `audit_slash_percent` of its stake when caught, a cheating worker
//! loses at least twice what the claim could gain, in expectation. The assigned auditors commit
//! to their finding ([`Call::CommitVerdict`]: a hash of the finding, with the hash of their
//! recomputed outputs, and a salt) within `audit_window` blocks, and reveal it
//! ([`Call::RevealVerdict`]) within the next `audit_window`, so no auditor can copy another's
//! verdict. At the end of the reveal window the audit is resolved: auditors holding two thirds
//! of the assigned weight finding it failed (wrong outputs, or no opening served) slash the
//! worker and void the claim; two thirds finding it passed confirm it; anything else is
//! inconclusive and the claim is paid. A finding carries a [`Probe`], what only re-executing
//! yields; one that no other auditor's probe matches does not count. The auditors on the side
//! of the outcome (with a counted finding) share the claim's audit fee (`audit_fee_percent` of its amount, reserved from the escrow with the
//! claim); the others, and those who did not reveal, get nothing. A job settles only once its
//! audits are resolved.
//!
//! Life cycle of a job ([`JobStatus`]):
//! - `Open` from [`Call::OpenJob`] until its deadline (`opened_at + job_timeout`): workers
//!   open sessions for it and claim.
//! - [`Call::CloseJob`] by the client, or the deadline in [`Pallet::on_initialize`]: the job
//!   enters `Challenge { settle_at }` (`challenge_window` blocks later), the claim window:
//!   claims are still accepted, so closing a job cannot cut off the work it acknowledged.
//! - At `settle_at`, [`Pallet::on_initialize`] pays the claims and refunds the rest
//!   (`Settled`), or refunds everything when nobody claimed (`Refunded`).
//! - A failed audit, any time before settlement, slashes the worker's stake by
//!   `audit_slash_percent` (burned by staking), refunds the client's whole escrow and ends the
//!   job (`Failed`); nobody is paid.
//! - [`RETENTION`] blocks after it settled or was refunded, the job's record leaves the state
//!   (its payments stay in the balances): the state is held in memory whole by every node, and
//!   it grew by every job ever opened.
//!
//! Settlement never fails a block: each due job is processed in its own overlay, and a job whose
//! processing fails is marked `Stuck` with the reason, its escrow left reserved (and counted in
//! [`Pallet::total_escrow`]). A payment that cannot be made to one worker (its account would be
//! left below the existential deposit) is refunded to the client instead and recorded as unpaid.
//!
//! A `job_timeout` or `challenge_window` of zero is treated as one block: a job always has at
//! least one block to receive claims, and settles in a later block than the one that closed
//! it.

use bitorch_pallet_support::{
    self as support, Context, Currency, CurrencyError, ModelRegistry, Storage, StorageError,
    WorkerRegistry,
};
use bitorch_primitives::{AccountId, Balance, BlockNumber, Signature, H256};
use parity_scale_codec::{Decode, Encode};
use std::marker::PhantomData;

mod error;
pub use error::Error;

#[cfg(test)]
mod tests;

const PALLET: &str = "jobs";

pub use bitorch_primitives::receipt::{JobId, SignedVoucher, Voucher};

/// Hard cap on claims per job, whatever `Params::max_claims` says.
pub const MAX_CLAIMS: u32 = 1_024;
/// Most jobs scheduled at one block.
pub const MAX_DUE_PER_BLOCK: u32 = 1_024;

/// Blocks a settled or refunded job stays in the state before its record is removed: a day at
/// the default 1 s block time, long enough for its client, workers and auditors (and the web
/// app's and RPC's recent jobs) to see how it ended.
pub const RETENTION: BlockNumber = 86_400;
/// How many blocks past its intended settlement block a job may be pushed when that block's
/// schedule is full.
pub const MAX_SCHEDULE_SEARCH: u64 = 1_024;
/// Longest reason stored with a `Stuck` job.
pub const MAX_STUCK_REASON: usize = 256;

/// Jobs parameters, set at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Params {
    /// Least probability, in percent, that a claim is audited (above 100 counts as 100; 0
    /// turns audits off).
    pub audit_percent: u8,
    /// Auditors assigned to an audited claim (fewer when fewer validators are eligible).
    pub auditors: u8,
    /// Blocks the auditors have to commit to their finding, and then again to reveal it (0 is
    /// treated as 1).
    #[codec(compact)]
    pub audit_window: BlockNumber,
    /// Audit fee, in percent of a claim's amount, reserved from the escrow with the claim and
    /// shared by the auditors on the side of the outcome (above 100 counts as 100).
    pub audit_fee_percent: u8,
    /// Blocks from opening to the deadline (0 is treated as 1).
    #[codec(compact)]
    pub job_timeout: BlockNumber,
    /// Blocks between closing (or the deadline) and settlement, during which claims and
    /// audits are still accepted (0 is treated as 1).
    #[codec(compact)]
    pub challenge_window: BlockNumber,
    /// Percentage of a worker's stake slashed on a failed audit (above 100 counts as 100).
    pub audit_slash_percent: u8,
    /// Most claims per job (capped at [`MAX_CLAIMS`]).
    #[codec(compact)]
    pub max_claims: u32,
}

impl Default for Params {
    /// Development values: 100-block timeout, 20-block challenge window, 10% slash, 256
    /// claims; at least 10% of claims audited by 3 validators with 5 blocks to commit and 5 to
    /// reveal, for a 5% fee.
    fn default() -> Self {
        Self {
            audit_percent: 10,
            auditors: 3,
            audit_window: 5,
            audit_fee_percent: 5,
            job_timeout: 100,
            challenge_window: 20,
            audit_slash_percent: 10,
            max_claims: 256,
        }
    }
}

/// How many values a [`Probe`] holds.
pub const PROBE_VALUES: usize = 8;

/// What re-execution alone yields, so a verdict cannot be given without it: the auditor runs the
/// claim's layers once more on an input the chain chose when it selected the audit (the opened
/// input of the last audited position with its values permuted by [`Audit::probe`], appended
/// after the opened prefix; nobody computed it before) and reports what the layers added to it
/// (output − input) at [`PROBE_VALUES`] coordinates the same seed picks, in units of 1/1024
/// (`bitorch_commitment::probe`). Auditors commit to it with their finding; at resolution a
/// probe that no other auditor's matches ([`probes_agree`]) voids its finding.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Probe(pub [i32; PROBE_VALUES]);

/// Two probes agree when every value is within 2% of the larger, or 16 units (1/64).
pub fn probes_agree(a: &Probe, b: &Probe) -> bool {
    a.0.iter().zip(&b.0).all(|(&x, &y)| {
        let (x, y) = (i64::from(x), i64::from(y));
        let diff = (x - y).abs();
        diff <= 16 || diff * 50 <= x.abs().max(y.abs())
    })
}

/// What an assigned auditor found.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Finding {
    /// The opening matched the voucher's trace hash and re-execution reproduced the outputs;
    /// `outputs` is the hash of the auditor's recomputed outputs.
    #[codec(index = 0)]
    Passed {
        /// blake2-256 of the recomputed outputs of the opened positions.
        outputs: H256,
        /// The audit's [`Probe`].
        probe: Probe,
    },
    /// The opening did not match the trace hash, or re-execution gave other outputs.
    #[codec(index = 1)]
    Failed {
        /// blake2-256 of the recomputed outputs (zero when the opening itself was wrong).
        outputs: H256,
        /// The audit's [`Probe`], when the opening could be re-executed.
        probe: Option<Probe>,
    },
    /// The worker did not serve the opening in time.
    #[codec(index = 2)]
    NoOpening,
}

impl Finding {
    /// Whether it finds against the worker.
    pub fn against(&self) -> bool {
        !matches!(self, Finding::Passed { .. })
    }

    /// The probe it carries, if it re-executed.
    pub fn probe(&self) -> Option<&Probe> {
        match self {
            Finding::Passed { probe, .. } => Some(probe),
            Finding::Failed { probe, .. } => probe.as_ref(),
            Finding::NoOpening => None,
        }
    }
}

/// What an audit concluded.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Outcome {
    /// Two thirds of the assigned weight found the work right.
    #[codec(index = 0)]
    Passed,
    /// Two thirds of the assigned weight found it wrong or unopened: the worker was slashed
    /// and the claim is void.
    #[codec(index = 1)]
    Failed {
        /// Stake slashed (burned) from the worker.
        #[codec(compact)]
        slashed: Balance,
    },
    /// Neither side reached two thirds (or nobody was eligible to audit): the claim is paid.
    #[codec(index = 2)]
    Inconclusive,
}

/// A claim's audit, as the chain chose it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Audit {
    /// The positions `0..=last` are opened and re-executed.
    #[codec(compact)]
    pub last: u32,
    /// The assigned auditors and their voting weight when assigned.
    pub auditors: Vec<(AccountId, u64)>,
    /// Commitments are accepted before this block.
    #[codec(compact)]
    pub commit_by: BlockNumber,
    /// Reveals are accepted from `commit_by` until before this block, at whose start the audit
    /// is resolved.
    #[codec(compact)]
    pub reveal_by: BlockNumber,
    /// Each committed auditor's commitment ([`verdict_commitment`]).
    pub commits: Vec<(AccountId, H256)>,
    /// Each revealed finding.
    pub reveals: Vec<(AccountId, Finding)>,
    /// The outcome, once resolved.
    pub outcome: Option<Outcome>,
    /// The seed of the audit's [`Probe`], drawn with the audit.
    pub probe: H256,
    /// Set at resolution: the auditors whose probe no other auditor's matched (they did not
    /// re-execute, or not the claim's layers); their findings did not count, and they share
    /// no fee.
    pub unconfirmed: Vec<AccountId>,
}

/// What an auditor commits to: `blake2_256((b"bitorch/verdict/1", job, claim_index, auditor,
/// finding, salt))`.
pub fn verdict_commitment(
    job: JobId,
    claim_index: u32,
    auditor: &AccountId,
    finding: &Finding,
    salt: &[u8; 32],
) -> H256 {
    bitorch_primitives::blake2_256(
        &(b"bitorch/verdict/1", job, claim_index, auditor, finding, salt).encode(),
    )
}

/// A claim as the job holds it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ClaimRecord {
    /// The client's voucher it claims with.
    pub voucher: Voucher,
    /// The client's signature on it (evidence that the client acknowledged the work).
    pub signature: Signature,
    /// Block in which it was submitted.
    #[codec(compact)]
    pub submitted_at: BlockNumber,
    /// The audit fee reserved from the escrow with it.
    #[codec(compact)]
    pub audit_fee: Balance,
    /// Its audit, if the chain chose it for one.
    pub audit: Option<Audit>,
    /// What settlement paid the worker (0 until settled, or if the payment could not be made).
    #[codec(compact)]
    pub paid: Balance,
}

/// Where a job is in its life cycle.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum JobStatus {
    /// Accepting sessions and claims until the deadline.
    #[codec(index = 0)]
    Open,
    /// Closed (or past its deadline); claims and audits still accepted; settles at
    /// `settle_at`.
    #[codec(index = 1)]
    Challenge {
        /// Block at whose start the job settles.
        #[codec(compact)]
        settle_at: BlockNumber,
    },
    /// Paid out.
    #[codec(index = 2)]
    Settled {
        /// Paid to workers.
        #[codec(compact)]
        paid: Balance,
        /// Returned to the client.
        #[codec(compact)]
        refunded: Balance,
    },
    /// Settled with no claims; the whole escrow returned to the client.
    #[codec(index = 3)]
    Refunded,
    /// Processing at its due block failed; the escrow stays reserved. Should never happen.
    #[codec(index = 5)]
    Stuck {
        /// Why (UTF-8, at most [`MAX_STUCK_REASON`] bytes).
        reason: Vec<u8>,
    },
}

impl JobStatus {
    /// Whether the job still holds its escrow (Open, Challenge or Stuck).
    pub fn holds_escrow(&self) -> bool {
        matches!(self, JobStatus::Open | JobStatus::Challenge { .. } | JobStatus::Stuck { .. })
    }
}

/// An inference job.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Job {
    /// The client that opened it and pays.
    pub client: AccountId,
    /// The model.
    pub model: H256,
    /// The model's layer count when the job opened.
    pub layer_count: u32,
    /// Token positions the escrow covers over the whole model (a claim covers at most this
    /// many positions).
    pub max_tokens: u32,
    /// Price per layer per token.
    #[codec(compact)]
    pub price_per_layer_token: Balance,
    /// Escrowed (reserved from the client): max_tokens × layer_count × price.
    #[codec(compact)]
    pub escrow: Balance,
    /// Block it opened in.
    #[codec(compact)]
    pub opened_at: BlockNumber,
    /// Block at whose start it stops accepting sessions (claims go on until settlement).
    #[codec(compact)]
    pub deadline: BlockNumber,
    /// Where it is in its life cycle.
    pub status: JobStatus,
    /// Claims submitted (at most `max_claims`).
    pub claims: Vec<ClaimRecord>,
    /// Sum of what the claims are worth with their audit fees (never above `escrow`).
    #[codec(compact)]
    pub claimed: Balance,
    /// The gateway that opened it from the client's allowance ([`Call::OpenJobFor`]): it
    /// signs the job's sessions and vouchers for the client. `None`: the client did.
    pub agent: Option<AccountId>,
}

impl Job {
    /// Whose signature authorizes sessions and vouchers of this job: the agent that opened it
    /// for the client, or the client.
    pub fn signer(&self) -> &AccountId {
        self.agent.as_ref().unwrap_or(&self.client)
    }
}

/// What a client lets a gateway spend from its balance on jobs ([`Call::Approve`]): the escrow
/// of each job the gateway opens is taken from it, and what the job does not spend comes back
/// to it when the job settles or is refunded.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Allowance {
    /// What the gateway may still escrow.
    #[codec(compact)]
    pub remaining: Balance,
    /// The first block at which it may no longer open jobs.
    #[codec(compact)]
    pub expires_at: BlockNumber,
}

/// Calls of the jobs pallet.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// Opens a job; the signer is the client and escrows max_tokens × layers × price.
    #[codec(index = 0)]
    OpenJob {
        /// An active model.
        model: H256,
        /// Token positions over the whole model the escrow covers.
        #[codec(compact)]
        max_tokens: u32,
        /// Price per layer per token.
        #[codec(compact)]
        price_per_layer_token: Balance,
    },
    /// A worker's claim for one session of a job, signed by the worker the voucher names
    /// ([`Error::NotVoucherWorker`] otherwise), with the job's client's signature on the
    /// voucher, which is what authorizes paying from its escrow. Accepted while the job is open
    /// or in its claim window, once per worker and session.
    #[codec(index = 1)]
    Claim {
        /// The client's latest voucher of the session.
        voucher: SignedVoucher,
    },
    /// Closes an open job (its client, or the agent that opened it): it takes no new sessions,
    /// and settles after the claim window.
    #[codec(index = 2)]
    CloseJob {
        /// The job.
        #[codec(compact)]
        job: JobId,
    },
    /// An assigned auditor's commitment to its finding on a claim ([`verdict_commitment`]),
    /// before the audit's `commit_by`.
    #[codec(index = 3)]
    CommitVerdict {
        /// The job.
        #[codec(compact)]
        job: JobId,
        /// Index of the claim in the job.
        #[codec(compact)]
        claim_index: u32,
        /// The commitment.
        commitment: H256,
    },
    /// An auditor's reveal of the finding it committed to, from `commit_by` until before
    /// `reveal_by`.
    #[codec(index = 4)]
    RevealVerdict {
        /// The job.
        #[codec(compact)]
        job: JobId,
        /// Index of the claim in the job.
        #[codec(compact)]
        claim_index: u32,
        /// The finding.
        finding: Finding,
        /// The salt of the commitment.
        salt: [u8; 32],
    },
    /// Lets `gateway` open jobs that the signer (the client) pays for, escrowing at most
    /// `amount` in all, until block `expires_at`; replaces an earlier allowance for it.
    #[codec(index = 5)]
    Approve {
        /// The gateway's account.
        gateway: AccountId,
        /// Most it may escrow in all.
        #[codec(compact)]
        amount: Balance,
        /// The first block at which it may no longer open jobs.
        #[codec(compact)]
        expires_at: BlockNumber,
    },
    /// Withdraws the signer's allowance for `gateway` (jobs already open go on).
    #[codec(index = 6)]
    Revoke {
        /// The gateway's account.
        gateway: AccountId,
    },
    /// Opens a job that `client` pays for, from the allowance it gave the signer (a gateway):
    /// the escrow is reserved from the client's balance and taken from the allowance; the
    /// client is the job's client, and the signer signs its sessions and vouchers.
    #[codec(index = 7)]
    OpenJobFor {
        /// Who pays.
        client: AccountId,
        /// An active model.
        model: H256,
        /// Token positions over the whole model the escrow covers.
        #[codec(compact)]
        max_tokens: u32,
        /// Price per layer per token.
        #[codec(compact)]
        price_per_layer_token: Balance,
    },
}

/// The jobs pallet, over a currency `C`, the staking registry `W` (workers, validators,
/// slashing) and the model registry `M`.
pub struct Pallet<C, W, M>(PhantomData<(C, W, M)>);

fn allowance_key(client: &AccountId, gateway: &AccountId) -> Vec<u8> {
    support::map_key(PALLET, "allowance", &(client, gateway))
}

fn job_key(id: JobId) -> Vec<u8> {
    support::map_key(PALLET, "job", &id)
}

fn due_key(block: BlockNumber) -> Vec<u8> {
    support::map_key(PALLET, "due", &block)
}

fn prune_key(block: BlockNumber) -> Vec<u8> {
    support::map_key(PALLET, "prune", &block)
}

fn params_key() -> Vec<u8> {
    support::value_key(PALLET, "params")
}

fn next_id_key() -> Vec<u8> {
    support::value_key(PALLET, "next_job_id")
}

fn select_key(block: BlockNumber) -> Vec<u8> {
    support::map_key(PALLET, "select", &block)
}

fn resolve_key(block: BlockNumber) -> Vec<u8> {
    support::map_key(PALLET, "resolve", &block)
}

fn open_audits_key() -> Vec<u8> {
    support::value_key(PALLET, "open_audits")
}

/// The probability, in parts per million, that a claim worth `amount` by a worker with `stake`
/// is audited: at least `audit_percent`, and enough that the expected slash when cheating,
/// probability × `slash_percent` of the stake, is at least twice the claim's amount (what
/// cheating on it could gain). Certain when the worker has nothing to slash. An
/// `audit_percent` of 0 turns audits off (a private network that trusts its workers).
pub fn audit_ppm(audit_percent: u8, slash_percent: u8, amount: Balance, stake: Balance) -> u64 {
    if audit_percent == 0 {
        return 0;
    }
    let base = u64::from(audit_percent.min(100)) * 10_000;
    let slash = support::percent_of(stake, slash_percent);
    if slash == 0 {
        return 1_000_000;
    }
    let need = amount.saturating_mul(2_000_000).div_ceil(slash).min(1_000_000);
    base.max(need as u64)
}

fn total_escrow_key() -> Vec<u8> {
    support::value_key(PALLET, "total_escrow")
}

fn slashes_key() -> Vec<u8> {
    support::value_key(PALLET, "slashes")
}

/// Audits that failed (each slashed its worker) since genesis, and the stake they took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Slashes {
    /// Failed audits.
    pub count: u64,
    /// Stake slashed by them, in plancks.
    pub amount: Balance,
}

impl<C: Currency, W: WorkerRegistry, M: ModelRegistry> Pallet<C, W, M> {
    /// The jobs parameters (the [`Params::default`] values when none were set).
    pub fn params<S: Storage + ?Sized>(s: &S) -> Result<Params, StorageError> {
        Ok(support::get(s, &params_key())?.unwrap_or_default())
    }

    /// Genesis: sets the jobs parameters.
    pub fn set_params<S: Storage + ?Sized>(s: &mut S, params: &Params) {
        support::put(s, params_key(), params);
    }

    /// The job with this id.
    pub fn job<S: Storage + ?Sized>(s: &S, id: JobId) -> Result<Option<Job>, StorageError> {
        support::get(s, &job_key(id))
    }

    /// The id the next job will get (also the number of jobs ever opened).
    pub fn next_job_id<S: Storage + ?Sized>(s: &S) -> Result<JobId, StorageError> {
        support::get_or_default(s, &next_id_key())
    }

    /// Audits that failed since genesis, and the stake they slashed.
    pub fn slashes<S: Storage + ?Sized>(s: &S) -> Result<Slashes, StorageError> {
        support::get_or_default(s, &slashes_key())
    }

    /// Sum of the escrow held by jobs that are Open, in Challenge, or Stuck.
    pub fn total_escrow<S: Storage + ?Sized>(s: &S) -> Result<Balance, StorageError> {
        support::get_or_default(s, &total_escrow_key())
    }

    /// Jobs scheduled for processing at the start of `block`.
    pub fn due<S: Storage + ?Sized>(s: &S, block: BlockNumber) -> Result<Vec<JobId>, StorageError> {
        support::get_or_default(s, &due_key(block))
    }

    fn put_job<S: Storage + ?Sized>(s: &mut S, id: JobId, job: &Job) {
        support::put(s, job_key(id), job);
    }

    /// Total escrow less `amount`, to write once the escrow has left.
    fn total_escrow_less<S: Storage + ?Sized>(s: &S, amount: Balance) -> Result<Balance, Error> {
        Self::total_escrow(s)?.checked_sub(amount).ok_or(Error::Overflow)
    }

    /// The schedule of `block` with `id` added, or `None` if it is full.
    fn with_due<S: Storage + ?Sized>(
        s: &S,
        block: BlockNumber,
        id: JobId,
    ) -> Result<Option<Vec<JobId>>, StorageError> {
        let mut due = Self::due(s, block)?;
        if due.contains(&id) {
            return Ok(Some(due));
        }
        if due.len() >= MAX_DUE_PER_BLOCK as usize {
            return Ok(None);
        }
        due.push(id);
        Ok(Some(due))
    }

    /// Schedules `id` at the first block from `from` whose schedule has room.
    fn schedule_near<S: Storage + ?Sized>(
        s: &mut S,
        from: BlockNumber,
        id: JobId,
    ) -> Result<BlockNumber, Error> {
        for offset in 0..MAX_SCHEDULE_SEARCH {
            let block = from.checked_add(offset).ok_or(Error::Overflow)?;
            if let Some(due) = Self::with_due(s, block, id)? {
                support::put(s, due_key(block), &due);
                return Ok(block);
            }
        }
        Err(Error::TooManyJobsDue { block: from })
    }

    /// Dispatches a call signed by `who`.
    pub fn dispatch<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        call: &Call,
        ctx: &Context,
    ) -> Result<(), Error> {
        match call {
            Call::OpenJob { model, max_tokens, price_per_layer_token } => {
                Self::open_job(s, who, None, model, *max_tokens, *price_per_layer_token, ctx)
            }
            Call::OpenJobFor { client, model, max_tokens, price_per_layer_token } => {
                let (max, price) = (*max_tokens, *price_per_layer_token);
                Self::open_job(s, client, Some(who), model, max, price, ctx)
            }
            Call::Approve { gateway, amount, expires_at } => {
                if gateway == who {
                    return Err(Error::SelfApproval);
                }
                let allowance = Allowance { remaining: *amount, expires_at: *expires_at };
                support::put(s, allowance_key(who, gateway), &allowance);
                Ok(())
            }
            Call::Revoke { gateway } => {
                if Self::allowance(s, who, gateway)?.is_none() {
                    return Err(Error::NoAllowance);
                }
                support::remove(s, allowance_key(who, gateway));
                Ok(())
            }
            Call::Claim { voucher } => Self::claim(s, who, voucher, ctx),
            Call::CloseJob { job } => Self::close_job(s, who, *job, ctx),
            Call::CommitVerdict { job, claim_index, commitment } => {
                Self::commit_verdict(s, who, *job, *claim_index, *commitment, ctx)
            }
            Call::RevealVerdict { job, claim_index, finding, salt } => {
                Self::reveal_verdict(s, who, *job, *claim_index, finding, salt, ctx)
            }
        }
    }

    /// The allowance `client` gave `gateway`, if any.
    pub fn allowance<S: Storage + ?Sized>(
        s: &S,
        client: &AccountId,
        gateway: &AccountId,
    ) -> Result<Option<Allowance>, StorageError> {
        support::get(s, &allowance_key(client, gateway))
    }

    #[allow(clippy::too_many_arguments)]
    fn open_job<S: Storage + ?Sized>(
        s: &mut S,
        client: &AccountId,
        agent: Option<&AccountId>,
        model: &H256,
        max_tokens: u32,
        price: Balance,
        ctx: &Context,
    ) -> Result<(), Error> {
        if max_tokens == 0 {
            return Err(Error::ZeroMaxTokens);
        }
        if price == 0 {
            return Err(Error::ZeroPrice);
        }
        let layer_count = M::active_layer_count(s, model)?.ok_or(Error::ModelNotActive(*model))?;
        let escrow = Balance::from(max_tokens)
            .checked_mul(Balance::from(layer_count))
            .and_then(|v| v.checked_mul(price))
            .ok_or(Error::EscrowOverflow)?;
        if escrow == 0 {
            // Only a model with zero layers, which the registry never accepts.
            return Err(Error::ModelNotActive(*model));
        }
        let params = Self::params(s)?;
        let id = Self::next_job_id(s)?;
        let next = id.checked_add(1).ok_or(Error::JobIdOverflow)?;
        let deadline =
            ctx.block_number.checked_add(params.job_timeout.max(1)).ok_or(Error::Overflow)?;
        let due =
            Self::with_due(s, deadline, id)?.ok_or(Error::TooManyJobsDue { block: deadline })?;
        let total = Self::total_escrow(s)?.checked_add(escrow).ok_or(Error::Overflow)?;
        // A job opened for a client: within what it allowed the agent, before anything is
        // written.
        let allowance = match agent {
            None => None,
            Some(gateway) => {
                let a = Self::allowance(s, client, gateway)?.ok_or(Error::NoAllowance)?;
                if ctx.block_number >= a.expires_at {
                    return Err(Error::AllowanceExpired { expired_at: a.expires_at });
                }
                let remaining = a
                    .remaining
                    .checked_sub(escrow)
                    .ok_or(Error::AllowanceExceeded { escrow, remaining: a.remaining })?;
                Some((gateway, Allowance { remaining, ..a }))
            }
        };
        C::reserve(s, client, escrow)?;
        if let Some((gateway, a)) = &allowance {
            support::put(s, allowance_key(client, gateway), a);
        }
        let job = Job {
            client: client.clone(),
            model: *model,
            layer_count,
            max_tokens,
            price_per_layer_token: price,
            escrow,
            opened_at: ctx.block_number,
            deadline,
            status: JobStatus::Open,
            claims: Vec::new(),
            claimed: 0,
            agent: agent.cloned(),
        };
        Self::put_job(s, id, &job);
        support::put(s, next_id_key(), &next);
        support::put(s, due_key(deadline), &due);
        support::put(s, total_escrow_key(), &total);
        Ok(())
    }

    fn claim<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        signed: &SignedVoucher,
        ctx: &Context,
    ) -> Result<(), Error> {
        let v = &signed.voucher;
        // Who may claim: the worker the client's voucher names, and nobody else. The client's
        // signature proves it asked for the work; the worker's on the extrinsic that it is the
        // one being paid (a stranger replaying the voucher gains nothing either way).
        if *who != v.worker {
            return Err(Error::NotVoucherWorker { job: v.job });
        }
        let mut job = Self::job(s, v.job)?.ok_or(Error::UnknownJob(v.job))?;
        if !matches!(job.status, JobStatus::Open | JobStatus::Challenge { .. }) {
            return Err(Error::ClaimWindowClosed(v.job));
        }
        if !W::is_worker(s, &v.worker)? {
            return Err(Error::NotAWorker);
        }
        if !signed.verify(job.signer(), &ctx.genesis_hash) {
            return Err(Error::BadVoucherSignature { job: v.job });
        }
        let (start, end) = v.layers;
        if start >= end || end > job.layer_count {
            return Err(Error::InvalidLayerRange { start, end, layer_count: job.layer_count });
        }
        if v.positions == 0 || v.positions > job.max_tokens {
            return Err(Error::InvalidTokens { tokens: v.positions, max_tokens: job.max_tokens });
        }
        if job.claims.iter().any(|x| x.voucher.worker == v.worker && x.voucher.session == v.session)
        {
            return Err(Error::DuplicateClaim);
        }
        let max = Self::params(s)?.max_claims.min(MAX_CLAIMS);
        if job.claims.len() >= max as usize {
            return Err(Error::TooManyClaims { max });
        }
        let fee_percent = Self::params(s)?.audit_fee_percent;
        let available = job.escrow.saturating_sub(job.claimed);
        let amount = v.amount(job.price_per_layer_token);
        let fee = amount.map(|a| support::percent_of(a, fee_percent));
        let with_fee = amount.zip(fee).and_then(|(a, f)| a.checked_add(f));
        let claimed =
            with_fee.and_then(|a| job.claimed.checked_add(a)).filter(|c| *c <= job.escrow);
        let Some(claimed) = claimed else {
            return Err(Error::ClaimExceedsEscrow {
                amount: with_fee.unwrap_or(Balance::MAX),
                available,
            });
        };
        // Whether it is audited is decided in the next block, with this block's hash.
        let at = ctx.block_number.checked_add(1).ok_or(Error::Overflow)?;
        let index = u32::try_from(job.claims.len()).map_err(|_| Error::Overflow)?;
        let mut select = Self::selection(s, at)?;
        select.push((v.job, index));
        job.claimed = claimed;
        job.claims.push(ClaimRecord {
            voucher: v.clone(),
            signature: signed.signature,
            submitted_at: ctx.block_number,
            audit_fee: fee.unwrap_or(0),
            audit: None,
            paid: 0,
        });
        Self::put_job(s, v.job, &job);
        support::put(s, select_key(at), &select);
        Ok(())
    }

    /// Starts the claim window of job `id`: it settles `challenge_window` blocks from `now`.
    fn start_claim_window<S: Storage + ?Sized>(
        s: &mut S,
        id: JobId,
        job: &mut Job,
        now: BlockNumber,
    ) -> Result<(), Error> {
        let window = Self::params(s)?.challenge_window.max(1);
        let from = now.checked_add(window).ok_or(Error::Overflow)?;
        let settle_at = Self::schedule_near(s, from, id)?;
        job.status = JobStatus::Challenge { settle_at };
        Self::put_job(s, id, job);
        Ok(())
    }

    fn close_job<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        id: JobId,
        ctx: &Context,
    ) -> Result<(), Error> {
        let mut job = Self::job(s, id)?.ok_or(Error::UnknownJob(id))?;
        if &job.client != who && job.agent.as_ref() != Some(who) {
            return Err(Error::NotClient);
        }
        if job.status != JobStatus::Open {
            return Err(Error::JobNotOpen(id));
        }
        // Not a refund now: workers may still claim what the client acknowledged.
        Self::start_claim_window(s, id, &mut job, ctx.block_number)
    }

    /// What a job opened from an allowance did not spend goes back to the allowance (the
    /// allowance caps what the gateway spends, not what it escrows), unless the client revoked
    /// it meanwhile.
    fn restore_allowance<S: Storage + ?Sized>(
        s: &mut S,
        job: &Job,
        unspent: Balance,
    ) -> Result<(), Error> {
        let Some(agent) = &job.agent else { return Ok(()) };
        if let Some(mut a) = Self::allowance(s, &job.client, agent)? {
            a.remaining = a.remaining.saturating_add(unspent);
            support::put(s, allowance_key(&job.client, agent), &a);
        }
        Ok(())
    }

    /// Returns the whole escrow to the client; the job becomes `Refunded`.
    fn refund<S: Storage + ?Sized>(s: &mut S, id: JobId, job: &mut Job) -> Result<(), Error> {
        let total = Self::total_escrow_less(s, job.escrow)?;
        C::unreserve(s, &job.client, job.escrow)?;
        Self::restore_allowance(s, job, job.escrow)?;
        support::put(s, total_escrow_key(), &total);
        job.status = JobStatus::Refunded;
        Self::put_job(s, id, job);
        Ok(())
    }

    /// Claims whose audit is decided at the start of `block`, as (job, claim index).
    pub fn selection<S: Storage + ?Sized>(
        s: &S,
        block: BlockNumber,
    ) -> Result<Vec<(JobId, u32)>, StorageError> {
        support::get_or_default(s, &select_key(block))
    }

    /// Audits resolved at the start of `block`, as (job, claim index).
    pub fn resolutions<S: Storage + ?Sized>(
        s: &S,
        block: BlockNumber,
    ) -> Result<Vec<(JobId, u32)>, StorageError> {
        support::get_or_default(s, &resolve_key(block))
    }

    /// Audits not yet resolved, as (job, claim index), in the order chosen: what an auditor
    /// looks through for those assigned to it.
    pub fn open_audits<S: Storage + ?Sized>(s: &S) -> Result<Vec<(JobId, u32)>, StorageError> {
        support::get_or_default(s, &open_audits_key())
    }

    /// Applies `f` to the open audit of claim `claim_index` of job `id` and stores the job;
    /// nothing is stored when there is no such audit or `f` fails.
    fn update_open_audit<S: Storage + ?Sized>(
        s: &mut S,
        id: JobId,
        claim_index: u32,
        f: impl FnOnce(&mut Audit) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut job = Self::job(s, id)?.ok_or(Error::UnknownJob(id))?;
        let i = usize::try_from(claim_index).map_err(|_| Error::UnknownClaim(claim_index))?;
        let record = job.claims.get_mut(i).ok_or(Error::UnknownClaim(claim_index))?;
        match record.audit.as_mut() {
            None => return Err(Error::NotAudited(claim_index)),
            Some(a) if a.outcome.is_some() => return Err(Error::AuditResolved(claim_index)),
            Some(a) => f(a)?,
        }
        Self::put_job(s, id, &job);
        Ok(())
    }

    fn commit_verdict<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        id: JobId,
        claim_index: u32,
        commitment: H256,
        ctx: &Context,
    ) -> Result<(), Error> {
        Self::update_open_audit(s, id, claim_index, |audit| {
            if !audit.auditors.iter().any(|(a, _)| a == who) {
                return Err(Error::NotAnAuditor(claim_index));
            }
            if ctx.block_number >= audit.commit_by {
                return Err(Error::CommitWindowClosed { commit_by: audit.commit_by });
            }
            if audit.commits.iter().any(|(a, _)| a == who) {
                return Err(Error::AlreadyCommitted(claim_index));
            }
            audit.commits.push((who.clone(), commitment));
            Ok(())
        })
    }

    fn reveal_verdict<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        id: JobId,
        claim_index: u32,
        finding: &Finding,
        salt: &[u8; 32],
        ctx: &Context,
    ) -> Result<(), Error> {
        Self::update_open_audit(s, id, claim_index, |audit| {
            let Some((_, committed)) = audit.commits.iter().find(|(a, _)| a == who) else {
                return Err(Error::NotCommitted(claim_index));
            };
            if ctx.block_number < audit.commit_by {
                return Err(Error::RevealTooEarly { from: audit.commit_by });
            }
            if ctx.block_number >= audit.reveal_by {
                return Err(Error::RevealWindowClosed { reveal_by: audit.reveal_by });
            }
            if audit.reveals.iter().any(|(a, _)| a == who) {
                return Err(Error::AlreadyRevealed(claim_index));
            }
            if verdict_commitment(id, claim_index, who, finding, salt) != *committed {
                return Err(Error::CommitmentMismatch(claim_index));
            }
            audit.reveals.push((who.clone(), finding.clone()));
            Ok(())
        })
    }

    /// Decides, with the parent block's hash, whether claim `index` of job `id` is audited,
    /// and if so which positions and which auditors; schedules its resolution.
    fn select<S: Storage + ?Sized>(
        s: &mut S,
        id: JobId,
        index: u32,
        ctx: &Context,
    ) -> Result<(), Error> {
        let Some(mut job) = Self::job(s, id)? else { return Ok(()) };
        let i = usize::try_from(index).map_err(|_| Error::Overflow)?;
        let Some(record) = job.claims.get(i) else { return Ok(()) };
        if record.audit.is_some() {
            return Ok(());
        }
        let params = Self::params(s)?;
        let seed = bitorch_primitives::blake2_256(
            &(b"bitorch/audit/1", ctx.parent_hash, id, index).encode(),
        );
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&seed.as_bytes()[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let worker = record.voucher.worker.clone();
        let amount = record.voucher.amount(job.price_per_layer_token).ok_or(Error::Overflow)?;
        let stake = W::stake(s, &worker)?;
        let ppm = audit_ppm(params.audit_percent, params.audit_slash_percent, amount, stake);
        if word(0) % 1_000_000 >= ppm {
            return Ok(());
        }
        // Half the audits open the whole claim, the others a uniform prefix: any cheat, even on
        // the last position only, is caught by at least half the audits of its claim, and an
        // audit re-executes three quarters of the claim on average. A last stage's audits
        // always open the whole claim: the logits it returned, which the client sampled from,
        // are committed only at the positions that produced them (the prompt's last and each
        // step's), all past a prefix inside the prompt.
        let positions = u64::from(record.voucher.positions.max(1));
        let last_stage = record.voucher.layers.1 == job.layer_count;
        let last =
            if last_stage || word(16) % 2 == 0 { positions - 1 } else { word(8) % positions };
        let last = u32::try_from(last).map_err(|_| Error::Overflow)?;
        let mut eligible: Vec<(AccountId, u64)> = W::validator_weights(s)?
            .into_iter()
            .filter(|(a, w)| *a != worker && a != job.signer() && *a != job.client && *w > 0)
            .collect();
        let mut auditors = Vec::new();
        for round in 0..params.auditors {
            let total: u128 = eligible.iter().map(|(_, w)| u128::from(*w)).sum();
            if total == 0 {
                break;
            }
            let h = bitorch_primitives::blake2_256(&(seed, round).encode());
            let mut b = [0u8; 16];
            b.copy_from_slice(&h.as_bytes()[..16]);
            let mut x = u128::from_le_bytes(b) % total;
            let pick = eligible
                .iter()
                .position(|(_, w)| {
                    if x < u128::from(*w) {
                        true
                    } else {
                        x -= u128::from(*w);
                        false
                    }
                })
                .unwrap_or(0);
            auditors.push(eligible.remove(pick));
        }
        let window = params.audit_window.max(1);
        let commit_by = ctx.block_number.checked_add(window).ok_or(Error::Overflow)?;
        let reveal_by = commit_by.checked_add(window).ok_or(Error::Overflow)?;
        // With nobody eligible (a one-validator chain whose validator is the worker or the
        // client), nobody can audit: the claim stands.
        let outcome = auditors.is_empty().then_some(Outcome::Inconclusive);
        if outcome.is_none() {
            let mut due = Self::resolutions(s, reveal_by)?;
            due.push((id, index));
            support::put(s, resolve_key(reveal_by), &due);
            let mut open = Self::open_audits(s)?;
            open.push((id, index));
            support::put(s, open_audits_key(), &open);
        }
        let audit = Audit {
            last,
            auditors,
            commit_by,
            reveal_by,
            commits: Vec::new(),
            reveals: Vec::new(),
            outcome,
            probe: bitorch_primitives::blake2_256(&(b"bitorch/probe/1", seed).encode()),
            unconfirmed: Vec::new(),
        };
        if let Some(record) = job.claims.get_mut(i) {
            record.audit = Some(audit);
        }
        Self::put_job(s, id, &job);
        Ok(())
    }

    /// Resolves the audit of claim `index` of job `id` at the end of its reveal window: two
    /// thirds of the assigned weight against the worker slash it and void the claim, two
    /// thirds for it confirm it, anything else is inconclusive.
    fn resolve<S: Storage + ?Sized>(
        s: &mut S,
        id: JobId,
        index: u32,
        ctx: &Context,
    ) -> Result<(), Error> {
        let mut open = Self::open_audits(s)?;
        open.retain(|x| *x != (id, index));
        support::put(s, open_audits_key(), &open);
        let Some(mut job) = Self::job(s, id)? else { return Ok(()) };
        let i = usize::try_from(index).map_err(|_| Error::Overflow)?;
        let Some(record) = job.claims.get_mut(i) else { return Ok(()) };
        let worker = record.voucher.worker.clone();
        let Some(audit) = record.audit.as_mut() else { return Ok(()) };
        if audit.outcome.is_some() {
            return Ok(());
        }
        // A finding with a probe counts only when another auditor's probe matches it.
        audit.unconfirmed = audit
            .reveals
            .iter()
            .filter(|(a, f)| {
                f.probe().is_some_and(|p| {
                    !audit
                        .reveals
                        .iter()
                        .any(|(b, g)| b != a && g.probe().is_some_and(|q| probes_agree(p, q)))
                })
            })
            .map(|(a, _)| a.clone())
            .collect();
        let weight = |who: &AccountId| {
            audit.auditors.iter().find(|(a, _)| a == who).map_or(0, |(_, w)| u128::from(*w))
        };
        let total: u128 = audit.auditors.iter().map(|(_, w)| u128::from(*w)).sum();
        let counted = audit.reveals.iter().filter(|(a, _)| !audit.unconfirmed.contains(a));
        let (against, passed): (Vec<_>, Vec<_>) = counted.partition(|(_, f)| f.against());
        let against: u128 = against.iter().map(|(a, _)| weight(a)).sum();
        let passed: u128 = passed.iter().map(|(a, _)| weight(a)).sum();
        let outcome = if total > 0 && against.saturating_mul(3) >= total.saturating_mul(2) {
            let percent = Self::params(s)?.audit_slash_percent;
            let slashed = W::slash_percent(s, &worker, percent, ctx)?;
            let total = Self::slashes(s)?;
            let total = Slashes {
                count: total.count.saturating_add(1),
                amount: total.amount.saturating_add(slashed),
            };
            support::put(s, slashes_key(), &total);
            Outcome::Failed { slashed }
        } else if total > 0 && passed.saturating_mul(3) >= total.saturating_mul(2) {
            Outcome::Passed
        } else {
            Outcome::Inconclusive
        };
        audit.outcome = Some(outcome);
        Self::put_job(s, id, &job);
        Ok(())
    }

    /// Start of block: processes the jobs scheduled at `ctx.block_number`. Jobs reaching their
    /// deadline enter the claim window; jobs at its end settle (or are refunded when nobody
    /// claimed). Each job is processed on its own: one that fails is
    /// marked `Stuck` and the others proceed. Fails only on a corrupt schedule.
    pub fn on_initialize<S: Storage + ?Sized>(
        s: &mut S,
        ctx: &Context,
    ) -> Result<(), StorageError> {
        // Audits first: a claim of the last block is chosen (or not), and audits whose reveal
        // window ended are resolved, before any job of theirs settles.
        let chosen = Self::selection(s, ctx.block_number)?;
        support::remove(s, select_key(ctx.block_number));
        for (id, index) in chosen {
            if let Err(e) = support::transactional(s, |o| Self::select(o, id, index, ctx)) {
                Self::mark_stuck(s, id, &e);
            }
        }
        let resolved = Self::resolutions(s, ctx.block_number)?;
        support::remove(s, resolve_key(ctx.block_number));
        for (id, index) in resolved {
            if let Err(e) = support::transactional(s, |o| Self::resolve(o, id, index, ctx)) {
                Self::mark_stuck(s, id, &e);
            }
        }
        let ids = Self::due(s, ctx.block_number)?;
        support::remove(s, due_key(ctx.block_number));
        for id in ids {
            if let Err(e) = support::transactional(s, |o| Self::process_due(o, id, ctx)) {
                Self::mark_stuck(s, id, &e);
            }
        }
        // Jobs that settled RETENTION blocks ago. Only a settled or refunded one is removed
        // (a record that does not decode stays, as everywhere else).
        let ended: Vec<JobId> = support::get_or_default(s, &prune_key(ctx.block_number))?;
        support::remove(s, prune_key(ctx.block_number));
        for id in ended {
            if let Ok(Some(job)) = Self::job(s, id) {
                if matches!(job.status, JobStatus::Settled { .. } | JobStatus::Refunded) {
                    support::remove(s, job_key(id));
                }
            }
        }
        Ok(())
    }

    /// Schedules the removal of job `id`, which ended at `now`, [`RETENTION`] blocks later. At
    /// most [`MAX_DUE_PER_BLOCK`] jobs end in a block, so a block's list is bounded too.
    fn schedule_prune<S: Storage + ?Sized>(
        s: &mut S,
        id: JobId,
        now: BlockNumber,
    ) -> Result<(), Error> {
        let at = now.checked_add(RETENTION).ok_or(Error::Overflow)?;
        let mut ended: Vec<JobId> = support::get_or_default(s, &prune_key(at))?;
        ended.push(id);
        support::put(s, prune_key(at), &ended);
        Ok(())
    }

    fn mark_stuck<S: Storage + ?Sized>(s: &mut S, id: JobId, e: &Error) {
        if let Ok(Some(mut job)) = Self::job(s, id) {
            let mut reason = e.to_string();
            let mut end = reason.len().min(MAX_STUCK_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            job.status = JobStatus::Stuck { reason: reason.into_bytes() };
            Self::put_job(s, id, &job);
        }
    }

    fn process_due<S: Storage + ?Sized>(s: &mut S, id: JobId, ctx: &Context) -> Result<(), Error> {
        let Some(mut job) = Self::job(s, id)? else {
            return Ok(());
        };
        let now = ctx.block_number;
        match job.status {
            JobStatus::Open if now >= job.deadline => {
                Self::start_claim_window(s, id, &mut job, now)
            }
            JobStatus::Challenge { settle_at } if settle_at <= now && job.claims.is_empty() => {
                Self::refund(s, id, &mut job)?;
                Self::schedule_prune(s, id, now)
            }
            JobStatus::Challenge { settle_at } if settle_at <= now && Self::auditing(&job) => {
                // Settles once its audits are resolved.
                let last = job
                    .claims
                    .iter()
                    .filter_map(|c| c.audit.as_ref())
                    .filter(|a| a.outcome.is_none())
                    .map(|a| a.reveal_by)
                    .max()
                    .unwrap_or(now);
                let from = last.max(now).checked_add(1).ok_or(Error::Overflow)?;
                let settle_at = Self::schedule_near(s, from, id)?;
                job.status = JobStatus::Challenge { settle_at };
                Self::put_job(s, id, &job);
                Ok(())
            }
            JobStatus::Challenge { settle_at } if settle_at <= now => {
                Self::settle(s, id, job)?;
                Self::schedule_prune(s, id, now)
            }
            _ => Ok(()),
        }
    }

    /// Whether a claim of `job` has an audit still open.
    fn auditing(job: &Job) -> bool {
        job.claims.iter().any(|c| c.audit.as_ref().is_some_and(|a| a.outcome.is_none()))
    }

    /// Pays `amount` of `job`'s escrow to `to`; returns whether it could (a payment that
    /// would leave the account below the existential deposit cannot be made, and stays in the
    /// escrow for the client).
    fn pay<S: Storage + ?Sized>(
        s: &mut S,
        client: &AccountId,
        to: &AccountId,
        amount: Balance,
    ) -> Result<bool, Error> {
        if amount == 0 {
            return Ok(true);
        }
        match support::transactional(s, |o| C::repatriate_reserved(o, client, to, amount)) {
            Ok(()) => Ok(true),
            // Corrupt state is not the payee's fault, but it is not a payment problem either:
            // the job must not settle.
            Err(CurrencyError::Storage(e)) => Err(e.into()),
            Err(_) => Ok(false),
        }
    }

    /// Pays every claim not voided by its audit, and the audit fee to the auditors on the side
    /// of each outcome, from the client's escrow; refunds the rest.
    fn settle<S: Storage + ?Sized>(s: &mut S, id: JobId, mut job: Job) -> Result<(), Error> {
        let mut paid: Balance = 0;
        let client = job.client.clone();
        for record in job.claims.iter_mut() {
            let amount = record.voucher.amount(job.price_per_layer_token).ok_or(Error::Overflow)?;
            let outcome = record.audit.as_ref().and_then(|a| a.outcome.clone());
            if !matches!(outcome, Some(Outcome::Failed { .. }))
                && Self::pay(s, &client, &record.voucher.worker, amount)?
            {
                record.paid = amount;
                paid = paid.checked_add(amount).ok_or(Error::Overflow)?;
            }
            let Some(audit) = &record.audit else { continue };
            let side = match outcome {
                Some(Outcome::Passed) => Some(false),
                Some(Outcome::Failed { .. }) => Some(true),
                _ => None,
            };
            let winners: Vec<&AccountId> = audit
                .reveals
                .iter()
                .filter(|(a, f)| Some(f.against()) == side && !audit.unconfirmed.contains(a))
                .map(|(a, _)| a)
                .collect();
            let n = Balance::try_from(winners.len()).map_err(|_| Error::Overflow)?;
            if n == 0 {
                continue;
            }
            let share = record.audit_fee / n;
            for auditor in winners {
                if Self::pay(s, &client, auditor, share)? {
                    paid = paid.checked_add(share).ok_or(Error::Overflow)?;
                }
            }
        }
        let refunded = job.escrow.checked_sub(paid).ok_or(Error::Overflow)?;
        let total = Self::total_escrow_less(s, job.escrow)?;
        if refunded > 0 {
            C::unreserve(s, &job.client, refunded)?;
            Self::restore_allowance(s, &job, refunded)?;
        }
        support::put(s, total_escrow_key(), &total);
        job.status = JobStatus::Settled { paid, refunded };
        Self::put_job(s, id, &job);
        Ok(())
    }
}
